"""The one train / evaluate loop shared by every model and task.

Model selection and early stopping use the validation split only; test metrics are those of the
checkpoint with the best validation metric. Training is deterministic on CPU for a seed (the data order
of epoch ``k`` depends only on ``(seed, k)``), and resumable: the state after every epoch is written
atomically to ``<out>/checkpoint.pt`` (tensors and plain values only, loaded with ``weights_only=True``).
A model without trainable parameters (a hand-written optimizer of ``l2o``) is not trained: it is evaluated.
"""
from __future__ import annotations

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
from torch import Tensor, nn
from tqdm.auto import tqdm

from neuralgraph.data.formats.safe import safe_torch_load
from neuralgraph.io import DataFileError, atomic_write, atomic_write_text, make_dirs
from neuralgraph.tasks.base import Task


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
    device: str = "cpu"  # "cpu" or "cuda"


#: members of a split whose :attr:`Task.example_fields` (e.g. images) are kept in ``predictions.json``
NUM_EXAMPLES = 8


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str, input_kind: str, batch_size: int,
             device: torch.device) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics of ``model`` on one split, and the task's per-member records (:meth:`Task.predict`)
    concatenated over the split."""
    model.eval()
    parts: dict[str, list[Tensor]] = {}
    for batch in task.loader(split, input_kind, batch_size):
        batch = batch.to(device)
        for key, value in task.predict(model, batch).items():
            parts.setdefault(key, []).append(value.detach().cpu())
    records = {key: torch.cat(values).numpy() for key, values in parts.items()}
    return task.metrics(records), records


def _saved_records(task: Task, records: dict[str, np.ndarray]) -> dict[str, list]:
    """Records as JSON lists; example fields for the first :data:`NUM_EXAMPLES` members only."""
    return {k: (v[:NUM_EXAMPLES] if k in task.example_fields else v).tolist() for k, v in records.items()}


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def fit(model: nn.Module, task: Task, cfg: TrainConfig, out_dir: str | None = None,
        progress: bool = True, run_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``task`` and return a results dict (also written to ``out_dir/metrics.json``).

    With ``out_dir``, training resumes from ``out_dir/checkpoint.pt`` when it exists, provided it was
    written by the same configuration (``cfg`` plus ``run_config``, e.g. the resolved task and model
    options; only ``epochs`` and ``max_steps`` may grow); a different configuration is an error rather
    than a silently mixed result."""
    device = torch.device(cfg.device)
    input_kind = model.input_kind
    torch.manual_seed(cfg.seed)  # dropout and any other randomness of training (data order: per epoch)
    model = task.wrap_model(model)
    model.to(device)
    if hasattr(model, "fit_degree"):  # models with data-dependent statistics fit them on train only
        model.fit_degree(task.splits["train"].graphs())
    if hasattr(model, "fit_normalization"):
        model.fit_normalization(task.splits["train"].weights())
    trainable = [p for p in model.parameters() if p.requires_grad]
    # a module without trainable parameters (a hand-written optimizer of l2o) is evaluated as it is
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay) if trainable else None
    better = (lambda a, b: a > b) if task.select_mode == "max" else (lambda a, b: a < b)
    state = {"epoch": 0, "step": 0, "best": None, "best_epoch": -1, "best_state": None, "history": [],
             "bad_epochs": 0, "train_seconds": 0.0}
    ckpt = os.path.join(out_dir, "checkpoint.pt") if out_dir else None
    if out_dir:
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
        changed = _diff(saved.get("config"), fingerprint)
        if changed:
            raise ValueError(f"{ckpt} was written by another configuration ({'; '.join(changed)}); resume with "
                             "the same options, or write to another directory (--out / --tag) or delete it")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        state = saved["state"]
        torch.set_rng_state(saved["rng"])
    done = opt is None or state["epoch"] >= cfg.epochs or state["bad_epochs"] >= cfg.patience or bool(
        cfg.max_steps and state["step"] >= cfg.max_steps)
    if opt is None:
        state["best_state"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bar = tqdm(total=cfg.epochs, initial=state["epoch"], desc=f"{task.name}", disable=not progress,
               leave=False)
    while not done:
        epoch = state["epoch"]
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        t0, losses = time.perf_counter(), []
        for batch in task.loader("train", input_kind, cfg.batch_size, shuffle=True, generator=gen):
            batch = batch.to(device)
            loss = task.loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.detach())
            state["step"] += 1
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                break
        state["train_seconds"] += time.perf_counter() - t0
        val, _ = evaluate(model, task, "val", input_kind, cfg.batch_size, device)
        score = val[task.select_metric]
        if not math.isfinite(score):  # a diverged epoch is never the best one
            score = -math.inf if task.select_mode == "max" else math.inf
        state["history"].append({"epoch": epoch, "train_loss": float(torch.stack(losses).mean()),
                                 **{f"val_{k}": v for k, v in val.items()}})
        if state["best"] is None or better(score, state["best"]):
            state.update(best=score, best_epoch=epoch, bad_epochs=0,
                         best_state=copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        bar.update(1)
        bar.set_postfix(loss=f"{state['history'][-1]['train_loss']:.4f}", val=f"{score:.3f}")
        if ckpt:
            payload = {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state,
                       "rng": torch.get_rng_state(), "config": fingerprint}
            atomic_write(ckpt, lambda f: torch.save(payload, f))
        done = state["epoch"] >= cfg.epochs or state["bad_epochs"] >= cfg.patience or bool(
            cfg.max_steps and state["step"] >= cfg.max_steps)
    bar.close()
    model.load_state_dict(state["best_state"])
    results: dict[str, Any] = {
        "task": task.name, "seed": cfg.seed, "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
        "steps": state["step"], "train_seconds": state["train_seconds"],
        "num_params": sum(p.numel() for p in model.parameters()),
        "val": evaluate(model, task, "val", input_kind, cfg.batch_size, device)[0],
        "history": state["history"], "config": dataclasses.asdict(cfg),
    }
    predictions = {}
    for split in task.eval_splits():
        metrics, records = evaluate(model, task, split, input_kind, cfg.batch_size, device)
        results[split] = metrics
        predictions[split] = _saved_records(task, records)
    if out_dir:
        atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(results, indent=2))
        atomic_write_text(os.path.join(out_dir, "predictions.json"), json.dumps(predictions))
    results["predictions"] = predictions
    return results
