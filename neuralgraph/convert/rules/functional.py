"""Parameter-free dataflow: residual additions, constant scales and shifts, channel slicing / concatenation,
flattening, pooling, dropout and other pass-through operations."""
from __future__ import annotations

import builtins
import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph.convert import activations as A
from neuralgraph.convert.builder import SYM, Param, Val
from neuralgraph.convert.registry import function_rule, method_rule, module_rule, takes_params
from neuralgraph.convert.rules import layout, tokens
from neuralgraph.data.graph import POOL, ROLE

# ------------------------------------------------------------------------------------ pass-through


@module_rule(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
             nn.FeatureAlphaDropout)
def _identity_module(ctx, node, x: Val, *args, **kwargs) -> Val:
    return Val(x.nodes, x.kind, x.sdims, x.positions)


@function_rule(torch.clone)
def _identity_function(ctx, node, x: Val, *args, **kwargs) -> Val:
    return Val(x.nodes, x.kind, x.sdims, x.positions)


@function_rule(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)
def _dropout_function(ctx, node, x: Val, p: float = 0.5, training=None, inplace: bool = False) -> Val:
    """``F.dropout(x, p, training=self.training)``: the identity in eval mode. In training mode (and by default:
    ``F.dropout``'s ``training`` is ``True`` unless passed) it zeroes values at random, which no graph computes."""
    if training is None:
        training = node.target is not F.alpha_dropout  # the functions' defaults
    if training is not False and p > 0:
        raise ctx.unsupported(node, f"{node.target.__name__}(p={p}) with training=True zeroes values at random (F.dropout "
                                    "defaults to training=True); the graph stores the eval-mode function: pass "
                                    "training=self.training and call model.eval() first")
    return Val(x.nodes, x.kind, x.sdims, x.positions)


@function_rule("torchvision.ops.stochastic_depth.stochastic_depth")
def _stochastic_depth(ctx, node, x: Val, p: float = 0.0, mode: str = "row", training: bool = True) -> Val:
    """torchvision's stochastic depth (a dropout of whole residual branches): the identity in eval mode."""
    if training is not False and p > 0:
        raise ctx.unsupported(node, "stochastic depth in training mode drops residual branches at random; the graph "
                                    "stores the eval-mode function: call model.eval() first")
    return Val(x.nodes, x.kind, x.sdims, x.positions)


@method_rule("contiguous", "clone", "float", "double", "half", "to", "type_as", "detach")
def _identity_method(ctx, node, x: Val, *args, **kwargs) -> Val:
    return Val(x.nodes, x.kind, x.sdims, x.positions)


@method_rule("size", "dim")
def _size(ctx, node, x: Val, *args, **kwargs):
    return SYM


@function_rule(builtins.getattr)
def _getattr(ctx, node, x: Val, name: str):
    if name in ("shape", "ndim", "dtype", "device"):
        return SYM
    raise ctx.unsupported(node, f"reads attribute {name!r} of a tensor")


# ------------------------------------------------------------------------------------ residuals


def _number(a) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def affine(ctx, node, v: Val, scale=1.0, shift=0.0) -> Val:
    """``scale * v + shift``, each a Python number or a per-channel parameter ``(name, elem)`` (a layer scale
    ``gamma * x``, a per-channel shift ``x + beta``): an element-wise layer of new neurons, one identity edge
    each carrying the scale, the shift as their bias. Numbers are constants (the round trip leaves them
    alone); parameters are gathered like any other. A pure shift of neurons that are still open and have no
    bias is added to them instead."""
    bld = ctx.builder
    v = ctx.materialize(node, node.all_input_nodes[0], v)
    if isinstance(scale, float) and scale == 1.0 and bld.is_open(v.nodes) and not any(
            bld.has_bias[i] for i in v.nodes.tolist()):
        _shift(ctx, v.nodes, shift)
        return v
    new = bld.add_nodes(v.channels, bld.next_layer(v.nodes))
    if isinstance(scale, float):
        bld.add_edges(v.nodes, new, "identity", const=scale)
    else:
        bld.add_edges(v.nodes, new, "scale",
                      sources=[(scale[0], scale[1].view(-1, 1), torch.tensor([ctx.config.centre_tap]))])
    _shift(ctx, new, shift)
    return Val(new, v.kind, v.sdims, v.positions)


def _shift(ctx, nodes, shift) -> None:
    if isinstance(shift, tuple):
        ctx.builder.add_node_param(nodes, shift[0], shift[1])
    elif shift != 0:
        ctx.builder.add_node_const(nodes, float(shift))


def per_channel(ctx, node, v: Val, p: Param, what: str) -> tuple[str, torch.Tensor]:
    """``(name, elem)`` of a parameter that broadcasts against ``v`` with one value per channel (a ``[C, 1, 1]``
    or ``[1, C, 1, 1]`` scale of a map, a ``[C]`` / ``[1, 1, C]`` one of features or tokens), or with one value for
    all (a ``[1]`` learnable scalar, HGNetV2's ``LearnableAffineBlock``: element 0 on every channel, read back from
    its first copy like a tied weight); refused otherwise."""
    v = ctx.materialize(node, node.all_input_nodes[0], v)
    shape = tuple(p.shape)
    if math.prod(shape) == 1:
        return p.name, torch.zeros(v.channels, dtype=torch.long)
    while shape and shape[0] == 1 and len(shape) > 1:
        shape = shape[1:]
    c = v.channels
    if v.kind == "map":
        ok = len(shape) <= 1 + v.sdims and shape[0] == c and all(s == 1 for s in shape[1:]) and (
            len(shape) == 1 + v.sdims or c == 1)
    else:
        ok = len(shape) == 1 and shape[0] == c
    if not ok:
        raise ctx.unsupported(node, f"{what} of {v.what} with {c} channels by parameter {p.name!r} of shape "
                                    f"{p.shape}: only one value per channel (shape [C, 1, 1] for a map, [C] for "
                                    "features) or one for all ([1]) can be stored on the graph")
    return p.name, torch.arange(c)


def _constant_operand(ctx, node, a, b, what: str) -> tuple[Val, float]:
    """The neuron value and the Python number of a binary operation with one of each."""
    if isinstance(a, Val) and _number(b):
        return a, float(b)
    if isinstance(b, Val) and _number(a):
        return b, float(a)
    param = next((x.name for x in (a, b) if isinstance(x, Param)), None)
    if param is not None:
        raise ctx.unsupported(node, f"{what} with the parameter {param!r} read in forward is not supported (a neural "
                                    "graph stores parameters of layers, not tensors combined with neuron values)")
    raise ctx.unsupported(node, f"{what} with an operand that is neither a neuron value nor a Python number "
                                "(a tensor constant, or a parameter that is not one value per channel) is "
                                "not supported")


@function_rule(operator.mul, operator.imul, torch.mul)
@method_rule("mul", "mul_")
@takes_params
def _mul(ctx, node, a, b) -> Val:
    """``x * c`` / ``c * x``: a constant scale; ``x * p`` with a per-channel parameter: a parameter scale;
    ``x * y`` of two neuron values: a product (:func:`product`)."""
    if isinstance(a, Val) and isinstance(b, Val):
        return product(ctx, node, a, b)
    for v, p in ((a, b), (b, a)):
        if isinstance(v, Val) and isinstance(p, Param):
            return affine(ctx, node, v, scale=per_channel(ctx, node, v, p, "a product"))
    v, c = _constant_operand(ctx, node, a, b, "a product")
    return affine(ctx, node, v, scale=c)


@function_rule(torch.addcmul)
@method_rule("addcmul")
@takes_params
def _addcmul(ctx, node, base, t1, t2, value=1) -> Val:
    """``torch.addcmul(beta, alpha, x)`` = ``beta + alpha * x`` with per-channel parameters (ResMLP's ``Affine``):
    the element-wise layer of :func:`affine` with ``alpha`` on the edges and ``beta`` as the bias."""
    v = t2 if isinstance(t2, Val) else t1
    scale = t1 if v is t2 else t2
    if not (isinstance(v, Val) and isinstance(scale, Param) and isinstance(base, Param)) or value != 1:
        raise ctx.unsupported(node, "addcmul is supported as torch.addcmul(beta, alpha, x) with per-channel "
                                    "parameters beta, alpha and value=1 (an affine layer); write other uses as "
                                    "separate operations")
    v = ctx.materialize(node, node.all_input_nodes[-1 if v is t2 else 1], v)  # inputs: beta, alpha, x
    return affine(ctx, node, v, scale=per_channel(ctx, node, v, scale, "a product"),
                  shift=per_channel(ctx, node, v, base, "a sum"))


def _broadcast(v: Val, c: int) -> torch.Tensor:
    """``v``'s neurons for ``c`` channels: a one-channel value's neuron repeated (torch broadcasts it)."""
    return v.nodes.repeat(c) if v.channels == 1 else v.nodes


def product(ctx, node, a: Val, b: Val) -> Val:
    """``a * b`` of two neuron values with the same channels, e.g. a Squeeze-and-Excitation gate
    ``x * sigmoid(fc(pool(x)))``, or of a value and a one-channel value broadcast over its channels (GRN's
    ``x_g / x_g.mean(-1, keepdim=True)``): one new neuron per channel with a ``product`` edge (1 on the centre
    tap) from each operand's neuron (the one-channel operand's neuron feeds them all); a neuron multiplies the
    values of its product edges (broadcasting a pooled gate over the positions of a map) and adds its other
    inputs to that."""
    bld = ctx.builder
    a = ctx.materialize(node, node.all_input_nodes[0], a)
    b = ctx.materialize(node, node.all_input_nodes[-1], b)
    if a.channels != b.channels and 1 not in (a.channels, b.channels):
        raise ctx.unsupported(node, f"multiplies values with {a.channels} and {b.channels} channels; only a "
                                    "product of values with the same channels (an element-wise or per-channel "
                                    "gate) or with a one-channel value is supported")
    kinds = {a.kind, b.kind}
    if len(kinds) > 1 and kinds != {"map", "vec"}:
        raise ctx.unsupported(node, f"multiplies {a.what} and {b.what}")
    c = max(a.channels, b.channels)
    out = bld.add_nodes(c, bld.next_layer(a.nodes, b.nodes))
    for v in (a, b):
        bld.add_identity_edges(_broadcast(v, c), out, "product")
    big = a if a.kind == "map" and (a.positions or 0) >= (b.positions or 0) else b
    return Val(out, big.kind, big.sdims, big.positions)


@function_rule(operator.truediv, operator.itruediv, torch.div)
@method_rule("div", "div_")
def _div(ctx, node, a, b, **kwargs) -> Val:
    """``x / c``: the constant scale ``1 / c``; ``x / y`` of two neuron values (``y`` with ``x``'s channels or
    one channel, GRN's ``x_g / (x_g.mean(-1, keepdim=True) + eps)``): the activation ``reciprocal`` on a copy of
    ``y``, then a product (:func:`product`)."""
    if kwargs.get("rounding_mode") is None and isinstance(a, Val) and isinstance(b, Val):
        a = ctx.materialize(node, node.all_input_nodes[0], a)
        b = ctx.materialize(node, node.all_input_nodes[-1], b)
        # the reciprocal always on a copy: this operation also reads the numerator, which may share b's neurons
        # (d / d, d / d[:, :1]), so b's neurons are never free to carry it
        bld = ctx.builder
        inverse = bld.add_nodes(b.channels, bld.next_layer(b.nodes))
        bld.add_identity_edges(b.nodes, inverse, "identity")
        bld.set_activation(inverse, A.activation_id("reciprocal"))
        return product(ctx, node, a, Val(inverse, b.kind, b.sdims, b.positions))
    if kwargs.get("rounding_mode") is not None or not (isinstance(a, Val) and _number(b)) or b == 0:
        raise ctx.unsupported(node, "only division of a neuron value by a non-zero Python number or by another "
                                    "neuron value is supported")
    return affine(ctx, node, a, scale=1.0 / float(b))


@function_rule(operator.sub, operator.isub, torch.sub)
@method_rule("sub", "sub_")
def _sub(ctx, node, a, b, **kwargs) -> Val:
    """``x - c`` (a shift), ``c - x`` (scale -1, then a shift) or ``x - y`` of two neuron values (PoolFormer's
    ``pool(x) - x``: :func:`add` with the subtrahend's edges carrying -1)."""
    if kwargs.get("alpha", 1) != 1:
        raise ctx.unsupported(node, "torch.sub with alpha != 1 is not supported")
    if isinstance(a, Val) and isinstance(b, Val):
        return add(ctx, node, a, b, sign=-1.0)
    v, c = _constant_operand(ctx, node, a, b, "a difference")
    return affine(ctx, node, v, shift=-c) if v is a else affine(ctx, node, v, scale=-1.0, shift=c)


@function_rule(operator.neg, torch.neg)
@method_rule("neg")
def _neg(ctx, node, x: Val) -> Val:
    return affine(ctx, node, x, scale=-1.0)


@function_rule(operator.add, operator.iadd, torch.add)
@method_rule("add", "add_")
@takes_params
def add(ctx, node, a, b, sign: float = 1.0, **kwargs) -> Val:
    """``a + b``: identity (residual) edges from one operand's neurons into the other's; ``x + c`` with a
    Python number is a constant shift (:func:`affine`). ``sign=-1``: the difference ``a - b`` of two neuron
    values, ``b``'s edges are ``identity`` edges carrying -1 (``b`` is never the neurons written into). A
    one-channel operand is broadcast over the other's channels (new sum neurons, its neuron feeding each).

    The skipped operand feeds the other operand's neurons directly when those are still open (their
    pre-activation value not read anywhere else); otherwise a new layer of sum neurons is added.
    """
    if kwargs.get("alpha", 1) != 1:
        raise ctx.unsupported(node, "torch.add with alpha != 1 is not supported")
    for k, (v, p) in enumerate(((a, b), (b, a))):
        if isinstance(v, Val) and isinstance(p, Param):
            v = ctx.materialize(node, node.args[k], v)
            table = tokens.position_table(ctx, node.args[k], v, p)  # x + pos_embed: one value per position, channel
            if table is not None:
                return tokens.add_positions(ctx, node, v, p, table)
            return affine(ctx, node, v, shift=per_channel(ctx, node, v, p, "a sum"))
    if not (isinstance(a, Val) and isinstance(b, Val)):
        v, c = _constant_operand(ctx, node, a, b, "a sum")
        return affine(ctx, node, v, shift=c)
    bld = ctx.builder
    a = ctx.materialize(node, node.all_input_nodes[0], a)
    b = ctx.materialize(node, node.all_input_nodes[-1], b)
    if a.channels != b.channels and 1 not in (a.channels, b.channels):
        raise ctx.unsupported(node, f"adds values with {a.channels} and {b.channels} channels; slice both "
                                    "to the joined channels first (x[:, :m] + y[:, :m])")
    if a.kind != b.kind and "flat" not in (a.kind, b.kind):
        raise ctx.unsupported(node, f"adds {a.what} and {b.what}")
    if a.channels != b.channels:  # a one-channel value broadcast over the other's channels (x - x.mean(1, True))
        c = max(a.channels, b.channels)
        out = bld.add_nodes(c, bld.next_layer(a.nodes, b.nodes))
        bld.add_identity_edges(_broadcast(a, c), out, "residual")
        _skip_edges(bld, _broadcast(b, c), out, sign)
        big = a if a.channels == c else b
        return Val(out, big.kind, big.sdims, big.positions)
    disjoint = not set(a.nodes.tolist()) & set(b.nodes.tolist())
    for target, skip in ((a, b), (b, a)) if sign == 1.0 else ((a, b),):
        if disjoint and bld.is_open(target.nodes):
            bld.deepen(target.nodes, bld.next_layer(skip.nodes))
            _skip_edges(bld, skip.nodes, target.nodes, sign)
            return Val(target.nodes, target.kind, target.sdims, target.positions)
    out = bld.add_nodes(a.channels, bld.next_layer(a.nodes, b.nodes))
    bld.add_identity_edges(a.nodes, out, "residual")
    _skip_edges(bld, b.nodes, out, sign)
    return Val(out, a.kind, a.sdims, a.positions)


def _skip_edges(bld, src, dst, sign: float) -> None:
    """``dst += sign * src``: residual edges (1), or identity edges carrying the constant -1."""
    if sign == 1.0:
        bld.add_identity_edges(src, dst, "residual")
    else:
        bld.add_edges(src, dst, "identity", const=sign)


# ------------------------------------------------------------------------------------ channels


def _channel_dim(ctx, node, v: Val, dim: int, rank: int | None = None) -> None:
    """``dim`` must be the channel dim (1) of a map, or the feature (last) dim of features; ``rank``: the
    traced rank of ``v`` if known (features of rank > 2 are per token: dim 1 is not theirs)."""
    if v.kind == "vec" and rank is not None and rank > 2:
        ok = dim % rank == rank - 1
    else:
        ok = dim == 1 or (v.kind in ("vec", "flat") and dim == -1)
    if not ok:
        raise ctx.unsupported(node, f"operates on dim {dim} of {v.what}; only the channel / "
                                    "feature dim (1 for maps, the last one for features) is supported")


def _rank(ctx, arg) -> int | None:
    shape = ctx.shape(arg)
    return None if shape is None else len(shape)


@function_rule(torch.cat, torch.concat)
@takes_params
def cat(ctx, node, tensors, dim: int = 0) -> Val:
    """``torch.cat`` along channels: the result's neurons are the operands' neurons, in order. Along the tokens of
    ``[B, T, C]`` sequences (a class token ``torch.cat([cls.expand(B, -1, -1), x], 1)``): :func:`tokens.cat_tokens`."""
    args = node.args[0] if node.args else node.kwargs["tensors"]  # the operands' fx nodes (repeats included)
    ranks = [_rank(ctx, n) if isinstance(v, Val) else len(v.shape) if isinstance(v, Param) else None
             for n, v in zip(args, tensors)]
    if any(isinstance(v, Param) for v in tensors) or (ranks[0] == 3 and dim % 3 == 1 and all(
            isinstance(v, Val) and v.kind == "vec" for v in tensors)):
        if not all(r == 3 for r in ranks if r is not None) or dim % 3 != 1:
            raise ctx.unsupported(node, f"concatenates a parameter along dim {dim}; only token sequences "
                                        "[B, T, C] along the tokens (dim 1) with [1, R, C] parameters are supported")
        ops = [v if isinstance(v, Param) else ctx.materialize(node, n, v) for n, v in zip(args, tensors)]
        return tokens.cat_tokens(ctx, node, list(args), ops)
    vals = [ctx.materialize(node, n, v) for n, v in zip(args, tensors)]
    for n, v in zip(args, vals):
        _channel_dim(ctx, node, v, dim, _rank(ctx, n))
    kinds = {v.kind for v in vals}
    if len(kinds) != 1:
        raise ctx.unsupported(node, f"concatenates values of kinds {sorted(kinds)}")
    first = vals[0]
    return Val(torch.cat([v.nodes for v in vals]), first.kind, first.sdims, first.positions)


@function_rule(operator.getitem)
def getitem(ctx, node, x, index) -> Val:
    """Channel slicing ``x[:, a:b]`` (or ``x[..., a:b]`` on features)."""
    if isinstance(x, tuple) and isinstance(index, int) and any(isinstance(v, Val) for v in x):
        return x[index]  # one part of a channel split (x.chunk(2, 1))
    if not isinstance(x, Val):
        return SYM
    x = ctx.materialize(node, node.all_input_nodes[0], x)
    rank = _rank(ctx, node.all_input_nodes[0])
    sel = channel_slice(index, x.kind, rank)
    picked = _token_index(index)
    if sel is None and x.kind == "vec" and picked is not None and (
            rank == 3 or (rank is None and ctx.tokens and isinstance(picked, int))):
        return tokens.select_tokens(ctx, node, x, picked, tokens.token_count(ctx, node.all_input_nodes[0], x))
    if sel is None and x.kind == "vec" and rank is not None and rank > 2:
        raise ctx.unsupported(node, f"indexing {index!r} of a rank-{rank} feature value is not supported; only "
                                    "slices of its last dim (x[..., a:b]) and, on [B, T, C] token sequences, "
                                    "token picks / slices x[:, i] / x[:, a:b] are")
    if sel is None:
        raise ctx.unsupported(node, f"indexing {index!r} is not supported; only channel slices "
                                    "x[:, a:b] are")
    return Val(x.nodes[sel], x.kind, x.sdims, x.positions)


def _token_index(index) -> int | slice | None:
    """The dim-1 index of ``x[:, i]`` / ``x[:, a:b]`` (the tokens of a ``[B, T, C]`` sequence), else ``None``."""
    idx = index if isinstance(index, tuple) else (index,)
    full = slice(None)
    if len(idx) >= 2 and idx[0] == full and isinstance(idx[1], (int, slice)) and not isinstance(idx[1], bool) and \
            all(i == full or i is Ellipsis for i in idx[2:]):
        return idx[1]
    return None


def channel_slice(index, kind: str, rank: int | None = None) -> slice | None:
    """The channel slice of ``x[index]``, else ``None``: ``x[:, a:b]`` on maps and ``[B, C]`` features; on
    features of rank ``rank`` >= 3 (token sequences ``[B, T, C]``, channel-last maps) a slice of the last dim,
    ``x[..., a:b]`` or ``x[:, :, a:b]``."""
    idx = index if isinstance(index, tuple) else (index,)
    full = slice(None)
    if kind in ("vec", "flat") and rank is not None and rank >= 3:
        dims = _expand_index(idx, rank)
        if dims is not None and all(i == full for i in dims[:-1]) and isinstance(dims[-1], slice):
            return dims[-1]
        return None
    if len(idx) >= 2 and idx[0] == full and isinstance(idx[1], slice) and all(
            i == full or i is Ellipsis for i in idx[2:]):
        return idx[1]
    if kind in ("vec", "flat") and len(idx) == 2 and idx[0] is Ellipsis and isinstance(idx[1], slice):
        return idx[1]
    return None


def _expand_index(idx: tuple, rank: int) -> tuple | None:
    """``idx`` as one slice per dim of a rank-``rank`` tensor (``...`` and omitted trailing dims as full
    slices); ``None`` for anything but slices and one ``...`` (ints, ``None``, tensors)."""
    if sum(i is Ellipsis for i in idx) > 1 or not all(isinstance(i, slice) or i is Ellipsis for i in idx):
        return None
    n = sum(i is not Ellipsis for i in idx)
    if n > rank:
        return None
    out: list = []
    for i in idx:
        out.extend([slice(None)] * (rank - n) if i is Ellipsis else [i])
    return tuple(out + [slice(None)] * (rank - len(out)))


# ------------------------------------------------------------------------------------ flattening


def _flat(v: Val) -> Val:
    if v.kind == "map":
        return Val(v.nodes, "flat", 0, v.positions)
    return Val(v.nodes, v.kind, v.sdims, v.positions)


@module_rule(nn.Flatten)
def _flatten_module(ctx, node, x: Val) -> Val:
    mod = ctx.module(node)
    if mod.start_dim != 1 or mod.end_dim != -1:
        raise ctx.unsupported(node, "nn.Flatten must flatten dims 1..-1")
    return _flat(ctx.materialize(node, node.all_input_nodes[0], x))


@function_rule(torch.flatten)
@method_rule("flatten")
def _flatten(ctx, node, x: Val, start_dim: int = 0, end_dim: int = -1) -> Val:
    if start_dim == 2 and end_dim == -1 and x.kind == "map":
        return layout.merge_spatial(ctx, node, x)
    if start_dim != 1 or end_dim != -1:
        moved = layout.respaced(ctx, node, ctx.materialize(node, node.all_input_nodes[0], x), ctx.shape(node))
        if moved is None:
            raise ctx.unsupported(node, "flatten must keep the batch dim and flatten the rest (flatten(x, 1)), merge "
                                        "a map's spatial dims (flatten(2)) or a channel-last map's (flatten(1, 2))")
        return moved
    return _flat(ctx.materialize(node, node.all_input_nodes[0], x))


@function_rule(torch.unflatten)
@method_rule("unflatten")
def _unflatten(ctx, node, x: Val, dim: int, sizes) -> Val:
    """``x.unflatten(2, (H, W))`` of a ``[B, C, T]`` map, ``x.unflatten(1, (H, W))`` of ``[B, T, C]`` tokens: the
    positions laid out as a map (:func:`~.layout.respaced`)."""
    moved = layout.respaced(ctx, node, ctx.materialize(node, node.all_input_nodes[0], x), ctx.shape(node))
    if moved is None:
        raise ctx.unsupported(node, f"unflatten({dim}, {sizes!r}) of {x.what} is not supported; only "
                                    "splitting the positions of a map or token sequence into a map is (shapes "
                                    "known: pass example_input=...)")
    return moved


@method_rule("view", "reshape")
@function_rule(torch.reshape)
def _reshape(ctx, node, x: Val, *shape) -> Val:
    """``x.view(x.size(0), -1)`` and equivalents (the batch-keeping flatten)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    out_shape = ctx.shape(node)
    in_shape = ctx.shape(node.all_input_nodes[0])
    if out_shape is not None and in_shape is not None:
        ok = len(out_shape) == 2 and out_shape[0] == in_shape[0]
    else:
        ok = len(shape) == 2 and (shape[1] == -1 or isinstance(shape[1], int))
    if not ok:
        moved = layout.reshape(ctx, node, x, shape)
        if moved is not None:
            return moved
        if out_shape is not None and in_shape is not None and len(in_shape) == 2 and \
                tuple(out_shape) == (in_shape[0], 1, in_shape[1]):
            raise ctx.unsupported(node, "views features as a one-channel sequence [B, 1, C]; this converts only as "
                                        "ECA's chain: the view, one-channel nn.Conv1d layers and element-wise "
                                        "activations, each read only by the next, then a view back to [B, C, 1, 1] "
                                        "or [B, C]")
        raise ctx.unsupported(node, f"reshape to {shape} is not supported; only the batch-keeping flatten "
                                    "x.view(x.size(0), -1), laying the positions of a map or token sequence out anew "
                                    "with the batch and channels kept (x.reshape(B, C, -1), x.transpose(1, 2)"
                                    ".reshape(B, C, H, W), x.reshape(B, H, W, C) of [B, T, C] tokens; with "
                                    "example_input=... when shapes are symbolic) and a channel shuffle "
                                    "(x.view(B, g, C // g, H, W).transpose(1, 2).reshape(B, C, H, W)) are")
    return _flat(ctx.materialize(node, node.all_input_nodes[0], x))


# ------------------------------------------------------------------------------------ pooling

_ADAPTIVE = {nn.AdaptiveAvgPool1d: "avg", nn.AdaptiveAvgPool2d: "avg", nn.AdaptiveAvgPool3d: "avg",
             nn.AdaptiveMaxPool1d: "max", nn.AdaptiveMaxPool2d: "max", nn.AdaptiveMaxPool3d: "max"}
#: positional parameters of the functional poolings after the input
_MAX_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


def _pooled(ctx, nodes, name: str, window: tuple[int, ...] | None = None):
    """Record pooling ``name`` on ``nodes``, on a copy (identity edges) when their unpooled value is read too
    or they are pooled already, so that every reader of a neuron reads what it read in the module. Returns the
    pooled neurons (final: a later activation or edge goes to a new layer).

    Every reader of a pooled neuron reads it pooled (a convolution reads a global pooling as a 1x1 map: the 1x1
    convolutions of a Squeeze-and-Excitation block), so the pooling goes on copies of the neurons read by any
    edge or pending operation; a global pooling on copies of exactly those (DenseNet's reused maps stay copy-free
    for the others), a local one on copies of all."""
    b = ctx.builder
    local = not name.startswith("global")
    need = b.read_anywhere(nodes) | torch.tensor([b.pool[i] != 0 or (local and b.role[i] == ROLE["input"])
                                                  for i in nodes.tolist()], dtype=torch.bool)
    if local and need.any():
        need[:] = True
    if need.any():
        new = b.add_nodes(int(need.sum()), b.next_layer(nodes[need]))
        b.add_identity_edges(nodes[need], new, "identity")
        nodes = nodes.clone()
        nodes[need] = new
    b.set_pool(nodes, POOL[name], window)
    return nodes


def _per_dim(ctx, node, what: str, value, sdims: int) -> tuple[int, ...]:
    if not isinstance(value, (int, tuple, list)):
        raise ctx.unsupported(node, f"pooling {what} is computed in forward ({type(value).__name__}), not constant ints: "
                                    "a graph holds its pooling geometry; compute it in __init__")
    values = (value,) * sdims if isinstance(value, int) else tuple(value)
    if len(values) == 1 and sdims > 1:
        values = values * sdims
    if len(values) != sdims or not all(isinstance(v, int) for v in values):
        raise ctx.unsupported(node, f"pooling {what}={value!r} is not {sdims} constant ints")
    return values


def _local_pool(ctx, node, x: Val, kind: str, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                count_include_pad=True, divisor_override=None, return_indices=False) -> Val:
    """A max / avg pooling over windows: recorded on the neurons with its geometry (``node_window``)."""
    x = ctx.materialize(node, node.all_input_nodes[0], x)
    if x.kind != "map":
        raise ctx.unsupported(node, f"{kind} pooling of {x.what} is not supported; pool feature maps")
    if return_indices:
        raise ctx.unsupported(node, "return_indices=True returns the argmax positions, which a neural graph cannot "
                                    "represent; pool without return_indices")
    sd, dims = x.sdims, len(ctx.config.max_kernel)
    if sd > dims:
        raise ctx.unsupported(node, f"a {sd}-d pooling needs a max_kernel with {sd} dims; convert with "
                                    f"max_kernel={(3,) * sd}")
    k = _per_dim(ctx, node, "kernel_size", kernel_size, sd)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and not stride) else \
        _per_dim(ctx, node, "stride", stride, sd)
    p, d = _per_dim(ctx, node, "padding", padding, sd), _per_dim(ctx, node, "dilation", dilation, sd)
    lead = dims - sd
    window = ((1,) * lead + k + (1,) * lead + s + (0,) * lead + p + (1,) * lead + d
              + (int(bool(ceil_mode)), int(bool(count_include_pad)), int(divisor_override or 0)))
    return Val(_pooled(ctx, x.nodes, kind, window), "map", x.sdims, None)


def _adaptive_pool(ctx, node, x: Val, kind: str, output_size) -> Val:
    """Adaptive pooling: to one position a global pooling, else recorded with its output size."""
    x = ctx.materialize(node, node.all_input_nodes[0], x)
    if x.kind != "map":
        raise ctx.unsupported(node, f"pooling {x.what} is not supported; pool feature maps")
    sd, dims = x.sdims, len(ctx.config.max_kernel)
    sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * sd
    if None in sizes:  # None keeps that input size
        shape = ctx.shape(node.all_input_nodes[0])
        if shape is None:
            raise ctx.unsupported(node, f"adaptive pooling to {output_size!r} keeps an input size that is only "
                                        "known by running the model; pass example_input=... to to_neural_graph")
        sizes = tuple(n if o is None else o for o, n in zip(sizes, shape[2:]))
    sizes = _per_dim(ctx, node, "output_size", sizes, sd)
    if math.prod(sizes) == 1:
        return Val(_pooled(ctx, x.nodes, f"global_{kind}"), "map", x.sdims, 1)
    if sd > dims:
        raise ctx.unsupported(node, f"a {sd}-d pooling needs a max_kernel with {sd} dims; convert with "
                                    f"max_kernel={(3,) * sd}")
    lead = dims - sd
    window = (1,) * lead + sizes + ctx.builder.default_window()[dims:]
    return Val(_pooled(ctx, x.nodes, f"adaptive_{kind}", window), "map", x.sdims, math.prod(sizes))


@module_rule(*_ADAPTIVE)
def _adaptive_pool_module(ctx, node, x: Val) -> Val:
    mod = ctx.module(node)
    return _adaptive_pool(ctx, node, x, _ADAPTIVE[type(mod)], mod.output_size)


@module_rule(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
def _max_pool_module(ctx, node, x: Val) -> Val:
    m = ctx.module(node)
    return _local_pool(ctx, node, x, "max", m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                       return_indices=m.return_indices)


@module_rule(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
def _avg_pool_module(ctx, node, x: Val) -> Val:
    m = ctx.module(node)
    return _local_pool(ctx, node, x, "avg", m.kernel_size, m.stride, m.padding, 1, m.ceil_mode,
                       m.count_include_pad, getattr(m, "divisor_override", None))


@function_rule(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
def _adaptive_avg(ctx, node, x: Val, output_size) -> Val:
    return _adaptive_pool(ctx, node, x, "avg", output_size)


@function_rule(F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)
def _adaptive_max(ctx, node, x: Val, output_size, return_indices: bool = False) -> Val:
    if return_indices:
        raise ctx.unsupported(node, "return_indices=True returns the argmax positions, which a neural graph cannot "
                                    "represent; pool without return_indices")
    return _adaptive_pool(ctx, node, x, "max", output_size)


@function_rule(F.max_pool1d, F.max_pool2d, F.max_pool3d)
def _max_pool(ctx, node, x: Val, *args, **kwargs) -> Val:
    return _local_pool(ctx, node, x, "max", **dict(zip(_MAX_ARGS, args)), **kwargs)


@function_rule(F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)
def _avg_pool(ctx, node, x: Val, *args, **kwargs) -> Val:
    return _local_pool(ctx, node, x, "avg", **dict(zip(_AVG_ARGS, args)), **kwargs)


@module_rule(nn.LPPool1d, nn.LPPool2d, nn.LPPool3d)
@function_rule(F.lp_pool1d, F.lp_pool2d, F.lp_pool3d)
def _lp_pool(ctx, node, x: Val, *args, **kwargs) -> Val:
    raise ctx.unsupported(node, "power-average (LP) pooling is not supported (its norm_type has no place in the "
                                "graph); use max or average pooling")


@function_rule(torch.mean, torch.amax)
@method_rule("mean", "amax")
def _reduce(ctx, node, x: Val, dim=None, keepdim: bool = False, **kwargs) -> Val:
    """``x.mean((2, 3))``: global pooling when the reduced dims are exactly the spatial dims (or the tokens of a
    ``[B, T, C]`` sequence, ``x.mean(1)``); ``x.mean(1, keepdim=True)`` over the channels (:func:`channel_mean`)."""
    x = ctx.materialize(node, node.all_input_nodes[0], x)
    kind = "max" if getattr(node.target, "__name__", node.target) == "amax" else "avg"
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    if kind == "avg" and len(dims) == 1 and isinstance(dims[0], int) and _is_channel_dim(ctx, node, x, dims[0]):
        return channel_mean(ctx, node, x, keepdim)
    rank = _rank(ctx, node.all_input_nodes[0])
    if x.kind == "vec" and rank is not None and rank >= 3 and all(isinstance(d, int) for d in dims) and \
            sorted(d % rank for d in dims) == list(range(1, rank - 1)) and not keepdim:
        # over the tokens of a [B, T, C] sequence (timm's global_pool="avg") or the positions of a channel-last map
        return Val(_pooled(ctx, x.nodes, f"global_{kind}"), "vec")
    if x.kind != "map" or dim is None:
        raise ctx.unsupported(node, "only reductions over all spatial dims of a feature map (global "
                                    "pooling) are supported")
    nd = 2 + x.sdims
    if sorted(d % nd for d in dims) != list(range(2, nd)):
        raise ctx.unsupported(node, f"reduces dims {dims}; only the spatial dims {tuple(range(2, nd))} "
                                    "(global pooling) are supported")
    nodes = _pooled(ctx, x.nodes, f"global_{kind}")
    if keepdim:
        return Val(nodes, "map", x.sdims, 1)
    return Val(nodes, "vec")


def _is_channel_dim(ctx, node, x: Val, dim: int) -> bool:
    """Whether ``dim`` is ``x``'s channel dim: 1 of a map, the last of features / tokens / a channel-last map."""
    rank = _rank(ctx, node.all_input_nodes[0])
    if x.kind == "map":
        return dim % (2 + x.sdims) == 1
    return x.kind == "vec" and rank is not None and dim % rank == rank - 1


def channel_mean(ctx, node, x: Val, keepdim: bool) -> Val:
    """The mean over the channels, ``x.mean(1, keepdim=True)`` of a map or ``x.mean(-1, keepdim=True)`` of features /
    a channel-last map (GRN's ``x_g.mean(-1, keepdim=True)``): one new neuron fed by an ``identity`` edge carrying
    ``1 / C`` from every channel (a symmetric function of the channels, as a permutation of them requires)."""
    if not keepdim:
        raise ctx.unsupported(node, "a mean over the channels without keepdim=True is not supported (the value "
                                    "loses its channel dim); pass keepdim=True")
    b = ctx.builder
    out = b.add_nodes(1, b.next_layer(x.nodes))
    b.add_edges(x.nodes, out.expand(x.channels).clone(), "identity", const=1.0 / x.channels)
    return Val(out, x.kind, x.sdims, x.positions)


@method_rule("norm")
@function_rule(torch.norm, torch.linalg.vector_norm)
def _norm(ctx, node, x: Val, p=2, dim=None, keepdim: bool = False, **kwargs) -> Val:
    """``x.norm(p=2, dim=(2, 3))`` (``dim=(1, 2)`` of a channel-last map; ``torch.linalg.vector_norm``): the L2
    norm of each channel over the positions, as neurons: ``square`` on a copy of the channels with a global
    average pooling, then ``sqrt`` of ``P`` times that (an ``identity`` edge carrying the position count ``P``)."""
    x = ctx.materialize(node, node.all_input_nodes[0], x)
    p = kwargs.get("ord", p)
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    shape = ctx.shape(node.all_input_nodes[0])
    if x.kind == "map":
        spatial = tuple(range(2, 2 + x.sdims))
    elif x.kind == "vec" and shape is not None and len(shape) >= 3:
        spatial = tuple(range(1, len(shape) - 1))
    else:
        spatial = None
    rank = None if shape is None else len(shape)
    if p not in (2, 2.0, "fro") or dim is None or spatial is None or rank is None or \
            not all(isinstance(d, int) for d in dims) or sorted(d % rank for d in dims) != list(spatial) or \
            kwargs.get("dtype") is not None:
        raise ctx.unsupported(node, f"norm(p={p!r}, dim={dim!r}) is not supported; only the L2 norm of each channel "
                                    "over all positions of a map (dim=(2, 3); (1, 2) channel-last) is")
    b, c = ctx.builder, x.channels
    squares = b.add_nodes(c, b.next_layer(x.nodes))
    b.add_identity_edges(x.nodes, squares, "identity")
    b.set_activation(squares, A.activation_id("square"))
    means = _pooled(ctx, squares, "global_avg")
    roots = b.add_nodes(c, b.next_layer(means))
    b.add_edges(means, roots, "identity", const=float(math.prod(shape[d] for d in spatial)))
    b.set_activation(roots, A.activation_id("sqrt"))
    if not keepdim:
        return Val(roots, "vec")
    return Val(roots, "map", x.sdims, 1) if x.kind == "map" else Val(roots, "vec")
