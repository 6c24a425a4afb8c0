"""Cost of learned optimizers (issue 13's budget): one inner step of each optimizer as a ratio to an Adam
step on the same optimizee (target for ng-gnn: <= 20x), and the meta-training wall time of the default
configuration (target: <= 30 min on 2 cores).

    python -m benchmarks.perf.l2o [--models ng-gnn ng-t nfn-np lstm ff] [--steps 20] [--rounds 5] [--epochs 1]
                                  [--threads 1] [--out results/perf/l2o.json]

An inner step is everything one optimizer step costs in an evaluation run: the optimizee's minibatch
forward / backward, the features, the optimizer's forward (for graph models: the gather of the features
into the cached plan's graph and the encoder) and the update. The meta-training time is measured over
``--epochs`` epochs of the default configuration: the meta-gradient steps per epoch and one validation
are scaled to the configured number of epochs, plus the final test evaluations once.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from benchmarks.run import resolve_config
from neuralgraph.io import atomic_write_text
from neuralgraph.models import create_model
from neuralgraph.tasks import create_task
from neuralgraph.training import TrainConfig, evaluate, fit


class Stepper:
    """Times inner steps (no meta-gradient) of one optimizer on one optimizee, continuing one inner run."""

    def __init__(self, task, opt, which: str):
        self.task, self.opt, self.problem = task, opt, task.problem(which)
        self.run = task._start(opt, self.problem, 0, torch.device("cpu"))
        self.seconds(3)  # warm-up

    @torch.no_grad()
    def seconds(self, steps: int) -> float:
        """Mean wall time of one of the next ``steps`` inner steps."""
        t0 = time.perf_counter()
        for _ in range(steps):
            _, self.run = self.task._step(self.opt, self.problem, self.run, track=False)
        return (time.perf_counter() - t0) / steps


def paired(a: Stepper, b: Stepper, steps: int, rounds: int) -> tuple[float, float, float]:
    """Median over ``rounds`` of ``(seconds of a, seconds of b, b / a)``, the two timed back to back in each
    round, so that a change of load on a shared machine hits both."""
    rows = []
    for _ in range(rounds):
        ta, tb = a.seconds(steps), b.seconds(steps)
        rows.append((ta, tb, tb / ta))
    return tuple(float(statistics.median(r[i] for r in rows)) for i in range(3))


def build(task_name: str, model: str, task):
    cfg = resolve_config(task_name, model, None, False, [])
    torch.manual_seed(0)
    return task.wrap_model(create_model(model, **task.model_kwargs(model), **cfg["model"])).eval(), cfg


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ng-gnn", "ng-t", "nfn-np", "lstm", "ff"])
    ap.add_argument("--steps", type=int, default=20, help="timed inner steps per optimizer and round")
    ap.add_argument("--rounds", type=int, default=5, help="paired rounds (optimizer, then Adam) per optimizer")
    ap.add_argument("--epochs", type=int, default=1, help="meta-training epochs timed (ng-gnn, default config; 0: "
                    "skip)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/perf/l2o.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = resolve_config("l2o", "adam", None, False, [])
    task = create_task("l2o", **cfg["task"])
    adam = task.wrap_model(create_model("adam", **{**cfg["model"], "lr": 1e-2}))
    rows = []
    for which in ("train", "test"):
        base = Stepper(task, adam, which)
        for m in args.models:
            opt, _ = build("l2o", m, task)
            ta, tb, ratio = paired(base, Stepper(task, opt, which), args.steps, args.rounds)
            rows.append({"optimizee": task.problem(which).name, "optimizer": m, "ms": 1e3 * tb, "adam_ms": 1e3 * ta,
                         "ratio": ratio})
    print("| optimizee | optimizer | ms / inner step | Adam ms / inner step | x Adam (median of paired rounds) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['optimizee']} | {r['optimizer']} | {r['ms']:.2f} | {r['adam_ms']:.2f} | {r['ratio']:.1f} |")

    out = {"steps": rows}
    if args.epochs:
        out["meta_training"] = meta_training_time(task, args)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=2))
    print(f"written {args.out}")


def meta_training_time(task, args) -> dict:
    """Wall time of ``args.epochs`` epochs of ng-gnn meta-training at the default configuration, scaled to
    its number of epochs."""
    mcfg = resolve_config("l2o", "ng-gnn", None, False, [])
    train = TrainConfig(**{**mcfg["train"], "epochs": args.epochs}, seed=0)
    torch.manual_seed(0)
    model = create_model("ng-gnn", **task.model_kwargs("ng-gnn"), **mcfg["model"])
    res = fit(model, task, train, progress=False)
    opt = task.wrap_model(model)  # an optimizer of the same size, to time the evaluations
    timed = {}
    for split in ("val", *task.eval_splits()):
        t0 = time.perf_counter()
        evaluate(opt, task, split, opt.input_kind, train.batch_size, torch.device("cpu"))
        timed[split] = time.perf_counter() - t0
    full_epochs = mcfg["train"]["epochs"]
    per_epoch = res["train_seconds"] / args.epochs + timed["val"]   # meta-gradient steps + validation
    final = sum(v for k, v in timed.items() if k != "val")           # the test splits, once
    meta = {"epochs_timed": args.epochs, "meta_gradient_seconds_per_epoch": res["train_seconds"] / args.epochs,
            "validation_seconds": timed["val"], "final_test_seconds": final, "default_epochs": full_epochs,
            "meta_steps_per_epoch": res["steps"] // args.epochs,
            "estimated_minutes": (per_epoch * full_epochs + final) / 60, "threads": args.threads}
    print(f"\nng-gnn meta-training, default config: {per_epoch:.1f} s per epoch ({meta['meta_steps_per_epoch']} "
          f"meta-steps {meta['meta_gradient_seconds_per_epoch']:.1f} s + validation {timed['val']:.1f} s) x "
          f"{full_epochs} epochs + final tests {final:.1f} s = {meta['estimated_minutes']:.1f} min on "
          f"{args.threads} thread(s) (epochs {'measured' if args.epochs == full_epochs else 'extrapolated'})")
    return meta


if __name__ == "__main__":
    main()
