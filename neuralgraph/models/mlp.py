"""Flat-MLP baseline: every parameter of the network, flattened, into an MLP.

`Unterthiner et al., "Predicting Neural Network Accuracy from Weights" (2020)
<https://arxiv.org/abs/2002.11448>`_ (the "DNN on flattened weights" baseline; "MLP" in the SNE and NFN
tables). Homogeneous zoos only: the input size is fixed by the architecture.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from neuralgraph.data.weightspace import WeightSpace, WeightSpaceBatch, normalize_signature, require_homogeneous
from neuralgraph.models.registry import register_model
from neuralgraph.nn.feedforward import FeatureNorm, mlp


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
