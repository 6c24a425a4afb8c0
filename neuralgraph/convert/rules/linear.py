"""``nn.Linear``: one node per output feature, one edge per weight (on the centre tap)."""
from __future__ import annotations

import torch
from torch import nn

from neuralgraph.convert.builder import Val
from neuralgraph.convert.registry import module_rule


@module_rule(nn.Linear)
def linear(ctx, node, x: Val) -> Val:
    mod: nn.Linear = ctx.module(node)
    b = ctx.builder
    src_nodes = ctx.as_features(node, x, mod.in_features)
    out = b.add_nodes(mod.out_features, b.next_layer(src_nodes))
    n_in, n_out = mod.in_features, mod.out_features
    # edge e = (o, i) in row-major order, so the weight element of edge e is e itself
    src = src_nodes.repeat(n_out)
    dst = out.repeat_interleave(n_in)
    elem = torch.arange(n_out * n_in).view(-1, 1)
    taps = torch.tensor([ctx.config.centre_tap])
    b.add_edges(src, dst, "linear", sources=[(ctx.param(node, "weight"), elem, taps)])
    bias = ctx.param(node, "bias")
    b.layers.append((f"{node.target}.weight", bias))
    if bias is not None:
        b.add_node_param(out, bias, torch.arange(n_out))
    return Val(out, "vec")
