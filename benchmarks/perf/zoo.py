"""Zoo generation speed: trained runs per core-minute (one process, one torch thread).

    python -m benchmarks.perf.zoo [--preset wildpark-digits] [--runs 64] [--seed 0]

Core-minutes are CPU time of the process (robust when other jobs share the machine); wall time is
printed too. The issue's target for wildpark-digits (10 epochs) is >= 60 runs per core-minute.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from neuralgraph.data.formats.native import load_zoo
from neuralgraph.zoo.datasets import load_image_data
from neuralgraph.zoo.generate import generate
from neuralgraph.zoo.presets import get_preset


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="wildpark-digits")
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load_image_data(get_preset(args.preset).dataset)       # dataset preparation is not training time
    with tempfile.TemporaryDirectory() as d:
        t0, c0 = time.perf_counter(), time.process_time()
        rep = generate(args.preset, args.runs, d, workers=1, seed=args.seed, progress=False, threads=1)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        zoo = load_zoo(d)
        final = [m.metrics["test_accuracy"] for m in zoo if m.epoch == max(x.epoch for x in zoo)]
    final.sort()
    q = lambda f: final[int(f * (len(final) - 1))]  # noqa: E731
    print(f"{args.preset}: {rep.trained} runs, {wall:.1f}s wall, {cpu:.1f}s cpu -> "
          f"{60 * rep.trained / cpu:.1f} runs/core-minute ({60 * rep.trained / wall:.1f} per wall-minute)")
    print(f"final test accuracy quantiles 0/25/50/75/100%: "
          f"{q(0):.2f} {q(.25):.2f} {q(.5):.2f} {q(.75):.2f} {q(1):.2f}")


if __name__ == "__main__":
    main()
