"""Checks of how attention is called and used, run as a pass over the whole traced graph before the walk.

``nn.MultiheadAttention`` / ``nn.TransformerEncoder(Layer)`` calls: masks and causal attention are refused, only
``attn(q, k, v)[0]`` may be used. Hand-written attention is matched (:mod:`.attention_pattern`). Averages /
maxima over the token dim of attention outputs are claimed as global poolings (token selection and
concatenation are rules of :mod:`.tokens`). See :mod:`neuralgraph.convert.rules.attention`.
"""
from __future__ import annotations

import operator
from functools import partial

import torch
from torch import fx, nn

from neuralgraph.convert.builder import SYM, Val
from neuralgraph.convert.registry import CLAIM, graph_pass
from neuralgraph.convert.rules.attention_pattern import (bound_args, is_sdpa, is_size_query, match_attention,
                                                         op_kind, softmax_before)
from neuralgraph.data.graph import POOL


_MHA_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
             "is_causal")
_ENCODER_ARGS = {nn.TransformerEncoderLayer: ("src", "src_mask", "src_key_padding_mask", "is_causal"),
                 nn.TransformerEncoder: ("src", "mask", "src_key_padding_mask", "is_causal")}


@graph_pass
def attention_pass(ctx, graph: fx.Graph) -> None:
    """Check attention modules' calls, match hand-written attention and claim token poolings."""
    layouts: list[tuple[fx.Node, int]] = []  # (attention node, token dim)
    outputs: list[fx.Node] = []  # nodes holding attention outputs (token sequences)
    for node in list(graph.nodes):
        if node.op == "call_module":
            mod = ctx.module(node)
            if isinstance(mod, nn.MultiheadAttention):
                outputs += _check_mha_call(ctx, node)
                layouts.append((node, 1 if mod.batch_first else 0))
            elif isinstance(mod, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
                _check_encoder_call(ctx, node, mod)
                first = mod if isinstance(mod, nn.TransformerEncoderLayer) else mod.layers[0]
                layouts.append((node, 1 if first.self_attn.batch_first else 0))
                outputs.append(node)
        elif is_sdpa(node) or (op_kind(ctx, node) == "matmul" and softmax_before(ctx, node.args[0]) is not None):
            match = match_attention(ctx, node)
            layouts.append((node, 1))
            outputs.append(match.merge[-1])
    if layouts:
        ctx.tokens = True
        _claim_token_pooling(ctx, graph, layouts, outputs)


def _check_mha_call(ctx, node: fx.Node) -> list[fx.Node]:
    """Masks are unsupported; the result must be indexed, and only ``[0]`` may be used. Claims the
    indexing nodes; returns those holding the output."""
    args = bound_args(node, _MHA_ARGS)
    for mask in ("key_padding_mask", "attn_mask"):
        if args.get(mask) is not None:
            raise ctx.unsupported(node, f"is called with {mask}; attention masks are not supported (a neural "
                                        "graph has no mask semantics)")
    if args.get("is_causal"):
        raise ctx.unsupported(node, "is called with is_causal=True; causal (masked) attention is not supported")
    outs = []
    for user in node.users:
        idx = user.args[1] if user.op == "call_function" and user.target is operator.getitem else None
        idx = idx if type(idx) is int else None
        if idx == 0:
            user.meta[CLAIM] = _same
            outs.append(user)
        elif idx == 1 and not user.users:
            user.meta[CLAIM] = _unused
        elif idx == 1:
            raise ctx.unsupported(node, f"its attention weights ({user.name}) are used; only the attention "
                                        "output attn(q, k, v)[0] can be represented (the weights are a function "
                                        "of the inputs, not neurons)")
        else:
            raise ctx.unsupported(node, f"its result is used whole by {user.name}; index the output: "
                                        "attn(q, k, v)[0]")
    return outs


def _same(ctx, node, x, *args, **kwargs):
    """``attn(q, k, v)[0]``: the output neurons."""
    return x


def _unused(ctx, node, *args, **kwargs):
    """``attn(q, k, v)[1]`` that nothing reads (``out, _ = attn(q, k, v)``)."""
    return SYM


def _check_encoder_call(ctx, node: fx.Node, mod: nn.Module) -> None:
    names = next(v for t, v in _ENCODER_ARGS.items() if isinstance(mod, t))
    args = bound_args(node, names)
    for mask in names[1:3]:
        if args.get(mask) is not None:
            raise ctx.unsupported(node, f"is called with {mask}; attention masks are not supported (a neural "
                                        "graph has no mask semantics)")
    if args.get("is_causal"):
        raise ctx.unsupported(node, "is called with is_causal=True; causal (masked) attention is not supported")


# ---------------------------------------------------------------------------- token pooling
def _claim_token_pooling(ctx, graph: fx.Graph, layouts: list[tuple[fx.Node, int]],
                         outputs: list[fx.Node]) -> None:
    """Averages / maxima over the token dim of values computed from attention outputs: global pooling."""
    axis = layouts[0][1]
    for node, a in layouts[1:]:
        if a != axis:
            raise ctx.unsupported(node, f"puts tokens on dim {a} but {layouts[0][0].name} on dim {axis}; all "
                                        "attention layers of a network must agree on batch_first")
    carriers = set(outputs)
    for node in graph.nodes:
        data = [i for i in node.all_input_nodes if i in carriers]
        if not data or node in carriers or is_size_query(node):
            continue
        if CLAIM in node.meta:  # part of a matched pattern (e.g. the output of a stacked attention layer)
            carriers.add(node)
            continue
        kind = op_kind(ctx, node)
        _check_token_op(ctx, node, axis)
        if kind in ("mean", "amax") and node.args and node.args[0] in carriers:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = dims if isinstance(dims, (tuple, list)) else (dims,)
            if all(isinstance(d, int) for d in dims) and {d % 3 for d in dims} == {axis}:
                node.meta[CLAIM] = partial(_token_pool, "avg" if kind == "mean" else "max")
                continue
        carriers.add(node)


def _check_token_op(ctx, node: fx.Node, axis: int) -> None:
    """Without traced shapes (no ``example_input``), a token sequence may only be indexed on its features
    (``x[..., a:b]``) or at one token (``x[:, i]``, tokens on dim 1), and concatenated on its features: the token
    rules (:mod:`.tokens`) need the token count for anything else."""
    if ctx.shape(node.all_input_nodes[0]) is not None:
        return
    if node.op == "call_function" and node.target is operator.getitem:
        idx = node.args[1]
        pair = isinstance(idx, tuple) and len(idx) == 2
        feature = pair and idx[0] is Ellipsis and isinstance(idx[1], slice)
        token = pair and axis == 1 and idx[0] == slice(None) and type(idx[1]) is int
        if not (feature or token):
            raise ctx.unsupported(node, f"indexes a token sequence with {idx!r} without traced shapes; feature slices "
                                        "x[..., a:b] and one token x[:, i] convert as they are, token ranges need "
                                        "example_input=... (the token count)")
    if node.op == "call_function" and node.target in (torch.cat, torch.concat):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim not in (-1, 2):
            raise ctx.unsupported(node, f"concatenates token sequences on dim {dim} without traced shapes; only the "
                                        "feature dim (-1) converts as it is, tokens need example_input=...")


def _token_pool(kind: str, ctx, node, x: Val, *args, **kwargs) -> Val:
    """Pool over tokens: recorded on the neurons (on an identity copy if they are read elsewhere too)."""
    b = ctx.builder
    nodes = x.nodes
    read = {i for blk in b.edges for i in blk.src.tolist()}
    if any(b.pending[i] or i in read for i in nodes.tolist()):
        new = b.add_nodes(nodes.numel(), b.next_layer(nodes))
        b.add_identity_edges(nodes, new, "identity")
        nodes = new
    b.set_pool(nodes, POOL[f"global_{kind}"])
    b.observe(nodes)
    return Val(nodes, "vec")
