"""Block and grid attention (torchvision's MaxViT).

torchvision's ``PartitionAttentionLayer`` cuts a ``[B, C, H, W]`` map into windows (``WindowPartition``, and for a
grid ``SwapAxes``), runs a pre-norm transformer layer on the windows' tokens (LayerNorm, a
``RelativePositionalMultiHeadAttention`` attending within each window with a relative position bias, a residual
addition, LayerNorm - Linear - activation - Linear, a residual addition) and puts the windows back
(``WindowDepartition``). Everything but the attention acts on each position alone, so the layer is one rule here
(a leaf of the trace, claimed by its qualified name): the map's channel neurons are read per position throughout,
and the attention is the window attention of :mod:`.window_attention` with the partition in its geometry:

* ``partition_type="window"`` (block attention): ``P x P`` windows of adjacent positions, dilation 1;
* ``partition_type="grid"``: ``P x P`` windows whose positions are ``H / P`` apart (window ``(r, s)`` holds
  positions ``(r + a H / P, s + b W / P)``, its tokens in the order of ``(a, b)``), dilation ``(H / P, W / P)``,
  stored in the dilation columns of the virtual head neurons' ``node_window``.

Both read the ``[(2P - 1)^2, heads]`` table by the offset of the query's and the key's window coordinates
(MaxViT's relative position index, checked to be Swin's), one ``window_bias`` edge per offset and head. MaxViT
scales the scores by ``1 / sqrt(C)`` (its whole feature dim), not ``1 / sqrt(d_H)``: the scale dim ``C`` is a
constant on the virtual head neurons' attention edges (:data:`~neuralgraph.data.graph.ATTENTION_SCALE_TAP`).

The graph holds the conversion's map size (the partition depends on it; torchvision fixes it at construction as
``grid_size``), so ``execute`` refuses another. Refused by name: a map of another size than ``grid_size``, a grid
over a non-square map (torchvision's grid then is not ``P x P``), partition modules other than torchvision's,
stochastic depth in training mode, and the attention module called outside its layer.
"""
from __future__ import annotations

from torch import nn

from neuralgraph.convert import activations as A
from neuralgraph.convert.builder import Val
from neuralgraph.convert.registry import module_rule
from neuralgraph.convert.rules.attention import _apply, _child
from neuralgraph.convert.rules.functional import add
from neuralgraph.convert.rules.window_attention import relative_position_index, window_heads

_MAXVIT = "torchvision.models.maxvit."
_ATTENTION = _MAXVIT + "RelativePositionalMultiHeadAttention"
_STOCHASTIC_DEPTH = "torchvision.ops.stochastic_depth.StochasticDepth"


def _is(mod: nn.Module, qualname: str) -> bool:
    """Whether ``mod`` is exactly the class of that qualified name (a subclass may compute something else)."""
    return f"{type(mod).__module__}.{type(mod).__qualname__}" == qualname


def _swaps(mod: nn.Module) -> bool:
    """torchvision's ``SwapAxes(-2, -3)`` of the ``[B, windows, tokens, C]`` partition (windows <-> tokens)."""
    return _is(mod, _MAXVIT + "SwapAxes") and {int(mod.a) % 4, int(mod.b) % 4} == {1, 2}


def _partition(ctx, node, mod: nn.Module, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The layer's windows: ``(window, dilation)`` of its partition of an ``H x W`` map."""
    h, w = size
    p, kind = mod.p, mod.partition_type
    if not (_is(mod.partition_op, _MAXVIT + "WindowPartition") and _is(mod.departition_op, _MAXVIT + "WindowDepartition")):
        raise ctx.unsupported(node, f"its partition modules ({type(mod.partition_op).__name__}, "
                                    f"{type(mod.departition_op).__name__}) are not torchvision's WindowPartition / "
                                    "WindowDepartition, whose windows the graph would hold")
    if not isinstance(p, int) or p < 1 or tuple(mod.grid_size) != (h, w) or h % p or w % p:
        raise ctx.unsupported(node, f"its input is a {h} x {w} map, but the layer was built for a "
                                    f"{mod.grid_size[0]} x {mod.grid_size[1]} map cut in parts of {p} (its grid_size, "
                                    "fixed at construction, which its departition uses): convert the model at the "
                                    "input_size it was built for")
    swaps = [mod.partition_swap, mod.departition_swap]
    if kind == "window" and all(isinstance(s, nn.Identity) for s in swaps):
        return (p, p), (1, 1)
    if kind == "grid" and all(_swaps(s) for s in swaps):
        if h // p != w // p:
            raise ctx.unsupported(node, f"a grid partition of a non-square {h} x {w} map into {p} x {p} parts gives "
                                        f"{h // p} x {w // p} windows, which torchvision's square relative position "
                                        "bias does not fit")
        return (h // p, w // p), (p, p)
    raise ctx.unsupported(node, f"partition_type {kind!r} with partition swaps {type(swaps[0]).__name__} / "
                                f"{type(swaps[1]).__name__}: not torchvision's block ('window': no swap) or grid "
                                "('grid': SwapAxes(-2, -3)) partition")


def _per_position(mod: nn.Module) -> bool:
    """Whether ``mod`` acts on each token of the ``[B, windows, tokens, C]`` partition alone, over its last dim (so
    it is the same layer on the map's channel neurons): a LayerNorm, Linear, dropout, identity or element-wise
    activation. Anything else (a BatchNorm or PReLU reading dim 1, the windows; a softmax over some dim) is refused."""
    if type(mod) in A.MODULE_ACTIVATIONS:
        return A.MODULE_ACTIVATIONS[type(mod)] not in ("softmax", "log_softmax")
    return isinstance(mod, (nn.LayerNorm, nn.Linear, nn.Identity, nn.modules.dropout._DropoutNd))


def _relative_attention(ctx, node, x: Val, size: tuple[int, int], window: tuple[int, int],
                        dilation: tuple[int, int]) -> Val:
    """``RelativePositionalMultiHeadAttention`` on the windows of the partition: window heads, then ``merge``."""
    att = ctx.module(node)
    c, heads, head_dim = x.channels, att.n_heads, att.head_dim
    n = att.size
    if (n, n) != tuple(window) or att.max_seq_len != n * n:
        raise ctx.unsupported(node, f"its {n} x {n} relative position bias (max_seq_len {att.max_seq_len}) does not fit "
                                    f"the partition's {window[0]} x {window[1]} windows")
    qkv, merge = att.to_qkv, att.merge
    if heads * head_dim != c or not (type(qkv) is nn.Linear and tuple(qkv.weight.shape) == (3 * c, c)) or not (
            type(merge) is nn.Linear and tuple(merge.weight.shape) == (c, c)):
        raise ctx.unsupported(node, f"{heads} heads of {head_dim}, to_qkv {type(qkv).__name__} / merge "
                                    f"{type(merge).__name__} are not the [3C, C] / [C, C] Linear layers of C = {c} "
                                    "channels split into heads")
    table = ctx.param(node, "relative_position_bias_table")
    rows = (2 * n - 1) ** 2
    index_name = f"{node.target}.relative_position_index"
    index = ctx.root.get_buffer(index_name)
    ctx.builder.guard(index_name, index)
    if table is None or tuple(att.relative_position_bias_table.shape) != (rows, heads) or index.numel() != n ** 4 or \
            not (index.cpu().reshape(-1) == relative_position_index((n, n))).all():
        raise ctx.unsupported(node, f"the relative position index {index_name!r} or the table "
                                    f"{tuple(att.relative_position_bias_table.shape)} is not MaxViT's for {n} x {n} "
                                    f"windows (a [{rows}, heads] table read by the query - key offset); other "
                                    "indexings have no graph")
    scale = att.scale_factor
    if scale == c ** -0.5:
        scale_dim = c
    elif scale == head_dim ** -0.5:
        scale_dim = head_dim
    else:
        raise ctx.unsupported(node, f"scale_factor {scale} is neither 1/sqrt(C = {c}) (torchvision's) nor "
                                    f"1/sqrt(d_H = {head_dim}); the graph holds a scale dim D of scores q . k / sqrt(D)")
    qkv_node = _child(node, "to_qkv")
    qkv_w, qkv_b = ctx.param(qkv_node, "weight"), ctx.param(qkv_node, "bias")
    if qkv_w is None:
        raise ctx.unsupported(qkv_node, "its weight is not a parameter (a parametrization?); remove it first")
    out = window_heads(ctx, node, ctx.as_features(node, x, c), heads, qkv_w, qkv_b, table, (rows, heads),
                       tuple(window), (0, 0), tuple(size), tuple(dilation),
                       None if scale_dim == head_dim else scale_dim)
    return _apply(ctx, node, "merge", Val(out, "vec"))


@module_rule(_MAXVIT + "PartitionAttentionLayer")
def partition_attention_layer(ctx, node, x: Val) -> Val:
    """``x + attn_layer(x)``, then ``x + mlp_layer(x)``, on the windows of the layer's partition (module docstring)."""
    mod = ctx.module(node)
    shape = ctx.shape(node.args[0])
    if shape is None or len(shape) != 4:
        raise ctx.unsupported(node, "MaxViT's partition attention needs the traced [B, C, H, W] shape of its input "
                                    "(its windows depend on the map size); pass example_input=... to to_neural_graph")
    if len(ctx.config.max_kernel) != 2:
        raise ctx.unsupported(node, f"window attention needs a 2-d max_kernel (its edges' geometry holds a 2-d "
                                    f"window), got max_kernel={ctx.config.max_kernel}")
    _, c, h, w = shape
    window, dilation = _partition(ctx, node, mod, (h, w))
    drop = mod.stochastic_dropout
    if not (isinstance(drop, nn.Identity) or _is(drop, _STOCHASTIC_DEPTH)) or (drop.training and getattr(drop, "p", 0)):
        raise ctx.unsupported(node, f"its stochastic_dropout ({type(drop).__name__}) is not torchvision's stochastic "
                                    "depth in eval mode (in training mode it drops residual branches at random): call "
                                    "model.eval() first")
    if type(mod.attn_layer) is not nn.Sequential or type(mod.mlp_layer) is not nn.Sequential or sum(
            _is(m, _ATTENTION) for m in mod.attn_layer) != 1:
        raise ctx.unsupported(node, "its attn_layer / mlp_layer are not nn.Sequential, the attn_layer holding one "
                                    "RelativePositionalMultiHeadAttention, as torchvision builds them")
    x = ctx.materialize(node, node.args[0], x)
    stream = Val(ctx.as_map(node, x, c, 2), "vec")   # the map's channel neurons, read per position
    for seq in ("attn_layer", "mlp_layer"):
        branch = stream
        for name, child in getattr(mod, seq).named_children():
            if _is(child, _ATTENTION):
                branch = _relative_attention(ctx, _child(node, f"{seq}.{name}"), branch, (h, w), window, dilation)
            elif _per_position(child):
                branch = _apply(ctx, node, f"{seq}.{name}", branch)
            else:
                raise ctx.unsupported(_child(node, f"{seq}.{name}"), f"a {type(child).__name__} on the layer's "
                                      "[B, windows, tokens, C] partition: only layers acting on each token's last dim "
                                      "(LayerNorm, Linear, dropout, element-wise activations) and the attention convert "
                                      "there")
        stream = add(ctx, _child(node), stream, branch)
    return Val(stream.nodes, "map", 2, x.positions)


@module_rule(_ATTENTION)
def relative_attention_alone(ctx, node, *args, **kwargs) -> Val:
    raise ctx.unsupported(node, "MaxViT's relative positional attention converts as part of torchvision's "
                                "PartitionAttentionLayer, whose window / grid partition gives it its windows; called on "
                                "its own (on [B, windows, tokens, C] partitioned tokens) it has no graph")
