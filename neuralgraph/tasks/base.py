"""Tasks own the data (zoo, splits), the loss, the metrics and the sizes models are built with.

Models never branch on tasks and the training loop never branches on model classes: a model declares
``input_kind`` ("graph" or "weights") and the task hands it loaders of that kind.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader as TorchLoader
from torch_geometric.loader import DataLoader as GraphLoader

from neuralgraph.data.graph import NeuralGraph
from neuralgraph.data.weightspace import WeightSpace, WeightSpaceBatch
from neuralgraph.metrics import REGRESSION_METRICS


@dataclass
class Split:
    """One split of a task: per member its graph and / or weight space (built on demand) and target."""

    y: Tensor  # [n] float targets
    make_graphs: Callable[[], list[NeuralGraph]]
    make_weights: Callable[[], list[WeightSpace]]
    feedforward: bool = True  # every member is a plain chain of linear / conv layers
    _graphs: list[NeuralGraph] | None = field(default=None, repr=False)
    _weights: list[WeightSpace] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.y.numel()

    def graphs(self) -> list[NeuralGraph]:
        if self._graphs is None:
            self._graphs = self.make_graphs()
            for g, y in zip(self._graphs, self.y):
                g.y = y.view(1)
        return self._graphs

    def weights(self) -> list[WeightSpace]:
        if self._weights is None:
            self._weights = self.make_weights()
        return self._weights


class _WeightItems(torch.utils.data.Dataset):
    def __init__(self, split: Split):
        self.ws, self.y = split.weights(), split.y

    def __len__(self) -> int:
        return len(self.ws)

    def __getitem__(self, i: int) -> tuple[WeightSpace, Tensor]:
        return self.ws[i], self.y[i]


class Task:
    """Base class: property prediction of networks in a zoo (subclasses fill :meth:`build_splits`).

    Subclasses set ``Config`` (a dataclass of the task's options, defaults in ``neuralgraph/configs/tasks``) and
    implement :meth:`build_splits` returning ``{"train", "val", "test", ...}`` splits; every split whose
    name starts with ``test`` is evaluated at the best validation epoch.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    #: "bce": the target is a probability (test accuracy) and outputs are logits; "mse": raw regression.
    loss_kind: ClassVar[str] = "bce"
    #: model selection metric on the validation split, and whether larger is better
    select_metric: ClassVar[str] = "kendall_tau"
    select_mode: ClassVar[str] = "max"

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self._splits: dict[str, Split] | None = None

    # ------------------------------------------------------------------------------------ data
    def build_splits(self) -> dict[str, Split]:
        raise NotImplementedError

    @property
    def splits(self) -> dict[str, Split]:
        if self._splits is None:
            self._splits = self.build_splits()
        return self._splits

    def eval_splits(self) -> list[str]:
        return [s for s in self.splits if s.startswith("test")]

    def model_kwargs(self, input_kind: str) -> dict[str, Any]:
        """Sizes a model of this input kind needs (the runner passes only those a model accepts)."""
        kw: dict[str, Any] = {"out_dim": 1}
        train = self.splits["train"]
        if input_kind == "graph":
            g = train.graphs()[0]
            kw.update(node_in=g.x.size(1), edge_in=g.edge_attr.size(1))
        else:
            kw["weight_shapes"] = self.weight_shapes()
        return kw

    def weight_shapes(self) -> tuple | None:
        """The one weight-space signature of every split's members, or ``None`` (with
        :attr:`heterogeneity` saying why) when the zoo mixes architectures or is not feed-forward."""
        sigs = {ws.signature for s in self.splits.values() for ws in s.weights()}
        if len(sigs) > 1:
            self.heterogeneity = f"it mixes {len(sigs)} architectures"
        elif not all(s.feedforward for s in self.splits.values()):
            self.heterogeneity = "its networks have residual or normalization layers"
        else:
            return next(iter(sigs))
        return None

    def loader(self, split: str, input_kind: str, batch_size: int, shuffle: bool = False,
               generator: torch.Generator | None = None):
        s = self.splits[split]
        if input_kind == "graph":
            return GraphLoader(s.graphs(), batch_size=batch_size, shuffle=shuffle, generator=generator)
        if input_kind == "weights":
            return TorchLoader(_WeightItems(s), batch_size=batch_size, shuffle=shuffle, generator=generator,
                               collate_fn=WeightSpaceBatch.from_items)
        raise ValueError(f"unknown input_kind {input_kind!r}; expected 'graph' or 'weights'")

    # ------------------------------------------------------------------------------------ objective
    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        out = out.view(-1)
        if self.loss_kind == "bce":
            return F.binary_cross_entropy_with_logits(out, y.view(-1).to(out.dtype))
        return F.mse_loss(out, y.view(-1).to(out.dtype))

    def predict(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out.view(-1)) if self.loss_kind == "bce" else out.view(-1)

    def metrics(self, pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
        return {name: fn(pred, target) for name, fn in REGRESSION_METRICS.items()}


# ---------------------------------------------------------------------------------------- registry
_TASKS: dict[str, type[Task]] = {}


def register_task(name: str):
    def deco(cls: type[Task]) -> type[Task]:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return deco


def list_tasks(pattern: str = "*") -> list[str]:
    return sorted(n for n in _TASKS if fnmatch.fnmatch(n, pattern))


def task_config_fields(name: str) -> dict[str, Any]:
    """Option names of a task and their defaults."""
    cls = _get(name)
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(cls.Config)}


def task_config_class(name: str) -> type:
    """The options dataclass of a registered task (types and defaults of its options)."""
    return _get(name).Config


def create_task(name: str, **options) -> Task:
    """Build a registered task; unknown options are an error listing the valid ones."""
    cls = _get(name)
    valid = task_config_fields(name)
    bad = sorted(set(options) - set(valid))
    if bad:
        raise KeyError(f"unknown option(s) {bad} for task {name!r}; valid options: {sorted(valid)}")
    return cls(cls.Config(**options))


def _get(name: str) -> type[Task]:
    if name not in _TASKS:
        raise KeyError(f"Could not resolve task {name!r} among choices {list_tasks()}")
    return _TASKS[name]
