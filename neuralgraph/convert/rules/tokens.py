"""Token sequences: a map's positions as tokens and tokens back to a map, tokens concatenated (a class token),
a learned position embedding added, and tokens selected (``x[:, 0]``, ``x[:, 1:]``).

A neuron's value in a token sequence is ``[B, T]``; these operations move values between tokens, so each adds new
neurons fed by ``tokens`` edges whose geometry (``data.graph.token_geometry``: ``start``, ``length``, the mode
(range, drop or layout), the target's map shape) says which source token each target token reads. A parameter used
as tokens (a class token ``[1, 1, C]``, register tokens ``[1, R, C]``, a position embedding ``[1, T, C]``, or
``[1, C, H, W]`` on a map) is stored on ``position`` edges: one **token constant neuron** per token it fills (role
virtual, constant 1 in ``x[:, 0]``, no inputs, ``node_spatial`` = 1 + that token), with an edge to each channel's
neuron carrying the parameter's entry on the centre tap and placing it at that token. Parameters stay on edges, so
the round trip is exact, and permuting the channels of a transformer moves them with the channel neurons.
"""
from __future__ import annotations

import builtins
import math
import operator

import torch
from torch import Tensor, fx

from neuralgraph.convert.builder import Param, Val
from neuralgraph.data.graph import token_geometry

_EXAMPLE = "pass example_input=... to to_neural_graph so that token counts are known"


def token_count(ctx, arg, v: Val | Param) -> int | None:
    """Tokens of a ``[B, T, C]`` value (``[1, T, C]`` / ``[T, C]`` parameter), ``None`` if unknown."""
    if isinstance(v, Param):
        return v.shape[-2] if len(v.shape) >= 2 else None
    shape = ctx.shape(arg)
    if shape is not None:
        return shape[1] if len(shape) == 3 else None
    return v.positions if v.kind == "vec" else None


def _geometry(ctx, start: int, length: int, drop: bool = False, shape: tuple[int, ...] = (),
              layout: bool = False) -> tuple[int, ...]:
    return token_geometry(start, length, drop, len(ctx.config.max_kernel), shape, layout)


def _layer(b, *sources: Tensor) -> int:
    """Layer of neurons fed by ``sources`` and by token constant neurons (which sit one layer before, >= 1)."""
    return max(b.next_layer(*sources), 2)


def _place(ctx, p: Param, rows: Tensor, offset: int, targets: Tensor, layer: int, shape: tuple[int, ...] = (),
           channel_stride: int = 1) -> None:
    """Parameter ``p``'s entries as tokens ``offset ..`` of ``targets``' sequences of ``prod(shape)`` tokens (a map
    of ``shape`` when it has 2+ dims): one token constant neuron per token ``r``, with ``position`` edges to the
    channels carrying flat element ``rows[r] + c * channel_stride`` of ``p`` for channel ``c``."""
    b, c = ctx.builder, targets.numel()
    length = math.prod(shape)
    for r, first in enumerate(rows.tolist()):
        t = offset + r
        k = b.add_nodes(1, layer - 1, role="virtual", spatial=t + 1)
        b.add_node_const(k, 1.0)
        elem = (first + torch.arange(c) * channel_stride).view(-1, 1)
        b.add_edges(k.repeat(c), targets, "position", geometry=_geometry(ctx, -t, length, shape=_map(shape)),
                    sources=[(p.name, elem, torch.tensor([ctx.config.centre_tap]))])


def _map(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The map shape a token geometry records: none for a sequence (one dim)."""
    return tuple(shape) if len(shape) > 1 else ()


def to_tokens(ctx, node, x: Val) -> Val:
    """A map's positions as one token sequence (``x.flatten(2)``, ``x.reshape(B, C, H * W)`` of a 2-d or 3-d map;
    a 1-d map already is one): new neurons, one ``tokens`` edge each, tokens in row-major position order."""
    if x.sdims <= 1:
        return Val(x.nodes, "map", 1, x.positions)
    shape = ctx.shape(node.all_input_nodes[0])
    p = x.positions if x.positions is not None else (None if shape is None else int(torch.Size(shape[2:]).numel()))
    if p is None:
        raise ctx.unsupported(node, f"merges the positions of a feature map into tokens; {_EXAMPLE}")
    return respace(ctx, node, x, (p,), channel_last=False)


def respace(ctx, node, x: Val, shape: tuple[int, ...], channel_last: bool) -> Val:
    """The same channels with their positions laid out in another spatial ``shape``, row-major: a token sequence
    back to a map (``x.transpose(1, 2).reshape(B, C, H, W)``, ``x.reshape(B, H, W, C)``: channel-last) or a
    channel-last map's positions as tokens (``x.reshape(B, H * W, C)``, ``x.flatten(1, 2)``; ``shape`` of one
    dim). New neurons, one ``tokens`` edge each whose geometry holds the target's shape (none for tokens)."""
    dims = len(ctx.config.max_kernel)
    if len(shape) > dims:
        raise ctx.unsupported(node, f"lays out positions as a {len(shape)}-d map {tuple(shape)}, beyond the "
                                    f"{dims}-d maps of this conversion (max_kernel); splitting a map into windows in "
                                    "forward (a hand-written window partition) is not supported: torchvision's Swin "
                                    "and MaxViT (PartitionAttentionLayer) and timm's Swin V1 (SwinTransformerBlock) "
                                    "convert by their own rules")
    b, length = ctx.builder, math.prod(shape)
    new = b.add_nodes(x.channels, b.next_layer(x.nodes))
    b.add_edges(x.nodes, new, "tokens", const=1.0,
                geometry=_geometry(ctx, 0, length, shape=_map(shape), layout=True))
    return Val(new, "vec", 0, length) if channel_last else Val(new, "map", len(shape), length)


def cat_tokens(ctx, node, args: list, operands: list) -> Val:
    """``torch.cat([cls_token.expand(B, -1, -1), x], dim=1)``: the operands' tokens in order; neuron values get
    ``tokens`` edges, parameters ``position`` edges from token constant neurons."""
    counts, channels = [], set()
    for a, v in zip(args, operands):
        if isinstance(v, Param):
            channels.add(v.shape[-1])
            if len(v.shape) != 3 or v.shape[0] != 1:
                raise ctx.unsupported(node, f"concatenates parameter {v.name!r} of shape {v.shape} as tokens; "
                                            "only a [1, R, C] parameter (a class / register token) is supported")
        elif isinstance(v, Val):
            channels.add(v.channels)
        else:
            raise ctx.unsupported(node, "concatenates tokens that are neither neuron values nor parameters")
        n = token_count(ctx, a, v)
        if n is None:
            raise ctx.unsupported(node, f"concatenates token sequences of unknown length; {_EXAMPLE}")
        counts.append(n)
    if len(channels) != 1:
        raise ctx.unsupported(node, f"concatenates token sequences of {sorted(channels)} channels")
    b, c, length = ctx.builder, channels.pop(), sum(counts)
    vals = [v.nodes for v in operands if isinstance(v, Val)]
    layer = _layer(b, *vals)
    new = b.add_nodes(c, layer)
    offset = 0
    for v, n in zip(operands, counts):
        if isinstance(v, Param):
            _place(ctx, v, torch.arange(n) * c, offset, new, layer, (length,))
        else:
            b.add_edges(v.nodes, new, "tokens", geometry=_geometry(ctx, -offset, length), const=1.0)
        offset += n
    return Val(new, "vec", 0, length)


def position_table(ctx, arg, v: Val, p: Param) -> tuple[int, ...] | None:
    """The positions' shape if parameter ``p`` added to ``v`` is a table of one value per position and channel:
    ``(T,)`` for ``[1, T, C]`` on a token sequence, ``(H, W)`` for ``[1, C, H, W]`` on a map (PiT's position
    embedding); else ``None``."""
    shape = tuple(p.shape)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    if v.kind == "vec" and len(shape) == 2 and shape[1] == v.channels and shape[0] > 1 and \
            token_count(ctx, arg, v) == shape[0]:
        return shape[:1]
    spatial = ctx.shape(arg)
    if v.kind == "map" and spatial is not None and len(shape) == len(spatial) - 1 and shape[0] == v.channels and \
            shape[1:] == tuple(spatial[2:]) and math.prod(shape[1:]) > 1:
        return shape[1:]
    return None


def add_positions(ctx, node, v: Val, p: Param, shape: tuple[int, ...]) -> Val:
    """``x + pos_embed`` with a table of one value per position and channel (:func:`position_table`):
    ``position`` edges into ``x``'s neurons if they are still open, else into new neurons fed by identity
    edges."""
    b = ctx.builder
    if b.is_open(v.nodes) and min(b.layer[i] for i in v.nodes.tolist()) >= 2:
        target = v.nodes
        layer = min(b.layer[i] for i in target.tolist())
    else:
        layer = _layer(b, v.nodes)
        target = b.add_nodes(v.channels, layer)
        b.add_identity_edges(v.nodes, target, "identity")
    length = math.prod(shape)
    if v.kind == "map":  # [C, *S]: position t of channel c is element c * length + t
        _place(ctx, p, torch.arange(length), 0, target, layer, shape, channel_stride=length)
        return Val(target, "map", v.sdims, length)
    _place(ctx, p, torch.arange(length) * v.channels, 0, target, layer, shape)  # [T, C]: t * C + c
    return Val(target, "vec", 0, length)


def select_tokens(ctx, node, x: Val, index, count: int | None) -> Val:
    """``x[:, i]`` (one token: features) or ``x[:, a:b]`` (a token range) of a ``[B, T, C]`` sequence."""
    b = ctx.builder
    if isinstance(index, int):
        if index < 0:
            if count is None:
                raise ctx.unsupported(node, f"selects token {index} from the end of a sequence of unknown length; "
                                            f"{_EXAMPLE}")
            index += count
        start, length, drop = index, 1, True
    else:
        if count is None:
            raise ctx.unsupported(node, f"slices tokens {index!r} of a sequence of unknown length; {_EXAMPLE}")
        index = _traced_bounds(ctx, node, index, count)
        start, stop, step = index.indices(count)
        if step != 1 or stop <= start:
            raise ctx.unsupported(node, f"slices tokens {index!r}; only a non-empty range of consecutive tokens "
                                        "(step 1) is supported")
        length, drop = stop - start, False
    new = b.add_nodes(x.channels, b.next_layer(x.nodes))
    b.add_edges(x.nodes, new, "tokens", geometry=_geometry(ctx, start, length, drop), const=1.0)
    return Val(new, "vec", 0, None if drop else length)


def _traced_bounds(ctx, node, index: slice, count: int) -> slice:
    """``index`` with a bound that is a traced size (PiT's ``x[:, :n]``, ``x[:, n:]`` with ``n = cls.shape[1]``)
    replaced by the number the traced output length implies; refused when both bounds are traced sizes."""
    def known(v) -> bool:
        return v is None or isinstance(v, int)

    if known(index.start) and known(index.stop) and known(index.step):
        return index
    out = ctx.shape(node)
    if out is None or len(out) != 3 or index.step not in (None, 1) or (not known(index.start) and
                                                                        not known(index.stop)):
        raise ctx.unsupported(node, "slices tokens with bounds computed in forward; only one computed bound, "
                                    f"with the other constant and step 1, is supported ({_EXAMPLE})")
    raw = node.args[1][1] if isinstance(node.args[1], tuple) else node.args[1]
    bound = raw.stop if known(index.start) else raw.start
    if not _token_size(ctx, bound):
        raise ctx.unsupported(node, f"slices tokens up to / from {getattr(bound, 'name', bound)}, a value computed in "
                              "forward; only a bound that is a token or spatial size of a tensor (y.shape[1], "
                              "y.size(1)) is supported: the graph is built for the traced sizes, and a bound from "
                              "the batch size or from arithmetic would change with the input")
    n = out[1]
    if known(index.start):
        start = slice(index.start, None).indices(count)[0]
        return slice(start, start + n)
    stop = slice(None, index.stop).indices(count)[1]
    return slice(stop - n, stop)


def _token_size(ctx, n) -> bool:
    """Whether the fx node ``n`` reads one non-batch size of a tensor: ``y.shape[k]`` / ``y.size(k)``, ``k`` not 0."""
    if not isinstance(n, fx.Node):
        return False
    if n.op == "call_method" and n.target == "size" and len(n.args) == 2 and isinstance(n.args[1], int):
        src, dim = n.args[0], n.args[1]
    elif n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[1], int) and \
            isinstance(n.args[0], fx.Node) and (
            (n.args[0].op == "call_function" and n.args[0].target is builtins.getattr and n.args[0].args[1] == "shape")
            or (n.args[0].op == "call_method" and n.args[0].target == "size" and len(n.args[0].args) == 1)):
        src, dim = n.args[0].args[0], n.args[1]
    else:
        return False
    shape = ctx.shape(src) if isinstance(src, fx.Node) else None
    return shape is not None and dim % len(shape) != 0
