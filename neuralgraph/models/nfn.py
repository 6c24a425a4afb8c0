"""Neural functionals (NFN-NP, NFN-HNP, NFN-PT): invariant networks on one weight space.

`Zhou et al., "Permutation Equivariant Neural Functionals" (NeurIPS 2023)
<https://arxiv.org/abs/2302.14040>`_, the generalization-prediction network of appendix D.1:

    standardise (optional) -> IO-encoding (optional) -> [NF-layer -> ReLU] x len(hidden_channels)
    -> invariant pool -> MLP

NF-layers have coefficients per layer of one architecture, so these models are built for one
:attr:`WeightSpace.signature` (``weight_shapes``) and reject other architectures and mixed batches.
"""
from __future__ import annotations

from typing import ClassVar, Iterable, Sequence

import torch
from torch import Tensor, nn

from neuralgraph.data.weightspace import WeightSpace, WeightSpaceBatch
from neuralgraph.data.weightspace import normalize_signature, require_homogeneous
from neuralgraph.nn.feedforward import mlp
from neuralgraph.models.registry import register_model
from neuralgraph.nn.nf_layers import (HNPLayer, IOEncoding, NFFeatures, NPLayer, PointwiseLayer, check_feedforward,
                                      hnp_pool, np_pool, pool_dim, to_features)

_LAYERS = {"np": NPLayer, "hnp": HNPLayer, "pt": PointwiseLayer}


class NFN(nn.Module):
    r"""Invariant neural functional for predicting properties of networks from their weights.

    .. math::
        y = \mathrm{MLP}\big(P(\sigma(H_K \cdots \sigma(H_1(\mathrm{IO}(U)))))\big)

    with :math:`H_k` NP, HNP or pointwise NF-layers, :math:`\sigma` = ReLU and :math:`P` the NP pool or
    the HNP pool (appendix eq. 20). Exactly invariant to permutations of the hidden neurons of the input
    network (convolutions: channels), with or without IO-encoding and standardisation.

    **Standardisation** (``standardize=True``): every weight and bias is shifted and scaled by
    training-set statistics (:meth:`fit_statistics`; the runner calls it with the training split).
    The statistics are pooled over networks and over every dim a hidden-neuron permutation acts on
    (rows of hidden layers, columns after the first layer), and kept separate along the rest
    (kernel taps, input columns of the first layer, output rows of the last), so the map commutes
    with the symmetry and invariance stays exact. The reference experiments standardise NFN-NP's
    inputs too (per entry, which is not exactly symmetric); without it, the NP layers' mean terms
    wash the per-network signal out (features vary across networks by ~1e-4 after three layers on
    a small CNN zoo, and the model predicts a constant).

    Args:
        weight_shapes (sequence): the zoo's :attr:`WeightSpace.signature`.
        out_dim (int, optional): output size. (default: :obj:`1`)
        layer (str, optional): ``"np"``, ``"hnp"`` or ``"pt"`` (the registered factories ``nfn-np``,
            ``nfn-hnp``, ``nfn-pt`` set it, with the variant's defaults for the options below). (default: ``"np"``)
        hidden_channels (sequence of int, optional): channels of the NF-layers (paper D.1: 16, 16, 5).
        head_hidden (sequence of int, optional): hidden sizes of the MLP after the pool (paper: 1000, 1000).
        pool (str, optional): ``"np"`` or ``"hnp"``; HNP layers need the HNP pool. (default: ``"hnp"``)
        standardize (bool, optional): standardise the inputs (see above). (default: :obj:`True`)
        io_encoding (str, optional): ``"sinusoidal"``, ``"learned"`` or ``"none"``. (default: ``"sinusoidal"``)
        io_dim (int, optional): IO-encoding channels. (default: :obj:`8`)
        dropout (float, optional): dropout in the MLP head. (default: :obj:`0.0`)
        head (str, optional): ``"invariant"`` (pool, then the MLP: one ``out_dim`` vector per network) or
            ``"equivariant"`` (a last NF-layer to ``out_dim`` channels, no pool: values per weight and bias,
            permuted with the input's hidden neurons; paper §3.4, INR editing). (default: ``"invariant"``)
        in_channels (int, optional): channels per weight and bias of an :class:`NFFeatures` input (e.g. a
            learned optimizer's gradient and momentum features). (default: :obj:`1`, the weights alone)

    Shapes:
        - **input:** :class:`WeightSpaceBatch` of ``B`` networks of the one architecture, or
          :class:`~neuralgraph.nn.nf_layers.NFFeatures` with ``in_channels`` channels (``[B, n, m,
          in_channels * taps]`` per layer, channel-major): networks with the architecture's layer count,
          kernel sizes, inputs and outputs but any hidden widths (NF-layers serve every width), used as they
          are (no standardisation)
        - **output:** ``[B, out_dim]`` (raw; the task applies sigmoid / BCE), or for
          ``head="equivariant"`` a :class:`WeightSpace` shaped like the input (batch order; ``out_dim``
          must be 1), or :class:`NFFeatures` with ``out_dim`` channels for an :class:`NFFeatures` input
    """

    input_kind: ClassVar[str] = "weights"
    permutation_invariant: ClassVar[bool] = True
    #: the ``head`` giving one output per parameter (what per-parameter tasks build)
    parameter_head: ClassVar[str] = "equivariant"

    def __init__(self, weight_shapes: Sequence, out_dim: int = 1, layer: str = "np",
                 hidden_channels: Sequence[int] = (16, 16, 5), head_hidden: Sequence[int] = (1000, 1000),
                 io_encoding: str = "sinusoidal", io_dim: int = 8, dropout: float = 0.0,
                 pool: str = "hnp", standardize: bool = True, head: str = "invariant",
                 in_channels: int = 1) -> None:
        super().__init__()
        self.weight_shapes = normalize_signature(weight_shapes)
        self.layer, self.io_kind, self.pool_kind, self.standardize = layer, io_encoding, pool, bool(standardize)
        if self.layer not in _LAYERS:
            raise ValueError(f"unknown NF-layer {self.layer!r}; choose from {sorted(_LAYERS)}")
        if self.pool_kind not in ("np", "hnp"):
            raise ValueError(f"unknown pool {self.pool_kind!r}; choose 'np' or 'hnp'")
        if head not in ("invariant", "equivariant"):
            raise ValueError(f"Could not resolve head {head!r} among choices ['invariant', 'equivariant']")
        self.head_kind = head
        if self.layer == "hnp" and self.pool_kind != "hnp":
            raise ValueError("HNP layers keep input and output neurons apart; they need pool='hnp'")
        self.name = f"nfn-{self.layer}"
        if self.layer != "pt":
            check_feedforward(self.weight_shapes, self.name)
        self.out_dim = out_dim
        channels = in_channels
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
        self._init_statistics()
        if head == "equivariant":  # out_dim channels per weight / bias
            self.head = _LAYERS[self.layer](self.weight_shapes, channels, out_dim)
        else:
            self.head = mlp(pool_dim(self.weight_shapes, channels, self.pool_kind), tuple(head_hidden), out_dim,
                            dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in [self.io, *self.layers, self.head]:
            if m is not None:
                m.reset_parameters()

    def _stat_dims(self, i: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Dims of layer ``i``'s ``[B, out, in, *k]`` weights and ``[B, out]`` biases the statistics pool over:
        networks, plus the rows if the layer's outputs are hidden, plus the columns if its inputs are."""
        L = len(self.weight_shapes)
        rows = (1,) if i < L - 1 else ()
        return (0, *rows, *((2,) if i > 0 else ())), (0, *rows)

    def _init_statistics(self) -> None:
        """Identity standardisation (mean 0, std 1) in the shapes :meth:`fit_statistics` fills."""
        for i, (wshape, bshape) in enumerate(self.weight_shapes):
            wdims, bdims = self._stat_dims(i)
            ws = [1 if d + 1 in wdims else n for d, n in enumerate(wshape)]
            bs = [1 if d + 1 in bdims else n for d, n in enumerate(bshape)]
            self.register_buffer(f"w_mean_{i}", torch.zeros(ws))
            self.register_buffer(f"w_std_{i}", torch.ones(ws))
            self.register_buffer(f"b_mean_{i}", torch.zeros(bs))
            self.register_buffer(f"b_std_{i}", torch.ones(bs))

    @torch.no_grad()
    def fit_statistics(self, weight_spaces: Iterable[WeightSpace]) -> None:
        """Fit the standardisation on the training networks (no-op if ``standardize`` is off)."""
        if not self.standardize:
            return
        ws = WeightSpace.stack(list(weight_spaces))
        require_homogeneous(WeightSpaceBatch.collate([ws]), self.weight_shapes, self.name)
        for i, (w, b) in enumerate(zip(ws.weights, ws.biases)):
            wdims, bdims = self._stat_dims(i)
            for kind, t, dims in (("w", w, wdims), ("b", b, bdims)):
                t = t.double()
                std = t.std(dim=dims, keepdim=True, unbiased=False)
                getattr(self, f"{kind}_mean_{i}").copy_(t.mean(dim=dims, keepdim=True)[0])
                getattr(self, f"{kind}_std_{i}").copy_(torch.where(std > 1e-8, std, torch.ones_like(std))[0])

    def _standardized(self, ws: WeightSpace) -> WeightSpace:
        if not self.standardize:
            return ws
        return WeightSpace(
            tuple((w - getattr(self, f"w_mean_{i}")) / getattr(self, f"w_std_{i}") for i, w in enumerate(ws.weights)),
            tuple((b - getattr(self, f"b_mean_{i}")) / getattr(self, f"b_std_{i}") for i, b in enumerate(ws.biases)),
            ws.feedforward)

    def features(self, batch: WeightSpaceBatch | NFFeatures) -> NFFeatures:
        """The equivariant features after the NF-layers (group order)."""
        if isinstance(batch, NFFeatures):
            feats = batch
            if len(feats.weights) != len(self.weight_shapes):
                raise ValueError(f"{self.name} was built for {len(self.weight_shapes)} layers, got features of "
                                 f"{len(feats.weights)}")
        else:
            feats = to_features(self._standardized(require_homogeneous(batch, self.weight_shapes, self.name)))
        if self.io is not None:
            feats = self.io(feats)
        for layer in self.layers:
            feats = layer(feats).map(torch.relu)
        return feats

    def encode(self, batch: WeightSpaceBatch) -> Tensor:
        """The invariant pooled features ``[B, pool_dim]`` (before the MLP)."""
        feats = self.features(batch)
        return hnp_pool(feats) if self.pool_kind == "hnp" else np_pool(feats)

    def forward(self, batch: WeightSpaceBatch | NFFeatures) -> Tensor | WeightSpace | NFFeatures:
        if self.head_kind == "equivariant":
            out = self.head(self.features(batch))                           # out_dim channels per weight / bias
            if isinstance(batch, NFFeatures):
                return out
            if self.out_dim != 1:
                raise ValueError(f"{self.name}: a WeightSpace output holds one value per parameter; out_dim is "
                                 f"{self.out_dim} (pass NFFeatures to get several channels)")
            order = batch.positions[0].argsort()                            # group order -> batch order
            return WeightSpace(tuple(w.reshape(w.shape[:3] + s[2:])[order] for w, (s, _) in
                                     zip(out.weights, self.weight_shapes)),  # [B, out, in, *kernel]
                               tuple(b.squeeze(-1)[order] for b in out.biases), batch.groups[0].feedforward)
        return batch.scatter([self.head(self.encode(batch))])               # [B, out_dim]


def _builds(cls: type):
    """Give a factory the class attributes tasks read before building a model (``input_kind`` ...)."""
    def deco(fn):
        for name in ("input_kind", "permutation_invariant", "parameter_head"):
            setattr(fn, name, getattr(cls, name))
        return fn
    return deco


@register_model("nfn-np")
@_builds(NFN)
def nfn_np(weight_shapes: Sequence, out_dim: int = 1, hidden_channels: Sequence[int] = (16, 16, 5),
           head_hidden: Sequence[int] = (1000, 1000), io_encoding: str = "sinusoidal", io_dim: int = 8,
           dropout: float = 0.0, pool: str = "hnp", standardize: bool = True, head: str = "invariant",
           in_channels: int = 1) -> NFN:
    """NFN\\ :sub:`NP`: NP NF-layers, sinusoidal IO-encoding, standardised inputs and the HNP pool, as the paper's
    reference experiments configure it (``pool="np"``: the paper's text). Arguments: :class:`NFN`."""
    return NFN(weight_shapes, out_dim, "np", hidden_channels, head_hidden, io_encoding, io_dim, dropout, pool,
               standardize, head, in_channels)


@register_model("nfn-hnp")
@_builds(NFN)
def nfn_hnp(weight_shapes: Sequence, out_dim: int = 1, hidden_channels: Sequence[int] = (16, 16, 5),
            head_hidden: Sequence[int] = (1000, 1000), io_encoding: str = "none", io_dim: int = 8,
            dropout: float = 0.0, pool: str = "hnp", standardize: bool = False, head: str = "invariant",
           in_channels: int = 1) -> NFN:
    """NFN\\ :sub:`HNP`: HNP NF-layers and the HNP pool; no IO-encoding needed. Arguments: :class:`NFN`."""
    return NFN(weight_shapes, out_dim, "hnp", hidden_channels, head_hidden, io_encoding, io_dim, dropout, pool,
               standardize, head, in_channels)


@register_model("nfn-pt")
@_builds(NFN)
def nfn_pt(weight_shapes: Sequence, out_dim: int = 1, hidden_channels: Sequence[int] = (16, 16, 5),
           head_hidden: Sequence[int] = (1000, 1000), io_encoding: str = "sinusoidal", io_dim: int = 8,
           dropout: float = 0.0, pool: str = "np", standardize: bool = False, head: str = "invariant",
           in_channels: int = 1) -> NFN:
    """NFN\\ :sub:`PT`: pointwise NF-layers and the NP pool, the paper's ablation. Arguments: :class:`NFN`."""
    return NFN(weight_shapes, out_dim, "pt", hidden_channels, head_hidden, io_encoding, io_dim, dropout, pool,
               standardize, head, in_channels)
