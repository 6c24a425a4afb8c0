"""``nn.Linear``: one node per output feature, one edge per weight (on the centre tap)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph.convert.builder import Param, Val
from neuralgraph.convert.registry import function_rule, module_rule, takes_params


@module_rule(nn.Linear)
def linear_module(ctx, node, x: Val) -> Val:
    mod: nn.Linear = ctx.module(node)
    weight = ctx.param(node, "weight")
    if weight is None:
        raise ctx.unsupported(node, "its weight is not a parameter but computed in forward (a parametrization such "
                                    "as weight_norm?); a neural graph stores parameters: remove the parametrization "
                                    "first (torch.nn.utils.parametrize.remove_parametrizations, or torch.nn.utils.remove_weight_norm "
                                    "for the old weight_norm hook)")
    return linear(ctx, node, x, weight, ctx.param(node, "bias"), tuple(mod.weight.shape))


@function_rule(F.linear)
@takes_params
def linear_function(ctx, node, x: Val, weight, bias=None) -> Val:
    """``F.linear(x, self.weight, self.bias)`` with parameters of the model (read in forward)."""
    for what, p in (("weight", weight), ("bias", bias)):
        if not (isinstance(p, Param) or (what == "bias" and p is None)):
            raise ctx.unsupported(node, f"the {what} of this linear layer is computed in forward, not a parameter "
                                        "of the model; a neural graph stores parameters, so it cannot represent it")
    return linear(ctx, node, x, weight.name, None if bias is None else bias.name, weight.shape)


def linear(ctx, node, x: Val, weight: str, bias: str | None, shape: tuple[int, ...]) -> Val:
    """A linear layer with the ``[out, in]`` weight named ``weight`` (and ``bias``)."""
    b = ctx.builder
    n_out, n_in = shape
    src_nodes = ctx.as_features(node, x, n_in)
    b.check_size(n_out * n_in, n_out * n_in)  # before allocating the edges
    out = b.add_nodes(n_out, b.next_layer(src_nodes))
    # edge e = (o, i) in row-major order, so the weight element of edge e is e itself
    src = src_nodes.repeat(n_out)
    dst = out.repeat_interleave(n_in)
    elem = torch.arange(n_out * n_in).view(-1, 1)
    taps = torch.tensor([ctx.config.centre_tap])
    b.register_param(weight, shape)
    b.add_edges(src, dst, "linear", sources=[(weight, elem, taps)])
    b.layers.append((weight, bias))
    if bias is not None:
        b.add_node_param(out, bias, torch.arange(n_out))
    return Val(out, "vec")
