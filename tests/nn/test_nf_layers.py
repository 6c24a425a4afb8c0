"""NF-layers: equivariance, invariant pools, IO-encoding, and agreement with the reference package nfn."""
from __future__ import annotations

import pytest
import torch

from neuralgraph.data import WeightSpace
from neuralgraph.nn.nf_layers import (HNPLayer, IOEncoding, NFFeatures, NPLayer, PointwiseLayer, hnp_pool,
                                      layer_dims, np_pool, pool_dim, to_features)

MLP_SHAPES = [(5, 3), (7, 5), (4, 7), (2, 4)]                  # 4 layers, n = 3-5-7-4-2
MLP2_SHAPES = [(6, 3), (2, 6)]                                # 2 layers (special cases of HNP)
CNN_SHAPES = [(4, 1, 3, 3), (5, 4, 3, 3), (6, 5, 3, 3), (3, 6)]  # Small-CNN-like, global pool then linear


def random_features(shapes, channels: int, batch: int = 2, seed: int = 0) -> NFFeatures:
    g = torch.Generator().manual_seed(seed)
    w = tuple(torch.randn(batch, s[0], s[1], channels * (s[2] * s[3] if len(s) == 4 else 1), generator=g)
              for s in shapes)
    b = tuple(torch.randn(batch, s[0], channels, generator=g) for s in shapes)
    return NFFeatures(w, b)


def hidden_perms(shapes, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(s[0], generator=g) for s in shapes[:-1]]


def permute(feats: NFFeatures, perms, in_perm=None, out_perm=None) -> NFFeatures:
    """Act on features: rows of layer i and columns of layer i+1 by perms[i] (optionally inputs/outputs)."""
    L = len(feats.weights)
    rows = list(perms) + [out_perm]
    cols = [in_perm] + list(perms)
    W, v = [], []
    for i, (w, b) in enumerate(zip(*feats)):
        if rows[i] is not None:
            w, b = w[:, rows[i]], b[:, rows[i]]
        if cols[i] is not None:
            w = w[:, :, cols[i]]
        W.append(w)
        v.append(b)
    assert len(W) == L
    return NFFeatures(tuple(W), tuple(v))


def assert_close(a: NFFeatures, b: NFFeatures, tol=1e-5):
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=tol, rtol=tol)


@pytest.mark.parametrize("shapes", [MLP_SHAPES, MLP2_SHAPES, CNN_SHAPES])
@pytest.mark.parametrize("cls", [NPLayer, HNPLayer, PointwiseLayer])
def test_shapes_and_hidden_equivariance(cls, shapes):
    torch.manual_seed(0)
    layer = cls(shapes, 3, 4)
    x = random_features(shapes, 3)
    y = layer(x)
    for w, s in zip(y.weights, shapes):
        k = s[2] * s[3] if len(s) == 4 else 1
        assert w.shape == (2, s[0], s[1], 4 * k)
    for b, s in zip(y.biases, shapes):
        assert b.shape == (2, s[0], 4)
    perms = hidden_perms(shapes)
    assert_close(layer(permute(x, perms)), permute(y, perms))


@pytest.mark.parametrize("shapes", [MLP_SHAPES, CNN_SHAPES])
def test_np_layer_is_equivariant_to_input_and_output_permutations(shapes):
    layer = NPLayer(shapes, 2, 3)
    x = random_features(shapes, 2)
    g = torch.Generator().manual_seed(3)
    pin, pout = torch.randperm(shapes[0][1], generator=g), torch.randperm(shapes[-1][0], generator=g)
    perms = hidden_perms(shapes)
    assert_close(layer(permute(x, perms, pin, pout)), permute(layer(x), perms, pin, pout))


def test_hnp_layer_is_not_np_equivariant():
    layer = HNPLayer(MLP_SHAPES, 2, 3)
    x = random_features(MLP_SHAPES, 2)
    pout = torch.tensor([1, 0])
    a, b = layer(permute(x, [None] * 3, None, pout)), permute(layer(x), [None] * 3, None, pout)
    assert not torch.allclose(a.weights[-1], b.weights[-1], atol=1e-3)


@pytest.mark.parametrize("shapes", [MLP_SHAPES, MLP2_SHAPES, CNN_SHAPES])
def test_pools(shapes):
    x = random_features(shapes, 3)
    perms = hidden_perms(shapes)
    for pool, kind in [(np_pool, "np"), (hnp_pool, "hnp")]:
        p = pool(x)
        assert p.shape == (2, pool_dim(shapes, 3, kind))
        torch.testing.assert_close(pool(permute(x, perms)), p, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_io_encoding(kind):
    enc = IOEncoding(CNN_SHAPES, kind, dim=5)
    x = random_features(CNN_SHAPES, 2)
    y = enc(x)
    assert [w.shape[-1] for w in y.weights] == [7 * 9, 7 * 9, 7 * 9, 7]
    assert [b.shape[-1] for b in y.biases] == [7] * 4
    # original channels are kept (channel-major: channel c of tap t at c * k + t)
    torch.testing.assert_close(y.weights[1].view(2, 5, 4, 7, 9)[:, :, :, :2].flatten(3), x.weights[1])
    # hidden permutations commute with the encoding
    perms = hidden_perms(CNN_SHAPES)
    assert_close(enc(permute(x, perms)), permute(y, perms))
    # inputs and outputs are told apart
    assert not torch.allclose(y.weights[-1][:, 0, :, -1], y.weights[-1][:, 1, :, -1])
    y = IOEncoding(MLP_SHAPES, kind, dim=5)(random_features(MLP_SHAPES, 2))
    assert not torch.allclose(y.weights[0][:, :, 0, 2:], y.weights[0][:, :, 1, 2:])    # input columns
    torch.testing.assert_close(y.weights[1][..., 2:], torch.zeros_like(y.weights[1][..., 2:]))  # hidden: none


def test_to_features_and_feedforward_check():
    ws = WeightSpace((torch.randn(2, 4, 1, 3, 3), torch.randn(2, 3, 4)), (torch.randn(2, 4), torch.randn(2, 3)))
    f = to_features(ws)
    assert f.weights[0].shape == (2, 4, 1, 9) and f.biases[1].shape == (2, 3, 1)
    assert layer_dims(ws.signature) == [(4, 1, 9), (3, 4, 1)]
    with pytest.raises(ValueError, match="feed-forward"):
        NPLayer([(4, 1, 3, 3), (3, 64)], 1, 2)                      # flatten of a 4x4 map: not supported
    with pytest.raises(ValueError, match="at least 2 layers"):
        HNPLayer([(3, 2)], 1, 2)


def test_gradients_reach_every_parameter():
    for cls in (NPLayer, HNPLayer, PointwiseLayer):
        layer = cls(CNN_SHAPES, 2, 3)
        y = layer(random_features(CNN_SHAPES, 2))
        sum(t.square().sum() for t in y.weights + y.biases).backward()
        for name, p in layer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------------
# Cross-check with the reference implementation (PyPI package nfn, a test dependency).
# ---------------------------------------------------------------------------------------------------
try:
    import nfn
    from nfn.common import ArraySpec, NetworkSpec, WeightSpaceFeatures
except ImportError:  # the reference package is a test dependency: pip install -e ".[test]"
    nfn = None
needs_nfn = pytest.mark.skipif(nfn is None, reason="reference package nfn is not installed")


def nfn_spec(shapes) -> NetworkSpec:
    return NetworkSpec([ArraySpec(tuple(s)) for s in shapes], [ArraySpec((s[0],)) for s in shapes])


def to_nfn(x: NFFeatures, shapes, c: int) -> WeightSpaceFeatures:
    """Ours [B, n, m, c*k] (channel-major) -> nfn's [B, c, n, m, *kernel]."""
    ws = []
    for w, s in zip(x.weights, shapes):
        B, n, m, _ = w.shape
        ws.append(w.view(B, n, m, c, *s[2:]).movedim(3, 1).contiguous())
    return WeightSpaceFeatures(ws, [b.transpose(1, 2).contiguous() for b in x.biases])


def from_nfn(y: WeightSpaceFeatures) -> NFFeatures:
    ws = tuple(w.movedim(1, 3).flatten(3) for w in y.weights)
    return NFFeatures(ws, tuple(b.transpose(1, 2) for b in y.biases))


def swap(F: int, n: int) -> torch.Tensor:
    """Index map from our (n, F) flattening, position q*F+f, to nfn's (F, n) flattening, f*n+q."""
    return torch.arange(F * n).view(F, n).t().reshape(-1)


def cat_cols(*blocks):
    return torch.cat(blocks, dim=1)


def w2(conv):  # Conv1d/Conv2d 1x1 or Linear weight as a matrix
    return conv.weight.detach().reshape(conv.weight.shape[0], -1)


def b1(m):
    return m.bias.detach()


def copy_np(ours: NPLayer, ref) -> None:
    L = ours.num_layers
    inv_w, inv_b = [], []
    for i in range(L):
        lay, rc, r, c = (getattr(ref, f"layer_{i}"), getattr(ref, f"layer_{i}_rc"), getattr(ref, f"layer_{i}_r"),
                         getattr(ref, f"layer_{i}_c"))
        ours.point[i].data.copy_(w2(lay))
        ours.row[i].data.copy_(w2(r))
        ours.col[i].data.copy_(torch.cat([w2(c), w2(getattr(ref, f"bias_{i}"))], 0))
        inv_w.append(w2(rc))
        inv_b.append(b1(lay) + b1(rc) + b1(r) + b1(c))
    for i in range(L):
        inv_w.append(w2(getattr(ref, f"bias_{i}_rc")))
        inv_b.append(b1(getattr(ref, f"bias_{i}_rc")) + b1(getattr(ref, f"bias_{i}")))
    ours.inv_weight.data.copy_(torch.cat(inv_w, 0))
    ours.inv_bias.data.copy_(torch.cat(inv_b, 0))


def copy_hnp(ours: HNPLayer, ref, shapes, ci: int) -> None:
    L, co = ours.num_layers, ours.out_channels
    n0, nl = ours.n_in, ours.n_out
    fi, fo = ours.f_in, ours.f_out
    # pooled features: ours [rc means, bias means, rm0 (q, f), cmL (p, f), vL (p, c)]; nfn: (f, q), (f, p), (c, p)
    P = sum(fi) + L * ci
    pool_idx = torch.cat([torch.arange(P), P + swap(fi[0], n0), P + n0 * fi[0] + swap(fi[-1], nl),
                          P + n0 * fi[0] + nl * fi[-1] + swap(ci, nl)])
    def pool_cols(m):
        return w2(m)[:, pool_idx]
    inv_w, inv_b = [None] * (2 * L), [None] * (2 * L)
    # first layer; outputs ours (q, fo) vs nfn (fo, q)
    out0 = swap(fo[0], n0)
    col_idx = [swap(fi[0], n0), n0 * fi[0] + torch.arange(fi[1] + ci)]
    if L == 2:
        col_idx.append(n0 * fi[0] + fi[1] + ci + swap(fi[1], nl))
    col_idx = torch.cat(col_idx)
    w_first = w2(ref.w0_rpt)[out0][:, col_idx]
    b_first = w2(ref.bias_0)[:, col_idx]
    ours.first.data.copy_(torch.cat([w_first, b_first], 0))
    inv_w[0] = pool_cols(ref.w0_rbdcst)[out0]
    inv_b[0] = (b1(ref.w0_rpt) + b1(ref.w0_rbdcst))[out0]
    inv_w[L] = pool_cols(ref.bias_0_rc)
    inv_b[L] = b1(ref.bias_0_rc) + b1(ref.bias_0)
    # last layer; outputs ours (p, fo) vs nfn (fo, p); our extra v^(L-1) columns get zeros
    outl = swap(fo[-1], nl)
    wl = w2(ref.wfin_cpt)[outl]
    parts = [wl[:, swap(fi[-1], nl)], wl[:, nl * fi[-1]: nl * fi[-1] + fi[-2]], torch.zeros(wl.size(0), ci)]
    if L == 2:
        parts.append(wl[:, nl * fi[-1] + fi[-2] + swap(fi[0], n0)])
    ours.last.data.copy_(torch.cat(parts, 1))
    inv_w[L - 1] = pool_cols(ref.wfin_cbdcst)[outl]
    inv_b[L - 1] = (b1(ref.wfin_cpt) + b1(ref.wfin_cbdcst))[outl]
    outb = swap(co, nl)
    inv_w[2 * L - 1] = pool_cols(ref.bias_fin_rc)[outb]
    inv_b[2 * L - 1] = b1(ref.bias_fin_rc)[outb]
    # hidden layers
    for m, i in enumerate(range(1, L - 1)):
        lay, rc, r, c, bb, brc = (getattr(ref, f"layer_{i}"), getattr(ref, f"layer_{i}_rc"),
                                  getattr(ref, f"layer_{i}_r"), getattr(ref, f"layer_{i}_c"),
                                  getattr(ref, f"bias_{i}"), getattr(ref, f"bias_{i}_rc"))
        ours.point[m].data.copy_(w2(lay))
        base_r = fi[i] + fi[i - 1] + ci
        ridx = torch.cat([torch.arange(base_r)] + ([base_r + swap(fi[0], n0)] if i == 1 else []))
        ours.row[m].data.copy_(w2(r)[:, ridx])
        base_c = fi[i] + ci + fi[i + 1]
        cidx = torch.cat([torch.arange(base_c)] + ([base_c + swap(fi[-1], nl)] if i == L - 2 else []))
        ours.col[m].data.copy_(torch.cat([w2(c)[:, cidx], w2(bb)[:, cidx]], 0))
        inv_w[i] = pool_cols(rc)
        inv_b[i] = b1(lay) + b1(rc) + b1(r) + b1(c)
        inv_w[L + i] = pool_cols(brc)
        inv_b[L + i] = b1(brc) + b1(bb)
    ours.inv_weight.data.copy_(torch.cat(inv_w, 0))
    ours.inv_bias.data.copy_(torch.cat(inv_b, 0))


@needs_nfn
@pytest.mark.parametrize("shapes", [MLP_SHAPES, MLP2_SHAPES, CNN_SHAPES], ids=["mlp", "mlp2", "cnn"])
@pytest.mark.parametrize("ci,co", [(1, 4), (3, 2)])
def test_np_matches_reference_nfn(shapes, ci, co):
    torch.manual_seed(0)
    ref = nfn.layers.NPLinear(nfn_spec(shapes), ci, co)
    ours = NPLayer(shapes, ci, co)
    copy_np(ours, ref)
    x = random_features(shapes, ci, batch=3)
    with torch.no_grad():
        assert_close(ours(x), from_nfn(ref(to_nfn(x, shapes, ci))), tol=1e-5)


@needs_nfn
@pytest.mark.parametrize("shapes", [MLP_SHAPES, MLP2_SHAPES, CNN_SHAPES, CNN_SHAPES[1:]],
                         ids=["mlp", "mlp2", "cnn", "cnn3"])
@pytest.mark.parametrize("ci,co", [(1, 4), (3, 2)])
def test_hnp_matches_reference_nfn(shapes, ci, co):
    torch.manual_seed(0)
    ref = nfn.layers.HNPLinear(nfn_spec(shapes), ci, co)
    ours = HNPLayer(shapes, ci, co)
    copy_hnp(ours, ref, shapes, ci)
    x = random_features(shapes, ci, batch=3)
    with torch.no_grad():
        assert_close(ours(x), from_nfn(ref(to_nfn(x, shapes, ci))), tol=1e-5)


@needs_nfn
def test_np_pool_matches_reference_nfn():
    x = random_features(CNN_SHAPES, 2)
    ref = nfn.layers.NPPool(nfn_spec(CNN_SHAPES))(to_nfn(x, CNN_SHAPES, 2))       # [B, C, sum(k_i + 1)]
    ours = np_pool(x)
    # rearrange ours (weights then biases, channel-major within a layer) as nfn's [B, C, per-layer (k, 1)]
    L = len(CNN_SHAPES)
    ks = [s[2] * s[3] if len(s) == 4 else 1 for s in CNN_SHAPES]
    w_parts = ours[:, :2 * sum(ks)].split([2 * k for k in ks], 1)
    b_parts = ours[:, 2 * sum(ks):].split([2] * L, 1)
    cols = []
    for wp, bp, k in zip(w_parts, b_parts, ks):
        cols += [wp.view(2, 2, k), bp.view(2, 2, 1)]
    torch.testing.assert_close(torch.cat(cols, -1), ref, atol=1e-6, rtol=1e-6)
