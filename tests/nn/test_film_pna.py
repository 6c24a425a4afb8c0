"""FiLMPNAConv: eq. 3-4 against a direct computation, PyG aggregation reuse, degree statistics."""
from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.nn.aggr import DegreeScalerAggregation

from neuralgraph.nn import FiLMPNAConv, degree_histogram
from tests.nn.graphs import random_graph


def tiny():
    torch.manual_seed(0)
    edge_index = torch.tensor([[0, 1, 2, 0, 3], [2, 2, 3, 3, 1]])  # in-degrees: 0, 1, 2, 2
    return torch.randn(4, 5), edge_index, torch.randn(5, 3)


def test_messages_are_film_of_edges_and_pna_aggregated():
    x, ei, e = tiny()
    deg = torch.tensor([1, 1, 2])
    conv = FiLMPNAConv(5, 3, deg, aggregators=["mean", "max"], scalers=["identity", "amplification"])
    assert isinstance(conv.aggr_module, DegreeScalerAggregation)
    out = conv(x, ei, e)
    assert out.shape == (4, 5)
    avg_log = (math.log(1) * 1 + math.log(2) * 1 + math.log(3) * 2) / 4
    expected = []
    for i in range(4):
        msgs = []
        for k in range(ei.size(1)):
            if ei[1, k] == i:
                j = ei[0, k]
                scale, shift = conv.film(e[k]).chunk(2)
                phi_m = conv.msg_dst(x[i]) + conv.msg_src(x[j])  # phi_m([v_i, v_j]), linear
                msgs.append(scale * phi_m + shift)
        d = len(msgs)
        if d == 0:
            agg = torch.zeros(2 * 5)
        else:
            m = torch.stack(msgs)
            agg = torch.cat([m.mean(0), m.max(0).values])
        amp = math.log(d + 1) / avg_log
        expected.append(conv.post(torch.cat([x[i], agg, agg * amp])))
    torch.testing.assert_close(out, torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_edge_update_is_mlp_of_endpoints_and_edge():
    x, ei, e = tiny()
    conv = FiLMPNAConv(5, 3)
    new = conv.update_edges(x, ei, e)
    assert new.shape == e.shape
    k = 3
    i, j = ei[1, k], ei[0, k]
    ref = conv.edge_out(conv.edge_act(conv.edge_lin(e[k]) + conv.edge_dst(x[i]) + conv.edge_src(x[j])))
    torch.testing.assert_close(new[k], ref)
    with pytest.raises(RuntimeError, match="edge_update=False"):
        FiLMPNAConv(5, 3, edge_update=False).update_edges(x, ei, e)


def test_set_degree_matches_constructor():
    x, ei, e = tiny()
    deg = degree_histogram([random_graph(seed=0), random_graph((2, 4, 3), seed=1)])
    torch.manual_seed(1)
    a = FiLMPNAConv(5, 3, deg)
    torch.manual_seed(1)
    b = FiLMPNAConv(5, 3)
    b.set_degree(deg)
    torch.testing.assert_close(a(x, ei, e), b(x, ei, e))
    assert "avg_deg_log" in "".join(b.state_dict())
    with pytest.raises(ValueError, match="empty"):
        b.set_degree(torch.zeros(3))


def test_degree_histogram_counts_in_degrees():
    g = random_graph((2, 3, 1), seed=0, residual=False)
    deg = degree_histogram([g])
    assert deg.tolist() == [2, 0, 3, 1]  # inputs: 0; hidden: 2 each; output: 3
    assert degree_histogram([g], reverse_edges=True).tolist() == [0, 0, 0, 6]  # every node: 3 in + out
    with pytest.raises(ValueError, match="no nodes"):
        degree_histogram([])


def test_stable_std_matches_pyg_and_is_exact_for_single_messages():
    from torch_geometric.nn.aggr import StdAggregation

    from neuralgraph.nn.film_pna import StableStdAggregation

    torch.manual_seed(0)
    x = torch.randn(50, 4)
    index = torch.randint(0, 6, (50,))
    torch.testing.assert_close(StableStdAggregation()(x, index, dim_size=7), StdAggregation()(x, index, dim_size=7),
                               atol=1e-5, rtol=1e-5)
    big = torch.full((1, 4), 1e3) + torch.randn(1, 4)  # one large message: std is exactly 0
    assert StableStdAggregation()(big, torch.tensor([0]), dim_size=1).abs().max() == 0
    # order independence on large, nearly equal messages
    vals = 300.0 + 0.1 * torch.randn(9, 4)
    idx = torch.zeros(9, dtype=torch.long)
    perm = torch.randperm(9)
    a = StableStdAggregation()(vals, idx, dim_size=1)
    b = StableStdAggregation()(vals[perm], idx, dim_size=1)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
