"""Train and evaluate a model on a task over seeds; write metrics, a Markdown table and the task's figure
(a scatter plot for regression, a confusion matrix for classification, reconstructions for INR editing,
training curves of the optimizee for learned optimizers).

    python -m benchmarks.run --task wildpark --model ng-t [--seeds 0 1 2] [--config FILE | NAME]
                             [--set key=value ...] [--device cpu|cuda] [--amp [bf16|fp16]] [--quick]
                             [--out DIR] [--tag NAME] [--threads N] [--dist-timeout S]
    torchrun --nproc_per_node=N -m benchmarks.run ...   (data-parallel on N processes: DDP)

Configuration, later sources overriding earlier ones: ``configs/tasks/<task>.yaml``,
``configs/models/<model>.yaml`` (package data under ``neuralgraph/configs/``; a missing file is an
error), ``--config FILE`` (or a named paper configuration, ``--config ng-gnn-wildpark``: a file of
``neuralgraph/configs/paper/``, whose ``for:`` section names the task and model it is for), the task file's
``quick:`` section (with ``--quick``), then ``--set`` (``task.runs=64``, ``model.hidden=32``,
``train.epochs=5``; a nested group: ``model.encoder.act_emb=false``). Unknown keys, wrong types and values out
of range are an error listing each key, its value and what is valid, before any work is done; so are options
that cannot be combined (``benchmarks.options.CONFLICTS``). The
resolved configuration is saved beside a seed's results once the run is accepted (a rerun with a changed
configuration is refused and leaves the old files alone). Interrupted runs resume from their per-seed
checkpoint when the same command is run again.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set) the runner joins the process group (NCCL with
``--device cuda``, one GPU per local rank; gloo on CPU) and trains with DistributedDataParallel:
``train.batch_size`` is the global batch, split evenly over the ranks; rank 0 builds the data first and
alone writes results, figures and checkpoints. A rank that dies or hangs makes every rank fail within
``--dist-timeout`` seconds; rerunning the same command resumes. See ``docs/scale.md``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from dataclasses import fields
from typing import Any

import numpy as np
import torch
import yaml

import neuralgraph
from benchmarks.options import OptionError, check_config
from neuralgraph.models import create_model, list_models, model_arguments, model_class, model_task
from neuralgraph.tasks import (TASK_SUPPLIED, IncompatibleModelError, create_task, list_tasks, task_config_class,
                               task_config_fields)
from neuralgraph.io import DataFileError, StorageError, atomic_write, atomic_write_text, make_dirs
from neuralgraph.training import ConfigurationChangedError, TrainConfig, fit, world

# the default configurations ship inside the package (package data), so installed copies find them
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(neuralgraph.__file__)), "configs")
SECTIONS = ("task", "model", "train")
#: the named paper configurations (``--config NAME``)
PAPER_CONFIGS = os.path.join(CONFIGS, "paper")


def paper_configs() -> list[str]:
    """Names of the packaged paper configurations (``neuralgraph/configs/paper/<name>.yaml``)."""
    return sorted(f[:-5] for f in os.listdir(PAPER_CONFIGS) if f.endswith(".yaml"))


def _config_path(config: str) -> str:
    """A ``--config`` file, or the packaged paper configuration of that name."""
    if os.path.exists(config):
        return config
    named = os.path.join(PAPER_CONFIGS, f"{config}.yaml")
    if os.path.isfile(named):
        return named
    raise SystemExit(f"--config {config}: no such file, nor a named paper configuration; named: {paper_configs()}")


def _read_yaml(path: str) -> dict[str, Any]:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping with sections {SECTIONS}")
    return data


def _read_defaults(kind: str, name: str) -> dict[str, Any]:
    """``configs/<kind>s/<name>.yaml``; every registered task and model ships one."""
    path = os.path.join(CONFIGS, f"{kind}s", f"{name}.yaml")
    if not os.path.isfile(path):
        raise SystemExit(f"no default configuration for {kind} {name!r}: {path} is missing. Every registered "
                         f"{kind} ships neuralgraph/configs/{kind}s/{name}.yaml as package data; reinstall the "
                         "package (pip install .), or add the file for a new task / model")
    return _read_yaml(path)


def _merge(base: dict[str, Any], extra: dict[str, Any], source: str) -> None:
    for section, values in extra.items():
        if section in ("quick", "for"):
            continue
        if section not in SECTIONS:
            raise SystemExit(f"{source}: unknown section {section!r}; valid sections: {list(SECTIONS)}")
        if values is not None and not isinstance(values, dict):
            raise SystemExit(f"{source}: section {section!r} must be a mapping of option: value, got "
                             f"{type(values).__name__} {values!r}")
        _update(base.setdefault(section, {}), values or {})


def _update(base: dict[str, Any], values: dict[str, Any]) -> None:
    """``base.update(values)``, merging nested option groups (``encoder: {act_emb: false}``) key by key."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _update(base[key], value)
        else:
            base[key] = value


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def resolve_config(task: str, model: str, config_file: str | None, quick: bool,
                   overrides: list[str]) -> dict[str, dict[str, Any]]:
    """Defaults <- model defaults <- config file <- quick <- --set, validated key by key."""
    cfg: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    task_yaml = _read_defaults("task", task)
    _merge(cfg, task_yaml, f"configs/tasks/{task}.yaml")
    _merge(cfg, _read_defaults("model", model), f"configs/models/{model}.yaml")
    if config_file:
        path = _config_path(config_file)
        extra = _read_yaml(path)
        meant = extra.get("for") or {}
        if any(meant.get(k, v) != v for k, v in (("task", task), ("model", model))):
            raise SystemExit(f"--config {config_file} is for --task {meant.get('task')} --model {meant.get('model')}, "
                             f"not --task {task} --model {model}")
        _merge(cfg, extra, path)
    if quick:
        quick_cfg = task_yaml.get("quick") or {}
        if not isinstance(quick_cfg, dict):
            raise SystemExit(f"configs/tasks/{task}.yaml: section 'quick' must be a mapping of sections")
        _merge(cfg, quick_cfg, f"configs/tasks/{task}.yaml (quick)")
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in SECTIONS:
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE with SECTION in {list(SECTIONS)}")
        *group, leaf = name.split(".")  # model.encoder.act_emb=false: a key of a nested options group
        target = cfg[section]
        for g in group:
            target = target.setdefault(g, {})
            if not isinstance(target, dict):
                raise SystemExit(f"--set {item!r}: {section}.{g} is not a group of options")
        target[leaf] = _parse_value(value)
    valid = {
        "task": set(task_config_fields(task)),
        "model": set(model_arguments(model)) - set(TASK_SUPPLIED),
        "train": {f.name for f in fields(TrainConfig)} - {"seed", "device", "amp"},  # command-line flags
    }
    for section, keys in valid.items():
        bad = sorted(set(cfg[section]) - keys)
        if bad:
            raise SystemExit(f"unknown {section} option(s) {bad} for {task if section == 'task' else model}; "
                             f"valid options: {sorted(keys)}")
    try:  # types and ranges, before any zoo is built
        return check_config(cfg, task_config_class(task), model_class(model), TrainConfig)
    except OptionError as e:
        raise SystemExit(str(e)) from None


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """mean / std over seeds of every metric of every evaluated split."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    splits = [k for k in results[0] if k == "val" or k.startswith("test")]
    for split in splits:
        out[split] = {}
        for metric in results[0][split]:
            vals = np.array([r[split][metric] for r in results], dtype=np.float64)
            out[split][metric] = {"mean": float(vals.mean()), "std": float(vals.std()), "n": len(vals)}
    return out


def markdown_table(task: str, model: str, summary: dict[str, Any], seeds: list[int]) -> str:
    metrics = sorted({m for split in summary.values() for m in split})
    lines = [f"### {task} / {model} (seeds {', '.join(map(str, seeds))})", "",
             "| split | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for split, vals in summary.items():
        lines.append(f"| {split} | " + " | ".join(
            f"{vals[m]['mean']:.3f} ± {vals[m]['std']:.3f}" if m in vals else "" for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    _pyplot().close(fig)


def _figure_split(results: list[dict[str, Any]]) -> str:
    return "test" if "test" in results[0]["predictions"] else sorted(results[0]["predictions"])[0]


def scatter_plot(results: list[dict[str, Any]], path: str, title: str) -> None:
    """Predicted against true values of the test split, every seed."""
    plt = _pyplot()
    split = _figure_split(results)
    fig, ax = plt.subplots(figsize=(4, 4))
    for r in results:
        p = r["predictions"][split]
        ax.scatter(p["target"], p["pred"], s=6, alpha=0.5, label=f"seed {r['seed']}")
    lo = min(min(r["predictions"][split]["target"] + r["predictions"][split]["pred"]) for r in results)
    hi = max(max(r["predictions"][split]["target"] + r["predictions"][split]["pred"]) for r in results)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"true ({split})")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def confusion_plot(results: list[dict[str, Any]], path: str, title: str) -> None:
    """Confusion matrix of the test split, summed over seeds, rows normalised (true class)."""
    plt = _pyplot()
    split = _figure_split(results)
    pred = np.concatenate([r["predictions"][split]["pred"] for r in results]).astype(int)
    target = np.concatenate([r["predictions"][split]["target"] for r in results]).astype(int)
    k = int(max(pred.max(), target.max())) + 1
    counts = np.zeros((k, k))
    np.add.at(counts, (target, pred), 1)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=6,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel(f"predicted class ({split})")
    ax.set_ylabel("true class")
    ax.set_title(title + f"\naccuracy {np.mean(pred == target):.3f}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)


def reconstructions_plot(results: list[dict[str, Any]], path: str, title: str) -> None:
    """Original / target / edited reconstructions of the first test members (first seed)."""
    plt = _pyplot()
    split = _figure_split(results)
    rec = results[0]["predictions"][split]
    rows = [("original", np.asarray(rec["original"])), ("target", np.asarray(rec["target"])),
            ("edited", np.asarray(rec["edited"]))]
    n = len(rows[0][1])
    fig, axes = plt.subplots(3, n, figsize=(1.1 * n, 3.6), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(f"{title} (seed {results[0]['seed']}, {split})", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def training_curves(series: dict[str, list[dict[str, Any]]], path: str, title: str) -> None:
    """Training loss and test accuracy of inner runs against the step (learned optimizers): one line per
    label, the mean over its records (each with ``curve_train_loss [runs, K]``, ``curve_step [runs, n]``,
    ``curve_test_accuracy [runs, n]``), a band of one standard deviation."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    for label, recs in series.items():
        loss = np.concatenate([np.asarray(r["curve_train_loss"], dtype=float) for r in recs])   # [runs, K]
        acc = np.concatenate([np.asarray(r["curve_test_accuracy"], dtype=float) for r in recs])  # [runs, n]
        steps = np.asarray(recs[0]["curve_step"], dtype=float)[0]
        for ax, y, x in ((ax_loss, loss, np.arange(loss.shape[1])), (ax_acc, acc, steps)):
            mean, std = y.mean(0), y.std(0)
            line, = ax.plot(x, mean, lw=1.2, label=label)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="inner step", ylabel="optimizee training loss (minibatch)")
    ax_acc.set(xlabel="inner step", ylabel="optimizee test accuracy")
    ax_acc.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def curves_plot(results: list[dict[str, Any]], path: str, title: str) -> None:
    """Inner-run curves of every evaluated split, all seeds (learned optimizers)."""
    splits = sorted(results[0]["predictions"])
    training_curves({s: [r["predictions"][s] for r in results] for s in splits}, path, title)


#: the runner's figure of each kind a task names (``Task.figure``), and its file name
FIGURES = {"scatter": (scatter_plot, "scatter.png"), "confusion": (confusion_plot, "confusion.png"),
           "reconstructions": (reconstructions_plot, "reconstructions.png"), "curves": (curves_plot, "curves.png")}


def run(task_name: str, model_name: str, seeds: list[int], cfg: dict[str, dict[str, Any]], device: str,
        out: str, tag: str | None = None, progress: bool = True, amp: str = "off") -> dict[str, Any]:
    W, rank = world()
    writer = rank == 0
    task = create_task(task_name, **cfg["task"])
    try:  # what the configuration alone rules out, before any zoo is generated
        task.check_model(model_name, cfg["model"])
    except IncompatibleModelError as err:
        raise SystemExit(str(err)) from None
    if W > 1:  # rank 0 builds (generates, converts, caches) the data; the others then read its caches
        _data_barrier(rank, lambda: _sized(task, model_name, cfg))
    label = model_name + (f"+{tag}" if tag else "")
    run_dir = os.path.join(out, task.result_name if hasattr(task, "result_name") else task_name, label)
    results = []
    for seed in seeds:
        seed_dir = os.path.join(run_dir, f"seed{seed}")
        if writer:
            make_dirs(seed_dir)
        kwargs = _sized(task, model_name, cfg)  # may build the data: before seeding
        torch.manual_seed(seed)
        try:
            model = create_model(model_name, **kwargs)
        except ValueError as e:  # an option value the model refuses (e.g. probes on a task mixing architectures)
            raise SystemExit(f"error: --model {model_name} refused its options: {e}") from None
        train_cfg = TrainConfig(**cfg["train"], seed=seed, device=device, amp=amp)
        res = fit(model, task, train_cfg, out_dir=seed_dir, progress=progress and writer,
                  run_config={"task_name": task_name, "model_name": model_name, "task": cfg["task"],
                              "model": cfg["model"]}, run_defaults=option_defaults(task.Config, model_name))
        # written once fit accepted the run (a changed configuration is refused above, old files untouched)
        if writer:
            # world_size and both batch sizes: a distributed run is never mistaken for N independent copies
            parallel = {"world_size": W, "batch_size_per_rank": res["batch_size_per_rank"],
                        "batch_size_global": res["batch_size_global"]}
            atomic_write_text(os.path.join(seed_dir, "config.yaml"),
                              yaml.safe_dump({"task_name": task_name, "model_name": model_name, "seed": seed,
                                              "device": device, "amp": amp, "parallel": parallel, **cfg},
                                             sort_keys=False))
        res["model"] = label
        results.append(res)
    summary = summarize(results)
    table = markdown_table(task_name, label, summary, seeds)
    if writer:
        atomic_write_text(os.path.join(run_dir, "summary.json"), json.dumps(
            {"task": task_name, "model": label, "seeds": seeds, "config": cfg, "world_size": W, "summary": summary},
            indent=2))
        atomic_write_text(os.path.join(run_dir, "summary.md"), table)
        if task.figure is not None:
            plot, filename = FIGURES[task.figure]
            plot(results, os.path.join(run_dir, filename), f"{task_name} / {label}")
        print(table)
        print(task.describe_data())
        print(f"results in {run_dir}")
    return {"summary": summary, "results": results, "dir": run_dir}


def _data_barrier(rank: int, build) -> None:
    """Rank 0 runs ``build`` (which may generate a zoo for many minutes) while the others wait, then the
    others run it on the caches rank 0 wrote. The wait has no practical time limit (a dead rank 0 ends the
    job through torchrun); a failure on rank 0 is raised on every rank."""
    import torch.distributed as dist

    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=7))
    error = None
    if rank == 0:
        try:
            build()
        except BaseException as e:  # tell the waiting ranks, then fail here too
            error = e
    flag = [repr(error) if error is not None else None]
    dist.broadcast_object_list(flag, src=0, group=group)
    if error is not None:
        raise error
    if flag[0] is not None:
        raise SystemExit(f"rank 0 failed to build the data: {flag[0]}")
    if rank != 0:
        build()
    dist.destroy_process_group(group)


def option_defaults(task_config: type, model_name: str) -> dict[str, dict[str, Any]]:
    """``{"task": ..., "model": ...}``: the value each option takes when no configuration sets it (the task's
    ``Config`` dataclass and the model's signature; JSON values, options without a default left out)."""
    import dataclasses

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        return json.loads(json.dumps(value))  # tuples -> lists, as saved configurations hold them

    task = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in (fields(task_config) if dataclasses.is_dataclass(task_config) else ())
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    model = {k: v for k, v in model_arguments(model_name).items() if k not in TASK_SUPPLIED}
    out: dict[str, dict[str, Any]] = {"task": {}, "model": {}}
    for section, values in (("task", task), ("model", model)):
        for k, v in values.items():
            try:
                out[section][k] = plain(v)
            except TypeError:  # no plain value (a required argument, an object): compared as given
                pass
    return out


def _sized(task, model_name: str, cfg: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Model hyperparameters plus the sizes the task supplies that the model's constructor accepts."""
    try:
        kwargs = task.model_kwargs(model_name)
    except IncompatibleModelError as err:
        raise SystemExit(str(err)) from None
    kwargs.update(cfg["model"])
    return kwargs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help=f"one of {list_tasks()}")
    ap.add_argument("--model", required=True, help=f"one of {list_models()}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--config", help="YAML file with task:/model:/train: sections, or a named paper configuration: "
                    f"{', '.join(paper_configs())}")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--amp", nargs="?", const="bf16", default="off", choices=["off", "bf16", "fp16"],
                    help="mixed precision: bf16 autocast (CPU, CUDA; the default of a bare --amp) or fp16 with a "
                         "gradient scaler (CUDA)")
    ap.add_argument("--dist-timeout", type=float, default=600.0, metavar="S",
                    help="under torchrun: seconds a collective may wait for the other ranks before the job fails "
                         "(default 600)")
    ap.add_argument("--quick", action="store_true", help="a one-minute smoke run (tiny zoo, few steps)")
    ap.add_argument("--out", default="results", help="results directory (default: results/)")
    ap.add_argument("--tag", help="suffix for the result directory of this variant, e.g. no-act-emb")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.task not in list_tasks():
        raise SystemExit(f"Could not resolve task {args.task!r} among choices {list_tasks()}")
    if args.model not in list_models(task=args.task):
        owner = model_task(args.model)
        why = f"{args.model!r} is a model of the {owner} task only; " if owner else f"Could not resolve model {args.model!r} "
        raise SystemExit(f"{why}among choices {list_models(task=args.task)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device cpu")
    if args.amp == "fp16" and args.device != "cuda":
        raise SystemExit("--amp fp16 needs --device cuda (float16 with a gradient scaler); on CPU use --amp bf16")
    cfg = resolve_config(args.task, args.model, args.config, args.quick, args.overrides)
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # started by torchrun
    if distributed:
        _init_distributed(args.device, args.dist_timeout, cfg["train"].get("batch_size", TrainConfig.batch_size))
    try:
        run(args.task, args.model, args.seeds, cfg, args.device, args.out, args.tag, progress=not args.no_progress,
            amp=args.amp)
    except (DataFileError, StorageError, ConfigurationChangedError) as e:
        # a bad input file, one that cannot be written, or a rerun with other options: named, with the fix
        raise SystemExit(f"error: {e}") from None
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


def _init_distributed(device: str, timeout: float, batch_size: int) -> None:
    """Join torchrun's process group: NCCL and the local rank's GPU with ``--device cuda``, else gloo."""
    import torch.distributed as dist

    world_size = int(os.environ["WORLD_SIZE"])
    if batch_size % world_size:
        raise SystemExit(f"train.batch_size={batch_size} is the global batch and must be divisible by the "
                         f"number of processes ({world_size}); e.g. --set train.batch_size="
                         f"{max(world_size, batch_size // world_size * world_size)}")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=datetime.timedelta(seconds=timeout))

if __name__ == "__main__":
    main(sys.argv[1:])
