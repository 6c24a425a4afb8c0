"""Element-wise activations (``nn.ReLU``, ``F.gelu``, ``x.sigmoid()``, any registered function): a property of
the neurons they are applied to (``node_act``), not a layer. The tracer calls :func:`activation` for every
module, function or method in the activation vocabulary (:mod:`neuralgraph.convert.activations`)."""
from __future__ import annotations

from typing import Any

from torch import fx

from neuralgraph.convert import activations as A
from neuralgraph.convert.builder import Val


#: activations that normalise over the neurons of a layer (the feature / channel dim), not element-wise
LAYER_FAMILIES = ("softmax", "log_softmax")


def activation(ctx, node: fx.Node, v: Val, name: str, dim: Any = None) -> Val:
    """Apply an activation: a property of the neurons it is applied to. ``dim``: the dim a softmax /
    log_softmax normalises over, which must be the feature (channel) dim."""
    if name not in A.ACTIVATIONS:
        family = name.split("(", 1)[0]
        raise ctx.unsupported(node, f"it computes {name}, a variant of {family!r} that is not in the activation "
                                    f"vocabulary; converting it as {family!r} would describe another function. "
                                    f"Register the variant first (ids follow registration order): "
                                    f"neuralgraph.convert.register_activation(None, {name!r})")
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
    b.set_activation(nodes, act)
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

