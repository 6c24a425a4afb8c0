"""Large models fail fast, before the graph is allocated, with the estimated size and the options that shrink it;
the compact format (int16 geometry, no dense template) keeps round trips exact."""
import time

import pytest
import torch
from torch import nn

from neuralgraph import from_neural_graph, to_neural_graph
from neuralgraph.convert import GraphTooLargeError, builder, get_plan
from neuralgraph.data.graph import FIELD_DTYPES
from tests.helpers.permute import assert_state_equal


def test_max_edges_refuses_early():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert to_neural_graph(m, max_edges=20).edge_index.size(1) == 20
    with pytest.raises(GraphTooLargeError, match=r"max_edges=19 .*20"):
        to_neural_graph(m, max_edges=19)


def test_model_too_large_for_memory_fails_before_allocating(monkeypatch):
    monkeypatch.setattr(builder, "available_memory", lambda: 2**30)  # 1 GB free
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 2000))  # 14.4M edges
    start = time.perf_counter()
    with pytest.raises(GraphTooLargeError,
                       match=r"needs about 3\.0 GB \(14,407,224 edges.* 1\.0 GB available.*max_kernel=\(3, 3\)"):
        to_neural_graph(m, torch.randn(1, 3, 32, 32))
    assert time.perf_counter() - start < 5   # the 14.4M edges were never built


def test_available_memory_respects_an_address_space_limit(monkeypatch):
    """Under ``ulimit -v`` the memory left is the limit minus the process's size, not the machine's free memory."""
    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    monkeypatch.setattr(builder.resource, "getrlimit", lambda what: (size + 2**30, size + 2**30))
    assert 0 < builder.available_memory() <= 2**30


def test_compact_geometry_and_constants_round_trip():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3, eps=1e-3), nn.ReLU(),
                      nn.Conv2d(3, 3, 5, dilation=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    g = to_neural_graph(m)
    assert g.geometry.dtype == FIELD_DTYPES["geometry"] == torch.int16 and g.edge_kind.dtype == torch.int8
    assert g.edge_geom.dtype == FIELD_DTYPES["edge_geom"] == torch.int32 and g.geometry.size(0) == 3  # 2 conv, 1 other
    conv = g.edge_conv[g.edge_kind == 1]
    assert {tuple(r) for r in conv.tolist()} == {(2, 2, 1, 1, 1, 1, 3, 3), (1, 1, 0, 0, 2, 2, 5, 5)}
    plan = get_plan(m)
    assert not hasattr(plan, "edge_attr0") and plan.const_pos.numel() == 3  # BatchNorm eps, one per channel
    assert torch.allclose(g.edge_attr.view(-1)[plan.const_pos], torch.full((3,), 1e-3))
    assert_state_equal(m, from_neural_graph(g, m))


def test_large_graph_reads_back_with_memory_for_the_plan_only(monkeypatch):
    """A large architecture's plan is not cached (its graph owns the index tensors), so reading the graph back
    traces again; that trace needs memory for the plan, not for a second graph."""
    from neuralgraph.convert import plan as plan_mod

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2000, 1100), nn.ReLU(), nn.Linear(1100, 3))  # 2.2M edges
    g = to_neural_graph(m)
    assert g.edge_index.size(1) > plan_mod.UNCACHED_EDGES
    assert not any(p.num_edges == g.edge_index.size(1) for p in plan_mod._PLANS.values())
    monkeypatch.setattr(builder, "available_memory", lambda: 300 * 2**20)  # below the graph's 0.55 GB
    with pytest.raises(GraphTooLargeError, match=r"needs about 0\.5 GB"):
        to_neural_graph(m)
    assert_state_equal(m, from_neural_graph(g, m))


def test_a_read_back_too_large_for_memory_says_so_and_offers_no_smaller_kernel(monkeypatch):
    """Reading a large graph back traces a plan without edge features; when even that does not fit, the refusal says
    it is the read-back's trace and does not offer ``max_kernel=(3, 3)``, which would need more (9 features per edge,
    not 0). The sweep of session 12 saw "converting this model needs about 0.7 GB (... x 49 edge features ...) ...
    max_kernel=(3, 3) needs about 1.5 GB" reading timm's focalnet_tiny_srf back under an address-space limit."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2000, 1100), nn.ReLU(), nn.Linear(1100, 3))  # 2.2M edges: the plan is not cached
    g = to_neural_graph(m)
    monkeypatch.setattr(builder, "available_memory", lambda: 20 * 2**20)  # below the read-back plan's ~60 MB
    with pytest.raises(GraphTooLargeError) as err:
        from_neural_graph(g, m)
    msg = str(err.value)
    assert "to read a graph back" in msg and "no edge features" in msg and "max_kernel" not in msg, msg
    with pytest.raises(GraphTooLargeError, match=r"converting this model .* x 49 edge features"):
        to_neural_graph(m)
