"""The one train / evaluate loop shared by every model and task.

Model selection and early stopping use the validation split only; test metrics are those of the
checkpoint with the best validation metric. Training is deterministic on CPU for a seed (the data order
of epoch ``k`` depends only on ``(seed, k)``), and resumable: the state after every epoch is written
atomically to ``<out>/checkpoint.pt`` (tensors and plain values only, loaded with ``weights_only=True``).

Scale (see ``docs/scale.md``):

* ``device``: the model, the batches and every per-batch quantity stay on it; the inner training steps
  never wait for the device (the epoch's mean loss is one reduction at its end), and on CUDA batches are
  collated into pinned memory and copied asynchronously.
* ``amp``: ``"bf16"`` autocasts forward passes and losses to bfloat16 (CPU and CUDA); ``"fp16"`` autocasts to
  float16 with a gradient scaler (CUDA only). Parameters, optimiser state and gradients stay float32.
* Data-parallel: when :mod:`torch.distributed` is initialised (``torchrun``), the model is wrapped in
  :class:`~torch.nn.parallel.DistributedDataParallel`, every rank trains on its ``batch_size / world_size``
  share of each global batch (a :class:`~torch.utils.data.DistributedSampler` whose order is the
  single-process order), evaluation splits are sharded and their records gathered, and rank 0 alone writes
  checkpoints and results. ``batch_size`` is the *global* batch, so a run on N processes follows the same
  optimisation trajectory as a one-process run (up to floating-point summation order).

A model without trainable parameters (a hand-written optimizer of ``l2o``) is not trained: it is evaluated.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from neuralgraph.data.formats.safe import safe_torch_load
from neuralgraph.io import DataFileError, atomic_write, atomic_write_text, make_dirs
from neuralgraph.tasks.base import Task

#: ``TrainConfig.amp`` values: autocast dtype, or None for float32
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    epochs: int = 30  # maximum number of passes over the training split
    batch_size: int = 32  # networks per batch
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max gradient norm (0: off)
    patience: int = 10  # stop after this many epochs without a better validation metric
    max_steps: int = 0  # stop after this many optimiser steps in total (0: no limit)
    seed: int = 0  # seeds init, data order and dropout
    device: str = "cpu"  # "cpu" or "cuda" (under torchrun: this rank's GPU)
    amp: str = "off"  # mixed precision: "off", "bf16" (CPU and CUDA) or "fp16" (CUDA, with a gradient scaler)


#: members of a split whose :attr:`Task.example_fields` (e.g. images) are kept in ``predictions.json``
NUM_EXAMPLES = 8


def world() -> tuple[int, int]:
    """``(world_size, rank)`` of the initialised :mod:`torch.distributed` group, ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def autocast(amp: str, device: torch.device):
    """The autocast context of a ``TrainConfig.amp`` value on ``device`` (a no-op for ``"off"``)."""
    dtype = AMP_DTYPES[amp]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str, input_kind: str, batch_size: int,
             device: torch.device, amp: str = "off") -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics of ``model`` on one split, and the task's per-member records (:meth:`Task.predict`)
    concatenated over the split (float records as float32).

    Under :mod:`torch.distributed`, rank ``r`` of ``W`` predicts members ``r, r + W, ...`` and the records
    are gathered (every rank must call this); every rank returns the records of the whole split in order."""
    W, rank = world()
    model.eval()
    n = len(task.splits[split])
    parts: dict[str, list[Tensor]] = {}
    loader = task.loader(split, input_kind, batch_size, sampler=range(rank, n, W), pin_memory=device.type == "cuda")
    for batch in loader:
        batch = batch.to(device, non_blocking=True)
        with autocast(amp, device):
            out = task.predict(model, batch)
        for key, value in out.items():
            parts.setdefault(key, []).append(value.detach())
    # one copy to the host per field and split, not one per batch
    records = {key: _host(torch.cat(values)) for key, values in parts.items()}
    if W > 1:
        shards: list[Any] = [None] * W
        dist.all_gather_object(shards, records)
        ref = next((shard for shard in shards if shard), {})  # a rank with no members has no records
        records = {}
        for key in ref:
            first = ref[key]
            full = np.empty((n, *first.shape[1:]), dtype=first.dtype)
            for r, shard in enumerate(shards):
                if shard:
                    full[r::W] = shard[key]
            records[key] = full
    return task.metrics(records), records


def _host(t: Tensor) -> np.ndarray:
    return (t.float() if t.is_floating_point() else t).cpu().numpy()


class _DistributedModel(DistributedDataParallel):
    """:class:`DistributedDataParallel` that reads the wrapped model's other attributes (a task's loss calls
    ``model.regularizer``, reads ``model.gamma``, ...) while forward passes go through DDP."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


def _saved_records(task: Task, records: dict[str, np.ndarray]) -> dict[str, list]:
    """Records as JSON lists; example fields for the first :data:`NUM_EXAMPLES` members only."""
    return {k: (v[:NUM_EXAMPLES] if k in task.example_fields else v).tolist() for k, v in records.items()}


class ConfigurationChangedError(ValueError):
    """A results directory holds a checkpoint written by another configuration (the message names each changed
    option, old -> new, and the fix)."""


def _diff(a: Any, b: Any, prefix: str = "", defaults: Any = None) -> list[str]:
    """``key: old -> new`` for every option that differs; an option absent on one side takes its value in
    ``defaults`` (the same nesting) when that has it."""
    if isinstance(a, dict) and isinstance(b, dict):
        d = defaults if isinstance(defaults, dict) else {}
        return [line for k in sorted(set(a) | set(b))
                for line in _diff(a.get(k, d.get(k)), b.get(k, d.get(k)), f"{prefix}{k}.", d.get(k))]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def fit(model: nn.Module, task: Task, cfg: TrainConfig, out_dir: str | None = None,
        progress: bool = True, run_config: dict[str, Any] | None = None,
        run_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``task`` and return a results dict (also written to ``out_dir/metrics.json``).

    With ``out_dir``, training resumes from ``out_dir/checkpoint.pt`` when it exists, provided it was
    written by the same configuration (``cfg`` plus ``run_config``, e.g. the resolved task and model
    options; only ``epochs`` and ``max_steps`` may grow); a different configuration is an error
    (:class:`ConfigurationChangedError`) rather than a silently mixed result. ``run_defaults`` (nested as
    ``run_config``) holds the values options take when a configuration does not set them: an option set to
    its default equals the option left out, and a refusal shows the default (``model.probes: 0 -> 16``). The number of processes is not part of the configuration: a run
    interrupted on N processes may resume on M (same global batch, same trajectory).

    Under :mod:`torch.distributed` every rank calls ``fit`` with the same arguments (see the module
    docstring); rank 0 writes the checkpoint and the results, every rank returns them."""
    W, rank = world()
    if cfg.amp not in AMP_DTYPES:
        raise ValueError(f"Could not resolve amp {cfg.amp!r} among choices {list(AMP_DTYPES)}")
    device = torch.device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: the rank's GPU (set by the runner)
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device (float16 autocast with a gradient scaler); on CPU use "
                         "amp='bf16'")
    if cfg.batch_size % W:
        raise ValueError(f"train.batch_size={cfg.batch_size} is the global batch and must be divisible by the "
                         f"world size {W} (each of the {W} processes takes an equal share)")
    rank_batch = cfg.batch_size // W
    writer = rank == 0
    input_kind = model.input_kind
    torch.manual_seed(cfg.seed)  # dropout and any other randomness of training (data order: per epoch)
    net = task.wrap_model(model)
    net.to(device)
    if hasattr(net, "fit_statistics"):  # data-fitted statistics (degrees, standardisation): train split only
        train = task.splits["train"]
        net.fit_statistics(train.graphs() if input_kind == "graph" else train.weights())
    trainable = [p for p in net.parameters() if p.requires_grad]
    # a module without trainable parameters (a hand-written optimizer of l2o) is evaluated as it is
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay) if trainable else None
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    better = (lambda a, b: a > b) if task.select_mode == "max" else (lambda a, b: a < b)
    state = {"epoch": 0, "step": 0, "best": None, "best_epoch": -1, "best_state": None, "history": [],
             "bad_epochs": 0, "train_seconds": 0.0}
    ckpt = os.path.join(out_dir, "checkpoint.pt") if out_dir else None
    if out_dir and writer:
        make_dirs(out_dir)
    # everything but the stopping budget: a run may be resumed with more epochs / steps
    train_opts = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("epochs", "max_steps")}
    fingerprint = json.loads(json.dumps({"train": train_opts, **(run_config or {})}))
    if ckpt and os.path.exists(ckpt):
        fix = "delete it to train this seed from scratch"
        saved = safe_torch_load(ckpt, hint=f"If you did not write it, {fix}.", what="a results checkpoint", fix=fix)
        if not (isinstance(saved, dict) and {"model", "optimizer", "state", "rng", "config"} <= saved.keys()):
            raise DataFileError(f"{ckpt!r} is not a results checkpoint (expected a dict with model, optimizer, "
                                f"state, rng and config); {fix}")
        changed = _diff(saved.get("config"), fingerprint, defaults=json.loads(json.dumps(run_defaults or {})))
        if changed:
            raise ConfigurationChangedError(f"{ckpt} was written by another configuration ({'; '.join(changed)}); resume with "
                             "the same options, or write to another directory (--out / --tag) or delete it")
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        state = saved["state"]
        torch.set_rng_state(saved["rng"])
    # the module the training steps call: DDP averages gradients over ranks during backward
    train_model = _DistributedModel(net, device_ids=[device.index] if device.type == "cuda" else None) if W > 1 \
        else net
    # the data order of epoch k is a function of (seed, k) alone; rank r takes every W-th member of it
    sampler = DistributedSampler(task.splits["train"], num_replicas=W, rank=rank, shuffle=True,
                                 seed=cfg.seed * 100_003)
    pin = device.type == "cuda"
    done = opt is None or state["epoch"] >= cfg.epochs or state["bad_epochs"] >= cfg.patience or bool(
        cfg.max_steps and state["step"] >= cfg.max_steps)
    if opt is None:
        state["best_state"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    bar = tqdm(total=cfg.epochs, initial=state["epoch"], desc=f"{task.name}", disable=not (progress and writer),
               leave=False)
    while not done:
        epoch = state["epoch"]
        train_model.train()
        sampler.set_epoch(epoch)
        t0, losses = time.perf_counter(), []
        for batch in task.loader("train", input_kind, rank_batch, sampler=sampler, pin_memory=pin):
            batch = batch.to(device, non_blocking=True)
            with autocast(cfg.amp, device):
                loss = task.loss(train_model, batch)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            losses.append(loss.detach().float())  # stays on the device: no host sync per step
            state["step"] += 1
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                break
        train_loss = torch.stack(losses).mean()
        if W > 1:  # every rank ran the same number of steps: the mean of the ranks' means
            dist.all_reduce(train_loss)
            train_loss = train_loss / W
        state["train_seconds"] += time.perf_counter() - t0
        val, _ = evaluate(net, task, "val", input_kind, rank_batch, device, cfg.amp)
        score = val[task.select_metric]
        if not math.isfinite(score):  # a diverged epoch is never the best one
            score = -math.inf if task.select_mode == "max" else math.inf
        state["history"].append({"epoch": epoch, "train_loss": float(train_loss),
                                 **{f"val_{k}": v for k, v in val.items()}})
        if state["best"] is None or better(score, state["best"]):
            state.update(best=score, best_epoch=epoch, bad_epochs=0,
                         best_state=copy.deepcopy({k: v.detach().cpu() for k, v in net.state_dict().items()}))
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        bar.update(1)
        bar.set_postfix(loss=f"{state['history'][-1]['train_loss']:.4f}", val=f"{score:.3f}")
        if ckpt and writer:
            payload = {"model": net.state_dict(), "optimizer": opt.state_dict(), "state": state,
                       "rng": torch.get_rng_state(), "config": fingerprint}
            if scaler.is_enabled():
                payload["scaler"] = scaler.state_dict()
            atomic_write(ckpt, lambda f: torch.save(payload, f))
        done = state["epoch"] >= cfg.epochs or state["bad_epochs"] >= cfg.patience or bool(
            cfg.max_steps and state["step"] >= cfg.max_steps)
    bar.close()
    net.load_state_dict(state["best_state"])
    results: dict[str, Any] = {
        "task": task.name, "seed": cfg.seed, "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
        "steps": state["step"], "train_seconds": state["train_seconds"],
        "num_params": sum(p.numel() for p in net.parameters()),
        "val": evaluate(net, task, "val", input_kind, rank_batch, device, cfg.amp)[0],
        "history": state["history"], "config": dataclasses.asdict(cfg),
        "world_size": W, "batch_size_per_rank": rank_batch, "batch_size_global": cfg.batch_size,
    }
    predictions = {}
    for split in task.eval_splits():
        metrics, records = evaluate(net, task, split, input_kind, rank_batch, device, cfg.amp)
        results[split] = metrics
        predictions[split] = _saved_records(task, records)
    if out_dir and writer:
        atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(results, indent=2))
        atomic_write_text(os.path.join(out_dir, "predictions.json"), json.dumps(predictions))
    results["predictions"] = predictions
    return results
