"""Parameter counts (beside the papers') and CPU cost of the named paper configurations (``--config NAME``).

    python -m benchmarks.perf.paper_configs [--time] [--steps 2] [--json PATH] [--threads 1]
        [--full-batch] [--memory] [--set SECTION.KEY=VALUE ...]

Each configuration is resolved as the runner resolves it (``benchmarks.run.resolve_config``) and built with the
sizes its task supplies for the embedded zoos' members (F_node = 4, F_edge from the task's ``max_kernel``, 10 output
neurons; weight-space models: the Small-CNN-Zoo-shaped Arch1 signature). ``--time`` measures one training step
(forward, loss, backward, Adam) on random members of the task's family at the configuration's batch size (capped
at 8: the cost per member is what matters) and prints the seconds per member and per epoch of a 1,000-run zoo
(5 checkpoints per run, 80 % train). ``--full-batch`` times the configuration's own batch size instead (what a
training run holds in memory at once). ``--memory`` runs each configuration in a fresh process and reports its
peak resident memory (``ru_maxrss``: the model, the members and the training step; with ``--time``), or that the
kernel killed it. ``--set`` overrides options as the runner's ``--set`` does (to try sizes before naming them).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

import numpy as np
import torch
import yaml
from torch_geometric.data import Batch

from benchmarks.perf.nets import small_cnn_zoo
from benchmarks.run import PAPER_CONFIGS, paper_configs, resolve_config
from neuralgraph import to_neural_graph
from neuralgraph.convert import get_plan
from neuralgraph.data import WeightSpaceBatch
from neuralgraph.data.arch import build_model
from neuralgraph.io import atomic_write_text
from neuralgraph.models import create_model, model_arguments
from neuralgraph.zoo.presets import sample_wildpark

#: trainable parameters the papers state for a configuration (Neural Graphs appendix D.2)
PAPER_PARAMS = {"ng-gnn-wildpark": 369_025, "statnn-wildpark": 1_087_001, "ng-gnn-cifar10gs": 5_587_969,
                "ng-t-cifar10gs": 1_807_873}


def members(task: str, n: int, rng: np.random.Generator) -> list[torch.nn.Module]:
    """Random networks of the task's family: Wild Park CNNs (8x8 digits), or Small-CNN-Zoo-shaped CNNs."""
    if task == "wildpark":
        return [build_model(sample_wildpark(rng, 1, 10, (8, 8))) for _ in range(n)]
    torch.manual_seed(int(rng.integers(1 << 30)))
    return [small_cnn_zoo() for _ in range(n)]


def build(name: str, overrides: list[str] | None = None):
    """``(task, model name, model, resolved config, kernel)`` of a named configuration (``overrides``: ``--set``)."""
    with open(os.path.join(PAPER_CONFIGS, f"{name}.yaml")) as f:
        meant = yaml.safe_load(f)["for"]
    task, model_name = meant["task"], meant["model"]
    cfg = resolve_config(task, model_name, name, False, list(overrides or []))
    kernel = tuple(cfg["task"].get("max_kernel", (7, 7)))
    net = small_cnn_zoo()
    sizes = {"out_dim": 1, "node_in": 4, "edge_in": int(np.prod(kernel)), "num_outputs": 10,
             "weight_shapes": get_plan(net).weight_space(net).signature}
    accepted = model_arguments(model_name)
    torch.manual_seed(0)
    model = create_model(model_name, **{k: v for k, v in sizes.items() if k in accepted}, **cfg["model"])
    return task, model_name, model, cfg, kernel


def step_seconds(task: str, model, cfg, kernel, steps: int, full_batch: bool = False) -> tuple[float, int]:
    """Median seconds of one training step and the batch size it used (the configuration's, capped at 8 unless
    ``full_batch``)."""
    batch = int(cfg["train"].get("batch_size", 32))
    batch = batch if full_batch else min(batch, 8)
    nets = members(task, batch, np.random.default_rng(0))
    if model.input_kind == "graph":
        graphs = [to_neural_graph(m, max_kernel=kernel) for m in nets]
        data = Batch.from_data_list(graphs)
        if hasattr(model, "fit_statistics"):
            model.fit_statistics(graphs)
    else:
        ws = [get_plan(m).weight_space(m) for m in nets]
        data = WeightSpaceBatch.collate(ws)
        if hasattr(model, "fit_statistics"):
            model.fit_statistics(ws)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    y = torch.rand(batch)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = model(data).view(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, y)
        if hasattr(model, "regularizer"):
            loss = loss + model.regularizer(data, out.view(-1, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), batch


def measure(name: str, timed: bool, steps: int, full_batch: bool, threads: int, overrides: list[str]) -> dict:
    """One table row: parameters, and with ``timed`` the cost of a training step; ``peak_gb``: this process's peak
    resident memory so far (meaningful in a fresh process, ``--memory``)."""
    torch.set_num_threads(threads)
    task, model_name, model, cfg, kernel = build(name, overrides)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    row = {"config": name, "task": task, "model": model_name, "params": n, "paper": PAPER_PARAMS.get(name)}
    if overrides:
        row["set"] = list(overrides)
    if timed:
        sec, batch = step_seconds(task, model, cfg, kernel, steps, full_batch)
        row.update(step_s=sec, batch=batch, per_member_s=sec / batch, epoch_min=4000 * sec / batch / 60)
    row["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9   # Linux: KiB
    return row


def measure_apart(name: str, *args) -> dict:
    """:func:`measure` in a fresh process: its peak memory is this configuration's alone; ``out_of_memory``
    says if the kernel ended it or an allocation failed (``ulimit -v``)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(measure, name, *args).result()
        except BrokenProcessPool:
            return {"config": name, "out_of_memory": "killed"}
        except RuntimeError as e:
            if "not enough memory" not in str(e):
                raise
            return {"config": name, "out_of_memory": "allocation failed"}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", action="store_true", help="also time training steps on CPU")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="configuration names (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full-batch", action="store_true",
                    help="time the configuration's own batch size (default: capped at 8)")
    ap.add_argument("--memory", action="store_true",
                    help="each configuration in a fresh process; report its peak resident memory")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                    help="override options of every listed configuration, as the runner's --set")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print("| configuration | task | model | parameters | paper | s / step (batch) | s / member | epoch, 4,000 members |"
          + (" peak memory |" if args.memory else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if args.memory else ""))
    for name in args.only or paper_configs():
        row = (measure_apart if args.memory else measure)(name, args.time, args.steps, args.full_batch,
                                                          args.threads, args.set)
        rows.append(row)
        if row.get("out_of_memory"):
            print(f"| {name} | | | | | out of memory: {row['out_of_memory']} | | | |", flush=True)
            continue
        paper = f"{row['paper']:,}" if row["paper"] else ""
        timing = (f"{row['step_s']:.2f} ({row['batch']}) | {row['per_member_s']:.3f} | {row['epoch_min']:.0f} min"
                  if args.time else " | | ")
        memory = f" {row['peak_gb']:.1f} GB |" if args.memory else ""
        print(f"| {name} | {row['task']} | {row['model']} | {row['params']:,} | {paper} | {timing} |{memory}",
              flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
