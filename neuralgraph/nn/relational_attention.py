r"""Relational attention and the relational-transformer layer (the NG-T layer).

Relational attention is from `"Relational Attention: Generalizing Transformers for Graph-Structured
Tasks" <https://arxiv.org/abs/2210.05062>`_ (Diao & Loynd, ICLR 2023); the value modulation is eq. 5
of `"Graph Neural Networks for Learning Equivariant Representations of Neural Networks"
<https://arxiv.org/abs/2403.12143>`_ (Kofinas et al., ICLR 2024).

Two layouts of the same computation, with the same parameters:

* **dense**: node states ``(B, n, F)``, pair states ``(B, n, n, F_e)`` where ``e[b, i, j]`` is the
  pair *target i, source j*, and a node mask ``(B, n)``; every node attends to every real node of
  its own graph, padding is masked out of the keys (so results do not depend on the batch).
* **sparse**: node states ``(N, F)``, edge states ``(M, F_e)`` and ``edge_index`` ``(2, M)``
  (source -> target); a node attends over its incoming edges only, memory :math:`O(M)`.
  Attention weights are normalised per target with :func:`torch_geometric.utils.softmax`.

On the complete graph (every pair, self-pairs included) the two layouts agree.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import scatter, softmax

from neuralgraph.nn.precision import full_precision

__all__ = ["RelationalAttention", "RelationalEdgeUpdate", "RelationalTransformerLayer"]


class RelationalAttention(nn.Module):
    r"""Multi-head attention whose queries, keys and values are conditioned on edge features.

    .. math::
        \mathbf{q}_{ij} &= W_q \mathbf{v}_i + W^e_q \mathbf{e}_{ij}, \qquad
        \mathbf{k}_{ij} = W_k \mathbf{v}_j + W^e_k \mathbf{e}_{ij} \\
        \mathbf{u}_{ij} &= (W_{\mathrm{scale}} \mathbf{e}_{ij}) \odot (W_n \mathbf{v}_j)
            + W_{\mathrm{shift}} \mathbf{e}_{ij} \\
        \mathbf{v}_i' &= W_o \sum_j \operatorname{softmax}_j\!\Big(
            \tfrac{\mathbf{q}_{ij}^\top \mathbf{k}_{ij}}{\sqrt{d_h}}\Big)\, \mathbf{u}_{ij}

    per head, where :math:`i` is the target (query) and :math:`j` the source (key/value).

    Args:
        node_dim (int): node width :math:`F`.
        edge_dim (int): edge width :math:`F_e`.
        attn_dim (int): total width of queries/keys/values (split over heads).
        heads (int, optional): number of heads. (default: :obj:`1`)
        modulate_v (bool, optional): FiLM value modulation (eq. 5); otherwise
            :math:`\mathbf{u}_{ij} = W_n \mathbf{v}_j + W^e_v \mathbf{e}_{ij}`. (default: :obj:`True`)

    Shapes:
        - **input (sparse):** :math:`(|V|, F)`, :math:`(M, F_e)`, ``edge_index`` :math:`(2, M)`
        - **input (dense):** :math:`(B, n, F)`, :math:`(B, n, n, F_e)`, ``mask`` :math:`(B, n)`
        - **output:** node features of the input's layout, width :math:`F`
    """

    def __init__(self, node_dim: int, edge_dim: int, attn_dim: int, heads: int = 1,
                 modulate_v: bool = True):
        super().__init__()
        if attn_dim % heads != 0:
            raise ValueError(f"attn_dim ({attn_dim}) must be divisible by heads ({heads})")
        self.node_dim, self.edge_dim, self.attn_dim, self.heads = node_dim, edge_dim, attn_dim, heads
        self.head_dim = attn_dim // heads
        self.modulate_v = modulate_v
        self.n_edge_proj = 4 if modulate_v else 3
        self.qkv_node = nn.Linear(node_dim, 3 * attn_dim, bias=False)
        self.qkv_edge = nn.Linear(edge_dim, self.n_edge_proj * attn_dim, bias=False)
        self.proj = nn.Linear(attn_dim, node_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.qkv_node, self.qkv_edge, self.proj):
            nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(self.proj.bias)

    def _edge_proj(self, e: Tensor, i: int) -> Tensor:
        """The ``i``-th edge projection (0: query, 1: key, 2: value shift, 3: value scale).

        Computed one at a time (a row block of ``qkv_edge``) so that on large graphs only a few
        ``(M, attn_dim)`` temporaries are alive at once.
        """
        A = self.attn_dim
        out = F.linear(e, self.qkv_edge.weight[i * A:(i + 1) * A])  # (*, A)
        return out.view(*e.shape[:-1], self.heads, self.head_dim)  # (*, H, D)

    def _values(self, v_src: Tensor, e: Tensor) -> Tensor:
        if self.modulate_v:  # eq. 5: (W_scale e) * (W_n v_j) + W_shift e
            return v_src * self._edge_proj(e, 3) + self._edge_proj(e, 2)
        return v_src + self._edge_proj(e, 2)

    def forward(self, x: Tensor, e: Tensor, edge_index: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            return self.dense(x, e, mask)
        if edge_index is None:
            raise ValueError("RelationalAttention needs `edge_index` (sparse) or `mask` (dense)")
        return self.sparse(x, e, edge_index)

    def sparse(self, x: Tensor, e: Tensor, edge_index: Tensor) -> Tensor:
        N, H, D = x.size(0), self.heads, self.head_dim
        src, dst = edge_index[0], edge_index[1]
        q_n, k_n, v_n = self.qkv_node(x).view(N, 3, H, D).unbind(1)  # (N, H, D) each
        q = q_n[dst] + self._edge_proj(e, 0)  # (M, H, D)
        k = k_n[src] + self._edge_proj(e, 1)  # (M, H, D)
        logits = torch.einsum("mhd,mhd->mh", q, k) / math.sqrt(D)  # (M, H)
        del q, k
        # float32 even under autocast: a bfloat16 normaliser over many edges loses the small weights
        alpha = softmax(full_precision(logits), dst, num_nodes=N)  # (M, H), sums to 1 over each target's edges
        u = self._values(v_n[src], e)  # (M, H, D)
        u = u.mul_(alpha.unsqueeze(-1))  # in place: u is not saved for backward
        out = scatter(u, dst, dim=0, dim_size=N, reduce="sum")  # (N, H, D)
        return self.proj(out.reshape(N, H * D))  # (N, F)

    def dense(self, x: Tensor, e: Tensor, mask: Tensor) -> Tensor:
        r"""Dense layout, with the node terms factorised out of the pair terms.

        With :math:`W^e_q, W^e_k, W_{scale}, W_{shift}` the edge projections (per head ``(D, F_e)``):

        * logits: :math:`q_i^\top k_j + (W^{e\top}_k q_i)^\top e_{ij} + (W^{e\top}_q k_j)^\top e_{ij}
          + (W^e_q e_{ij})^\top (W^e_k e_{ij})`;
        * values: :math:`\sum_j \alpha_{ij} \big((W_{scale} e_{ij}) \odot v_j + W_{shift} e_{ij}\big)`.

        The per-pair projections are single matrix products over all pairs (``(B, n, n, attn_dim)``
        each, no per-pair small matrix products). Same function as :meth:`sparse` on the complete graph.
        """
        B, n, H, D = x.size(0), x.size(1), self.heads, self.head_dim
        q_n, k_n, v_n = self.qkv_node(x).view(B, n, 3, H, D).unbind(2)  # (B, n, H, D) each
        W = self.qkv_edge.weight.view(self.n_edge_proj, H, D, self.edge_dim).to(x.dtype)  # (P, H, D, Fe)
        e = e.to(x.dtype)
        a = torch.einsum("bihd,hdf->bihf", q_n, W[1])  # W_ke^T q_i: (B, n, H, Fe)
        c = torch.einsum("bjhd,hdf->bjhf", k_n, W[0])  # W_qe^T k_j: (B, n, H, Fe)
        qk_e = (self._edge_proj(e, 0) * self._edge_proj(e, 1)).sum(-1)  # (W_qe e)^T (W_ke e): (B, i, j, H)
        logits = (torch.einsum("bihd,bjhd->bijh", q_n, k_n)  # (B, i, j, H)
                  + torch.einsum("bijf,bihf->bijh", e, a)
                  + torch.einsum("bijf,bjhf->bijh", e, c)
                  + qk_e)
        logits = logits / math.sqrt(D)
        logits = logits.masked_fill(~mask[:, None, :, None], float("-inf"))  # padding is no key
        alpha = full_precision(logits).softmax(dim=2).to(x.dtype)  # (B, i, j, H), float32 even under autocast
        u = self._values(v_n.unsqueeze(1), e)  # (B, i, j, H, D)
        out = (alpha.unsqueeze(-1) * u).sum(2)  # (B, i, H, D)
        return self.proj(out.reshape(B, n, H * D))  # (B, n, F)

    def extra_repr(self) -> str:
        return (f"node_dim={self.node_dim}, edge_dim={self.edge_dim}, attn_dim={self.attn_dim}, "
                f"heads={self.heads}, modulate_v={self.modulate_v}")


class RelationalEdgeUpdate(nn.Module):
    r"""Edge update of the relational transformer.

    .. math::
        \mathbf{e}_{ij}' = W_2\, \sigma\big(W_e [\mathbf{e}_{ij}, \mathbf{e}_{ji}]
            + W_t \mathbf{v}_i + W_s \mathbf{v}_j\big)

    where :math:`\mathbf{e}_{ji}` is the state of the reversed pair (the transpose in the dense
    layout, ``partner`` in the sparse one).

    Shapes:
        - **input (sparse):** :math:`(|V|, F)`, :math:`(M, F_e)`, ``edge_index`` :math:`(2, M)`,
          ``partner`` :math:`(M,)`
        - **input (dense):** :math:`(B, n, F)`, :math:`(B, n, n, F_e)`
        - **output:** edge features of the input's layout
    """

    def __init__(self, node_dim: int, edge_dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.lin_e = nn.Linear(2 * edge_dim, hidden)
        self.lin_t = nn.Linear(node_dim, hidden, bias=False)
        self.lin_s = nn.Linear(node_dim, hidden, bias=False)
        self.lin_out = nn.Linear(hidden, edge_dim)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.lin_e, self.lin_t, self.lin_s, self.lin_out):
            m.reset_parameters()

    def forward(self, x: Tensor, e: Tensor, edge_index: Tensor | None = None,
                partner: Tensor | None = None) -> Tensor:
        if edge_index is None:  # dense
            e_rev = e.transpose(1, 2)  # (B, i, j, Fe): state of pair (j, i)
            h = (self.lin_e(torch.cat([e, e_rev], -1)) + self.lin_t(x).unsqueeze(2)
                 + self.lin_s(x).unsqueeze(1))  # (B, i, j, hidden)
        else:
            if partner is None:
                raise ValueError("the sparse edge update needs `partner` (index of each reverse pair)")
            h = (self.lin_e(torch.cat([e, e[partner]], -1)) + self.lin_t(x)[edge_index[1]]
                 + self.lin_s(x)[edge_index[0]])  # (M, hidden)
        return self.dropout(self.lin_out(F.gelu(h)))


class RelationalTransformerLayer(nn.Module):
    r"""One relational-transformer block: attention + node MLP, then edge update + edge MLP.

    Post-norm (default, as the reference):

    .. math::
        V &\leftarrow \mathrm{LN}(V + \mathrm{RelAttn}(V, E)), \quad
        V \leftarrow \mathrm{LN}(V + \mathrm{MLP}(V)) \\
        E &\leftarrow \mathrm{LN}(E + \mathrm{EdgeUpd}(V, E)), \quad
        E \leftarrow \mathrm{LN}(E + \mathrm{MLP}(E))

    Pre-norm (``norm_first=True``) applies each LayerNorm to the sublayer input instead and keeps
    the residual stream un-normalised (the model adds a final LayerNorm).

    Args:
        node_dim (int): node width.
        edge_dim (int): edge width.
        attn_dim (int): attention width.
        node_hidden (int): hidden width of the node MLP.
        edge_hidden (int): hidden width of the edge update and edge MLP.
        heads (int, optional): attention heads. (default: :obj:`1`)
        dropout (float, optional): dropout on sublayer outputs. (default: :obj:`0.0`)
        norm_first (bool, optional): pre-norm instead of post-norm. (default: :obj:`False`)
        edge_update (bool, optional): update the edge states. (default: :obj:`True`)
        modulate_v (bool, optional): FiLM value modulation (eq. 5). (default: :obj:`True`)

    Shapes: as :class:`RelationalAttention`; returns ``(x, e)`` in the input layout.
    """

    def __init__(self, node_dim: int, edge_dim: int, attn_dim: int, node_hidden: int,
                 edge_hidden: int, heads: int = 1, dropout: float = 0.0, norm_first: bool = False,
                 edge_update: bool = True, modulate_v: bool = True):
        super().__init__()
        self.norm_first = norm_first
        self.has_edge_update = edge_update
        self.attn = RelationalAttention(node_dim, edge_dim, attn_dim, heads, modulate_v)
        self.attn_drop = nn.Dropout(dropout)
        self.node_mlp = nn.Sequential(nn.Linear(node_dim, node_hidden), nn.GELU(),
                                      nn.Linear(node_hidden, node_dim), nn.Dropout(dropout))
        self.ln0, self.ln1 = nn.LayerNorm(node_dim), nn.LayerNorm(node_dim)
        self.eln0 = nn.LayerNorm(edge_dim) if (edge_update or norm_first) else None
        if edge_update:
            self.edge_upd = RelationalEdgeUpdate(node_dim, edge_dim, edge_hidden, dropout)
            self.edge_mlp = nn.Sequential(nn.Linear(edge_dim, edge_hidden), nn.GELU(),
                                          nn.Linear(edge_hidden, edge_dim), nn.Dropout(dropout))
            self.eln1 = nn.LayerNorm(edge_dim)
            self.ln2 = nn.LayerNorm(node_dim) if norm_first else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        self.attn.reset_parameters()  # xavier init, after the generic Linear reset above

    def forward(self, x: Tensor, e: Tensor, edge_index: Tensor | None = None,
                partner: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.norm_first:
            e_n = self.eln0(e)
            x = x + self.attn_drop(self.attn(self.ln0(x), e_n, edge_index, mask))
            x = x + self.node_mlp(self.ln1(x))
            if self.has_edge_update:
                e = e + self.edge_upd(self.ln2(x), e_n, edge_index, partner)
                e = e + self.edge_mlp(self.eln1(e))
        else:
            x = self.ln0(x + self.attn_drop(self.attn(x, e, edge_index, mask)))
            x = self.ln1(x + self.node_mlp(x))
            if self.has_edge_update:
                e = self.eln0(e + self.edge_upd(x, e, edge_index, partner))
                e = self.eln1(e + self.edge_mlp(e))
        return x, e
