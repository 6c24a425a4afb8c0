"""Conversion speed: graphs/s for a fresh trace (cold) and with the cached per-architecture plan; with
``--memory``, peak memory (RSS) and time of one conversion of large torchvision replicas, each in its own
process (one thread, address space capped at ``--limit-gb``).

    python -m benchmarks.perf.convert [--seconds 2] [--json results/perf/convert.json]
    python -m benchmarks.perf.convert --memory [--limit-gb 12] [--json results/perf/convert-memory.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time

import torch

from benchmarks.perf.nets import VGG11, ResNet18, mlp, resnet18, resnet50, small_cnn_zoo, wildpark
from neuralgraph import to_neural_graph
from neuralgraph.convert import clear_plan_cache
from neuralgraph.io import atomic_write_text

CASES = {
    "small-cnn-zoo (1-16-16-16, 3x3)": small_cnn_zoo,
    "wild-park CNN (5 conv, residual)": wildpark,
    "MLP 784-512-512-10": mlp,
    "ResNet-18-shaped CNN": ResNet18,
}


#: name: (model, converter options) for --memory
LARGE = {
    "ResNet-18 (torchvision replica)": (resnet18, {}),
    "ResNet-50 (torchvision replica)": (resnet50, {}),
    "ResNet-50, max_kernel=(3, 3)": (resnet50, {"max_kernel": (3, 3)}),  # its 7x7 stem as shifted maps
    "VGG-11 (torchvision replica)": (VGG11, {}),
    "VGG-11, max_kernel=(3, 3)": (VGG11, {"max_kernel": (3, 3)}),
}


def measure_one(name: str) -> dict:
    """Convert one LARGE model in this process; peak RSS (ru_maxrss) before and after."""
    torch.set_num_threads(1)
    make, options = LARGE[name]
    model = make().eval()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    try:
        g = to_neural_graph(model, **options)
        result = dict(nodes=g.num_nodes, edges=g.edge_index.size(1), error=None)
    except Exception as err:  # noqa: BLE001 - reported in the table
        result = dict(nodes=None, edges=None, error=f"{type(err).__name__}: {str(err)[:300]}")
    result.update(model=name, seconds=time.perf_counter() - start, rss_before_mb=before,
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def memory(limit_gb: float) -> list[dict]:
    rows = []
    for name in LARGE:
        code = (f"import json, resource; resource.setrlimit(resource.RLIMIT_AS, ({int(limit_gb * 2**30)},) * 2); "
                f"from benchmarks.perf.convert import measure_one; print(json.dumps(measure_one({name!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        lines = out.stdout.strip().splitlines()
        rows.append(json.loads(lines[-1]) if out.returncode == 0 and lines else dict(
            model=name, nodes=None, edges=None, seconds=None, rss_before_mb=None, peak_rss_mb=None,
            error=f"exit {out.returncode}: {out.stderr.strip().splitlines()[-1][:300] if out.stderr.strip() else ''}"))
    print(f"{'model':34s} {'edges':>11s} {'seconds':>8s} {'peak RSS MB':>12s}  error")
    for r in rows:
        edges = "-" if r["edges"] is None else f"{r['edges']:11d}"
        secs = "-" if r["seconds"] is None else f"{r['seconds']:8.1f}"
        peak = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:12.0f}"
        print(f"{r['model']:34s} {edges:>11s} {secs:>8s} {peak:>12s}  {r['error'] or ''}")
    return rows


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
    ap.add_argument("--memory", action="store_true", help="peak RSS and time of large models instead")
    ap.add_argument("--limit-gb", type=float, default=12.0, help="address-space cap per --memory process")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.memory:
        rows = memory(args.limit_gb)
        if args.json:
            atomic_write_text(args.json, json.dumps({"threads": 1, "limit_gb": args.limit_gb, "rows": rows},
                                                    indent=2))
        return
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
