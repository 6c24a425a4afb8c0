r"""NG-T: a relational transformer on neural graphs.

`"Graph Neural Networks for Learning Equivariant Representations of Neural Networks"
<https://arxiv.org/abs/2403.12143>`_ (Kofinas et al., ICLR 2024), §3, eq. 5, with the relational
attention of `Diao & Loynd (2023) <https://arxiv.org/abs/2210.05062>`_
(:class:`~neuralgraph.nn.RelationalTransformerLayer`).

Every ordered node pair :math:`(i \leftarrow j)` carries a state. It starts as

* a real edge :math:`j \to i`: the encoded weight + a learned *forward* vector;
* the reverse of a real edge (pair :math:`(j \leftarrow i)`): the same encoded weight + a learned
  *reverse* vector;
* the self pair :math:`(i \leftarrow i)`: a learned *self* vector;
* any other pair (dense mode only): a learned *absent* vector.

(Parallel edges between the same two neurons are summed into one pair state in dense mode and keep
separate states in sparse mode.)

Two modes with the same parameters:

* ``mode="dense"`` (faithful to the paper): attention among all node pairs of the same graph.
  The batch's graphs are sorted by size and run in groups of similar size (``max_padding``), each
  group padded to its largest graph; padding is masked out of the keys, so a graph's output does
  not depend on what it is batched with or how it is grouped. Memory :math:`O(\sum_b n_b^2)`
  (``checkpoint=True``: only each layer's input pair states are kept for backward).
* ``mode="sparse"``: attention restricted to the edges, their reverses and self pairs;
  memory :math:`O(|E| + |V|)`, for large networks. On a graph whose pairs are all edges, reverses
  or self pairs the two modes agree.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as recompute

from neuralgraph.models.heads import PAPER_READOUT, EquivariantOutput, apply_head, graph_index, make_head
from neuralgraph.models.registry import register_model
from neuralgraph.nn.embeddings import EncoderConfig, NeuralGraphEncoder
from neuralgraph.nn.relational_attention import RelationalTransformerLayer
from neuralgraph.transforms.probe_features import MemberNetwork, make_probe_features, with_probe_features

__all__ = ["NGT", "PAIR_TYPES", "NG_T_ENCODER", "size_buckets"]

#: NG-T's input encoding: random Fourier features (128 frequencies, scale 1.0)
NG_T_ENCODER = EncoderConfig()

#: Pair categories whose learned vectors are added to pair states.
PAIR_TYPES = ("absent", "forward", "reverse", "self")
_ABSENT, _FWD, _REV, _SELF = range(4)


@register_model("ng-t")
class NGT(nn.Module):
    r"""NG-T (registered as ``"ng-t"``).

    Args:
        out_dim (int): output size (per graph, or per node/edge for ``head="equivariant"``).
        node_in (int): :math:`F_{node}` of the neural graphs. (default: :obj:`4`)
        edge_in (int): :math:`F_{edge}` of the neural graphs. (default: :obj:`49`)
        node_dim (int, optional): node width. (default: :obj:`16`, CNN Wild Park in the paper)
        edge_dim (int, optional): edge width. (default: :obj:`8`)
        attn_dim (int, optional): attention width. (default: ``2 * node_dim``)
        node_hidden (int, optional): node MLP width. (default: ``2 * node_dim``)
        edge_hidden (int, optional): edge MLP width. (default: ``2 * edge_dim``)
        num_layers (int, optional): transformer layers. (default: :obj:`4`)
        heads (int, optional): attention heads. (default: :obj:`1`)
        dropout (float, optional): dropout on sublayer outputs. (default: :obj:`0.0`)
        mode (str, optional): ``"dense"`` or ``"sparse"`` (see the module docstring).
            (default: :obj:`"dense"`)
        max_padding (float, optional): dense mode: the batch's graphs run in size-sorted groups whose
            padded pair states are at most this multiple of their real ones (:func:`size_buckets`);
            ``None``: one pass over the whole batch padded to its largest graph. Same outputs either
            way (up to float rounding). (default: :obj:`1.25`)
        checkpoint (bool, optional): dense mode, training: recompute each layer in backward
            (:func:`torch.utils.checkpoint.checkpoint`) instead of storing its ``(B, n, n, *)``
            intermediates. (default: :obj:`False`)
        norm_first (bool, optional): pre-norm layers (+ final LayerNorm) instead of post-norm.
            (default: :obj:`False`)
        modulate_v (bool, optional): FiLM value modulation, eq. 5. (default: :obj:`True`)
        edge_updates (bool, optional): update edge states between layers. (default: :obj:`True`)
        head, readout, num_outputs, head_hidden, node_out_dim: as
            :class:`~neuralgraph.models.NGGNN` (``head_hidden`` defaults to ``2 * node_dim``).
        encoder (EncoderConfig or dict, optional): the input encoding shared with the other neural-graph model
            (:class:`~neuralgraph.nn.EncoderConfig`: embeddings on / off for ablations, table sizes, Fourier
            features, ``separate_linear``); a dict is merged over this default.
            (default: :data:`NG_T_ENCODER`: 128 random Fourier features at scale 1.0)
        probes (int, optional): learned probe inputs run through every input network (Neural Graphs §2.4,
            eq. 2): each neuron's values on them are appended to its node features, computed per batch
            from the graphs' own parameters and learned end to end. One of 0, 4, 16, 64; needs
            ``member_network``. (default: :obj:`0`)
        member_network (MemberNetwork, optional): the input networks' one architecture (tasks supply it).

    Shapes:
        - **input:** a PyG ``Batch`` of :class:`~neuralgraph.NeuralGraph`
        - **output:** :math:`(B, out)`, or ``(node [|V|, out], edge [|E|, out])``
    """

    input_kind: ClassVar[str] = "graph"
    permutation_invariant: ClassVar[bool] = True
    #: the ``head`` giving per-node / per-edge outputs that map onto parameters (per-parameter tasks)
    parameter_head: ClassVar[str] = "equivariant"

    def __init__(
        self,
        out_dim: int = 1,
        node_in: int = 4,
        edge_in: int = 49,
        *,
        node_dim: int = 16,
        edge_dim: int = 8,
        attn_dim: int | None = None,
        node_hidden: int | None = None,
        edge_hidden: int | None = None,
        num_layers: int = 4,
        heads: int = 1,
        dropout: float = 0.0,
        mode: str = "dense",
        max_padding: float | None = 1.25,
        checkpoint: bool = False,
        norm_first: bool = False,
        modulate_v: bool = True,
        edge_updates: bool = True,
        head: str = "graph",
        readout: str = PAPER_READOUT,
        num_outputs: int | None = None,
        head_hidden: int | None = None,
        node_out_dim: int | None = None,
        encoder: EncoderConfig | dict[str, Any] = NG_T_ENCODER,
        probes: int = 0,
        member_network: MemberNetwork | None = None,
    ):
        super().__init__()
        if mode not in ("dense", "sparse"):
            raise ValueError(f"Could not resolve mode {mode!r} among choices ['dense', 'sparse']")
        if max_padding is not None and not max_padding >= 1.0:
            raise ValueError(f"max_padding must be >= 1.0 (padded / real pair states) or None, got {max_padding!r}")
        self.max_padding, self.checkpoint = max_padding, checkpoint
        self.out_dim, self.node_dim, self.edge_dim = out_dim, node_dim, edge_dim
        self.num_layers, self.mode, self.norm_first = num_layers, mode, norm_first
        self.head_kind = head
        self.encoder = NeuralGraphEncoder(node_in, edge_in, node_dim, edge_dim, NG_T_ENCODER.updated(encoder),
                                          probe_in=probes)
        self.pair_emb = nn.Embedding(len(PAIR_TYPES), edge_dim)
        final_edge_update = edge_updates and head == "equivariant"
        self.layers = nn.ModuleList([
            RelationalTransformerLayer(
                node_dim, edge_dim, attn_dim or 2 * node_dim, node_hidden or 2 * node_dim,
                edge_hidden or 2 * edge_dim, heads, dropout, norm_first,
                edge_update=edge_updates and ((k < num_layers - 1) or final_edge_update),
                modulate_v=modulate_v)
            for k in range(num_layers)])
        self.final_ln = nn.LayerNorm(node_dim) if norm_first else None
        self.final_eln = nn.LayerNorm(edge_dim) if (norm_first and final_edge_update) else None
        self.head = make_head(head, node_dim, edge_dim, out_dim, readout, num_outputs,
                              head_hidden or 2 * node_dim, node_out_dim)
        self.probe = make_probe_features(probes, member_network, "ng-t")  # last: the same init without probes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        self.pair_emb.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        for ln in (self.final_ln, self.final_eln):
            if ln is not None:
                ln.reset_parameters()
        self.head.reset_parameters()
        if self.probe is not None:
            self.probe.reset_parameters()

    # --- pair states ---------------------------------------------------------------------------
    def _sparse_pairs(self, x: Tensor, e: Tensor, edge_index: Tensor
                      ) -> tuple[Tensor, Tensor, Tensor]:
        """Edges, reversed edges and self pairs: ``(edge_index [2, M], e [M, Fe], partner [M])``."""
        N, E = x.size(0), edge_index.size(1)
        loops = torch.arange(N, device=x.device)
        ei = torch.cat([edge_index, edge_index.flip(0), loops.expand(2, N)], dim=1)  # (2, M)
        pe = self.pair_emb.weight.to(e.dtype)
        e = torch.cat([e + pe[_FWD], e + pe[_REV], pe[_SELF].expand(N, -1)], dim=0)  # (M, Fe)
        ar = torch.arange(E, device=x.device)
        partner = torch.cat([ar + E, ar, 2 * E + loops])  # (M,) index of the reversed pair
        return ei, e, partner

    def _dense(self, x: Tensor, e: Tensor, graph: Tensor, pos: Tensor, edge_graph: Tensor, src: Tensor,
               dst: Tensor, num_graphs: int, n: int) -> tuple[Tensor, Tensor]:
        """One dense pass over ``num_graphs`` graphs padded to ``n`` nodes: the layers on node states
        ``(G, n, F)`` and pair states ``(G, n, n, Fe)``; returns the updated ``x [N', F]`` and
        ``e [E', Fe]`` in input order. ``graph``/``pos``: each node's graph (``0..G-1``) and index inside
        it; ``edge_graph``/``src``/``dst``: each edge's graph and its endpoints' indices inside it."""
        G, device = num_graphs, x.device
        xd = x.new_zeros(G, n, x.size(1)).index_put((graph, pos), x)  # (G, n, F)
        mask = torch.zeros(G, n, dtype=torch.bool, device=device)
        mask = mask.index_put((graph, pos), torch.ones_like(pos, dtype=torch.bool))  # (G, n) real nodes
        ptype = torch.full((G, n, n), _ABSENT, dtype=torch.long, device=device)
        diag = torch.arange(n, device=device)
        ptype[:, diag, diag] = _SELF
        ptype[edge_graph, dst, src] = _FWD  # pair (target, source) of each edge
        ptype[edge_graph, src, dst] = _REV
        ed = self.pair_emb(ptype)  # (G, n, n, Fe)
        e = e.to(ed.dtype)
        ed = ed.index_put((edge_graph, dst, src), e, accumulate=True)
        ed = ed.index_put((edge_graph, src, dst), e, accumulate=True)
        for layer in self.layers:
            if self.checkpoint and torch.is_grad_enabled():
                xd, ed = recompute(layer, xd, ed, None, None, mask, use_reentrant=False)
            else:
                xd, ed = layer(xd, ed, mask=mask)
        return xd[graph, pos], ed[edge_graph, dst, src]  # (N', F), (E', Fe)

    def _dense_batch(self, data, x: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        """Dense mode over a batch: one :meth:`_dense` pass per group of :func:`size_buckets`, the
        results put back in the batch's node and edge order."""
        batch, B = graph_index(data)
        counts = torch.bincount(batch, minlength=B)  # (B,) nodes per graph
        start = torch.cumsum(counts, 0) - counts
        pos = torch.arange(x.size(0), device=x.device) - start[batch]  # (N,) index inside its graph
        src, dst = data.edge_index
        edge_graph = batch[dst]
        groups = size_buckets(counts, self.max_padding)
        if len(groups) == 1 and groups[0].numel() == B:  # the whole batch in one pass
            return self._dense(x, e, batch, pos, edge_graph, pos[src], pos[dst], B, int(counts.max()))
        xs, es, node_order, edge_order = [], [], [], []
        local = torch.full((B,), -1, dtype=torch.long, device=x.device)
        for group in groups:
            local.fill_(-1)
            local[group] = torch.arange(group.numel(), device=x.device)
            nodes = (local[batch] >= 0).nonzero().squeeze(1)
            edges = (local[edge_graph] >= 0).nonzero().squeeze(1)
            xo, eo = self._dense(x[nodes], e[edges], local[batch[nodes]], pos[nodes], local[edge_graph[edges]],
                                 pos[src[edges]], pos[dst[edges]], group.numel(), int(counts[group].max()))
            xs.append(xo), es.append(eo), node_order.append(nodes), edge_order.append(edges)
        xs, es = torch.cat(xs), torch.cat(es)  # back in batch order:
        x = xs.new_zeros(x.size(0), xs.size(1)).index_put((torch.cat(node_order),), xs)  # (N, F)
        e = es.new_zeros(e.size(0), es.size(1)).index_put((torch.cat(edge_order),), es)  # (E, Fe)
        return x, e

    # --- forward -------------------------------------------------------------------------------
    def encode(self, data) -> tuple[Tensor, Tensor]:
        """Node states ``[N, node_dim]`` and forward-edge states ``[E, edge_dim]``."""
        if self.probe is not None:
            data = with_probe_features(data, self.probe)  # x: (N, F + M)
        x, e = self.encoder(data)  # (N, F), (E, Fe)
        E = e.size(0)
        if self.mode == "sparse":
            ei, e, partner = self._sparse_pairs(x, e, data.edge_index)
            for layer in self.layers:
                x, e = layer(x, e, edge_index=ei, partner=partner)
            e = e[:E]
        else:
            x, e = self._dense_batch(data, x, e)  # (N, F), (E, Fe)
        if self.final_ln is not None:
            x = self.final_ln(x)
        if self.final_eln is not None:
            e = self.final_eln(e)
        return x, e

    def forward(self, data) -> Tensor | EquivariantOutput:
        x, e = self.encode(data)
        return apply_head(self.head, data, x, e)


def size_buckets(counts: Tensor, max_padding: float | None) -> list[Tensor]:
    """Groups of graphs for dense passes: graph indices sorted by node count, cut greedily so that each
    group's padded pair states (``len(group) * max(n)^2``) stay within ``max_padding`` times its real
    ones (``sum n^2``). Graphs without nodes are left out. ``None``: every graph in one group.

    Args:
        counts (Tensor): nodes per graph, ``(B,)``.
        max_padding (float, optional): the largest padded / real pair-state ratio of a group (>= 1).
    """
    if max_padding is None:
        return [torch.arange(counts.numel(), device=counts.device)]
    order = torch.argsort(counts, stable=True)
    order = order[counts[order] > 0]
    sizes = counts[order].tolist()
    groups, first, real = [], 0, 0
    for k, n in enumerate(sizes):
        if k > first and (k - first + 1) * n * n > max_padding * (real + n * n):
            groups.append(order[first:k])
            first, real = k, 0
        real += n * n
    if sizes:
        groups.append(order[first:])
    return groups
