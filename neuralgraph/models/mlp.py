"""Flat-MLP baseline: every parameter of the network, flattened, into an MLP.

`Unterthiner et al., "Predicting Neural Network Accuracy from Weights" (2020)
<https://arxiv.org/abs/2002.11448>`_ (the "DNN on flattened weights" baseline; "MLP" in the SNE and NFN
tables). Homogeneous zoos only: the input size is fixed by the architecture.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MLP as _PygMLP

from neuralgraph.data.weightspace import WeightSpace, WeightSpaceBatch
from neuralgraph.models.registry import register_model


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


class FeatureNorm(nn.Module):
    """Per-feature standardisation with running statistics (``BatchNorm1d`` without affine parameters)
    that falls back to the running statistics for a training batch of one network."""

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def reset_parameters(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        use_batch = self.training and x.size(0) > 1
        return F.batch_norm(x, self.running_mean, self.running_var, training=use_batch,
                            momentum=self.momentum, eps=self.eps)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0, act: str = "relu") -> nn.Module:
    """``Linear -> act`` for each hidden size, then a plain ``Linear`` (PyG's :class:`~torch_geometric.nn.MLP`)."""
    return _PygMLP([in_dim, *hidden, out_dim], act=act, norm=None, dropout=dropout, plain_last=True)


@register_model("mlp")
class FlatMLP(nn.Module):
    r"""Flattened weights and biases -> standardisation -> MLP.

    .. math::
        y = \mathrm{MLP}\big(\mathrm{std}(\mathrm{vec}(W^{(1)}, v^{(1)}, \dots, W^{(L)}, v^{(L)}))\big)

    Not permutation invariant (a baseline for what equivariance buys).

    Args:
        weight_shapes (sequence): the zoo's :attr:`WeightSpace.signature`; other architectures raise.
        out_dim (int, optional): output size. (default: :obj:`1`)
        hidden (sequence of int, optional): MLP hidden sizes. (default: ``(256, 256)``)
        dropout (float, optional): dropout between hidden layers. (default: :obj:`0.0`)
        normalize (bool, optional): standardise each input with running statistics. (default: :obj:`True`)
        head (str, optional): ``"vector"`` (``out_dim`` outputs per network) or ``"parameters"`` (one output
            per input parameter, cut into a :class:`WeightSpace` like the input; ``out_dim`` is unused).
            (default: ``"vector"``)

    Shapes:
        - **input:** :class:`WeightSpaceBatch` of ``B`` networks of the one architecture
        - **output:** ``[B, out_dim]`` (raw), or a :class:`WeightSpace` for ``head="parameters"``
    """

    input_kind: ClassVar[str] = "weights"
    permutation_invariant: ClassVar[bool] = False
    #: the ``head`` giving one output per parameter (what per-parameter tasks build)
    parameter_head: ClassVar[str] = "parameters"

    def __init__(self, weight_shapes: Sequence, out_dim: int = 1, hidden: Sequence[int] = (256, 256),
                 dropout: float = 0.0, normalize: bool = True, head: str = "vector") -> None:
        super().__init__()
        if head not in ("vector", "parameters"):
            raise ValueError(f"Could not resolve head {head!r} among choices ['vector', 'parameters']")
        self.weight_shapes = normalize_signature(weight_shapes)
        self.head = head
        self.num_params = sum(torch.Size(w).numel() + torch.Size(b).numel() for w, b in self.weight_shapes)
        self.out_dim = self.num_params if head == "parameters" else out_dim
        self.norm = FeatureNorm(self.num_params) if normalize else nn.Identity()
        self.mlp = mlp(self.num_params, tuple(hidden), self.out_dim, dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if isinstance(self.norm, FeatureNorm):
            self.norm.reset_parameters()
        self.mlp.reset_parameters()

    def forward(self, batch: WeightSpaceBatch) -> Tensor | WeightSpace:
        ws = require_homogeneous(batch, self.weight_shapes, "mlp")
        out = batch.scatter([self.mlp(self.norm(ws.flatten()))])            # [B, out_dim]
        return out if self.head == "vector" else self.unflatten(out)

    def unflatten(self, flat: Tensor) -> WeightSpace:
        """``[B, P]`` -> a :class:`WeightSpace` of this architecture (the inverse of :meth:`WeightSpace.flatten`)."""
        weights, biases, start = [], [], 0
        for w, b in self.weight_shapes:
            nw, nb = torch.Size(w).numel(), torch.Size(b).numel()
            weights.append(flat[:, start:start + nw].reshape(-1, *w))
            biases.append(flat[:, start + nw:start + nw + nb].reshape(-1, *b))
            start += nw + nb
        return WeightSpace(tuple(weights), tuple(biases))
