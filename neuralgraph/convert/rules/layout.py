"""Layout operations that move no value across neurons: channel-last views, merged spatial dims, channel
shuffles and channel splits. They add no neurons: a channel-last map is a map whose channel neurons are read
per position (``x.permute(0, 2, 3, 1)`` before a ``Linear`` / ``LayerNorm`` in ConvNeXt), a token sequence is a
1-d map read the same way (a ViT's ``conv(x).flatten(2).transpose(1, 2)``: merging the positions of a 2-d map
into tokens is the one operation here that adds neurons, see :mod:`.tokens`), and a channel shuffle
(``x.view(B, g, C // g, H, W).transpose(1, 2).reshape(B, C, H, W)``, ShuffleNet) is a fixed reordering of
the channel neurons.

Values (``Val.kind``): ``"map"`` (channels on dim 1), ``"vec"`` (channels on the last dim: features, tokens or a
channel-last map) and ``"groups"`` (a map whose channel dim is split in two, ``nodes`` ``[g, C // g]``, between
the two reshapes of a channel shuffle).
"""
from __future__ import annotations

import math

import torch

from neuralgraph.convert.builder import Val
from neuralgraph.convert.registry import function_rule, method_rule
from neuralgraph.convert.rules.tokens import respace, to_tokens


def _ints(args) -> tuple | None:
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    return tuple(args) if all(isinstance(a, int) for a in args) else None


def _rank(ctx, node, x: Val) -> int | None:
    shape = ctx.shape(node.all_input_nodes[0])
    if shape is not None:
        return len(shape)
    return 2 + x.sdims if x.kind == "map" else None


def _move(ctx, node, x: Val, dims: tuple[int, ...]) -> Val:
    """``x.permute(dims)``: the channel dim moved to the end (``map`` -> ``vec``) or back (``vec`` -> ``map``),
    the batch and spatial dims kept in order; anything else is refused."""
    n = len(dims)
    dims = tuple(d % n for d in dims)
    rank = _rank(ctx, node, x)
    if x.kind == "groups" and dims[:3] == (0, 2, 1) and dims[3:] == tuple(range(3, n)):
        return Val(x.nodes.t(), "groups", x.sdims, x.positions)  # the transpose of a channel shuffle
    if rank is not None and rank != n:
        raise ctx.unsupported(node, f"permutes {n} dims of a rank-{rank} value")
    if x.kind == "map" and n >= 3 and dims == (0,) + tuple(range(2, n)) + (1,):
        return Val(x.nodes, "vec", 0, x.positions)
    if x.kind == "vec" and n >= 3 and dims == (0, n - 1) + tuple(range(1, n - 1)):
        return Val(x.nodes, "map", n - 2, x.positions)
    raise ctx.unsupported(node, f"permutes the dims of {x.what} to {dims}; only moving the channel dim to "
                                "the end (x.permute(0, 2, 3, 1), a channel-last map or a token sequence) or back "
                                "is supported: other permutations (spatial windows, the batch) move values "
                                "between positions, which a neural graph does not record")


@function_rule(torch.permute)
@method_rule("permute")
def _permute(ctx, node, x: Val, *dims) -> Val:
    x = ctx.materialize(node, node.all_input_nodes[0], x)
    dims = _ints(dims)
    if dims is None:
        raise ctx.unsupported(node, "permute dims must be constant ints")
    return _move(ctx, node, x, dims)


@function_rule(torch.transpose, torch.swapaxes, torch.swapdims)
@method_rule("transpose", "swapaxes", "swapdims")
def _transpose(ctx, node, x: Val, dim0: int, dim1: int) -> Val:
    x = ctx.materialize(node, node.all_input_nodes[0], x)
    rank = _rank(ctx, node, x) if x.kind != "groups" else 3 + x.sdims
    if rank is None:
        raise ctx.unsupported(node, "transposes a value of unknown rank; pass example_input=... to to_neural_graph")
    dims = list(range(rank))
    dims[dim0 % rank], dims[dim1 % rank] = dims[dim1 % rank], dims[dim0 % rank]
    return _move(ctx, node, x, tuple(dims))


def reshape(ctx, node, x: Val, shape: tuple) -> Val | None:
    """Channel-preserving reshapes, ``None`` if ``shape`` is none of them: laying a map's or a token sequence's
    positions out anew (:func:`respaced`), splitting a map's channels in two (the first reshape of a channel
    shuffle) and merging them back (the last one), viewing ``[B, C]`` features as ``[B, C, 1, 1]``."""
    out = ctx.shape(node)
    if x.kind == "vec":
        unit = unit_map(ctx, node, x, tuple(out) if out is not None else shape)
        return unit if unit is not None else respaced(ctx, node, x, out)
    if x.kind == "groups":
        rank = len(out) if out is not None else len(shape)
        if rank == 2 + x.sdims and (out is None or out[1] == x.channels):
            return Val(x.nodes.reshape(-1), "map", x.sdims, x.positions)
        return None
    if x.kind != "map":
        return None
    c, rank = x.channels, 2 + x.sdims
    if out is not None:
        inp = ctx.shape(node.all_input_nodes[0])
        if len(out) == rank + 1 and out[1] * out[2] == c and out[3:] == inp[2:] and (
                out[2] > 1 or _swaps_groups(node)):  # [B, C, 1] -> [B, C, 1, 1] is a map, unless a shuffle follows
            return Val(x.nodes.view(out[1], out[2]), "groups", x.sdims, x.positions)
        return respaced(ctx, node, x, out)
    if len(shape) == 3 and shape[1] == c and rank > 3:
        return merge_spatial(ctx, node, x)
    if len(shape) == rank + 1:
        g, per = shape[1], shape[2]
        if isinstance(g, int) and g > 0 and c % g == 0 and (not isinstance(per, int) or g * per == c):
            return Val(x.nodes.view(g, c // g), "groups", x.sdims, x.positions)
        if isinstance(per, int) and per > 0 and c % per == 0 and not isinstance(g, int):
            return Val(x.nodes.view(c // per, per), "groups", x.sdims, x.positions)
    return None


def _swaps_groups(node) -> bool:
    """Whether ``node``'s value is read only by ``.transpose(1, 2)`` (the middle step of a channel shuffle)."""
    users = list(node.users)
    if len(users) != 1:
        return False
    u = users[0]
    if u.op == "call_method" and u.target in ("transpose", "swapaxes", "swapdims") or (
            u.op == "call_function" and u.target in (torch.transpose, torch.swapaxes, torch.swapdims)):
        return sorted(a for a in u.args[1:3] if isinstance(a, int)) == [1, 2]
    return False


def _features(ctx, arg, x: Val) -> bool:
    """Whether ``x`` holds ``[B, C]`` features, possibly viewed with trailing size-1 dims (``[B, C, 1, 1]``)."""
    shape = ctx.shape(arg)
    if x.kind != "vec":
        return False
    if shape is None:
        return x.positions is None
    return len(shape) >= 2 and shape[1] == x.channels and all(s == 1 for s in shape[2:])


def unit_map(ctx, node, x: Val, shape: tuple) -> Val | None:
    """``[B, C]`` features viewed with trailing size-1 dims, ``[B, C, 1, 1]`` (an SE gate computed by ``nn.Linear``
    layers, ``fc(y).view(B, C, 1, 1)``, before ``x * gate``): the same feature neurons, which a product broadcasts
    over a map's positions as torch does; ``None`` for any other shape. (A convolution does not read them: it needs
    a map.)"""
    if not _features(ctx, node.all_input_nodes[0], x):
        return None  # token sequences, channel-last maps
    if len(shape) < 3 or shape[1] not in (x.channels, -1) or not all(s == 1 for s in shape[2:]):
        return None
    return Val(x.nodes, "vec")


@function_rule(torch.unsqueeze)
@method_rule("unsqueeze")
def _unsqueeze(ctx, node, x: Val, dim: int) -> Val:
    """``y.unsqueeze(-1)`` of ``[B, C]`` features (twice: ``[B, C, 1, 1]``): :func:`unit_map`; other dims are
    refused."""
    x = ctx.materialize(node, node.all_input_nodes[0], x)
    shape = ctx.shape(node.all_input_nodes[0])
    rank = len(shape) if shape is not None else 2
    if not _features(ctx, node.all_input_nodes[0], x) or not isinstance(dim, int) or dim % (rank + 1) != rank:
        raise ctx.unsupported(node, f"unsqueeze({dim}) of {x.what} is not supported; only adding trailing "
                                    "size-1 dims to [B, C] features (a gate viewed as [B, C, 1, 1]) is")
    return Val(x.nodes, "vec")


@method_rule("expand", "expand_as")
def _expand(ctx, node, x: Val, *sizes) -> Val:
    """``gate.expand_as(x)`` of ``[B, C, 1, 1]`` features (the SE reference implementation's ``x * y.expand_as(x)``):
    the same feature neurons, which the product broadcasts; expanding anything else (a map's positions, tokens)
    is refused."""
    x = ctx.materialize(node, node.all_input_nodes[0], x)
    if not _features(ctx, node.all_input_nodes[0], x):
        raise ctx.unsupported(node, f"expands {x.what}; only [B, C, 1, 1] features (a gate) can be "
                                    "expanded, for a product that broadcasts them anyway")
    return Val(x.nodes, "vec")


def respaced(ctx, node, x: Val, out: tuple | None) -> Val | None:
    """A reshape to ``out`` that keeps the batch and the channels (dim 1 of a map, the last dim of a token
    sequence or channel-last map) and lays the positions out in another shape, row-major, else ``None``: a map's
    spatial dims merged into tokens (``x.reshape(B, C, H * W)``), a token sequence back to a map
    (``x.transpose(1, 2).reshape(B, C, H, W)``, ``x.reshape(B, H, W, C)``), a channel-last map's positions as
    tokens (``x.reshape(B, H * W, C)``). Needs the shapes (``example_input``)."""
    inp = ctx.shape(node.all_input_nodes[0])
    if out is None or inp is None or len(out) < 3 or len(inp) < 3 or out[0] != inp[0]:
        return None
    c = x.channels
    if x.kind == "vec" and inp[-1] == c and out[-1] == c:
        old, new, channel_last = tuple(inp[1:-1]), tuple(out[1:-1]), True
    elif x.kind == "map" and inp[1] == c and out[1] == c:
        old, new, channel_last = tuple(inp[2:]), tuple(out[2:]), False
    else:
        return None
    if math.prod(old) != math.prod(new):
        return None
    if old == new:
        return x
    return respace(ctx, node, x, new, channel_last)


def merge_spatial(ctx, node, x: Val) -> Val:
    """``x.flatten(2)`` of a map: one spatial dim (a ViT's patch grid becoming a token sequence: new neurons fed
    by ``tokens`` edges, :func:`~neuralgraph.convert.rules.tokens.to_tokens`)."""
    return to_tokens(ctx, node, x)


def _sizes(ctx, node, x: Val, split, dim: int, chunks: bool) -> list[int]:
    c = x.channels
    if chunks:
        if not isinstance(split, int) or split < 1:
            raise ctx.unsupported(node, "chunk count must be a constant int")
        size = math.ceil(c / split)
        return [min(size, c - k) for k in range(0, c, size)]
    if isinstance(split, int):
        return [min(split, c - k) for k in range(0, c, split)]
    if isinstance(split, (tuple, list)) and all(isinstance(s, int) for s in split) and sum(split) == c:
        return list(split)
    raise ctx.unsupported(node, f"split sizes {split!r} do not divide the {c} channels")


def _split(ctx, node, x: Val, split, dim: int, chunks: bool) -> tuple[Val, ...]:
    """``x.chunk(n, 1)`` / ``x.split(sizes, 1)`` along the channels: consecutive channel slices."""
    x = ctx.materialize(node, node.all_input_nodes[0], x)
    shape = ctx.shape(node.all_input_nodes[0])
    rank = len(shape) if shape is not None else (2 + x.sdims if x.kind == "map" else None)
    channel = dim == 1 if x.kind == "map" else (dim == -1 or (rank is not None and dim == rank - 1))
    if not channel:
        raise ctx.unsupported(node, f"splits dim {dim} of {x.what}; only the channel / feature dim (1 for "
                                    "maps, the last one for features) is supported")
    out, start = [], 0
    for size in _sizes(ctx, node, x, split, dim, chunks):
        out.append(Val(x.nodes[start:start + size], x.kind, x.sdims, x.positions))
        start += size
    return tuple(out)


@function_rule(torch.chunk)
@method_rule("chunk")
def _chunk(ctx, node, x: Val, chunks: int, dim: int = 0) -> tuple[Val, ...]:
    return _split(ctx, node, x, chunks, dim, True)


@function_rule(torch.split)
@method_rule("split")
def _split_rule(ctx, node, x: Val, split_size_or_sections, dim: int = 0) -> tuple[Val, ...]:
    return _split(ctx, node, x, split_size_or_sections, dim, False)
