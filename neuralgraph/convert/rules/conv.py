"""``nn.Conv1d/2d/3d``: one node per output channel, one edge per (output, input) channel pair that the
grouping connects, carrying the kernel zero-padded (centred) to ``max_kernel`` and flattened."""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph.convert.builder import Param, Val
from neuralgraph.convert.registry import function_rule, module_rule, takes_params


def kernel_taps(kernel: tuple[int, ...], max_kernel: tuple[int, ...]) -> torch.Tensor:
    """Flat tap position in the padded kernel of every element of a ``kernel`` (row-major).

    Kernels with fewer dims than ``max_kernel`` fill its trailing dims; each dim is centred with
    offset ``(K - k) // 2``.
    """
    full = (1,) * (len(max_kernel) - len(kernel)) + tuple(kernel)
    offsets = [(K - k) // 2 for K, k in zip(max_kernel, full)]
    strides = [math.prod(max_kernel[d + 1:]) for d in range(len(max_kernel))]
    taps = [sum((q + o) * s for q, o, s in zip(pos, offsets, strides))
            for pos in itertools.product(*(range(k) for k in full))]
    return torch.tensor(taps, dtype=torch.long)


def _padding(padding, kernel_size: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * len(kernel_size)
        # "same": total padding d*(k-1), even (the rule rejects asymmetric padding): half on each side
        return tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel_size))
    return tuple(padding)


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


@module_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv_module(ctx, node, x: Val) -> Val:
    mod = ctx.module(node)
    if mod.padding_mode != "zeros" and any(p > 0 for p in _padding(mod.padding, mod.kernel_size, mod.dilation)):
        raise ctx.unsupported(node, f"padding_mode={mod.padding_mode!r} pads with other values than zeros, which "
                                    "the edge geometry cannot store; pad the input explicitly or use padding_mode='zeros'")
    weight = ctx.param(node, "weight")
    if weight is None:
        raise ctx.unsupported(node, "its weight is not a parameter but computed in forward (a parametrization such "
                                    "as weight_norm?); a neural graph stores parameters: remove the parametrization "
                                    "first (torch.nn.utils.parametrize.remove_parametrizations, or torch.nn.utils.remove_weight_norm "
                                    "for the old weight_norm hook)")
    return conv(ctx, node, x, weight, ctx.param(node, "bias"), tuple(mod.weight.shape),
                mod.stride, mod.padding, mod.dilation, mod.groups)


@function_rule(F.conv1d, F.conv2d, F.conv3d)
@takes_params
def conv_function(ctx, node, x: Val, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Val:
    """``F.conv2d(x, self.weight, self.bias, ...)`` with parameters of the model (read in forward)."""
    for what, p in (("weight", weight), ("bias", bias)):
        if not (isinstance(p, Param) or (what == "bias" and p is None)):
            raise ctx.unsupported(node, f"the {what} of this convolution is computed in forward (e.g. weight "
                                        "standardisation), not a parameter of the model; a neural graph stores "
                                        "parameters, so it cannot represent it")
    sd = len(weight.shape) - 2
    return conv(ctx, node, x, weight.name, None if bias is None else bias.name, weight.shape, _tuple(stride, sd),
                padding if isinstance(padding, str) else _tuple(padding, sd), _tuple(dilation, sd), groups)


def conv(ctx, node, x: Val, weight: str, bias: str | None, shape: tuple[int, ...], stride: tuple[int, ...],
         padding, dilation: tuple[int, ...], groups: int) -> Val:
    """A convolution with weight ``[C_out, C_in / groups, *kernel]`` named ``weight`` (and ``bias``)."""
    b = ctx.builder
    cfg = ctx.config
    out_channels, in_pg, kernel_size = shape[0], shape[1], tuple(shape[2:])
    in_channels = in_pg * groups
    sdims = len(kernel_size)
    if padding == "same" and any(d * (k - 1) % 2 for d, k in zip(dilation, kernel_size)):
        raise ctx.unsupported(node, f"padding='same' with kernel {kernel_size} and dilation {tuple(dilation)} pads "
                                    "one side more than the other, which the edge geometry (one padding per dim) cannot "
                                    "store; pad explicitly or use an odd kernel")
    if sdims > len(cfg.max_kernel):
        fix = tuple(max(k, K) for k, K in zip(kernel_size, (1,) * (sdims - len(cfg.max_kernel)) + cfg.max_kernel))
        raise ctx.unsupported(node, f"a {sdims}-d kernel {kernel_size} needs a {sdims}-d max_kernel, got "
                                    f"max_kernel={cfg.max_kernel}; convert with e.g. "
                                    f"to_neural_graph(model, max_kernel={fix}) (a kernel larger than max_kernel "
                                    "is converted as shifted maps and a 1x1 convolution)")
    if any(k > K for k, K in zip(kernel_size, cfg.max_kernel[len(cfg.max_kernel) - sdims:])):
        return _shifted(ctx, node, x, weight, bias, shape, tuple(stride), _padding(padding, kernel_size, dilation),
                        tuple(dilation), groups)
    src_nodes = ctx.as_map(node, x, in_channels, sdims)
    b.check_size(out_channels * in_pg, out_channels * in_pg * math.prod(kernel_size))  # before allocating
    out = b.add_nodes(out_channels, b.next_layer(src_nodes))
    out_pg = out_channels // groups
    ksize = math.prod(kernel_size)
    # edge e = (o, j): output channel o, j-th input channel of o's group; weight[o, j] is row e
    o = torch.arange(out_channels).repeat_interleave(in_pg)
    j = torch.arange(in_pg).repeat(out_channels)
    src = src_nodes[(o // out_pg) * in_pg + j]
    dst = out[o]
    elem = torch.arange(out_channels * in_pg).view(-1, 1) * ksize + torch.arange(ksize).view(1, -1)
    pad = len(cfg.max_kernel) - sdims
    geometry = ((1,) * pad + tuple(stride) + (0,) * pad + _padding(padding, kernel_size, dilation) + (1,) * pad
                + tuple(dilation) + (1,) * pad + kernel_size)
    b.register_param(weight, shape)
    b.add_edges(src, dst, "conv", geometry=geometry,
                sources=[(weight, elem, kernel_taps(kernel_size, cfg.max_kernel))])
    b.layers.append((weight, bias))
    if bias is not None:
        b.add_node_param(out, bias, torch.arange(out_channels))
    return Val(out, "map", sdims=sdims, positions=None)


def _shifted(ctx, node, x: Val, weight: str, bias: str | None, shape: tuple[int, ...], stride: tuple[int, ...],
             padding: tuple[int, ...], dilation: tuple[int, ...], groups: int) -> Val:
    """A convolution whose kernel exceeds ``max_kernel`` (alexnet's 11x11 stem, ResNet's 7x7 one at
    ``max_kernel=(3, 3)``, a ViT's 16x16 patch embedding), exactly: one neuron per (input channel ``c``, kernel
    offset ``t``) holding the shifted, subsampled map ``in[c, stride * y + t * dilation - padding]`` (zero outside the
    input), fed by one ``subsample`` edge from ``c``; then a 1x1 convolution whose edge ``(c, t) -> o`` carries
    ``weight[o, c', t]`` (``c'``: ``c``'s index in ``o``'s group) on the centre tap, only within ``o``'s group.
    The same function with one tap per weight instead of a ``prod(kernel)``-tap kernel on every edge.

    Shapes:
        weight ``[C_out, C_in / groups, *k]``: ``C_in * prod(k)`` shifted neurons and subsample edges, then
        ``C_out * C_in / groups * prod(k)`` 1x1 conv edges.
    """
    b, cfg = ctx.builder, ctx.config
    out_channels, in_pg, kernel_size = shape[0], shape[1], tuple(shape[2:])
    in_channels, out_pg = in_pg * groups, shape[0] // groups
    sdims, pad = len(kernel_size), len(cfg.max_kernel) - len(kernel_size)
    k = math.prod(kernel_size)
    span = tuple(d * (s - 1) + 1 for d, s in zip(dilation, kernel_size))  # input extent of one output position
    src_nodes = ctx.as_map(node, x, in_channels, sdims)
    b.check_size(in_channels * k + out_channels * in_pg * k, out_channels * in_pg * k)  # before allocating
    shifted = b.add_nodes(in_channels * k, b.next_layer(src_nodes)).view(in_channels, k)  # [C_in, k]
    for t, offset in enumerate(itertools.product(*(range(s) for s in kernel_size))):
        # subsample geometry: stride | offset | zero padding | span per dim (data.graph.EDGE_KIND_TABLE)
        geometry = ((1,) * pad + stride + (0,) * pad + tuple(o * d for o, d in zip(offset, dilation))
                    + (0,) * pad + padding + (1,) * pad + span)
        b.add_edges(src_nodes, shifted[:, t], "subsample", geometry=geometry, const=1.0)
    out = b.add_nodes(out_channels, b.next_layer(shifted.reshape(-1)))
    b.register_param(weight, shape)
    # edge (o, j, t): output o, j-th input channel of o's group, offset t; it carries weight[o, j, *offset_t], the
    # flat element (o * in_pg + j) * k + t
    o = torch.arange(out_channels).repeat_interleave(in_pg * k)                      # [E]
    jt = torch.arange(in_pg * k).repeat(out_channels)                                # [E]
    src = shifted.view(groups, in_pg * k)[o // out_pg, jt]                           # [E]
    b.add_edges(src, out[o], "conv", sources=[(weight, torch.arange(out_channels * in_pg * k).view(-1, 1),
                                               kernel_taps((1,) * sdims, cfg.max_kernel))])
    b.layers.append((weight, bias))
    if bias is not None:
        b.add_node_param(out, bias, torch.arange(out_channels))
    return Val(out, "map", sdims=sdims, positions=None)
