"""Checks every registered weight-space model gets (models with input_kind == "weights"): shapes, no NaN,
gradients to every parameter, the symmetry it claims, and its handling of mixed architectures."""
from __future__ import annotations

import pytest
import torch

from tests.models.weight_checks import build, collate, needs_signature, permuted_pair, weight_models, zoo

MODELS = weight_models()


def test_all_weight_models_registered():
    assert {"nfn-np", "nfn-hnp", "nfn-pt", "sne", "statnn", "mlp"} <= set(MODELS)


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("name", MODELS)
def test_shapes_finite_and_gradients(name, net):
    """Every parameter gets a finite gradient, non-zero for at least one of three initialisations (a
    ReLU can be dead for one draw of a tiny model; a parameter that never matters is a bug)."""
    members = zoo(net, 4)
    batch = collate(members)
    reached = {}
    for seed in range(3):
        torch.manual_seed(seed)
        model = build(name, batch.groups[0].signature).train()
        if hasattr(model, "fit_statistics"):       # as the runner does before training
            model.fit_statistics(members)
        out = model(batch)
        assert out.shape == (4, 2)
        assert torch.isfinite(out).all()
        loss = out.square().mean()
        if hasattr(model, "regularizer"):
            loss = loss + model.regularizer(batch, out)
        loss.backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{name}: no gradient for {pname}"
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
            reached[pname] = reached.get(pname, False) or bool(p.grad.abs().sum() > 0)
    dead = [p for p, ok in reached.items() if not ok]
    assert not dead, f"{name}: zero gradient for {dead} under every initialisation"


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("name", MODELS)
def test_claimed_permutation_invariance(name, net):
    ws, ws_perm = permuted_pair(net)
    model = build(name, ws.signature).eval()
    with torch.no_grad():
        a, b = model(collate([ws])), model(collate([ws_perm]))
    if model.permutation_invariant:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    else:                                  # the claim is honest: these models do see the permutation
        with torch.no_grad():
            spread = model(collate(zoo(net, 4))).std(0).max()
        assert (a - b).abs().max() > 1e-3 * spread


@pytest.mark.parametrize("name", MODELS)
def test_mixed_architectures(name):
    mlps, cnns = zoo("mlp", 3), zoo("cnn", 2, seed=1)
    mixed = collate([mlps[0], cnns[0], mlps[1], cnns[1], mlps[2]])
    model = build(name, mlps[0].signature).eval()
    if needs_signature(name):
        with pytest.raises(ValueError, match="ng-gnn, ng-t or sne"):
            model(mixed)
        with pytest.raises(ValueError, match="was built for weight space"):
            model(collate(cnns))
        return
    with torch.no_grad():                  # per-group outputs land at the right batch positions
        out = model(mixed)
        torch.testing.assert_close(out[[0, 2, 4]], model(collate(mlps)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[[1, 3]], model(collate(cnns)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_single_network_training_batch(name):
    """Batch norms and the like must cope with a last batch of one network."""
    ws = zoo("cnn", 1)[0]
    model = build(name, ws.signature).train()
    out = model(collate([ws]))
    assert out.shape == (1, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_converter_weight_space_matches_fixture(net):
    """The tasks build weight spaces with the converter's plan; the fixtures here must agree with it."""
    from neuralgraph.convert import get_plan
    from tests.models.weight_checks import NETS, weight_space_of

    torch.manual_seed(0)
    module = NETS[net][0]()
    ours, plan_ws = weight_space_of(module), get_plan(module, NETS[net][2]()).weight_space(module)
    assert plan_ws.signature == ours.signature
    for a, b in zip(ours.weights + ours.biases, plan_ws.weights + plan_ws.biases):
        assert torch.equal(a, b)
