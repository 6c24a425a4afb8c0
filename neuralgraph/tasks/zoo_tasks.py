"""Predicting a CNN's test accuracy from its weights: ``wildpark``, ``cnn-zoo``, ``cross-dataset``,
``cross-arch``.

Every task reads zoo members (ours, generated on first use into ``$NEURALGRAPH_HOME``, or a directory
the user gives), splits them by run (every checkpoint of a run lands in one split), and converts each
member once per architecture plan: a graph for graph models, a weight space for the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from neuralgraph.convert import get_plan
from neuralgraph.data.formats.native import Zoo, ZooMember, load_zoo, member_splits
from neuralgraph.data.graph import NeuralGraph
from neuralgraph.data.weightspace import WeightSpace
from neuralgraph.tasks.base import Split, Task, register_task
from neuralgraph.zoo import default_zoo
from neuralgraph.zoo.arch import arch_key, build_model


class MemberConverter:
    """Members -> graphs / weight spaces, one conversion plan per architecture."""

    def __init__(self, **convert_options: Any):
        self.options = convert_options
        self._plans: dict[str, Any] = {}

    def plan(self, member: ZooMember):
        key = arch_key(member.architecture)
        if key not in self._plans:
            self._plans[key] = get_plan(build_model(member.architecture), **self.options)
        return self._plans[key]

    def graphs(self, members: Sequence[ZooMember]) -> list[NeuralGraph]:
        return [self.plan(m).graph(m.state_dict()) for m in members]

    def weights(self, members: Sequence[ZooMember]) -> list[WeightSpace]:
        return [self.plan(m).weight_space(m.state_dict()) for m in members]


def make_split(members: list[ZooMember], target: str, conv: MemberConverter) -> Split:
    y = torch.tensor([m.metrics[target] for m in members], dtype=torch.float32)
    return Split(y=y, make_graphs=lambda: conv.graphs(members), make_weights=lambda: conv.weights(members),
                 feedforward=all(conv.plan(m).feedforward for m in members))


def zoo_splits(zoo: Zoo, fractions: Sequence[float], seed: int, target: str, conv: MemberConverter,
               names: dict[str, str] | None = None) -> dict[str, Split]:
    """``train`` / ``val`` / ``test`` splits of one zoo, by run; ``names`` renames splits."""
    idx = member_splits(zoo, tuple(fractions), seed)
    empty = [s for s, i in idx.items() if not i]
    if empty:
        raise ValueError(f"{zoo!r}: the {empty} split(s) would be empty with split={tuple(fractions)}; use a zoo "
                         "with more runs (task.runs=...) or other fractions (task.split=[...])")
    names = names or {}
    return {names.get(s, s): make_split(zoo.select(i), target, conv) for s, i in idx.items()
            if names.get(s, s) is not None}


@dataclass
class AccuracyZooConfig:
    zoo: str | None = None  # a zoo directory (ours); None: generate / reuse the preset in $NEURALGRAPH_HOME
    preset: str = "wildpark-digits"  # preset of the embedded zoo
    runs: int = 96  # runs of the embedded zoo (each with several checkpoints)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test fractions of runs
    split_seed: int = 0  # seed of the split by run
    target: str = "test_accuracy"  # member metric to predict
    max_kernel: tuple[int, ...] = (7, 7)  # converter option: kernels are padded to this size


@register_task("wildpark")
class WildParkTask(Task):
    """Heterogeneous CNN zoo (Wild Park recipe): predict test accuracy; Kendall tau selects models."""

    Config = AccuracyZooConfig

    def build_splits(self) -> dict[str, Split]:
        c = self.cfg
        zoo = open_zoo(c.zoo, preset=c.preset, runs=c.runs)
        return zoo_splits(zoo, c.split, c.split_seed, c.target, MemberConverter(max_kernel=tuple(c.max_kernel)))


@dataclass
class CnnZooConfig(AccuracyZooConfig):
    preset: str = "arch1-digits"


@register_task("cnn-zoo")
class CnnZooTask(WildParkTask):
    """Homogeneous CNN zoo (default ``arch1-digits``): every model applies, NFN and the flat MLP too."""

    Config = CnnZooConfig


@dataclass
class CrossDatasetConfig:
    arch: str = "arch1"  # zoo architecture: arch1 or arch2
    train_on: str = "digits"  # dataset whose zoo trains the predictor
    datasets: list[str] = field(default_factory=lambda: ["digits", "mnist1d", "shapes"])  # test zoos
    runs: int = 64  # runs per zoo
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    target: str = "test_accuracy"
    max_kernel: tuple[int, ...] = (7, 7)


@register_task("cross-dataset")
class CrossDatasetTask(Task):
    """Train on one homogeneous zoo, evaluate on the test runs of every zoo of the same architecture
    (SNE table 1: one row per ``train_on``)."""

    Config = CrossDatasetConfig

    @property
    def result_name(self) -> str:
        return f"{self.name}/{self.cfg.arch}/train-{self.cfg.train_on}"

    def build_splits(self) -> dict[str, Split]:
        c = self.cfg
        if c.train_on not in c.datasets:
            raise ValueError(f"train_on={c.train_on!r} must be one of datasets={c.datasets}")
        conv = MemberConverter(max_kernel=tuple(c.max_kernel))
        splits: dict[str, Split] = {}
        for ds in c.datasets:
            zoo = open_zoo(None, preset=f"{c.arch}-{ds}", runs=c.runs)
            own = zoo_splits(zoo, c.split, c.split_seed, c.target, conv)
            if ds == c.train_on:
                splits["train"], splits["val"] = own["train"], own["val"]
            splits[f"test/{ds}"] = own["test"]
        return splits


@dataclass
class CrossArchConfig:
    dataset: str = "digits"  # dataset of both zoos
    train_arch: str = "arch1"  # architecture of the training zoo
    test_arch: str = "arch2"  # architecture of the test zoo (every member is a test member)
    runs: int = 64
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    target: str = "test_accuracy"
    max_kernel: tuple[int, ...] = (7, 7)


@register_task("cross-arch")
class CrossArchTask(Task):
    """Train on the ``train_arch`` zoo of a dataset, test on its ``test_arch`` zoo (SNE table 2; one row
    per dataset). ``test/<train_arch>`` is the in-distribution reference."""

    Config = CrossArchConfig

    @property
    def result_name(self) -> str:
        return f"{self.name}/{self.cfg.train_arch}-to-{self.cfg.test_arch}/{self.cfg.dataset}"

    def build_splits(self) -> dict[str, Split]:
        c = self.cfg
        conv = MemberConverter(max_kernel=tuple(c.max_kernel))
        src = zoo_splits(open_zoo(None, preset=f"{c.train_arch}-{c.dataset}", runs=c.runs), c.split,
                         c.split_seed, c.target, conv)
        dst = open_zoo(None, preset=f"{c.test_arch}-{c.dataset}", runs=c.runs)
        return {"train": src["train"], "val": src["val"], f"test/{c.train_arch}": src["test"],
                f"test/{c.test_arch}": make_split(list(dst), c.target, conv)}


def open_zoo(path: str | None, preset: str, runs: int) -> Zoo:
    """A zoo directory given by the user, or the preset generated on first use into the cache."""
    if path is not None:
        return load_zoo(path)
    return default_zoo(preset=preset, runs=runs)
