"""Shifted-window attention and patch merging (torchvision's Swin Transformer).

torchvision's ``ShiftedWindowAttention`` and ``PatchMerging`` call three module-level functions that it wraps for
``torch.fx`` (each arrives as one ``call_function`` node), so each is one rule here:

* ``_get_relative_position_bias(table, index, window)``: the ``[(2wh - 1)(2ww - 1), heads]`` table of relative
  position biases, gathered by Swin's relative position index (checked to be that index): handed on as a
  :class:`RelativeBias` for the attention to store.
* ``shifted_window_attention(x, qkv_weight, proj_weight, bias, window, heads, shift, ...)`` on a channel-last map
  ``[B, H, W, C]``: the attention of :mod:`.attention` (head neurons, virtual head neurons, ``attention`` edges
  from the packed ``qkv`` projection, the output projection as a linear layer), plus per key -> query offset one
  **offset constant neuron** (role virtual, constant 1) with a ``window_bias`` edge into each virtual head neuron
  carrying ``table[offset, head]``; the edges' geometry (:func:`~neuralgraph.data.graph.window_geometry`) holds the
  offset, the window, the shift torchvision applies at this map size (none along a dim the window covers, none
  at all if the shifts sum to 0 or less; a negative shift or one beyond the map otherwise is refused) and the
  map size. The executor pads the map to whole windows, rolls it by ``-shift``, attends within each window with the
  bias and Swin's -100 mask between the rolled regions, and rolls back (the padded positions take part as keys
  with their projection biases, as in torchvision).
* ``_patch_merging_pad(x)``: the 2 x 2 neighbourhoods of a channel-last map as ``4 C`` channels (zero-padded to
  an even size), channel ``k * C + c`` the position ``(k % 2, k // 2)`` of each neighbourhood of channel ``c``:
  one ``subsample`` edge per new channel (stride 2, one zero of padding read only past an odd size: the same edges
  at every map size), as ``nn.PixelUnshuffle``.

Swin V2 (torchvision's ``ShiftedWindowAttentionV2``, a leaf of the trace claimed by its qualified name): the same
heads as cosine attention heads (virtual head neurons of activation ``cosine_attention``, the per-head
``logit_scale`` in their first activation-parameter column; the key bias, zeroed in forward, stored as it is and
ignored by the executor), and the relative position bias computed by the continuous position bias MLP as neurons:
the coordinate table buffer (gathered like a parameter) on ``position`` edges from one token constant neuron per
offset into 2 coordinate neurons, the MLP's layers on them (its hidden neurons real neurons), a sigmoid on its
per-head outputs, and a ``bias_table`` edge (the constant 16) from each into its head's virtual neuron
(:func:`window_heads` with a :class:`ContinuousBias`). A ``shifted_window_attention`` call with a logit scale
elsewhere is refused.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from neuralgraph.convert import activations as A
from neuralgraph.convert.builder import HandedOn, Param, Sym, Val
from neuralgraph.convert.registry import function_rule, module_rule, reads_params_only, takes_params
from neuralgraph.convert.rules.activation import activation
from neuralgraph.convert.rules.attention import Projection, _apply, _child, attention_heads
from neuralgraph.convert.rules.linear import linear
from neuralgraph.convert.rules.tokens import _place
from neuralgraph.data.graph import compact_field, window_geometry

_SWIN = "torchvision.models.swin_transformer."


@dataclass
class RelativeBias(HandedOn):
    """A relative position bias table read by a window attention: ``table`` (a ``[(2wh - 1)(2ww - 1), heads]``
    parameter) for windows of ``window``."""

    table: Param
    window: tuple[int, int]
    reader = _SWIN + "shifted_window_attention"


def _numbers(ctx, node, **values) -> None:
    """Refuse window sizes, shifts or head counts that are not numbers at conversion (computed from the input's
    sizes in a symbolic trace): the graph holds them as numbers."""
    for name, v in values.items():
        if any(isinstance(i, Sym) for i in (v if isinstance(v, (list, tuple)) else [v])):
            raise ctx.unsupported(node, f"{name} {v} is computed from the input's sizes; a window attention's graph "
                                        "holds its window, shift and heads as numbers: pass them as constants")


def relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """Swin's relative position index of a window: for query ``i`` and key ``j`` (row-major positions), the table
    row of the offset ``pos(i) - pos(j)``: ``(dy + wh - 1) * (2 ww - 1) + dx + ww - 1``; ``[N * N]``."""
    wh, ww = window
    y, x = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    y, x = y.reshape(-1), x.reshape(-1)
    return ((y[:, None] - y[None, :] + wh - 1) * (2 * ww - 1) + x[:, None] - x[None, :] + ww - 1).reshape(-1)


@function_rule(_SWIN + "_get_relative_position_bias")
@reads_params_only
def _relative_position_bias(ctx, node, table, index, window_size) -> RelativeBias:
    if not isinstance(table, Param) or not isinstance(index, Param):
        raise ctx.unsupported(node, "the relative position bias table and index must be the module's parameter and "
                                    "buffer")
    _numbers(ctx, node, window_size=window_size)
    window = tuple(int(w) for w in window_size)
    if len(window) != 2:
        raise ctx.unsupported(node, f"a {len(window)}-d window {window} (video Swin): window attention converts on "
                                    "2-d maps")
    expected = relative_position_index(window)
    got = ctx.root.get_buffer(index.name)
    ctx.builder.guard(index.name, got)
    rows = (2 * window[0] - 1) * (2 * window[1] - 1)
    if len(table.shape) != 2 or table.shape[0] != rows or not torch.equal(got.cpu(), expected):
        raise ctx.unsupported(node, f"the relative position index {index.name!r} or table {table.name!r} "
                                    f"{tuple(table.shape)} is not Swin's for window {window} (a [{rows}, heads] table "
                                    "indexed by the query - key offset); other indexings have no graph")
    return RelativeBias(table, window)


#: torchvision's ``shifted_window_attention(...)`` arguments, in order
_SWA_SIGNATURE = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in (
    "input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads", "shift_size",
    "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training")])


@function_rule(_SWIN + "shifted_window_attention")
@takes_params
def _shifted_window_attention(ctx, node, *args, **kwargs) -> Val:
    a = _SWA_SIGNATURE.bind_partial(*args, **kwargs).arguments
    if a.get("logit_scale") is not None:
        raise ctx.unsupported(node, "a shifted_window_attention call with a logit scale (Swin V2's cosine "
                                    "attention) converts only as torchvision's ShiftedWindowAttentionV2, whose forward "
                                    "the graph holds (its bias MLP, logit scale and zeroed key bias); this call is "
                                    "not that module's (a subclass redefining a method is traced into)")
    if a.get("training") and (a.get("attention_dropout", 0.0) or a.get("dropout", 0.0)):
        raise ctx.unsupported(node, "window attention with dropout in training mode is random; call model.eval()")
    _numbers(ctx, node, window_size=a.get("window_size"), num_heads=a.get("num_heads"), shift_size=a.get("shift_size"))
    x, bias = a["input"], a["relative_position_bias"]
    params = [a.get(k) for k in ("qkv_weight", "proj_weight")]
    optional = [a.get(k) for k in ("qkv_bias", "proj_bias")]
    if not all(isinstance(p, Param) for p in params) or not all(p is None or isinstance(p, Param) for p in optional):
        raise ctx.unsupported(node, "the window attention's projections must be parameters of the model")
    if not isinstance(bias, RelativeBias) or not isinstance(x, Val):
        raise ctx.unsupported(node, "window attention needs torchvision's relative position bias "
                                    "(_get_relative_position_bias of the module's table) and a neuron value input")
    shape = ctx.shape(node.args[0] if node.args else node.kwargs["input"])
    if shape is None or len(shape) != 4:
        raise ctx.unsupported(node, "window attention needs the traced [B, H, W, C] shape of its input; pass "
                                    "example_input=... to to_neural_graph")
    if len(ctx.config.max_kernel) != 2:  # (too few taps for q, k, v: attention_heads says so)
        raise ctx.unsupported(node, f"window attention needs a 2-d max_kernel (its edges' geometry holds a 2-d "
                                    f"window), got max_kernel={ctx.config.max_kernel}")
    _, h, w, c = shape
    heads, window = int(a["num_heads"]), tuple(int(v) for v in a["window_size"])
    if window != bias.window or c % heads or bias.table.shape[1] != heads:
        raise ctx.unsupported(node, f"window {window} / {heads} heads do not match the relative position bias table "
                                    f"{tuple(bias.table.shape)} of window {bias.window} (or {c} channels do not split "
                                    "into the heads)")
    qkv_w, proj_w = params
    qkv_b, proj_b = (None if p is None else p.name for p in optional)
    if tuple(qkv_w.shape) != (3 * c, c) or tuple(proj_w.shape) != (c, c):
        raise ctx.unsupported(node, f"qkv weight {tuple(qkv_w.shape)} / proj weight {tuple(proj_w.shape)} are not "
                                    f"[3C, C] / [C, C] for C = {c}")
    shift = _torchvision_shift(ctx, node, window, a.get("shift_size"), (h, w))
    out = window_heads(ctx, node, ctx.as_features(node, x, c), heads, qkv_w.name, qkv_b, bias.table.name,
                       tuple(bias.table.shape), window, shift, (h, w))
    return linear(ctx, node, Val(out, "vec"), proj_w.name, proj_b, (c, c))


def _torchvision_shift(ctx, node, window: tuple[int, int], shift_size, size: tuple[int, int]) -> tuple[int, int]:
    """The shift torchvision's ``shifted_window_attention`` applies on an ``H x W`` map: none along a dim whose window
    covers the padded map, none at all if the shifts sum to 0 or less; a negative shift or one beyond the padded map
    otherwise is refused (torchvision's mask is then not the regions of the rolled map)."""
    pad_h, pad_w = -size[0] % window[0] + size[0], -size[1] % window[1] + size[1]
    shift = tuple(0 if win >= padded else int(s) for win, padded, s in zip(window, (pad_h, pad_w), shift_size or (0, 0)))
    if sum(shift) <= 0:
        return (0, 0)  # torchvision rolls and masks only when the shifts sum to more than 0
    if any(s < 0 or s > padded for s, padded in zip(shift, (pad_h, pad_w))):
        raise ctx.unsupported(node, f"shift {list(shift_size)} on a {pad_h} x {pad_w} (padded) map: torchvision's "
                                    "mask of a negative shift, or one beyond the map, is not the shifted-window mask "
                                    "(regions of the rolled map); shifts in [0, map size] convert")
    return shift


@module_rule(_SWIN + "ShiftedWindowAttentionV2")
def shifted_window_attention_v2(ctx, node, x: Val) -> Val:
    """torchvision's Swin V2 attention (a leaf of the trace): its forward computes the relative position bias as
    ``16 * sigmoid(cpb_mlp(relative_coords_table))`` gathered by the relative position index, then calls
    ``shifted_window_attention`` with its ``logit_scale`` (cosine attention; the key third of the qkv bias zeroed in
    forward). The heads of :func:`window_heads` with a :class:`ContinuousBias`; ``proj`` as a linear layer."""
    mod = ctx.module(node)
    if mod.training and (mod.attention_dropout or mod.dropout):
        raise ctx.unsupported(node, "window attention with dropout in training mode is random; call model.eval()")
    shape = ctx.shape(node.args[0]) if node.args else None
    if shape is None or len(shape) != 4:
        raise ctx.unsupported(node, "window attention needs the traced [B, H, W, C] shape of its input; pass "
                                    "example_input=... to to_neural_graph")
    if len(ctx.config.max_kernel) != 2:
        raise ctx.unsupported(node, f"window attention needs a 2-d max_kernel (its edges' geometry holds a 2-d "
                                    f"window), got max_kernel={ctx.config.max_kernel}")
    _, h, w, c = shape
    heads, window = int(mod.num_heads), tuple(int(v) for v in mod.window_size)
    qkv, proj = mod.qkv, mod.proj
    if len(window) != 2 or min(window) < 1 or not (type(qkv) is nn.Linear and type(proj) is nn.Linear) or \
            c % heads or tuple(qkv.weight.shape) != (3 * c, c) or tuple(proj.weight.shape) != (c, c):
        raise ctx.unsupported(node, f"window {window}, {heads} heads, qkv {type(qkv).__name__} "
                                    f"{tuple(qkv.weight.shape)} / proj {type(proj).__name__} {tuple(proj.weight.shape)}"
                                    f": not a 2-d window and the [3C, C] / [C, C] Linear layers of C = {c} channels "
                                    "split into the heads")
    index_name = f"{node.target}.relative_position_index"
    index = ctx.root.get_buffer(index_name)
    ctx.builder.guard(index_name, index)
    if not torch.equal(index.cpu().reshape(-1), relative_position_index(window)):
        raise ctx.unsupported(node, f"the relative position index {index_name!r} is not Swin's for window {window} "
                                    "(the query - key offset); other indexings have no graph")
    logit_scale = ctx.param(node, "logit_scale")
    if logit_scale is None or tuple(mod.logit_scale.shape) != (heads, 1, 1):
        raise ctx.unsupported(node, f"its logit_scale is not a [{heads}, 1, 1] parameter (one per head)")
    shift = _torchvision_shift(ctx, node, window, mod.shift_size, (h, w))
    cpb = ContinuousBias("cpb_mlp", f"{node.target}.relative_coords_table", logit_scale)
    qkv_node = _child(node, "qkv")
    qkv_w, qkv_b = ctx.param(qkv_node, "weight"), ctx.param(qkv_node, "bias")
    if qkv_w is None:
        raise ctx.unsupported(qkv_node, "its weight is not a parameter (a parametrization?); remove it first")
    out = window_heads(ctx, node, ctx.as_features(node, x, c), heads, qkv_w, qkv_b, cpb, None, window, shift, (h, w))
    return _apply(ctx, node, "proj", Val(out, "vec"))


def _mlp_layers(mlp: nn.Module) -> int:
    """The layers the continuous position bias MLP (and the sigmoid on its outputs) adds after the coordinate
    neurons: one per Linear, and one per activation applied to neurons that already have one (an identity layer:
    two activations in a row, or the sigmoid after an activation last in the MLP); an activation on fresh neurons
    (the coordinates, a Linear's outputs) is theirs."""
    count, fresh = 0, True
    for m in [*mlp.children(), nn.Sigmoid()]:
        if type(m) is nn.Linear:
            count, fresh = count + 1, True
        else:
            count, fresh = count + (not fresh), False
    return count


@dataclass
class ContinuousBias:
    """Swin V2's heads: cosine attention with a per-head logit scale, and a relative position bias computed in forward
    by the continuous position bias MLP ``mlp`` (the path, relative to the rule's node, of an ``nn.Sequential`` of
    Linear layers and element-wise activations mapping 2 coordinates to one value per head) from the coordinate
    table buffer ``coords`` (``[1, 2wh - 1, 2ww - 1, 2]``, the log-spaced offsets), the bias being
    ``scale * sigmoid(mlp(coords))`` (Swin V2: 16); ``logit_scale`` the ``[heads, 1, 1]`` parameter."""

    mlp: str
    coords: str
    logit_scale: str
    scale: float = 16.0


def _continuous_bias(ctx, node, cpb: ContinuousBias, window: tuple[int, int], heads: int, head_layer: int):
    """The continuous position bias MLP as neurons: one token constant neuron per offset ``(dy, dx)`` (at token
    ``(dy + wh - 1) (2 ww - 1) + dx + ww - 1`` of a ``(2wh - 1) x (2ww - 1)`` map) with ``position`` edges carrying the
    coordinate buffer's entries into 2 coordinate neurons, whose values are the coordinate table as a map; the MLP's
    layers on them per position (its hidden neurons real neurons, the weights on linear edges, the biases on the
    neurons, its activations theirs), and the sigmoid on its ``heads`` output neurons, one layer before the virtual
    head neurons (``head_layer - 1``). Returns the output neurons."""
    mlp = ctx.module(node).get_submodule(cpb.mlp)
    parts = list(mlp.named_children()) if isinstance(mlp, nn.Sequential) else []
    linears = [m for _, m in parts if type(m) is nn.Linear]
    ok = parts and all(type(m) is nn.Linear or A.MODULE_ACTIVATIONS.get(type(m)) not in (None, "softmax",
                                                                                              "log_softmax")
                       for _, m in parts)
    if not ok or not linears or linears[0].in_features != 2 or linears[-1].out_features != heads:
        raise ctx.unsupported(_child(node, cpb.mlp), f"a continuous position bias MLP {type(mlp).__name__} that is "
                                                     "not an nn.Sequential of Linear layers and element-wise "
                                                     f"activations from 2 coordinates to {heads} heads")
    wh, ww = window
    rows, cols = 2 * wh - 1, 2 * ww - 1
    coords = ctx.root.get_buffer(cpb.coords)
    if tuple(coords.shape) != (1, rows, cols, 2) or not coords.is_floating_point():
        raise ctx.unsupported(_child(node, cpb.mlp), f"the coordinate table {cpb.coords!r} {tuple(coords.shape)} is "
                                                     f"not [1, {rows}, {cols}, 2] for window {window}")
    b = ctx.builder
    b.register_param(cpb.coords, tuple(coords.shape))  # gathered like a parameter (and written back)
    first = head_layer - 3 - _mlp_layers(mlp)  # offsets, coordinates, the MLP's layers, then the virtual heads
    coord = b.add_nodes(2, first + 1)
    _place(ctx, Param(cpb.coords, tuple(coords.shape)), torch.arange(rows * cols) * 2, 0, coord, first + 1,
           (rows, cols))
    v = Val(coord, "vec")
    for name, _ in parts:
        v = _apply(ctx, node, f"{cpb.mlp}.{name}", v)
    out = activation(ctx, _child(node, cpb.mlp), v, "sigmoid", None, ())
    if b.layer[int(out.nodes[0])] != head_layer - 2:
        raise AssertionError("the continuous position bias MLP's neurons are not where the heads expect them")
    return out.nodes


def window_heads(ctx, node, src, heads: int, qkv_weight: str, qkv_bias, table: str | ContinuousBias,
                 table_shape: tuple[int, int] | None, window: tuple[int, int], shift: tuple[int, int],
                 size: tuple[int, int], dilation: tuple[int, int] = (1, 1), scale_dim: float | None = None,
                 roll_first: tuple[int, int] = (0, 0)):
    """The heads of a window attention over an ``H x W`` map (``size``) of the ``C`` channel neurons ``src``: the
    attention of :mod:`.attention` from the packed ``[3C, C]`` projection ``qkv_weight`` (rows q, k, v; head-major
    within each; ``qkv_bias`` the packed ``[3C]`` bias, or per role ``(name, first element)`` / ``None``: timm's
    Swin V2 ``q_bias``, no key bias, ``v_bias``), the relative position bias, and the partition's ``dilation`` (1:
    windows of adjacent positions; ``H / wh``: a grid) in the dilation columns of the virtual head neurons'
    ``node_window``, ``roll_first`` (1 along a dim whose shift rolls the map before it is padded to whole windows:
    timm's Swin; 0: padded, then rolled, torchvision's) in its padding columns, set only where it changes the function
    (a shifted dim that is padded), so the same function gives the same graph.

    The bias: ``table`` a parameter name (Swin V1, MaxViT): one offset constant neuron per key -> query offset with a
    ``window_bias`` edge into each virtual head neuron carrying ``table[offset, head]`` (geometry
    :func:`~neuralgraph.data.graph.window_geometry`); a :class:`ContinuousBias` (Swin V2): the bias MLP as neurons
    (:func:`_continuous_bias`) with a ``bias_table`` edge from each head's output neuron into its virtual head
    neuron carrying the constant ``scale``, and the virtual head neurons' activation ``cosine_attention`` with the
    logit scale in their first activation-parameter column. Returns the ``C`` head neurons (the caller adds the
    output projection)."""
    b = ctx.builder
    c = src.numel()
    roll_first = tuple(int(bool(r and s and n % w)) for r, s, n, w in zip(roll_first, shift, size, window))
    b.register_param(qkv_weight, (3 * c, c))
    packed = qkv_bias is None or isinstance(qkv_bias, str)
    biases = [(qkv_bias, r * c) if qkv_bias is not None else None for r in range(3)] if packed else list(qkv_bias)
    b.layers.append((qkv_weight, qkv_bias if packed else None))
    projs = [Projection(src, qkv_weight, r * c * c, *(bias or (None, 0))) for r, bias in enumerate(biases)]
    cpb = table if isinstance(table, ContinuousBias) else None
    # the bias's neurons sit before the virtual head neurons, which sit one layer before the heads: V1 offset
    # constant neurons one layer before them; V2 the offset constants, the coordinates and the MLP's layers
    min_layer = 3 if cpb is None else 4 + _mlp_layers(ctx.module(node).get_submodule(cpb.mlp))
    head_layer = max(b.next_layer(src), min_layer)
    bias_out = None if cpb is None else _continuous_bias(ctx, node, cpb, window, heads, head_layer)
    out, virtual = attention_heads(ctx, node, heads, c // heads, *projs, min_layer=head_layer, scale_dim=scale_dim)
    if tuple(dilation) != (1, 1) or any(roll_first):
        dims = b.dims
        partition = b.default_window()
        partition = partition[:2 * dims] + roll_first + tuple(dilation) + partition[4 * dims:]
        compact_field("node_window", partition, "the window partition's dilation")
        for i in virtual.tolist():
            b.window[i] = partition
    wh, ww = window
    if cpb is not None:
        b.register_param(cpb.logit_scale, (heads, 1, 1))
        b.set_activation(virtual, A.activation_id("cosine_attention"))
        b.add_node_param(virtual, cpb.logit_scale, torch.arange(heads), column=A.PARAM_COLUMNS[0])
        b.add_edges(bias_out, virtual, "bias_table", geometry=window_geometry((0, 0), window, shift, size, 2),
                    const=float(cpb.scale))
        return out
    b.register_param(table, table_shape)
    layer = b.layer[int(virtual[0])] - 1
    centre = torch.tensor([ctx.config.centre_tap])
    for row in range((2 * wh - 1) * (2 * ww - 1)):
        offset = (row // (2 * ww - 1) - (wh - 1), row % (2 * ww - 1) - (ww - 1))
        k = b.add_nodes(1, layer, role="virtual")
        b.add_node_const(k, 1.0)
        b.add_edges(k.repeat(heads), virtual, "window_bias",
                    geometry=window_geometry(offset, window, shift, size, 2),
                    sources=[(table, (row * heads + torch.arange(heads)).view(-1, 1), centre)])
    return out


@function_rule(_SWIN + "_patch_merging_pad")
def _patch_merging_pad(ctx, node, x: Val) -> Val:
    return merge_patches(ctx, node, x, ctx.shape(node.args[0]))


def merge_patches(ctx, node, x: Val, shape: tuple[int, ...] | None) -> Val:
    """The 2 x 2 neighbourhoods of the channel-last ``[B, H, W, C]`` map ``x`` (of traced ``shape``) as ``4 C``
    channels, channel ``k * C + c`` the position ``(k % 2, k // 2)`` of channel ``c`` (torchvision's and timm's
    patch merging), zero-padded at the bottom / right to an even size."""
    if shape is None or len(shape) != 4 or len(ctx.config.max_kernel) != 2:
        raise ctx.unsupported(node, "patch merging needs the traced [B, H, W, C] shape of its input (pass "
                                    "example_input=...) and a 2-d max_kernel")
    c = shape[-1]
    src = ctx.as_features(node, x, c)
    b = ctx.builder
    new = b.add_nodes(4 * c, b.next_layer(src)).view(4, c)                          # [k, C]: channel k * C + c
    for k, offset in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        # stride 2, offset shifted by one zero of padding, span 3: ceil(n / 2) positions reading 2 o + offset, the
        # padding read only past the bottom / right of an odd size, so the graph holds at every map size
        geometry = (2, 2) + tuple(o + 1 for o in offset) + (1, 1) + (3, 3)
        b.add_edges(src, new[k], "subsample", geometry=geometry, const=1.0)
    return Val(new.reshape(-1), "vec")
