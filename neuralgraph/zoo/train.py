"""Vectorised training of many networks of one architecture at once.

A *group* is ``M`` members that share an architecture (and train fraction) but have their own
initialisation, hyperparameters (optimizer, learning rate, L2, dropout, init scheme and scale)
and data order. Their parameters are stacked along a leading member dim (``[M, out, in, k, k]``)
and trained together: a conv layer of all members is one grouped convolution
(``groups=M``, activations laid out ``[B, M * C, H, W]``), a linear layer one batched matmul, and
the optimizers (Adam, RMSProp, SGD, mixed within a group) are applied elementwise with
per-member learning rates. Each member's loss gradient only reaches its own parameters, so this
is exactly ``M`` independent training runs, done with a few large kernels instead of many tiny
ones (a ~3-10x speed-up on one CPU core for these small CNNs).

The batched forwards below mirror :mod:`neuralgraph.zoo.arch` line by line; the tests check that
a member's parameters loaded into ``build_model(desc)`` give the same outputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neuralgraph.zoo.arch import build_model, canonical_activation

_ACT_FN: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu, "gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "leaky_relu": F.leaky_relu, "identity": lambda t: t,
}
OPTIMIZERS = ("adam", "rmsprop", "sgd")
INIT_SCHEMES = ("he_normal", "glorot_normal", "orthogonal", "normal", "truncated_normal")


@dataclass
class MemberSpec:
    """One run of a group: its hyperparameters and seed."""

    run_id: str
    seed: int
    hparams: dict[str, Any]


@dataclass
class MemberResult:
    run_id: str
    params: dict[str, np.ndarray]              # name -> [n_checkpoints, *shape]
    checkpoints: list[dict[str, Any]]          # per checkpoint: epoch, step, metrics
    diverged: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------------------------
def init_member(shapes: dict[str, torch.Size], scheme: str, scale: float, gen: torch.Generator) -> dict[str, Tensor]:
    """Fresh parameters for one member (weights by ``scheme``, biases zero).

    ``he_normal`` / ``glorot_normal`` use their standard std; ``orthogonal`` has gain 1; ``normal``
    and ``truncated_normal`` (cut at 2 std) use std ``scale`` (Unterthiner et al.'s ``init_std``).
    """
    out = {}
    for name, shape in shapes.items():
        if name.endswith("bias") or len(shape) < 2:
            out[name] = torch.zeros(shape)
            continue
        fan_in = int(np.prod(shape[1:]))
        fan_out = int(shape[0] * np.prod(shape[2:]))
        w = torch.empty(shape)
        if scheme == "he_normal":
            w.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
        elif scheme == "glorot_normal":
            w.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)), generator=gen)
        elif scheme == "orthogonal":
            torch.nn.init.orthogonal_(w, generator=gen)
        elif scheme == "normal":
            w.normal_(0.0, scale, generator=gen)
        elif scheme == "truncated_normal":
            torch.nn.init.trunc_normal_(w, 0.0, scale, -2 * scale, 2 * scale, generator=gen)
        else:
            raise ValueError(f"unknown init scheme {scheme!r}; choose from {INIT_SCHEMES}")
        out[name] = w
    return out


# ---------------------------------------------------------------------------------------------
# batched forwards: x [B, M, C, H, W] (or shared [B, C, H, W]) -> logits [B, M, K]
#
# Internally activations are stored "NHWMC": [B, H, W, M, C] contiguous, which is exactly the
# channels-last layout of the grouped convolution's [B, M * C, H, W] tensors. oneDNN's grouped
# convolution is considerably faster channels-last (2-6x for one input channel or few channels,
# ~10% for 32), and the conv outputs come back in that layout, so no reshape ever copies.
# ---------------------------------------------------------------------------------------------
def _nhwmc(x: Tensor) -> Tensor:
    """``[B, M, C, H, W]`` -> ``[B, H, W, M, C]`` contiguous (free if ``x`` is a view of one)."""
    return x.permute(0, 3, 4, 1, 2).contiguous()


def _conv(h: Tensor, w: Tensor, b: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """Per-member convolution. ``h`` ``[B, H, W, M, C]`` (or a shared input ``[B, C, H, W]``),
    ``w`` ``[M, Co, C, k, k]``, ``b`` ``[M, Co]`` -> ``[B, H', W', M, Co]``."""
    M, Co = w.shape[:2]
    w2 = w.reshape(M * Co, *w.shape[2:])
    if h.dim() == 4:                                          # shared input: one dense conv, M*Co outputs
        x, groups = h.contiguous(memory_format=torch.channels_last), 1
    else:
        B, H, W, _, C = h.shape
        x, groups = h.reshape(B, H, W, M * C).permute(0, 3, 1, 2), M   # channels-last view
    out = F.conv2d(x, w2, b.reshape(-1), stride=stride, padding=padding, groups=groups)
    return out.permute(0, 2, 3, 1).reshape(out.shape[0], out.shape[2], out.shape[3], M, Co)


def _maxpool(h: Tensor, k: int) -> Tensor:
    B, H, W, M, C = h.shape
    out = F.max_pool2d(h.reshape(B, H, W, M * C).permute(0, 3, 1, 2), k)
    return out.permute(0, 2, 3, 1).reshape(B, out.shape[2], out.shape[3], M, C)


def _linear(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return torch.baddbmm(b.unsqueeze(1), h.transpose(0, 1), w.transpose(1, 2)).transpose(0, 1)  # [B, M, out]


@dataclass
class Dropout:
    """Per-member inverted dropout with keep probabilities quantised to 1/256.

    Masks come from random bytes (one full-range 64-bit draw gives 8 of them), about 10x cheaper
    on CPU than ``torch.rand``; the effective keep probability ``(t + 1) / 256`` is what is used.
    The mask is built directly as ``0`` or ``1 / keep`` so the forward is one multiply (and the
    backward another).
    """

    threshold: Tensor                          # [M] uint8: keep where byte <= threshold
    keep: Tensor                               # [M] float: (threshold + 1) / 256
    gen: torch.Generator

    @staticmethod
    def create(dropout: list[float], gen: torch.Generator) -> "Dropout | None":
        thr = [min(255, max(0, int(round((1.0 - d) * 256)) - 1)) for d in dropout]
        if all(t == 255 for t in thr):
            return None
        t = torch.tensor(thr, dtype=torch.uint8)
        return Dropout(t, (t.float() + 1) / 256, gen)

    def __call__(self, h: Tensor, member_dim: int = 1) -> Tensor:
        """``h`` has its members along ``member_dim`` (3 for ``[B, H, W, M, C]``)."""
        n = h.numel()
        words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-2 ** 63, None, generator=self.gen)
        noise = words.view(torch.uint8)[:n].view(h.shape)
        shape = [1] * h.dim()
        shape[member_dim] = -1
        mask = torch.where(noise <= self.threshold.view(shape), (1.0 / self.keep).view(shape), 0.0)
        return h * mask


def _dropout(h: Tensor, drop: "Dropout | None", member_dim: int) -> Tensor:
    return h if drop is None else drop(h, member_dim)


def forward_wildpark(desc: dict, p: dict[str, Tensor], x: Tensor, drop: Dropout | None = None) -> Tensor:
    """Batched :class:`~neuralgraph.zoo.arch.WildParkCNN` forward (dropout after each activation).

    ``x``: ``[B, M, C, H, W]``, or ``[B, C, H, W]`` shared by all members."""
    channels, residual = desc["channels"], desc["residual"]
    sources = {j for j in residual if j >= 0}
    saved: dict[int, Tensor] = {}
    h = x if x.dim() == 4 else _nhwmc(x)                      # [B, H, W, M, C]
    for i, (k, act) in enumerate(zip(desc["kernels"], desc["activations"])):
        h = _conv(h, p[f"layers.{i}.weight"], p[f"layers.{i}.bias"], padding=k // 2)
        j = residual[i]
        if j >= 0:
            m = min(channels[i], channels[j])
            s = saved[j]
            if m == channels[i]:
                h = h + s[..., :m]
            else:
                h = torch.cat([h[..., :m] + s[..., :m], h[..., m:]], dim=-1)
        h = _dropout(_ACT_FN[act](h), drop, 3)
        if i in sources:
            saved[i] = h
    h = h.mean(dim=(1, 2))                                    # [B, M, C]
    return _linear(h, p["fc.weight"], p["fc.bias"])


def forward_cnn(desc: dict, p: dict[str, Tensor], x: Tensor, drop: Dropout | None = None) -> Tensor:
    """Batched :class:`~neuralgraph.zoo.arch.SequentialCNN` forward.

    ``x``: ``[B, M, C, H, W]``, or ``[B, C, H, W]`` shared by all members."""
    h, i = (x if x.dim() == 4 else _nhwmc(x)), 0
    specs = desc["layers"]
    last = max(n for n, s in enumerate(specs) if s["kind"] in ("conv", "linear"))
    for n, spec in enumerate(specs):
        kind = spec["kind"]
        if kind == "gap":
            h = h.mean(dim=(1, 2))                            # [B, M, C]
            continue
        if kind == "flatten":
            h = h.permute(0, 3, 4, 1, 2).flatten(2)           # [B, M, C * H * W] (torch's order)
            continue
        w, b = p[f"layers.{i}.weight"], p[f"layers.{i}.bias"]
        if kind == "conv":
            h = _conv(h, w, b, spec.get("stride", 1), spec.get("padding", 0))
            if spec.get("pool", 0):
                h = _maxpool(h, spec["pool"])
        else:
            h = _linear(h, w, b)
        h = _ACT_FN[canonical_activation(spec.get("act", "identity"))](h)
        if n != last:
            h = _dropout(h, drop, 3 if h.dim() == 5 else 1)
        i += 1
    return h


FORWARDS = {"wildpark": forward_wildpark, "cnn": forward_cnn}


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    epochs: int = 10                          # passes over each member's training subset
    checkpoint_epochs: tuple[int, ...] = (1, 2, 3, 5, 10)  # 0 = the initialisation
    batch_size: int = 32
    train_eval_size: int = 512                # train metrics on up to this many training examples
    eval_batch: int = 512


@torch.inference_mode()
def _evaluate(forward, desc, p, x: Tensor, y: Tensor, eval_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-member accuracy and mean loss. ``x`` is ``[N, M, C, H, W]`` (or shared ``[N, C, H, W]``),
    ``y`` ``[N, M]`` or ``[N]``."""
    M = next(iter(p.values())).shape[0]
    correct = torch.zeros(M, dtype=torch.float64)
    loss = torch.zeros(M, dtype=torch.float64)
    n = x.shape[0]
    for s in range(0, n, eval_batch):
        xb, yb = x[s:s + eval_batch], y[s:s + eval_batch]
        if yb.dim() == 1:
            yb = yb.unsqueeze(1).expand(-1, M)
        logits = forward(desc, p, xb)                         # [b, M, K]
        K = logits.shape[-1]
        ce = F.cross_entropy(logits.reshape(-1, K), yb.reshape(-1), reduction="none").view(-1, M)
        loss += ce.double().sum(0)
        correct += (logits.argmax(-1) == yb).double().sum(0)
    return (correct / n).numpy(), (loss / n).numpy()


def flat_parameters(shapes: dict[str, torch.Size], M: int) -> tuple[Tensor, dict[str, Tensor]]:
    """One ``[M, P]`` buffer holding every parameter of ``M`` members, and per-name views of it
    shaped ``[M, *shape]`` (leaves that require grad; update the buffer in place under no_grad)."""
    sizes = [int(np.prod(s)) for s in shapes.values()]
    flat = torch.zeros(M, sum(sizes))
    views, off = {}, 0
    for (k, shape), n in zip(shapes.items(), sizes):
        views[k] = flat[:, off:off + n].view(M, *shape).requires_grad_(True)
        off += n
    return flat, views


class VectorOptimizer:
    """Adam, RMSProp and plain SGD for stacked members, mixed freely within a group.

    One update rule covers all three: ``m = d1 m + (1 - d1) g``, ``v = d2 v + (1 - d2) g^2``,
    ``w -= lr * (m / c1) / (sqrt(v / c2) + eps)`` for adaptive members and ``w -= lr * g`` for SGD,
    with Adam's ``d1 = 0.9, d2 = 0.999`` and bias corrections ``c``, RMSProp's ``d1 = 0, d2 = 0.9``
    (Keras defaults). The loss gets ``l2 * ||W||^2`` for every weight (not bias) tensor.
    A member whose update is not finite keeps its parameters and is reported dead by :meth:`step`.

    The state and the update live in one ``[M, P]`` matrix (all parameters of a member in a row),
    so a step is a dozen large elementwise ops whatever the number of tensors. Pass ``flat`` when
    ``params`` are views of such a buffer (:func:`flat_parameters`): it is then updated in place
    directly; otherwise the parameters are gathered and written back each step.
    """

    def __init__(self, kinds: list[str], lr: list[float], l2: list[float], params: dict[str, Tensor],
                 flat: Tensor | None = None):
        for k in kinds:
            if k not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {k!r}; choose from {OPTIMIZERS}")
        M = len(kinds)
        self.params = params
        self.names = list(params)
        self.flat = flat
        self.sizes = [params[k][0].numel() for k in self.names]
        P = sum(self.sizes)
        self.is_adam = torch.tensor([k == "adam" for k in kinds])
        adaptive = torch.tensor([k != "sgd" for k in kinds])
        self.lr = torch.tensor(lr, dtype=torch.float32).view(M, 1)
        is_weight = torch.cat([torch.full((n,), not k.endswith("bias")) for k, n in zip(self.names, self.sizes)])
        self.l2x2 = (2 * torch.tensor(l2, dtype=torch.float32).view(M, 1)) * is_weight.float().view(1, P)
        self.d1 = torch.where(self.is_adam, 0.9, 0.0).view(M, 1)
        self.d2 = torch.where(self.is_adam, 0.999, 0.9).view(M, 1)
        self.adaptive = adaptive.float().view(M, 1)
        self.sgd_lr = (self.lr * (~adaptive).float().view(M, 1))
        self.any_sgd = bool((~adaptive).any())
        self.M, self.t, self.eps = M, 0, 1e-7
        self.m = torch.zeros(M, P)
        self.v = torch.zeros(M, P)

    def _gather(self, tensors) -> Tensor:
        return torch.cat([t.reshape(self.M, -1) for t in tensors], dim=1)

    @torch.no_grad()
    def step(self, grads: dict[str, Tensor | None], ok: Tensor) -> Tensor:
        """Update in place; returns ``[M]`` bool, False for members whose update was not finite."""
        self.t += 1
        c1 = torch.where(self.is_adam, 1 - 0.9 ** self.t, 1.0).view(self.M, 1)
        c2 = torch.where(self.is_adam, 1 - 0.999 ** self.t, 1.0).view(self.M, 1)
        w = self.flat if self.flat is not None else self._gather(self.params[k] for k in self.names)
        g = self._gather(grads[k] if grads[k] is not None else torch.zeros_like(self.params[k])
                         for k in self.names)                                   # [M, P]
        g = g.addcmul_(self.l2x2, w)
        m = torch.lerp(g, self.m, self.d1)                                      # d1 m + (1 - d1) g
        v = torch.lerp(g * g, self.v, self.d2)
        denom = v.sqrt().div_(c2.sqrt()).add_(self.eps)
        upd = torch.div(m, denom).mul_(self.lr * self.adaptive / c1)
        if self.any_sgd:
            upd.addcmul_(g, self.sgd_lr)
        finite = ok & torch.isfinite(upd.sum(1))
        if bool(finite.all()):
            w.sub_(upd)
            self.m, self.v = m, v
        else:
            f = finite.view(self.M, 1)
            w.sub_(torch.where(f, upd, 0.0))
            self.m = torch.where(f, m, self.m)
            self.v = torch.where(f, v, self.v)
        if self.flat is None:
            for k, part in zip(self.names, w.split(self.sizes, dim=1)):
                self.params[k].copy_(part.view_as(self.params[k]))
        return finite


def train_group(desc: dict[str, Any], members: list[MemberSpec], data, cfg: TrainConfig,
                train_fraction: float, group_seed: int) -> list[MemberResult]:
    """Train ``members`` (all of architecture ``desc``) on ``data`` (:class:`ImageData`) together.

    Returns one :class:`MemberResult` per member, in order. Members whose loss or parameters
    become non-finite are frozen at their last finite parameters and flagged ``diverged``.
    """
    forward = FORWARDS[desc["family"]]
    M = len(members)
    shapes = {k: v.shape for k, v in build_model(desc).state_dict().items()}
    names = list(shapes)

    # --- per-member init, data subsets and hyperparameters ---------------------------------
    gens = [torch.Generator().manual_seed(m.seed) for m in members]
    inits = [init_member(shapes, m.hparams["init"], m.hparams["init_std"], g) for m, g in zip(members, gens)]
    flat, p = flat_parameters(shapes, M)
    with torch.no_grad():
        for k in names:
            p[k].copy_(torch.stack([i[k] for i in inits]))
    n_pool = data.x_train.shape[0]
    n_sub = max(cfg.batch_size, int(round(train_fraction * n_pool)))
    rngs = [np.random.default_rng(m.seed) for m in members]
    subsets = np.stack([r.permutation(n_pool)[:n_sub] for r in rngs])          # [M, n_sub]
    eval_idx = torch.from_numpy(subsets[:, :cfg.train_eval_size].T.copy())       # [n_eval, M]
    x_nhwc = data.x_train.permute(0, 2, 3, 1).contiguous()                      # [N, H, W, C]
    # gathered images in the NHWMC layout, passed on as [b, M, C, H, W] views
    take = lambda idx: x_nhwc[idx].permute(0, 2, 3, 1, 4).contiguous().permute(0, 3, 4, 1, 2)  # noqa: E731
    x_eval, y_eval = take(eval_idx), data.y_train[eval_idx]                     # [n_eval, M, ...]

    hp = [m.hparams for m in members]
    drop = Dropout.create([h["dropout"] for h in hp], torch.Generator().manual_seed(group_seed))
    opt = VectorOptimizer([h["optimizer"] for h in hp], [h["learning_rate"] for h in hp],
                          [h["l2"] for h in hp], p, flat=flat)
    alive = torch.ones(M, dtype=torch.bool)
    saved: list[tuple] = []

    def checkpoint(epoch: int, step: int) -> None:
        pd = {k: v.detach() for k, v in p.items()}
        te_acc, te_loss = _evaluate(forward, desc, pd, data.x_test, data.y_test, cfg.eval_batch)
        tr_acc, tr_loss = _evaluate(forward, desc, pd, x_eval, y_eval, cfg.eval_batch)
        saved.append((epoch, step, flat.numpy().copy(), te_acc, te_loss, tr_acc, tr_loss))

    step = 0
    ckpts = sorted(set(cfg.checkpoint_epochs))
    if 0 in ckpts:
        checkpoint(0, 0)
    for epoch in range(1, cfg.epochs + 1):
        order = np.stack([r.permutation(n_sub) for r in rngs])                   # [M, n_sub]
        batches = np.take_along_axis(subsets, order, axis=1)
        for s in range(0, n_sub, cfg.batch_size):
            idx = torch.from_numpy(batches[:, s:s + cfg.batch_size].T.copy())   # [b, M]
            xb, yb = take(idx), data.y_train[idx]                              # [b, M, C, H, W], [b, M]
            logits = forward(desc, p, xb, drop)                                 # [b, M, K]
            K = logits.shape[-1]
            ce = F.cross_entropy(logits.reshape(-1, K), yb.reshape(-1), reduction="none").view(-1, M).mean(0)
            ok = torch.isfinite(ce) & alive
            loss = torch.where(ok, ce, torch.zeros_like(ce)).sum()
            grads = torch.autograd.grad(loss, [p[k] for k in names], allow_unused=True)
            step += 1
            alive &= opt.step({k: g for k, g in zip(names, grads)}, ok)
        if epoch in ckpts:
            checkpoint(epoch, step)

    offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes.values()])
    stacked = np.stack([c[2] for c in saved])                                   # [n_ck, M, P]
    results = []
    for i, m in enumerate(members):
        params = {k: stacked[:, i, offsets[j]:offsets[j + 1]].reshape(len(saved), *shapes[k])
                  for j, k in enumerate(names)}
        cks = [{"epoch": c[0], "step": c[1],
                "test_accuracy": float(c[3][i]), "test_loss": float(c[4][i]),
                "train_accuracy": float(c[5][i]), "train_loss": float(c[6][i])} for c in saved]
        results.append(MemberResult(m.run_id, params, cks, diverged=not bool(alive[i]),
                                    extra={"train_examples": int(n_sub)}))
    return results
