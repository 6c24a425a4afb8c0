"""Convolutions over the channel axis: ECA (Efficient Channel Attention, timm's ``EcaModule``) views pooled
features ``y`` ``[B, C]`` as a one-channel sequence ``y.view(B, 1, C)``, slides a one-channel ``nn.Conv1d`` (kernel
``k``) along the channels, applies element-wise activations (the sigmoid gate) and views the result back as
``[B, C, 1, 1]`` features.

Output channel ``c`` of such a convolution reads channels ``c + j * dilation - padding`` with kernel element ``j``:
each is a ``linear`` edge carrying that (tied) kernel element, and the bias is tied over all ``C`` neurons. The
edges record which channels are neighbours, so permuting the channels is not a symmetry of this layer, nor of its
graph. A graph pass matches the whole view - convolutions / activations - view chain (with the traced shapes of
``example_input``), so no other operation ever sees channels laid out as a sequence.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import fx, nn

from neuralgraph.convert import activations as A
from neuralgraph.convert.builder import Val
from neuralgraph.convert.registry import CLAIM, graph_pass

_VIEWS = ("view", "reshape")
_LAYER_FAMILIES = ("softmax", "log_softmax")


def _channel_conv_module(ctx, n: fx.Node) -> nn.Conv1d | None:
    if n.op != "call_module":
        return None
    mod = ctx.module(n)
    return mod if type(mod) is nn.Conv1d and tuple(mod.weight.shape[:2]) == (1, 1) else None


def _is_view(n: fx.Node) -> bool:
    return (n.op == "call_method" and n.target in _VIEWS) or (n.op == "call_function" and n.target is torch.reshape)


def _is_activation(ctx, n: fx.Node) -> bool:
    if n.op == "call_module":
        family = A.MODULE_ACTIVATIONS.get(type(ctx.module(n)))
    elif n.op == "call_function":
        family = A.FUNCTION_ACTIVATIONS.get(n.target) if callable(n.target) else None
    elif n.op == "call_method":
        family = A.METHOD_ACTIVATIONS.get(n.target)
    else:
        family = None
    return family is not None and family not in _LAYER_FAMILIES


def _only_user(n: fx.Node) -> fx.Node | None:
    return next(iter(n.users)) if len(n.users) == 1 else None


@graph_pass
def channel_convolutions(ctx, graph: fx.Graph) -> None:
    """Claim every ``y.view(B, 1, C)`` -> one-channel ``Conv1d`` / activations -> ``.view(B, C, 1, 1)`` chain."""
    for first in list(graph.nodes):
        if not _is_view(first) or CLAIM in first.meta:
            continue
        src, out = ctx.shape(first.all_input_nodes[0]), ctx.shape(first)
        if src is None or out is None or len(out) != 3 or out[:2] != (src[0], 1) or \
                tuple(src[1:]) not in ((out[2],), (out[2], 1, 1)):
            continue
        c, chain, n = out[2], [], _only_user(first)
        while n is not None and (_channel_conv_module(ctx, n) is not None or _is_activation(ctx, n)):
            chain.append(n)
            n = _only_user(n)
        if n is None or not _is_view(n) or not any(_channel_conv_module(ctx, m) for m in chain) or \
                ctx.shape(n) not in ((src[0], c), (src[0], c, 1, 1)):
            continue
        first.meta[CLAIM] = _as_sequence
        for m in chain:
            if _channel_conv_module(ctx, m) is not None:
                m.meta[CLAIM] = partial(_conv_over_channels, _channel_conv_module(ctx, m))
        n.meta[CLAIM] = _as_features


def _as_sequence(ctx, node, x: Val, *shape) -> Val:
    """``y.view(B, 1, C)`` of features: the same neurons, laid out along the sequence of a one-channel Conv1d."""
    return Val(ctx.materialize(node, node.all_input_nodes[0], x).nodes, "chanseq")


def _as_features(ctx, node, x: Val, *shape) -> Val:
    """``y.view(B, C, 1, 1)`` (or ``[B, C]``) back: features (a product broadcasts them over a map)."""
    return Val(x.nodes, "vec")


def _conv_over_channels(mod: nn.Conv1d, ctx, node, x: Val) -> Val:
    """The one-channel ``Conv1d`` along the channels (module docstring); stride 1 and a length-preserving padding
    only."""
    (k,), (d,), (stride,) = mod.kernel_size, mod.dilation, mod.stride
    pad = d * (k - 1) // 2 if mod.padding == "same" else (0 if mod.padding == "valid" else mod.padding[0])
    c = x.channels
    if stride != 1 or mod.groups != 1 or 2 * pad != d * (k - 1) or mod.padding_mode != "zeros":
        raise ctx.unsupported(node, f"a convolution over the {c} channels (kernel {k}, stride {stride}, padding "
                                    f"{mod.padding!r}, padding_mode {mod.padding_mode!r}); only stride 1 with zero "
                                    "padding that keeps the channel count (dilation * (kernel - 1) / 2) is supported")
    weight, bias = ctx.param(node, "weight"), ctx.param(node, "bias")
    b = ctx.builder
    out = b.add_nodes(c, b.next_layer(x.nodes))
    pairs = [(t + j * d - pad, t, j) for t in range(c) for j in range(k) if 0 <= t + j * d - pad < c]
    if len({j for *_, j in pairs}) < k or (c > 1 and len(pairs) == c * c):
        # taps that reach no channel would not be stored (no exact round trip); a kernel spanning every channel
        # makes a dense layer of tied weights, whose channels the graph could not tell apart from a plain one
        raise ctx.unsupported(node, f"a convolution over the {c} channels with a kernel of {k} (dilation {d}) "
                                    "reaches every channel from every channel, or past the first and last one: a "
                                    "dense layer of tied weights; supported when (kernel - 1) * dilation / 2 < "
                                    f"channels - 1 = {c - 1}, as in ECA")
    src, dst, elem = (torch.tensor(v, dtype=torch.long) for v in zip(*pairs))
    b.register_param(weight, tuple(mod.weight.shape))
    b.add_edges(x.nodes[src], out[dst], "linear",
                sources=[(weight, elem.view(-1, 1), torch.tensor([ctx.config.centre_tap]))])
    b.layers.append((weight, bias))
    if bias is not None:
        b.add_node_param(out, bias, torch.zeros(c, dtype=torch.long))
    return Val(out, "chanseq")
