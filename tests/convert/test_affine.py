"""Constant scales and shifts written in forward (``sin(30 * x)``, ``(x - 0.5) / 0.25``, ``y + 0.5``, ``-x``):
element-wise layers whose identity edges carry the scale and whose bias holds the shift."""
from __future__ import annotations

import torch
from torch import nn

import pytest

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from neuralgraph.convert import activation_id
from neuralgraph.data.arch import build_model
from neuralgraph.data.graph import EDGE_KIND
from tests.helpers.permute import (assert_isomorphic, assert_params_moved, assert_same_function, assert_state_equal,
                                   permute_in, permute_out, permuted_copy)


class Siren(nn.Module):
    """SIREN written the usual way: ``sin(w0 * (W x + b))`` per hidden layer, ``+ 0.5`` at the output."""

    def __init__(self, w0: float = 30.0, out_bias: bool = True):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(2, 8), nn.Linear(8, 8), nn.Linear(8, 1, bias=out_bias)
        self.w0 = w0

    def forward(self, x):
        h = torch.sin(self.w0 * self.a(x))
        h = torch.sin(self.w0 * self.b(h))
        return self.c(h) + 0.5


def _check(model, fresh, x, example_input=None):
    """Executor semantics and a bit-exact round trip into ``fresh`` (same architecture, other values)."""
    g = to_neural_graph(model, example_input=example_input)
    torch.testing.assert_close(execute(g, x), model(x), atol=1e-5, rtol=1e-5)       # the graph is the function
    assert_state_equal(from_neural_graph(g, fresh), model)
    return g


def test_siren_scale_layers_carry_w0_and_the_offset_is_a_bias():
    torch.manual_seed(0)
    m = Siren()
    g = _check(m, Siren(), torch.rand(32, 2) * 2 - 1)
    ident = g.edge_kind == EDGE_KIND["identity"]
    centre = g.edge_attr.size(1) // 2
    assert ident.sum() == 8 + 8 + 1 and torch.all(g.edge_attr[ident][:16, centre] == 30.0)
    assert (g.node_act == activation_id("sin")).sum() == 16
    assert g.num_nodes == 2 + 8 + 8 + 8 + 8 + 1 + 1                          # + the output's shift layer
    assert g.x[-1, 0] == 0.5 and g.x[-1, 1] == 1


def test_shift_fuses_into_open_neurons_without_bias():
    torch.manual_seed(0)
    m = Siren(out_bias=False)
    g = _check(m, Siren(out_bias=False), torch.rand(16, 2))
    assert g.num_nodes == 2 + 8 + 8 + 8 + 8 + 1                               # no extra layer for "+ 0.5"
    assert g.x[-1, 0] == 0.5 and g.x[-1, 1] == 1


def test_zoo_siren_sine_is_one_activation_with_w0_on_its_neurons():
    """``neuralgraph.data.arch.Sine`` is the ``sine`` activation (w0 in the activation-parameter column): one
    neuron per hidden unit, no scale layer, and the graph still computes the SIREN and permutes with it."""
    torch.manual_seed(0)
    desc = {"family": "siren", "in_dim": 2, "hidden": [32, 32], "out_dim": 1, "w0": 30.0, "output_offset": 0.5}
    siren = build_model(desc)
    x = torch.rand(64, 2) * 2 - 1
    g = _check(siren, build_model(desc), x)
    assert g.num_nodes == 2 + 32 + 32 + 1 + 1                                  # + the output's shift layer
    assert (g.edge_kind == EDGE_KIND["identity"]).sum() == 1                 # the + 0.5 shift only
    sine = g.node_act == activation_id("sine")
    assert sine.sum() == 64 and g.x[sine, 2].eq(30.0).all() and g.x[~sine, 2:].eq(0).all()
    w0 = build_model({**desc, "w0": 10.0})                                     # w0 is data, not a new name
    w0.load_state_dict(siren.state_dict())
    g10 = _check(w0, build_model({**desc, "w0": 10.0}), x)
    assert g10.x[sine, 2].eq(10.0).all() and torch.equal(g10.node_act, g.node_act)
    p = torch.randperm(32)

    def apply(s):
        permute_out(s.seq[1], p), permute_in(s.seq[2], p)

    other = permuted_copy(siren, apply)
    assert_params_moved(siren, other)
    assert_same_function(siren, other, x)
    assert_isomorphic(g, to_neural_graph(other))


class Normalized(nn.Module):
    """Input normalisation in forward, then a CNN; ``1 - x``, ``x / 2`` and ``-x`` along the way."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x):
        x = (x - 0.5) / 0.25
        h = -torch.relu(self.conv(1.0 - x) / 2)
        return self.fc(h.mean((2, 3)))


def test_input_normalisation_and_other_forms():
    torch.manual_seed(0)
    m = Normalized()
    x = torch.rand(5, 3, 6, 6)
    with pytest.raises(UnsupportedModuleError, match="example_input"):
        to_neural_graph(m)                       # the raw input's size is unknown until a layer reads it
    _check(m, Normalized(), x, example_input=x[:1])


def test_hidden_permutation_gives_an_isomorphic_graph():
    torch.manual_seed(0)
    m = Siren()
    gen = torch.Generator().manual_seed(1)
    p1, p2 = torch.randperm(8, generator=gen), torch.randperm(8, generator=gen)

    def apply(s):
        permute_out(s.a, p1), permute_in(s.b, p1), permute_out(s.b, p2), permute_in(s.c, p2)

    other = permuted_copy(m, apply)
    assert_params_moved(m, other)
    assert_same_function(m, other, torch.rand(16, 2))
    assert_isomorphic(to_neural_graph(m), to_neural_graph(other))


@pytest.mark.parametrize("forward,match", [
    (lambda s, x: s.fc(x) / 0.0, "non-zero Python number"),
    (lambda s, x: 2.0 / s.fc(x), "non-zero Python number"),
    (lambda s, x: s.fc(x) + torch.ones(3), "reads a tensor created in forward"),
    (lambda s, x: torch.add(s.fc(x), 1.0, alpha=2.0), "alpha != 1"),
])
def test_unrepresentable_forms_are_refused(forward, match):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return forward(self, x)

    with pytest.raises(UnsupportedModuleError, match=match):
        to_neural_graph(M())
