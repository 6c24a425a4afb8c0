"""Attention as neural graphs (Neural Graphs, appendix C.4).

A multi-head attention layer with ``H`` heads of size ``d_H`` (``E = H * d_H``), reading queries from the
neurons ``X_q`` and keys / values from the neurons ``X_k`` / ``X_v`` (the same neurons in self-attention),
becomes:

* ``H * d_H`` **head neurons** (role hidden, activation none, ``x = 0``). Head neuron ``o = h * d_H + j``
  (dim ``j`` of head ``h``) stands for row ``o`` of ``W_Q``, ``W_K`` and ``W_V`` alike and outputs dim ``j``
  of its head's attention, per query token ``t``:

  .. math::
      y_o(t) = \\sum_s \\mathrm{softmax}_s\\Big(\\tfrac{1}{\\sqrt{d_H}} \\sum_{j'} Q_{hj'}(t) K_{hj'}(s)\\Big)
      V_{hj}(s), \\qquad Q_o(t) = b^Q_o + \\sum_i W^Q_{oi} x_i(t) \\text{ (likewise } K, V).

* **attention edges** (``edge_kind = attention``) from input neuron ``i`` to head neuron ``o``, carrying
  ``(W^Q_{oi}, W^K_{oi}, W^V_{oi})`` on taps 0, 1, 2 of ``edge_attr``. In self-attention every edge carries all
  three. In cross-attention the query neurons' edges carry only tap 0 and the key / value neurons' edges taps
  1 and 2; with ``kdim != vdim`` the k-edges (tap 1) and v-edges (tap 2) come from different neurons. (Taps a
  role does not use are zero, and a zero weight adds nothing: the sums above run over all attention edges.)
* one **virtual head neuron** per head (role virtual, one layer before its head neurons, ``x = 0``, no
  inputs), with an attention edge to each of its ``d_H`` head neurons carrying ``(b^Q_o, b^K_o, b^V_o)`` on
  taps 0..2 (zeros without biases). It reads as a constant-1 input holding the biases, and it makes head
  membership structural: permuting heads, or the neurons within a head (one permutation for the q, k and v
  rows of that head and the matching columns of ``W_O``), maps the graph to an isomorphic one, while moving
  a neuron to another head does not -- the symmetries of the function.
* the output projection ``W_O``: an ordinary linear layer from the head neurons (the ``nn.Linear`` rule).

**Tokens.** Neuron values of a network with attention are per token (``[batch, tokens]``); every other
layer acts on each token alone. Averaging / max over the token dim (``h.mean(1)`` after a ``batch_first``
layer, ``h.mean(0)`` otherwise) is a global pooling recorded on the neurons (``node_pool``), as for feature
maps. All attention layers of a network must agree on the token dim (``batch_first``).

**Supported.** ``nn.MultiheadAttention`` (packed ``in_proj_weight`` or separate ``q/k/v_proj_weight`` when
``kdim``/``vdim`` differ, with or without bias, any head count, ``batch_first`` either way, self- or
cross-attention; use the output ``attn(q, k, v)[0]``), ``nn.TransformerEncoderLayer`` and
``nn.TransformerEncoder`` (decomposed into that attention, residual additions, LayerNorms by the
normalization rule, ``linear1 -> activation -> linear2``; ``norm_first`` either way; dropout ignored, as
everywhere), and hand-written attention: three ``nn.Linear`` projections, head split
``.view(B, T, H, d).transpose(1, 2)``, ``F.scaled_dot_product_attention(q, k, v)`` or
``softmax(q @ k.transpose(-2, -1) * scale, -1) @ v`` (optionally with dropout), and the merge
``.transpose(1, 2).reshape(B, T, C)``.

**Unsupported** (``UnsupportedModuleError`` naming the module or node): attention masks and causal
attention, ``add_bias_kv``, ``add_zero_attn``, using the returned attention weights, scales other than
``1 / sqrt(d_H)``, value heads of another size than query heads, anything in a hand-written block that
cannot be proven to be the pattern above, and decoders (``nn.Transformer``, ``nn.TransformerDecoder*``,
which have no rule).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from neuralgraph.convert import activations as A
from neuralgraph.convert.builder import Val
from neuralgraph.convert.registry import find_module_rule, module_rule
from neuralgraph.convert.rules.activation import activation
from neuralgraph.convert.rules.functional import add
from neuralgraph.data.graph import ATTENTION_SCALE_TAP

#: taps of ``edge_attr`` holding (query, key, value) weights / biases on attention edges
QKV_TAPS = (0, 1, 2)
#: tap of a virtual head neuron's attention edges holding the head's score scale dim (see the format)
SCALE_TAP = ATTENTION_SCALE_TAP


# ============================================================================== the representation
@dataclass
class Projection:
    """One of the q / k / v projections of an attention layer.

    Args:
        src: the neurons it reads, ``[n_in]``.
        weight: qualified name of the parameter holding its ``[E, n_in]`` weight, starting at flat element
            ``w_base`` (a packed ``in_proj_weight`` holds all three).
        bias: qualified name of the parameter holding its ``[E]`` bias from element ``b_base``, or ``None``.
    """

    src: Tensor
    weight: str
    w_base: int = 0
    bias: str | None = None
    b_base: int = 0


def attention_heads(ctx, node: fx.Node, heads: int, head_dim: int, q: Projection, k: Projection,
                    v: Projection, min_layer: int = 1, scale_dim: float | None = None) -> tuple[Tensor, Tensor]:
    """Add the head neurons (at ``min_layer`` or deeper), their virtual head neurons and attention edges;
    returns the ``H * d_H`` head neurons (head-major) and the ``H`` virtual head neurons. ``scale_dim``: the
    scores are ``q . k / sqrt(scale_dim)`` instead of ``/ sqrt(d_H)`` (MaxViT scales by the whole feature dim), a
    constant on tap :data:`SCALE_TAP` of the virtual head neurons' edges."""
    b = ctx.builder
    if ctx.config.edge_dim < len(QKV_TAPS):
        raise ctx.unsupported(node, "attention edges need at least 3 edge features (q, k, v taps); convert "
                                    "with a max_kernel of 3 or more taps")
    if scale_dim is not None and ctx.config.edge_dim <= SCALE_TAP:
        raise ctx.unsupported(node, f"scores scaled by 1/sqrt({scale_dim}) instead of 1/sqrt(d_H = {head_dim}) are "
                                    f"stored on edge tap {SCALE_TAP}, which needs at least {SCALE_TAP + 1} edge "
                                    "features; convert with a larger max_kernel")
    e = heads * head_dim
    layer = max(b.next_layer(q.src, k.src, v.src), min_layer)
    virtual = b.add_nodes(heads, layer - 1, role="virtual")
    out = b.add_nodes(e, layer)
    # one edge block per distinct set of source neurons, carrying the taps of the roles it feeds
    groups: list[tuple[Tensor, list[int]]] = []
    for tap, p in zip(QKV_TAPS, (q, k, v)):
        for src, taps in groups:
            if torch.equal(src, p.src):
                taps.append(tap)
                break
        else:
            groups.append((p.src, [tap]))
    projections = (q, k, v)
    for src, taps in groups:
        n_in = src.numel()
        # edge (o, i) in row-major order: element o * n_in + i of each [E, n_in] weight
        rows = torch.arange(e * n_in).view(-1, 1)
        sources = [(projections[t].weight, projections[t].w_base + rows, torch.tensor([t])) for t in taps]
        b.add_edges(src.repeat(e), out.repeat_interleave(n_in), "attention", sources=sources)
    biases = [(p.bias, (p.b_base + torch.arange(e)).view(-1, 1), torch.tensor([t]))
              for t, p in zip(QKV_TAPS, projections) if p.bias is not None]
    b.add_edges(virtual.repeat_interleave(head_dim), out, "attention", sources=biases,
                tap_consts=() if scale_dim is None else ((SCALE_TAP, float(scale_dim)),))
    return out, virtual


# ====================================================================== pieces of leaf modules
def _child(node: fx.Node, name: str | None = None) -> fx.Node:
    """A stand-in ``call_module`` node for the submodule ``name`` of the module ``node`` calls, so the
    existing rules convert the pieces of a leaf module (and their errors name the piece)."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    return graph.call_module(f"{node.target}.{name}" if name else node.target, (x,))


def _apply(ctx, node: fx.Node, name: str, x: Val) -> Val:
    """Run the rule of submodule ``name`` of ``node``'s module on ``x`` (an activation module: its activation)."""
    sub = _child(node, name)
    mod = ctx.module(sub)
    rule = find_module_rule(mod)
    if rule is None and type(mod) in A.MODULE_ACTIVATIONS:
        act, values = A.module_activation(A.MODULE_ACTIVATIONS[type(mod)], mod)
        return activation(ctx, sub, x, act, getattr(mod, "dim", None), values)
    if rule is None:
        raise ctx.unsupported(sub, "has no conversion rule")
    return rule(ctx, sub, x)


def _activation(ctx, node: fx.Node, x: Val) -> Val:
    """``activation(x)`` of a TransformerEncoderLayer: a module or a function the converter knows."""
    fn = ctx.module(node).activation
    name = A.MODULE_ACTIVATIONS.get(type(fn)) if isinstance(fn, nn.Module) else A.FUNCTION_ACTIVATIONS.get(fn)
    if name is None or name in ("softmax", "log_softmax"):
        raise ctx.unsupported(node, f"activation {fn!r} is not a known element-wise function; use 'relu', "
                                    "'gelu' or register it with neuralgraph.convert.register_activation")
    name, values = A.module_activation(name, fn) if isinstance(fn, nn.Module) else A.call_activation(name, (), {})
    return activation(ctx, node, x, name, None, values)


# ======================================================================== nn.MultiheadAttention
def _mha(ctx, node: fx.Node, query: Val, key: Val, value: Val) -> Val:
    """The graph of the ``nn.MultiheadAttention`` that ``node`` calls; returns its output neurons."""
    mod: nn.MultiheadAttention = ctx.module(node)
    if mod.bias_k is not None:
        raise ctx.unsupported(node, "add_bias_kv=True appends learned key / value tokens, which a neural "
                                    "graph cannot represent; use add_bias_kv=False")
    if mod.add_zero_attn:
        raise ctx.unsupported(node, "add_zero_attn=True appends a zero key / value token, which a neural "
                                    "graph cannot represent; use add_zero_attn=False")
    e = mod.embed_dim
    srcs = (ctx.as_features(node, query, e), ctx.as_features(node, key, mod.kdim),
            ctx.as_features(node, value, mod.vdim))
    bias = ctx.param(node, "in_proj_bias")
    if mod._qkv_same_embed_dim:
        weight = ctx.param(node, "in_proj_weight")
        ctx.builder.layers.append((weight, bias))
        projs = [Projection(s, weight, r * e * e, bias, r * e) for r, s in enumerate(srcs)]
    else:
        projs = []
        for r, (s, role) in enumerate(zip(srcs, "qkv")):
            weight = ctx.param(node, f"{role}_proj_weight")
            ctx.builder.layers.append((weight, None))  # the biases are packed in in_proj_bias
            projs.append(Projection(s, weight, 0, bias, r * e))
    heads, _ = attention_heads(ctx, node, mod.num_heads, mod.head_dim, *projs)
    return _apply(ctx, node, "out_proj", Val(heads, "vec"))


@module_rule(nn.MultiheadAttention)
def multihead_attention(ctx, node, query: Val, key: Val, value: Val, *args, **kwargs) -> Val:
    """``attn(query, key, value)``; the call's masks and the use of its result were checked by
    :func:`attention_pass`, whose claim on ``attn(...)[0]`` hands this value on."""
    return _mha(ctx, node, query, key, value)


# ============================================================ nn.TransformerEncoder(Layer)
def _encoder_layer(ctx, node: fx.Node, x: Val) -> Val:
    mod: nn.TransformerEncoderLayer = ctx.module(node)
    x = Val(ctx.as_features(node, x, mod.linear1.in_features), "vec")

    def sa(h: Val) -> Val:
        return _mha(ctx, _child(node, "self_attn"), h, h, h)

    def ff(h: Val) -> Val:
        return _apply(ctx, node, "linear2", _activation(ctx, node, _apply(ctx, node, "linear1", h)))

    def residual(a: Val, b: Val) -> Val:
        return add(ctx, _child(node), a, b)

    if mod.norm_first:
        x = residual(x, sa(_apply(ctx, node, "norm1", x)))
        return residual(x, ff(_apply(ctx, node, "norm2", x)))
    x = _apply(ctx, node, "norm1", residual(x, sa(x)))
    return _apply(ctx, node, "norm2", residual(x, ff(x)))


@module_rule(nn.TransformerEncoderLayer)
def transformer_encoder_layer(ctx, node, src: Val, *args, **kwargs) -> Val:
    """Self-attention block and feed-forward block with residual additions and LayerNorms."""
    return _encoder_layer(ctx, node, src)


@module_rule(nn.TransformerEncoder)
def transformer_encoder(ctx, node, src: Val, *args, **kwargs) -> Val:
    """The encoder layers one after the other, then the optional final norm."""
    mod: nn.TransformerEncoder = ctx.module(node)
    x = src
    for i in range(len(mod.layers)):
        x = _encoder_layer(ctx, _child(node, f"layers.{i}"), x)
    return x if mod.norm is None else _apply(ctx, node, "norm", x)
