import pytest
import torch
from torch_geometric.loader import DataLoader

from neuralgraph import to_neural_graph
from neuralgraph.data.graph import EDGE_KIND
from neuralgraph.transforms import AddReverseEdges, NormalizeLayers
from tests.helpers.nets import MLP, WildParkCNN, permute_wildpark
from tests.helpers.permute import assert_isomorphic, assert_same_function


def test_add_reverse_edges():
    g = to_neural_graph(WildParkCNN())
    r = AddReverseEdges()(g)
    e = g.edge_index.size(1)
    assert r.edge_index.size(1) == 2 * e and r.edge_attr.shape == (2 * e, 50)
    assert torch.equal(r.edge_index[:, e:], g.edge_index.flip(0))
    assert torch.equal(r.edge_attr[e:, :49], g.edge_attr) and r.edge_attr[e:, 49].eq(1).all()
    assert r.edge_attr[:e, 49].eq(0).all() and torch.equal(r.edge_kind[e:], g.edge_kind)
    assert g.edge_index.size(1) == e  # the input is not modified
    plain = AddReverseEdges(mark=False)(g)
    assert plain.edge_attr.size(1) == 49
    batch = next(iter(DataLoader([r, AddReverseEdges()(to_neural_graph(MLP()))], batch_size=2)))
    assert batch.edge_attr.size(1) == 50 and batch.edge_index.max() < batch.num_nodes


def test_normalize_layers_statistics_and_symmetry():
    torch.manual_seed(0)
    train = [to_neural_graph(WildParkCNN()) for _ in range(6)]
    with torch.no_grad():  # give layers very different scales and means (the paper standardises: (W - mu) / sigma)
        for g in train:
            layer = g.node_layer[g.edge_index[1]].float().view(-1, 1)
            g.edge_attr = torch.where(g.edge_attr != 0, g.edge_attr * (1 + layer) ** 2 + 0.5 * layer, 0.0)
    t = NormalizeLayers().fit(train)
    out = [t(g) for g in train]
    for layer in range(1, 6):
        w = torch.cat([o.edge_attr[(o.node_layer[o.edge_index[1]] == layer)
                                   & (o.edge_kind == EDGE_KIND["conv"])] for o in out])
        w = w[w != 0]
        if w.numel():
            assert w.mean().abs() < 1e-4 and w.std(unbiased=False) == pytest.approx(1.0, rel=1e-3)
        b = torch.cat([o.x[(o.node_layer == layer) & (o.x[:, 1] > 0), 0] for o in out])
        assert b.mean().abs() < 1e-4 and b.std(unbiased=False) == pytest.approx(1.0, rel=1e-3)
    # constants stay constants, zero padding stays zero, flags untouched
    res = out[0].edge_kind == EDGE_KIND["residual"]
    assert res.any() and torch.equal(out[0].edge_attr[res], train[0].edge_attr[res])
    assert (out[0].edge_attr == 0).sum() == (train[0].edge_attr == 0).sum()
    assert torch.equal(out[0].x[:, 1], train[0].x[:, 1])
    # per-layer statistics keep the permutation symmetry
    m = WildParkCNN()
    p = permute_wildpark(m, torch.Generator().manual_seed(0))
    assert_same_function(m, p, torch.randn(2, 1, 8, 8))
    assert_isomorphic(t(to_neural_graph(m)), t(to_neural_graph(p)))


def test_normalize_layers_needs_fit():
    with pytest.raises(RuntimeError, match=r"not fitted: call \.fit\(training_graphs\)"):
        NormalizeLayers()(to_neural_graph(MLP()))
