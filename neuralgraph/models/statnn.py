"""StatNN: per-layer weight statistics into an MLP.

`Unterthiner et al., "Predicting Neural Network Accuracy from Weights" (2020)
<https://arxiv.org/abs/2002.11448>`_. For each layer, 7 statistics of its weights and 7 of its biases: mean,
variance and the 0, 25, 50, 75 and 100 % quantiles.

Networks of different depth (heterogeneous zoos) map to one fixed-size vector through ``max_layers``
*slots*, aligned at both ends: layer ``l < L - 1`` of an ``L``-layer network fills slot ``l`` and its last
layer fills the last slot ``K - 1``; slots in between stay empty (zeros, mask 0). Every slot also carries the
layer's shape (``log(1 + out)``, ``log(1 + in)``, ``log(kernel taps)``) and a mask bit. So input layers are
compared with input layers, classifier layers with classifier layers, and hidden layers by their distance
from the input; for a homogeneous zoo with ``L = K`` this is exactly Unterthiner et al.'s concatenation.
"""
from __future__ import annotations

import math
from typing import ClassVar, Optional, Sequence

import torch
from torch import Tensor, nn

from neuralgraph.data.weightspace import WeightSpace, WeightSpaceBatch
from neuralgraph.nn.feedforward import FeatureNorm, mlp
from neuralgraph.models.registry import register_model

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
STATS_PER_TENSOR = 2 + len(QUANTILES)
SLOT_FEATURES = 2 * STATS_PER_TENSOR + 3 + 1          # weight stats, bias stats, shape, mask


def tensor_stats(x: Tensor) -> Tensor:
    """``[B, *]`` -> ``[B, 7]``: mean, variance (unbiased; 0 for a single value), 5 quantiles."""
    x = x.flatten(1)
    var = x.var(1) if x.size(1) > 1 else x.new_zeros(x.size(0))
    q = torch.quantile(x, torch.tensor(QUANTILES, dtype=x.dtype, device=x.device), dim=1).t()  # [B, 5]
    return torch.cat([x.mean(1, keepdim=True), var[:, None], q], 1)


def slot_features(ws: WeightSpace, max_layers: int) -> Tensor:
    """``[B, max_layers * SLOT_FEATURES]`` features of one architecture group (see module docstring)."""
    L = len(ws.weights)
    if L > max_layers:
        raise ValueError(f"statnn was built with max_layers={max_layers} but got a network with {L} layers; "
                         f"build it with max_layers >= {L}")
    B, K = len(ws), max_layers
    out = ws.weights[0].new_zeros(B, K, SLOT_FEATURES)
    for l, (w, b) in enumerate(zip(ws.weights, ws.biases)):
        slot = l if l < L - 1 else K - 1
        shape = [math.log1p(w.shape[1]), math.log1p(w.shape[2]), math.log(max(math.prod(w.shape[3:]), 1))]
        out[:, slot] = torch.cat([tensor_stats(w), tensor_stats(b), w.new_tensor(shape + [1.0]).expand(B, 4)], 1)
    return out.flatten(1)


@register_model("statnn")
class StatNN(nn.Module):
    r"""Layer statistics -> standardisation -> MLP (the STATNN baseline of the NFN and SNE papers).

    .. math::
        y = \mathrm{MLP}\Big(\mathrm{std}\big(\big[\, s(W^{(l)}), s(v^{(l)}), \mathrm{shape}^{(l)}, 1
        \,\big]_{\text{slot}(l)}\big)\Big), \quad s(x) = (\bar x, \mathrm{Var}\,x, q_0, q_{25}, q_{50}, q_{75},
        q_{100})

    Exactly invariant to hidden-neuron permutations (the statistics are symmetric functions of each
    layer's entries); works on heterogeneous batches (runs per architecture group).

    Args:
        out_dim (int, optional): output size. (default: :obj:`1`)
        max_layers (int, optional): number of layer slots ``K``. (default: the depth of ``weight_shapes``
            if given, else :obj:`8`)
        weight_shapes (sequence, optional): a zoo signature, only used for the default ``max_layers``.
        hidden (sequence of int, optional): MLP hidden sizes; the Neural Graphs paper's StatNN (appendix D.2:
            1000 hidden dimensions, 1,087,001 parameters on Wild Park). (default: ``(1000, 1000)``)
        dropout (float, optional): dropout in the MLP; the paper states none. (default: :obj:`0.0`)
        normalize (bool, optional): standardise features with running statistics. (default: :obj:`True`)

    Shapes:
        - **input:** :class:`WeightSpaceBatch` of ``B`` networks (any architectures of at most ``K`` layers)
        - **output:** ``[B, out_dim]`` (raw)
    """

    input_kind: ClassVar[str] = "weights"
    permutation_invariant: ClassVar[bool] = True

    def __init__(self, out_dim: int = 1, max_layers: Optional[int] = None, weight_shapes: Optional[Sequence] = None,
                 hidden: Sequence[int] = (1000, 1000), dropout: float = 0.0, normalize: bool = True) -> None:
        super().__init__()
        if max_layers is None:
            max_layers = len(weight_shapes) if weight_shapes is not None else 8
        self.out_dim, self.max_layers = out_dim, int(max_layers)
        self.in_dim = self.max_layers * SLOT_FEATURES
        self.norm = FeatureNorm(self.in_dim) if normalize else nn.Identity()
        self.mlp = mlp(self.in_dim, tuple(hidden), out_dim, dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if isinstance(self.norm, FeatureNorm):
            self.norm.reset_parameters()
        self.mlp.reset_parameters()

    def features(self, batch: WeightSpaceBatch) -> Tensor:
        """``[B, max_layers * SLOT_FEATURES]`` raw statistics in batch order."""
        return batch.scatter([slot_features(g, self.max_layers) for g in batch.groups])

    def forward(self, batch: WeightSpaceBatch) -> Tensor:
        return self.mlp(self.norm(self.features(batch)))                   # [B, out_dim]
