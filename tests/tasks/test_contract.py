"""The generalised task contract end to end on tiny in-memory zoos of real SIRENs: classification and
per-parameter outputs, for every registered model (it runs, or it is refused with the reason), and the
symmetry of per-parameter outputs and probe features on permuted SIRENs."""
import copy
import json

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from neuralgraph.convert import get_plan
from neuralgraph.data import WeightSpaceBatch
from neuralgraph.models import create_model, list_models, model_class
from neuralgraph.tasks import ClassificationTask, IncompatibleModelError, Split, Task
from neuralgraph.tasks.parameters import parameter_values
from neuralgraph.training import TrainConfig, fit
from neuralgraph.transforms import MemberNetwork
from neuralgraph.transforms.probe_features import probe_activations
from neuralgraph.data.arch import build_model
from tests.helpers.permute import assert_params_moved, assert_same_function, permute_in, permute_out

SIREN = {"family": "siren", "in_dim": 2, "hidden": [6, 5], "out_dim": 1, "w0": 30.0, "output_offset": 0.5}
CONVERTER = {"max_kernel": (1,)}
SMALL = {"ng-gnn": dict(hidden=8, num_layers=2), "ng-t": dict(node_dim=8, edge_dim=4, num_layers=2),
         "sne": dict(hidden=8), "nfn-np": dict(hidden_channels=(4,), head_hidden=(8,)),
         "nfn-hnp": dict(hidden_channels=(4,), head_hidden=(8,)), "nfn-pt": dict(hidden_channels=(4,), head_hidden=(8,)),
         "statnn": dict(), "mlp": dict(hidden=(8,)), "pyg-gine": dict(hidden=8, num_layers=2)}


def example() -> torch.Tensor:
    return torch.zeros(1, 2)  # in the default dtype (float64 tests)


def sirens(n: int, seed: int) -> list[nn.Module]:
    torch.manual_seed(seed)
    nets = [build_model(SIREN) for _ in range(n)]
    with torch.no_grad():
        for m in nets:
            for p in m.parameters():
                p.mul_(0.5)
    return nets


def permuted_siren(m: nn.Module, gen: torch.Generator) -> nn.Module:
    """The same SIREN with both hidden layers' neurons permuted."""
    p = copy.deepcopy(m)
    a, b = torch.randperm(6, generator=gen), torch.randperm(5, generator=gen)
    permute_out(p.seq[0], a), permute_in(p.seq[1], a), permute_out(p.seq[1], b), permute_in(p.seq[2], b)
    return p, (a, b)


def member_network() -> MemberNetwork:
    return MemberNetwork(build_model(SIREN), example(), CONVERTER)


def graphs(nets):
    return [get_plan(m, example(), **CONVERTER).graph(m) for m in nets]


def weights(nets):
    return [get_plan(m, example(), **CONVERTER).weight_space(m) for m in nets]


class TinySirenTask(Task):
    """Members: small SIRENs; subclasses say what is predicted."""

    name = "tiny-siren"

    def build_splits(self):
        out = {}
        for k, (name, n) in enumerate((("train", 12), ("val", 6), ("test", 6))):
            nets = sirens(n, seed=k)
            out[name] = Split(y=self.targets(nets), make_graphs=lambda nets=nets: graphs(nets),
                              make_weights=lambda nets=nets: weights(nets))
        return out

    def member_network(self):
        return member_network()

    def plan(self):
        return get_plan(build_model(SIREN), example(), **CONVERTER)


class TinyClsTask(TinySirenTask, ClassificationTask):
    name = "tiny-cls"

    def targets(self, nets):  # 3 classes, every class in every split
        return (torch.arange(len(nets)) % 3).float()


class TinyNegateTask(TinySirenTask):
    """Per-parameter: predict -U for every parameter of U (MSE)."""

    name = "tiny-negate"
    output = "parameters"
    select_metric, select_mode, figure = "mse", "min", None

    def targets(self, nets):
        return torch.zeros(len(nets))

    def loss(self, model, batch):
        plan = self.plan()
        out, params = parameter_values(model(batch), plan), parameter_values(batch, plan)
        return sum((out[k] + params[k]).pow(2).mean() for k in params) / len(params)

    def predict(self, model, batch):
        return {"loss": self.loss(model, batch).expand(len(batch.y))}

    def metrics(self, records):
        return {"mse": float(records["loss"].mean())}


def build(task: Task, name: str, **extra) -> nn.Module:
    kwargs = task.model_kwargs(name)
    torch.manual_seed(0)
    return create_model(name, **kwargs, **SMALL[name], **extra)


def test_every_registered_model_has_small_settings():
    assert sorted(SMALL) == list_models()


@pytest.mark.parametrize("name", list_models())
def test_classification_end_to_end(name, tmp_path):
    task = TinyClsTask(None)
    model = build(task, name)
    res = fit(model, task, TrainConfig(epochs=2, batch_size=4), str(tmp_path), progress=False)
    assert task.num_classes == 3 and set(res["test"]) == {"accuracy", "acc_c0", "acc_c1", "acc_c2"}
    assert 0 <= res["test"]["accuracy"] <= 1 and "val_accuracy" in res["history"][0]
    pred = json.loads((tmp_path / "predictions.json").read_text())["test"]
    assert len(pred["pred"]) == 6 and set(pred["pred"]) <= {0, 1, 2}
    assert pred["target"] == task.splits["test"].y.long().tolist()
    # top-1 accuracy is recomputed from the saved predictions
    assert res["test"]["accuracy"] == pytest.approx(sum(p == t for p, t in zip(pred["pred"], pred["target"])) / 6)


@pytest.mark.parametrize("name", list_models())
def test_per_parameter_end_to_end_or_refused(name, tmp_path):
    task = TinyNegateTask(None)
    if getattr(model_class(name), "parameter_head", None) is None:
        with pytest.raises(IncompatibleModelError, match=f"{name} outputs one value per network.*use one of"):
            task.model_kwargs(name)
        return
    model = build(task, name)
    res = fit(model, task, TrainConfig(epochs=3, batch_size=4, lr=3e-3), None, progress=False)
    losses = [h["train_loss"] for h in res["history"]]
    assert losses[-1] < losses[0]  # the outputs land on the parameters they are compared with


@pytest.mark.parametrize("kind", ["graph", "weights"])
def test_parameter_values_read_the_members_exactly(kind):
    nets = sirens(3, seed=5)
    plan = get_plan(nets[0], example(), **CONVERTER)
    batch = Batch.from_data_list(graphs(nets)) if kind == "graph" else WeightSpaceBatch.collate(weights(nets))
    values = parameter_values(batch, plan)
    for name, v in values.items():
        assert torch.equal(v, torch.stack([dict(m.named_parameters())[name].detach() for m in nets]))


def test_parameter_values_refuse_other_architectures():
    plan = get_plan(sirens(1, 0)[0], example(), **CONVERTER)
    other = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    with pytest.raises(ValueError, match="not a batch of graphs of this architecture"):
        parameter_values(Batch.from_data_list([get_plan(other, example(), **CONVERTER).graph(other)]), plan)


def _edited_function(params: dict, coords: torch.Tensor) -> torch.Tensor:
    return torch.func.functional_call(build_model(SIREN), params, (coords,))


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("name,extra", [("ng-gnn", {}), ("ng-t", {}), ("ng-t", {"probes": 4}),
                                        ("ng-gnn", {"probes": 4}), ("nfn-np", {}), ("nfn-hnp", {})])
def test_edited_inr_is_the_same_function_for_permuted_inputs(name, extra, float64):
    """dU is equivariant: editing a SIREN with permuted hidden neurons gives the same edited function.

    In float64: sin(30 x) turns float32 rounding of the update into differences of ~1e-4, the size of a
    tolerance that would also hide a small real asymmetry; in float64 the two functions agree to ~1e-10."""
    torch.manual_seed(3)
    nets = sirens(3, seed=7)
    gen = torch.Generator().manual_seed(0)
    perm = [permuted_siren(m, gen)[0] for m in nets]
    coords = torch.rand(50, 2) * 2 - 1
    for a, b in zip(nets, perm):
        assert_params_moved(a, b)
        assert_same_function(a, b, coords)
    task = TinyNegateTask(None)
    model = build(task, name, **extra).eval()
    if hasattr(model, "fit_statistics"):  # as the training loop does
        model.fit_statistics(graphs(nets) if model.input_kind == "graph" else weights(nets))
    plan = task.plan()
    kind = model_class(name).input_kind
    edited = []
    for population in (nets, perm):
        batch = Batch.from_data_list(graphs(population)) if kind == "graph" else WeightSpaceBatch.collate(
            weights(population))
        with torch.no_grad():
            update, params = parameter_values(model(batch), plan), parameter_values(batch, plan)
        assert any(v.abs().max() > 1e-3 for v in update.values())  # a real update, not zeros
        edited.append({k: params[k] + 0.5 * update[k] for k in params})
    for i in range(len(nets)):
        fa = _edited_function({k: v[i] for k, v in edited[0].items()}, coords)
        fb = _edited_function({k: v[i] for k, v in edited[1].items()}, coords)
        assert torch.allclose(fa, fb, atol=1e-8), (fa - fb).abs().max()
        # and the edits differ from the unedited network: the check can fail
        f0 = _edited_function({k: v for k, v in dict(nets[i].named_parameters()).items()}, coords)
        assert not torch.allclose(fa, f0, atol=1e-3)


@pytest.mark.parametrize("name", ["ng-gnn", "ng-t"])
def test_probe_features_keep_invariance(name):
    torch.manual_seed(4)
    nets = sirens(3, seed=8)
    gen = torch.Generator().manual_seed(1)
    perm = [permuted_siren(m, gen)[0] for m in nets]
    model = create_model(name, out_dim=3, node_in=graphs(nets)[0].x.size(1), edge_in=1, probes=16,
                         member_network=member_network(), **SMALL[name]).eval()
    if hasattr(model, "fit_statistics"):
        model.fit_statistics(graphs(nets))
    with torch.no_grad():
        ya = model(Batch.from_data_list(graphs(nets)))
        yb = model(Batch.from_data_list(graphs(perm)))
        # without probes' contribution the outputs would be the same too; check the probes matter
        model.probe.probes.mul_(2)
        yc = model(Batch.from_data_list(graphs(nets)))
    assert torch.allclose(ya, yb, atol=1e-5), (ya - yb).abs().max()
    assert not torch.allclose(ya, yc, atol=1e-4)


def test_batched_probe_features_equal_one_graph_at_a_time():
    nets = sirens(4, seed=9)
    model = create_model("ng-gnn", out_dim=1, node_in=graphs(nets)[0].x.size(1), edge_in=1, probes=4,
                         member_network=member_network(), **SMALL["ng-gnn"])
    batch = Batch.from_data_list(graphs(nets))
    got = model.probe(batch)  # [4 * N, 4]
    ref = torch.cat([probe_activations(g, nets[0], model.probe.probes, example(), **CONVERTER) for g in graphs(nets)])
    assert torch.allclose(got, ref, atol=2e-5)  # sin(30 x): float32 rounding of x is amplified 30x
    # the output neuron's probe features are the network's outputs on the probes
    out = nets[2](model.probe.probes).view(-1)
    N = got.size(0) // 4
    assert torch.allclose(got[2 * N + N - 1], out, atol=1e-6)
    got.sum().backward()
    assert model.probe.probes.grad is not None and model.probe.probes.grad.abs().sum() > 0


def test_probes_need_one_architecture_and_valid_counts():
    with pytest.raises(ValueError, match="probes=4 needs the networks' architecture"):
        create_model("ng-t", out_dim=1, node_in=2, edge_in=1, probes=4)
    with pytest.raises(ValueError, match=r"probes=5; choose one of \[0, 4, 16, 64\]"):
        create_model("ng-gnn", out_dim=1, node_in=2, edge_in=1, probes=5, member_network=member_network())


def test_the_data_printout_counts_in_words():
    """'1 run', '1 member', '1,280 runs': the runner's printout of what a run used."""
    from types import SimpleNamespace

    from neuralgraph.tasks.zoo_tasks import zoo_note

    assert "wildpark-digits (1 run)" in zoo_note([("wildpark-digits", 1)], "")
    assert "wildpark-digits-large (1,280 runs)" in zoo_note([("wildpark-digits-large", None)], "")
    assert "too small" not in zoo_note([("wildpark-digits-large", None)], "")
    # judged by size, not name: --set task.large=true keeps the cross tasks' runs: 64 unless task.runs=null
    cut = zoo_note([("arch1-digits-large", 64), ("arch2-digits-large", 64)], "--set task.runs=null")
    assert "arch1-digits-large (64 runs)" in cut and "too small to rank models" in cut and "task.runs=null" in cut

    class OneRun:
        def __len__(self):
            return 1

        def member(self, i):
            return SimpleNamespace(run_id="run000000")

    task = TinySirenTask(None)
    task._splits = {"train": Split(y=torch.zeros(1), make_graphs=list, make_weights=list, dataset=OneRun())}
    assert task.describe_data() == "data: train 1 member of 1 run"
