r"""Learning to optimize (``l2o``): learned optimizers that read the optimizee as a neural graph.

Neural Graphs §4.3 / table 2. A learned optimizer proposes the update of every parameter of a small CNN
(the *optimizee*) from per-parameter features: the parameter, its gradient and momenta at five decay rates
(Metz et al. 2019), each log / sign preprocessed (Andrychowicz et al. 2016), 14 numbers per parameter. The
update rule is a per-parameter MLP ("FF"):

.. math::
    \Delta\theta = \lambda_1\, d \exp(\lambda_2 m), \qquad (d, m) = \mathrm{FF}([\phi(\theta), c(\theta)])

where :math:`\phi` are the features and :math:`c` the per-parameter *context* of the optimizer's encoder:

* ``ff``: no context (the paper's FF baseline);
* ``lstm``: a per-parameter LSTM over the inner steps whose input is the parameter's features and the mean
  features of its tensor (the layer features of the paper's FF + layerwise LSTM);
* ``ng-gnn`` / ``ng-t``: the registered neural-graph models with their equivariant head, on the optimizee's
  neural graph whose node / edge features are this step's per-parameter features: the graph's structure
  comes once from the cached conversion plan, each step only gathers the features into it
  (:meth:`Optimizee.graph`), and the per-node / per-edge outputs map back onto the parameters through
  the plan (:meth:`~neuralgraph.convert.ConversionPlan.read`);
* ``nfn-np`` (and the other NFNs): NF-layers on the same features laid out as a weight space, with the
  equivariant head (NF-layers serve any widths, so one model optimizes the wider meta-test CNN too);
* ``adam`` / ``sgd``: hand-written optimizers (no trainable parameters), their learning rate tuned on the
  meta-training task by a printed grid.

``ff``, ``lstm``, ``adam`` and ``sgd`` are models of this task only (``list_models(task="l2o")``).

Meta-training runs through the shared loop (:func:`neuralgraph.training.fit`): one "batch" of the train
split is one truncated unroll (``unroll`` inner steps) of ``batch_size`` inner runs, its loss the mean
optimizee training loss over those steps (the meta-loss); gradients of the optimizee loss are inputs
(not differentiated: first-order meta-gradients, as Andrychowicz et al.); the inner runs' state carries
from one unroll to the next within an epoch, and every epoch holds whole inner runs, so the per-epoch
checkpoint resumes exactly. Validation runs the optimizer for ``eval_steps`` steps on held-out inner runs
of the meta-training task; the test splits do the same on the meta-test task (``test``: another data set
and a wider CNN) and on the meta-training task (``test_train_task``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from neuralgraph.convert import ConversionPlan, get_plan
from neuralgraph.data.arch import build_model, example_input
from neuralgraph.data.graph import NeuralGraph
from neuralgraph.models.registry import list_models, model_arguments, model_class, model_task, register_model
from neuralgraph.nn.feedforward import mlp
from neuralgraph.nn.nf_layers import NFFeatures
from neuralgraph.tasks.base import IncompatibleModelError, Task, register_task
from neuralgraph.zoo.datasets import DATASETS, load_image_data

__all__ = ["L2OTask", "L2OConfig", "Optimizee", "LearnedOptimizer", "FFContext", "LSTMContext", "Adam", "SGD",
           "preprocess", "BETAS", "NUM_FEATURES"]

#: momentum decay rates of the features (Metz et al. 2019)
BETAS = (0.5, 0.9, 0.99, 0.999, 0.9999)
#: values per parameter (the parameter, its gradient, one momentum per decay rate), each preprocessed to two
NUM_FEATURES = 2 * (2 + len(BETAS))
#: seed ranges of inner runs, disjoint per use (meta-training runs draw below the first)
_SEED_BASE = {"train": 0, "val": 10_000_000, "test": 20_000_000, "test_train_task": 20_000_000, "tune": 30_000_000}


def preprocess(v: Tensor, p: float = 10.0) -> Tensor:
    r"""Log / sign preprocessing of Andrychowicz et al. (2016): :math:`(\log|v| / p, \mathrm{sign}\, v)` if
    :math:`|v| \ge e^{-p}`, else :math:`(-1, e^p v)`. ``[..., k] -> [..., 2k]``."""
    big = v.abs() >= math.exp(-p)
    log = torch.where(big, v.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(v, -1.0))
    sign = torch.where(big, v.sign(), v * math.exp(p))
    return torch.stack([log, sign], -1).flatten(-2)


# ---------------------------------------------------------------------------------------------- optimizee
def cnn_description(widths: Sequence[int], input_size: Sequence[int], n_classes: int) -> dict[str, Any]:
    """The optimizee architecture: 3x3 convs (padding 1, ReLU), global average pooling, a linear classifier."""
    layers = [{"kind": "conv", "out": int(w), "kernel": 3, "stride": 1, "padding": 1, "pool": 0, "act": "relu"}
              for w in widths]
    return {"family": "cnn", "in_channels": 1, "input_size": list(input_size), "n_classes": n_classes,
            "layers": layers + [{"kind": "gap"}, {"kind": "linear", "out": n_classes, "act": "identity"}]}


class Optimizee:
    """One inner problem: a CNN of the given widths trained on one image data set.

    Parameters travel as ``{name: tensor}`` dicts (``functional_call`` on one template module); the neural
    graph of a step is a gather of per-parameter features into the cached plan's structure.

    Args:
        data (str): an image data set of :mod:`neuralgraph.zoo.datasets` (``digits``, ``mnist1d``, ``shapes``).
        widths (sequence of int): conv channels.
        batch_size (int): images per minibatch.
        max_kernel (tuple): converter option (``(3, 3)``: one edge feature per kernel tap).
    """

    def __init__(self, data: str, widths: Sequence[int], batch_size: int, max_kernel: Sequence[int] = (3, 3)):
        self.name = f"{data}-cnn-{'-'.join(map(str, widths))}"
        self.data = load_image_data(data)
        self.desc = cnn_description(widths, self.data.input_size, self.data.n_classes)
        with torch.random.fork_rng():  # the template must not move the seeded global RNG
            self.module = build_model(self.desc)
        self.batch_size = batch_size
        self.plan: ConversionPlan = get_plan(self.module, example_input(self.desc), max_kernel=tuple(max_kernel))
        self.names = list(self.plan.gather_names)  # the order of the vector the plan's index maps refer to
        missing = [n for n, _ in self.module.named_parameters() if n not in self.names]
        if missing:
            raise AssertionError(f"the neural graph of {self.name} does not hold {missing}")
        self.shapes = {n: tuple(self.plan.param_shapes[n]) for n in self.names}
        self.numel = {n: math.prod(s) for n, s in self.shapes.items()}
        self._device: dict[torch.device, dict[str, Tensor]] = {}

    def on(self, device: torch.device) -> dict[str, Tensor]:
        """The data set's tensors on ``device`` (moved once)."""
        device = torch.device(device)
        if device not in self._device:
            d = self.data
            self._device[device] = {k: v.to(device) for k, v in dict(
                x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test).items()}
        return self._device[device]

    # ------------------------------------------------------------------ training the optimizee
    def init(self, seed: int, device: torch.device) -> dict[str, Tensor]:
        """Fresh parameters (torch's default initialisation, seeded)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            module = build_model(self.desc)
        return {n: p.detach().to(device) for n, p in module.named_parameters()}

    def loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(self.module, params, (x,)), y)

    def minibatch(self, gen: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        t = self.on(device)
        idx = torch.randint(t["y_train"].numel(), (self.batch_size,), generator=gen).to(device)
        return t["x_train"][idx], t["y_train"][idx]

    @torch.no_grad()
    def evaluate(self, params: dict[str, Tensor], split: str = "test") -> tuple[float, float]:
        """Mean cross-entropy and accuracy on the data set's ``test`` (or ``train``) split."""
        t = self.on(next(iter(params.values())).device)
        x, y = t[f"x_{split}"], t[f"y_{split}"]
        loss, correct = 0.0, 0
        for xs, ys in zip(x.split(512), y.split(512)):
            out = functional_call(self.module, params, (xs,))
            loss += float(F.cross_entropy(out, ys, reduction="sum"))
            correct += int((out.argmax(-1) == ys).sum())
        return loss / y.numel(), correct / y.numel()

    # ------------------------------------------------------------------ optimizer inputs
    def flat(self, values: dict[str, Tensor]) -> Tensor:
        """``{name: [*shape, C]}`` -> ``[P, C]`` in the plan's gather order."""
        return torch.cat([values[n].reshape(self.numel[n], -1) for n in self.names])

    def unflat(self, flat: Tensor) -> dict[str, Tensor]:
        """``[P, C]`` -> ``{name: [*shape, C]}`` (``C`` may be 0)."""
        parts = flat.split([self.numel[n] for n in self.names])
        return {n: v.reshape(*self.shapes[n], flat.size(-1)) for n, v in zip(self.names, parts)}

    def graph(self, feats: dict[str, Tensor]) -> NeuralGraph:
        """The optimizee's neural graph with per-parameter features ``{name: [*shape, C]}`` in place of the
        parameter values (:meth:`ConversionPlan.feature_graph`: ``C + 1`` channels per slot, the plan's
        constant first). One gather into the plan's fixed structure; differentiable."""
        return self.plan.feature_graph(feats)

    def read_graph(self, node: Tensor, edge: Tensor) -> dict[str, Tensor]:
        """Per-node ``[N, F_node * c]`` / per-edge ``[E, F_edge * c]`` outputs -> ``{name: [*shape, c]}``."""
        p = self.plan
        c = edge.size(1) // p.config.edge_dim
        return p.read(edge.view(p.num_edges, p.config.edge_dim, c), node.view(p.num_nodes, p.config.node_dim, c))

    @property
    def weight_shapes(self) -> tuple:
        """The :attr:`WeightSpace.signature` of the optimizee."""
        return tuple((self.shapes[w], (self.shapes[w][0],)) for w, _ in self.plan.layers)

    def nf_features(self, feats: dict[str, Tensor]) -> NFFeatures:
        """``{name: [*shape, C]}`` as one network's NF-layer features (``[1, out, in, C * taps]`` per layer,
        channel-major, as :class:`~neuralgraph.nn.nf_layers.IOEncoding` lays them out)."""
        weights, biases = [], []
        for w, b in self.plan.layers:
            f = feats[w]
            out, inp, C = f.size(0), f.size(1), f.size(-1)
            weights.append(f.reshape(out, inp, -1, C).transpose(2, 3).reshape(1, out, inp, -1))
            biases.append((feats[b] if b else f.new_zeros(out, C)).unsqueeze(0))
        return NFFeatures(tuple(weights), tuple(biases))

    def read_nf(self, out: NFFeatures) -> dict[str, Tensor]:
        """NF-layer outputs (``c`` channels) -> ``{name: [*shape, c]}``."""
        values = {}
        for (w, b), ow, ob in zip(self.plan.layers, out.weights, out.biases):
            shape = self.shapes[w]
            taps, c = math.prod(shape[2:]), ob.size(-1)
            values[w] = ow[0].reshape(shape[0], shape[1], c, taps).transpose(2, 3).reshape(*shape, c)
            if b:
                values[b] = ob[0]
        return values


# ---------------------------------------------------------------------------------------------- optimizers
def _momenta(state: dict[str, Tensor] | None, grads: dict[str, Tensor]) -> dict[str, Tensor]:
    """Momenta ``[*shape, len(BETAS)]`` after this step's gradients."""
    out = {}
    for k, g in grads.items():
        beta = torch.tensor(BETAS, dtype=g.dtype, device=g.device)
        prev = state[k] if state is not None else g.new_zeros(*g.shape, len(BETAS))
        out[k] = beta * prev + (1 - beta) * g.unsqueeze(-1)
    return out


def step_features(params: dict[str, Tensor], grads: dict[str, Tensor],
                  momenta: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-parameter features ``[*shape, NUM_FEATURES]``: parameter, gradient and momenta, preprocessed."""
    return {k: preprocess(torch.cat([params[k].unsqueeze(-1), grads[k].unsqueeze(-1), momenta[k]], -1))
            for k in params}


@register_model("ff", task="l2o")
class FFContext(nn.Module):
    """The FF learned optimizer of Metz et al. (2019): the update rule alone, no context (``l2o`` only)."""

    input_kind: ClassVar[str] = "parameters"
    out_dim: ClassVar[int] = 0

    def initial_state(self, problem: Optimizee, device: torch.device) -> dict[str, Tensor]:
        return {}

    def forward(self, problem: Optimizee, feats: dict[str, Tensor], state: dict[str, Tensor]):
        return {k: v.new_zeros(*v.shape[:-1], 0) for k, v in feats.items()}, state


@register_model("lstm", task="l2o")
class LSTMContext(nn.Module):
    r"""A per-parameter LSTM over the inner steps (Andrychowicz et al. 2016) whose input is the parameter's
    features and the mean features of its tensor (the layer features of Metz et al. 2020's FF + layerwise
    LSTM); its hidden state is the context of the FF update rule (``l2o`` only).

    Args:
        hidden (int, optional): LSTM state size per parameter. (default: :obj:`16`)

    Shapes:
        - **input:** ``{name: [*shape, NUM_FEATURES]}`` and the state ``h, c [P, hidden]``
        - **output:** ``{name: [*shape, hidden]}`` and the new state
    """

    input_kind: ClassVar[str] = "parameters"

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.out_dim = hidden
        self.cell = nn.LSTMCell(2 * NUM_FEATURES, hidden)

    def initial_state(self, problem: Optimizee, device: torch.device) -> dict[str, Tensor]:
        P = sum(problem.numel.values())
        z = torch.zeros(P, self.out_dim, device=device)
        return {"h": z, "c": z.clone()}

    def forward(self, problem: Optimizee, feats: dict[str, Tensor], state: dict[str, Tensor]):
        layer = {k: v.reshape(-1, v.size(-1)).mean(0).expand_as(v) for k, v in feats.items()}  # tensor means
        inp = torch.cat([problem.flat(feats), problem.flat(layer)], -1)    # [P, 2 F]
        h, c = self.cell(inp, (state["h"], state["c"]))                    # [P, hidden]
        return problem.unflat(h), {"h": h, "c": c}


class LearnedOptimizer(nn.Module):
    r"""The FF update rule conditioned on per-parameter context from an encoder (see the module docstring):
    what the ``l2o`` task meta-trains for ``ff``, ``lstm``, ``nfn-*``, ``ng-gnn`` and ``ng-t``.

    Args:
        encoder (nn.Module): an ``input_kind="parameters"`` context model (``ff``, ``lstm``), a graph model
            with an equivariant head, or an NFN with an equivariant head.
        context (int): context values per parameter the encoder gives.
        hidden (int): width of the FF rule. layers (int): its hidden layers.
        step_scale (float): :math:`\lambda_1`. mag_scale (float): :math:`\lambda_2`.
    """

    def __init__(self, encoder: nn.Module, context: int, hidden: int, layers: int, step_scale: float,
                 mag_scale: float):
        super().__init__()
        self.encoder, self.context = encoder, context
        self.step_scale, self.mag_scale = step_scale, mag_scale
        self.rule = mlp(NUM_FEATURES + context, [hidden] * layers, 2, act="relu")
        with torch.no_grad():  # small first updates: training starts from a nearly frozen optimizee
            self.rule.lins[-1].weight.mul_(0.1)
            self.rule.lins[-1].bias.zero_()

    @property
    def input_kind(self) -> str:
        return self.encoder.input_kind

    def initial_state(self, problem: Optimizee, device: torch.device) -> dict[str, Any]:
        enc = self.encoder.initial_state(problem, device) if self.input_kind == "parameters" else {}
        return {"momenta": None, "encoder": enc}

    def encode(self, problem: Optimizee, feats: dict[str, Tensor], state: dict[str, Tensor]):
        """Context ``{name: [*shape, context]}`` of this step, and the encoder's new state."""
        kind = self.input_kind
        if kind == "parameters":
            return self.encoder(problem, feats, state)
        if kind == "graph":
            out = self.encoder(problem.graph(feats))                       # per node / per edge
            return problem.read_graph(out.node, out.edge), state
        if kind == "weights":
            return problem.read_nf(self.encoder(problem.nf_features(feats))), state
        raise ValueError(f"unknown input_kind {kind!r}")

    def forward(self, problem: Optimizee, params: dict[str, Tensor], grads: dict[str, Tensor],
                state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The update of every parameter (``{name: [*shape]}``) and the optimizer's new state."""
        momenta = _momenta(state["momenta"], grads)
        feats = step_features(params, grads, momenta)                       # name -> [*shape, 14]
        ctx, enc_state = self.encode(problem, feats, state["encoder"])
        inp = torch.cat([problem.flat(feats), problem.flat(ctx)], -1)       # [P, 14 + context]
        d, m = self.rule(inp).unbind(-1)                                    # [P]
        delta = self.step_scale * d * torch.exp(self.mag_scale * m)
        return {k: v.squeeze(-1) for k, v in problem.unflat(delta.unsqueeze(-1)).items()}, \
            {"momenta": momenta, "encoder": enc_state}


class HandWritten(nn.Module):
    """A hand-written optimizer (no trainable parameters); ``lr=None``: tuned by the task's grid."""

    input_kind: ClassVar[str] = "parameters"

    def __init__(self, lr: float | None, lr_grid: Sequence[float]):
        super().__init__()
        if not lr_grid and lr is None:
            raise ValueError(f"{type(self).__name__.lower()}: give lr or a non-empty lr_grid to tune it on")
        self.lr_grid = tuple(float(v) for v in lr_grid)
        self.register_buffer("lr", torch.tensor(float("nan") if lr is None else float(lr)))

    @property
    def tuned(self) -> bool:
        return not bool(torch.isnan(self.lr))


@register_model("adam", task="l2o")
class Adam(HandWritten):
    """Adam (Kingma & Ba 2015) as an optimizer of the ``l2o`` task (that task only).

    Args:
        lr (float, optional): learning rate; ``None``: the best of ``lr_grid`` on the meta-training task.
        lr_grid (sequence of float, optional): candidate learning rates.
        beta1, beta2, eps (float, optional): Adam's constants. (default: 0.9, 0.999, 1e-8)
    """

    def __init__(self, lr: float | None = None, lr_grid: Sequence[float] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(lr, lr_grid)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def initial_state(self, problem: Optimizee, device: torch.device) -> dict[str, Any]:
        return {"t": 0, "m": None, "v": None}

    def forward(self, problem, params, grads, state):
        t = state["t"] + 1
        m = {k: g * (1 - self.beta1) + (state["m"][k] * self.beta1 if state["m"] else 0) for k, g in grads.items()}
        v = {k: g * g * (1 - self.beta2) + (state["v"][k] * self.beta2 if state["v"] else 0) for k, g in grads.items()}
        c1, c2 = 1 - self.beta1 ** t, 1 - self.beta2 ** t
        upd = {k: -self.lr * (m[k] / c1) / ((v[k] / c2).sqrt() + self.eps) for k in grads}
        return upd, {"t": t, "m": m, "v": v}


@register_model("sgd", task="l2o")
class SGD(HandWritten):
    """SGD with (heavy-ball) momentum as an optimizer of the ``l2o`` task (that task only).

    Args:
        lr (float, optional): learning rate; ``None``: the best of ``lr_grid`` on the meta-training task.
        lr_grid (sequence of float, optional): candidate learning rates.
        momentum (float, optional): (default: 0.9)
    """

    def __init__(self, lr: float | None = None, lr_grid: Sequence[float] = (1e-2, 3e-2, 0.1, 0.3, 1.0),
                 momentum: float = 0.9):
        super().__init__(lr, lr_grid)
        self.momentum = momentum

    def initial_state(self, problem: Optimizee, device: torch.device) -> dict[str, Any]:
        return {"buf": None}

    def forward(self, problem, params, grads, state):
        buf = {k: g + (state["buf"][k] * self.momentum if state["buf"] else 0) for k, g in grads.items()}
        return {k: -self.lr * b for k, b in buf.items()}, {"buf": buf}


# ---------------------------------------------------------------------------------------------- the task
@dataclass
class L2OConfig:
    train_data: str = "digits"  # meta-training optimizee data set (digits, mnist1d, shapes)
    train_widths: tuple[int, ...] = (8, 16, 16)  # conv channels of the meta-training optimizee
    test_data: str = "shapes"  # meta-test optimizee data set (a different task)
    test_widths: tuple[int, ...] = (16, 32, 32)  # conv channels of the meta-test optimizee (wider)
    inner_batch: int = 64  # images per optimizee minibatch
    inner_steps: int = 200  # steps of one meta-training inner run (a fresh optimizee each run)
    unroll: int = 20  # truncated-BPTT length: inner steps per meta-gradient step (divides inner_steps)
    runs_per_epoch: int = 4  # meta-training inner runs per epoch, in groups of train.batch_size per meta-step
    eval_steps: int = 200  # K: steps of every evaluation run (validation, tests, the lr grid)
    eval_every: int = 20  # test accuracy of evaluation runs recorded every this many steps
    val_runs: int = 2  # held-out inner runs of the meta-training task (model selection)
    test_runs: int = 3  # inner runs per test split
    tune_runs: int = 2  # inner runs per learning rate of the hand-written optimizers' grid
    context: int = 4  # context values per parameter from a graph / NFN encoder
    ff_hidden: int = 32  # width of the FF update rule (every learned optimizer)
    ff_layers: int = 2  # hidden layers of the FF update rule
    # lambda_1 of the update d * exp(lambda_2 * m). 0.1 let meta-training kill the optimizee (val meta-loss
    # stuck at ln 10) in 1 of 2 ff seeds measured; 0.01 did not (docs/results.md, l2o)
    step_scale: float = 0.01
    mag_scale: float = 0.1  # lambda_2
    max_kernel: tuple[int, ...] = (3, 3)  # converter option: one edge feature column per kernel tap


@dataclass(frozen=True)
class RunSplit:
    """A split of inner runs: which optimizee (``"train"``: the meta-training one, ``"test"``: the meta-test
    one) and how many runs (per epoch, for the train split)."""

    optimizee: str
    runs: int

    def __len__(self) -> int:
        return self.runs


@dataclass(frozen=True)
class Unroll:
    """One meta-training batch: segment ``segment`` (``steps`` inner steps) of the inner runs ``seeds``."""

    seeds: tuple[int, ...]
    segment: int
    steps: int
    device: torch.device = torch.device("cpu")

    def to(self, device, non_blocking: bool = False) -> "Unroll":
        return dataclasses.replace(self, device=torch.device(device))


@dataclass(frozen=True)
class Rollout:
    """One evaluation batch: the inner run ``seed`` of split ``split``, ``steps`` steps long."""

    split: str
    seed: int
    steps: int
    device: torch.device = torch.device("cpu")

    def to(self, device, non_blocking: bool = False) -> "Rollout":
        return dataclasses.replace(self, device=torch.device(device))


@dataclass
class _Run:
    """The state of one inner run: optimizee parameters, optimizer state, data stream, pending minibatch."""

    seed: int
    params: dict[str, Tensor]
    state: dict[str, Any]
    gen: torch.Generator
    batch: tuple[Tensor, Tensor]


def _detach(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.detach()
    if isinstance(v, dict):
        return {k: _detach(x) for k, x in v.items()}
    return v


@register_task("l2o")
class L2OTask(Task):
    """Learning to optimize (Neural Graphs §4.3): meta-train an optimizer on small CNNs of one data set,
    test it on a wider CNN of another. Metrics per split (means over its inner runs, after ``eval_steps``
    steps): optimizee test ``accuracy`` and ``test_loss``, full-training-set ``train_loss``, and
    ``meta_loss`` (the mean minibatch training loss over the run, what meta-training minimises; selection)."""

    Config = L2OConfig
    output: ClassVar[str] = "parameters"
    select_metric: ClassVar[str] = "meta_loss"
    select_mode: ClassVar[str] = "min"
    figure: ClassVar[str | None] = "curves"

    def __init__(self, cfg: L2OConfig):
        super().__init__(cfg)
        for key in ("train_data", "test_data"):
            if getattr(cfg, key) not in DATASETS:
                raise ValueError(f"task.{key}={getattr(cfg, key)!r}: Could not resolve it among choices {DATASETS}")
        if cfg.inner_steps % cfg.unroll:
            raise ValueError(f"task.unroll={cfg.unroll} must divide task.inner_steps={cfg.inner_steps}")
        self._problems: dict[str, Optimizee] = {}
        self._live: dict[int, _Run] = {}  # meta-training runs in progress, by slot

    # ------------------------------------------------------------------ data
    def problem(self, which: str) -> Optimizee:
        """The meta-training (``"train"``) or meta-test (``"test"``) optimizee, built once."""
        if which not in self._problems:
            c = self.cfg
            data, widths = (c.train_data, c.train_widths) if which == "train" else (c.test_data, c.test_widths)
            self._problems[which] = Optimizee(data, widths, c.inner_batch, c.max_kernel)
        return self._problems[which]

    def build_splits(self) -> dict[str, RunSplit]:
        """The splits' inner runs: meta-training, validation and both tests (``tune``, the hand-written
        optimizers' grid, is not a split: it never reaches the results)."""
        c = self.cfg
        return {"train": RunSplit("train", c.runs_per_epoch), "val": RunSplit("train", c.val_runs),
                "test": RunSplit("test", c.test_runs), "test_train_task": RunSplit("train", c.test_runs)}

    def describe_data(self) -> str:
        c, train, test = self.cfg, self.problem("train"), self.problem("test")
        return (f"data: train (meta-training) {train.name} ({c.runs_per_epoch} inner runs x {c.inner_steps} steps per "
                f"epoch), "
                f"val {c.val_runs} runs, test {test.name} {c.test_runs} runs, test_train_task {c.test_runs} runs "
                f"({c.eval_steps} steps each)")

    def _split(self, split: str) -> RunSplit:
        if split == "tune":
            return RunSplit("train", self.cfg.tune_runs)
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; choose from {sorted(self.splits)}")
        return self.splits[split]

    def loader(self, split: str, input_kind: str, batch_size: int, sampler: Any = None, pin_memory: bool = False):
        """``train``: the epoch's :class:`Unroll` batches (``runs_per_epoch`` groups of ``batch_size`` inner
        runs, each cut into ``inner_steps / unroll`` segments, fresh seeds every epoch, drawn from the training
        loop's ``sampler`` seed and epoch); any other split: one :class:`Rollout` per held-out inner run.
        Meta-training runs in one process (its inner runs are stateful across batches)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError("the l2o task runs in one process: its meta-training batches continue stateful inner "
                             "runs; start it with python -m benchmarks.run, not torchrun")
        c = self.cfg
        if split == "train":
            key = 0 if sampler is None else sampler.seed + sampler.epoch  # (seed, epoch) of the training loop
            gen = torch.Generator().manual_seed(key)
            seeds = torch.randint(_SEED_BASE["val"], (c.runs_per_epoch * batch_size,), generator=gen).tolist()
            return [Unroll(tuple(seeds[i:i + batch_size]), s, c.unroll) for i in range(0, len(seeds), batch_size)
                    for s in range(c.inner_steps // c.unroll)]
        return [Rollout(split, _SEED_BASE[split] + i, c.eval_steps) for i in range(len(self._split(split)))]

    # ------------------------------------------------------------------ models
    def model_kwargs(self, model_name: str) -> dict[str, Any]:
        """Sizes for a learned optimizer's encoder: graph models get the feature graph's widths and an
        equivariant head of ``context`` values per parameter; NFNs the weight space of the meta-training
        optimizee with ``NUM_FEATURES`` channels; the task's own models (``ff``, ``lstm``, ``adam``, ``sgd``)
        nothing. Other models are refused with the reason."""
        owner = model_task(model_name)
        able = list_models(task=self.name)
        if owner is not None and owner != self.name:
            raise IncompatibleModelError(f"{model_name} is a model of the {owner} task only; the l2o task takes {able}")
        cls, accepted = model_class(model_name), model_arguments(model_name)
        if owner == self.name:
            return {}
        head = getattr(cls, "parameter_head", None)
        if head is None or (cls.input_kind == "weights" and "in_channels" not in accepted):
            usable = [n for n in able if model_task(n) or (getattr(model_class(n), "parameter_head", None) and (
                model_class(n).input_kind == "graph" or "in_channels" in model_arguments(n)))]
            why = ("outputs one value per network" if head is None else
                   "reads one fixed architecture's flat parameter vector (l2o feeds several features per parameter "
                   "and meta-tests on a wider optimizee)")
            raise IncompatibleModelError(f"{model_name} {why}, but a learned optimizer needs an update per "
                                         f"parameter of any width; use one of {usable}")
        problem, ctx = self.problem("train"), self.cfg.context
        f_node, f_edge = problem.plan.config.node_dim, problem.plan.config.edge_dim
        if cls.input_kind == "graph":
            kw = dict(node_in=f_node * (NUM_FEATURES + 1), edge_in=f_edge * (NUM_FEATURES + 1), out_dim=f_edge * ctx,
                      node_out_dim=f_node * ctx, head=head)
        else:
            kw = dict(weight_shapes=problem.weight_shapes, in_channels=NUM_FEATURES, out_dim=ctx, head=head)
        return {k: v for k, v in kw.items() if k in accepted}

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """A hand-written optimizer as it is (its learning rate tuned first if not given); any other model
        becomes the encoder of a :class:`LearnedOptimizer`."""
        if isinstance(model, HandWritten):
            if not model.tuned:
                self.tune_lr(model)
            return model
        if model.input_kind == "graph" and hasattr(model, "fit_statistics"):  # NG-GNN's degrees: the optimizee's graph
            problem = self.problem("train")
            model.fit_statistics([problem.graph({n: torch.zeros(*s, NUM_FEATURES) for n, s in problem.shapes.items()})])
        context = model.out_dim if model.input_kind == "parameters" else self.cfg.context
        c = self.cfg
        return LearnedOptimizer(model, context, c.ff_hidden, c.ff_layers, c.step_scale, c.mag_scale)

    @torch.no_grad()
    def tune_lr(self, model: HandWritten) -> float:
        """Set ``model.lr`` to the grid value with the lowest mean ``meta_loss`` over ``tune_runs`` inner runs
        of the meta-training task (seeds apart from validation and test); prints the grid."""
        scores = []
        for lr in model.lr_grid:
            model.lr.fill_(lr)
            runs = [self.rollout(model, r) for r in self.loader("tune", model.input_kind, 1)]
            score = float(np.mean([r["meta_loss"] for r in runs]))
            scores.append(score if math.isfinite(score) else math.inf)
        best = int(np.argmin(scores))
        model.lr.fill_(model.lr_grid[best])
        print(f"l2o: {type(model).__name__} learning-rate grid on {self.problem('train').name} "
              f"({self.cfg.tune_runs} runs x {self.cfg.eval_steps} steps, mean training loss):")
        for lr, s in zip(model.lr_grid, scores):
            print(f"  lr={lr:<8g} meta_loss={s:.4f}{'  <- chosen' if lr == model.lr_grid[best] else ''}")
        return model.lr_grid[best]

    # ------------------------------------------------------------------ inner runs
    def _start(self, opt: nn.Module, problem: Optimizee, seed: int, device: torch.device) -> _Run:
        gen = torch.Generator().manual_seed(seed)
        params = problem.init(seed, device)
        return _Run(seed, params, opt.initial_state(problem, device), gen, problem.minibatch(gen, device))

    def _step(self, opt: nn.Module, problem: Optimizee, run: _Run, track: bool) -> tuple[Tensor, _Run]:
        """One inner step from ``run``; returns the minibatch loss at the starting parameters. With ``track``
        the new parameters stay differentiable with respect to the optimizer (the optimizee's gradients are
        inputs either way)."""
        x, y = run.batch
        with torch.enable_grad():
            params = run.params if track else {k: v.detach().requires_grad_(True) for k, v in run.params.items()}
            loss = problem.loss(params, x, y)
            grads = torch.autograd.grad(loss, list(params.values()), retain_graph=track)
        grads = {k: g.detach() for k, g in zip(params, grads)}
        update, state = opt(problem, params, grads, run.state)
        new = {k: v + update[k] for k, v in params.items()}
        if not track:
            new = {k: v.detach() for k, v in new.items()}
        return loss, _Run(run.seed, new, state, run.gen, problem.minibatch(run.gen, x.device))

    def loss(self, model: nn.Module, batch: Unroll) -> Tensor:
        """The meta-loss of one truncated unroll: the optimizee's minibatch training loss after each of the
        ``steps`` updates, averaged over the steps and the batch's inner runs."""
        problem, total = self.problem("train"), 0.0
        for slot, seed in enumerate(batch.seeds):
            if batch.segment == 0:
                run = self._start(model, problem, seed, batch.device)
            else:
                run = self._live.get(slot)
                if run is None or run.seed != seed:
                    raise RuntimeError("l2o: an unroll continues an inner run that is not in progress; the train "
                                       "split's batches must be taken in order, one epoch at a time")
            run = _Run(seed, {k: v.detach().requires_grad_(True) for k, v in run.params.items()},
                       _detach(run.state), run.gen, run.batch)
            losses = []
            for i in range(batch.steps):
                loss, run = self._step(model, problem, run, track=True)  # the loss at the step's start
                if i:
                    losses.append(loss)
            losses.append(problem.loss(run.params, *run.batch))  # after the last update
            total = total + torch.stack(losses).mean()
            self._live[slot] = _Run(seed, _detach(run.params), _detach(run.state), run.gen, run.batch)
        return total / len(batch.seeds)

    def rollout(self, opt: nn.Module, r: Rollout) -> dict[str, Any]:
        """Run ``opt`` for ``r.steps`` steps on a fresh optimizee; the records of :meth:`predict`."""
        c = self.cfg
        problem = self.problem(self._split(r.split).optimizee)
        run = self._start(opt, problem, r.seed, r.device)
        curve, eval_steps, acc_curve = [], [], []
        for t in range(r.steps + 1):
            if t % c.eval_every == 0 or t == r.steps:
                eval_steps.append(t)
                acc_curve.append(problem.evaluate(run.params)[1])
            if t == r.steps:
                break
            loss, run = self._step(opt, problem, run, track=False)
            curve.append(float(loss))
        test_loss, acc = problem.evaluate(run.params)
        train_loss, _ = problem.evaluate(run.params, "train")
        return {"accuracy": acc, "test_loss": test_loss, "train_loss": train_loss,
                "meta_loss": float(np.mean(curve[1:] or curve)), "curve_train_loss": curve,
                "curve_step": eval_steps, "curve_test_accuracy": acc_curve}

    def predict(self, model: nn.Module, batch: Rollout) -> dict[str, Tensor]:
        rec = self.rollout(model, batch)
        return {k: torch.tensor([v], dtype=torch.float64) for k, v in rec.items()}  # [1, ...] per inner run

    def metrics(self, records: dict[str, np.ndarray]) -> dict[str, float]:
        return {k: float(np.mean(records[k])) for k in ("accuracy", "test_loss", "train_loss", "meta_loss")}
