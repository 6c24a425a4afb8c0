"""Executor speed: seconds to run a converted network's graph alone (``neuralgraph.execute``), one thread,
and its largest difference from the module.

    python -m benchmarks.perf.execute [--batch 2] [--json results/perf/execute.json]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.perf.nets import resnet18, wildpark
from neuralgraph import execute, to_neural_graph
from neuralgraph.io import atomic_write_text

CASES = {  # name: (model, input size)
    "ResNet-18 (torchvision replica), 32x32": (resnet18, (3, 32, 32)),
    "wild-park CNN (5 conv, residual), 16x16": (wildpark, (3, 16, 16)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2, help="inputs per run")
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for name, (make, size) in CASES.items():
        model = make().eval()
        g = to_neural_graph(model)
        x = torch.randn(args.batch, *size)
        start = time.perf_counter()
        y = execute(g, x)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            ref = model(x)
        err = float((y - ref).abs().max() / ref.abs().max())
        rows.append(dict(model=name, nodes=g.num_nodes, edges=g.edge_index.size(1), batch=args.batch,
                         seconds=seconds, max_rel_error=err))
    print(f"{'model':42s} {'nodes':>7s} {'edges':>9s} {'seconds':>8s} {'max rel err':>12s}")
    for r in rows:
        print(f"{r['model']:42s} {r['nodes']:7d} {r['edges']:9d} {r['seconds']:8.2f} {r['max_rel_error']:12.2e}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"threads": 1, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
