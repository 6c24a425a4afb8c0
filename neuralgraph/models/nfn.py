"""Neural functionals (NFN-NP, NFN-HNP, NFN-PT): invariant networks on one weight space.

`Zhou et al., "Permutation Equivariant Neural Functionals" (NeurIPS 2023)
<https://arxiv.org/abs/2302.14040>`_, the generalization-prediction network of appendix D.1:

    IO-encoding (optional) -> [NF-layer -> ReLU] x len(hidden_channels) -> invariant pool -> MLP

NF-layers have coefficients per layer of one architecture, so these models are built for one
:attr:`WeightSpace.signature` (``weight_shapes``) and reject other architectures and mixed batches.
"""
from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch
from torch import Tensor, nn

from neuralgraph.data.weightspace import WeightSpaceBatch
from neuralgraph.models.mlp import mlp, normalize_signature, require_homogeneous
from neuralgraph.models.registry import register_model
from neuralgraph.nn.nf_layers import (HNPLayer, IOEncoding, NPLayer, PointwiseLayer, check_feedforward,
                                      hnp_pool, np_pool, pool_dim, to_features)

_LAYERS = {"np": NPLayer, "hnp": HNPLayer, "pt": PointwiseLayer}


class NFN(nn.Module):
    r"""Invariant neural functional for predicting properties of networks from their weights.

    .. math::
        y = \mathrm{MLP}\big(P(\sigma(H_K \cdots \sigma(H_1(\mathrm{IO}(U)))))\big)

    with :math:`H_k` NP, HNP or pointwise NF-layers, :math:`\sigma` = ReLU and :math:`P` the NP pool
    (``np``, ``pt``) or the HNP pool (``hnp``, appendix eq. 20). Exactly invariant to permutations of the
    hidden neurons of the input network (convolutions: channels), with or without IO-encoding.

    Args:
        weight_shapes (sequence): the zoo's :attr:`WeightSpace.signature`.
        out_dim (int, optional): output size. (default: :obj:`1`)
        layer (str, optional): ``"np"``, ``"hnp"`` or ``"pt"`` (set by the registered names). (default: ``"np"``)
        hidden_channels (sequence of int, optional): channels of the NF-layers (paper D.1: 16, 16, 5).
        head_hidden (sequence of int, optional): hidden sizes of the MLP after the pool (paper: 1000, 1000).
        io_encoding (str, optional): ``"sinusoidal"``, ``"learned"`` or ``"none"``. (default: ``"sinusoidal"``)
        io_dim (int, optional): IO-encoding channels. (default: :obj:`8`)
        dropout (float, optional): dropout in the MLP head. (default: :obj:`0.0`)

    Shapes:
        - **input:** :class:`WeightSpaceBatch` of ``B`` networks of the one architecture
        - **output:** ``[B, out_dim]`` (raw; the task applies sigmoid / BCE)
    """

    input_kind: ClassVar[str] = "weights"
    permutation_invariant: ClassVar[bool] = True
    default_layer: ClassVar[str] = "np"
    default_io_encoding: ClassVar[str] = "sinusoidal"

    def __init__(self, weight_shapes: Sequence, out_dim: int = 1, layer: Optional[str] = None,
                 hidden_channels: Sequence[int] = (16, 16, 5), head_hidden: Sequence[int] = (1000, 1000),
                 io_encoding: Optional[str] = None, io_dim: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.weight_shapes = normalize_signature(weight_shapes)
        self.layer = layer or self.default_layer
        self.io_kind = io_encoding or self.default_io_encoding
        if self.layer not in _LAYERS:
            raise ValueError(f"unknown NF-layer {self.layer!r}; choose from {sorted(_LAYERS)}")
        self.name = f"nfn-{self.layer}"
        if self.layer != "pt":
            check_feedforward(self.weight_shapes, self.name)
        self.out_dim = out_dim
        channels = 1
        if self.io_kind == "none":
            self.io = None
        else:
            self.io = IOEncoding(self.weight_shapes, self.io_kind, io_dim)
            channels += io_dim
        layers = []
        for c in hidden_channels:
            layers.append(_LAYERS[self.layer](self.weight_shapes, channels, c))
            channels = c
        self.layers = nn.ModuleList(layers)
        self.pool_kind = "hnp" if self.layer == "hnp" else "np"
        self.head = mlp(pool_dim(self.weight_shapes, channels, self.pool_kind), tuple(head_hidden), out_dim,
                        dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in [self.io, *self.layers, self.head]:
            if m is not None:
                m.reset_parameters()

    def encode(self, batch: WeightSpaceBatch) -> Tensor:
        """The invariant pooled features ``[B, pool_dim]`` (before the MLP)."""
        ws = require_homogeneous(batch, self.weight_shapes, self.name)
        feats = to_features(ws)
        if self.io is not None:
            feats = self.io(feats)
        for layer in self.layers:
            feats = layer(feats).map(torch.relu)
        return hnp_pool(feats) if self.pool_kind == "hnp" else np_pool(feats)

    def forward(self, batch: WeightSpaceBatch) -> Tensor:
        return batch.scatter([self.head(self.encode(batch))])               # [B, out_dim]


@register_model("nfn-np")
class NFNNP(NFN):
    """:class:`NFN` with NP NF-layers and sinusoidal IO-encoding (the paper's NFN\\ :sub:`NP`)."""

    default_layer: ClassVar[str] = "np"
    default_io_encoding: ClassVar[str] = "sinusoidal"


@register_model("nfn-hnp")
class NFNHNP(NFN):
    """:class:`NFN` with HNP NF-layers and the HNP pool; no IO-encoding needed (NFN\\ :sub:`HNP`)."""

    default_layer: ClassVar[str] = "hnp"
    default_io_encoding: ClassVar[str] = "none"


@register_model("nfn-pt")
class NFNPT(NFN):
    """:class:`NFN` with pointwise NF-layers, the paper's NFN\\ :sub:`PT` ablation."""

    default_layer: ClassVar[str] = "pt"
    default_io_encoding: ClassVar[str] = "sinusoidal"
