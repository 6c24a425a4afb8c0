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
    that falls back to the running statistics for a training batch of one network.

    A feature that held one value in every training batch (normalised by batch statistics: 0 throughout
    training) is 0 at evaluation too. Its running variance decays towards 0, so standardising a different
    value (a deeper or differently shaped test network: StatNN's empty depth slots and layer shapes in
    cross-arch) would scale it by up to ``1 / sqrt(eps)`` (~300x) and saturate the layers after it, which
    never learned from it. ``train_min`` / ``train_max`` record each feature's range over the training
    batches (``+inf`` / ``-inf``: none seen, nothing is zeroed; also for state dicts saved before them).
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("train_min", torch.full((num_features,), float("inf")))
        self.register_buffer("train_max", torch.full((num_features,), float("-inf")))

    def reset_parameters(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.train_min.fill_(float("inf"))
        self.train_max.fill_(float("-inf"))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, fill in (("train_min", float("inf")), ("train_max", float("-inf"))):  # saved before the range
            if prefix + "running_mean" in state_dict and prefix + name not in state_dict:
                state_dict[prefix + name] = torch.full_like(getattr(self, name), fill)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        use_batch = self.training and x.size(0) > 1
        if use_batch:
            with torch.no_grad():
                seen = x.detach().to(self.train_min.dtype)
                torch.minimum(self.train_min, seen.amin(0), out=self.train_min)
                torch.maximum(self.train_max, seen.amax(0), out=self.train_max)
        out = F.batch_norm(x, self.running_mean, self.running_var, training=use_batch,
                           momentum=self.momentum, eps=self.eps)
        if use_batch:
            return out
        return out.masked_fill(self.train_max == self.train_min, 0.0)  # constant in training: 0, as then


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0, act: str = "relu") -> nn.Module:
    """``Linear -> act`` for each hidden size, then a plain ``Linear`` (PyG's :class:`~torch_geometric.nn.MLP`)."""
    return _PygMLP([in_dim, *hidden, out_dim], act=act, norm=None, dropout=dropout, plain_last=True)
