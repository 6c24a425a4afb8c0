"""Every registered model, checked the same way: shapes, no NaN, gradients, and the symmetry it claims.

Inputs are real torch modules (a small homogeneous CNN population every encoder accepts), converted with
the public API, so the symmetry check permutes hidden channels of the *modules*, verifies the function is
unchanged, and compares model outputs.
"""
import copy

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from neuralgraph import to_neural_graph
from neuralgraph.convert import get_plan
from neuralgraph.data import WeightSpaceBatch
from neuralgraph.models import create_model, list_models, model_arguments, model_class
from tests.helpers.permute import assert_params_moved, assert_same_function, permute_in, permute_out

ALL = list_models()
#: the model names the public contract promises
CONTRACT = ["ng-gnn", "ng-t", "sne", "nfn-np", "nfn-hnp", "nfn-pt", "statnn", "mlp"]
PER_PARAMETER = [n for n in ALL if getattr(model_class(n), "parameter_head", None)]


def cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Tanh(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))


def permuted(m: nn.Sequential, gen: torch.Generator) -> nn.Sequential:
    p = copy.deepcopy(m)
    a, b = torch.randperm(4, generator=gen), torch.randperm(5, generator=gen)
    permute_out(p[0], a), permute_in(p[2], a), permute_out(p[2], b), permute_in(p[6], b)
    return p


def inputs(kind: str, nets: list[nn.Module]):
    if kind == "graph":
        return Batch.from_data_list([to_neural_graph(n) for n in nets])
    return WeightSpaceBatch.collate([get_plan(n).weight_space(n) for n in nets])


def build(name: str, nets: list[nn.Module], **extra) -> nn.Module:
    kind = model_class(name).input_kind
    ws = get_plan(nets[0]).weight_space(nets[0])
    sizes = {"out_dim": 1, "node_in": 4, "edge_in": 49, "weight_shapes": ws.signature, **extra}
    accepted = model_arguments(name)
    torch.manual_seed(0)
    model = create_model(name, **{k: v for k, v in sizes.items() if k in accepted})
    if hasattr(model, "fit_statistics"):  # data statistics, as the training loop fits them
        model.fit_statistics([to_neural_graph(n) for n in nets] if kind == "graph"
                             else [get_plan(n).weight_space(n) for n in nets])
    return model, kind


def test_registry_has_every_model_and_clear_typos():
    assert set(CONTRACT) <= set(list_models())
    assert list_models("ng-*") == ["ng-gnn", "ng-t"]
    with pytest.raises(KeyError, match=r"Could not resolve 'ngt' among choices \["):
        create_model("ngt")


@pytest.mark.parametrize("name", ALL)
def test_shapes_finite_gradients(name):
    torch.manual_seed(0)
    nets = [cnn() for _ in range(4)]
    model, kind = build(name, nets)
    batch = inputs(kind, nets)
    out = model(batch)
    assert out.shape == (4, 1) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert_every_parameter_has_a_gradient(model)


def assert_every_parameter_has_a_gradient(model: nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", [n for n in ALL if model_class(n).permutation_invariant])
def test_claimed_permutation_invariance(name):
    torch.manual_seed(1)
    nets = [cnn() for _ in range(3)]
    gen = torch.Generator().manual_seed(0)
    perm = [permuted(n, gen) for n in nets]
    x = torch.randn(2, 1, 8, 8)
    for a, b in zip(nets, perm):
        assert_params_moved(a, b)
        assert_same_function(a, b, x)
    model, kind = build(name, nets)
    model.eval()
    with torch.no_grad():
        ya, yb = model(inputs(kind, nets)), model(inputs(kind, perm))
    assert torch.allclose(ya, yb, atol=1e-5, rtol=1e-4), (ya - yb).abs().max()


def test_non_invariant_models_are_declared():
    # the flat MLP sees parameters in a fixed order: it must not claim invariance
    assert model_class("mlp").permutation_invariant is False


def _parameter_output(name: str, nets: list[nn.Module]):
    """A model's per-parameter head (the sizes a per-parameter task gives it) on ``nets``, as parameters."""
    from neuralgraph.tasks.parameters import parameter_values

    plan = get_plan(nets[0])
    extra = {"head": model_class(name).parameter_head}
    if model_class(name).input_kind == "graph":
        extra.update(out_dim=plan.config.edge_dim, node_out_dim=plan.config.node_dim)
    model, kind = build(name, nets, **extra)
    return model, parameter_values(model(inputs(kind, nets)), plan), plan


@pytest.mark.parametrize("name", PER_PARAMETER)
def test_per_parameter_outputs_have_the_parameters_shapes(name):
    torch.manual_seed(0)
    nets = [cnn() for _ in range(3)]
    model, values, plan = _parameter_output(name, nets)
    assert list(values) == plan.param_names
    for k, v in values.items():
        assert v.shape == (3, *plan.param_shapes[k]) and torch.isfinite(v).all()
    sum(v.square().sum() for v in values.values()).backward()
    assert_every_parameter_has_a_gradient(model)


@pytest.mark.parametrize("name", [n for n in PER_PARAMETER if model_class(n).permutation_invariant])
def test_per_parameter_outputs_permute_with_the_hidden_neurons(name):
    """Permuting hidden channels of the input CNNs permutes the per-parameter outputs the same way."""
    torch.manual_seed(1)
    nets = [cnn() for _ in range(2)]
    gen = torch.Generator().manual_seed(0)
    perm = [permuted(n, gen) for n in nets]
    torch.manual_seed(0)
    model, values, _ = _parameter_output(name, nets)
    model.eval()
    from neuralgraph.tasks.parameters import parameter_values

    with torch.no_grad():
        kind = model_class(name).input_kind
        plan = get_plan(nets[0])
        a = parameter_values(model(inputs(kind, nets)), plan)
        b = parameter_values(model(inputs(kind, perm)), plan)
    assert any(not torch.allclose(a[k], b[k], atol=1e-3) for k in a)  # the outputs do move with the neurons
    # apply the same permutation to the outputs of the unpermuted networks, as to parameters
    for i in range(2):
        moved = copy.deepcopy(nets[i])
        with torch.no_grad():
            for k, p in moved.named_parameters():
                p.copy_(a[k][i])
        gen_i = torch.Generator().manual_seed(0)
        for _ in range(i):  # replay the generator to the permutation of member i
            torch.randperm(4, generator=gen_i), torch.randperm(5, generator=gen_i)
        moved = permuted(moved, gen_i)
        for k, p in moved.named_parameters():
            assert torch.allclose(p, b[k][i], atol=1e-5, rtol=1e-4), (name, k, (p - b[k][i]).abs().max())
