"""Speed and memory of NG-GNN and NG-T (issue 4).

Two measurements, each run in a fresh subprocess so the process peak memory belongs to it alone:

1. **Training steps on Wild-Park-size graphs**: random CNN Wild Park architectures (2-5 conv layers with
   4-32 channels, kernels 3/5/7, mixed activations, skip connections, 3 input channels, 10 classes;
   paper appendix E.1), converted with :func:`neuralgraph.to_neural_graph`. For each model and batch size:
   graphs/s of a full training step (forward, MSE loss, backward, Adam step; median over steps after
   warm-up) and peak memory.
2. **Scaling** (``--scaling``): one forward pass (no grad) of NG-GNN and sparse NG-T on the neural graph
   of a ResNet-18-shaped CNN (``benchmarks/perf/nets.py``, no torchvision). Target: < 8 GB peak on CPU.

Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process peak resident set size
(``ru_maxrss``, includes the Python interpreter, torch and the data) and its increase over the resident
size just before the measured section.

    python -m benchmarks.perf.models [--batch-sizes 8 32 128] [--models ng-gnn ng-t ng-t-sparse ng-t-wide ...]
        [--graphs 128] [--steps 10] [--scaling] [--scaling-only] [--amp] [--device cpu] [--threads N]
        [--json PATH]

The models only use the public API (``create_model``, ``fit_statistics``); ``--amp`` runs the forward pass
under ``torch.autocast`` (bfloat16 on CPU, float16 on CUDA).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.perf.nets import ResNet18
from neuralgraph.data.arch import build_model
from neuralgraph.io import atomic_write_text
from neuralgraph.zoo.presets import sample_wildpark

#: benchmark name -> (registered model, extra hyperparameters); sizes are the paper's Wild Park ones
MODELS = {
    "ng-gnn": ("ng-gnn", dict(hidden=64)),
    "ng-t": ("ng-t", dict(node_dim=16, edge_dim=8, mode="dense")),
    "ng-t-sparse": ("ng-t", dict(node_dim=16, edge_dim=8, mode="sparse")),
    # the reference implementation's default width (issue 14, "dense NG-T at wider configurations")
    "ng-t-wide": ("ng-t", dict(node_dim=64, edge_dim=32, heads=8, mode="dense")),
    # the same, before size bucketing: every graph padded to the batch's largest
    "ng-t-wide-padded": ("ng-t", dict(node_dim=64, edge_dim=32, heads=8, mode="dense", max_padding=None)),
    # the same, recomputing each layer in backward instead of storing its pair tensors
    "ng-t-wide-ckpt": ("ng-t", dict(node_dim=64, edge_dim=32, heads=8, mode="dense", checkpoint=True)),
    "ng-t-wide-sparse": ("ng-t", dict(node_dim=64, edge_dim=32, heads=8, mode="sparse")),
}


def random_wildpark(rng: np.random.Generator) -> nn.Module:
    """A random CNN Wild Park architecture (the zoo's sampler: 3 input channels, 10 classes)."""
    return build_model(sample_wildpark(rng, in_channels=3, n_classes=10, input_size=(32, 32)))


# --------------------------------------------------------------------------------------------- helpers
def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover
        return _peak_mb()


def _peak_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _autocast(device: torch.device, amp):
    """``amp``: False (float32), True (bfloat16 on CPU, float16 on CUDA) or ``"bf16"`` / ``"fp16"``."""
    if not amp:
        return nullcontext()
    if amp is True:
        dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(name: str, edge_in: int, graphs, device):
    from neuralgraph.models import create_model

    registered, hp = MODELS[name]  # num_outputs: the zoo's 10 classes, for the models' output-node readout
    model = create_model(registered, out_dim=1, node_in=4, edge_in=edge_in, num_outputs=10, **hp)
    if hasattr(model, "fit_statistics"):  # PNA degree statistics from the (training) graphs
        model.fit_statistics(graphs)
    return model.to(device)


# ----------------------------------------------------------------------------------------------- workers
def worker_train(name: str, batch_size: int, n_graphs: int, steps: int, device: torch.device, amp):
    from neuralgraph import to_neural_graph

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    graphs = [to_neural_graph(random_wildpark(rng)) for _ in range(n_graphs)]
    return measure_train(name, graphs, batch_size, steps, device, amp)


def measure_train(name: str, graphs: list, batch_size: int, steps: int, device: torch.device, amp) -> dict:
    """Median training step (forward, MSE loss, backward, Adam step) of benchmark model ``name`` on batches of
    ``graphs``, and its peak memory. ``amp``: False, True (the device's default half type) or ``"bf16"`` /
    ``"fp16"``."""
    from torch_geometric.loader import DataLoader

    torch.manual_seed(0)
    model = _build(name, graphs[0].edge_attr.size(1), graphs, device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [b.to(device) for b in DataLoader(graphs, batch_size=batch_size, shuffle=False)]
    batches = [b for b in batches if b.num_graphs == batch_size] or batches
    targets = [torch.rand(b.num_graphs, 1, device=device) for b in batches]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = _rss_mb()
    times = []
    for step in range(steps + 2):  # two warm-up steps
        b, y = batches[step % len(batches)], targets[step % len(batches)]
        _sync(device)
        t0 = time.perf_counter()
        with _autocast(device, amp):
            loss = F.mse_loss(model(b).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if step >= 2:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    out = dict(kind="train", model=name, batch_size=batches[0].num_graphs, amp=amp, device=str(device),
               step_ms=1e3 * med, graphs_per_s=batches[0].num_graphs / med,
               nodes_per_graph=sum(g.num_nodes for g in graphs) / len(graphs),
               edges_per_graph=sum(g.edge_index.size(1) for g in graphs) / len(graphs),
               params=sum(p.numel() for p in model.parameters()))
    out.update(_memory(device, base))
    return out


def worker_scaling(name: str, device: torch.device, amp):
    from neuralgraph import to_neural_graph

    torch.manual_seed(0)
    t0 = time.perf_counter()
    graph = to_neural_graph(ResNet18(num_classes=10))
    convert_s = time.perf_counter() - t0
    return dict(measure_forward(name, graph, device, amp), convert_s=convert_s)


def measure_forward(name: str, graph, device: torch.device, amp) -> dict:
    """Best of two forward passes (no grad) of benchmark model ``name`` on one large ``graph``, and the peak
    memory (``amp`` as :func:`measure_train`)."""
    model = _build(name, graph.edge_attr.size(1), [graph], device).eval()
    graph = graph.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = _rss_mb()
    times = []
    for _ in range(2):
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad(), _autocast(device, amp):
            out = model(graph)
        _sync(device)
        times.append(time.perf_counter() - t0)
    assert torch.isfinite(out.float()).all()
    res = dict(kind="scaling", model=name, amp=amp, device=str(device), nodes=graph.num_nodes,
               edges=graph.edge_index.size(1), forward_s=min(times), params=sum(p.numel() for p in model.parameters()))
    res.update(_memory(device, base))
    return res


def _memory(device: torch.device, base_mb: float) -> dict:
    if device.type == "cuda":
        return dict(peak_mb=torch.cuda.max_memory_allocated(device) / 2**20, mem="cuda max allocated")
    peak = _peak_mb()
    return dict(peak_mb=peak, peak_over_base_mb=max(0.0, peak - base_mb), mem="cpu peak rss")


# ------------------------------------------------------------------------------------------------- main
def _run_worker(job: dict, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.perf.models", "--worker", json.dumps(job),
           "--device", args.device, "--threads", str(args.threads)] + (["--amp"] if args.amp else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return dict(job, error=res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = " | ".join(h for h, _, _ in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r.get('model')} {r.get('batch_size', '')}: ERROR {r['error']}")
            continue
        lines.append(" | ".join(format(r[k], f) if k in r else "-" for _, k, f in cols))
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["ng-gnn", "ng-t", "ng-t-sparse"], choices=list(MODELS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32, 128])
    p.add_argument("--graphs", type=int, default=128, help="Wild Park architectures to convert")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per configuration")
    p.add_argument("--scaling", action="store_true", help="also run the ResNet-18 scaling forward")
    p.add_argument("--scaling-only", action="store_true")
    p.add_argument("--amp", action="store_true", help="forward under torch.autocast")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.worker:  # one measurement in this (fresh) process; result as the last stdout line
        job = json.loads(args.worker)
        if job["kind"] == "train":
            res = worker_train(job["model"], job["batch_size"], job["graphs"], job["steps"], device, args.amp)
        else:
            res = worker_scaling(job["model"], device, args.amp)
        print(json.dumps(res))
        return [res]

    results: list[dict] = []
    if not args.scaling_only:
        for name in args.models:
            for bs in args.batch_sizes:
                job = dict(kind="train", model=name, batch_size=bs, graphs=max(args.graphs, bs), steps=args.steps)
                results.append(_run_worker(job, args))
        train = [r for r in results if r.get("kind", "train") == "train"]
        print(f"Training step on Wild-Park-size graphs ({args.device}{', amp' if args.amp else ''}; "
              f"{train[0].get('nodes_per_graph', 0):.0f} nodes / {train[0].get('edges_per_graph', 0):.0f} "
              f"edges per graph on average)")
        print(_table(train, [("model", "model", "<12"), ("batch", "batch_size", ">5"),
                             ("step ms", "step_ms", ">9.1f"), ("graphs/s", "graphs_per_s", ">9.1f"),
                             ("peak MB", "peak_mb", ">8.0f"), ("+MB", "peak_over_base_mb", ">7.0f"),
                             ("params", "params", ">8d")]))
    if args.scaling or args.scaling_only:
        scal = [_run_worker(dict(kind="scaling", model=name), args) for name in ("ng-gnn", "ng-t-sparse")]
        results += scal
        print(f"\nScaling: forward on the neural graph of a ResNet-18-shaped CNN ({args.device}"
              f"{', amp' if args.amp else ''})")
        print(_table(scal, [("model", "model", "<12"), ("nodes", "nodes", ">6d"), ("edges", "edges", ">8d"),
                            ("forward s", "forward_s", ">9.2f"), ("peak MB", "peak_mb", ">8.0f"),
                            ("+MB", "peak_over_base_mb", ">7.0f"), ("convert s", "convert_s", ">9.2f")]))
    if args.json:
        atomic_write_text(args.json, json.dumps(dict(args=vars(args), torch=torch.__version__,
                                                     threads=torch.get_num_threads(), results=results), indent=2))
    return results


if __name__ == "__main__":
    main()
