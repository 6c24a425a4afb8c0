"""Bad input to the conversion API is one error saying what is wrong: a model that is not a module, a graph
whose fields do not match the template model's graphs, a NaN / Inf value (with its location)."""
import math
import re

import pytest
import torch
from torch import nn

from neuralgraph import from_neural_graph, to_neural_graph


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2, 1))


@pytest.mark.parametrize("model", ["abc", None, torch.zeros(3), {"0.weight": torch.zeros(4, 3)}],
                         ids=["str", "None", "tensor", "state_dict"])
def test_a_model_that_is_not_a_module_is_named(model):
    msg = rf"expected the network as a torch.nn.Module, got {type(model).__name__} "
    with pytest.raises(TypeError, match=msg):
        to_neural_graph(model)
    with pytest.raises(TypeError, match=msg):
        from_neural_graph(to_neural_graph(mlp()), model)
    if isinstance(model, dict):
        with pytest.raises(TypeError, match=r"load it into a module of its architecture first"):
            to_neural_graph(model)


def _cut(g, key, rows=None, cols=None):
    g = g.clone()
    v = g[key]
    g[key] = v[:rows] if cols is None else v[:, :cols]
    return g


EDITS = {  # name -> (edit, the error it must give)
    "edge_attr one edge short": (lambda g: _cut(g, "edge_attr", rows=-1), r"edge_attr has shape \(\d+, 49\), not"),
    "edge_attr features cut": (lambda g: _cut(g, "edge_attr", cols=9),
                               r"edge_attr has shape \(\d+, 9\), not \(\d+, 49\)"),
    "edge_attr flattened": (lambda g: _cut(g, "edge_attr").edge_attr[:, 0], None),
    "x one node short": (lambda g: _cut(g, "x", rows=-1), r"x has shape \(\d+, 4\), not"),  # F_node = 4
    "x features cut": (lambda g: _cut(g, "x", cols=1), r"x has shape \(\d+, 1\), not \(\d+, 4\)"),
    "edges rewired": (lambda g: g.clone().update({"edge_index": g.edge_index.flip(1)}),
                      r"edge_index connects other nodes"),
}


@pytest.mark.parametrize("make", [mlp, cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("edit", list(EDITS))
def test_a_graph_that_does_not_match_the_template_is_named(make, edit):
    m = make()
    g = to_neural_graph(m, example_input=torch.randn(1, 1, 8, 8) if make is cnn else None)
    change, match = EDITS[edit]
    bad = change(g)
    if match is None:  # a tensor, not a graph
        with pytest.raises(TypeError, match=r"expected a NeuralGraph \(x, edge_index and edge_attr tensors\), got "
                                            r"Tensor without x, edge_index, edge_attr"):
            from_neural_graph(bad, m)
        g.edge_attr = g.edge_attr[:, 0]
        with pytest.raises(ValueError, match=r"not a neural graph: edge_attr has shape \(\d+,\)"):
            from_neural_graph(g, m)
        return
    with pytest.raises(ValueError, match=r"the graph does not belong to this architecture/configuration .*" + match):
        from_neural_graph(bad, m)


def test_a_graph_of_another_architecture_is_named():
    g = to_neural_graph(mlp())
    other = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"graphs have 10 nodes x 4, 25 edges x 49\): x has shape \(9, 4\), not "
                                         r"\(10, 4\); edge_index has shape \(2, 20\), not \(2, 25\)"):
        from_neural_graph(g, other)


def test_extra_node_columns_are_ignored():
    m = mlp()
    g = to_neural_graph(m)
    g.x = torch.cat([g.x, torch.randn(g.num_nodes, 3)], 1)     # features appended by a transform
    back = from_neural_graph(g, m)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), back.state_dict().values()))


def _same(a, value):
    return (math.isnan(value) and math.isnan(float(a))) or float(a) == value


@pytest.mark.parametrize("param,index,value", [("2.weight", (1, 3), float("nan")), ("0.bias", (2,), float("inf")),
                                               ("2.bias", (0,), float("-inf"))])
def test_a_nonfinite_value_is_refused_with_its_location_or_round_trips(param, index, value):
    """NaN / Inf in a graph: refused by default, as by to_neural_graph, naming the parameter, its element and
    where the graph holds it (a module read back from it would compute NaN; a diverged edit should not pass
    silently); with allow_nonfinite=True it is read back exactly where it was."""
    m = mlp()
    with torch.no_grad():
        m.get_parameter(param)[index] = value
    g = to_neural_graph(m, allow_nonfinite=True)
    element = ", ".join(map(str, index))
    with pytest.raises(ValueError, match=rf"the graph holds a NaN or Inf value: parameter '{param}'\[{element}\] = "
                                         rf"{value} at .*allow_nonfinite=True") as err:
        from_neural_graph(g, m)
    # the named position holds that value, and the named edge is that edge of the graph
    found = re.search(r"at edge_attr\[(\d+), (\d+)\] \(edge (\d+) -> (\d+)\)", str(err.value))
    if found:
        e, f, s, t = map(int, found.groups())
        assert _same(g.edge_attr[e, f], value)
        assert g.edge_index[:, e].tolist() == [s, t]
    else:
        n, f = map(int, re.search(r"at x\[(\d+), (\d+)\] \(node \d+\)", str(err.value)).groups())
        assert _same(g.x[n, f], value)
    back = from_neural_graph(g, m, allow_nonfinite=True)
    for a, b in zip(m.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())
