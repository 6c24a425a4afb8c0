"""NeuralGraph batching with the stock PyG DataLoader, across architectures."""
import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from neuralgraph import NeuralGraph, to_neural_graph
from neuralgraph.data.graph import EDGE_CATEGORIES, NODE_CATEGORIES
from tests.helpers.nets import MLP, SmallResNet, WildParkCNN


def test_heterogeneous_batching_roundtrips_every_field():
    torch.manual_seed(0)
    graphs = [to_neural_graph(m) for m in (MLP(), WildParkCNN(), SmallResNet(), WildParkCNN(channels=(4, 4),
              kernels=(3, 5), acts=("relu", "gelu"), residual=(-1, -1)))]
    for g in graphs:
        g.y = torch.tensor([0.5])
    loader = DataLoader(graphs, batch_size=4)
    batch = next(iter(loader))
    assert isinstance(batch, Batch) and batch.num_graphs == 4
    assert batch.x.size(1) == 4 and batch.edge_attr.size(1) == 49
    assert batch.y.shape == (4,)
    offset = 0
    for i, g in enumerate(graphs):
        back = batch.get_example(i)
        assert isinstance(back, NeuralGraph)
        for key in ("x", "edge_index", "edge_attr", *NODE_CATEGORIES, *EDGE_CATEGORIES):
            assert torch.equal(back[key], g[key]), key
        # categorical fields are concatenated, never offset; only edge_index is
        sl = slice(offset, offset + g.num_nodes)
        assert torch.equal(batch.node_pos[sl], g.node_pos) and torch.equal(batch.node_layer[sl], g.node_layer)
        assert (batch.batch[sl] == i).all()
        offset += g.num_nodes
    assert batch.edge_index.max() == offset - 1


def test_io_node_helpers():
    g = to_neural_graph(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)))
    assert g.input_nodes().tolist() == [0, 1, 2] and g.output_nodes().tolist() == [8, 9]


def test_from_fields_equals_the_keyword_constructor():
    g = to_neural_graph(MLP())
    fields = {k: g[k] for k in g.keys()}
    a, b = NeuralGraph.from_fields(fields), NeuralGraph(**fields)
    assert sorted(a.keys()) == sorted(b.keys()) and a.num_nodes == b.num_nodes
    for k in fields:
        assert a[k] is b[k]
    batch = Batch.from_data_list([a, b])
    assert batch.num_graphs == 2 and batch.edge_index.max() == 2 * g.num_nodes - 1


def test_every_edge_kind_is_declared_once_and_documented():
    from pathlib import Path

    from neuralgraph.data.graph import EDGE_KIND_TABLE, EDGE_KINDS

    assert len(set(EDGE_KINDS)) == len(EDGE_KINDS) == len(EDGE_KIND_TABLE)
    ops = {"scalar", "conv", "flatten", "batchnorm", "instancenorm", "groupnorm", "layernorm", "attention", "product",
           "tokens", "subsample", "upsample", "conv_transpose", "none"}
    docs = (Path(__file__).resolve().parents[2] / "docs" / "formats.md").read_text()
    for kind in EDGE_KIND_TABLE:
        assert kind.op in ops and kind.reads in ("linear", "value", "map"), kind
        assert f"`{kind.name}`" in docs, f"edge kind {kind.name!r} is not described in docs/formats.md"
