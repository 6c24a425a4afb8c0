"""MLPs: structure, semantics, round trip, symmetry."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import execute, from_neural_graph, to_neural_graph
from neuralgraph.convert import ACTIVATIONS
from neuralgraph.data.graph import EDGE_KIND, ROLE
from tests.helpers.nets import MLP, permute_mlp
from tests.helpers.permute import (assert_isomorphic, assert_params_moved, assert_same_function,
                                   assert_state_equal)


def test_mlp_structure():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    g = to_neural_graph(m)
    assert g.num_nodes == 3 + 4 + 2 and g.edge_index.size(1) == 3 * 4 + 4 * 2
    assert g.x.shape == (9, 4) and g.edge_attr.shape == (20, 49)
    assert g.node_role.tolist() == [ROLE["input"]] * 3 + [ROLE["hidden"]] * 4 + [ROLE["output"]] * 2
    assert g.node_pos.tolist() == [0, 1, 2, 1, 1, 1, 1, 0, 1]
    assert g.node_layer.tolist() == [0] * 3 + [1] * 4 + [2] * 2
    assert g.node_act.tolist() == [0] * 3 + [ACTIVATIONS.index("relu")] * 4 + [0] * 2
    # biases and has-bias flags: first layer has them, second layer has none, inputs have none
    assert torch.equal(g.x[3:7, 0], m[0].bias.detach()) and g.x[3:7, 1].eq(1).all()
    assert g.x[:3].eq(0).all() and g.x[7:].eq(0).all()
    # weights on the centre tap only, edge (o, i) carries W[o, i]
    centre = 24
    assert g.edge_attr[:, :centre].eq(0).all() and g.edge_attr[:, centre + 1:].eq(0).all()
    for e, (s, d) in enumerate(g.edge_index.t().tolist()):
        layer = m[0] if d < 7 else m[2]
        o, i = (d - 3, s) if d < 7 else (d - 7, s - 3)
        assert g.edge_attr[e, centre] == layer.weight[o, i]
    assert g.edge_kind.eq(EDGE_KIND["linear"]).all()


@pytest.mark.parametrize("bias", [True, False])
def test_mlp_semantics_roundtrip_symmetry(bias):
    torch.manual_seed(1)
    m = MLP(bias=bias)
    x = torch.randn(7, 6)
    g = to_neural_graph(m)
    with torch.no_grad():
        assert torch.allclose(execute(g, x), m(x), atol=1e-6)
    assert_state_equal(m, from_neural_graph(g, m))
    p = permute_mlp(m, torch.Generator().manual_seed(0))
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p))


class FunctionalActs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 1)

    def forward(self, x):
        x = torch.tanh(self.a(x))
        x = self.b(x).sigmoid()
        x = F.gelu(self.c(x))
        return torch.sin(self.d(x))


def test_activations_written_as_functions_and_methods():
    m = FunctionalActs()
    g = to_neural_graph(m)
    acts = [ACTIVATIONS[i] for i in g.node_act.tolist()]
    assert acts == ["none"] * 2 + ["tanh"] * 3 + ["sigmoid"] * 3 + ["gelu"] * 3 + ["sin"]
    x = torch.randn(4, 2)
    with torch.no_grad():
        assert torch.allclose(execute(g, x), m(x), atol=1e-6)


class PreActivationReused(nn.Module):
    """The pre-activation of `a` is read twice: relu(a) feeds b, and a itself is added after b."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        y = self.b(torch.relu(h))
        return self.c(torch.tanh(y + h))


def test_activation_on_a_value_read_elsewhere_adds_an_identity_layer():
    m = PreActivationReused()
    g = to_neural_graph(m)
    assert (g.edge_kind == EDGE_KIND["identity"]).sum() == 4  # relu layer on a copy of h
    assert (g.edge_kind == EDGE_KIND["residual"]).sum() == 4  # h added into b's neurons
    x = torch.randn(5, 3)
    with torch.no_grad():
        assert torch.allclose(execute(g, x), m(x), atol=1e-6)
    assert_state_equal(m, from_neural_graph(g, m))


def test_activation_of_activation_and_doubling():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 3), nn.Linear(3, 1)

        def forward(self, x):
            h = torch.relu(torch.tanh(self.a(x)))
            return self.b(h + h)

    m = M()
    g = to_neural_graph(m)
    x = torch.randn(6, 2)
    with torch.no_grad():
        assert torch.allclose(execute(g, x), m(x), atol=1e-6)


def test_float64_roundtrip_is_exact_and_keeps_dtype():
    m = MLP().double()
    g = to_neural_graph(m)
    assert g.x.dtype == torch.float64 and g.edge_attr.dtype == torch.float64
    assert_state_equal(m, from_neural_graph(g, m))


class _Branches(nn.Module):
    """Two branches of different depth summed: ``a(x) + b2(tanh(b(x)))`` (or equal depth)."""

    def __init__(self, deep: bool):
        super().__init__()
        self.deep = deep
        self.a, self.b, self.b2, self.c = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        other = self.b2(torch.tanh(self.b(x))) if self.deep else self.b(x)
        return self.c(torch.relu(self.a(x) + other))


@pytest.mark.parametrize("deep", [False, True])
def test_sum_of_branches_keeps_layers_in_dataflow_order(deep):
    torch.manual_seed(0)
    m = _Branches(deep)
    g = to_neural_graph(m)
    src, dst = g.edge_index
    assert (g.node_layer[dst] > g.node_layer[src]).all()       # every edge goes one or more layers deeper
    x = torch.randn(5, 3)
    with torch.no_grad():
        assert torch.allclose(execute(g, x), m(x), atol=1e-6)
    assert_state_equal(m, from_neural_graph(g, m))
