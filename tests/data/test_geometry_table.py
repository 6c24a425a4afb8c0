"""Edge geometry as a per-graph table (``geometry`` rows, ``edge_geom`` index per edge): batching offsets the index,
a batch executes and embeds exactly like its graphs apart, the index dtype refuses what it cannot hold, and graphs
of the old per-edge format are refused with the fix."""
import pytest
import torch
from torch import nn
from torch_geometric.loader import DataLoader

from neuralgraph import NeuralGraph, execute, to_neural_graph
from neuralgraph.data import graph as graph_mod
from neuralgraph.data.graph import FieldRangeError, geometry_table
from neuralgraph.nn import EncoderConfig, NeuralGraphEncoder
from tests.convert.test_tokens import TinyViT
from tests.helpers.nets import MLP, SmallResNet, WildParkCNN, randomize


def _nets():
    torch.manual_seed(0)
    up = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
                       nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1),
                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    vit = randomize(TinyViT(pool="avg", prefix=2))  # tokens / position edges: grouped by their first 3 columns
    return [WildParkCNN().eval(), MLP().eval(), up.eval(), SmallResNet().eval(), vit.eval()]


def test_conversion_stores_each_distinct_geometry_once():
    m = _nets()[0]
    g = to_neural_graph(m)
    rows = g.edge_conv                                                   # [E, 8] materialised
    assert g.geometry.size(0) == torch.unique(rows, dim=0).size(0) < g.edge_index.size(1)
    assert torch.equal(rows, g.geometry[g.edge_geom.long()])
    # the table of a hand-built graph: the distinct rows, and an index that reproduces every row
    table, index = geometry_table(rows)
    assert table.dtype == torch.int16 and index.dtype == torch.int32 and torch.equal(table[index.long()], rows)
    with pytest.raises(AttributeError, match="derived from geometry and edge_geom"):
        g.edge_conv = rows


def test_a_batch_offsets_the_index_and_executes_and_embeds_like_its_graphs_apart():
    nets = _nets()
    inputs = [torch.randn(2, 1, 16, 16), torch.randn(2, 6), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 16, 16),
              torch.randn(2, 3, 8, 8)]
    graphs = [to_neural_graph(m, example_input=x) for m, x in zip(nets, inputs)]
    assert len({g.geometry.size(0) for g in graphs}) > 1  # tables of different sizes
    batch = next(iter(DataLoader(graphs, batch_size=len(graphs))))
    start = 0
    offsets = []
    for g in graphs:
        offsets.append(start)
        start += g.geometry.size(0)
    assert batch.geometry.size(0) == start
    assert torch.equal(batch.edge_geom, torch.cat([g.edge_geom + o for g, o in zip(graphs, offsets)]))
    assert torch.equal(batch.edge_conv, torch.cat([g.edge_conv for g in graphs]))  # every edge keeps its row
    for i, (m, g, x) in enumerate(zip(nets, graphs, inputs)):
        back = batch.get_example(i)
        assert torch.equal(back.edge_geom, g.edge_geom) and torch.equal(back.geometry, g.geometry)
        y = execute(back, x)
        assert torch.equal(y, execute(g, x))
        with torch.no_grad():
            assert torch.allclose(y.reshape(2, -1), m(x).reshape(2, -1), atol=1e-5)
    torch.manual_seed(0)
    enc = NeuralGraphEncoder(4, 49, 8, 6, EncoderConfig())
    with torch.no_grad():
        edges = enc.encode_edges(batch)
        apart = torch.cat([enc.encode_edges(g) for g in graphs])
    torch.testing.assert_close(edges, apart, rtol=0, atol=0)


def test_the_geometry_embedding_equals_the_per_edge_bag_of_the_rows():
    """Embedding the table and gathering per edge gives each edge exactly the bag of its own row's columns (what
    the per-edge ``edge_conv`` of format 9 gave)."""
    g = to_neural_graph(_nets()[2])
    torch.manual_seed(0)
    enc = NeuralGraphEncoder(4, 49, 8, 6, EncoderConfig())
    with torch.no_grad():
        with_conv = enc.encode_edges(g)
        conv_emb, enc.conv_emb = enc.conv_emb, None
        without = enc.encode_edges(g)
        conv = g.edge_conv.long().clamp(0, 15)                                # [E, 8]
        per_edge = conv_emb(conv + torch.arange(conv.size(1)) * 16)          # one bag per edge: [E, 6]
    assert torch.unique(conv, dim=0).size(0) > 2 and per_edge.abs().sum() > 0
    torch.testing.assert_close(with_conv, without + per_edge, rtol=0, atol=0)


def test_more_distinct_geometries_than_the_index_holds_are_refused(monkeypatch):
    m = nn.Sequential(*[nn.Conv2d(1, 1, 1, stride=s) for s in range(1, 131)])  # 130 distinct strides
    assert to_neural_graph(m).geometry.size(0) == 130
    monkeypatch.setitem(graph_mod.FIELD_DTYPES, "edge_geom", torch.int8)     # an index of at most 128 rows
    with pytest.raises(FieldRangeError, match=r"edge_geom value 129 of the 130 distinct edge geometries .*int8"):
        to_neural_graph(nn.Sequential(*[nn.Conv2d(1, 1, 1, stride=s) for s in range(2, 132)]))  # not cached


def test_a_graph_of_the_old_per_edge_format_is_refused_with_the_upgrade():
    m = _nets()[0]
    g = to_neural_graph(m)
    fields = g.to_dict()
    fields["edge_conv"] = g.edge_conv                                  # format 9: a row per edge, no table
    del fields["geometry"], fields["edge_geom"]
    with pytest.raises(AttributeError, match="geometry_table.*format 9 or older"):
        NeuralGraph.from_dict(fields)                                   # loading its fields refuses it
    old = NeuralGraph.from_fields(fields)                               # as unpickling an old graph object does
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(AttributeError, match="format 9 or older.*geometry_table"):
        execute(old, x)
    with pytest.raises(AttributeError, match="format 9 or older"):
        NeuralGraphEncoder(4, 49, 8, 6, EncoderConfig())(old)
    old.geometry, old.edge_geom = geometry_table(old._store.pop("edge_conv"))  # the upgrade the error names
    assert torch.equal(execute(old, x), execute(g, x))
