"""Swin Transformer V2's window attention (torchvision's ``ShiftedWindowAttentionV2``), on a pure-torch replica and,
where torchvision is installed, on torchvision's own blocks and model.

The replica's attention class carries torchvision's qualified name, so the converter claims it as it claims
torchvision's, and holds the attributes torchvision's ``__init__`` sets; its forward is written here from the Swin V2
paper's definition, independently of torchvision's reshapes and of the executor: the map is zero-padded at the bottom
/ right to whole windows and rolled by ``-shift``, each window is a list of padded positions built by arithmetic, its
queries and keys (no key bias) are L2-normalised per head, scored by cosine similarity times
``exp(min(logit_scale, log 100))`` plus ``16 sigmoid`` of the bias MLP's output at the query - key offset (and Swin's
-100 between regions of the rolled map), and the outputs are scattered back, rolled back and cropped.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from neuralgraph.convert.activations import ACTIVATIONS
from neuralgraph.data.graph import EDGE_KIND
from neuralgraph.transforms import PermuteNeurons
from tests.convert.test_window_attention import _patch_merging_pad  # torchvision's qualified name, fx-wrapped
from tests.helpers.nets import nan_copy
from tests.helpers.permute import assert_isomorphic, assert_params_moved, assert_state_equal, isomorphic

_TV = "torchvision.models.swin_transformer"
torch.fx.wrap("_patch_merging_pad")  # one call in this module's forwards too


def log_coordinates(window) -> torch.Tensor:
    """``[1, 2wh - 1, 2ww - 1, 2]``: the offsets ``(dy, dx)`` scaled to [-8, 8] and log-spaced (Swin V2, eq. 4)."""
    wh, ww = window
    dy = torch.arange(-(wh - 1), wh, dtype=torch.float32) / max(wh - 1, 1) * 8
    dx = torch.arange(-(ww - 1), ww, dtype=torch.float32) / max(ww - 1, 1) * 8
    grid = torch.stack([dy[:, None].expand(-1, 2 * ww - 1), dx[None, :].expand(2 * wh - 1, -1)], -1)
    return (torch.sign(grid) * torch.log2(grid.abs() + 1) / 3).unsqueeze(0)


def offset_index(window) -> torch.Tensor:
    wh, ww = window
    pos = [(i // ww, i % ww) for i in range(wh * ww)]
    return torch.tensor([(yi - yj + wh - 1) * (2 * ww - 1) + xi - xj + ww - 1 for yi, xi in pos for yj, xj in pos])


def regions(n: int, window: int, shift: int) -> list[int]:
    return [0] * n if not shift else [0 if p < n - window else 1 if p < n - shift else 2 for p in range(n)]


class ShiftedWindowAttentionV2(nn.Module):
    def __init__(self, dim, window, shift, heads, hidden=16, qkv_bias=True):
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = list(window), list(shift), heads
        self.attention_dropout = self.dropout = 0.0
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=qkv_bias), nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(heads, 1, 1)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, heads, bias=False))
        self.register_buffer("relative_coords_table", log_coordinates(window))
        self.register_buffer("relative_position_index", offset_index(window))

    def forward(self, x):
        b, h, w, c = x.shape
        (wh, ww), heads = self.window_size, self.num_heads
        d = c // heads
        ph, pw = h + -h % wh, w + -w % ww
        shift = [0 if wh >= ph else self.shift_size[0], 0 if ww >= pw else self.shift_size[1]]
        shift = shift if sum(shift) > 0 else [0, 0]
        bias = 16 * torch.sigmoid(self.cpb_mlp(self.relative_coords_table)[0])           # [2wh-1, 2ww-1, heads]
        qkv_bias = None
        if self.qkv.bias is not None:  # Swin V2 keys have no bias
            qkv_bias = torch.cat([self.qkv.bias[:c], torch.zeros_like(self.qkv.bias[c:2 * c]), self.qkv.bias[2 * c:]])
        q, k, v = F.linear(F.pad(x, (0, 0, 0, pw - w, 0, ph - h)), self.qkv.weight, qkv_bias).split(c, -1)
        q, k, v = (t.roll((-shift[0], -shift[1]), (1, 2)).reshape(b, ph, pw, heads, d) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()                     # [heads, 1, 1]
        ry, rx = regions(ph, wh, shift[0]), regions(pw, ww, shift[1])
        out = torch.zeros(b, ph, pw, heads, d, dtype=x.dtype)
        for by in range(0, ph, wh):
            for bx in range(0, pw, ww):
                pos = [(by + i, bx + j) for i in range(wh) for j in range(ww)]
                ys, xs = torch.tensor([p[0] for p in pos]), torch.tensor([p[1] for p in pos])
                qw, kw, vw = q[:, ys, xs], k[:, ys, xs], v[:, ys, xs]                   # [B, N, heads, d]
                scores = torch.einsum("bihd,bjhd->bhij", qw, kw) * scale
                dy, dx = ys[:, None] - ys[None, :] + wh - 1, xs[:, None] - xs[None, :] + ww - 1
                scores = scores + bias[dy, dx].permute(2, 0, 1)
                lab = torch.tensor([3 * ry[y] + rx[x_] for y, x_ in pos])
                scores = scores + (lab[:, None] != lab[None, :]).to(x.dtype) * -100.0
                out[:, ys, xs] = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), vw)
        out = self.proj(out.reshape(b, ph, pw, c)).roll((shift[0], shift[1]), (1, 2))
        return out[:, :h, :w]


ShiftedWindowAttentionV2.__module__ = _TV  # the converter claims it by torchvision's qualified name


class BlockV2(nn.Module):
    """Swin V2's post-norm block: ``x + norm1(attn(x))``, then ``x + norm2(mlp(x))``."""

    def __init__(self, dim, window, shift, heads, hidden=16):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttentionV2(dim, window, shift, heads, hidden)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.norm1(self.attn(x))
        return x + self.norm2(self.mlp(x))


class PatchMergingV2(nn.Module):
    """Swin V2's patch merging: the reduction before the norm."""

    def __init__(self, dim):
        super().__init__()
        self.reduction, self.norm = nn.Linear(4 * dim, 2 * dim, bias=False), nn.LayerNorm(2 * dim)

    def forward(self, x):
        return self.norm(self.reduction(_patch_merging_pad(x)))


class TinySwinV2(nn.Module):
    def __init__(self, dim=8, window=(3, 3), heads=2):
        super().__init__()
        shift = [w // 2 for w in window]
        self.embed, self.norm0 = nn.Conv2d(3, dim, 2, 2), nn.LayerNorm(dim)
        self.blocks = nn.Sequential(BlockV2(dim, window, [0, 0], heads), BlockV2(dim, window, shift, heads))
        self.merge = PatchMergingV2(dim)
        self.last = BlockV2(2 * dim, window, shift, 2 * heads)
        self.norm, self.head = nn.LayerNorm(2 * dim), nn.Linear(2 * dim, 3)

    def forward(self, x):
        x = self.norm0(self.embed(x).permute(0, 2, 3, 1))
        x = self.last(self.merge(self.blocks(x)))
        return self.head(self.norm(x).mean((1, 2)))


def _randomized(m, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return m.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("size", [(12, 12), (14, 10), (6, 6), (4, 4), (2, 2)],
                         ids=["windows-fit", "padded-odd-merge", "shift-on-two-windows", "window-covers-map",
                              "one-position-map"])
def test_swin_v2_executes_like_the_module_and_reads_back(size, dtype):
    m = _randomized(TinySwinV2()).to(dtype)
    x = torch.randn(2, 3, 2 * size[0], 2 * size[1], dtype=dtype)
    g = to_neural_graph(m, example_input=x)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x), m(x), **tol)
    assert_state_equal(from_neural_graph(g, nan_copy(m), example_input=x), m)  # the coordinate table included
    kinds = g.edge_kind.tolist()
    assert kinds.count(EDGE_KIND["bias_table"]) == 2 + 2 + 4 and kinds.count(EDGE_KIND["window_bias"]) == 0
    cosine = (g.node_act == ACTIVATIONS.index("cosine_attention")).nonzero().view(-1)
    assert cosine.numel() == 8 and torch.equal(g.x[cosine, 2].sort().values, torch.cat(
        [m.blocks[0].attn.logit_scale.view(-1), m.blocks[1].attn.logit_scale.view(-1),
         m.last.attn.logit_scale.view(-1)]).to(g.x.dtype).sort().values)


def test_the_key_bias_is_stored_as_it_is_and_ignored_as_the_module_ignores_it():
    m = _randomized(nn.Sequential(BlockV2(4, (3, 3), (1, 1), 2)))
    x = torch.randn(2, 5, 6, 4)
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        y = m(x)
        m2 = copy.deepcopy(m)
        m2[0].attn.qkv.bias[4:8] += 3.0
        torch.testing.assert_close(m2(x), y)
        g2 = to_neural_graph(m2, example_input=x)
        torch.testing.assert_close(execute(g2, x, tokens=True), y, atol=1e-5, rtol=1e-4)
    assert_state_equal(from_neural_graph(g2, nan_copy(m)), m2)
    assert not torch.equal(g.edge_attr, g2.edge_attr)


def test_logit_scale_bias_mlp_and_coordinates_are_in_the_function():
    """A changed logit scale (below and beyond its clamp), bias MLP weight or coordinate entry changes the function,
    and the graph follows."""
    m = _randomized(nn.Sequential(BlockV2(4, (3, 3), (1, 1), 2)))
    x = torch.randn(2, 6, 6, 4)
    with torch.no_grad():
        y = m(x)
        for change in ("logit", "clamped", "mlp", "coords"):
            m2 = copy.deepcopy(m)
            att = m2[0].attn
            if change == "logit":
                att.logit_scale[1] -= 1.0
            elif change == "clamped":
                att.logit_scale[0] = 7.0
            elif change == "mlp":
                att.cpb_mlp[2].weight[0, 3] += 1.0
            else:
                att.relative_coords_table[0, 1, 2, 0] += 0.5
            assert not torch.allclose(m2(x), y, atol=1e-3), change
            torch.testing.assert_close(execute(to_neural_graph(m2, example_input=x), x, tokens=True), m2(x),
                                       atol=1e-5, rtol=1e-4)


@torch.no_grad()
def _permute_cpb_hidden(att, perm):
    first, last = att.cpb_mlp[0], att.cpb_mlp[2]
    first.weight.copy_(first.weight[perm])
    first.bias.copy_(first.bias[perm])
    last.weight.copy_(last.weight[:, perm])


@torch.no_grad()
def _permute_heads(att, order, dim):
    heads = att.num_heads
    d = dim // heads
    rows = torch.cat([order[h] * d + torch.arange(d) for h in range(heads)])
    qkv_rows = torch.cat([rows + r * dim for r in range(3)])
    att.qkv.weight.copy_(att.qkv.weight[qkv_rows])
    att.qkv.bias.copy_(att.qkv.bias[qkv_rows])
    att.proj.weight.copy_(att.proj.weight[:, rows])
    att.logit_scale.copy_(att.logit_scale[order])
    att.cpb_mlp[2].weight.copy_(att.cpb_mlp[2].weight[order])


def test_bias_mlp_hidden_neurons_heads_and_coordinates_permute_as_symmetries():
    """Permuting the bias MLP's hidden neurons, whole heads (q, k, v rows, proj columns, logit scale and the MLP's
    output rows together) or the two coordinates (the table's channels and the MLP's input columns) keeps the
    function and gives an isomorphic graph; moving one head's logit scale alone changes both."""
    m = _randomized(nn.Sequential(BlockV2(4, (2, 3), (1, 1), 2, hidden=6)))
    x = torch.randn(2, 4, 6, 4)
    g = to_neural_graph(m, example_input=x)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        y = m(x)
        variants = []
        hidden = copy.deepcopy(m)
        _permute_cpb_hidden(hidden[0].attn, torch.randperm(6, generator=gen))
        variants.append(hidden)
        heads = copy.deepcopy(m)
        _permute_heads(heads[0].attn, torch.tensor([1, 0]), 4)
        variants.append(heads)
        coords = copy.deepcopy(m)
        att = coords[0].attn
        att.relative_coords_table.copy_(att.relative_coords_table.flip(-1))
        att.cpb_mlp[0].weight.copy_(att.cpb_mlp[0].weight.flip(1))
        variants.append(coords)
        for m2 in variants:
            assert_params_moved(m, m2)
            torch.testing.assert_close(m2(x), y, atol=1e-5, rtol=1e-4)
            assert_isomorphic(g, to_neural_graph(m2, example_input=x))
        wrong = copy.deepcopy(m)
        wrong[0].attn.logit_scale.copy_(wrong[0].attn.logit_scale + torch.tensor([0.5, -0.5]).view(2, 1, 1))
        assert not torch.allclose(wrong(x), y, atol=1e-3)
        assert not isomorphic(g, to_neural_graph(wrong, example_input=x))


def test_permute_neurons_moves_the_bias_mlp_and_keeps_the_function():
    """PermuteNeurons finds the bias MLP's hidden neurons (and the coordinates) among its symmetries: the permuted
    graph executes to the same function, and so does the module read back from it."""
    m = _randomized(nn.Sequential(BlockV2(4, (3, 3), (1, 1), 2, hidden=8)))
    x = torch.randn(2, 5, 5, 4)
    g = to_neural_graph(m, example_input=x)
    moved = PermuteNeurons(seed=0)(g.clone())
    cpb = m[0].attn.cpb_mlp
    hidden = (g.edge_kind == EDGE_KIND["linear"]) & torch.isin(g.edge_attr[:, g.edge_attr.size(1) // 2],
                                                                cpb[0].weight.detach().reshape(-1))
    assert not torch.equal(moved.edge_attr[hidden], g.edge_attr[hidden])  # the MLP's first layer moved
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(execute(moved, x, tokens=True), y, atol=1e-5, rtol=1e-4)
        back = from_neural_graph(moved, nan_copy(m))
        assert_params_moved(m, back)
        torch.testing.assert_close(back(x), y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size", [(4, 4), (1, 1)], ids=["four-windows", "one-position-map"])
def test_a_one_by_one_window_executes_like_the_module(size):
    """A 1 x 1 window (timm's Swin V2 cuts its window to the map: ``swinv2_tiny_window8_256`` at 32 px has a 1 x 1 map
    and window in its last stage): the bias table has one offset, the coordinate neurons' one-position map is read by
    the bias MLP's linear edges as a feature ``[B]``; ``execute`` refused that graph as corrupt ("holds a value of
    shape (2,), not the [B, 1, 1] table") although it is the module's function."""
    m = _randomized(TinySwinV2(window=(1, 1)))
    x = torch.randn(2, 3, 2 * size[0], 2 * size[1])
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x), m(x), atol=1e-5, rtol=1e-4)
    assert_state_equal(from_neural_graph(g, nan_copy(m), example_input=x), m)
    assert (g.edge_kind == EDGE_KIND["bias_table"]).sum() == 2 + 2 + 4


@pytest.mark.parametrize("mlp", ["two-activations", "activation-last", "activation-first", "no-activation"])
def test_bias_mlp_variants_convert_exactly(mlp):
    """Any nn.Sequential of Linear layers and element-wise activations converts: two activations in a row and an
    activation last (before the sigmoid) each need an identity layer, which the heads' layer counts (was a crash)."""
    m = _randomized(nn.Sequential(BlockV2(4, (3, 3), (1, 1), 2)))
    m[0].attn.cpb_mlp = {
        "two-activations": nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Tanh(), nn.Linear(5, 2)),
        "activation-last": nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 2), nn.Tanh()),
        "activation-first": nn.Sequential(nn.Tanh(), nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 2)),
        "no-activation": nn.Sequential(nn.Linear(2, 5), nn.Linear(5, 2)),
    }[mlp]
    m = _randomized(m)
    x = torch.randn(2, 6, 6, 4)
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x, tokens=True), m(x), atol=1e-5, rtol=1e-4)
    assert_state_equal(from_neural_graph(g, nan_copy(m)), m)


@pytest.mark.parametrize("shared", ["cpb_mlp", "logit_scale", "coords"])
def test_bias_mlp_logit_scale_or_coordinates_shared_between_blocks(shared):
    """One bias MLP, logit scale or coordinate buffer registered in two blocks is one tied parameter (was a
    KeyError, and the plan cache mixed the variants up)."""
    m = _randomized(nn.Sequential(BlockV2(4, (3, 3), (0, 0), 2), BlockV2(4, (3, 3), (1, 1), 2)))
    a, b = m[0].attn, m[1].attn
    if shared == "cpb_mlp":
        b.cpb_mlp = a.cpb_mlp
    elif shared == "logit_scale":
        b.logit_scale = a.logit_scale
    else:
        b.register_buffer("relative_coords_table", a.relative_coords_table)
    x = torch.randn(2, 6, 6, 4)
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x, tokens=True), m(x), atol=1e-5, rtol=1e-4)
    assert_state_equal(from_neural_graph(g, nan_copy(m), example_input=x), m)


def test_a_float32_graph_executes_a_float64_input():
    """Attention heads (Swin V2's window heads and a plain transformer layer's) run a float32 graph on a float64
    input, as every other edge kind does (was a RuntimeError in index_put_)."""
    m = _randomized(TinySwinV2())
    g = to_neural_graph(m, example_input=torch.randn(2, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x), m.double()(x), atol=1e-5, rtol=1e-4)
    layer = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)).eval()
    g = to_neural_graph(layer, example_input=torch.randn(2, 3, 8))
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x), layer.double()(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("hook", ["cpb_mlp-forward-hook", "cpb_mlp-pre-hook", "cpb_mlp.0-forward-hook"])
def test_hooks_inside_the_attention_are_refused(hook):
    """The attention's rule reads its parts (the bias MLP's layers), not their calls: a hook forward would run is
    refused by name (a hook on the MLP container was silent: 7e-2 relative)."""
    m = _randomized(nn.Sequential(BlockV2(4, (3, 3), (1, 1), 2)))
    cpb = m[0].attn.cpb_mlp
    if hook == "cpb_mlp-forward-hook":
        cpb.register_forward_hook(lambda mod, i, o: o + 1)
    elif hook == "cpb_mlp-pre-hook":
        cpb.register_forward_pre_hook(lambda mod, i: (i[0] * 2,))
    else:
        cpb[0].register_forward_hook(lambda mod, i, o: o * 2)
    with pytest.raises(UnsupportedModuleError, match="cpb_mlp.* has forward hooks"):
        to_neural_graph(m, example_input=torch.randn(2, 6, 6, 4))


def test_swin_v2_refuses_what_it_cannot_represent():
    x = torch.randn(2, 6, 6, 4)
    odd = _randomized(nn.Sequential(BlockV2(4, (3, 3), (1, 1), 2)))
    odd[0].attn.cpb_mlp = nn.Sequential(nn.Linear(2, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    with pytest.raises(UnsupportedModuleError, match="continuous position bias MLP .* not an nn.Sequential of Linear"):
        to_neural_graph(odd, example_input=x)
    dropout = _randomized(nn.Sequential(BlockV2(4, (3, 3), (1, 1), 2)))
    dropout[0].attn.attention_dropout = 0.1
    dropout.train()
    with pytest.raises(UnsupportedModuleError, match="dropout in training mode"):
        to_neural_graph(dropout, example_input=x)
    index = _randomized(nn.Sequential(BlockV2(4, (3, 3), (1, 1), 2)))
    index[0].attn.relative_position_index = offset_index((3, 3)).flip(0)
    with pytest.raises(UnsupportedModuleError, match="relative position index .* is not Swin's"):
        to_neural_graph(index, example_input=x)
    shared = _randomized(nn.Sequential(BlockV2(4, (3, 3), (1, 1), 2)))
    shared[0].attn.logit_scale = nn.Parameter(torch.zeros(1, 1, 1))
    with pytest.raises(UnsupportedModuleError, match=r"logit_scale is not a \[2, 1, 1\] parameter"):
        to_neural_graph(shared, example_input=x)
    with pytest.raises(UnsupportedModuleError, match="example_input"):
        to_neural_graph(shared)


# ------------------------------------------------------------------------------------------- torchvision
def _tv():
    return pytest.importorskip("torchvision.models.swin_transformer")


def test_the_replica_is_torchvisions_attention():
    sw = _tv()
    for window, shift, size in (((3, 3), (1, 1), (6, 6)), ((2, 3), (1, 1), (5, 7)), ((4, 4), (2, 2), (3, 3))):
        tv = _randomized(sw.ShiftedWindowAttentionV2(8, list(window), list(shift), 2))
        ours = ShiftedWindowAttentionV2(8, window, shift, 2, hidden=512)
        ours.load_state_dict(tv.state_dict())
        x = torch.randn(2, *size, 8)
        with torch.no_grad():
            torch.testing.assert_close(ours.eval()(x), tv(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("config", ["fit", "padded-shifted"])
def test_torchvision_swin_v2_converts_exactly(config):
    """torchvision's SwinTransformer with its V2 blocks and patch merging (small: 2 stages), and a bare V2 block with
    a non-square window on a padded, shifted map."""
    sw = _tv()
    from functools import partial
    torch.manual_seed(0)
    if config == "fit":
        m = sw.SwinTransformer(patch_size=[2, 2], embed_dim=8, depths=[2, 2], num_heads=[2, 4], window_size=[3, 3],
                               block=sw.SwinTransformerBlockV2, downsample_layer=sw.PatchMergingV2, num_classes=5)
        x = torch.randn(2, 3, 12, 12)
    else:
        m = nn.Sequential(sw.SwinTransformerBlockV2(8, 2, [2, 3], [1, 1], norm_layer=partial(nn.LayerNorm, eps=1e-5)))
        x = torch.randn(2, 5, 7, 8)
    m = _randomized(m)
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x, **({} if config == "fit" else {"tokens": True})), m(x),
                                   atol=1e-5, rtol=1e-4)
    assert_state_equal(from_neural_graph(g, nan_copy(m), example_input=x), m)
    m64, x64 = copy.deepcopy(m).double(), x.double()
    with torch.no_grad():
        torch.testing.assert_close(execute(to_neural_graph(m64, example_input=x64), x64,
                                           **({} if config == "fit" else {"tokens": True})), m64(x64),
                                   atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------------------------------------- timm
@pytest.mark.parametrize("config", ["fit", "padded-shifted-dynamic"])
def test_timm_swin_v2_converts_exactly(config):
    """timm's SwinTransformerV2 (roll, then pad; separate q / v biases and a zero key bias buffer; timm's GELU): windows
    fitting the map, and a non-square window on padded, shifted maps with a mask built per forward."""
    sv2 = pytest.importorskip("timm.models.swin_transformer_v2")
    kw = dict(patch_size=2, embed_dim=8, depths=(2, 2), num_classes=5)
    if config == "fit":
        m, size = sv2.SwinTransformerV2(img_size=32, num_heads=(2, 4), window_size=4, **kw), 32
    else:
        m, size = sv2.SwinTransformerV2(img_size=28, num_heads=(2, 2), window_size=(3, 4), strict_img_size=False,
                                        **kw), 28
    m = _randomized(m)
    x = torch.randn(2, 3, size, size)
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x), m(x), atol=1e-5, rtol=1e-4)
    assert_state_equal(from_neural_graph(g, nan_copy(m, persistent_only=True), example_input=x), m)
    assert (g.edge_kind == EDGE_KIND["bias_table"]).sum() == 2 * 2 + 2 * (4 if config == "fit" else 2)
    nonzero = copy.deepcopy(m)
    with torch.no_grad():
        nonzero.layers[0].blocks[0].attn.k_bias.fill_(1.0)
    with pytest.raises(UnsupportedModuleError, match="k_bias buffer is not zero"):
        to_neural_graph(nonzero, example_input=x)


@pytest.mark.parametrize("separate", [True, False], ids=["qkv_bias_separate", "packed"])
@pytest.mark.parametrize("qkv_bias", [True, False], ids=["q_v_bias", "no_q_v_bias"])
def test_timm_swin_v2_qkv_linear_with_its_own_bias_is_refused(separate, qkv_bias):
    """timm builds the qkv Linear without a bias; one given a bias is added by forward on some paths (qkv_bias_separate,
    or no q_bias) and not on others: refused by name (was silent: 6e-2 relative with qkv_bias_separate)."""
    sv2 = pytest.importorskip("timm.models.swin_transformer_v2")
    m = sv2.SwinTransformerV2(img_size=32, patch_size=2, embed_dim=8, depths=(2, 2), num_classes=5, num_heads=(2, 4),
                              window_size=4, qkv_bias=qkv_bias)
    att = m.layers[0].blocks[0].attn
    att.qkv, att.qkv_bias_separate = nn.Linear(8, 24, bias=True), separate
    m = _randomized(m)
    with pytest.raises(UnsupportedModuleError, match="qkv Linear with a bias of its own"):
        to_neural_graph(m, example_input=torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("part", ["attn", "attn.cpb_mlp", "mlp", "norm1"])
def test_timm_swin_v2_block_parts_with_hooks_are_refused(part):
    """timm's block rule reads its parts; a part with a forward hook (which the block's forward runs) is refused by
    name instead of dropped."""
    sv2 = pytest.importorskip("timm.models.swin_transformer_v2")
    m = _randomized(sv2.SwinTransformerV2(img_size=32, patch_size=2, embed_dim=8, depths=(2, 2), num_classes=5,
                                          num_heads=(2, 4), window_size=4))
    m.layers[0].blocks[0].get_submodule(part).register_forward_hook(lambda mod, i, o: o * 2)
    with pytest.raises(UnsupportedModuleError, match="has forward hooks"):
        to_neural_graph(m, example_input=torch.randn(2, 3, 32, 32))
