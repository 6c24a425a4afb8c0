"""The ``l2o`` task: learned optimizers on real optimizee CNNs.

Equivariance of the learned updates (hidden channels of the optimizee permuted on the torch module), the
graph of a step carrying exactly that step's gradients, the hand-written baselines against torch's
optimizers, meta-training lowering the meta-loss, exact resume, and bad input."""
import copy
import math

import pytest
import torch
from torch.func import functional_call

from benchmarks.run import main, resolve_config
from neuralgraph.models import create_model, list_models
from neuralgraph.tasks import IncompatibleModelError, create_task
from neuralgraph.tasks.l2o import BETAS, NUM_FEATURES, HandWritten, Optimizee, _Run
from neuralgraph.training import TrainConfig, fit
from tests.helpers.permute import permute_in, permute_out

TINY = dict(train_widths=(4, 6), test_widths=(6, 8), inner_batch=16, inner_steps=6, unroll=3, runs_per_epoch=1,
            eval_steps=6, eval_every=3, val_runs=1, test_runs=1, tune_runs=1, ff_hidden=16)
SMALL = {"ng-gnn": dict(hidden=16, num_layers=2), "ng-t": dict(node_dim=8, edge_dim=4, num_layers=2),
         "nfn-np": dict(hidden_channels=[4, 4]), "lstm": dict(hidden=4), "ff": {}}
CPU = torch.device("cpu")


def tiny_task(**over):
    return create_task("l2o", **{**TINY, **over})


def optimizer(task, name: str, seed: int = 0):
    torch.manual_seed(seed)
    return task.wrap_model(create_model(name, **task.model_kwargs(name), **SMALL.get(name, {})))


def permuted(problem: Optimizee, values: dict, perms: list) -> dict:
    """``values`` (parameters or per-parameter updates) with the hidden channels of the optimizee permuted,
    by permuting a real module holding them."""
    m = copy.deepcopy(problem.module)
    m.load_state_dict(values)
    for i, p in enumerate(perms):
        permute_out(m.layers[i], p)
        permute_in(m.layers[i + 1], p)
    return {n: t.detach().clone() for n, t in m.named_parameters()}


def run_steps(task, opt, problem, params, steps: int, seed: int = 5) -> list[_Run]:
    """``steps`` inner steps from ``params`` (minibatches of the seeded stream); every run state."""
    gen = torch.Generator().manual_seed(seed)
    runs = [_Run(0, params, opt.initial_state(problem, CPU), gen, problem.minibatch(gen, CPU))]
    with torch.no_grad():
        for _ in range(steps):
            runs.append(task._step(opt, problem, runs[-1], track=False)[1])
    return runs


@pytest.mark.parametrize("name", ["ng-gnn", "ng-t", "nfn-np", "lstm"])
def test_learned_update_is_permutation_equivariant(name):
    task = tiny_task()
    problem = task.problem("train")
    opt = optimizer(task, name).eval()
    params = problem.init(3, CPU)
    gen = torch.Generator().manual_seed(1)
    perms = [torch.randperm(w, generator=gen) for w in task.cfg.train_widths]
    params_p = permuted(problem, params, perms)
    x = problem.data.x_train[:32]
    torch.testing.assert_close(functional_call(problem.module, params_p, (x,)),
                               functional_call(problem.module, params, (x,)), rtol=1e-5, atol=1e-5)  # helper valid
    # two steps (momenta and the LSTM state carry over); the same minibatches for both
    update = {k: run_steps(task, opt, problem, params, 2)[-1].params[k] - params[k] for k in params}
    update_p = {k: run_steps(task, opt, problem, params_p, 2)[-1].params[k] - params_p[k] for k in params_p}
    expected = permuted(problem, update, perms)
    scale = max(float(u.abs().max()) for u in update.values())
    assert scale > 0
    # an update is a difference of float32 parameters: it is known to one ulp of the parameters, which can exceed
    # 1e-4 of a small update (an update of 2e-4 on a weight of 0.26: one ulp is 3e-8, 1.3e-4 of it)
    ulp = torch.finfo(torch.float32).eps * max(float(p.abs().max()) for p in params.values())
    for k in update:
        torch.testing.assert_close(update_p[k], expected[k], rtol=1e-4, atol=1e-4 * scale + ulp, msg=k)
    # the update depends on the channel, so the check above can fail
    w = problem.names[0]
    assert not torch.allclose(expected[w], update[w], atol=1e-3 * scale)


def unpreprocess(log: torch.Tensor, sign: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Invert :func:`~neuralgraph.tasks.l2o.preprocess` (both branches)."""
    return torch.where(log > -1, sign * torch.exp(log * p), sign * math.exp(-p))


def test_graph_of_a_step_carries_that_steps_gradients(monkeypatch):
    task = tiny_task()
    problem = task.problem("train")
    opt = optimizer(task, "ng-gnn").eval()
    assert opt.encoder.deg_fitted  # the task fitted NG-GNN's degree statistics on the optimizee's graph
    seen = []
    opt.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))

    def no_tracing(*args, **kwargs):
        raise AssertionError("a step converted the optimizee again; it must gather into the cached plan")

    monkeypatch.setattr("neuralgraph.convert.plan.trace_module", no_tracing)
    runs = run_steps(task, opt, problem, problem.init(4, CPU), 2)
    assert len(seen) == 2
    plan, C = problem.plan, NUM_FEATURES + 1
    for run, graph in zip(runs[:2], seen):
        # the true gradient of this step: a real module, its parameters, this step's minibatch
        module = copy.deepcopy(problem.module)
        module.load_state_dict(run.params)
        torch.nn.functional.cross_entropy(module(run.batch[0]), run.batch[1]).backward()
        values = plan.read(graph.edge_attr.view(plan.num_edges, -1, C), graph.x.view(plan.num_nodes, -1, C))
        for name, p in module.named_parameters():
            v = values[name]                                   # [*shape, 1 + 14]: constant, then the features
            torch.testing.assert_close(unpreprocess(v[..., 3], v[..., 4]), p.grad, rtol=1e-5, atol=1e-9)
            torch.testing.assert_close(unpreprocess(v[..., 1], v[..., 2]), p.detach(), rtol=1e-5, atol=1e-9)
    # step 2's momenta are those of both gradients: m = b * (1 - b) g1 + (1 - b) g2 for the first decay rate
    assert not torch.equal(seen[0].edge_attr, seen[1].edge_attr)
    assert BETAS[0] == 0.5


def test_hand_written_optimizers_match_torch():
    task = tiny_task()
    problem = task.problem("train")
    for name, torch_opt in (("adam", lambda p: torch.optim.Adam(p, lr=0.01)),
                            ("sgd", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))):
        opt = task.wrap_model(create_model(name, lr=0.05 if name == "sgd" else 0.01))
        params = problem.init(2, CPU)
        runs = run_steps(task, opt, problem, params, 3)
        module = copy.deepcopy(problem.module)
        module.load_state_dict(params)
        ref = torch_opt(module.parameters())
        for run in runs[:3]:
            ref.zero_grad()
            torch.nn.functional.cross_entropy(module(run.batch[0]), run.batch[1]).backward()
            ref.step()
        for n, p in module.named_parameters():
            torch.testing.assert_close(runs[3].params[n], p.detach(), rtol=1e-5, atol=1e-6, msg=f"{name} {n}")


def test_lr_grid_picks_the_best_and_is_logged(capsys):
    task = tiny_task()
    adam = task.wrap_model(create_model("adam", lr_grid=[1e-5, 1e-2]))
    assert float(adam.lr) == pytest.approx(1e-2)  # 1e-5 barely moves the optimizee
    out = capsys.readouterr().out
    assert "lr=1e-05" in out and "lr=0.01" in out and "<- chosen" in out


@pytest.mark.slow
def test_meta_training_lowers_the_meta_loss():
    task = tiny_task(train_widths=(8, 8), inner_batch=32, inner_steps=20, unroll=5, runs_per_epoch=2,
                     eval_steps=20, val_runs=2)
    torch.manual_seed(0)
    model = create_model("ff")
    before = task.wrap_model(copy.deepcopy(model))
    with torch.no_grad():
        base = sum(task.rollout(before, r)["meta_loss"] for r in task.loader("val", "parameters", 1)) / 2
    res = fit(model, task, TrainConfig(epochs=3, batch_size=1, lr=0.01, seed=0), progress=False)
    assert res["steps"] == 3 * 2 * 4
    assert res["val"]["meta_loss"] < base - 0.01, (base, res["val"]["meta_loss"])


def test_resume_equals_an_uninterrupted_run(tmp_path):
    def train(out, epochs):
        task = tiny_task()
        torch.manual_seed(0)
        model = create_model("lstm", **SMALL["lstm"])  # state carried across unrolls
        return fit(model, task, TrainConfig(epochs=epochs, batch_size=1, lr=0.01, seed=0, patience=10),
                   out_dir=str(out), progress=False)

    full = train(tmp_path / "a", 2)
    train(tmp_path / "b", 1)
    resumed = train(tmp_path / "b", 2)
    assert resumed["history"] == full["history"]
    assert resumed["test"] == full["test"] and resumed["val"] == full["val"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_task_only_models_are_listed_with_their_task():
    assert {"ff", "lstm", "adam", "sgd"} <= set(list_models(task="l2o"))
    assert not {"ff", "lstm", "adam", "sgd"} & set(list_models())
    assert {"ng-gnn", "ng-t", "nfn-np"} <= set(list_models(task="l2o"))


@pytest.mark.parametrize("name, match", [("sne", "one value per network"), ("statnn", "one value per network"),
                                         ("mlp", "flat parameter vector")])
def test_models_that_cannot_optimize_are_refused(name, match):
    with pytest.raises(IncompatibleModelError, match=match):
        tiny_task().model_kwargs(name)


def test_bad_input():
    with pytest.raises(IncompatibleModelError, match="model of the l2o task only"):
        create_task("inr-cls").model_kwargs("adam")
    with pytest.raises(SystemExit, match="model of the l2o task only"):
        main(["--task", "inr-cls", "--model", "sgd", "--quick"])
    with pytest.raises(ValueError, match="must divide"):
        tiny_task(inner_steps=7, unroll=3)
    with pytest.raises(ValueError, match="train_data='cifar'"):
        tiny_task(train_data="cifar")
    with pytest.raises(ValueError, match="lr_grid"):
        create_model("adam", lr=None, lr_grid=[])
    with pytest.raises(SystemExit, match="unknown model option"):  # ff has no options of its own
        resolve_config("l2o", "ff", None, False, ["model.hidden=3"])
    assert isinstance(create_model("sgd", lr=0.1), HandWritten)


def test_refuses_to_run_data_parallel(monkeypatch):  # its meta-training batches continue stateful inner runs
    import neuralgraph.tasks.l2o as l2o
    monkeypatch.setattr(l2o.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(l2o.dist, "get_world_size", lambda: 2)
    with pytest.raises(ValueError, match="runs in one process"):
        tiny_task().loader("train", "graph", 1)
