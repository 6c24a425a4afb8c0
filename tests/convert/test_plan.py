"""Per-architecture plans: the second model of an architecture is a gather, not a new trace."""
import pytest
import torch
from torch import nn

from neuralgraph import execute, from_neural_graph, to_neural_graph
from neuralgraph.convert import clear_plan_cache, get_plan
from neuralgraph.convert import plan as plan_mod
from tests.helpers.nets import WildParkCNN
from tests.helpers.permute import assert_state_equal


def test_second_model_of_an_architecture_does_not_trace(monkeypatch):
    clear_plan_cache()
    calls = []
    real = plan_mod.trace_module
    monkeypatch.setattr(plan_mod, "trace_module", lambda *a, **k: calls.append(1) or real(*a, **k))
    a, b = WildParkCNN(), WildParkCNN()
    ga, gb = to_neural_graph(a), to_neural_graph(b)
    assert len(calls) == 1
    assert torch.equal(ga.edge_index, gb.edge_index) and not torch.equal(ga.edge_attr, gb.edge_attr)
    # another architecture, and another config, trace again
    to_neural_graph(WildParkCNN(residual=(-1, -1, -1, 1)))
    to_neural_graph(a, max_kernel=(9, 9))
    assert len(calls) == 3
    # graphs from the plan do not share storage with it (mutating one leaves the next intact)
    ga.edge_attr.zero_(), ga.node_act.zero_()
    assert not to_neural_graph(a).edge_attr.eq(0).all() and to_neural_graph(a).node_act.ne(0).any()


def test_plan_gathers_from_state_dicts_and_reads_back():
    m = WildParkCNN()
    plan = get_plan(m)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    g = plan.graph(sd)
    assert torch.equal(g.edge_attr, to_neural_graph(m).edge_attr)
    back = plan.state_dict(g)
    assert back.keys() == set(plan.param_names) == set(dict(m.named_parameters()))
    for k, v in back.items():
        assert torch.equal(v, sd[k])
    # per-edge outputs map back onto parameter positions (differentiable)
    edge_out = g.edge_attr.clone().requires_grad_()
    read = plan.read(edge_out, g.x)
    read["layers.0.weight"].sum().backward()
    assert edge_out.grad.sum() == m.layers[0].weight.numel()
    # and the weight-space view of the same member
    ws = plan.weight_space(m)
    assert [tuple(w.shape) for w in ws.weights] == [(1, 8, 1, 3, 3), (1, 4, 8, 5, 5), (1, 16, 4, 3, 3),
                                                    (1, 8, 16, 7, 7), (1, 5, 8)]


def test_from_neural_graph_rejects_a_foreign_graph():
    g = to_neural_graph(WildParkCNN())
    other = WildParkCNN(channels=(4, 4), kernels=(3, 3), acts=("relu", "relu"), residual=(-1, -1))
    with pytest.raises(ValueError, match="does not belong to this architecture"):
        from_neural_graph(g, other)


def test_edited_graph_values_reach_the_module():
    m = WildParkCNN()
    g = to_neural_graph(m)
    g.edge_attr = g.edge_attr * 2
    g.x = g.x * 3
    m2 = from_neural_graph(g, m)
    assert torch.equal(m2.layers[1].weight, m.layers[1].weight * 2)
    assert torch.equal(m2.fc.bias, m.fc.bias * 3)
    assert_state_equal(m, from_neural_graph(to_neural_graph(m), m))


class _SharedPreActivation(nn.Module):
    """The pre-activation of the hidden layer is read twice (an identity-fed copy gets the activation): only
    linear and identity edges, but not a chain of layers with element-wise maps between them."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 4), nn.Linear(8, 1)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.cat([torch.tanh(h), h], 1))


def test_feedforward_flag_allows_element_wise_maps_only():
    from neuralgraph.data.arch import build_model

    siren = build_model({"family": "siren", "in_dim": 2, "hidden": [5, 4], "out_dim": 1, "w0": 30.0,
                         "output_offset": 0.5})  # sin(30 x) and + 0.5: identity edges, one to one
    assert get_plan(siren, torch.zeros(1, 2)).feedforward
    assert get_plan(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))).feedforward
    assert not get_plan(_SharedPreActivation(), torch.zeros(1, 2)).feedforward


def test_feature_graph_puts_constants_then_features_in_every_slot():
    """C feature channels per parameter element land where the element's value lands in plan.graph (runs,
    element-wise gathers and the constant taps alike); channel 0 holds the constants; gradients flow."""
    m = WildParkCNN(residual=(-1, -1, -1, 1))
    plan = get_plan(m)
    sd = {n: p.detach() for n, p in m.named_parameters()}
    g = plan.graph(sd)
    N, E, fn, fe = g.num_nodes, g.num_edges, plan.config.node_dim, plan.config.edge_dim
    feats = {n: torch.stack([v, 2 * v + 1, -v], -1).requires_grad_() for n, v in sd.items()}
    fg = plan.feature_graph(feats)
    x, ea = fg.x.view(N, fn, 4), fg.edge_attr.view(E, fe, 4)
    const = plan.graph({n: torch.zeros_like(v) for n, v in sd.items()})
    assert torch.equal(x[..., 0], const.x) and torch.equal(ea[..., 0], const.edge_attr)
    # a slot holds a parameter iff the plain graph differs from the constants there (random weights are non-zero)
    held_e, held_n = g.edge_attr != const.edge_attr, g.x != const.x
    assert held_e.any() and held_n.any()
    assert torch.equal(ea[..., 1][held_e], g.edge_attr[held_e])
    assert torch.equal(ea[..., 2][held_e], 2 * g.edge_attr[held_e] + 1)
    assert torch.equal(x[..., 3][held_n], -g.x[held_n])
    assert not ea[..., 1:][~held_e].any() and not x[..., 1:][~held_n].any()
    assert torch.equal(fg.edge_index, g.edge_index) and torch.equal(fg.edge_kind, g.edge_kind)
    # the features' channels read back through the plan (the l2o round trip) and carry gradients
    back = plan.read(fg.edge_attr.view(E, fe, 4)[..., 1:], fg.x.view(N, fn, 4)[..., 1:])
    for n, v in feats.items():
        assert torch.equal(back[n], v.detach())
    fg.edge_attr.sum().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for n, v in feats.items() if "weight" in n)


def test_feature_graph_refuses_mismatched_features():
    m = WildParkCNN()
    plan = get_plan(m)
    feats = {n: torch.zeros(*p.shape, 3) for n, p in m.named_parameters()}
    bad = next(iter(feats))
    feats[bad] = torch.zeros(*feats[bad].shape[:-1], 2)
    with pytest.raises(ValueError, match="expected"):
        plan.feature_graph(feats)
    with pytest.raises(ValueError, match="C >= 1"):
        plan.feature_graph({n: torch.zeros(*p.shape, 0) for n, p in m.named_parameters()})


def test_parameters_the_forward_does_not_read_are_named_and_keep_the_templates_values():
    """An auxiliary head used only in training (torchvision Inception-v3's AuxLogits) is not in the graph: the
    conversion warns naming it, and reading back keeps the template's values for it (the rest is exact)."""
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.aux = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.body(x)

    m = WithAux().eval()
    with pytest.warns(UserWarning, match=r"2 parameter\(s\) / buffer\(s\) of WithAux are not read by its "
                                         r"forward \(aux.weight, aux.bias;"):
        g = to_neural_graph(m)
    template = WithAux()
    back = from_neural_graph(g, template)
    assert torch.equal(back.body.weight, m.body.weight) and torch.equal(back.aux.weight, template.aux.weight)


def test_constants_are_rounded_once_to_the_graphs_dtype():
    """A float64 graph holds its constants (a normalization's eps, a constant scale and shift, an activation's
    slope) in float64, not their float32 rounding (review finding: eps = 1e-3 as float32 put the float64
    executor 1e-10 off MaxViT); a float32 graph holds the float32 rounding, as before."""
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, eps=1e-3), nn.LeakyReLU(0.1), nn.Conv2d(3, 2, 1)).eval()
    with torch.no_grad():
        m[1].running_var.fill_(1e-3)  # eps matters: the variance is of its size
    x = torch.randn(2, 2, 6, 6)
    for dtype, tol in ((torch.float64, 1e-14), (torch.float32, 1e-5)):
        md, xd = m.to(dtype), x.to(dtype)
        g = to_neural_graph(md, example_input=xd)
        assert g.edge_attr.dtype == g.x.dtype == dtype
        assert float(g.edge_attr[g.edge_kind == 4][0, 2]) == float(torch.tensor(1e-3, dtype=dtype))  # eps on tap 2
        assert float(g.x[:, 2].max()) == float(torch.tensor(0.1, dtype=dtype))  # the slope
        with torch.no_grad():
            assert (execute(g, xd) - md(xd)).abs().max() < tol
