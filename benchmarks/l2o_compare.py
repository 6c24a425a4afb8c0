"""Compare every optimizer run on the ``l2o`` task: test accuracy / loss after K inner steps per optimizer
(JSON + Markdown) and one figure of the optimizee's training loss and test accuracy against the step for
every optimizer (each evaluated split).

    python -m benchmarks.l2o_compare [--results results/l2o] [--out results/l2o]

Reads the per-seed ``metrics.json`` / ``predictions.json`` / ``config.yaml`` that
``python -m benchmarks.run --task l2o --model M --seeds ...`` writes under ``<results>/<optimizer>/seed<k>/``
(finished seeds only); writes ``comparison.json``, ``comparison.md`` and ``curves_<split>.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Any

import yaml

from benchmarks.run import summarize, training_curves
from neuralgraph.io import atomic_write_text

#: the table's order: hand-written, then learned optimizers without and with the optimizee's structure
ORDER = ("sgd", "adam", "ff", "lstm", "nfn-np", "ng-gnn", "ng-t")
METRICS = ("accuracy", "test_loss", "train_loss", "meta_loss")


def collect(root: str) -> dict[str, dict[str, Any]]:
    """Optimizer name -> the mean / std over its finished seeds (every ``seed*/metrics.json``, so seeds run
    one invocation at a time count too), its seeds, configuration and per-seed predictions."""
    out = {}
    for name in sorted(os.listdir(root)):
        seeds = sorted(glob.glob(os.path.join(root, name, "seed*", "metrics.json")),
                       key=lambda p: int(os.path.basename(os.path.dirname(p))[4:]))
        results, preds = [], []
        for path in seeds:
            with open(path) as f:
                results.append(json.load(f))
            with open(os.path.join(os.path.dirname(path), "predictions.json")) as f:
                preds.append(json.load(f))
        if not results:
            continue
        with open(os.path.join(os.path.dirname(seeds[0]), "config.yaml")) as f:
            config = yaml.safe_load(f)
        out[name] = {"summary": {"seeds": [r["seed"] for r in results], "config": config,
                                 "summary": summarize(results)}, "predictions": preds}
    return dict(sorted(out.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER), kv[0])))


def table(runs: dict[str, dict[str, Any]]) -> str:
    splits = [s for s in ("val", "test", "test_train_task") if any(s in r["summary"]["summary"] for r in runs.values())]
    head = "| optimizer | seeds | " + " | ".join(f"{s} accuracy | {s} test loss" for s in splits) + " |"
    lines = [head, "|---|---|" + "---|---|" * len(splits)]
    for name, r in runs.items():
        s = r["summary"]["summary"]
        cells = []
        for split in splits:
            for m in ("accuracy", "test_loss"):
                v = s.get(split, {}).get(m)
                cells.append("–" if v is None else f"{v['mean']:.3f} ± {v['std']:.3f}")
        lines.append(f"| {name} | {len(r['summary']['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results/l2o")
    ap.add_argument("--out", help="(default: --results)")
    args = ap.parse_args(argv)
    out = args.out or args.results
    runs = collect(args.results)
    if not runs:
        raise SystemExit(f"no l2o results under {args.results!r} (run python -m benchmarks.run --task l2o --model M)")
    os.makedirs(out, exist_ok=True)
    steps = {name: r["summary"]["config"]["task"].get("eval_steps") for name, r in runs.items()}
    data = {name: {"seeds": r["summary"]["seeds"], "eval_steps": steps[name],
                   **{split: {m: v for m, v in vals.items() if m in METRICS}
                      for split, vals in r["summary"]["summary"].items()}} for name, r in runs.items()}
    atomic_write_text(os.path.join(out, "comparison.json"), json.dumps(data, indent=2))
    md = f"### l2o: optimizee test accuracy / loss after K inner steps (K = {sorted(set(steps.values()))})\n\n"
    md += table(runs)
    atomic_write_text(os.path.join(out, "comparison.md"), md)
    print(md)
    for split in ("test", "test_train_task"):
        series = {name: r["predictions"] and [p[split] for p in r["predictions"]] for name, r in runs.items()
                  if all(split in p for p in r["predictions"])}
        if series:
            training_curves(series, os.path.join(out, f"curves_{split}.png"), f"l2o: every optimizer ({split})")
    print(f"written {out}/comparison.json, comparison.md, curves_*.png")


if __name__ == "__main__":
    main()
