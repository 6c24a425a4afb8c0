"""timm's Swin Transformer (V1): ``timm.models.swin_transformer``.

timm's ``SwinTransformerBlock`` writes the window partition out in its forward (``_attn``: ``torch.roll`` by
``-shift``, bottom / right zero padding to whole windows, ``window_partition``'s view / permute, ``WindowAttention``
with the relative position bias ``relative_position_bias_table[relative_position_index]`` and the shifted-window
mask, ``window_reverse``, a crop and the roll back); everything else in the block (``norm1``, the residual
additions, ``norm2``, the ``Mlp``) acts on each position alone. So the block is one rule here, a leaf of the trace
claimed by its qualified name as torchvision's MaxViT layer is (:mod:`.maxvit`): the map's channel neurons are read
per position throughout, and the attention is the window attention of :mod:`.window_attention`
(:func:`~.window_attention.window_heads`). timm rolls the map *before* padding it (torchvision pads, then rolls):
along a dim that is both shifted and padded, that order is stored on the virtual head neurons (the padding columns
of their ``node_window``); elsewhere the two orders are the same function and give the same graph.

The block's window and shift are its ``window_size`` / ``shift_size`` (timm fixes them at construction from its
``input_resolution``: no shift, and the window cut to the map, where the map fits one window unless
``always_partition``). The mask it adds (the ``attn_mask`` buffer, or with ``dynamic_mask`` the one it builds for
the padded map) is checked to be Swin's -100 between the regions ``[0, -w), [-w, -s), [-s, end)`` of the padded map
per dim, the mask the executor applies (and is recorded as a plan guard, as the relative position index is).

``PatchMerging`` (``reshape(B, H / 2, 2, W / 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)``: channel ``k C + c`` is
position ``(k % 2, k // 2)`` of each 2 x 2 neighbourhood, torchvision's order) is
:func:`~.window_attention.merge_patches`, then its ``norm`` and ``reduction``.

timm's Swin V2 (``timm.models.swin_transformer_v2``) converts the same way: ``SwinTransformerV2Block`` is post-norm
(``x + drop_path1(norm1(attn(x)))``, then ``x + drop_path2(norm2(mlp(x)))``), its ``PatchMerging`` reduces before its
norm, and its ``WindowAttention`` gives the Swin V2 heads of :mod:`.window_attention` (cosine attention with the
logit scale, the bias MLP ``attn.cpb_mlp`` as neurons on the gathered coordinate table; ``q_bias`` / ``v_bias`` on
the q and v taps, the key bias buffer checked to be zero, a plan guard). timm's own ``GELU`` / ``GELUTanh`` modules in
its ``Mlp`` are the activations ``gelu`` / ``gelu_tanh``.

Refused by name: a block whose attention's heads do not split its channels (``head_dim`` set so that
``heads * head_dim != dim``), another scale than ``head_dim ** -0.5``, a relative position index or mask that is not
Swin's at the converted map size (a static mask built for another ``input_resolution``), dropout or drop path in
training mode, parts of other classes (subclasses included: they may compute something else), and
``WindowAttention`` called outside its block.
"""
from __future__ import annotations

import torch
from torch import nn

from neuralgraph.convert.builder import Val
from neuralgraph.convert import activations as A
from neuralgraph.convert.registry import find_module_rule, module_rule
from neuralgraph.convert.rules.activation import activation
from neuralgraph.convert.rules.attention import _apply, _child
from neuralgraph.convert.rules.functional import add
from neuralgraph.convert.rules.maxvit import _is, _per_position
from neuralgraph.convert.rules.window_attention import (ContinuousBias, merge_patches, relative_position_index,
                                                        window_heads)

_TIMM = "timm.models.swin_transformer."
_ATTENTION = _TIMM + "WindowAttention"
_TIMM2 = "timm.models.swin_transformer_v2."
_MLP = "timm.layers.mlp.Mlp"
_DROP_PATH = "timm.layers.drop.DropPath"
_MLP_PARTS = ("fc1", "act", "drop1", "norm", "fc2", "drop2")  # timm's Mlp.forward, in order
#: timm's own activation modules (Swin V2's Mlp builds them by name): F.gelu(x) / F.gelu(x, approximate="tanh")
_TIMM_ACTIVATIONS = {"timm.layers.activations.GELU": "gelu", "timm.layers.activations.GELUTanh": "gelu_tanh"}


def _timm_activation(mod) -> str | None:
    return _TIMM_ACTIVATIONS.get(f"{type(mod).__module__}.{type(mod).__qualname__}")


def swin_mask(window: tuple[int, int], shift: tuple[int, int], padded: tuple[int, int]) -> torch.Tensor:
    """Swin's shifted-window mask ``[windows, N, N]`` of a map padded to ``padded`` (whole windows): -100 between
    positions of different regions, the regions cut per dim by the Python slices ``[0, -w), [-w, -s), [-s, None)``
    (a dim of shift 0 is one region), the windows row-major, their tokens row-major."""
    (wh, ww), (sh, sw), (ph, pw) = window, shift, padded
    region = torch.zeros(ph, pw)
    for i, rows in enumerate((slice(0, -wh), slice(-wh, -sh), slice(-sh, None))):
        for j, cols in enumerate((slice(0, -ww), slice(-ww, -sw), slice(-sw, None))):
            region[rows, cols] = 3 * i + j
    windows = region.view(ph // wh, wh, pw // ww, ww).transpose(1, 2).reshape(-1, wh * ww)
    return (windows[:, :, None] != windows[:, None, :]).float() * -100.0


def _per_position_parts(ctx, node, names) -> None:
    """The block's / patch merging's parts ``names`` (dotted paths), which the rule converts by their own rules on
    each position's channels, not traced: each must act on each position alone and have a rule (a subclass
    redefining its forward, timm's ``LayerNorm``, has none; timm's ``GELU`` / ``GELUTanh`` convert as
    the activation they compute)."""
    root = ctx.module(node)
    for name in names:
        mod = root.get_submodule(name)
        kind = f"{type(mod).__module__}.{type(mod).__qualname__}"
        if _timm_activation(mod):  # timm's GELU / GELUTanh: converted as the activation they compute (_mlp)
            continue
        if not _per_position(mod):
            raise ctx.unsupported(_child(node, name), f"a {kind}: only layers known to act on each position's "
                                                      "channels (nn.LayerNorm over the last dim, nn.Linear, the "
                                                      "activation modules of the converter's vocabulary but softmax, "
                                                      "dropout, nn.Identity) convert there; build the model with "
                                                      "torch.nn classes (act_layer=nn.GELU, norm_layer=nn.LayerNorm) "
                                                      "or register an element-wise module with "
                                                      "neuralgraph.convert.register_activation")
        if find_module_rule(mod) is None and type(mod) not in A.MODULE_ACTIVATIONS:
            raise ctx.unsupported(_child(node, name), f"a {kind}, which redefines its parent's forward: timm's Swin "
                                                      "block converts as one rule, its parts by their own rules "
                                                      "(not traced), so use the torch.nn class there (e.g. "
                                                      "norm_layer=nn.LayerNorm, act_layer=nn.GELU)")


def _eval_mode(ctx, node, name: str, mod: nn.Module, p: float) -> None:
    if mod.training and p:
        raise ctx.unsupported(_child(node, name), f"{type(mod).__name__} with p={p} in training mode drops values at "
                                                  "random; the graph stores the eval-mode function: call model.eval()")


def _drop_path(ctx, node, name: str) -> None:
    mod = ctx.module(node).get_submodule(name)
    if not (isinstance(mod, nn.Identity) or _is(mod, _DROP_PATH)):
        raise ctx.unsupported(_child(node, name), f"a {type(mod).__name__} on the residual branch: timm's DropPath "
                                                  "(eval mode) or nn.Identity convert there")
    _eval_mode(ctx, node, name, mod, getattr(mod, "drop_prob", 0.0))


def _window_attention(ctx, node, x: Val, size: tuple[int, int], v2: bool = False) -> Val:
    """``attn`` on the block's (rolled, padded) windows: window heads, then ``proj``. ``v2``: Swin V2's attention
    (cosine attention, the continuous position bias MLP, separate ``q_bias`` / ``v_bias`` and a zero key bias)."""
    block, att_node = ctx.module(node), _child(node, "attn")
    att = block.attn
    if not _is(att, _TIMM2 + "WindowAttention" if v2 else _ATTENTION):
        raise ctx.unsupported(att_node, f"its attention is a {type(att).__module__}.{type(att).__qualname__}, not "
                                        f"timm's {'Swin V2 ' if v2 else ''}WindowAttention, whose function the graph "
                                        "would hold")
    c = x.channels
    window, shift = tuple(int(v) for v in block.window_size), tuple(int(v) for v in block.shift_size)
    qkv, proj, heads = att.qkv, att.proj, att.num_heads
    if not (type(qkv) is nn.Linear and type(proj) is nn.Linear) or c % heads or \
            tuple(qkv.weight.shape) != (3 * c, c) or tuple(proj.weight.shape) != (c, c):
        raise ctx.unsupported(att_node, f"{heads} heads, qkv {type(qkv).__name__} {tuple(qkv.weight.shape)} / proj "
                                        f"{type(proj).__name__} {tuple(proj.weight.shape)} are not the [3C, C] / [C, C] "
                                        f"Linear layers of C = {c} channels split into the heads (a head_dim with "
                                        "heads x head_dim != dim has no graph)")
    head_dim = c // heads
    if not v2 and not att.fused_attn and att.scale != head_dim ** -0.5:  # fused: scaled by 1/sqrt(d_H) itself
        raise ctx.unsupported(att_node, f"scale {att.scale} is not 1/sqrt(head_dim = {head_dim}), the scaled dot "
                                        "product the graph holds")
    # the parts forward calls on the [windows, heads, N, N] scores: read here from attributes, not traced
    softmax = getattr(att, "softmax", None)
    if not getattr(att, "fused_attn", False) and not (type(softmax) is nn.Softmax and softmax.dim in (-1, 3)):
        what = f"a Softmax over dim {softmax.dim}" if type(softmax) is nn.Softmax else f"a {type(softmax).__name__}"
        raise ctx.unsupported(_child(att_node, "softmax"), f"{what}: the scores of timm's WindowAttention "
                                                           "([windows, heads, N, N]) convert under nn.Softmax(dim=-1) "
                                                           "alone, the softmax over the keys the graph holds")
    for name in ("attn_drop", "proj_drop"):
        part = getattr(att, name, None)
        if not isinstance(part, (nn.Identity, nn.modules.dropout._DropoutNd)):
            raise ctx.unsupported(_child(att_node, name), f"a {type(part).__name__}, not a dropout or nn.Identity: "
                                                          "timm's WindowAttention with another module there has no "
                                                          "graph")
    if tuple(att.window_size) != window or min(window) < 1 or any(s < 0 for s in shift):
        raise ctx.unsupported(att_node, f"its window {tuple(att.window_size)} is not the block's {window}, or the "
                                        f"block's shift {shift} is negative")
    rows = (2 * window[0] - 1) * (2 * window[1] - 1)
    index_name = f"{node.target}.attn.relative_position_index"
    index = ctx.root.get_buffer(index_name)
    ctx.builder.guard(index_name, index)
    table_shape = (rows, heads) if v2 else tuple(att.relative_position_bias_table.shape)
    if table_shape != (rows, heads) or not torch.equal(index.cpu().reshape(-1), relative_position_index(window)):
        raise ctx.unsupported(att_node, f"the relative position index {index_name!r} or the table {table_shape} is "
                                        f"not Swin's for window {window} (a [{rows}, heads] table read by the query - "
                                        "key offset); other indexings have no graph")
    padded = tuple(-n % w + n for n, w in zip(size, window))
    if getattr(block, "dynamic_mask", False):
        mask = block.get_attn_mask(torch.zeros(1, *padded, 1))  # built per forward, for the padded (rolled) map
    else:
        mask = block.attn_mask
        if mask is not None:
            ctx.builder.guard(f"{node.target}.attn_mask", mask)
    if any(shift):
        expected = swin_mask(window, shift, padded)
        if mask is None or tuple(mask.shape) != tuple(expected.shape) or \
                not torch.equal(mask.detach().cpu().float(), expected):
            got = "none" if mask is None else f"of shape {list(mask.shape)}"
            raise ctx.unsupported(node, f"its attention mask ({got}) is not Swin's shifted-window mask of window "
                                        f"{window} and shift {shift} on the {padded[0]} x {padded[1]} padded map "
                                        f"({list(expected.shape)}): a static mask built for another input_resolution "
                                        f"{tuple(block.input_resolution)} than the converted {size[0]} x {size[1]} "
                                        "map? Convert at the size the model was built for, or build it with "
                                        "strict_img_size=False (dynamic_mask)")
    elif mask is not None:
        raise ctx.unsupported(node, f"an attention mask {tuple(mask.shape)} on unshifted windows (shift {shift}): "
                                    "only Swin's shifted-window mask converts")
    qkv_node = _child(node, "attn.qkv")
    qkv_w = ctx.param(qkv_node, "weight")
    if v2:
        if qkv.bias is not None:  # timm builds it without: its forward adds it or not by q_bias / qkv_bias_separate
            raise ctx.unsupported(qkv_node, "timm's Swin V2 qkv Linear with a bias of its own (timm builds it with "
                                            "bias=False; the heads' biases are q_bias / v_bias, and forward adds the "
                                            "Linear's own bias only on some paths): build it with bias=False")
        table, qkv_b = _v2_bias(ctx, node, att_node, att, c, heads), None
        if att.q_bias is not None:
            qkv_b = ((ctx.param(att_node, "q_bias"), 0), None, (ctx.param(att_node, "v_bias"), 0))
    else:
        table, qkv_b = ctx.param(att_node, "relative_position_bias_table"), ctx.param(qkv_node, "bias")
    if qkv_w is None or table is None:
        raise ctx.unsupported(qkv_node, "its weight or the bias table is not a parameter (a parametrization?); remove "
                                        "it first")
    out = window_heads(ctx, node if v2 else att_node, ctx.as_features(att_node, x, c), heads, qkv_w, qkv_b, table,
                       (rows, heads), window, shift, size, roll_first=(1, 1))
    out = _apply(ctx, node, "attn.proj", Val(out, "vec"))
    return _apply(ctx, node, "attn.proj_drop", out)


def _v2_bias(ctx, node, att_node, att, c: int, heads: int) -> ContinuousBias:
    """Swin V2's heads (:class:`~.window_attention.ContinuousBias`): the bias MLP ``attn.cpb_mlp`` on the coordinate
    table buffer, the logit scale; the key bias buffer must be zero (the heads have none) and is a plan guard."""
    logit_scale = ctx.param(att_node, "logit_scale")
    if logit_scale is None or tuple(att.logit_scale.shape) != (heads, 1, 1):
        raise ctx.unsupported(att_node, f"its logit_scale is not a [{heads}, 1, 1] parameter (one per head)")
    if att.q_bias is not None:
        k_bias = f"{node.target}.attn.k_bias"
        ctx.builder.guard(k_bias, att.k_bias)
        if not isinstance(att.q_bias, nn.Parameter) or not isinstance(att.v_bias, nn.Parameter) or \
                tuple(att.q_bias.shape) != (c,) or tuple(att.v_bias.shape) != (c,) or bool(att.k_bias.any()):
            raise ctx.unsupported(att_node, "its q_bias / v_bias are not [C] parameters, or its k_bias buffer is not "
                                            "zero: Swin V2's heads have no key bias")
    return ContinuousBias("attn.cpb_mlp", f"{node.target}.attn.relative_coords_table", logit_scale)


def _block_shape(ctx, node, mod) -> tuple[int, int, int]:
    """The checks every timm Swin block passes (its parts act per position but for the attention, dropout and drop
    path in eval mode); returns the map's ``H, W, C``."""
    shape = ctx.shape(node.args[0])
    if shape is None or len(shape) != 4:
        raise ctx.unsupported(node, "timm's Swin block needs the traced [B, H, W, C] shape of its input (its windows "
                                    "depend on the map size); pass example_input=... to to_neural_graph")
    if len(ctx.config.max_kernel) != 2:
        raise ctx.unsupported(node, f"window attention needs a 2-d max_kernel (its edges' geometry holds a 2-d "
                                    f"window), got max_kernel={ctx.config.max_kernel}")
    mlp = mod.mlp
    if not _is(mlp, _MLP) or not all(isinstance(getattr(mlp, p, None), nn.Module) for p in _MLP_PARTS):
        raise ctx.unsupported(_child(node, "mlp"), f"a {type(mlp).__module__}.{type(mlp).__qualname__} that is not "
                                                   "timm's Mlp (fc1, act, drop1, norm, fc2, drop2: Linear, "
                                                   "element-wise activation, dropout, LayerNorm / Identity)")
    _per_position_parts(ctx, node, ("norm1", "norm2", "attn.proj", *(f"mlp.{p}" for p in _MLP_PARTS)))
    for name in ("drop_path1", "drop_path2"):
        _drop_path(ctx, node, name)
    for name, sub in mod.named_modules():  # attn_drop (on the attention weights), proj_drop, the Mlp's dropouts
        if isinstance(sub, nn.modules.dropout._DropoutNd):
            _eval_mode(ctx, node, name, sub, sub.p)
    return shape[1], shape[2], shape[3]


def _mlp(ctx, node, x: Val) -> Val:
    for part in _MLP_PARTS:
        name = _timm_activation(getattr(ctx.module(node).mlp, part))
        x = activation(ctx, _child(node, f"mlp.{part}"), x, name) if name else _apply(ctx, node, f"mlp.{part}", x)
    return x


@module_rule(_TIMM2 + "SwinTransformerV2Block")
def swin_v2_block(ctx, node, x: Val) -> Val:
    """Swin V2's post-norm block: ``x + drop_path1(norm1(attention(x)))``, then ``x + drop_path2(norm2(mlp(x)))``,
    per position but for the window attention (cosine attention, the bias MLP as neurons)."""
    h, w, c = _block_shape(ctx, node, ctx.module(node))
    stream = Val(ctx.as_features(node, x, c), "vec")
    branch = _apply(ctx, node, "norm1", _window_attention(ctx, node, stream, (h, w), v2=True))
    stream = add(ctx, _child(node), stream, branch)
    stream = add(ctx, _child(node), stream, _apply(ctx, node, "norm2", _mlp(ctx, node, stream)))
    return Val(stream.nodes, "vec")


@module_rule(_TIMM2 + "PatchMerging")
def patch_merging_v2(ctx, node, x: Val) -> Val:
    """Swin V2's patch merging: the 2 x 2 neighbourhoods as ``4 C`` channels, ``reduction``, then ``norm``."""
    _per_position_parts(ctx, node, ("norm", "reduction"))
    merged = merge_patches(ctx, node, x, ctx.shape(node.args[0]))
    return _apply(ctx, node, "norm", _apply(ctx, node, "reduction", merged))


@module_rule(_TIMM2 + "WindowAttention")
def window_attention_v2_alone(ctx, node, *args, **kwargs) -> Val:
    raise ctx.unsupported(node, "timm's Swin V2 WindowAttention converts as part of timm's SwinTransformerV2Block, "
                                "whose shifted window partition gives it its windows; called on its own it has no "
                                "graph")


@module_rule(_TIMM + "SwinTransformerBlock")
def swin_block(ctx, node, x: Val) -> Val:
    """``x + drop_path1(attention(norm1(x)))``, then ``x + drop_path2(mlp(norm2(x)))``, per position but for the
    window attention (module docstring)."""
    h, w, c = _block_shape(ctx, node, ctx.module(node))
    stream = Val(ctx.as_features(node, x, c), "vec")   # the map's channel neurons, read per position (an input: [B, H, W, C])
    branch = _window_attention(ctx, node, _apply(ctx, node, "norm1", stream), (h, w))
    stream = add(ctx, _child(node), stream, branch)
    stream = add(ctx, _child(node), stream, _mlp(ctx, node, _apply(ctx, node, "norm2", stream)))
    return Val(stream.nodes, "vec")


@module_rule(_TIMM + "PatchMerging")
def patch_merging(ctx, node, x: Val) -> Val:
    """The 2 x 2 neighbourhoods as ``4 C`` channels (:func:`~.window_attention.merge_patches`), ``norm``,
    ``reduction``."""
    _per_position_parts(ctx, node, ("norm", "reduction"))
    merged = merge_patches(ctx, node, x, ctx.shape(node.args[0]))
    return _apply(ctx, node, "reduction", _apply(ctx, node, "norm", merged))


@module_rule(_ATTENTION)
def window_attention_alone(ctx, node, *args, **kwargs) -> Val:
    raise ctx.unsupported(node, "timm's WindowAttention converts as part of timm's SwinTransformerBlock, whose "
                                "shifted window partition gives it its windows; called on its own (on [windows, "
                                "tokens, C] partitioned tokens) it has no graph")
