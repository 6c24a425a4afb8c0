"""Cost of learned optimizers (issue 13's budget): one inner step of each optimizer as a ratio to an Adam
step on the same optimizee (target for ng-gnn: <= 20x), and the meta-training wall time of the default
configuration (target: <= 30 min on 2 cores).

    python -m benchmarks.perf.l2o [--models ng-gnn ng-t nfn-np lstm ff] [--steps 50] [--epochs 1]
                                  [--threads 1] [--out results/perf/l2o.json]

An inner step is everything one optimizer step costs in an evaluation run: the optimizee's minibatch
forward / backward, the features, the optimizer's forward (for graph models: the gather of the features
into the cached plan's graph and the encoder) and the update. The meta-training time is measured over
``--epochs`` epochs of the default configuration (meta-gradient steps plus the per-epoch validation)
and scaled to the configured number of epochs; pass ``--epochs`` equal to ``train.epochs`` to measure
the whole run.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from benchmarks.run import resolve_config
from neuralgraph.io import atomic_write_text
from neuralgraph.models import create_model
from neuralgraph.tasks import create_task
from neuralgraph.training import TrainConfig, fit


def step_seconds(task, opt, which: str, steps: int) -> float:
    """Mean wall time of one inner step (no meta-gradient) of ``opt`` on the ``which`` optimizee."""
    problem = task.problem(which)
    run = task._start(opt, problem, 0, torch.device("cpu"))
    with torch.no_grad():
        for _ in range(3):  # warm-up
            _, run = task._step(opt, problem, run, track=False)
        t0 = time.perf_counter()
        for _ in range(steps):
            _, run = task._step(opt, problem, run, track=False)
    return (time.perf_counter() - t0) / steps


def build(task_name: str, model: str, task):
    cfg = resolve_config(task_name, model, None, False, [])
    torch.manual_seed(0)
    return task.wrap_model(create_model(model, **task.model_kwargs(model), **cfg["model"])).eval(), cfg


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ng-gnn", "ng-t", "nfn-np", "lstm", "ff"])
    ap.add_argument("--steps", type=int, default=50, help="timed inner steps per optimizer")
    ap.add_argument("--epochs", type=int, default=1, help="meta-training epochs timed (ng-gnn, default config)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/perf/l2o.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = resolve_config("l2o", "adam", None, False, [])
    task = create_task("l2o", **cfg["task"])
    adam = task.wrap_model(create_model("adam", **{**cfg["model"], "lr": 1e-2}))
    rows = []
    for which in ("train", "test"):
        base = step_seconds(task, adam, which, args.steps)
        rows.append({"optimizee": task.problem(which).name, "optimizer": "adam", "ms": 1e3 * base, "ratio": 1.0})
        for m in args.models:
            opt, _ = build("l2o", m, task)
            s = step_seconds(task, opt, which, args.steps)
            rows.append({"optimizee": task.problem(which).name, "optimizer": m, "ms": 1e3 * s, "ratio": s / base})
    print(f"| optimizee | optimizer | ms / inner step | x Adam |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['optimizee']} | {r['optimizer']} | {r['ms']:.2f} | {r['ratio']:.1f} |")

    # meta-training wall time of the default configuration (ng-gnn)
    mcfg = resolve_config("l2o", "ng-gnn", None, False, [])
    train = TrainConfig(**{**mcfg["train"], "epochs": args.epochs}, seed=0)
    torch.manual_seed(0)
    model = create_model("ng-gnn", **task.model_kwargs("ng-gnn"), **mcfg["model"])
    t0 = time.perf_counter()
    res = fit(model, task, train, progress=False)
    seconds = time.perf_counter() - t0  # meta-steps, validation every epoch, the final tests (conservative)
    full_epochs = mcfg["train"]["epochs"]
    per_epoch = seconds / args.epochs
    meta = {"epochs_timed": args.epochs, "seconds_timed": seconds, "seconds_per_epoch": per_epoch,
            "meta_gradient_seconds": res["train_seconds"],
            "default_epochs": full_epochs, "meta_steps_per_epoch": res["steps"] // max(args.epochs, 1),
            "estimated_minutes": per_epoch * full_epochs / 60, "threads": args.threads}
    print(f"\nng-gnn meta-training, default config: {per_epoch:.1f} s per epoch ({meta['meta_steps_per_epoch']} "
          f"meta-steps + validation) x {full_epochs} epochs = {meta['estimated_minutes']:.1f} min on "
          f"{args.threads} thread(s) ({'measured' if args.epochs == full_epochs else 'extrapolated'})")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    atomic_write_text(args.out, json.dumps({"steps": rows, "meta_training": meta}, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
