"""Render every result under a results directory into one Markdown report (``<results>/report.md``).

    python -m benchmarks.report [--results results] [--out results/report.md]

One table per task (rows: models, columns: the selection metric and R² of each evaluated split, as
mean ± std over seeds); cross-dataset results become the matrix of SNE's table 1 (rows: training
zoo, columns: test zoo, plus the average row); cross-arch results one row per dataset.

Everything from the line ``<!-- notes -->`` on (provenance, comparison with the papers) is written by
hand and kept when the tables are re-rendered. The project's own measured tables (``docs/results.md``) are
rendered block by block by :mod:`benchmarks.tables` instead.
"""
from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from typing import Any

import numpy as np

from neuralgraph.io import atomic_write_text


def load_summaries(root: str) -> list[dict[str, Any]]:
    out = []
    for dirpath, _, files in os.walk(root):
        if "summary.json" in files:
            with open(os.path.join(dirpath, "summary.json")) as f:
                s = json.load(f)
            s["dir"] = os.path.relpath(dirpath, root)
            out.append(s)
    return sorted(out, key=lambda s: s["dir"])


def fmt(v: dict[str, float] | None) -> str:
    return "–" if v is None else f"{v['mean']:.3f} ± {v['std']:.3f}"


def task_table(summaries: list[dict[str, Any]], metric: str = "kendall_tau") -> str:
    """One row per result directory (model, plus the variant path for cross-arch datasets)."""
    splits = sorted({k for s in summaries for k in s["summary"] if k.startswith("test")})
    head = ["result", "seeds"] + [f"{sp} τ" for sp in splits] + [f"{sp} R²" for sp in splits]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        cells = [s["dir"].split("/", 1)[-1], str(len(s["seeds"]))]
        cells += [fmt(s["summary"].get(sp, {}).get(metric)) for sp in splits]
        cells += [fmt(s["summary"].get(sp, {}).get("r2")) for sp in splits]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _datasets(rows: list[dict[str, Any]]) -> list[str]:
    """The test zoos of cross-dataset results, in the task's ``datasets`` order (sorted when not recorded)."""
    found = {k.split("/", 1)[1] for s in rows for k in s["summary"] if k.startswith("test/")}
    order = next((s["config"]["task"]["datasets"] for s in rows if s["config"]["task"].get("datasets")), [])
    return [d for d in order if d in found] + sorted(found - set(order))


def cross_dataset_table(summaries: list[dict[str, Any]], metric: str = "kendall_tau") -> str:
    """SNE table 1's layout: one row per ``train → test`` pair (each training zoo's own test split first), one
    column per model (mean ± std over its seeds), and the ``average`` row: each model's mean ± std over the pairs.
    An average over fewer pairs than the table has says over how many."""
    by_arch: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        by_arch[s["config"]["task"].get("arch", "arch1")].append(s)
    blocks = []
    for arch, rows in sorted(by_arch.items()):
        models = list(dict.fromkeys(s["model"] for s in rows))
        zoos = _datasets(rows)
        cell = {(s["model"], s["config"]["task"]["train_on"], c): s["summary"].get(f"test/{c}", {}).get(metric)
                for s in rows for c in zoos}
        trained = {s["config"]["task"]["train_on"] for s in rows}
        trains = [z for z in zoos if z in trained] + sorted(trained - set(zoos))
        pairs = [(a, b) for a in trains for b in [a] + [z for z in zoos if z != a]]
        seeds = sorted({len(s["seeds"]) for s in rows})
        count = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
        lines = [f"**{arch} zoos, train → test** (Kendall τ, mean ± std over {count} seed{'s' if seeds[-1] > 1 else ''}"
                 " per cell; average: mean ± std over the pairs; SNE table 1 layout)", "",
                 "| train → test | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        done: dict[str, list[float]] = defaultdict(list)
        for a, b in pairs:
            vals = [cell.get((m, a, b)) for m in models]
            for m, v in zip(models, vals):
                if v:
                    done[m].append(v["mean"])
            lines.append(f"| {a} → {b} | " + " | ".join(fmt(v) for v in vals) + " |")
        avg = []
        for m in models:
            v = np.asarray(done[m])
            part = "" if v.size == len(pairs) else f" ({v.size} of {len(pairs)} pairs)"
            avg.append(f"{v.mean():.3f} ± {v.std():.3f}{part}" if v.size else "–")
        lines.append("| average | " + " | ".join(avg) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def cross_dataset_matrix(summaries: list[dict[str, Any]], metric: str = "kendall_tau") -> str:
    """Rows: training zoo; columns: test zoos; last row: the column average (SNE table 1)."""
    by_model: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        by_model[(s["model"], s["config"]["task"].get("arch", "arch1"))].append(s)
    blocks = []
    for (model, arch), rows in sorted(by_model.items()):
        cols = sorted({k.split("/", 1)[1] for s in rows for k in s["summary"] if k.startswith("test/")})
        counts = sorted({len(s["seeds"]) for s in rows})
        seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        lines = [f"**{model}** on {arch} zoos (Kendall τ, mean ± std over {seeds} seed{'s' if counts[-1] > 1 else ''} "
                 "per training zoo)", "",
                 "| train \\ test | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        means: dict[str, list[float]] = defaultdict(list)
        for s in sorted(rows, key=lambda r: r["config"]["task"]["train_on"]):
            cells = []
            for c in cols:
                v = s["summary"].get(f"test/{c}", {}).get(metric)
                cells.append(fmt(v))
                if v:
                    means[c].append(v["mean"])
            lines.append(f"| {s['config']['task']['train_on']} | " + " | ".join(cells) + " |")
        lines.append("| average | " + " | ".join(
            f"{sum(means[c]) / len(means[c]):.3f}" if means[c] else "–" for c in cols) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render(root: str) -> str:
    summaries = load_summaries(root)
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        by_task[s["task"]].append(s)
    parts = ["# Results", "", f"Rendered by `python -m benchmarks.report` from `{root}/`. Each cell is the "
             "mean ± std over seeds of the test metric at the epoch with the best validation Kendall τ.", ""]
    for task in sorted(by_task):
        parts += [f"## {task}", ""]
        parts.append(cross_dataset_table(by_task[task]) + "\n\n" + cross_dataset_matrix(by_task[task])
                     if task == "cross-dataset" else task_table(by_task[task]))
        parts.append("")
    if not summaries:
        parts.append("_No results yet: run `python -m benchmarks.run --task wildpark --model ng-t`._")
    return "\n".join(parts) + "\n"


NOTES_MARKER = "<!-- notes -->"


def kept_notes(path: str) -> str:
    """The hand-written tail of an existing results file, from :data:`NOTES_MARKER` on ('' if none)."""
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        text = f.read()
    i = text.find(NOTES_MARKER)
    return "" if i < 0 else "\n" + text[i:]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results")
    ap.add_argument("--out", default=None, help="the report file (default: <results>/report.md)")
    args = ap.parse_args(argv)
    out = args.out or os.path.join(args.results, "report.md")
    text = render(args.results) + kept_notes(out)
    atomic_write_text(out, text)
    print(text)


if __name__ == "__main__":
    main()
