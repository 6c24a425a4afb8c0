"""NG-GNN: symmetry on real torch modules, degree statistics, batching independence, gradients."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch_geometric.nn.aggr import DegreeScalerAggregation

from neuralgraph import to_neural_graph
from neuralgraph.convert import get_plan
from neuralgraph.models import NGGNN, create_model
from neuralgraph.models.heads import EquivariantOutput, split_outputs, to_parameters
from neuralgraph.nn import degree_histogram
from tests.helpers.nets import MLP, WildParkCNN
from tests.models.ng_checks import (assert_all_grads, assert_batch_independent, batch_of, node_edge_mapping,
                                    permuted_pair, SYMMETRY_NETS)
from tests.nn.graphs import random_graph

GRAPHS = [random_graph(seed=0), random_graph((3, 7, 6, 5, 2), seed=1), random_graph((3, 9, 2), seed=2)]


def make(seed=0, **kw):
    torch.manual_seed(seed)
    # the test graphs mix output sizes: mean readout unless a test picks one (tests/models/test_paper_defaults.py
    # pins the default, the output neurons concatenated)
    m = create_model("ng-gnn", **{"out_dim": 3, "readout": "mean", **kw})
    m.fit_statistics(GRAPHS)
    return m.eval()


def test_registered_and_shapes():
    m = make()
    assert isinstance(m, NGGNN) and m.input_kind == "graph" and m.permutation_invariant
    out = m(batch_of(GRAPHS))
    assert out.shape == (3, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("reverse_edges", [False, True])
@pytest.mark.parametrize("net", SYMMETRY_NETS)
def test_invariant_to_hidden_permutations_of_real_modules(net, reverse_edges):
    g1, g2 = permuted_pair(net)
    m = make(reverse_edges=reverse_edges)
    with torch.no_grad():
        torch.testing.assert_close(m(g1), m(g2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("readout", ["attention", "output_mean", "output_cat"])
def test_readouts_invariant(readout):
    g1, g2 = permuted_pair("wildpark")
    m = make(readout=readout, num_outputs=5, residual=True)
    with torch.no_grad():
        torch.testing.assert_close(m(g1), m(g2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("reverse_edges", [False, True])
def test_per_edge_outputs_permute(reverse_edges):
    g1, g2 = permuted_pair("wildpark")
    node_map, edge_map = node_edge_mapping(g1, g2)
    m = make(head="equivariant", reverse_edges=reverse_edges)
    with torch.no_grad():
        o1, o2 = m(g1), m(g2)
    assert isinstance(o1, EquivariantOutput)
    assert o1.node.shape == (g1.num_nodes, 3) and o1.edge.shape == (g1.edge_index.size(1), 3)
    torch.testing.assert_close(o2.node[node_map], o1.node, atol=1e-5, rtol=0)
    torch.testing.assert_close(o2.edge[edge_map], o1.edge, atol=1e-5, rtol=0)


def test_batching_independence():
    small = random_graph((2, 3, 2), seed=0)
    assert_batch_independent(make(), small, GRAPHS[1:])
    assert_batch_independent(make(reverse_edges=True), small, GRAPHS[1:])


@pytest.mark.parametrize("kw", [dict(), dict(reverse_edges=True, residual=True, dropout=0.1),
                                dict(head="equivariant", readout="attention")])
def test_gradients_reach_every_parameter(kw):
    zero = assert_all_grads(make(**kw), batch_of(GRAPHS))
    assert not zero, f"all-zero gradient for {zero}"


def test_deterministic_with_seed():
    data = batch_of(GRAPHS)
    with torch.no_grad():
        assert torch.equal(make(seed=3)(data), make(seed=3)(data))


def test_degree_statistics_from_training_set():
    deg = degree_histogram(GRAPHS)
    # counts nodes by in-degree; input neurons have in-degree 0
    assert int(deg.sum()) == sum(g.num_nodes for g in GRAPHS)
    assert int(deg[0]) == sum(int((g.node_role == 0).sum()) for g in GRAPHS)
    # the same statistics whether graphs are given one by one or batched
    assert torch.equal(deg, degree_histogram([batch_of(GRAPHS)]))
    m = make()
    ref = DegreeScalerAggregation(["mean"], ["identity"], deg)
    for conv in m.convs:
        assert conv.aggr_module.avg_deg_log.item() == pytest.approx(ref.avg_deg_log.item())
        assert conv.aggr_module.avg_deg_lin.item() == pytest.approx(ref.avg_deg_lin.item())
    # deg given to the constructor == fit_statistics; stats survive state_dict round trips and resets
    torch.manual_seed(0)
    m2 = create_model("ng-gnn", out_dim=3, deg=deg).eval()
    with torch.no_grad():
        torch.testing.assert_close(m2(GRAPHS[0]), m(GRAPHS[0]))
    m3 = create_model("ng-gnn", out_dim=3)
    m3.load_state_dict(m.state_dict())
    m3.reset_parameters()
    assert m3.convs[0].aggr_module.avg_deg_log.item() == pytest.approx(ref.avg_deg_log.item())
    # reversed edges count in the model's histogram
    rev = create_model("ng-gnn", reverse_edges=True).fit_statistics(GRAPHS)
    assert torch.equal(rev, degree_histogram(GRAPHS, reverse_edges=True)) and int(rev[0]) == 0


def test_warns_when_degree_not_fitted():
    m = create_model("ng-gnn", out_dim=1)
    with pytest.warns(UserWarning, match="fit_statistics"):
        m(GRAPHS[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(GRAPHS[0])  # only once


def test_embedding_ablations_remove_the_tables():
    m = make(encoder=dict(pos_emb=False, act_emb=False, role_emb=False, pool_emb=False, spatial_emb=False,
                          kind_emb=False, conv_emb=False, fourier_features=0))
    assert not any(n.endswith("_emb.weight") for n, _ in m.encoder.named_parameters())
    assert m(GRAPHS[0]).shape == (1, 3)


def test_equivariant_outputs_map_onto_parameters():
    torch.manual_seed(0)
    nets = [MLP((4, 6, 3)), WildParkCNN(channels=(4, 6), kernels=(3, 5), acts=("relu", "tanh"), residual=(-1, -1))]
    graphs = [to_neural_graph(n) for n in nets]
    plans = [get_plan(n) for n in nets]
    f_edge, f_node = plans[0].config.edge_dim, plans[0].config.node_dim
    # the graph's own features, read back through the head mapping, are the parameters
    for net, g, plan in zip(nets, graphs, plans):
        params = to_parameters(EquivariantOutput(g.x, g.edge_attr), plan)
        for name, p in net.named_parameters():
            assert torch.equal(params[name], p.detach()), name
    # a model's per-edge / per-node outputs map onto parameter-shaped tensors, graph by graph
    m = make(head="equivariant", out_dim=f_edge, node_out_dim=f_node)
    batch = batch_of(graphs)
    for net, out, plan in zip(nets, split_outputs(m(batch), batch), plans):
        params = to_parameters(out, plan)
        assert {k: v.shape for k, v in params.items()} == {k: v.shape for k, v in net.named_parameters()}
    # and c values per parameter element
    m = make(head="equivariant", out_dim=2 * f_edge, node_out_dim=2 * f_node)
    params = to_parameters(m(graphs[0]), plans[0])
    assert params["layers.0.weight"].shape == (6, 4, 2)
    with pytest.raises(ValueError, match="F_edge"):
        to_parameters(make(head="equivariant")(graphs[0]), plans[0])


def test_autocast_bfloat16():
    m = make(reverse_edges=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(batch_of(GRAPHS))
    out.float().square().mean().backward()
    assert out.shape == (3, 3) and torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
