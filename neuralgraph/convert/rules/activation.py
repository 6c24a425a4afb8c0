"""Element-wise activations (``nn.ReLU``, ``F.gelu``, ``x.sigmoid()``, any registered function): a property of
the neurons they are applied to (``node_act``), not a layer. The tracer calls :func:`activation` for every
module, function or method in the activation vocabulary (:mod:`neuralgraph.convert.activations`)."""
from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn

from neuralgraph.convert import activations as A
from neuralgraph.convert.builder import Val
from neuralgraph.convert.registry import function_rule, method_rule, module_rule


#: activations that normalise over the neurons of a layer (the feature / channel dim), not element-wise
LAYER_FAMILIES = ("softmax", "log_softmax")


def activation(ctx, node: fx.Node, v: Val, name: str, dim: Any = None, params: tuple[float, ...] = ()) -> Val:
    """Apply an activation: a property of the neurons it is applied to, with its parameter values ``params``
    (:data:`~neuralgraph.convert.activations.PARAMETERS`). ``dim``: the dim a softmax / log_softmax normalises
    over, which must be the feature (channel) dim."""
    b = ctx.builder
    v = ctx.materialize(node, node.all_input_nodes[0], v)
    family = name.split("(", 1)[0]
    if family in LAYER_FAMILIES:
        _check_feature_dim(ctx, node, v, family, dim)
    act = A.activation_id(name)
    nodes = v.nodes
    if not b.is_open(nodes) or (family in LAYER_FAMILIES and len({b.layer[i] for i in nodes.tolist()}) > 1):
        # the neurons' pre-activation value is (or will be) read elsewhere (or a softmax's neurons lie in
        # several layers): add an identity layer
        new = b.add_nodes(nodes.numel(), b.next_layer(nodes))
        b.add_identity_edges(nodes, new, "identity")
        nodes = new
    b.set_activation(nodes, act, params)
    if family in LAYER_FAMILIES:  # the neurons normalised together; the plan checks no other shares their layer
        b.layer_groups.append((nodes, f"{ctx.where(node)}: {family}"))
    return Val(nodes, v.kind, v.sdims, v.positions)


def _check_feature_dim(ctx, node: fx.Node, v: Val, family: str, dim: Any) -> None:
    """A softmax must normalise over the neurons of the value: the feature dim (last) or a map's channel dim (1)."""
    if not isinstance(dim, int):
        raise ctx.unsupported(node, f"{family} without an explicit dim (torch picks one from the rank) is not "
                                    f"supported; pass dim=-1 (features) or dim=1 (channels of a map)")
    shape = ctx.shape(node.all_input_nodes[0])
    rank = len(shape) if shape is not None else None
    if v.kind == "map":
        ok = dim % (2 + v.sdims) == 1
    elif rank is not None:
        ok = dim % rank == rank - 1
    else:  # features: [B, C], or [B, T, C] token sequences in a network with attention
        ok = dim == -1 or (dim == 1 and not ctx.tokens)
    if not ok:
        what = "channel dim 1" if v.kind == "map" else "feature dim -1"
        raise ctx.unsupported(node, f"{family} over dim {dim} normalises across the batch, tokens or positions; "
                                    f"only a {family} over the {what} (across the neurons of a layer) can be "
                                    "represented")



@function_rule(operator.pow, torch.pow)
@method_rule("pow")
def square(ctx, node, x, exponent) -> Val:
    """``x ** 2`` / ``torch.pow(x, 2)``: the activation ``square`` (MetaFormer's ``StarReLU``, ``s * relu(x) ** 2 + b``);
    other exponents (and a neuron value as the exponent) are refused."""
    if not isinstance(x, Val) or isinstance(exponent, bool) or exponent != 2:
        raise ctx.unsupported(node, f"a power with exponent {exponent!r} is not supported; only x ** 2 (the "
                                    "activation 'square') is; register other element-wise functions with "
                                    "neuralgraph.convert.register_activation")
    return activation(ctx, node, x, "square")


@module_rule(nn.PReLU)
def prelu(ctx, node, x: Val) -> Val:
    """``nn.PReLU``: the activation ``prelu`` with its slope (a parameter, one per channel or one shared) in the
    neurons' first activation-parameter column."""
    mod: nn.PReLU = ctx.module(node)
    x = ctx.materialize(node, node.all_input_nodes[0], x)
    shape = ctx.shape(node.all_input_nodes[0])
    if mod.num_parameters > 1 and x.kind != "map" and shape is not None and len(shape) > 2:
        raise ctx.unsupported(node, "PReLU with one slope per channel applies them along dim 1, the tokens of a "
                                    "[B, T, C] sequence; use num_parameters=1 or channel-first maps")
    if mod.num_parameters not in (1, x.channels):
        raise ctx.unsupported(node, f"has {mod.num_parameters} slopes for {x.channels} channels")
    out = activation(ctx, node, x, "prelu")
    elem = torch.arange(x.channels) if mod.num_parameters > 1 else torch.zeros(x.channels, dtype=torch.long)
    ctx.builder.add_node_param(out.nodes, ctx.param(node, "weight"), elem, column=A.PARAM_COLUMNS[0])
    return out
