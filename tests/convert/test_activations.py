"""Activations with parameters: a non-default parameter is a different function, so it gets its own
vocabulary name (registered explicitly) instead of silently sharing its family's id."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, to_neural_graph
from neuralgraph.convert import activations as A
from neuralgraph.convert import register_activation
from neuralgraph.convert.plan import clear_plan_cache


@pytest.fixture
def vocabulary():
    """Restore the global activation vocabulary after a test registers variants."""
    saved = list(A.ACTIVATIONS)
    yield
    A.ACTIVATIONS[:] = saved
    clear_plan_cache()


class Fn(nn.Module):
    """``Linear -> fn -> Linear`` with ``fn`` a functional call."""

    def __init__(self, fn):
        super().__init__()
        self.a, self.b, self.fn = nn.Linear(3, 5), nn.Linear(5, 2), fn

    def forward(self, x):
        return self.b(self.fn(self.a(x)))


MODULES = [  # (module, variant name)
    (nn.LeakyReLU(0.3), "leaky_relu(negative_slope=0.3)"),
    (nn.ELU(alpha=2.0), "elu(alpha=2.0)"),
    (nn.CELU(alpha=0.5), "celu(alpha=0.5)"),
    (nn.Softplus(beta=3.0), "softplus(beta=3.0)"),
    (nn.Softplus(beta=2.0, threshold=5.0), "softplus(beta=2.0, threshold=5.0)"),
    (nn.Hardtanh(-2.0, 2.0), "hardtanh(min_val=-2.0, max_val=2.0)"),
    (nn.GELU(approximate="tanh"), "gelu(approximate='tanh')"),
]
FUNCTIONS = [
    (lambda h: F.leaky_relu(h, 0.2), "leaky_relu(negative_slope=0.2)"),
    (lambda h: F.leaky_relu(h, negative_slope=0.2), "leaky_relu(negative_slope=0.2)"),
    (lambda h: F.gelu(h, approximate="tanh"), "gelu(approximate='tanh')"),
    (lambda h: F.softplus(h, beta=2.0), "softplus(beta=2.0)"),
    (lambda h: F.elu(h, 0.5), "elu(alpha=0.5)"),
]


def _check(model, name):
    with pytest.raises(UnsupportedModuleError, match=re.escape(f"register_activation(None, {name!r})")):
        to_neural_graph(model)
    act = register_activation(None, name)
    g = to_neural_graph(model)
    hidden = g.node_act[3:8]
    assert hidden.eq(act).all() and A.ACTIVATIONS[act] == name
    x = torch.randn(16, 3) * 3
    torch.testing.assert_close(execute(g, x), model(x), atol=1e-5, rtol=1e-5)   # the graph is the function


@pytest.mark.parametrize("module,name", MODULES, ids=[n for _, n in MODULES])
def test_module_variant_needs_its_own_name(vocabulary, module, name):
    _check(nn.Sequential(nn.Linear(3, 5), module, nn.Linear(5, 2)), name)


@pytest.mark.parametrize("fn,name", FUNCTIONS, ids=[f"{n}-{i}" for i, (_, n) in enumerate(FUNCTIONS)])
def test_function_variant_needs_its_own_name(vocabulary, fn, name):
    _check(Fn(fn), name)


@pytest.mark.parametrize("module,family", [(nn.LeakyReLU(0.01), "leaky_relu"), (nn.ELU(1.0), "elu"),
                                           (nn.GELU(), "gelu"), (nn.Softplus(1.0, 20.0), "softplus")])
def test_default_parameters_keep_the_family_name(module, family):
    g = to_neural_graph(nn.Sequential(nn.Linear(3, 5), module, nn.Linear(5, 2)))
    assert g.node_act[3:8].eq(A.activation_id(family)).all()


def test_variants_tell_functions_apart(vocabulary):
    register_activation(None, "leaky_relu(negative_slope=0.2)")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 5), nn.LeakyReLU(), nn.Linear(5, 2))
    g_default = to_neural_graph(m)
    m[1] = nn.LeakyReLU(0.2)
    g_variant = to_neural_graph(m)
    assert torch.equal(g_default.edge_attr, g_variant.edge_attr)
    assert not torch.equal(g_default.node_act, g_variant.node_act)


def test_variant_names_round_trip():
    for family, values in [("leaky_relu", {"negative_slope": 0.2}), ("softplus", {"beta": 2.0, "threshold": 5.0}),
                           ("gelu", {"approximate": "tanh"}), ("hardtanh", {"min_val": -3.0, "max_val": 1.0})]:
        name = A.variant_name(family, values)
        assert A.parse_variant(name) == (family, {k: v for k, v in values.items()
                                                   if v != dict(A.PARAMETERS[family])[k]})
    assert A.parse_variant("relu") == ("relu", {})
    assert A.variant_name("hardtanh", {"min_val": -1.0, "max_val": 2.0}) == "hardtanh(max_val=2.0)"


def test_encoder_layer_activation_module_variant(vocabulary):
    layer = nn.Sequential(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0,
                                                     activation=nn.LeakyReLU(0.3), batch_first=True)).eval()
    with pytest.raises(UnsupportedModuleError, match="leaky_relu\\(negative_slope=0.3\\)"):
        to_neural_graph(layer)
    act = register_activation(None, "leaky_relu(negative_slope=0.3)")
    assert to_neural_graph(layer).node_act.eq(act).sum() == 16
