"""``nn.Conv1d/2d/3d``: one node per output channel, one edge per (output, input) channel pair that the
grouping connects, carrying the kernel zero-padded (centred) to ``max_kernel`` and flattened."""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from neuralgraph.convert.builder import Val
from neuralgraph.convert.registry import module_rule


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


def _padding(mod: nn.modules.conv._ConvNd) -> tuple[int, ...]:
    if isinstance(mod.padding, str):
        if mod.padding == "valid":
            return (0,) * len(mod.kernel_size)
        # "same": total padding d*(k-1), even (the rule rejects asymmetric padding): half on each side
        return tuple(d * (k - 1) // 2 for d, k in zip(mod.dilation, mod.kernel_size))
    return tuple(mod.padding)


@module_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv(ctx, node, x: Val) -> Val:
    mod = ctx.module(node)
    b = ctx.builder
    cfg = ctx.config
    sdims = len(mod.kernel_size)
    dims = max(sdims, len(cfg.max_kernel))
    want = (1,) * (dims - sdims) + tuple(mod.kernel_size)
    have = (1,) * (dims - len(cfg.max_kernel)) + cfg.max_kernel
    if sdims > len(cfg.max_kernel) or any(k > K for k, K in zip(want, have)):
        fix = tuple(max(k, K) for k, K in zip(want, have))
        raise ctx.unsupported(node, f"kernel {tuple(mod.kernel_size)} does not fit max_kernel="
                                    f"{cfg.max_kernel}; convert with a larger one, e.g. "
                                    f"to_neural_graph(model, max_kernel={fix})")
    if mod.padding == "same" and any(d * (k - 1) % 2 for d, k in zip(mod.dilation, mod.kernel_size)):
        raise ctx.unsupported(node, f"padding='same' with kernel {tuple(mod.kernel_size)} and dilation "
                                    f"{tuple(mod.dilation)} pads one side more than the other, which edge_conv "
                                    "(one padding per dim) cannot store; pad explicitly or use an odd kernel")
    src_nodes = ctx.as_map(node, x, mod.in_channels, sdims)
    out = b.add_nodes(mod.out_channels, b.next_layer(src_nodes))
    in_pg = mod.in_channels // mod.groups
    out_pg = mod.out_channels // mod.groups
    ksize = math.prod(mod.kernel_size)
    # edge e = (o, j): output channel o, j-th input channel of o's group; weight[o, j] is row e
    o = torch.arange(mod.out_channels).repeat_interleave(in_pg)
    j = torch.arange(in_pg).repeat(mod.out_channels)
    src = src_nodes[(o // out_pg) * in_pg + j]
    dst = out[o]
    elem = torch.arange(mod.out_channels * in_pg).view(-1, 1) * ksize + torch.arange(ksize).view(1, -1)
    pad = len(cfg.max_kernel) - sdims
    geometry = ((1,) * pad + tuple(mod.stride) + (0,) * pad + _padding(mod) + (1,) * pad + tuple(mod.dilation)
                + (1,) * pad + tuple(mod.kernel_size))
    b.add_edges(src, dst, "conv", geometry=geometry,
                sources=[(ctx.param(node, "weight"), elem, kernel_taps(mod.kernel_size, cfg.max_kernel))])
    bias = ctx.param(node, "bias")
    b.layers.append((f"{node.target}.weight", bias))
    if bias is not None:
        b.add_node_param(out, bias, torch.arange(mod.out_channels))
    return Val(out, "map", sdims=sdims, positions=None)
