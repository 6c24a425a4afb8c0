"""Resolution changes of feature maps: transposed convolutions, nearest upsampling and pixel (un)shuffles.

* ``nn.ConvTranspose1d/2d/3d``: like a convolution, one edge per connected (input, output) channel pair carrying
  the kernel ``weight[c_in, c_out]`` zero-padded and centred; ``edge_kind = conv_transpose``, its geometry row holds
  stride, padding, output_padding and kernel size per dim (dilation 1).
* ``nn.Upsample`` / ``F.interpolate`` (``mode="nearest"``, integer scale) and ``nn.PixelShuffle(r)``: new
  neurons fed by ``upsample`` edges, which place source position ``o`` at target positions
  ``o * stride + offset .. + fill`` (nearest: offset 0, fill = stride; pixel shuffle: the offset of the input
  channel's sub-position, fill 1).
* ``nn.PixelUnshuffle(r)``: ``subsample`` edges (every ``r``-th position from an offset), as a patch embedding.
* ``F.pad`` / ``nn.ZeroPad2d`` / ``nn.ConstantPad2d(p, 0)`` (zero padding, also asymmetric; negative amounts crop):
  one ``subsample`` edge per channel (stride 1, the padding and an offset).
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph.convert.builder import Val
from neuralgraph.convert.registry import function_rule, module_rule
from neuralgraph.convert.rules.conv import kernel_taps


def _lead(ctx, sdims: int) -> int:
    """Leading dims of ``max_kernel`` a ``sdims``-d geometry does not use (filled with defaults)."""
    return len(ctx.config.max_kernel) - sdims


def _map(ctx, node, x: Val, what: str) -> Val:
    x = ctx.materialize(node, node.all_input_nodes[0], x)
    if x.kind != "map":
        raise ctx.unsupported(node, f"{what} of {x.what} is not supported; it acts on channel-first feature maps")
    if x.sdims > len(ctx.config.max_kernel):
        raise ctx.unsupported(node, f"a {x.sdims}-d {what} needs a max_kernel with {x.sdims} dims; convert with "
                                    f"max_kernel={(3,) * x.sdims}")
    return x


@module_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_transpose(ctx, node, x: Val, output_size=None) -> Val:
    """A transposed convolution: ``conv_transpose`` edges ``c_in -> c_out`` carrying ``weight[c_in, c_out]``."""
    mod, cfg, b = ctx.module(node), ctx.config, ctx.builder
    if output_size is not None:
        raise ctx.unsupported(node, "output_size= in forward picks the output size at run time; set the module's "
                                    "output_padding instead")
    if set(mod.dilation) != {1} or mod.padding_mode != "zeros":
        raise ctx.unsupported(node, f"dilation={mod.dilation}, padding_mode={mod.padding_mode!r}: only dilation 1 "
                                    "and zero padding are supported (the edge geometry stores stride, padding, output_padding "
                                    "and kernel size)")
    in_channels, out_pg, kernel = mod.weight.shape[0], mod.weight.shape[1], tuple(mod.weight.shape[2:])
    sdims, groups = len(kernel), mod.groups
    if sdims > len(cfg.max_kernel) or any(k > K for k, K in zip(kernel, cfg.max_kernel[-sdims:])):
        fix = (1,) * (sdims - len(cfg.max_kernel)) + tuple(max(k, K) for k, K in zip(kernel, cfg.max_kernel[-sdims:]))
        raise ctx.unsupported(node, f"kernel {kernel} does not fit max_kernel={cfg.max_kernel}; convert with a "
                                    f"larger one: to_neural_graph(model, max_kernel={fix})")
    weight = ctx.param(node, "weight")
    src_nodes = ctx.as_map(node, x, in_channels, sdims)
    in_pg, ksize = in_channels // groups, math.prod(kernel)
    b.check_size(in_channels * out_pg, in_channels * out_pg * ksize)  # before allocating
    out = b.add_nodes(out_pg * groups, b.next_layer(src_nodes))
    # edge e = (c, j): input channel c, j-th output channel of c's group; weight[c, j] is row e
    c = torch.arange(in_channels).repeat_interleave(out_pg)
    j = torch.arange(out_pg).repeat(in_channels)
    pad = _lead(ctx, sdims)
    geometry = ((1,) * pad + tuple(mod.stride) + (0,) * pad + tuple(mod.padding) + (0,) * pad
                + tuple(mod.output_padding) + (1,) * pad + kernel)
    elem = torch.arange(in_channels * out_pg).view(-1, 1) * ksize + torch.arange(ksize).view(1, -1)
    b.add_edges(src_nodes[c], out[(c // in_pg) * out_pg + j], "conv_transpose", geometry=geometry,
                sources=[(weight, elem, kernel_taps(kernel, cfg.max_kernel))])
    bias = ctx.param(node, "bias")
    b.layers.append((weight, bias))
    if bias is not None:
        b.add_node_param(out, bias, torch.arange(out.numel()))
    return Val(out, "map", sdims)


def _upsample(ctx, node, x: Val, sources, targets, stride: tuple[int, ...], offsets, fill: tuple[int, ...]) -> None:
    pad = _lead(ctx, len(stride))
    for src, dst, offset in zip(sources, targets, offsets):
        geometry = ((1,) * pad + stride + (0,) * pad + tuple(offset) + (1,) * (pad + len(stride)) + (1,) * pad
                    + fill)
        ctx.builder.add_edges(src, dst, "upsample", geometry=geometry, const=1.0)


def nearest(ctx, node, x: Val, scale: tuple[int, ...]) -> Val:
    """Nearest upsampling by integer factors: every position repeated ``scale`` times per dim."""
    b = ctx.builder
    new = b.add_nodes(x.channels, b.next_layer(x.nodes))
    _upsample(ctx, node, x, [x.nodes], [new], scale, [(0,) * len(scale)], scale)
    return Val(new, "map", x.sdims)


def _scale(ctx, node, x: Val, size, scale_factor, mode: str, align_corners=None, recompute=None) -> tuple[int, ...]:
    if mode != "nearest":
        raise ctx.unsupported(node, f"interpolation mode {mode!r} is not supported; only mode='nearest' with an "
                                    "integer scale factor converts (an upsample edge repeats positions)")
    sd = x.sdims
    if scale_factor is not None:
        factors = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * sd
    else:
        shape, out = ctx.shape(node.all_input_nodes[0]), ctx.shape(node)
        sizes = tuple(size) if isinstance(size, (tuple, list)) else (size,) * sd
        if out is not None and not all(isinstance(s, int) for s in sizes):
            sizes = tuple(out[2:])  # read off another tensor (size=y.shape[-2:]): the traced output's size
        if shape is None or not all(isinstance(s, int) for s in sizes):
            raise ctx.unsupported(node, f"upsamples to size={size!r} from an input size known only at run time; pass "
                                        "example_input=... to to_neural_graph, or use scale_factor")
        factors = tuple(s / n for s, n in zip(sizes, shape[2:]))
    if len(factors) != sd or not all(float(f).is_integer() and f >= 1 for f in factors):
        raise ctx.unsupported(node, f"nearest upsampling by {factors} is not supported; only integer scale factors "
                                    "(every position repeated) convert")
    return tuple(int(f) for f in factors)


@module_rule(nn.Upsample, nn.UpsamplingNearest2d)
def _upsample_module(ctx, node, x: Val) -> Val:
    m = ctx.module(node)
    x = _map(ctx, node, x, "an upsampling")
    return nearest(ctx, node, x, _scale(ctx, node, x, m.size, m.scale_factor, m.mode))


@function_rule(F.interpolate, F.upsample, F.upsample_nearest)
def _interpolate(ctx, node, x: Val, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None, antialias=False) -> Val:
    x = _map(ctx, node, x, "an interpolation")
    if antialias:
        raise ctx.unsupported(node, "antialias=True is not supported")
    return nearest(ctx, node, x, _scale(ctx, node, x, size, scale_factor, mode))


def _factor(ctx, node, r) -> int:
    if not isinstance(r, int) or r < 1:
        raise ctx.unsupported(node, f"the factor {r!r} must be a constant positive int")
    return r


def pixel_shuffle(ctx, node, x: Val, r: int) -> Val:
    """``C * r * r`` channels to ``C`` channels at ``r`` times the resolution: input channel ``c * r * r + i * r + j``
    fills the offset ``(i, j)`` of every ``r x r`` block of output channel ``c`` (an ``upsample`` edge, fill 1)."""
    x = _map(ctx, node, x, "a pixel shuffle")
    sd, k = x.sdims, r ** x.sdims
    if x.channels % k:
        raise ctx.unsupported(node, f"pixel shuffle by {r} needs a multiple of {k} channels, got {x.channels}")
    b = ctx.builder
    new = b.add_nodes(x.channels // k, b.next_layer(x.nodes))
    parts = x.nodes.view(-1, k)                                                       # [C, r^sd]
    offsets = list(itertools.product(range(r), repeat=sd))
    _upsample(ctx, node, x, [parts[:, t] for t in range(k)], [new] * k, (r,) * sd, offsets, (1,) * sd)
    return Val(new, "map", sd)


def pixel_unshuffle(ctx, node, x: Val, r: int) -> Val:
    """``C`` channels to ``C * r * r`` at ``1 / r`` of the resolution: output channel ``c * r * r + i * r + j`` is
    position ``(i, j)`` of every ``r x r`` block of input channel ``c`` (a ``subsample`` edge)."""
    x = _map(ctx, node, x, "a pixel unshuffle")
    sd, k, b = x.sdims, r ** x.sdims, ctx.builder
    new = b.add_nodes(x.channels * k, b.next_layer(x.nodes)).view(-1, k)              # [C, r^sd]
    pad = _lead(ctx, sd)
    for t, offset in enumerate(itertools.product(range(r), repeat=sd)):
        geometry = (1,) * pad + (r,) * sd + (0,) * pad + offset + (0,) * (pad + sd) + (1,) * pad + (r,) * sd
        b.add_edges(x.nodes, new[:, t], "subsample", geometry=geometry, const=1.0)
    return Val(new.reshape(-1), "map", sd)


@module_rule(nn.PixelShuffle)
def _pixel_shuffle_module(ctx, node, x: Val) -> Val:
    return pixel_shuffle(ctx, node, x, ctx.module(node).upscale_factor)


@module_rule(nn.PixelUnshuffle)
def _pixel_unshuffle_module(ctx, node, x: Val) -> Val:
    return pixel_unshuffle(ctx, node, x, ctx.module(node).downscale_factor)


@function_rule(F.pixel_shuffle, torch.pixel_shuffle)
def _pixel_shuffle(ctx, node, x: Val, upscale_factor) -> Val:
    return pixel_shuffle(ctx, node, x, _factor(ctx, node, upscale_factor))


@function_rule(F.pixel_unshuffle, torch.pixel_unshuffle)
def _pixel_unshuffle(ctx, node, x: Val, downscale_factor) -> Val:
    return pixel_unshuffle(ctx, node, x, _factor(ctx, node, downscale_factor))


def zero_pad(ctx, node, x: Val, pads, mode: str = "constant", value=None) -> Val:
    """``F.pad(x, (left, right, top, bottom, ...), value=0)`` of a map (negative amounts crop): one ``subsample``
    edge per channel reading ``in[y - left]`` per dim (zero outside the input): stride 1, padding
    ``p = max(left, right, 0)``, offset ``p - left``, span ``2p - left - right + 1``, so the output has
    ``n + left + right`` positions. Other modes (reflect, replicate, circular), other values and padding of the
    channel or batch dims are refused."""
    x = _map(ctx, node, x, "a padding")
    if mode != "constant" or (value is not None and value != 0):
        raise ctx.unsupported(node, f"padding with mode={mode!r}, value={value!r} is not supported; only zero padding "
                                    "(mode='constant', value=0) converts (a shifted map is zero outside its input)")
    pads = tuple(pads)
    if not all(isinstance(p, int) for p in pads) or len(pads) % 2 or len(pads) > 2 * x.sdims:
        raise ctx.unsupported(node, f"padding {pads!r} is not constant ints over the {x.sdims} spatial dims (the "
                                    "channel and batch dims cannot be padded)")
    sd, lead = x.sdims, _lead(ctx, x.sdims)
    per_dim = [(0, 0)] * sd
    for k in range(len(pads) // 2):  # F.pad lists the last dim first
        per_dim[sd - 1 - k] = (pads[2 * k], pads[2 * k + 1])
    p = tuple(max(lo, hi, 0) for lo, hi in per_dim)
    offset = tuple(q - lo for q, (lo, _) in zip(p, per_dim))
    span = tuple(2 * q - lo - hi + 1 for q, (lo, hi) in zip(p, per_dim))
    b = ctx.builder
    new = b.add_nodes(x.channels, b.next_layer(x.nodes))
    geometry = (1,) * lead + (1,) * sd + (0,) * lead + offset + (0,) * lead + p + (1,) * lead + span
    b.add_edges(x.nodes, new, "subsample", geometry=geometry, const=1.0)
    return Val(new, "map", sd)


@function_rule(F.pad)
def _pad(ctx, node, x: Val, pad, mode: str = "constant", value=None) -> Val:
    return zero_pad(ctx, node, x, pad, mode, value)


@module_rule(nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
             nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
             nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)
def _pad_module(ctx, node, x: Val) -> Val:
    mod = ctx.module(node)
    mode = "constant" if isinstance(mod, (nn.modules.padding._ConstantPadNd)) else type(mod).__name__
    return zero_pad(ctx, node, x, mod.padding, mode, getattr(mod, "value", None))
