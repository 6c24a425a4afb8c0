r"""PNA convolution with FiLM messages and edge updates (the NG-GNN layer).

From `"Graph Neural Networks for Learning Equivariant Representations of Neural Networks"
<https://arxiv.org/abs/2403.12143>`_ (Kofinas et al., ICLR 2024), §3, eq. 3-4, on top of
`"Principal Neighbourhood Aggregation for Graph Nets" <https://arxiv.org/abs/2004.05718>`_.
Aggregation and degree scalers are PyG's :class:`~torch_geometric.nn.aggr.DegreeScalerAggregation`;
edge updates go through :meth:`~torch_geometric.nn.conv.MessagePassing.edge_updater`.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn.aggr import Aggregation, DegreeScalerAggregation
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.resolver import activation_resolver
from torch_geometric.typing import Adj
from torch_geometric.utils import degree

from neuralgraph.nn.precision import full_precision

__all__ = ["FiLMPNAConv", "StableStdAggregation", "degree_histogram"]

#: Placeholder histogram used until real statistics are set (every node has in-degree 1).
_PLACEHOLDER_DEG = (0, 1)


def degree_histogram(graphs: Iterable, reverse_edges: bool = False) -> Tensor:
    """In-degree histogram over a training set, as :class:`DegreeScalerAggregation` wants it.

    Args:
        graphs (iterable): graphs or batches (anything with ``edge_index`` and ``num_nodes``),
            e.g. a list of :class:`~neuralgraph.NeuralGraph` or a PyG ``DataLoader``. Batches
            are fine: the histogram counts nodes, so batching does not change it.
        reverse_edges (bool, optional): count the reversed edges a model adds as well.
            (default: :obj:`False`)

    Returns:
        ``deg`` (long tensor): ``deg[d]`` is the number of nodes with in-degree ``d``.
    """
    hist = torch.zeros(1, dtype=torch.long)
    for g in graphs:
        ei = g.edge_index.cpu()
        d = degree(ei[1], num_nodes=g.num_nodes, dtype=torch.long)
        if reverse_edges:
            d = d + degree(ei[0], num_nodes=g.num_nodes, dtype=torch.long)
        counts = torch.bincount(d)
        if counts.numel() > hist.numel():
            hist = torch.cat([hist, hist.new_zeros(counts.numel() - hist.numel())])
        hist[: counts.numel()] += counts
    if int(hist.sum()) == 0:
        raise ValueError("degree_histogram got no nodes; pass the training graphs or loader")
    return hist


class StableStdAggregation(Aggregation):
    r"""Feature-wise standard deviation in two passes: :math:`\sqrt{\mathrm{mean}((x - \bar x)^2)}`.

    PyG's ``"std"`` aggregation uses :math:`E[x^2] - E[x]^2`, whose rounding error grows with
    :math:`E[x]^2`; near its zero threshold that noise decides between 0 and
    :math:`\sqrt{10^{-5}}`, so the result depends on the summation order (i.e. on the node
    numbering) and breaks exact permutation equivariance. Two passes give exactly 0 for a single
    message and an order-independent value up to float rounding. Same zero threshold as PyG
    (an undefined gradient at :math:`\sqrt{0}` is avoided the same way). Computed in float32 under
    mixed precision.
    """

    def forward(self, x: Tensor, index: Tensor | None = None, ptr: Tensor | None = None,
                dim_size: int | None = None, dim: int = -2) -> Tensor:
        self.assert_index_present(index)
        x = full_precision(x)  # under autocast: bfloat16 cannot resolve a variance near the 1e-5 threshold
        mean = self.reduce(x, index, ptr, dim_size, dim, reduce="mean")  # (N, F)
        diff = x - mean.index_select(dim, index)  # (E, F)
        var = self.reduce(diff * diff, index, ptr, dim_size, dim, reduce="mean")  # (N, F)
        out = var.clamp(min=1e-5).sqrt()
        return out.masked_fill(out <= math.sqrt(1e-5), 0.0)


def _resolve_aggregators(aggregators: Sequence[str]) -> list:
    return [StableStdAggregation() if a == "std" else a for a in aggregators]


class FiLMPNAConv(MessagePassing):
    r"""PNA aggregation of FiLM-modulated messages, with an optional edge update.

    .. math::
        \mathbf{m}_{ij} &= \phi_{\mathrm{scale}}(\mathbf{e}_{ij}) \odot
            \phi_m([\mathbf{v}_i, \mathbf{v}_j]) + \phi_{\mathrm{shift}}(\mathbf{e}_{ij}) \\
        \mathbf{v}_i' &= U\Big(\Big[\mathbf{v}_i,\ \bigoplus_{j \in \mathcal{N}(i)}
            \mathbf{m}_{ij}\Big]\Big), \qquad
        \bigoplus = \begin{bmatrix} 1 \\ S(D, \alpha{=}1) \\ S(D, \alpha{=}{-1}) \end{bmatrix}
            \otimes \begin{bmatrix} \mu \\ \min \\ \max \\ \sigma \end{bmatrix} \\
        \mathbf{e}_{ij}' &= \phi_e([\mathbf{v}_i, \mathbf{e}_{ij}, \mathbf{v}_j])
            \quad \text{(:meth:`update_edges`)}

    :math:`i` is the target and :math:`j` the source of edge :math:`j \to i`; :math:`\phi_m`,
    :math:`\phi_{scale}`, :math:`\phi_{shift}` and :math:`U` are linear, :math:`\phi_e` is a
    two-layer MLP. :math:`\phi_m([v_i, v_j]) = W_i v_i + W_j v_j + b` is computed per node and
    gathered per edge, which is the same function at a fraction of the memory.

    ``"std"`` resolves to :class:`StableStdAggregation` (order-independent); the other aggregators
    are PyG's. The degree scalers need the in-degree histogram of the training set: pass ``deg`` or call
    :meth:`set_degree` later (until then every node counts as having the average degree 1).

    Args:
        channels (int): node width (input and output).
        edge_dim (int): edge width.
        deg (Tensor, optional): in-degree histogram of the training set
            (:func:`degree_histogram`). (default: :obj:`None`)
        aggregators (list of str, optional): PNA aggregators.
            (default: :obj:`["mean", "min", "max", "std"]`)
        scalers (list of str, optional): PNA degree scalers.
            (default: :obj:`["identity", "amplification", "attenuation"]`)
        edge_update (bool, optional): build :math:`\phi_e` for :meth:`update_edges`.
            (default: :obj:`True`)
        act (str, optional): activation of :math:`\phi_e`. (default: :obj:`"silu"`)

    Shapes:
        - **input:** node features :math:`(|V|, F)`, edge indices :math:`(2, |E|)`,
          edge features :math:`(|E|, F_e)`
        - **output:** node features :math:`(|V|, F)`; :meth:`update_edges`: :math:`(|E|, F_e)`
    """

    def __init__(
        self,
        channels: int,
        edge_dim: int,
        deg: Tensor | None = None,
        aggregators: Sequence[str] = ("mean", "min", "max", "std"),
        scalers: Sequence[str] = ("identity", "amplification", "attenuation"),
        edge_update: bool = True,
        act: str = "silu",
    ):
        deg_ = torch.as_tensor(_PLACEHOLDER_DEG if deg is None else deg)
        aggr = DegreeScalerAggregation(_resolve_aggregators(aggregators), list(scalers), deg_)
        super().__init__(aggr=aggr, node_dim=0)
        self.channels = channels
        self.edge_dim = edge_dim
        self.aggregators = tuple(aggregators)
        self.scalers = tuple(scalers)
        self.has_edge_update = edge_update

        self.film = nn.Linear(edge_dim, 2 * channels)  # phi_scale, phi_shift
        self.msg_dst = nn.Linear(channels, channels)  # phi_m, target half (carries the bias)
        self.msg_src = nn.Linear(channels, channels, bias=False)  # phi_m, source half
        self.post = nn.Linear((len(aggregators) * len(scalers) + 1) * channels, channels)  # U
        if edge_update:
            self.edge_lin = nn.Linear(edge_dim, edge_dim)
            self.edge_dst = nn.Linear(channels, edge_dim, bias=False)
            self.edge_src = nn.Linear(channels, edge_dim, bias=False)
            self.edge_act = activation_resolver(act)
            self.edge_out = nn.Linear(edge_dim, edge_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()  # resets the aggregation (degree statistics)
        for m in (self.film, self.msg_dst, self.msg_src, self.post):
            m.reset_parameters()
        if self.has_edge_update:
            for m in (self.edge_lin, self.edge_dst, self.edge_src, self.edge_out):
                m.reset_parameters()

    @torch.no_grad()
    def set_degree(self, deg: Tensor) -> None:
        """Set the degree statistics of the scalers from a training-set histogram."""
        deg = torch.as_tensor(deg).to(torch.float)
        n = float(deg.sum())
        if n <= 0:
            raise ValueError("the degree histogram is empty: fit it on the training graphs "
                             "(model.fit_statistics(train_graphs)) or pass deg=...")
        bins = torch.arange(deg.numel(), dtype=torch.float)
        aggr: DegreeScalerAggregation = self.aggr_module  # type: ignore[assignment]
        aggr.init_avg_deg_lin = float((bins * deg).sum()) / n
        aggr.init_avg_deg_log = float(((bins + 1).log() * deg).sum()) / n
        aggr.reset_parameters()

    def forward(self, x: Tensor, edge_index: Adj, edge_attr: Tensor) -> Tensor:
        # propagate_type: (h_dst: Tensor, h_src: Tensor, edge_attr: Tensor)
        out = self.propagate(edge_index, h_dst=self.msg_dst(x), h_src=self.msg_src(x),
                             edge_attr=edge_attr, size=None)  # (N, |aggr|*|scalers|*F)
        return self.post(torch.cat([x, out], dim=-1))  # (N, F)

    def message(self, h_dst_i: Tensor, h_src_j: Tensor, edge_attr: Tensor) -> Tensor:
        scale, shift = self.film(edge_attr).chunk(2, dim=-1)  # (E, F) each
        return scale * (h_dst_i + h_src_j) + shift  # (E, F)

    def update_edges(self, x: Tensor, edge_index: Adj, edge_attr: Tensor) -> Tensor:
        r"""Edge update :math:`\phi_e([\mathbf{v}_i, \mathbf{e}_{ij}, \mathbf{v}_j])` (eq. 3)."""
        if not self.has_edge_update:
            raise RuntimeError("this FiLMPNAConv was built with edge_update=False")
        return self.edge_updater(edge_index, g_dst=self.edge_dst(x), g_src=self.edge_src(x),
                                 edge_attr=edge_attr)

    def edge_update(self, g_dst_i: Tensor, g_src_j: Tensor, edge_attr: Tensor) -> Tensor:
        h = self.edge_lin(edge_attr) + g_dst_i + g_src_j  # (E, Fe)
        return self.edge_out(self.edge_act(h))  # (E, Fe)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, edge_dim={self.edge_dim}, "
                f"aggregators={list(self.aggregators)}, scalers={list(self.scalers)}, "
                f"edge_update={self.has_edge_update})")
