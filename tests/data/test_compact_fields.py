"""Integer fields in compact dtypes (``FIELD_DTYPES``): values out of range are refused, never wrapped; graphs keep
batching, saving, running and transforming exactly as with int64 fields (the format before version 9)."""
import io

import pytest
import torch
from torch import nn
from torch_geometric.loader import DataLoader

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from neuralgraph.data.graph import (EDGE_CATEGORIES, FIELD_DTYPES, NODE_CATEGORIES, FieldRangeError, NeuralGraph,
                                    compact_field)
from neuralgraph.models import create_model
from neuralgraph.transforms import NormalizeLayers, PermuteNeurons
from tests.helpers.nets import SmallResNet, WildParkCNN
from tests.helpers.permute import assert_state_equal


def _nets() -> list[nn.Module]:
    torch.manual_seed(0)
    pooled = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.GELU(),
                           nn.MaxPool2d(3, 1, padding=1), nn.Conv2d(4, 3, 5, dilation=2), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten(), nn.Linear(3, 2))
    for bn in pooled.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
    return [pooled.eval(), WildParkCNN(), SmallResNet().eval()]


def _as_int64(g: NeuralGraph) -> NeuralGraph:
    """``g`` with every integer field int64, as graphs of FORMAT_VERSION <= 8 stored them."""
    old = g.clone()
    for k in (*NODE_CATEGORIES, *EDGE_CATEGORIES):
        old[k] = g[k].long()
    return old


def test_converted_fields_have_the_compact_dtypes_and_keep_them_through_batching_and_saving():
    graphs = [to_neural_graph(m) for m in _nets()]
    for g in graphs:
        assert {k: g[k].dtype for k in FIELD_DTYPES} == FIELD_DTYPES
    assert FIELD_DTYPES["edge_kind"] == torch.int8 and FIELD_DTYPES["geometry"] == torch.int16
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    assert {k: batch[k].dtype for k in FIELD_DTYPES} == FIELD_DTYPES
    for i, g in enumerate(graphs):
        back = batch.get_example(i)
        for k in FIELD_DTYPES:
            assert back[k].dtype == g[k].dtype and torch.equal(back[k], g[k]), k
    buf = io.BytesIO()  # as the processed-graph cache (ZooDataset) stores graphs: plain tensors
    torch.save(graphs[0].to_dict(), buf)
    buf.seek(0)
    loaded = NeuralGraph.from_dict(torch.load(buf, weights_only=True))
    for k in graphs[0].keys():
        assert loaded[k].dtype == graphs[0][k].dtype and torch.equal(loaded[k], graphs[0][k]), k


@pytest.mark.parametrize("name, value", [("edge_kind", 128), ("edge_kind", -129), ("node_role", 300),
                                         ("node_act", 40000), ("geometry", 32768), ("edge_geom", 2**31), ("node_window", -32769)])
def test_a_value_out_of_its_dtype_is_refused_not_wrapped(name, value):
    info = torch.iinfo(FIELD_DTYPES[name])
    with pytest.raises(FieldRangeError, match=rf"{name} value {value} .*\[{info.min}, {info.max}\]"):
        compact_field(name, [1, value])
    with pytest.raises(FieldRangeError, match=rf"{name} value {value}"):
        compact_field(name, torch.tensor([value, 0]))  # an int64 tensor: a plain .to() would wrap it
    edge = torch.tensor([info.min, -1, 0, 1, info.max])
    assert torch.equal(compact_field(name, edge).long(), edge)  # every legal value is kept exactly
    with pytest.raises(TypeError, match=f"{name} holds integers"):
        compact_field(name, torch.tensor([1.5]))


def test_the_converter_refuses_a_geometry_its_fields_cannot_hold_naming_the_module():
    x = torch.randn(2, 1, 3, 3)
    fits = nn.Sequential(nn.Conv2d(1, 2, 1, stride=32767), nn.ReLU(), nn.AvgPool2d(1, stride=32767))
    g = to_neural_graph(fits, x)
    assert int(g.geometry.max()) == 32767 and int(g.node_window.max()) == 32767
    assert torch.allclose(execute(g, x).reshape(2, -1), fits(x).reshape(2, -1), atol=1e-6)
    with pytest.raises(UnsupportedModuleError, match=r"0 \(torch\.nn\.modules\.conv\.Conv2d\): geometry value 32768"
                                                     r" of conv edges does not fit its dtype int16"):
        to_neural_graph(nn.Sequential(nn.Conv2d(1, 2, 1, stride=32768)), x)
    with pytest.raises(UnsupportedModuleError, match=r"1 \(torch\.nn\.modules\.pooling\.AvgPool2d\): node_window "
                                                     r"value 40000 of the pooling window"):
        to_neural_graph(nn.Sequential(nn.Conv2d(1, 2, 1), nn.AvgPool2d(1, stride=40000)), x)


def test_graphs_with_int64_fields_run_batch_and_transform_as_the_compact_ones():
    """Graphs converted before the compact dtypes (int64 fields) and after give the same results everywhere, and
    batch together with the stock DataLoader."""
    nets = _nets()
    new = [to_neural_graph(m) for m in nets]
    old = [_as_int64(g) for g in new]
    for m, g, h, shape in zip(nets, new, old, [(2, 17, 17), (1, 8, 8), (3, 8, 8)]):
        x = torch.randn(3, *shape)
        with torch.no_grad():
            y = m(x)
        assert torch.allclose(execute(g, x), y, atol=1e-5) and torch.equal(execute(h, x), execute(g, x))
        assert_state_equal(m, from_neural_graph(g, m))
        assert_state_equal(m, from_neural_graph(h, m))
        p_new, p_old = PermuteNeurons(seed=3)(g), PermuteNeurons(seed=3)(h)
        assert torch.equal(p_new.edge_attr, p_old.edge_attr) and torch.equal(p_new.x, p_old.x)
        assert p_new.edge_kind.dtype == torch.int8
    norm = NormalizeLayers().fit(new)
    assert torch.equal(norm(new[1]).edge_attr, NormalizeLayers().fit(old)(old[1]).edge_attr)
    torch.manual_seed(0)
    model = create_model("ng-t", out_dim=1, node_dim=8, edge_dim=4, num_layers=1, readout="mean").eval()
    mixed = next(iter(DataLoader([new[0], old[1], new[2]], batch_size=3)))
    compact = next(iter(DataLoader(new, batch_size=3)))
    with torch.no_grad():
        assert torch.equal(model(mixed), model(compact))
