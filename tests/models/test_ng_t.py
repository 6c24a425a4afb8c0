"""NG-T: symmetry on real torch modules, batching independence (dense and sparse), gradients."""
from __future__ import annotations

import pytest
import torch

from neuralgraph.models import NGT, create_model
from neuralgraph.models.ng_t import size_buckets
from neuralgraph.models.heads import EquivariantOutput
from tests.models.ng_checks import (assert_all_grads, assert_batch_independent, batch_of, node_edge_mapping,
                                    permuted_pair, SYMMETRY_NETS)
from tests.nn.graphs import random_graph

MODES = ["dense", "sparse"]


def make(seed=0, **kw):
    torch.manual_seed(seed)
    # the test graphs mix output sizes: mean readout unless a test picks one (tests/models/test_paper_defaults.py
    # pins the default, the output neurons concatenated)
    return create_model("ng-t", **{"out_dim": 3, "readout": "mean", **kw}).eval()


def test_registered_and_shapes():
    m = make()
    assert isinstance(m, NGT) and m.input_kind == "graph" and m.permutation_invariant
    data = batch_of([random_graph(seed=0), random_graph((3, 7, 6, 5, 2), seed=1)])
    out = m(data)
    assert out.shape == (2, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("net", SYMMETRY_NETS)
def test_invariant_to_hidden_permutations_of_real_modules(net, mode):
    g1, g2 = permuted_pair(net)
    m = make(mode=mode)
    with torch.no_grad():
        torch.testing.assert_close(m(g1), m(g2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("readout", ["attention", "output_mean", "output_cat"])
def test_readouts_invariant(readout):
    g1, g2 = permuted_pair("wildpark")
    m = make(readout=readout, num_outputs=5, norm_first=True)
    with torch.no_grad():
        torch.testing.assert_close(m(g1), m(g2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_per_edge_outputs_permute(mode):
    g1, g2 = permuted_pair("wildpark")
    node_map, edge_map = node_edge_mapping(g1, g2)
    m = make(mode=mode, head="equivariant")
    with torch.no_grad():
        o1, o2 = m(g1), m(g2)
    assert isinstance(o1, EquivariantOutput)
    assert o1.node.shape == (g1.num_nodes, 3) and o1.edge.shape == (g1.edge_index.size(1), 3)
    torch.testing.assert_close(o2.node[node_map], o1.node, atol=1e-5, rtol=0)
    torch.testing.assert_close(o2.edge[edge_map], o1.edge, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_batching_independence(mode):
    small = random_graph((2, 3, 2), seed=0)
    big = [random_graph((3, 9, 8, 7, 4), seed=1), random_graph((4, 12, 10, 3), seed=2)]
    assert_batch_independent(make(mode=mode), small, big)


@pytest.mark.parametrize("mode", MODES)
def test_batching_independence_equivariant_head(mode):
    small = random_graph((2, 3, 2), seed=0)
    big = random_graph((3, 9, 8, 7, 4), seed=1)
    m = make(mode=mode, head="equivariant")
    with torch.no_grad():
        alone = m(batch_of([small]))
        both = m(batch_of([big, small]))
    n, e = small.num_nodes, small.edge_index.size(1)
    torch.testing.assert_close(both.node[-n:], alone.node, atol=1e-5, rtol=0)
    torch.testing.assert_close(both.edge[-e:], alone.edge, atol=1e-5, rtol=0)


def test_dense_equals_sparse_when_every_pair_is_an_edge():
    # 1 input -> 1 hidden -> 1 output plus a skip 0 -> 2: every ordered pair is an edge, a reverse or a self pair
    g = random_graph((1, 1, 1), seed=3, residual=False)
    g.edge_index = torch.cat([g.edge_index, torch.tensor([[0], [2]])], dim=1)
    g.edge_attr = torch.cat([g.edge_attr, torch.randn(1, g.edge_attr.size(1))])
    g.edge_kind = torch.cat([g.edge_kind, g.edge_kind[:1]])
    g.edge_geom = torch.cat([g.edge_geom, g.edge_geom[:1]])
    dense, sparse = make(mode="dense", head="equivariant"), make(mode="sparse", head="equivariant")
    sparse.load_state_dict(dense.state_dict())
    with torch.no_grad():
        a, b = dense(g), sparse(g)
    torch.testing.assert_close(a.node, b.node, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.edge, b.edge, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [dict(mode="dense"), dict(mode="sparse", norm_first=True),
                                dict(mode="dense", head="equivariant"),
                                dict(mode="sparse", head="equivariant", norm_first=True)])
def test_gradients_reach_every_parameter(kw):
    data = batch_of([random_graph(seed=0), random_graph((3, 7, 6, 5, 2), seed=1)])
    zero = assert_all_grads(make(**kw), data)
    assert not zero, f"all-zero gradient for {zero}"


@pytest.mark.parametrize("mode", MODES)
def test_deterministic_with_seed(mode):
    data = batch_of([random_graph(seed=0), random_graph((3, 7, 6, 5, 2), seed=1)])
    with torch.no_grad():
        a, b = make(seed=7, mode=mode)(data), make(seed=7, mode=mode)(data)
    assert torch.equal(a, b)


def test_activation_embedding_ablation():
    g = random_graph(seed=0)
    other = g.clone()
    other.node_act = (g.node_act + 1) % 4
    on, off = make(), make(encoder={"act_emb": False})
    assert on.encoder.act_emb is not None and off.encoder.act_emb is None
    with torch.no_grad():
        assert not torch.allclose(on(g), on(other))
        torch.testing.assert_close(off(g), off(other), atol=0, rtol=0)


def test_no_modulation_and_no_edge_updates():
    data = batch_of([random_graph(seed=0)])
    for kw in (dict(modulate_v=False), dict(edge_updates=False)):
        out = make(**kw)(data)
        assert out.shape == (1, 3) and torch.isfinite(out).all()


def test_clear_errors():
    with pytest.raises(ValueError, match="mode"):
        create_model("ng-t", mode="ful")
    with pytest.raises(ValueError, match="max_inputs"):
        make(encoder={"max_inputs": 2})(random_graph((3, 4, 2)))
    with pytest.warns(UserWarning, match="num_outputs"):  # the paper's readout without a fixed output size
        assert create_model("ng-t", readout="output_cat").head.readout == "mean"


@pytest.mark.parametrize("mode", MODES)
def test_autocast_bfloat16(mode):
    data = batch_of([random_graph(seed=0), random_graph((3, 7, 6, 5, 2), seed=1)])
    m = make(mode=mode)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(data)
    out.float().square().mean().backward()
    assert out.shape == (2, 3) and torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_size_buckets():
    counts = torch.tensor([5, 0, 3, 9, 3, 8, 4])
    groups = size_buckets(counts, 1.25)
    flat = torch.cat(groups).tolist()
    assert sorted(flat) == [0, 2, 3, 4, 5, 6]  # every graph with nodes exactly once, the empty one left out
    for g in groups:
        n = counts[g]
        assert g.numel() == 1 or g.numel() * n.max() ** 2 <= 1.25 * (n ** 2).sum()
    assert [g.tolist() for g in size_buckets(counts, 1.0)] == [[2, 4], [6], [0], [5], [3]]  # equal sizes only
    assert [g.tolist() for g in size_buckets(counts, None)] == [list(range(7))]
    with pytest.raises(ValueError, match="max_padding"):
        create_model("ng-t", max_padding=0.5)


@pytest.mark.parametrize("head", ["graph", "equivariant"])
def test_dense_grouping_and_recomputation_keep_outputs_and_gradients(head):
    # graphs of 4 to 31 nodes in mixed order: max_padding=1.25 splits them into several dense passes
    shapes = [(3, 9, 8, 7, 4), (2, 3, 2), (4, 12, 10, 3), (2, 2), (3, 5, 4, 2), (3, 9, 8, 6, 4), (2, 4, 3)]
    data = batch_of([random_graph(s, seed=i) for i, s in enumerate(shapes)])
    assert len(size_buckets(torch.bincount(data.batch), 1.25)) > 2
    results = []
    for kw in (dict(max_padding=None), dict(max_padding=1.0), dict(), dict(max_padding=4.0),
               dict(checkpoint=True), dict(max_padding=None, checkpoint=True)):
        m = make(head=head, **kw).train()  # one pass padded to the largest graph is the previous dense path
        out = m(data)
        parts = (out.node, out.edge) if head == "equivariant" else (out,)
        sum(p.square().sum() for p in parts).backward()
        results.append((kw, parts, [p.grad for p in m.parameters()]))
    _, ref_out, ref_grad = results[0]
    for kw, out, grad in results[1:]:
        for a, b in zip(out, ref_out):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda s: f"{kw}: {s}")
        for a, b in zip(grad, ref_grad):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda s: f"{kw} gradient: {s}")
