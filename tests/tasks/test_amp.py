"""Mixed precision (``TrainConfig.amp``): bf16 autocast training on CPU reaches the float32 result; the
float32 islands (PNA std aggregation, attention softmax, losses) stay float32."""
import pytest
import torch
from torch import nn

from neuralgraph import to_neural_graph
from neuralgraph.convert import get_plan
from neuralgraph.models import create_model
from neuralgraph.nn.film_pna import StableStdAggregation
from neuralgraph.tasks.base import Split, Task
from neuralgraph.training import TrainConfig, fit

#: bf16 training reaches the float32 run's validation R^2 within this (measured gaps: <= 0.05)
R2_TOLERANCE = 0.08


class OutputBiasTask(Task):
    """Regress the output bias of small random MLPs (learnable in a few epochs; no zoo needed)."""

    name = "output-bias"
    loss_kind = "mse"

    def build_splits(self):
        g = torch.Generator().manual_seed(0)
        splits = {}
        for name, n in (("train", 96), ("val", 32), ("test", 32)):
            nets = [nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)) for _ in range(n)]
            with torch.no_grad():
                for m in nets:
                    for p in m.parameters():
                        p.copy_(torch.randn(p.shape, generator=g))
            y = torch.stack([m[2].bias[0] for m in nets]).detach()
            splits[name] = Split(y=y, make_graphs=lambda nets=nets: [to_neural_graph(m) for m in nets],
                                 make_weights=lambda nets=nets: [get_plan(m).weight_space(m) for m in nets])
        return splits


# SNE's logit-invariance penalty is the difference of two forward passes; in bf16 its gradient is rounding-
# dominated (cosine to float32 ~0.8 on this batch), so the gradient check runs SNE without it.
# (the graph models with the mean readout this comparison was calibrated with; the readout is not what it tests)
SMALL = {"ng-t": dict(node_dim=16, edge_dim=8, num_layers=2, readout="mean"),
         "ng-gnn": dict(hidden=16, num_layers=2, readout="mean"),
         "sne": dict(logit_invariance=False), "nfn-np": {}}


#: Initialisation seeds of the metric comparison, tried in order. This tiny task is seed-sensitive for NG-T (float32
#: validation R^2 after 15 epochs, mean readout, seeds 0-3 in session 7: dense 0.32, 0.58, 0.81, 0.66; sparse 0.46,
#: 0.62, 0.43, 0.71), and which seeds learn moves with the parameters drawn before them (session 9 grew the
#: activation and edge-kind tables): the comparison runs at the first seed whose float32 run learns the task.
SEEDS = (3, 1, 2, 0)


def _train(name: str, amp: str, epochs: int, seed: int, **kw) -> dict:
    task = OutputBiasTask(None)
    torch.manual_seed(seed)
    model = create_model(name, **{**task.model_kwargs(name), **SMALL[name], **kw})
    return fit(model, task, TrainConfig(epochs=epochs, batch_size=16, lr=3e-3, amp=amp), None, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("name, kw", [
    ("ng-t", {}),
    ("ng-t", {"mode": "sparse"}),
    ("nfn-np", {}),
])
def test_bf16_training_reaches_the_float32_validation_metric(name, kw):
    for seed in SEEDS:
        full = _train(name, "off", 15, seed, **kw)
        if full["val"]["r2"] > 0.5:
            break
    assert full["val"]["r2"] > 0.5, "a float32 run must learn the task for the comparison to mean anything"
    half = _train(name, "bf16", 15, seed, **kw)
    assert abs(half["val"]["r2"] - full["val"]["r2"]) <= R2_TOLERANCE, (half["val"], full["val"])
    assert half["history"] != full["history"]  # bf16 really ran (it rounds differently)


@pytest.mark.parametrize("name", ["ng-gnn", "ng-t", "nfn-np", "sne"])
def test_bf16_loss_and_gradients_are_close_to_float32(name):
    """Every graph / weight model trains under bf16 autocast: a finite float32 loss and gradients pointing the
    way float32's do (measured cosines >= 0.96). SNE's outputs drift most in bf16 (~12% relative, through four
    stacked set encoders; gradient cosines 0.76-0.96 by batch) and does not learn this task in a test's budget
    (float32 validation R^2 0.27 after 15 epochs): for SNE this checks only a finite float32 loss and gradients."""
    task = OutputBiasTask(None)
    torch.manual_seed(0)
    model = create_model(name, **{**task.model_kwargs(name), **SMALL[name]})
    if hasattr(model, "fit_statistics"):  # degrees / standardisation, as the training loop fits them
        train = task.splits["train"]
        model.fit_statistics(train.graphs() if model.input_kind == "graph" else train.weights())
    batch = next(iter(task.loader("train", model.input_kind, 16)))
    grads = []
    for amp in (False, True):
        model.zero_grad()
        torch.manual_seed(1)  # the same randomness (SNE's chunk permutations) in both passes
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = task.loss(model, batch)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    if name == "sne":  # its outputs drift ~12% through four set encoders (see the docstring)
        return
    assert cos > 0.9, f"{name}: bf16 gradients deviate from float32 (cosine {cos:.3f})"


def test_std_aggregation_and_softmax_stay_float32_under_autocast():
    x = torch.randn(6, 3).to(torch.bfloat16)
    index = torch.tensor([0, 0, 1, 1, 1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = StableStdAggregation()(x, index, dim_size=3)
    assert out.dtype == torch.float32
    # a variance bf16 cannot resolve (1 + 1e-3 is 1 in bf16's 8-bit mantissa) is still computed from the inputs
    x = torch.tensor([[1.0], [1.0 + 2 ** -7]]).to(torch.bfloat16)
    out = StableStdAggregation()(x, torch.tensor([0, 0]), dim_size=1)
    assert out.item() == pytest.approx(2 ** -8, rel=1e-3)


def test_fp16_needs_cuda_and_unknown_amp_is_named():
    task, model = OutputBiasTask(None), create_model("statnn", out_dim=1)
    with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device"):
        fit(model, task, TrainConfig(epochs=1, amp="fp16"), None, progress=False)
    with pytest.raises(ValueError, match=r"Could not resolve amp 'fp8' among choices \['off', 'bf16', 'fp16'\]"):
        fit(model, task, TrainConfig(epochs=1, amp="fp8"), None, progress=False)
