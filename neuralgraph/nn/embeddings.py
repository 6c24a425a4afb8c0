r"""Input encoding shared by the neural-graph models (NG-GNN, NG-T).

From `"Graph Neural Networks for Learning Equivariant Representations of Neural Networks"
<https://arxiv.org/abs/2403.12143>`_ (Kofinas et al., ICLR 2024), §2.4: node features (biases) and
edge features (weights, zero-padded kernels) are projected to the model width, and every node gets
learned embeddings added to it:

.. math::
    \mathbf{v}_i = W_v\,\phi(\mathbf{x}_i) + W_p\,\mathbf{p}_i + P[\mathrm{pos}_i] + A[\mathrm{act}_i]
                   + R[\mathrm{role}_i] + Q[\mathrm{pool}_i] + S[\mathrm{spatial}_i], \qquad
    \mathbf{e}_{ij} = W_e\,\phi(\mathbf{a}_{ij}) + K[\mathrm{kind}_{ij}] + C[\mathrm{conv}_{ij}]

where :math:`\phi` is the identity or random Fourier features (:class:`FourierFeatures`) and
:math:`\mathbf{p}_i` the neuron's probe features (Neural Graphs eq. 2; ``probe_in`` trailing columns of
``x``), projected linearly on their own: Fourier features of the concatenated ``[x_i, p_i]`` would mix
all ``M`` probe values into every phase (a phase spread growing as :math:`\sigma\sqrt{M}`), a hash of the
function that no model can read.

Positional embeddings respect the neuron symmetries: each input neuron and each output neuron has its
own row (looked up by ``node_pos``, their index), whereas all neurons of one hidden layer share one
row (looked up by ``node_pos`` = the layer number). Embeddings are learnable parameters of the model,
never part of the converter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from neuralgraph.data.graph import EDGE_KIND, EDGE_KINDS, POOLS, ROLE, ROLES

from neuralgraph.convert.activations import ACTIVATIONS

__all__ = ["EncoderConfig", "FourierFeatures", "NeuralGraphEncoder", "default_num_acts", "check_index_bound", "check_edge_fields"]

#: Number of distinct values per ``geometry`` column that get their own embedding row.
_CONV_VALUES = 16
#: Rows per chunk of the edge projection in inference mode (bounds memory on huge graphs).
_CHUNK = 1 << 16
#: Largest number of ``geometry`` columns supported (3 spatial dims x stride/padding/dilation/size).
_CONV_COLUMNS = 12


def default_num_acts() -> int:
    """Activation-table size: the vocabulary (which is open) with headroom, at least 32."""
    return max(32, len(ACTIVATIONS))


def check_index_bound(index: Tensor, limit: Tensor | int, what: str, arg: str) -> None:
    """Raise a readable error if any ``index >= limit`` (``limit`` may be per element).

    On CPU this is an ordinary Python check. On accelerators it is an asynchronous device assertion
    (``torch._assert_async``), so the forward pass never waits for the device.
    """
    if index.numel() == 0:
        return
    bad = index >= limit
    msg = (f"a graph has a {what} that exceeds the embedding table; increase `{arg}` "
           f"(got index >= table size)")
    if index.device.type == "cpu":
        if bool(bad.any()):
            worst = int(index[bad].max())
            raise ValueError(f"a graph has a {what} of {worst}, which exceeds the embedding table; "
                             f"increase `{arg}` to at least {worst + 1}")
    else:  # pragma: no cover - no accelerator in CI
        torch._assert_async(~bad.any(), msg)


def check_edge_fields(data) -> None:
    """Refuse a graph whose per-edge fields disagree with ``edge_index`` (``[2, E]``): a transform that adds edges
    to ``edge_index`` alone (stock ``torch_geometric.transforms.AddSelfLoops`` applied without
    :class:`~neuralgraph.transforms.CheckedTransform`) leaves ``edge_attr`` / ``edge_kind`` / ``edge_geom`` with the
    old rows, a corrupt neural graph."""
    E = data.edge_index.size(1)
    for name in ("edge_attr", "edge_kind", "edge_geom"):
        t = getattr(data, name, None)
        if t is not None and t.size(0) != E:
            raise ValueError(f"corrupt neural graph: edge_index has {E} edges but {name} has {t.size(0)} rows; a "
                             "transform changed edge_index without the per-edge fields (stock AddSelfLoops does on its own). "
                             "Wrap stock transforms in neuralgraph.transforms.CheckedTransform(...), which gives "
                             "self-loops their fields and refuses transforms that corrupt them")


class FourierFeatures(nn.Module):
    r"""Gaussian random Fourier features (Tancik et al., 2020) of a feature vector.

    .. math::
        \phi(\mathbf{a}) = [\cos(2\pi B\mathbf{a}), \sin(2\pi B\mathbf{a})], \qquad
        B_{kl} \sim \mathcal{N}(0, \sigma^2)

    :math:`B` is a fixed buffer (saved in the state dict, drawn from the global RNG).

    Args:
        in_dim (int): input size.
        num_features (int): number of frequencies; the output has ``2 * num_features`` columns.
        sigma (float, optional): standard deviation of the frequencies. (default: :obj:`1.0`)

    Shapes:
        - **input:** :math:`(*, F_{in})`
        - **output:** :math:`(*, 2 F)`
    """

    def __init__(self, in_dim: int, num_features: int, sigma: float = 1.0):
        super().__init__()
        self.in_dim = in_dim
        self.num_features = num_features
        self.sigma = sigma
        self.register_buffer("freqs", torch.empty(num_features, in_dim))
        self.reset_parameters()

    @property
    def out_dim(self) -> int:
        return 2 * self.num_features

    def reset_parameters(self) -> None:
        nn.init.normal_(self.freqs, std=self.sigma)

    def forward(self, a: Tensor) -> Tensor:
        proj = 2 * math.pi * a @ self.freqs.to(a.dtype).t()  # (*, F)
        return torch.cat([proj.cos(), proj.sin()], dim=-1)  # (*, 2F)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_dim}, {self.num_features}, sigma={self.sigma})"


@dataclass(frozen=True)
class EncoderConfig:
    """The input encoding of neural graphs, one config shared by NG-GNN and NG-T (their ``encoder`` option; from
    YAML or ``--set model.encoder.act_emb=false`` a mapping of these fields, merged over the model's default).
    Every embedding can be switched off for ablations (the paper's NG-T without activation embedding:
    ``act_emb=False``)."""

    pos_emb: bool = True  # positional embeddings: one row per input / output neuron, one per hidden layer
    act_emb: bool = True  # activation embeddings (node_act)
    role_emb: bool = True  # role embeddings (node_role: input / hidden / output / virtual)
    pool_emb: bool = True  # pooling embeddings (node_pool)
    spatial_emb: bool = True  # flatten-position embeddings (node_spatial)
    kind_emb: bool = True  # edge-kind embeddings (edge_kind)
    conv_emb: bool = True  # stride / padding / dilation / kernel size of conv edges (geometry; values >= 15 share a row)
    max_inputs: int = 1024  # input-position table size
    max_outputs: int = 1024  # output-position table size
    max_layers: int = 128  # hidden-layer table size (hidden and virtual neurons are looked up by layer number)
    max_spatial: int = 1024  # flatten-position table size
    num_acts: int | None = None  # activation table size; None: max(32, len(ACTIVATIONS)) (the vocabulary is open)
    fourier_features: int = 128  # random Fourier features of x and edge_attr (frequencies; 0: plain projections)
    fourier_sigma: float = 1.0  # their frequency scale
    separate_linear: bool = False  # linear weights get their own projection (not treated as 1x1 convolutions)

    def updated(self, changes: "EncoderConfig | dict[str, Any]") -> "EncoderConfig":
        """This config with ``changes`` (a mapping of field: value, or a whole config) applied."""
        if isinstance(changes, EncoderConfig):
            return changes
        valid = {f.name for f in fields(self)}
        bad = sorted(set(changes) - valid)
        if bad:
            raise ValueError(f"unknown encoder option(s) {bad}; valid options: {sorted(valid)}")
        return replace(self, **changes)


class NeuralGraphEncoder(nn.Module):
    r"""Project a batch of :class:`~neuralgraph.NeuralGraph` to node and edge states.

    See the module docstring for the formula. Every embedding can be switched off, which the
    paper's ablations need (e.g. NG-T without activation embedding: ``act_emb=False``).

    Args:
        node_in (int): number of node features :math:`F_{node}` (``x.size(-1)``).
        edge_in (int): number of edge features :math:`F_{edge}` (``edge_attr.size(-1)``).
        node_dim (int): width of the node states.
        edge_dim (int): width of the edge states.
        config (EncoderConfig, optional): which embeddings, table sizes, Fourier features (one config
            shared by NG-GNN and NG-T: their ``encoder`` option). (default: ``EncoderConfig()``)
        probe_in (int, optional): number of probe-feature columns after the ``node_in`` columns of
            ``x`` (:func:`~neuralgraph.transforms.probe_features.with_probe_features`), projected by
            their own linear map, without Fourier features. (default: :obj:`0`)

    Shapes:
        - **input:** a (batched) :class:`~neuralgraph.NeuralGraph` with :math:`|V|` nodes and
          :math:`|E|` edges (``x``: :math:`(|V|, F_{node} + \text{probe\_in})`)
        - **output:** node states :math:`(|V|, F_v)`, edge states :math:`(|E|, F_e)`
    """

    def __init__(
        self,
        node_in: int,
        edge_in: int,
        node_dim: int,
        edge_dim: int,
        config: EncoderConfig = EncoderConfig(),
        probe_in: int = 0,
    ):
        super().__init__()
        c = self.config = config
        self.node_in, self.edge_in, self.probe_in = node_in, edge_in, probe_in
        self.node_dim, self.edge_dim = node_dim, edge_dim
        self.max_inputs, self.max_outputs = c.max_inputs, c.max_outputs
        self.max_layers, self.max_spatial = c.max_layers, c.max_spatial
        self.num_acts = default_num_acts() if c.num_acts is None else c.num_acts
        self.fourier_features = F = c.fourier_features

        if F > 0:
            self.node_fourier: nn.Module = FourierFeatures(node_in, F, c.fourier_sigma)
            self.edge_fourier: nn.Module = FourierFeatures(edge_in, F, c.fourier_sigma)
            node_proj_in = edge_proj_in = 2 * F
        else:
            self.node_fourier = self.edge_fourier = nn.Identity()
            node_proj_in, edge_proj_in = node_in, edge_in
        self.node_proj = nn.Linear(node_proj_in, node_dim)
        self.edge_proj = nn.Linear(edge_proj_in, edge_dim)
        self.separate_linear = c.separate_linear
        if c.separate_linear:  # linear weights: phi(w) of the one centre-tap value, their own projection
            self.linear_fourier: nn.Module = FourierFeatures(1, F, c.fourier_sigma) if F > 0 else nn.Identity()
            self.linear_proj = nn.Linear(2 * F if F > 0 else 1, edge_dim)

        # One table for the three position families: [inputs | outputs | hidden layers].
        self.pos_emb = (nn.Embedding(c.max_inputs + c.max_outputs + c.max_layers, node_dim) if c.pos_emb
                        else None)
        self.act_emb = nn.Embedding(self.num_acts, node_dim) if c.act_emb else None
        self.role_emb = nn.Embedding(len(ROLES), node_dim) if c.role_emb else None
        self.pool_emb = nn.Embedding(len(POOLS), node_dim) if c.pool_emb else None
        self.spatial_emb = nn.Embedding(c.max_spatial + 1, node_dim) if c.spatial_emb else None
        self.kind_emb = nn.Embedding(len(EDGE_KINDS), edge_dim) if c.kind_emb else None
        self.conv_emb = (nn.EmbeddingBag(_CONV_COLUMNS * _CONV_VALUES, edge_dim, mode="sum")
                         if c.conv_emb else None)

        # Per-role table offsets and sizes (input, hidden, output, virtual), as buffers so they
        # follow the module to its device.
        offset = torch.zeros(len(ROLES), dtype=torch.long)
        size = torch.full((len(ROLES),), c.max_layers, dtype=torch.long)
        offset[ROLE["output"]] = c.max_inputs
        offset[ROLE["hidden"]] = offset[ROLE["virtual"]] = c.max_inputs + c.max_outputs
        size[ROLE["input"]], size[ROLE["output"]] = c.max_inputs, c.max_outputs
        self.register_buffer("_pos_offset", offset, persistent=False)
        self.register_buffer("_pos_size", size, persistent=False)
        # last, and only with probes: models without probes keep their initialisation
        self.probe_proj = nn.Linear(probe_in, node_dim) if probe_in > 0 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        extra = (self.linear_fourier, self.linear_proj) if self.separate_linear else ()
        for m in (self.node_fourier, self.edge_fourier, self.node_proj, self.edge_proj, *extra):
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        for emb in (self.pos_emb, self.act_emb, self.role_emb, self.pool_emb, self.spatial_emb,
                    self.kind_emb, self.conv_emb):
            if emb is not None:
                emb.reset_parameters()  # N(0, 1), like the reference's positional embeddings
        if self.probe_proj is not None:
            self.probe_proj.reset_parameters()

    def position_ids(self, node_role: Tensor, node_pos: Tensor) -> Tensor:
        """Row of the position table for every node (checks the table sizes)."""
        node_role = node_role.long()  # int8 in the graph
        size = self._pos_size[node_role]
        check_index_bound(node_pos, size, "neuron position (input/output index or layer number)",
                          "encoder.max_inputs / max_outputs / max_layers")
        return self._pos_offset[node_role] + node_pos

    def encode_nodes(self, data) -> Tensor:
        if data.x.size(-1) != self.node_in + self.probe_in:
            raise ValueError(f"node features have {data.x.size(-1)} columns; this encoder expects node_in="
                             f"{self.node_in} plus probe_in={self.probe_in} probe columns")
        x = self.node_proj(self.node_fourier(data.x[:, :self.node_in]))  # (N, Fv)
        if self.probe_proj is not None:
            x = x + self.probe_proj(data.x[:, self.node_in:])  # (N, Fv)
        if self.pos_emb is not None:
            x = x + self.pos_emb(self.position_ids(data.node_role, data.node_pos))
        if self.act_emb is not None:
            check_index_bound(data.node_act, self.num_acts, "activation id", "encoder.num_acts")
            x = x + self.act_emb(data.node_act.long())
        if self.role_emb is not None:
            x = x + self.role_emb(data.node_role.long())
        if self.pool_emb is not None:
            x = x + self.pool_emb(data.node_pool.long())
        if self.spatial_emb is not None:
            check_index_bound(data.node_spatial, self.max_spatial + 1, "flatten position",
                              "encoder.max_spatial")
            x = x + self.spatial_emb(data.node_spatial)
        return x

    def encode_edges(self, data) -> Tensor:
        a = data.edge_attr  # (E, F_edge)
        if torch.is_grad_enabled() or a.size(0) <= _CHUNK:
            e = self.edge_proj(self.edge_fourier(a))  # (E, Fe)
        else:  # inference on a huge graph: bound the Fourier-feature temporaries
            e = torch.cat([self.edge_proj(self.edge_fourier(c)) for c in a.split(_CHUNK)])
        if self.separate_linear:
            centre = a.size(-1) // 2  # a linear weight sits on the centre tap of the (odd) kernel
            lin = (data.edge_kind == EDGE_KIND["linear"]).unsqueeze(-1)  # (E, 1)
            e = torch.where(lin, self.linear_proj(self.linear_fourier(a[:, centre:centre + 1])).to(e.dtype), e)
        if self.kind_emb is not None:
            e = e + self.kind_emb(data.edge_kind.long())
        if self.conv_emb is not None and data.geometry.numel() > 0 and e.size(0) > 0:
            conv = data.geometry.long().clamp(0, _CONV_VALUES - 1)  # (G, 4D): one row per distinct geometry
            if conv.size(-1) > _CONV_COLUMNS:
                raise ValueError(f"geometry has {conv.size(-1)} columns; at most {_CONV_COLUMNS} "
                                 "(3 spatial dims) are supported; set conv_emb=False")
            cols = torch.arange(conv.size(-1), device=conv.device) * _CONV_VALUES
            rows = self.conv_emb(conv + cols)  # one bag per geometry row, summed: (G, Fe)
            e = e + rows[data.edge_geom.long()].to(e.dtype)  # (E, Fe)
        return e

    def forward(self, data) -> tuple[Tensor, Tensor]:
        check_edge_fields(data)
        return self.encode_nodes(data), self.encode_edges(data)

    def extra_repr(self) -> str:
        return (f"node_in={self.node_in}, edge_in={self.edge_in}, node_dim={self.node_dim}, "
                f"edge_dim={self.edge_dim}, fourier_features={self.fourier_features}")
