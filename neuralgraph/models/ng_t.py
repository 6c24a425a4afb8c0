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

* ``mode="dense"`` (faithful to the paper): attention among all node pairs of the same graph,
  via :func:`~torch_geometric.utils.to_dense_batch`; padding is masked out of the keys, so a
  graph's output does not depend on what it is batched with. Memory :math:`O(B n^2)`.
* ``mode="sparse"``: attention restricted to the edges, their reverses and self pairs;
  memory :math:`O(|E| + |V|)`, for large networks. On a graph whose pairs are all edges, reverses
  or self pairs the two modes agree.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch_geometric.utils import to_dense_batch

from neuralgraph.models.heads import PAPER_READOUT, EquivariantOutput, apply_head, graph_index, make_head
from neuralgraph.models.registry import register_model
from neuralgraph.nn.embeddings import EncoderConfig, NeuralGraphEncoder
from neuralgraph.nn.relational_attention import RelationalTransformerLayer
from neuralgraph.transforms.probe_features import MemberNetwork, make_probe_features, with_probe_features

__all__ = ["NGT", "PAIR_TYPES", "NG_T_ENCODER"]

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

    def _dense_pairs(self, data, x: Tensor, e: Tensor):
        """Dense node states ``(B, n, F)``, mask ``(B, n)``, pair states ``(B, n, n, Fe)``, and
        the positions of the nodes and edges in them."""
        batch, B = graph_index(data)
        xd, mask = to_dense_batch(x, batch, batch_size=B)  # (B, n, F), (B, n)
        n = xd.size(1)
        counts = torch.bincount(batch, minlength=B)
        start = torch.cumsum(counts, 0) - counts  # (B,) first node of each graph
        pos = torch.arange(x.size(0), device=x.device) - start[batch]  # (N,) index inside its graph
        src, dst = data.edge_index
        gb, ps, pt = batch[dst], pos[src], pos[dst]
        ptype = torch.full((B, n, n), _ABSENT, dtype=torch.long, device=x.device)
        diag = torch.arange(n, device=x.device)
        ptype[:, diag, diag] = _SELF
        ptype[gb, pt, ps] = _FWD  # pair (target, source) of each edge
        ptype[gb, ps, pt] = _REV
        ed = self.pair_emb(ptype)  # (B, n, n, Fe)
        e = e.to(ed.dtype)
        ed = ed.index_put((gb, pt, ps), e, accumulate=True)
        ed = ed.index_put((gb, ps, pt), e, accumulate=True)
        flat = batch * n + pos  # (N,) row of each node in xd.view(B * n, F)
        return xd, mask, ed, flat, (gb, pt, ps)

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
            xd, mask, ed, flat, edge_pos = self._dense_pairs(data, x, e)
            for layer in self.layers:
                xd, ed = layer(xd, ed, mask=mask)
            x, e = xd.flatten(0, 1)[flat], ed[edge_pos]  # (N, F), (E, Fe)
        if self.final_ln is not None:
            x = self.final_ln(x)
        if self.final_eln is not None:
            e = self.final_eln(e)
        return x, e

    def forward(self, data) -> Tensor | EquivariantOutput:
        x, e = self.encode(data)
        return apply_head(self.head, data, x, e)
