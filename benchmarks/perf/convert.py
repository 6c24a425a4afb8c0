"""Conversion speed: graphs/s for a fresh trace (cold) and with the cached per-architecture plan.

    python -m benchmarks.perf.convert [--seconds 2] [--json results/perf/convert.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from benchmarks.perf.nets import ResNet18, mlp, small_cnn_zoo, wildpark
from neuralgraph import to_neural_graph
from neuralgraph.convert import clear_plan_cache
from neuralgraph.io import atomic_write_text

CASES = {
    "small-cnn-zoo (1-16-16-16, 3x3)": small_cnn_zoo,
    "wild-park CNN (5 conv, residual)": wildpark,
    "MLP 784-512-512-10": mlp,
    "ResNet-18-shaped CNN": ResNet18,
}


def rate(fn, seconds: float, repeats: int = 5, min_runs: int = 3) -> float:
    """Calls per second of ``fn``: the best of ``repeats`` timings of ``seconds / repeats`` each (as
    ``timeit`` does, the best repeat is the one least disturbed by the rest of the machine)."""
    best = 0.0
    for _ in range(repeats):
        gc.collect()
        runs, start = 0, time.perf_counter()
        while runs < min_runs or time.perf_counter() - start < seconds / repeats:
            fn()
            runs += 1
        best = max(best, runs / (time.perf_counter() - start))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement (split into 5 repeats)")
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, make in CASES.items():
        model = make()
        g = to_neural_graph(model)

        def cold():
            clear_plan_cache()
            to_neural_graph(model)

        cold_rate = rate(cold, args.seconds)
        to_neural_graph(model)
        cached_rate = rate(lambda: to_neural_graph(model), args.seconds)
        rows.append(dict(model=name, nodes=g.num_nodes, edges=g.edge_index.size(1), cold_graphs_per_s=cold_rate,
                         cached_graphs_per_s=cached_rate, speedup=cached_rate / cold_rate))
    print(f"{'model':34s} {'nodes':>7s} {'edges':>9s} {'cold/s':>9s} {'cached/s':>9s} {'ratio':>7s}")
    for r in rows:
        print(f"{r['model']:34s} {r['nodes']:7d} {r['edges']:9d} {r['cold_graphs_per_s']:9.1f} "
              f"{r['cached_graphs_per_s']:9.1f} {r['speedup']:7.1f}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"threads": 1, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
