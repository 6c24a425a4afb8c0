"""The issue-16 INR tables: every ``inr-cls`` / ``inr-edit`` run, in priority order, resumable.

    python -m benchmarks.inr_tables run   [--seeds 0 1 2] [--only cls|edit] [--rows LABEL ...] [--results DIR]
                                          [--dry-run]
    python -m benchmarks.inr_tables table [--results DIR] [--write docs/results.md]

``run`` works through :data:`RUNS` seed by seed (every ``inr-cls`` row at seed 0, then seeds 1 and 2, then
``inr-edit`` likewise), one ``python -m benchmarks.run`` process per (row, seed) with one torch thread.
A (row, seed) whose ``metrics.json`` exists is skipped; an interrupted one resumes from its checkpoint
(the runner's own resume), so the same command continues where the last session stopped. Each finished
(row, seed) appends one JSON line (row, seed, git commit, wall seconds) to ``<results>/inr_tables.jsonl``.

``table`` renders what is complete as markdown, one table per task: mean ± std over the seeds done, the
seed count, the best epoch and the training time; rows without a finished seed are listed as pending.
With ``--write FILE`` the tables replace the text between :data:`BEGIN` and :data:`END` in ``FILE``.

The budget (:data:`COMMON`, :data:`RUNS`) is sized for one CPU core: the ``inr-glyphs`` zoo (28x28
font-rendered digits; the 8x8 ``inr-digits`` INRs are noise between pixel centres, so probe features
carry little there), 3,000 INRs (2,400 / 300 / 300), and graph models narrower than the defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from neuralgraph.io import atomic_write_text

#: settings of every run: the zoo, its size and the training budget shared by all models
COMMON: dict[str, tuple[str, ...]] = {
    "cls": ("task.preset=inr-glyphs", "task.runs=3000", "train.batch_size=32", "train.lr=0.001"),
    "edit": ("task.preset=inr-glyphs", "task.runs=3000", "train.batch_size=32", "train.lr=0.001"),
}
#: graph-model sizes for one CPU core (the paper's INR models: 4 layers, 64 dims, 4 heads)
NG_GNN = ("model.hidden=32", "model.num_layers=2", "model.readout=output_mean")
NG_T = ("model.node_dim=32", "model.edge_dim=16", "model.num_layers=2", "model.heads=4",
        "model.readout=output_mean")
#: epochs per model (patience = epochs: the best validation epoch is kept, no early stop); sized so one
#: CPU core runs every inr-cls row of one seed in about an hour. The rows without probe features (nfn-np,
#: nfn-hnp, ng-gnn p0) stay at ln 10 here, and that is the data, not these settings: the zoo's
#: SIRENs start from independent inits, and neither lr 1e-4, 64-128 NF channels, a 3-layer NG-GNN nor 22,400
#: training INRs moved NFN-NP / NG-GNN's training loss (docs/results.md; python -m benchmarks.inr_signal)
EPOCHS = {"mlp": 30, "statnn": 30, "nfn-np": 10, "nfn-hnp": 10, "sne": 10, "ng-gnn": 8, "ng-t": 8}


@dataclass(frozen=True)
class Row:
    """One table row: a model with its settings on one task."""

    task: str  # "inr-cls" or "inr-edit"
    model: str  # registered model name
    tag: str | None = None  # result-directory suffix of the variant (benchmarks.run --tag)
    sets: tuple[str, ...] = field(default_factory=tuple)  # --set overrides beyond COMMON

    @property
    def label(self) -> str:
        return self.model + (f"+{self.tag}" if self.tag else "")

    def overrides(self) -> list[str]:
        epochs = EPOCHS[self.model]
        return [*COMMON["cls" if self.task == "inr-cls" else "edit"], f"train.epochs={epochs}",
                f"train.patience={epochs}", *self.sets]


def _ng(task: str, model: str, probes: int) -> Row:
    sizes = NG_GNN if model == "ng-gnn" else NG_T
    if task == "inr-edit":  # per-parameter head: no readout
        sizes = tuple(s for s in sizes if not s.startswith("model.readout="))
    return Row(task, model, f"p{probes}", (*sizes, f"model.probes={probes}"))


#: every row, in the order they are run
RUNS: list[Row] = [
    *[Row("inr-cls", m) for m in ("mlp", "statnn", "nfn-np")],
    *[_ng("inr-cls", m, 64) for m in ("ng-gnn", "ng-t")],
    Row("inr-cls", "nfn-hnp"),
    *[_ng("inr-cls", m, p) for p in (0, 16) for m in ("ng-gnn", "ng-t")],
    Row("inr-cls", "sne"),
    *[Row("inr-edit", m) for m in ("mlp", "nfn-np", "nfn-hnp")],
    *[_ng("inr-edit", m, p) for p in (64, 0) for m in ("ng-gnn", "ng-t")],
]
#: the block of docs/results.md that ``table --write`` replaces
BEGIN, END = "<!-- inr-tables:begin -->", "<!-- inr-tables:end -->"


def seed_dir(results: str, row: Row, seed: int) -> str:
    return os.path.join(results, row.task, row.label, f"seed{seed}")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command(row: Row, seed: int, results: str) -> list[str]:
    """The ``benchmarks.run`` command of one (row, seed)."""
    cmd = [sys.executable, "-m", "benchmarks.run", "--task", row.task, "--model", row.model,
           "--seeds", str(seed), "--threads", "1", "--no-progress", "--out", results]
    if row.tag:
        cmd += ["--tag", row.tag]
    for s in row.overrides():
        cmd += ["--set", s]
    return cmd


def run(results: str, seeds: list[int], only: str | None, dry_run: bool, rows: list[str] | None = None) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    tasks = [t for t in ("inr-cls", "inr-edit") if only is None or t == f"inr-{only}"]
    for task in tasks:
        for seed in seeds:
            for row in (r for r in RUNS if r.task == task and (rows is None or r.label in rows)):
                if os.path.exists(os.path.join(seed_dir(results, row, seed), "metrics.json")):
                    continue
                cmd = command(row, seed, results)
                print(" ".join(cmd[1:]), flush=True)
                if dry_run:
                    continue
                t0 = time.time()
                subprocess.run(cmd, env=env, check=True)
                line = {"task": row.task, "row": row.label, "seed": seed, "commit": _commit(),
                        "wall_s": round(time.time() - t0, 1)}
                with open(os.path.join(results, "inr_tables.jsonl"), "a") as f:
                    f.write(json.dumps(line) + "\n")


def _cell(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    if not values:
        return "–"
    a = np.asarray(values) * scale
    return f"{a.mean():.{digits}f} ± {a.std():.{digits}f}"


def table(results: str) -> str:
    """Markdown tables of everything finished under ``results``."""
    log = {}
    path = os.path.join(results, "inr_tables.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                log[(r["task"], r["row"], r["seed"])] = r["commit"]
    parts = []
    for task, metric, head in (("inr-cls", "accuracy", "test accuracy"),
                               ("inr-edit", "mse", "test MSE (×1e-2)")):
        lines = [f"**{task}**", "", f"| model | settings | seeds done | {head} | val | best epoch | train s / seed "
                 "| commits |", "|---|---|---|---|---|---|---|---|"]
        for row in (r for r in RUNS if r.task == task):
            done = []
            for seed in range(10):
                p = os.path.join(seed_dir(results, row, seed), "metrics.json")
                if os.path.exists(p):
                    with open(p) as f:
                        done.append((seed, json.load(f)))
            settings = ", ".join(s.split("=", 1)[0].split(".")[-1] + "=" + s.split("=", 1)[1]
                                 for s in row.sets) or "defaults"
            if not done:
                lines.append(f"| {row.model} | {settings} | 0 (pending) | – | – | – | – | – |")
                continue
            scale = 100.0 if task == "inr-edit" else 1.0
            test = [m["test"][metric] for _, m in done]
            val = [m["val"][metric] for _, m in done]
            commits = sorted({log.get((task, row.label, s), "?") for s, _ in done})
            lines.append(f"| {row.model} | {settings} | {len(done)} ({', '.join(str(s) for s, _ in done)}) | "
                         f"{_cell(test, scale)} | {_cell(val, scale)} | "
                         f"{', '.join(str(m['best_epoch'] + 1) + '/' + str(m['epochs_run']) for _, m in done)} | "
                         f"{np.mean([m['train_seconds'] for _, m in done]):.0f} | {', '.join(commits)} |")
        if task == "inr-edit":
            ref = []
            for row in (r for r in RUNS if r.task == task):
                p = os.path.join(seed_dir(results, row, 0), "metrics.json")
                if os.path.exists(p):
                    with open(p) as f:
                        ref.append(json.load(f)["test"]["mse_unedited"] * 100)
            if ref:
                lines += ["", "Unedited INRs against the dilated images (doing nothing): test MSE "
                          f"{ref[0]:.3f} ×1e-2."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_between_markers(path: str, text: str) -> None:
    with open(path) as f:
        doc = f.read()
    i, j = doc.find(BEGIN), doc.find(END)
    if i < 0 or j < i:
        raise ValueError(f"{path} has no {BEGIN} ... {END} block to replace; add the two marker lines first")
    atomic_write_text(path, doc[:i + len(BEGIN)] + "\n" + text + doc[j:])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) the missing (row, seed) pairs in priority order")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--only", choices=["cls", "edit"], default=None)
    r.add_argument("--rows", nargs="+", default=None, metavar="LABEL",
                   help="only these rows (result-directory labels, e.g. ng-gnn+p0 nfn-hnp), of both tasks "
                        "unless --only; still in priority order")
    r.add_argument("--results", default="results")
    r.add_argument("--dry-run", action="store_true", help="print the commands only")
    t = sub.add_parser("table", help="render the finished runs as markdown")
    t.add_argument("--results", default="results")
    t.add_argument("--write", default=None, help=f"replace the {BEGIN} ... {END} block of this file")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        run(args.results, args.seeds, args.only, args.dry_run, args.rows)
    else:
        text = table(args.results)
        if args.write:
            write_between_markers(args.write, text)
        print(text)


if __name__ == "__main__":
    main()
