"""The GPU check of issue 14: one prepared script for a CUDA machine, done in under 10 minutes.

    python -m benchmarks.perf.gpu [--json results/perf/gpu.json] [--budget 540]
    python -m benchmarks.perf.gpu --dry          # CPU smoke run at toy sizes (what the test suite runs)

Reports, fp32 against AMP (bfloat16 autocast; ``--amp fp16`` for float16):

1. training graphs/s and peak memory of NG-T (dense and sparse) and NG-GNN at the paper's Wild Park size
   (``benchmarks/perf/models.py``'s models and random Wild Park CNNs), batch 128;
2. forward time and peak memory of sparse NG-T and NG-GNN on the neural graph of a ResNet-50
   (``benchmarks/perf/nets.py``, no torchvision needed);
3. the wall time of the main command, ``python -m benchmarks.run --task wildpark --model ng-t --device cuda``
   (``--main-epochs`` epochs, fp32 and ``--amp``), in a fresh ``NEURALGRAPH_HOME``: its first run includes
   generating and converting the zoo, so the command runs twice and both times are reported.

Everything runs in this one process (the CUDA peak is reset before each measurement, so it is exact per
row); the main command runs as a subprocess. A section that would start after ``--budget`` seconds is
skipped and marked so. Prints one table per section and writes all rows to ``--json``. Without a CUDA
device it exits with status 2 and says so, unless ``--dry``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from benchmarks.perf.models import _table, measure_forward, measure_train, random_wildpark
from benchmarks.perf.nets import resnet50, wildpark
from neuralgraph import to_neural_graph
from neuralgraph.io import atomic_write_text

#: (benchmark model of ``benchmarks/perf/models.py``) measured in the training and forward sections
TRAIN_MODELS = ("ng-t", "ng-t-sparse", "ng-gnn")
FORWARD_MODELS = ("ng-t-sparse", "ng-gnn")


def _sizes(dry: bool) -> dict:
    """Full sizes on CUDA; toy sizes for the CPU smoke run."""
    if dry:
        return dict(graphs=8, batch=4, steps=1, net=wildpark, net_name="wildpark CNN", epochs=1, quick=True)
    return dict(graphs=128, batch=128, steps=10, net=resnet50, net_name="ResNet-50", epochs=None, quick=False)


def _main_command(device: str, amp: str, epochs: int | None, quick: bool, home: str, out: str) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.run", "--task", "wildpark", "--model", "ng-t", "--device", device,
           "--out", out, "--no-progress"]
    cmd += ["--quick"] if quick else ["--set", f"train.epochs={epochs}"]
    return cmd + (["--amp", amp] if amp != "off" else [])


def run(args) -> dict:
    device = torch.device("cpu" if args.dry else "cuda")
    size = _sizes(args.dry)
    epochs = args.main_epochs if size["epochs"] is None else size["epochs"]
    t_start = time.perf_counter()
    rows: dict[str, list[dict]] = {"train": [], "forward": [], "main": []}
    info = dict(device=torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)",
                torch=torch.__version__, amp=args.amp, dry=args.dry)

    def budget_left(section: str) -> bool:
        if time.perf_counter() - t_start < args.budget:
            return True
        rows[section].append(dict(skipped=f"budget of {args.budget:.0f} s spent"))
        return False

    rng = np.random.default_rng(0)
    graphs = [to_neural_graph(random_wildpark(rng)) for _ in range(size["graphs"])]
    for name in TRAIN_MODELS:
        for amp in ("off", args.amp):
            if not budget_left("train"):
                break
            row = measure_train(name, graphs, size["batch"], size["steps"], device, False if amp == "off" else amp)
            rows["train"].append(dict(row, amp=amp))
    del graphs

    big = to_neural_graph(size["net"]())
    for name in FORWARD_MODELS:
        for amp in ("off", args.amp):
            if not budget_left("forward"):
                break
            try:
                row = measure_forward(name, big, device, False if amp == "off" else amp)
            except torch.cuda.OutOfMemoryError as e:  # a row, not the end of the run
                row = dict(model=name, error=f"out of memory: {str(e).splitlines()[0]}")
            rows["forward"].append(dict(row, amp=amp))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    del big

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NEURALGRAPH_HOME=os.environ.get("NEURALGRAPH_HOME", os.path.join(tmp, "home")))
        for amp in ("off", args.amp):
            attempts = ("first (builds the zoo)", "second (cached data)")
            if args.dry:  # the smoke run times each variant once: the first builds the zoo, the second reuses it
                attempts = attempts[:1] if amp == "off" else attempts[1:]
            for attempt in attempts:
                if not budget_left("main"):
                    break
                out = os.path.join(tmp, f"results-{amp}-{len(rows['main'])}")
                cmd = _main_command(device.type, amp, epochs, size["quick"], env["NEURALGRAPH_HOME"], out)
                t0 = time.perf_counter()
                remaining = max(30.0, args.budget + 60 - (time.perf_counter() - t_start))
                try:
                    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=remaining)
                    ok = res.returncode == 0
                    note = "" if ok else (res.stderr.strip().splitlines() or ["failed"])[-1]
                except subprocess.TimeoutExpired:
                    ok, note = False, f"timed out after {remaining:.0f} s"
                row = dict(command=" ".join(cmd[1:4] + cmd[4:]), amp=amp, run=attempt, wall_s=time.perf_counter() - t0,
                           ok=ok)
                if ok:
                    summary = json.loads(next(_files(out, "summary.json")).read())
                    row["val_kendall_tau"] = summary["summary"]["val"]["kendall_tau"]["mean"]
                else:
                    row["error"] = note
                rows["main"].append(row)
    info["total_s"] = time.perf_counter() - t_start
    return dict(info=info, **rows)


def _files(root: str, name: str):
    for d, _, files in os.walk(root):
        if name in files:
            yield open(os.path.join(d, name))


def report(res: dict, size_name: str) -> str:
    info = res["info"]
    parts = [f"GPU check on {info['device']} (torch {info['torch']}, AMP = {info['amp']} autocast), "
             f"{info['total_s']:.0f} s in all"]
    parts.append("\nTraining step, Wild Park-size graphs (graphs/s; peak = CUDA max allocated, or CPU peak RSS)")
    parts.append(_table(_rows(res["train"]), [("model", "model", "<12"), ("amp", "amp", "<4"),
                                              ("batch", "batch_size", ">5"), ("step ms", "step_ms", ">9.1f"),
                                              ("graphs/s", "graphs_per_s", ">9.1f"), ("peak MB", "peak_mb", ">8.0f")]))
    parts.append(f"\nForward pass on the neural graph of a {size_name} (no grad)")
    parts.append(_table(_rows(res["forward"]), [("model", "model", "<12"), ("amp", "amp", "<4"),
                                                ("nodes", "nodes", ">8d"), ("edges", "edges", ">10d"),
                                                ("forward s", "forward_s", ">9.3f"), ("peak MB", "peak_mb", ">8.0f")]))
    parts.append("\nMain command wall time")
    parts.append(_table(_rows(res["main"]), [("amp", "amp", "<4"), ("run", "run", "<22"), ("wall s", "wall_s", ">7.1f"),
                                             ("val tau", "val_kendall_tau", ">7.3f")]))
    if res["main"]:
        parts.append(f"command: {res['main'][0].get('command', '')}")
    return "\n".join(parts)


def _rows(rows: list[dict]) -> list[dict]:
    return [r if "skipped" not in r else dict(r, error=r["skipped"]) for r in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry", action="store_true", help="CPU smoke run at toy sizes (no CUDA needed)")
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16"], help="the AMP side of each comparison")
    p.add_argument("--main-epochs", type=int, default=5, help="epochs of the main command (CUDA run)")
    p.add_argument("--budget", type=float, default=540.0, help="seconds after which no new section starts")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print("benchmarks.perf.gpu needs a CUDA device and none is available here; nothing was measured. "
              "Run it on a CUDA machine, or pass --dry for the CPU smoke run.", file=sys.stderr)
        return 2
    if args.dry and args.amp == "fp16":
        p.error("--dry runs on CPU: use --amp bf16")
    res = run(args)
    print(report(res, _sizes(args.dry)["net_name"]))
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2, default=str))
        print(f"\nresults in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
