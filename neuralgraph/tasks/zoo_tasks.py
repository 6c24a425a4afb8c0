"""Predicting a CNN's test accuracy from its weights: ``wildpark``, ``cnn-zoo``, ``cross-dataset``,
``cross-arch``.

Every task reads zoo members (ours, generated on first use into ``$NEURALGRAPH_HOME``, or a directory
the user gives), splits them by run (every checkpoint of a run lands in one split), and converts each
member once per architecture plan: a graph for graph models, a weight space for the others.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from neuralgraph.data.formats.native import BaseZoo, load_zoo
from neuralgraph.data.formats.small_cnn_zoo import SmallCNNZoo
from neuralgraph.data.formats.wildpark import WildParkZoo
from neuralgraph.data.zoo import ZooDataset
from neuralgraph.tasks.base import Split, Task, counted, register_task
from neuralgraph.transforms import NormalizeLayers
from neuralgraph.zoo import DEFAULT_RUNS, default_zoo, get_preset, neuralgraph_home


def dataset_split(ds: ZooDataset) -> Split:
    """A task split over one :class:`ZooDataset` split: its graphs, and the same members as weight spaces."""
    weights = ds.weight_dataset()
    return Split(y=ds.y.float(), make_graphs=lambda: list(ds), make_weights=lambda: [w for w, _ in weights],
                 feedforward=all(weights.to_graph.plan(weights.member(i)).feedforward for i in range(len(weights))),
                 dataset=ds)


def normalize_graphs(splits: dict[str, Split]) -> dict[str, Split]:
    """Apply :class:`~neuralgraph.transforms.NormalizeLayers` fitted on the training graphs to every split."""
    raw_train = splits["train"].make_graphs
    fitted: list[NormalizeLayers] = []

    def transform() -> NormalizeLayers:
        if not fitted:
            fitted.append(NormalizeLayers().fit(raw_train()))
        return fitted[0]

    for split in splits.values():
        split.make_graphs = (lambda make: lambda: [transform()(g) for g in make()])(split.make_graphs)
    return splits


def processed_root(zoo: BaseZoo) -> Path:
    """Where converted graphs of ``zoo`` are cached: under ``$NEURALGRAPH_HOME``, never inside the user's
    zoo directory (which may be read-only), one directory per zoo location."""
    where = "|".join(str(Path(r).resolve()) for r in zoo.roots) + f"|{zoo.header.get('split', '')}"
    return neuralgraph_home() / "processed" / hashlib.sha256(where.encode()).hexdigest()[:16]


def zoo_splits(zoo: BaseZoo, fractions: Sequence[float], seed: int, target: str, converter: dict[str, Any],
               splits: Sequence[str] = ("train", "val", "test"), drop_nonfinite: bool = False) -> dict[str, Split]:
    """Splits of one zoo by run (every checkpoint of a run in one split)."""
    out = {}
    for name in splits:
        ds = ZooDataset(zoo, name, root=processed_root(zoo), target=target, split_fractions=tuple(fractions),
                        split_seed=seed, converter=converter, drop_nonfinite=drop_nonfinite)
        if len(ds) == 0:
            raise ValueError(f"{zoo!r}: the {name!r} split is empty with split={tuple(fractions)}; use a zoo with "
                             "more runs (task.runs=...) or other fractions (task.split=[...])")
        out[name] = dataset_split(ds)
    return out


def open_zoo(path: str | None, preset: str, runs: int | None) -> BaseZoo:
    """A zoo directory given by the user (ours, or a published CNN Wild Park root), or the preset
    generated on first use into ``$NEURALGRAPH_HOME`` (``runs=None``: the preset's size)."""
    if path is None:
        return default_zoo(preset=preset, runs=runs)
    root = Path(os.path.expanduser(path))
    if (root / "zoo.json").exists():
        return load_zoo(root)
    if any(root.glob("*/*/checkpoint.pt")):
        return WildParkZoo(root)
    raise FileNotFoundError(f"{str(root)!r} is neither a zoo in our format (zoo.json) nor a CNN Wild Park "
                            "directory (<trial>/<checkpoint>/checkpoint.pt); for a Small CNN Zoo use the "
                            "cnn-zoo task")


#: zoos of at least this many runs rank models (a test split of >= 100 runs at the usual 80 / 10 / 10 split)
RANKING_RUNS = 1000


def zoo_note(presets: Sequence[tuple[str, int | None]], large_option: str) -> str:
    """Which embedded zoos ``(preset, runs)`` a run used, and where to rank models (-large presets, results)."""
    sizes = [(p, DEFAULT_RUNS[p] if r is None else r) for p, r in presets]
    used = ", ".join(f"{p} ({counted(n, 'run')})" for p, n in sizes)
    if all(n >= RANKING_RUNS for _, n in sizes):  # by size, not name: a -large preset cut to task.runs=64 is small
        return f"zoo: {used}"
    return (f"zoo: {used}, a small zoo for a quick run; its test split is too small to rank models. Rank them on "
            f"the -large presets (>= 1,000 runs: {large_option}) and see docs/results.md")


@dataclass
class AccuracyZooConfig:
    zoo: str | None = None  # a zoo directory (ours); None: generate / reuse the preset in $NEURALGRAPH_HOME
    preset: str = "wildpark-digits"  # preset of the embedded zoo (wildpark-digits-large: 1,280 runs, ranks models)
    runs: int | None = None  # runs of the embedded zoo (several checkpoints each); None: the preset's size
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test fractions of runs
    split_seed: int = 0  # seed of the split by run
    target: str = "test_accuracy"  # member metric to predict
    max_kernel: tuple[int, ...] = (7, 7)  # converter option: kernels are padded to this size
    normalize_layers: bool = False  # graph models: per-layer weight / bias normalisation fitted on train
    drop_nonfinite: bool = False  # drop members with a NaN / Inf target or parameter (else: an error naming them)
    loss: str = "bce"  # "bce": BCE on logits (the target is a probability); "mse": raw regression


@register_task("wildpark")
class WildParkTask(Task):
    """Heterogeneous CNN zoo (Wild Park recipe): predict test accuracy; Kendall tau selects models."""

    Config = AccuracyZooConfig

    def __init__(self, cfg: AccuracyZooConfig):
        super().__init__(cfg)
        if cfg.loss not in ("bce", "mse"):
            raise ValueError(f"task.loss={cfg.loss!r}: expected 'bce' (BCE on logits) or 'mse' (raw regression)")
        self.loss_kind = cfg.loss

    def mixed_architectures(self) -> str | None:
        c = self.cfg
        if c.zoo is None and getattr(get_preset(c.preset), "mixed_architectures", False):
            return f"the {c.preset} preset samples an architecture per group of runs"
        return None

    def describe_data(self) -> str:
        c = self.cfg
        if c.zoo is not None:
            return f"zoo: {c.zoo}; " + super().describe_data()
        return zoo_note([(c.preset, c.runs)], f"--set task.preset={c.preset.removesuffix('-large')}-large "
                        "--set task.runs=null") + "\n" + super().describe_data()

    def build_splits(self) -> dict[str, Split]:
        c = self.cfg
        zoo = open_zoo(c.zoo, preset=c.preset, runs=c.runs)
        splits = zoo_splits(zoo, c.split, c.split_seed, c.target, {"max_kernel": tuple(c.max_kernel)},
                            drop_nonfinite=c.drop_nonfinite)
        return normalize_graphs(splits) if c.normalize_layers else splits


@dataclass
class CnnZooConfig(AccuracyZooConfig):
    preset: str = "arch1-digits"
    # a Small CNN Zoo directory given as `zoo` uses its standard split: the row permutation file of
    # NFN / Neural Graphs (one index per line), step 86, second half test, first half 80/20 train/val
    permutation_file: str | None = None


@register_task("cnn-zoo")
class CnnZooTask(WildParkTask):
    """Homogeneous CNN zoo (default ``arch1-digits``, or a Small CNN Zoo directory with its standard
    split): every model applies, NFN and the flat MLP too."""

    Config = CnnZooConfig

    def build_splits(self) -> dict[str, Split]:
        c = self.cfg
        if c.zoo is not None and (Path(os.path.expanduser(c.zoo)) / "weights.npy").exists():
            conv = {"max_kernel": tuple(c.max_kernel)}
            if c.permutation_file is None:
                raise ValueError(f"{c.zoo} is a Small CNN Zoo: pass its row permutation file (task.permutation_file="
                                 "...) so the split is the standard one of NFN / Neural Graphs")
            zoos = {name: SmallCNNZoo(c.zoo, split=name, permutation_file=c.permutation_file)
                    for name in ("train", "val", "test")}
            splits = {name: dataset_split(ZooDataset(z, "all", root=processed_root(z), target=c.target,
                                                     converter=conv, drop_nonfinite=c.drop_nonfinite))
                      for name, z in zoos.items()}
            return normalize_graphs(splits) if c.normalize_layers else splits
        return super().build_splits()


@dataclass
class CrossDatasetConfig:
    arch: str = "arch1"  # zoo architecture: arch1 or arch2
    train_on: str = "digits"  # dataset whose zoo trains the predictor
    datasets: list[str] = field(default_factory=lambda: ["digits", "mnist1d", "shapes"])  # test zoos
    runs: int | None = 64  # runs per zoo; None: the presets' size (1,024 with large)
    large: bool = False  # the <arch>-<dataset>-large presets (same recipe; with runs: null, 1,024 runs per zoo)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    target: str = "test_accuracy"
    max_kernel: tuple[int, ...] = (7, 7)
    drop_nonfinite: bool = False  # drop members with a NaN / Inf target or parameter (else: an error naming them)


@register_task("cross-dataset")
class CrossDatasetTask(Task):
    """Train on one homogeneous zoo, evaluate on the test runs of every zoo of the same architecture
    (SNE table 1: one row per ``train_on``)."""

    Config = CrossDatasetConfig

    @property
    def result_name(self) -> str:
        return f"{self.name}/{self.cfg.arch}/train-{self.cfg.train_on}"

    def describe_data(self) -> str:
        c, suffix = self.cfg, "-large" if self.cfg.large else ""
        return zoo_note([(f"{c.arch}-{ds}{suffix}", c.runs) for ds in c.datasets],
                        "--set task.large=true --set task.runs=null") + "\n" + super().describe_data()

    def build_splits(self) -> dict[str, Split]:
        c = self.cfg
        if c.train_on not in c.datasets:
            raise ValueError(f"train_on={c.train_on!r} must be one of datasets={c.datasets}")
        conv = {"max_kernel": tuple(c.max_kernel)}
        splits: dict[str, Split] = {}
        for ds in c.datasets:
            zoo = open_zoo(None, preset=f"{c.arch}-{ds}" + ("-large" if c.large else ""), runs=c.runs)
            own = zoo_splits(zoo, c.split, c.split_seed, c.target, conv, drop_nonfinite=c.drop_nonfinite)
            if ds == c.train_on:
                splits["train"], splits["val"] = own["train"], own["val"]
            splits[f"test/{ds}"] = own["test"]
        return splits


@dataclass
class CrossArchConfig:
    dataset: str = "digits"  # dataset of both zoos
    train_arch: str = "arch1"  # architecture of the training zoo
    test_arch: str = "arch2"  # architecture of the test zoo (every member is a test member)
    runs: int | None = 64  # runs per zoo; None: the presets' size (1,024 with large)
    large: bool = False  # the <arch>-<dataset>-large presets (same recipe; with runs: null, 1,024 runs per zoo)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    target: str = "test_accuracy"
    max_kernel: tuple[int, ...] = (7, 7)
    drop_nonfinite: bool = False  # drop members with a NaN / Inf target or parameter (else: an error naming them)


@register_task("cross-arch")
class CrossArchTask(Task):
    """Train on the ``train_arch`` zoo of a dataset, test on its ``test_arch`` zoo (SNE table 2; one row
    per dataset). ``test/<train_arch>`` is the in-distribution reference."""

    Config = CrossArchConfig

    @property
    def result_name(self) -> str:
        return f"{self.name}/{self.cfg.train_arch}-to-{self.cfg.test_arch}/{self.cfg.dataset}"

    def mixed_architectures(self) -> str | None:
        c = self.cfg
        if c.train_arch != c.test_arch:
            return f"it trains on {c.train_arch} and tests on {c.test_arch} networks"
        return None

    def describe_data(self) -> str:
        c, suffix = self.cfg, "-large" if self.cfg.large else ""
        return zoo_note([(f"{a}-{c.dataset}{suffix}", c.runs) for a in (c.train_arch, c.test_arch)],
                        "--set task.large=true --set task.runs=null") + "\n" + super().describe_data()

    def build_splits(self) -> dict[str, Split]:
        c = self.cfg
        conv = {"max_kernel": tuple(c.max_kernel)}
        suffix = "-large" if c.large else ""
        src = zoo_splits(open_zoo(None, preset=f"{c.train_arch}-{c.dataset}{suffix}", runs=c.runs), c.split,
                         c.split_seed, c.target, conv, drop_nonfinite=c.drop_nonfinite)
        dst = zoo_splits(open_zoo(None, preset=f"{c.test_arch}-{c.dataset}{suffix}", runs=c.runs), c.split,
                         c.split_seed, c.target, conv, splits=("all",), drop_nonfinite=c.drop_nonfinite)
        return {"train": src["train"], "val": src["val"], f"test/{c.train_arch}": src["test"],
                f"test/{c.test_arch}": dst["all"]}
