"""Symmetry helpers: permute hidden neurons of real torch modules and compare neural graphs.

`permute_out` / `permute_in` act on module parameters (never on graphs), so a test first checks that
the permuted module computes the same function (which validates the permutation) and only then
compares the two neural graphs.
"""
from __future__ import annotations

import copy
from typing import Callable

import networkx as nx
import torch
from torch import Tensor, nn


@torch.no_grad()
def permute_out(layer: nn.Module, perm: Tensor) -> None:
    """Permute the output neurons / channels of a Linear / Conv (weight axis 0 and bias)."""
    layer.weight.copy_(layer.weight[perm])
    if getattr(layer, "bias", None) is not None:
        layer.bias.copy_(layer.bias[perm])


@torch.no_grad()
def permute_in(layer: nn.Module, perm: Tensor) -> None:
    """Permute the input neurons / channels of a Linear / Conv (weight axis 1). For a grouped conv, ``perm``
    must map every group of input channels onto itself (each group's slice of the weight is permuted)."""
    groups = getattr(layer, "groups", 1)
    if groups == 1:
        layer.weight.copy_(layer.weight[:, perm])
        return
    in_pg, out_pg = layer.weight.shape[1], layer.weight.shape[0] // groups
    for g in range(groups):
        local = perm[g * in_pg:(g + 1) * in_pg] - g * in_pg
        assert local.min() >= 0 and local.max() < in_pg, "the permutation moves channels across conv groups"
        rows = layer.weight[g * out_pg:(g + 1) * out_pg]
        rows.copy_(rows[:, local])


@torch.no_grad()
def permute_features(layer: nn.Module, perm: Tensor) -> None:
    """Permute the per-feature tensors of a normalization layer (affine parameters, running statistics)."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(layer, name, None)
        if t is not None:
            t.copy_(t[perm])


def head_permutation(heads: int, head_dim: int, gen: torch.Generator) -> Tensor:
    """An order of the ``heads * head_dim`` attention neurons: whole heads permuted and, within each head,
    its neurons (one permutation per head, shared by that head's q, k and v rows). Applied to the q, k, v
    rows and to the columns of the output projection alike, it is a symmetry of multi-head attention."""
    order = torch.randperm(heads, generator=gen)
    return torch.cat([order[h] * head_dim + torch.randperm(head_dim, generator=gen) for h in range(heads)])


@torch.no_grad()
def permute_heads(attn: nn.MultiheadAttention, rows: Tensor) -> None:
    """Reorder the attention neurons of an ``nn.MultiheadAttention`` (``rows``: see
    :func:`head_permutation`): q, k, v rows of the (packed or separate) projections, their biases, and
    the output projection's columns."""
    e = attn.embed_dim
    qkv = torch.cat([rows, rows + e, rows + 2 * e])
    if attn.in_proj_weight is not None:
        attn.in_proj_weight.copy_(attn.in_proj_weight[qkv])
    else:
        for w in (attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight):
            w.copy_(w[rows])
    if attn.in_proj_bias is not None:
        attn.in_proj_bias.copy_(attn.in_proj_bias[qkv])
    permute_in(attn.out_proj, rows)


@torch.no_grad()
def permute_attention_inputs(attn: nn.MultiheadAttention, perm: Tensor) -> None:
    """Permute the input features of a self-attention ``nn.MultiheadAttention`` (columns of q, k, v)."""
    if attn.in_proj_weight is not None:
        attn.in_proj_weight.copy_(attn.in_proj_weight[:, perm])
    else:
        for w in (attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight):
            w.copy_(w[:, perm])


def permute_encoder_layer(layer: nn.TransformerEncoderLayer, gen: torch.Generator,
                          stream: Tensor | None = None) -> None:
    """Heads, neurons within heads and feed-forward hidden neurons of an ``nn.TransformerEncoderLayer``;
    with ``stream``, also the residual stream (the layer's input and output features, LayerNorms and
    every projection reading or writing it), which is a hidden-neuron symmetry when the layer sits
    between other layers."""
    attn = layer.self_attn
    permute_heads(attn, head_permutation(attn.num_heads, attn.head_dim, gen))
    hidden = torch.randperm(layer.linear1.out_features, generator=gen)
    permute_out(layer.linear1, hidden)
    permute_in(layer.linear2, hidden)
    if stream is not None:
        permute_attention_inputs(attn, stream)
        permute_out(attn.out_proj, stream)
        permute_in(layer.linear1, stream)
        permute_out(layer.linear2, stream)
        permute_features(layer.norm1, stream)
        permute_features(layer.norm2, stream)


def permuted_copy(model: nn.Module, apply: Callable[[nn.Module], None]) -> nn.Module:
    other = copy.deepcopy(model)
    apply(other)
    return other


@torch.no_grad()
def assert_same_function(a: nn.Module, b: nn.Module, x: Tensor, atol: float = 1e-5) -> None:
    """The permutation must not change the function (float summation order aside)."""
    ya, yb = a.eval()(x), b.eval()(x)
    assert ya.shape == yb.shape
    assert torch.allclose(ya, yb, atol=atol, rtol=1e-5), (ya - yb).abs().max()


def _key(t: Tensor) -> tuple:
    return tuple(t.tolist())


def to_nx(g) -> nx.MultiDiGraph:
    """A networkx multigraph with every node / edge feature as an exact tuple attribute."""
    G = nx.MultiDiGraph()
    cats = [g.node_layer, g.node_role, g.node_pos, g.node_act, g.node_pool, g.node_spatial]
    for i in range(g.num_nodes):
        G.add_node(i, f=_key(g.x[i]) + tuple(int(c[i]) for c in cats) + _key(g.node_window[i]))
    conv = g.edge_conv  # each edge's geometry row (derived from geometry / edge_geom)
    for e, (s, d) in enumerate(g.edge_index.t().tolist()):
        G.add_edge(s, d, f=_key(g.edge_attr[e]) + (int(g.edge_kind[e]),) + _key(conv[e]))
    return G


def assert_isomorphic(g1, g2) -> None:
    """Exact isomorphism of two neural graphs, features included (multisets first, then VF2)."""
    assert g1.num_nodes == g2.num_nodes and g1.edge_index.size(1) == g2.edge_index.size(1)
    G1, G2 = to_nx(g1), to_nx(g2)
    assert sorted(d["f"] for _, d in G1.nodes(data=True)) == sorted(d["f"] for _, d in G2.nodes(data=True))
    assert sorted(d["f"] for *_, d in G1.edges(data=True)) == sorted(d["f"] for *_, d in G2.edges(data=True))
    same = lambda a, b: a["f"] == b["f"]  # noqa: E731
    edge_same = lambda a, b: sorted(d["f"] for d in a.values()) == sorted(d["f"] for d in b.values())  # noqa: E731
    assert nx.is_isomorphic(G1, G2, node_match=same, edge_match=edge_same)


def isomorphic(g1, g2) -> bool:
    """Whether two neural graphs are isomorphic, features included (for negative tests)."""
    if g1.num_nodes != g2.num_nodes or g1.edge_index.size(1) != g2.edge_index.size(1):
        return False
    edge_same = lambda a, b: sorted(d["f"] for d in a.values()) == sorted(d["f"] for d in b.values())  # noqa: E731
    return nx.is_isomorphic(to_nx(g1), to_nx(g2), node_match=lambda a, b: a["f"] == b["f"], edge_match=edge_same)


def assert_params_moved(a: nn.Module, b: nn.Module) -> None:
    """The permutation changed some parameter (else a symmetry test proves nothing)."""
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def assert_state_equal(a: nn.Module, b: nn.Module) -> None:
    """Bit-exact equality of two modules' state dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
