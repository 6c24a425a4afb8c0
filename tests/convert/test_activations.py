"""Activations with parameters: a fixed family name plus its parameters as numbers on the neurons (node feature
columns 2, 3), so any slope / alpha converts without registration and the graph runs the exact function."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import execute, from_neural_graph, to_neural_graph
from neuralgraph.convert import activations as A
from neuralgraph.convert import register_activation
from tests.helpers.permute import (assert_isomorphic, assert_params_moved, assert_same_function, assert_state_equal,
                                   permute_in, permute_out, permuted_copy)


class Fn(nn.Module):
    """``Linear -> fn -> Linear`` with ``fn`` a functional call."""

    def __init__(self, fn):
        super().__init__()
        self.a, self.b, self.fn = nn.Linear(3, 5), nn.Linear(5, 2), fn

    def forward(self, x):
        return self.b(self.fn(self.a(x)))


MODULES = [  # (module, family, parameter columns)
    (nn.LeakyReLU(0.3), "leaky_relu", (0.3,)),
    (nn.LeakyReLU(), "leaky_relu", (0.01,)),
    (nn.ELU(alpha=2.0), "elu", (2.0,)),
    (nn.CELU(alpha=0.5), "celu", (0.5,)),
    (nn.Softplus(beta=3.0), "softplus", (3.0, 20.0)),
    (nn.Softplus(beta=2.0, threshold=5.0), "softplus", (2.0, 5.0)),
    (nn.Hardtanh(-2.0, 2.0), "hardtanh", (-2.0, 2.0)),
    (nn.GELU(approximate="tanh"), "gelu_tanh", ()),
    (nn.GELU(), "gelu", ()),
]
FUNCTIONS = [
    (lambda h: F.leaky_relu(h, 0.2), "leaky_relu", (0.2,)),
    (lambda h: F.leaky_relu(h, negative_slope=0.2), "leaky_relu", (0.2,)),
    (lambda h: F.leaky_relu(h), "leaky_relu", (0.01,)),
    (lambda h: F.gelu(h, approximate="tanh"), "gelu_tanh", ()),
    (lambda h: F.softplus(h, beta=2.0), "softplus", (2.0, 20.0)),
    (lambda h: F.elu(h, 0.5), "elu", (0.5,)),
    (lambda h: F.hardtanh(h, max_val=0.5), "hardtanh", (-1.0, 0.5)),
]


def _check(model, family, values):
    g = to_neural_graph(model)  # no registration
    hidden = slice(3, 8)
    assert g.node_act[hidden].eq(A.activation_id(family)).all()
    expect = torch.zeros(5, 2)
    expect[:, :len(values)] = torch.tensor(values)
    assert torch.equal(g.x[hidden, 2:4], expect)
    assert g.x[:3, 2:].eq(0).all() and g.x[8:, 2:].eq(0).all()  # neurons without a parametric activation
    x = torch.randn(16, 3) * 3
    torch.testing.assert_close(execute(g, x), model(x), atol=1e-5, rtol=1e-5)   # the graph is the function


@pytest.mark.parametrize("module,family,values", MODULES, ids=[f"{f}{v}" for _, f, v in MODULES])
def test_module_parameters_are_node_features(module, family, values):
    _check(nn.Sequential(nn.Linear(3, 5), module, nn.Linear(5, 2)), family, values)


@pytest.mark.parametrize("fn,family,values", FUNCTIONS, ids=[f"{f}{v}-{i}" for i, (_, f, v) in enumerate(FUNCTIONS)])
def test_function_parameters_are_node_features(fn, family, values):
    _check(Fn(fn), family, values)


def test_parameters_tell_functions_apart_and_spellings_agree():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 5), nn.LeakyReLU(), nn.Linear(5, 2))
    g_default = to_neural_graph(m)
    m[1] = nn.LeakyReLU(0.2)
    g_variant = to_neural_graph(m)
    assert torch.equal(g_default.edge_attr, g_variant.edge_attr) and torch.equal(g_default.node_act, g_variant.node_act)
    assert not torch.equal(g_default.x, g_variant.x)  # the slope differs
    m[1] = nn.ELU(2)
    g_int = to_neural_graph(m)
    m[1] = nn.ELU(2.0)
    assert torch.equal(g_int.x, to_neural_graph(m).x)  # nn.ELU(2) and nn.ELU(2.0): one graph
    assert g_int.x.size(1) == 4


def test_registering_a_parameter_variant_name_is_an_error():
    with pytest.raises(ValueError, match="activation parameters are numbers on the neurons"):
        register_activation(None, "leaky_relu(negative_slope=0.2)")


def test_encoder_layer_activation_module_parameters():
    layer = nn.Sequential(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0,
                                                     activation=nn.LeakyReLU(0.3), batch_first=True)).eval()
    g = to_neural_graph(layer)
    leaky = g.node_act.eq(A.activation_id("leaky_relu"))
    assert leaky.sum() == 16 and g.x[leaky, 2].eq(0.3).all()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x), layer(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("per_channel", [True, False])
def test_prelu_slope_is_a_per_neuron_parameter(per_channel):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.PReLU(4 if per_channel else 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.act(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        m.act.weight.uniform_(-0.5, 0.5)
    x = torch.randn(3, 3, 5, 5)
    g = to_neural_graph(m)
    prelu = g.node_act.eq(A.activation_id("prelu"))
    assert prelu.sum() == 4
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x), m(x), atol=1e-5, rtol=1e-4)
    blank = Net()
    assert_state_equal(from_neural_graph(g, blank), m)
    if per_channel:  # the slopes move with their channels
        p = torch.tensor([2, 0, 3, 1])

        def apply(s):
            permute_out(s.conv, p), permute_in(s.fc, p)
            with torch.no_grad():
                s.act.weight.copy_(s.act.weight[p])

        other = permuted_copy(m, apply)
        assert_params_moved(m, other)
        assert_same_function(m, other, x)
        assert_isomorphic(g, to_neural_graph(other))


ELEMENTWISE = [  # (function spelling, tensor-method spelling, family): each named, each run by the executor
    (torch.exp, lambda h: h.exp(), "exp"),
    (torch.abs, lambda h: h.abs(), "abs"),
    (abs, torch.absolute, "abs"),
    (lambda h: torch.abs_(h.clone()), lambda h: h.clone().abs_(), "abs"),  # in place
    (lambda h: torch.exp_(h.clone()), lambda h: h.clone().exp_(), "exp"),
    (lambda h: torch.special.log1p(torch.sigmoid(h)), lambda h: h.sigmoid().log1p_(), "log1p"),
    (torch.erf, lambda h: h.erf(), "erf"),
    (torch.cos, lambda h: h.cos(), "cos"),
    (lambda h: torch.log1p(torch.sigmoid(h)), lambda h: h.sigmoid().log1p(), "log1p"),  # log1p needs h > -1
]


@pytest.mark.parametrize("fn,method,family", ELEMENTWISE, ids=[f for _, _, f in ELEMENTWISE])
def test_named_elementwise_functions_convert_and_run(fn, method, family):
    """``exp``, ``abs``, ``erf``, ``cos``, ``log1p`` were one anonymous ``unknown`` id (two networks differing in
    them gave one graph, which the executor could not run): each has its own id now, both spellings agree, and the
    graph computes the module."""
    torch.manual_seed(0)
    graphs = []
    for spelling in (fn, method):
        m = Fn(spelling)
        g = to_neural_graph(m)
        assert (g.node_act == A.activation_id(family)).any()
        x = torch.randn(16, 3)
        torch.testing.assert_close(execute(g, x), m(x), atol=1e-5, rtol=1e-5)
        graphs.append(g)
    assert torch.equal(graphs[0].node_act, graphs[1].node_act)
    assert A.activation_id("unknown") not in graphs[0].node_act.tolist()


def test_hand_written_exact_gelu_is_the_function_of_its_parts():
    """BERT-style ``0.5 * h * (1 + erf(h / sqrt(2)))``: a scale, ``erf`` on a copy, a constant shift and a product
    of two neuron values; the graph computes ``F.gelu``."""
    m = Fn(lambda h: 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0))))
    g = to_neural_graph(m)
    x = torch.randn(16, 3) * 2
    torch.testing.assert_close(execute(g, x), nn.Sequential(m.a, nn.GELU(), m.b)(x), atol=1e-5, rtol=1e-5)
    blank = copy.deepcopy(m)
    with torch.no_grad():
        for p in blank.parameters():
            p.fill_(float("nan"))
    assert_state_equal(from_neural_graph(g, blank), m)


def test_every_named_activation_runs_in_the_executor():
    from neuralgraph.execute import ACTIVATION_FUNCTIONS, LAYER_ACTIVATIONS, PARAMETRIC_ACTIVATIONS

    runnable = set(ACTIVATION_FUNCTIONS) | set(PARAMETRIC_ACTIVATIONS) | set(LAYER_ACTIVATIONS) | set(A.HEAD_ACTIVATIONS)
    assert [a for a in A.ACTIVATIONS if a != "unknown" and a not in runnable] == []
