"""Forward+backward time of our NF-layer stacks against the reference package ``nfn``, same configuration.

Configuration (issue 5): 64 Small-CNN-Zoo-shaped networks (conv 1->16->16->16, 3x3, global average pool,
linear 16->10), an NF stack of 2 layers with 32 channels and ReLU, then the invariant pool; the loss is the
sum of the pooled features, so every parameter gets a gradient. Both implementations get the same
weights and are timed in interleaved rounds (robust to load from other processes); we report medians.

    python -m benchmarks.perf.nfn [--batch 64] [--channels 32] [--repeats 20] [--threads N] [--json PATH]

Needs the optional package ``nfn`` (a test dependency: ``pip install -e ".[test]"``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from neuralgraph.data import WeightSpace
from neuralgraph.io import atomic_write_text
from neuralgraph.nn import HNPLayer, NPLayer, hnp_pool, np_pool, to_features

SMALL_CNN = [(16, 1, 3, 3), (16, 16, 3, 3), (16, 16, 3, 3), (10, 16)]


class OurStack(nn.Module):
    def __init__(self, kind: str, channels: int, depth: int) -> None:
        super().__init__()
        layer = {"np": NPLayer, "hnp": HNPLayer}[kind]
        chans = [1] + [channels] * depth
        self.layers = nn.ModuleList(layer(SMALL_CNN, a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.pool = hnp_pool if kind == "hnp" else np_pool

    def forward(self, ws: WeightSpace) -> torch.Tensor:
        x = to_features(ws)
        for layer in self.layers:
            x = layer(x).map(torch.relu)
        return self.pool(x)


def reference_stack(kind: str, channels: int, depth: int):
    from nfn.common import ArraySpec, NetworkSpec
    from nfn.layers import HNPLinear, HNPPool, NPLinear, NPPool, TupleOp

    spec = NetworkSpec([ArraySpec(s) for s in SMALL_CNN], [ArraySpec((s[0],)) for s in SMALL_CNN])
    layer, pool = {"np": (NPLinear, NPPool), "hnp": (HNPLinear, HNPPool)}[kind]
    chans = [1] + [channels] * depth
    mods = []
    for a, b in zip(chans[:-1], chans[1:]):
        mods += [layer(spec, a, b), TupleOp(nn.ReLU())]
    return nn.Sequential(*mods, pool(spec))


def time_step(model, inp) -> float:
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    model(inp).sum().backward()
    return time.perf_counter() - t0


def run(batch: int = 64, channels: int = 32, depth: int = 2, repeats: int = 20, warmup: int = 3) -> list[dict]:
    from nfn.common import WeightSpaceFeatures

    torch.manual_seed(0)
    ws = WeightSpace(tuple(torch.randn(batch, *s) * 0.3 for s in SMALL_CNN),
                     tuple(torch.randn(batch, s[0]) * 0.1 for s in SMALL_CNN))
    ref_inp = WeightSpaceFeatures([w.unsqueeze(1) for w in ws.weights], [b.unsqueeze(1) for b in ws.biases])
    rows = []
    for kind in ("np", "hnp"):
        ours, ref = OurStack(kind, channels, depth), reference_stack(kind, channels, depth)
        times = {"ours": [], "nfn": []}
        for r in range(warmup + repeats):
            for name, model, inp in (("ours", ours, ws), ("nfn", ref, ref_inp)):
                t = time_step(model, inp)
                if r >= warmup:
                    times[name].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"layer": kind, "batch": batch, "channels": channels, "depth": depth,
                     "ours_ms": 1e3 * med["ours"], "nfn_ms": 1e3 * med["nfn"],
                     "ratio": med["ours"] / med["nfn"],
                     "ours_params": sum(p.numel() for p in ours.parameters()),
                     "nfn_params": sum(p.numel() for p in ref.parameters())})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.batch, args.channels, args.depth, args.repeats)
    print(f"NF stack fwd+bwd, {args.batch} Small-CNN-Zoo networks, {args.depth} layers x {args.channels} ch + pool, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'layer':<6}{'ours (ms)':>12}{'nfn (ms)':>12}{'ratio':>8}{'params ours/nfn':>20}")
    for r in rows:
        print(f"{r['layer']:<6}{r['ours_ms']:>12.1f}{r['nfn_ms']:>12.1f}{r['ratio']:>8.2f}"
              f"{r['ours_params']:>11}/{r['nfn_params']}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"config": vars(args), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
