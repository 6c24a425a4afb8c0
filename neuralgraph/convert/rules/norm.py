"""Normalization layers as element-wise layers (Neural Graphs appendix C.3).

``d`` input neurons -> ``d`` new neurons, one edge per neuron. The edge carries the multiplicative term
``gamma`` on the centre tap (1 without affine parameters); for layers with running statistics
(BatchNorm, InstanceNorm with ``track_running_stats``) the first two non-centre taps (0 and 1 for
any kernel wider than 1) carry ``running_mean`` and ``running_var``, so they survive the round trip
exactly; the third non-centre tap carries ``eps`` (every kind; with fewer than 4 taps only the default
``eps`` converts). The node feature carries the additive term
``beta``. The edge kind names the normalization (its statistics couple neurons of a layer for
LayerNorm / GroupNorm). A GroupNorm also gets one virtual neuron per group (role virtual, no value) with a
``group`` edge (1 on the centre tap) to each output neuron of its group, so the graph records which
neurons are normalized together: ``GroupNorm(1, C)`` and ``GroupNorm(C, C)`` give different graphs, and
moving a channel to another group gives a non-isomorphic one.
"""
from __future__ import annotations

import torch
from torch import nn

from neuralgraph.convert.builder import Val
from neuralgraph.convert.rules import module_rule
from neuralgraph.data.graph import DEFAULT_EPS, norm_taps

_KIND = {nn.BatchNorm1d: "batchnorm", nn.BatchNorm2d: "batchnorm", nn.BatchNorm3d: "batchnorm",
         nn.InstanceNorm1d: "instancenorm", nn.InstanceNorm2d: "instancenorm", nn.InstanceNorm3d: "instancenorm",
         nn.GroupNorm: "groupnorm", nn.LayerNorm: "layernorm"}


def _channels(node, ctx, mod: nn.Module) -> int:
    if isinstance(mod, nn.LayerNorm):
        if len(mod.normalized_shape) != 1:
            raise ctx.unsupported(node, f"LayerNorm over {tuple(mod.normalized_shape)}: only normalization over "
                                        "the last (feature) dim is supported")
        return mod.normalized_shape[0]
    return mod.num_channels if isinstance(mod, nn.GroupNorm) else mod.num_features


#: spatial dims of the input each layer type implies (BatchNorm1d and GroupNorm accept [B, C] and maps alike)
_SDIMS = {nn.LayerNorm: 0, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3, nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2,
          nn.InstanceNorm3d: 3}


def _input_sdims(ctx, node, mod: nn.Module) -> int:
    """Spatial dims of the model input a normalization layer reads first: from the traced shape (with
    ``example_input``) or the layer type; ``[B, C]`` features (0) or a ``[B, C, *spatial]`` map."""
    if isinstance(mod, nn.LayerNorm):
        return 0
    shape = ctx.shape(node.all_input_nodes[0])
    if shape is not None:
        return len(shape) - 2
    if type(mod) in _SDIMS:
        return _SDIMS[type(mod)]
    raise ctx.unsupported(node, "reads the model input, which it accepts as [B, C] features or as a feature map; "
                                "pass example_input=... to to_neural_graph to fix which")


@module_rule(*_KIND)
def norm(ctx, node, x: Val) -> Val:
    mod = ctx.module(node)
    b = ctx.builder
    c = _channels(node, ctx, mod)
    kind = _KIND[type(mod)]
    if x.kind == "input":
        sdims = _input_sdims(ctx, node, mod)
        x.nodes, x.kind, x.sdims = b.add_inputs(c), ("vec" if sdims == 0 else "map"), sdims
    if kind == "layernorm" and x.kind == "map":
        raise ctx.unsupported(node, "LayerNorm on a feature map normalizes its last spatial dim; only "
                                    "feature-dim LayerNorm is supported")
    if x.channels != c:
        raise ctx.unsupported(node, f"expects {c} channels but receives {x.channels}")
    out = b.add_nodes(c, b.next_layer(x.nodes))
    idx = torch.arange(c).view(-1, 1)
    sources = []
    weight = ctx.param(node, "weight")
    if weight is not None:
        sources.append((weight, idx, torch.tensor([ctx.config.centre_tap])))
    mean_tap, var_tap, tap = norm_taps(ctx.config.edge_dim, ctx.config.centre_tap)
    if getattr(mod, "running_mean", None) is not None:
        if var_tap is None:
            raise ctx.unsupported(node, "storing running statistics needs at least 3 edge features; use a "
                                        "max_kernel with 3 or more taps")
        sources.append((ctx.buffer(node, "running_mean"), idx, torch.tensor([mean_tap])))
        sources.append((ctx.buffer(node, "running_var"), idx, torch.tensor([var_tap])))
    if tap is None and mod.eps != DEFAULT_EPS:
        raise ctx.unsupported(node, f"eps={mod.eps} is stored on an edge tap, which needs at least 4 edge features; "
                                    "use a max_kernel with 4 or more taps")
    b.add_edges(x.nodes, out, kind, const=None if weight is not None else 1.0, sources=sources,
                tap_consts=() if tap is None else ((tap, float(mod.eps)),))
    if kind == "groupnorm":
        groups = b.add_nodes(mod.num_groups, b.layer[int(out[0])] - 1, role="virtual")
        b.add_identity_edges(groups.repeat_interleave(c // mod.num_groups), out, "group")
    bias = ctx.param(node, "bias")
    if bias is not None:
        b.add_node_param(out, bias, torch.arange(c))
    return Val(out, x.kind, x.sdims, x.positions)
