"""Networks as lists of weight tensors: the input format of NFN, SNE, StatNN and the flat MLP.

A :class:`WeightSpace` holds the parameters of a batch of networks *of one architecture*, layer by
layer in dataflow order. A :class:`WeightSpaceBatch` holds a batch of possibly different
architectures as homogeneous groups plus the batch positions of each group's members, so an
encoder can run once per group and scatter its outputs back into batch order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass
class WeightSpace:
    """Parameters of ``B`` networks that share one architecture.

    Args:
        weights: one tensor per layer, ``[B, out, in, *kernel]`` (``[B, out, in]`` for linear layers).
        biases: one tensor per layer, ``[B, out]`` (zeros where the layer has no bias).
        feedforward: the networks are plain chains of these layers (no residual or normalization
            layers), so permuting layer ``l``'s outputs with layer ``l+1``'s inputs is a symmetry.
    """

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]
    feedforward: bool = True

    def __post_init__(self) -> None:
        self.weights, self.biases = tuple(self.weights), tuple(self.biases)
        if len(self.weights) != len(self.biases):
            raise ValueError(f"{len(self.weights)} weight tensors but {len(self.biases)} bias tensors")
        sizes = {t.size(0) for t in self.weights + self.biases}
        if len(sizes) > 1:
            raise ValueError(f"WeightSpace tensors disagree on the batch size: {sorted(sizes)}")

    def __len__(self) -> int:
        return self.weights[0].size(0)

    @property
    def signature(self) -> tuple:
        """Per-layer shapes without the batch dim: equal signatures mean one weight space (group networks
        by ``(signature, feedforward)``)."""
        return tuple((tuple(w.shape[1:]), tuple(b.shape[1:])) for w, b in zip(self.weights, self.biases))

    def to(self, *args, **kwargs) -> "WeightSpace":
        return WeightSpace(tuple(w.to(*args, **kwargs) for w in self.weights),
                           tuple(b.to(*args, **kwargs) for b in self.biases), self.feedforward)

    def pin_memory(self) -> "WeightSpace":
        """A copy in page-locked memory (a loader with ``pin_memory=True`` calls it, for faster copies to CUDA)."""
        return WeightSpace(tuple(w.pin_memory() for w in self.weights), tuple(b.pin_memory() for b in self.biases),
                           self.feedforward)

    def __getitem__(self, idx) -> "WeightSpace":
        return WeightSpace(tuple(w[idx] for w in self.weights), tuple(b[idx] for b in self.biases), self.feedforward)

    def flatten(self) -> Tensor:
        """``[B, P]``: every parameter of each network, layer by layer (weight then bias)."""
        parts = []
        for w, b in zip(self.weights, self.biases):
            parts += [w.flatten(1), b.flatten(1)]
        return torch.cat(parts, dim=1)

    @staticmethod
    def stack(items: Sequence["WeightSpace"]) -> "WeightSpace":
        """Concatenate same-signature weight spaces along the batch dim."""
        sig = items[0].signature
        for it in items[1:]:
            if it.signature != sig:
                raise ValueError("cannot stack weight spaces of different architectures; "
                                 "use WeightSpaceBatch.collate")
        return WeightSpace(tuple(torch.cat(ws) for ws in zip(*(i.weights for i in items))),
                           tuple(torch.cat(bs) for bs in zip(*(i.biases for i in items))),
                           all(i.feedforward for i in items))


@dataclass
class WeightSpaceBatch:
    """A batch of networks grouped by architecture.

    Args:
        groups: one :class:`WeightSpace` per distinct architecture in the batch.
        positions: for each group, ``[B_g]`` long tensor of the members' positions in the batch.
        y: optional targets in batch order (set by a task's loader).
    """

    groups: list[WeightSpace]
    positions: list[Tensor]
    y: Tensor | None = None

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)

    @property
    def homogeneous(self) -> bool:
        return len(self.groups) == 1

    def to(self, *args, **kwargs) -> "WeightSpaceBatch":
        return WeightSpaceBatch([g.to(*args, **kwargs) for g in self.groups],
                                [p.to(*args, **kwargs) for p in self.positions],
                                None if self.y is None else self.y.to(*args, **kwargs))

    def pin_memory(self) -> "WeightSpaceBatch":
        """A copy in page-locked memory (called by a loader with ``pin_memory=True``)."""
        return WeightSpaceBatch([g.pin_memory() for g in self.groups], [p.pin_memory() for p in self.positions],
                                None if self.y is None else self.y.pin_memory())

    def scatter(self, outputs: Sequence[Tensor]) -> Tensor:
        """Put per-group outputs ``[B_g, ...]`` back into batch order ``[B, ...]``."""
        first = outputs[0]
        out = first.new_empty((len(self),) + tuple(first.shape[1:]))
        for pos, o in zip(self.positions, outputs):
            out[pos.to(o.device)] = o
        return out

    @staticmethod
    def collate(items: Sequence[WeightSpace]) -> "WeightSpaceBatch":
        """Group single networks (or small batches) by architecture, keeping batch positions."""
        by_sig: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            by_sig.setdefault((it.signature, it.feedforward), []).append(i)
        starts = [0]
        for it in items[:-1]:
            starts.append(starts[-1] + len(it))
        groups, positions = [], []
        for members in by_sig.values():
            groups.append(WeightSpace.stack([items[i] for i in members]))
            positions.append(torch.cat([torch.arange(starts[i], starts[i] + len(items[i])) for i in members]))
        return WeightSpaceBatch(groups, positions)

    @staticmethod
    def from_items(items: Sequence[tuple[WeightSpace, Tensor]]) -> "WeightSpaceBatch":
        """Collate ``(weight space, target)`` dataset items: a batch with ``y`` set (a ``collate_fn``)."""
        batch = WeightSpaceBatch.collate([ws for ws, _ in items])
        batch.y = torch.stack([torch.as_tensor(y) for _, y in items])
        return batch


def normalize_signature(weight_shapes: Sequence) -> tuple:
    """A :attr:`WeightSpace.signature` as nested tuples (accepts lists from YAML/JSON, or plain weight
    shapes ``(out, in, *k)`` per layer, whose bias shape is then ``(out,)``)."""
    sig = []
    for item in weight_shapes:
        if isinstance(item[0], (tuple, list)):
            sig.append((tuple(int(s) for s in item[0]), tuple(int(s) for s in item[1])))
        else:
            sig.append((tuple(int(s) for s in item), (int(item[0]),)))
    return tuple(sig)


def require_homogeneous(batch: WeightSpaceBatch, signature: tuple, model: str) -> WeightSpace:
    """The single group of ``batch``, after checking it is homogeneous and of the model's architecture."""
    if not batch.homogeneous:
        raise ValueError(
            f"{model} needs a homogeneous zoo, but this batch holds {len(batch.groups)} architectures: its "
            "parameters are tied to one weight-space signature (fixed layer count and sizes). Use ng-gnn, "
            "ng-t or sne for mixed architectures.")
    group = batch.groups[0]
    if group.signature != signature:
        raise ValueError(
            f"{model} was built for weight space {signature} but got {group.signature}; build it with "
            "weight_shapes=<WeightSpace.signature of this zoo>, or use ng-gnn, ng-t or sne.")
    return group
