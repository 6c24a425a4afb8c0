"""Tasks own the data (zoo, splits), the outputs models give, the loss, the metrics and model selection.

Models never branch on tasks and the training loop never branches on model classes: a model declares
``input_kind`` ("graph" or "weights") and the task hands it loaders of that kind.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader as TorchLoader
from torch_geometric.loader import DataLoader as GraphLoader

from neuralgraph.convert import ConversionPlan, get_plan
from neuralgraph.data.graph import ROLE, NeuralGraph
from neuralgraph.data.weightspace import WeightSpace, WeightSpaceBatch
from neuralgraph.metrics import REGRESSION_METRICS
from neuralgraph.nn.precision import full_precision
from neuralgraph.transforms.probe_features import MemberNetwork
from neuralgraph.data.arch import arch_key, build_model, example_input


def counted(n: int, noun: str) -> str:
    """``"1 run"``, ``"1,280 runs"``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


@dataclass
class Split:
    """One split of a task: per member its graph and / or weight space (built on demand) and target."""

    y: Tensor  # [n, ...] targets (float): a property, a class index, or e.g. a target image per member
    make_graphs: Callable[[], list[NeuralGraph]]
    make_weights: Callable[[], list[WeightSpace]]
    feedforward: bool = True  # every member is a plain chain of linear / conv layers
    dataset: Any = None  # the ZooDataset behind the split, when there is one (its members: ``dataset.member(i)``)
    _graphs: list[NeuralGraph] | None = field(default=None, repr=False)
    _weights: list[WeightSpace] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.y)

    def graphs(self) -> list[NeuralGraph]:
        if self._graphs is None:
            self._graphs = self.make_graphs()
            for g, y in zip(self._graphs, self.y):
                g.y = y.unsqueeze(0)  # [1, ...]: batches to [B, ...]
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


class IncompatibleModelError(ValueError):
    """A registered model that cannot serve a task (the message says why and which models can)."""


#: Model constructor arguments a task supplies (sizes and the members' architecture), never set by users.
TASK_SUPPLIED = ("out_dim", "node_in", "edge_in", "weight_shapes", "node_out_dim", "member_network", "num_outputs",
                 "in_channels")

#: What a task asks a model to output.
OUTPUTS = ("scalar", "classes", "parameters")


class Task:
    """Base class of every task: the data, what a model outputs, the loss, the metrics, model selection.

    The contract the training loop relies on (it never assumes more):

    * :attr:`output` - ``"scalar"`` (one number per network), ``"classes"`` (``num_classes`` logits per
      network) or ``"parameters"`` (one value per parameter of the input network, from a model's
      per-parameter head: see :mod:`neuralgraph.tasks.parameters`); :meth:`model_kwargs` turns it into
      the sizes a model is built with, or refuses a model that cannot give it.
    * :meth:`loss` ``(model, batch) -> scalar tensor`` and :meth:`predict` ``(model, batch) -> {field:
      [B, ...]}``: per-member records of one batch; :func:`~neuralgraph.training.evaluate` concatenates
      them over a split and :meth:`metrics` reduces them to numbers.
    * :attr:`select_metric` / :attr:`select_mode`: the validation metric that picks the checkpoint.
    * :meth:`wrap_model`: task-owned trainable parameters, trained and checkpointed with the model.
    * :attr:`example_fields`: large record fields (e.g. images) kept for the first few members only in
      ``predictions.json``; :attr:`figure`: the runner's plot of the records (``"scatter"``,
      ``"confusion"``, ``"reconstructions"``, ``"curves"`` or ``None``).

    This base class implements scalar regression of a zoo member's property (BCE on logits when the
    target is a probability, else MSE): subclasses set ``Config`` (a dataclass of the task's options,
    defaults in ``neuralgraph/configs/tasks``) and implement :meth:`build_splits` returning ``{"train", "val",
    "test", ...}`` splits; every split whose name starts with ``test`` is evaluated at the best
    validation epoch.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    output: ClassVar[str] = "scalar"
    #: "bce": the target is a probability (test accuracy) and outputs are logits; "mse": raw regression.
    loss_kind: ClassVar[str] = "bce"
    #: model selection metric on the validation split, and whether larger is better
    select_metric: ClassVar[str] = "kendall_tau"
    select_mode: ClassVar[str] = "max"
    example_fields: ClassVar[tuple[str, ...]] = ()
    figure: ClassVar[str | None] = "scatter"

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

    def describe_data(self) -> str:
        """What the run was trained and tested on, for the runner's printout: members (and the runs they come
        from, for zoo splits) per split. Zoo tasks add the zoo's name and size."""
        parts = []
        for name, s in self.splits.items():
            ds = s.dataset
            runs = f" of {counted(len({ds.member(i).run_id for i in range(len(ds))}), 'run')}" if ds is not None else ""
            parts.append(f"{name} {counted(len(s), 'member')}{runs}")
        return "data: " + ", ".join(parts)

    def eval_splits(self) -> list[str]:
        return [s for s in self.splits if s.startswith("test")]

    @property
    def out_dim(self) -> int:
        """Outputs per network (scalar and class outputs)."""
        return 1

    def model_kwargs(self, model_name: str) -> dict[str, Any]:
        """The sizes (:data:`TASK_SUPPLIED`) a registered model of this task is built with, only those its
        constructor accepts.

        Raises:
            IncompatibleModelError: the model cannot serve this task (the message says why).
        """
        from neuralgraph.models import list_models, model_arguments, model_class, model_task

        self.check_model(model_name)  # what the configuration alone rules out, before any data is built
        cls, accepted = model_class(model_name), model_arguments(model_name)
        kw: dict[str, Any] = {}
        if cls.input_kind == "graph":
            g = self.splits["train"].graphs()[0]
            kw.update(node_in=g.x.size(1), edge_in=g.edge_attr.size(1), member_network=self.member_network(),
                      num_outputs=self.num_outputs())
        else:
            kw["weight_shapes"] = self.weight_shapes()
            if accepted.get("weight_shapes") is inspect.Parameter.empty and kw["weight_shapes"] is None:
                raise IncompatibleModelError(
                    f"{model_name} needs a homogeneous zoo of feed-forward networks (one architecture, no residual "
                    f"or normalization layers), but the {self.name} zoo does not qualify: {self.heterogeneity}. "
                    "Use ng-gnn, ng-t, sne or statnn.")
        if self.output == "parameters":
            head = getattr(cls, "parameter_head", None)
            if head is None:
                able = [n for n in list_models() if getattr(model_class(n), "parameter_head", None)]
                raise IncompatibleModelError(
                    f"{model_name} outputs one value per network, but the {self.name} task needs one per parameter "
                    f"of the input network; use one of {able}")
            kw["head"] = head
            if cls.input_kind == "graph":
                plan = self.plan()
                kw.update(out_dim=plan.config.edge_dim, node_out_dim=plan.config.node_dim)
        else:
            kw["out_dim"] = self.out_dim
        return {k: v for k, v in kw.items() if k in accepted}

    def mixed_architectures(self) -> str | None:
        """Why the members mix architectures when the configuration alone shows it (a zoo preset that samples
        architectures, a train and a test zoo of two architectures), else ``None`` (one architecture, or only
        the data can tell). Read without building any data."""
        return None

    def check_model(self, model_name: str, options: dict[str, Any] | None = None) -> None:
        """Refuse, before any data is built, a model (with its ``options``, e.g. the runner's ``model:`` section)
        that the configuration alone shows this task cannot serve: a model of another task, a weight-space model
        needing one architecture or probe features on a task mixing architectures (:meth:`mixed_architectures`).
        :meth:`model_kwargs` calls it and checks the rest on the data.

        Raises:
            IncompatibleModelError: with the reason and the models that apply.
        """
        from neuralgraph.models import list_models, model_arguments, model_class, model_task

        owner = model_task(model_name)
        if owner is not None and owner != self.name:
            raise IncompatibleModelError(f"{model_name} is a model of the {owner} task only; the {self.name} task "
                                         f"takes {list_models()}")
        mixed = self.mixed_architectures()
        if mixed is None:
            return
        cls, accepted = model_class(model_name), model_arguments(model_name)
        if cls.input_kind == "weights" and accepted.get("weight_shapes") is inspect.Parameter.empty:
            raise IncompatibleModelError(
                f"{model_name} needs a homogeneous zoo of feed-forward networks (one architecture, no residual "
                f"or normalization layers), but the {self.name} zoo does not qualify: {mixed}. "
                "Use ng-gnn, ng-t, sne or statnn.")
        probes = (options or {}).get("probes")
        if probes:
            raise IncompatibleModelError(
                f"model.probes={probes} runs every member network on the probe inputs, which needs one "
                f"architecture, but the {self.name} task mixes them: {mixed}; set model.probes=0")

    def architecture(self) -> dict[str, Any] | None:
        """The architecture description every member of every split shares (zoo splits), or ``None``
        when the members mix architectures or a split has no zoo dataset behind it."""
        if any(s.dataset is None for s in self.splits.values()):
            return None
        archs = {arch_key(a): a for s in self.splits.values() for a in s.dataset.architectures()}
        return next(iter(archs.values())) if len(archs) == 1 else None

    def member_network(self) -> MemberNetwork | None:
        """The members' one architecture as probe features run it (:class:`~neuralgraph.transforms.MemberNetwork`),
        or ``None`` when the task mixes architectures."""
        arch = self.architecture()
        if arch is None:
            return None
        with torch.random.fork_rng():  # building the template must not move the seeded global RNG
            module = build_model(arch)
        converter = dataclasses.asdict(next(iter(self.splits.values())).dataset.pre_transform.config)
        return MemberNetwork(module, example_input(arch), converter)

    def plan(self) -> ConversionPlan:
        """The conversion plan of the members' one architecture (per-parameter tasks read outputs with it)."""
        net = self.member_network()
        if net is None:
            raise ValueError(f"the {self.name} task mixes architectures; a per-parameter output needs one")
        return get_plan(net.module, net.example_input, **net.converter)

    def num_outputs(self) -> int | None:
        """The number of output neurons every member of every split has (the paper's readout concatenates
        them), or ``None`` when it varies."""
        counts = {int((g.node_role == ROLE["output"]).sum()) for s in self.splits.values() for g in s.graphs()}
        return next(iter(counts)) if len(counts) == 1 else None

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

    def loader(self, split: str, input_kind: str, batch_size: int, sampler: Iterable[int] | None = None,
               pin_memory: bool = False):
        """Batches of one split for a model of ``input_kind``.

        Args:
            split: the split's name.
            input_kind: ``"graph"`` (PyG batches of neural graphs) or ``"weights"`` (``WeightSpaceBatch``).
            batch_size: members per batch.
            sampler: the member indices in the order to batch them (e.g. a shuffled, per-rank
                ``DistributedSampler``); default: every member, in order.
            pin_memory: collate into page-locked memory (for asynchronous copies to a CUDA device).
        """
        s = self.splits[split]
        if input_kind == "graph":
            return GraphLoader(s.graphs(), batch_size=batch_size, sampler=sampler, pin_memory=pin_memory)
        if input_kind == "weights":
            return TorchLoader(_WeightItems(s), batch_size=batch_size, sampler=sampler, pin_memory=pin_memory,
                               collate_fn=WeightSpaceBatch.from_items)
        raise ValueError(f"unknown input_kind {input_kind!r}; expected 'graph' or 'weights'")

    # ------------------------------------------------------------------------------------ objective
    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The module the loop trains and checkpoints: ``model`` itself, or a wrapper adding the task's
        own trainable parameters (e.g. the edit step size of ``inr-edit``)."""
        return model

    def loss(self, model: nn.Module, batch) -> Tensor:
        """The training loss of one batch (plus the model's own penalty, if it has one)."""
        out = model(batch)
        loss = self.criterion(out, batch)
        if hasattr(model, "regularizer"):  # a model's own training penalty (weighted in its config)
            loss = loss + model.regularizer(batch, out)
        return loss

    def criterion(self, out: Tensor, batch) -> Tensor:
        """The loss of model outputs ``out`` against the batch's targets."""
        out = full_precision(out.view(-1))  # float32 loss and targets, also under autocast
        y = batch.y.view(-1).to(out.dtype)
        if self.loss_kind == "bce":
            return F.binary_cross_entropy_with_logits(out, y)
        return F.mse_loss(out, y)

    def predict(self, model: nn.Module, batch) -> dict[str, Tensor]:
        """Per-member records of one batch: ``pred`` and ``target`` ``[B]``."""
        out = model(batch).view(-1)
        pred = torch.sigmoid(out) if self.loss_kind == "bce" else out
        return {"pred": pred.float(), "target": batch.y.view(-1).float()}

    def metrics(self, records: dict[str, np.ndarray]) -> dict[str, float]:
        """Numbers of one split from its concatenated records."""
        return {name: fn(records["pred"], records["target"]) for name, fn in REGRESSION_METRICS.items()}


class ClassificationTask(Task):
    """Predict a class per network: cross-entropy on ``num_classes`` logits, top-1 and per-class
    accuracy (``acc_c<k>``; NaN for a class absent from the split), selection on validation accuracy.
    Split targets ``y`` hold the class index (as a float)."""

    output: ClassVar[str] = "classes"
    select_metric: ClassVar[str] = "accuracy"
    select_mode: ClassVar[str] = "max"
    figure: ClassVar[str | None] = "confusion"

    @property
    def out_dim(self) -> int:
        return self.num_classes

    @property
    def num_classes(self) -> int:
        """One more than the largest label of any split."""
        return int(max(int(s.y.max()) for s in self.splits.values())) + 1

    def criterion(self, out: Tensor, batch) -> Tensor:
        return F.cross_entropy(out, batch.y.view(-1).long())

    def predict(self, model: nn.Module, batch) -> dict[str, Tensor]:
        return {"pred": model(batch).argmax(-1), "target": batch.y.view(-1).long()}

    def metrics(self, records: dict[str, np.ndarray]) -> dict[str, float]:
        return classification_metrics(records["pred"], records["target"], self.num_classes)


def classification_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, float]:
    """Top-1 ``accuracy`` and per-class accuracy ``acc_c<k>`` of predicted against true class indices."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    out = {"accuracy": float((pred == target).mean()) if target.size else float("nan")}
    for k in range(num_classes):
        sel = target == k
        out[f"acc_c{k}"] = float((pred[sel] == k).mean()) if sel.any() else float("nan")
    return out


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
