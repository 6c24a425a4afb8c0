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

Where the time goes (one core, ``wildpark-digits``): about 70% is oneDNN's convolution forward and
backward, which already run near the core's peak FLOP rate for 32-channel layers; the rest is
memory-bound elementwise work (activations, dropout, the optimizer). Hence the layout choices
below: activations channels-last end to end (:func:`_conv`), conv weights stored channels-last,
dropout masks from random bytes, and an optimizer that works on one ``[M, P]`` matrix.

The batched forwards below mirror :mod:`neuralgraph.data.arch` line by line; the tests check that
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

from neuralgraph.data.arch import build_model, canonical_activation

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
# convolution is faster channels-last (forward + backward ~1.6-2x for one or a few channels per
# member, ~10-15% for 32) and its outputs come back in that layout, so no reshape ever copies.
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

    Masks come from random bytes (one full-range 64-bit draw gives 8 of them), several times
    cheaper on CPU than ``torch.rand``; the effective keep probability ``(t + 1) / 256`` is what
    is used. The mask is built directly as ``0`` or ``1 / keep``, so the forward is one multiply
    (and the backward another).
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
        words = words.to(h.device, non_blocking=True)  # drawn on the CPU: the same masks on every device
        inner = int(np.prod(h.shape[member_dim:]))           # members and what follows them
        thr, scale = self._rows(h.shape[member_dim + 1:], h.device)
        noise = words.view(torch.uint8)[:n].view(-1, inner)
        # comparing against a contiguous row and converting through uint8 keeps every op
        # vectorised (torch.where or a bool -> float cast here costs 5-10x more)
        mask = (noise <= thr).view(torch.uint8).float().mul_(scale)
        return h * mask.view(h.shape)

    def _rows(self, tail: torch.Size, device: torch.device) -> tuple[Tensor, Tensor]:
        """Threshold and ``1 / keep`` repeated over the dims after the member dim, flattened, on ``device``."""
        k = int(np.prod(tail))
        cache = self.__dict__.setdefault("_row_cache", {})
        if (k, device) not in cache:
            cache[k, device] = (self.threshold.repeat_interleave(k).to(device),
                                (1.0 / self.keep).repeat_interleave(k).to(device))
        return cache[k, device]


def _dropout(h: Tensor, drop: "Dropout | None", member_dim: int) -> Tensor:
    return h if drop is None else drop(h, member_dim)


_ACT_INPLACE: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu_, "tanh": torch.tanh_, "sigmoid": torch.sigmoid_, "identity": lambda t: t,
    "leaky_relu": lambda t: F.leaky_relu(t, inplace=True),
}


def _act(h: Tensor, act: str) -> Tensor:
    """``act(h)`` for a fresh ``h`` (a conv, pool, linear or residual-sum output); in place when
    no gradient is recorded (evaluation), which saves a full-size temporary per layer."""
    if not torch.is_grad_enabled() and act in _ACT_INPLACE:
        return _ACT_INPLACE[act](h)
    return _ACT_FN[act](h)


def forward_wildpark(desc: dict, p: dict[str, Tensor], x: Tensor, drop: Dropout | None = None) -> Tensor:
    """Batched :class:`~neuralgraph.data.arch.WildParkCNN` forward (dropout after each activation).

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
        h = _dropout(_act(h, act), drop, 3)
        if i in sources:
            saved[i] = h
    h = h.mean(dim=(1, 2))                                    # [B, M, C]
    return _linear(h, p["fc.weight"], p["fc.bias"])


def forward_cnn(desc: dict, p: dict[str, Tensor], x: Tensor, drop: Dropout | None = None) -> Tensor:
    """Batched :class:`~neuralgraph.data.arch.SequentialCNN` forward.

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
        h = _act(h, canonical_activation(spec.get("act", "identity")))
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
    eval_batch: int = 128                     # evaluation chunk (results do not depend on it)


@torch.inference_mode()
def _evaluate(forward, desc, p, x: Tensor, y: Tensor, eval_batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-member accuracy and mean loss. ``x`` is ``[N, M, C, H, W]`` (or shared ``[N, C, H, W]``),
    ``y`` ``[N, M]`` or ``[N]``."""
    M = next(iter(p.values())).shape[0]
    correct = torch.zeros(M, dtype=torch.float64, device=x.device)
    loss = torch.zeros(M, dtype=torch.float64, device=x.device)
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
    return (correct / n).cpu().numpy(), (loss / n).cpu().numpy()


def stacked_parameters(inits: list[dict[str, Tensor]], device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Stack per-member parameters into leaves ``[M, *shape]`` that require grad.

    Conv weights ``[M, Co, C, k, k]`` are stored channels-last (memory order ``[M, Co, k, k, C]``),
    so ``w.reshape(M * Co, C, k, k)`` is a free view in the layout the grouped convolution wants
    and its weight gradient comes back in the same layout (no reorder copies either way)."""
    p = {}
    for k in inits[0]:
        w = torch.stack([i[k] for i in inits]).to(device)
        if w.dim() == 5:
            w = w.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        p[k] = w.requires_grad_(True)
    return p


def _dense_strides(t: Tensor) -> tuple[int, ...]:
    """``t``'s strides if it is dense and non-overlapping in some dim order, else row-major ones."""
    dims = sorted((d for d in range(t.dim()) if t.shape[d] > 1), key=lambda d: t.stride(d))
    expected = 1
    for d in dims:
        if t.stride(d) != expected:
            return tuple(int(np.prod(t.shape[d + 1:])) for d in range(t.dim()))
        expected *= t.shape[d]
    return tuple(t.stride())


class VectorOptimizer:
    """Adam, RMSProp and plain SGD for stacked members, mixed freely within a group.

    One update rule covers all three: ``m = d1 m + (1 - d1) g``, ``v = d2 v + (1 - d2) g^2``,
    ``w -= lr * (m / c1) / (sqrt(v / c2) + eps)`` for adaptive members and ``w -= lr * g`` for SGD,
    with Adam's ``d1 = 0.9, d2 = 0.999`` and bias corrections ``c``, RMSProp's ``d1 = 0, d2 = 0.9``
    (Keras defaults). The loss gets ``l2 * ||W||^2`` for every weight (not bias) tensor.
    A member whose update is not finite keeps its parameters and is reported dead by :meth:`step`.

    The state lives in ``[M, P]`` matrices (all of a member's parameters in one row, each tensor
    in its own memory order), so a step is a dozen large in-place elementwise ops whatever the
    number of tensors, with no allocation.
    """

    def __init__(self, kinds: list[str], lr: list[float], l2: list[float], params: dict[str, Tensor]):
        for k in kinds:
            if k not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {k!r}; choose from {OPTIMIZERS}")
        M = len(kinds)
        dev = next(iter(params.values())).device  # the state lives with the parameters
        self.params = params
        self.M, self.t, self.eps = M, 0, 1e-7
        self.is_adam = torch.tensor([k == "adam" for k in kinds], device=dev)
        adaptive = torch.tensor([k != "sgd" for k in kinds], device=dev)
        self.lr_adaptive = (torch.tensor(lr, dtype=torch.float64, device=dev) * adaptive).view(M, 1)
        self.sgd_lr = (torch.tensor(lr, device=dev) * ~adaptive).view(M, 1)
        self.any_sgd = any(k == "sgd" for k in kinds)
        self.d1 = torch.where(self.is_adam, 0.9, 0.0).view(M, 1)
        self.d2 = torch.where(self.is_adam, 0.999, 0.9).view(M, 1)
        self.l2x2 = 2 * torch.tensor(l2, device=dev)
        # each tensor's slot in a row, laid out like one member of the tensor (so that gathering
        # gradients and applying updates stream through memory in the same order)
        sizes = [w[0].numel() for w in params.values()]
        self.P = sum(sizes)
        self.slots = []
        off = 0
        for (k, w), n in zip(params.items(), sizes):
            self.slots.append((k, off, tuple(w.shape), (self.P,) + _dense_strides(w[0]),
                               None if k.endswith("bias") else self.l2x2.view(M, *([1] * (w.dim() - 1)))))
            off += n
        self.m, self.v = torch.zeros(M, self.P, device=dev), torch.zeros(M, self.P, device=dev)
        self._m, self._v = torch.empty(M, self.P, device=dev), torch.empty(M, self.P, device=dev)
        self.g, self.u = torch.empty(M, self.P, device=dev), torch.empty(M, self.P, device=dev)

    def _slot(self, buf: Tensor, slot) -> Tensor:
        _, off, shape, stride, _ = slot
        return buf.as_strided(shape, stride, buf.storage_offset() + off)

    @torch.no_grad()
    def step(self, grads: dict[str, Tensor | None], ok: Tensor) -> Tensor:
        """Update in place; returns ``[M]`` bool, False for members whose update was not finite."""
        self.t += 1
        M, g, u, m, v = self.M, self.g, self.u, self._m, self._v
        for slot in self.slots:                                  # g = grad + 2 l2 w, gathered
            k, l2 = slot[0], slot[4]
            dst, w, gk = self._slot(g, slot), self.params[k], grads[k]
            if gk is None:
                gk = torch.zeros_like(w)
            if l2 is None:
                dst.copy_(gk)
            else:
                torch.addcmul(gk, w, l2, out=dst)
        c1 = torch.where(self.is_adam, 1 - 0.9 ** self.t, 1.0).view(M, 1)
        c2 = torch.where(self.is_adam, 1 - 0.999 ** self.t, 1.0).view(M, 1).sqrt()
        torch.lerp(g, self.m, self.d1, out=m)                    # d1 m + (1 - d1) g
        torch.mul(g, g, out=v).lerp_(self.v, self.d2)            # d2 v + (1 - d2) g^2
        # lr / c1 * m / (sqrt(v) / sqrt(c2) + eps) = (lr sqrt(c2) / c1) * m / (sqrt(v) + eps sqrt(c2))
        torch.sqrt(v, out=u).add_(self.eps * c2)
        torch.div(m, u, out=u).mul_((self.lr_adaptive * c2 / c1).float())
        if self.any_sgd:
            u.addcmul_(g, self.sgd_lr)
        finite = ok & torch.isfinite(u.sum(1))
        # members with a non-finite update keep their state; always applied, so the step never waits on the device
        keep = ~finite.view(M, 1)
        u.masked_fill_(keep, 0.0)
        torch.where(keep, self.m, m, out=m)
        torch.where(keep, self.v, v, out=v)
        self.m, self._m, self.v, self._v = m, self.m, v, self.v   # swap buffers
        for slot in self.slots:
            self.params[slot[0]].sub_(self._slot(u, slot))
        return finite


def train_group(desc: dict[str, Any], members: list[MemberSpec], data, cfg: TrainConfig,
                train_fraction: float, group_seed: int, device: str | torch.device = "cpu") -> list[MemberResult]:
    """Train ``members`` (all of architecture ``desc``) on ``data`` (:class:`ImageData`) together, on
    ``device`` (the same runs on every device up to floating-point rounding: initialisation, data order and
    dropout masks are drawn on the CPU).

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
    device = torch.device(device)
    p = stacked_parameters(inits, device)
    n_pool = data.x_train.shape[0]
    n_sub = max(cfg.batch_size, int(round(train_fraction * n_pool)))
    rngs = [np.random.default_rng(m.seed) for m in members]
    subsets = np.stack([r.permutation(n_pool)[:n_sub] for r in rngs])          # [M, n_sub]
    eval_idx = torch.from_numpy(subsets[:, :cfg.train_eval_size].T.copy()).to(device)  # [n_eval, M]
    x_nhwc = data.x_train.to(device).permute(0, 2, 3, 1).contiguous()           # [N, H, W, C]
    y_train, x_test, y_test = data.y_train.to(device), data.x_test.to(device), data.y_test.to(device)
    # gathered images in the NHWMC layout, passed on as [b, M, C, H, W] views
    take = lambda idx: x_nhwc[idx].permute(0, 2, 3, 1, 4).contiguous().permute(0, 3, 4, 1, 2)  # noqa: E731
    x_eval, y_eval = take(eval_idx), y_train[eval_idx]                          # [n_eval, M, ...]

    hp = [m.hparams for m in members]
    drop = Dropout.create([h["dropout"] for h in hp], torch.Generator().manual_seed(group_seed))
    opt = VectorOptimizer([h["optimizer"] for h in hp], [h["learning_rate"] for h in hp],
                          [h["l2"] for h in hp], p)
    alive = torch.ones(M, dtype=torch.bool, device=device)
    saved: list[tuple] = []

    def checkpoint(epoch: int, step: int) -> None:
        pd = {k: v.detach() for k, v in p.items()}
        te_acc, te_loss = _evaluate(forward, desc, pd, x_test, y_test, cfg.eval_batch)
        tr_acc, tr_loss = _evaluate(forward, desc, pd, x_eval, y_eval, cfg.eval_batch)
        saved.append((epoch, step, {k: v.cpu().numpy().copy(order="C") for k, v in pd.items()},
                      te_acc, te_loss, tr_acc, tr_loss))

    step = 0
    ckpts = sorted(set(cfg.checkpoint_epochs))
    if 0 in ckpts:
        checkpoint(0, 0)
    for epoch in range(1, cfg.epochs + 1):
        order = np.stack([r.permutation(n_sub) for r in rngs])                   # [M, n_sub]
        batches = np.take_along_axis(subsets, order, axis=1)
        for s in range(0, n_sub, cfg.batch_size):
            idx = torch.from_numpy(batches[:, s:s + cfg.batch_size].T.copy()).to(device)  # [b, M]
            xb, yb = take(idx), y_train[idx]                                   # [b, M, C, H, W], [b, M]
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

    results = []
    for i, m in enumerate(members):
        params = {k: np.stack([c[2][k][i] for c in saved]) for k in names}
        cks = [{"epoch": c[0], "step": c[1],
                "test_accuracy": float(c[3][i]), "test_loss": float(c[4][i]),
                "train_accuracy": float(c[5][i]), "train_loss": float(c[6][i])} for c in saved]
        results.append(MemberResult(m.run_id, params, cks, diverged=not bool(alive[i]),
                                    extra={"train_examples": int(n_sub)}))
    return results
