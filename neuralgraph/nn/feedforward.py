"""Feed-forward building blocks shared by the models: an MLP and a running-statistics feature standardisation."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MLP as _PygMLP

__all__ = ["FeatureNorm", "mlp"]


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
