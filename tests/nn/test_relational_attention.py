"""Relational attention: dense == sparse on complete graphs, masking, value modulation (eq. 5)."""
from __future__ import annotations

import pytest
import torch

from neuralgraph.nn import RelationalAttention, RelationalEdgeUpdate, RelationalTransformerLayer


def complete(n: int):
    s, t = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return torch.stack([s.reshape(-1), t.reshape(-1)])  # every (source, target), self pairs included


@pytest.mark.parametrize("modulate_v", [True, False])
def test_sparse_on_complete_graph_equals_dense(modulate_v):
    torch.manual_seed(0)
    n, F, Fe = 5, 8, 4
    attn = RelationalAttention(F, Fe, 8, heads=2, modulate_v=modulate_v)
    x = torch.randn(1, n, F)
    e = torch.randn(1, n, n, Fe)  # e[0, i, j]: pair target i, source j
    dense = attn(x, e, mask=torch.ones(1, n, dtype=torch.bool))
    ei = complete(n)
    sparse = attn(x[0], e[0, ei[1], ei[0]], edge_index=ei)
    assert dense.shape == (1, n, F) and sparse.shape == (n, F)
    torch.testing.assert_close(dense[0], sparse, atol=1e-5, rtol=1e-5)


def test_value_modulation_formula():
    torch.manual_seed(0)
    attn = RelationalAttention(3, 2, 4, heads=1)
    x = torch.randn(2, 3)
    ei = torch.tensor([[0], [1]])  # the only edge 0 -> 1: node 1 attends to node 0 with weight 1
    e = torch.randn(1, 2)
    out = attn(x, e, edge_index=ei)
    q, k, v = attn.qkv_node(x).chunk(3, -1)
    qe, ke, v_shift, v_scale = attn.qkv_edge(e).chunk(4, -1)
    torch.testing.assert_close(out[1], attn.proj(v_scale[0] * v[0] + v_shift[0]))
    torch.testing.assert_close(out[0], attn.proj.bias)  # no incoming edge: nothing to attend to


def test_dense_padding_is_masked():
    torch.manual_seed(0)
    layer = RelationalTransformerLayer(8, 4, 8, 16, 8, heads=2)
    x = torch.randn(1, 6, 8)
    e = torch.randn(1, 6, 6, 4)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    a = layer(x, e, mask=mask)
    x2, e2 = x.clone(), e.clone()
    x2[:, 4:] = 100 * torch.randn(2, 8)  # garbage in padding
    e2[:, 4:] = 100 * torch.randn(2, 6, 4)
    e2[:, :, 4:] = 100 * torch.randn(6, 2, 4)
    b = layer(x2, e2, mask=mask)
    torch.testing.assert_close(a[0][:, :4], b[0][:, :4])
    torch.testing.assert_close(a[1][:, :4, :4], b[1][:, :4, :4])


@pytest.mark.parametrize("norm_first", [False, True])
def test_layer_sparse_equals_dense_with_edge_updates(norm_first):
    torch.manual_seed(0)
    n = 4
    layer = RelationalTransformerLayer(8, 4, 8, 16, 8, heads=2, norm_first=norm_first)
    x, e = torch.randn(1, n, 8), torch.randn(1, n, n, 4)
    xd, ed = layer(x, e, mask=torch.ones(1, n, dtype=torch.bool))
    ei = complete(n)
    pair = ei[0] * n + ei[1]  # flat (source, target); partner of (s, t) is (t, s)
    partner = ei[1] * n + ei[0]
    assert torch.equal(pair, torch.arange(n * n))
    xs, es = layer(x[0], e[0, ei[1], ei[0]], edge_index=ei, partner=partner)
    torch.testing.assert_close(xd[0], xs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ed[0, ei[1], ei[0]], es, atol=1e-5, rtol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="divisible"):
        RelationalAttention(8, 4, 6, heads=4)
    attn = RelationalAttention(8, 4, 8)
    with pytest.raises(ValueError, match="edge_index"):
        attn(torch.randn(3, 8), torch.randn(2, 4))
    with pytest.raises(ValueError, match="partner"):
        RelationalEdgeUpdate(8, 4, 8)(torch.randn(3, 8), torch.randn(2, 4), torch.tensor([[0, 1], [1, 2]]))
