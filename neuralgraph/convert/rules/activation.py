"""Element-wise activations (``nn.ReLU``, ``F.gelu``, ``x.sigmoid()``, any registered function): a property of
the neurons they are applied to (``node_act``), not a layer. The tracer calls :func:`activation` for every
module, function or method in the activation vocabulary (:mod:`neuralgraph.convert.activations`)."""
from __future__ import annotations

from torch import fx

from neuralgraph.convert import activations as A
from neuralgraph.convert.builder import Val


def activation(ctx, node: fx.Node, v: Val, name: str) -> Val:
    """Apply an element-wise activation: a property of the neurons it is applied to."""
    if name not in A.ACTIVATIONS:
        family = name.split("(", 1)[0]
        raise ctx.unsupported(node, f"it computes {name}, a variant of {family!r} that is not in the activation "
                                    f"vocabulary; converting it as {family!r} would describe another function. "
                                    f"Register the variant first (ids follow registration order): "
                                    f"neuralgraph.convert.register_activation(None, {name!r})")
    b = ctx.builder
    v = ctx.materialize(node, node.all_input_nodes[0], v)
    act = A.activation_id(name)
    nodes = v.nodes
    if not b.is_open(nodes):
        # the neurons' pre-activation value is (or will be) read elsewhere: add an identity layer
        new = b.add_nodes(nodes.numel(), b.next_layer(nodes))
        b.add_identity_edges(nodes, new, "identity")
        nodes = new
    b.set_activation(nodes, act)
    return Val(nodes, v.kind, v.sdims, v.positions)

