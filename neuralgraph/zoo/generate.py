"""Generate a model zoo offline.

    python -m neuralgraph.zoo.generate --preset wildpark-digits --runs 200 --out zoos/wp \\
        [--workers K] [--shard I/N] [--seed S] [--device cpu|cuda]
    torchrun --nproc_per_node=N -m neuralgraph.zoo.generate ...      (rank r of W is shard r/W)

Runs are trained in groups of one architecture (vectorised, see :mod:`neuralgraph.zoo.train`) and
written as they finish. The command is idempotent and resumable: killing it at any moment (even
with SIGKILL) and re-running the same command trains exactly the runs that are missing; worker
processes exit with the main process. Writers hold the zoo's lock while writing, so two commands on
one directory never delete each other's files. Shards ``I/N`` take the groups ``g`` with
``g % N == I``, so shards write disjoint run ids and may share one output directory (or be merged
later by copying ``members/``). Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set, no ``--shard``) rank ``r``
of ``W`` is shard ``r/W``, so one command spreads a zoo over the processes of many machines (the directory
on a file system they share, or one directory per machine merged by copying ``members/``). The only file
shards share, ``zoo.json``, is written once under the lock and checked by every other shard; each member
has exactly one writer. A killed shard is resumed by rerunning it (or the whole command).
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from neuralgraph.data.formats.native import (completed_runs, init_zoo_dir, remove_stale_temps,
                                             write_member)
from neuralgraph.io import StorageError
from neuralgraph.zoo.presets import get_preset, list_presets, run_id


@dataclass
class GenerateReport:
    out: Path
    trained: int            # runs trained and written by this call
    skipped: int            # runs of this shard that were already complete
    total: int              # runs of this shard
    seconds: float
    cpu_seconds: float

    @property
    def runs_per_core_minute(self) -> float:
        return 60.0 * self.trained / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")


def train_and_write_group(preset_name: str, seed: int, runs: int, group: int, out: str,
                          epochs: int | None = None, device: str = "cpu") -> int:
    """Train one group on ``device`` and write its missing members; returns how many members were written."""
    preset = get_preset(preset_name).with_epochs(epochs)
    idx = preset.group_runs(runs, group)
    done = completed_runs(out)
    missing = [r for r in idx if run_id(r) not in done]
    if not missing:
        return 0
    remove_stale_temps(out, [run_id(r) for r in missing])
    written = 0
    for run in preset.train_group(seed, runs, group, missing, device):
        write_member(out, run_id(run.index), run.params, run.record, run.extras)
        written += 1
    return written


def _die_with_parent(parent: int) -> None:
    """Pool initializer: exit as soon as the main process is gone (even killed by SIGKILL), so no orphaned
    worker keeps training and writing into the zoo beside the next run."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def _worker(args) -> tuple[int, int]:
    preset_name, seed, runs, group, out, threads, epochs, device = args
    import torch

    torch.set_num_threads(threads)
    return group, train_and_write_group(preset_name, seed, runs, group, out, epochs, device)


def parse_shard(text: str | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """``(I, N)`` from ``--shard I/N``; without it, torchrun's ``(RANK, WORLD_SIZE)``, else ``(0, 1)``."""
    env = os.environ if env is None else env
    launched = "RANK" in env and "WORLD_SIZE" in env
    if text is None:
        return (int(env["RANK"]), int(env["WORLD_SIZE"])) if launched else (0, 1)
    if launched and int(env["WORLD_SIZE"]) > 1:
        raise ValueError(f"--shard {text} under torchrun (WORLD_SIZE={env['WORLD_SIZE']}): torchrun already gives "
                         "each rank its shard; drop --shard (or run without torchrun)")
    try:
        i, n = (int(t) for t in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text}: need 0 <= I < N")
    return i, n


def generate(preset: str, runs: int, out: str | os.PathLike, workers: int = 1,
             shard: tuple[int, int] = (0, 1), seed: int = 0, progress: bool = True,
             threads: int | None = None, epochs: int | None = None, device: str = "cpu") -> GenerateReport:
    """Generate (or complete) a zoo; see the module docstring.

    Args:
        preset: a preset name (:func:`neuralgraph.zoo.presets.list_presets`).
        runs: total runs of the zoo (all shards together).
        out: output directory (created).
        workers: processes training groups in parallel.
        shard: ``(I, N)``: this process handles groups ``g % N == I``.
        seed: zoo seed; runs are a pure function of (preset, seed, run index).
        progress: show a tqdm progress bar.
        threads: torch threads per worker (default: the preset's ``worker_threads``, else cores / workers).
        epochs: override the preset's number of epochs (recorded in ``zoo.json``; for quick zoos).
        device: where groups are trained (``"cpu"``, ``"cuda"``, ``"cuda:K"``); the runs do not depend on
            it beyond floating-point rounding.
    """
    p = get_preset(preset).with_epochs(epochs)
    if runs < 1:
        raise ValueError(f"--runs must be positive, got {runs}")
    if p.max_runs is not None and runs > p.max_runs:
        raise ValueError(f"preset {p.name!r} has at most {p.max_runs} runs (one per image of its image set), "
                         f"got --runs {runs}")
    i, n = shard
    out = Path(out)
    init_zoo_dir(out, {"preset": p.name, "seed": seed, "description": p.description, "config": p.config()})
    n_groups = math.ceil(runs / p.group_size)
    groups = [g for g in range(n_groups) if g % n == i]
    mine = [r for g in groups for r in p.group_runs(runs, g)]
    done = completed_runs(out)
    todo = [g for g in groups if any(run_id(r) not in done for r in p.group_runs(runs, g))]
    skipped = sum(run_id(r) in done for r in mine)
    threads = threads or p.worker_threads or max(1, (os.cpu_count() or 1) // max(1, workers))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(mine), initial=skipped, desc=f"{p.name} -> {out}", unit="run", disable=not progress)
    t0, c0 = time.perf_counter(), time.process_time()
    child_cpu0 = _children_cpu()
    trained = 0
    jobs = [(p.name, seed, runs, g, str(out), threads, epochs, device) for g in todo]
    try:
        if workers <= 1:
            import torch

            old = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for job in jobs:
                    _, w = _worker(job)
                    trained += w
                    bar.update(w)
            finally:
                torch.set_num_threads(old)
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
                for _, w in pool.imap_unordered(_worker, jobs):
                    trained += w
                    bar.update(w)
    finally:
        bar.close()
    cpu = (time.process_time() - c0) + (_children_cpu() - child_cpu0)
    return GenerateReport(out, trained, skipped, len(mine), time.perf_counter() - t0, cpu)


def _device(text: str | None) -> str:
    """The training device of ``--device``: ``cuda`` under torchrun means the rank's ``LOCAL_RANK`` GPU."""
    if text is None or text == "cpu":
        return "cpu"
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text!r} is not a device; use cpu, cuda or cuda:K") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: no CUDA device is available here; use --device cpu")
        if device.index is None and "LOCAL_RANK" in os.environ:
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return str(device)


def _children_cpu() -> float:
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime
    except Exception:  # pragma: no cover - non-POSIX
        return 0.0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m neuralgraph.zoo.generate",
                                 description="Train a zoo of small networks offline (resumable).")
    ap.add_argument("--preset", required=True, help=f"one of: {', '.join(list_presets())}")
    ap.add_argument("--runs", type=int, required=True, help="total number of runs in the zoo")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    ap.add_argument("--shard", default=None,
                    help="I/N: train only shard I of N (default: torchrun's RANK/WORLD_SIZE, else 0/1)")
    ap.add_argument("--seed", type=int, default=0, help="zoo seed (default 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    ap.add_argument("--epochs", type=int, default=None,
                    help="override the preset's epochs (quick zoos; INR presets: Adam steps)")
    ap.add_argument("--device", default=None,
                    help="train on this device, e.g. cuda or cuda:1 (default: cpu; under torchrun with cuda: the "
                         "rank's local GPU)")
    ap.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    args = ap.parse_args(argv)
    try:
        shard = parse_shard(args.shard)
        device = _device(args.device)
        rep = generate(args.preset, args.runs, args.out, workers=args.workers, shard=shard, seed=args.seed,
                       progress=not args.no_progress, threads=args.threads, epochs=args.epochs, device=device)
    except (ValueError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rate = f", {rep.runs_per_core_minute:.1f} runs per core-minute" if rep.trained else ""
    print(f"{rep.out}: {rep.skipped + rep.trained}/{rep.total} runs of shard {shard[0]}/{shard[1]} complete "
          f"({rep.trained} trained in {rep.seconds:.1f}s{rate})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
