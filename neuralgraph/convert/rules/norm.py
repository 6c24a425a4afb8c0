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

import math

import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph.convert.builder import Param, Val
from neuralgraph.convert.registry import function_rule, module_rule, takes_params
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


def _kind(mod: nn.Module) -> str:
    """The edge kind of a normalization module (a subclass that keeps its parent's forward is its parent)."""
    return next(_KIND[t] for t in type(mod).__mro__ if t in _KIND)


@module_rule(*_KIND)
def norm(ctx, node, x: Val) -> Val:
    mod = ctx.module(node)
    b = ctx.builder
    c = _channels(node, ctx, mod)
    kind = _kind(mod)
    if x.kind == "input":
        sdims = _input_sdims(ctx, node, mod)
        x.nodes, x.kind, x.sdims = b.add_inputs(c), ("vec" if sdims == 0 else "map"), sdims
    if kind == "batchnorm" and getattr(mod, "running_mean", None) is None:
        raise ctx.unsupported(node, "BatchNorm with track_running_stats=False normalises with the statistics of "
                                    "each batch, also in eval mode (a function of the whole batch, not of one "
                                    "input), which a neural graph cannot represent; use running statistics")
    stats = getattr(mod, "running_mean", None) is not None
    return normalize(ctx, node, x, c, kind, ctx.param(node, "weight"), ctx.param(node, "bias"),
                     ctx.buffer(node, "running_mean") if stats else None,
                     ctx.buffer(node, "running_var") if stats else None, float(mod.eps),
                     getattr(mod, "num_groups", None))


def normalize(ctx, node, x: Val, c: int, kind: str, weight: str | None, bias: str | None, mean: str | None,
              var: str | None, eps: float, groups: int | None = None) -> Val:
    """The element-wise layer of a normalization over ``c`` channels (module docstring), its parameters by name:
    ``weight`` / ``bias`` (affine terms), ``mean`` / ``var`` (running statistics), ``groups`` (GroupNorm)."""
    b = ctx.builder
    if kind == "layernorm" and x.kind == "map":
        raise ctx.unsupported(node, "LayerNorm on a feature map normalizes its last spatial dim; only "
                                    "feature-dim LayerNorm is supported (a channel LayerNorm over a map is "
                                    "x.permute(0, 2, 3, 1), LayerNorm, x.permute(0, 3, 1, 2))")
    shape = ctx.shape(node.all_input_nodes[0])
    if kind != "layernorm" and x.kind == "vec" and ((shape is not None and len(shape) > 2) or (
            shape is None and x.positions is not None)):
        raise ctx.unsupported(node, f"{kind} normalises dim 1 of its input, which here is not the channel dim but the "
                                    "tokens of a [B, T, C] sequence or a spatial dim of a channel-last map (torch then "
                                    "keeps statistics per token / position); move the channels to dim 1 first "
                                    "(x.transpose(1, 2) / x.permute(0, 3, 1, 2)) or use LayerNorm")
    if x.channels != c:
        raise ctx.unsupported(node, f"expects {c} channels but receives {x.channels}")
    out = b.add_nodes(c, b.next_layer(x.nodes))
    idx = torch.arange(c).view(-1, 1)
    sources = []
    if weight is not None:
        sources.append((weight, idx, torch.tensor([ctx.config.centre_tap])))
    mean_tap, var_tap, tap = norm_taps(ctx.config.edge_dim, ctx.config.centre_tap)
    if mean is not None:
        if var_tap is None:
            raise ctx.unsupported(node, "storing running statistics needs at least 3 edge features; use a "
                                        "max_kernel with 3 or more taps")
        sources.append((mean, idx, torch.tensor([mean_tap])))
        sources.append((var, idx, torch.tensor([var_tap])))
    if tap is None and eps != DEFAULT_EPS:
        raise ctx.unsupported(node, f"eps={eps} is stored on an edge tap, which needs at least 4 edge features; "
                                    "use a max_kernel with 4 or more taps")
    b.add_edges(x.nodes, out, kind, const=None if weight is not None else 1.0, sources=sources,
                tap_consts=() if tap is None else ((tap, eps),))
    if kind == "groupnorm":
        members = b.add_nodes(groups, b.layer[int(out[0])] - 1, role="virtual")
        b.add_identity_edges(members.repeat_interleave(c // groups), out, "group")
    if bias is not None:
        b.add_node_param(out, bias, torch.arange(c))
    return Val(out, x.kind, x.sdims, x.positions)


# ---------------------------------------------------------------------------- functional forms
# A module that calls F.batch_norm / F.layer_norm / ... with its own parameters in forward (timm's BatchNormAct2d,
# LayerNorm2d, any norm + activation fusion) converts like the norm module: the parameters are read in forward.


def _param(ctx, node, p, what: str) -> str | None:
    if p is None:
        return None
    if not isinstance(p, Param):
        raise ctx.unsupported(node, f"its {what} is not a parameter or buffer of the module (a computed tensor or "
                                    "a constant), which the graph cannot store")
    return p.name


def _functional_input(ctx, node, x: Val, c: int, sdims: int | None) -> Val:
    if x.kind == "input":
        shape = ctx.shape(node.all_input_nodes[0])
        if shape is None and sdims is None:
            raise ctx.unsupported(node, "reads the model input, which it accepts as [B, C] features or as a "
                                        "feature map; pass example_input=... to to_neural_graph to fix which")
        sdims = len(shape) - 2 if shape is not None else sdims
        x.nodes, x.kind, x.sdims = ctx.builder.add_inputs(c), ("vec" if sdims == 0 else "map"), sdims
    return x


@function_rule(F.batch_norm)
@takes_params
def _batch_norm(ctx, node, x: Val, running_mean=None, running_var=None, weight=None, bias=None,
                training: bool = False, momentum=0.1, eps: float = DEFAULT_EPS) -> Val:
    if training is not False or running_mean is None or running_var is None:
        raise ctx.unsupported(node, "F.batch_norm normalizes with the batch's statistics (training=True or no "
                                    "running statistics); the graph stores the eval-mode function: call "
                                    "model.eval() first")
    mean = _param(ctx, node, running_mean, "running_mean")
    x = _functional_input(ctx, node, x, math.prod(running_mean.shape), None)
    return normalize(ctx, node, x, x.channels, "batchnorm", _param(ctx, node, weight, "weight"),
                     _param(ctx, node, bias, "bias"), mean, _param(ctx, node, running_var, "running_var"),
                     float(eps))


@function_rule(F.layer_norm)
@takes_params
def _layer_norm(ctx, node, x: Val, normalized_shape, weight=None, bias=None, eps: float = DEFAULT_EPS) -> Val:
    shape = tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else (normalized_shape,)
    if len(shape) != 1 or not isinstance(shape[0], int):
        raise ctx.unsupported(node, f"F.layer_norm over {shape}: only normalization over the last (feature) dim "
                                    "is supported")
    x = _functional_input(ctx, node, x, shape[0], 0)
    return normalize(ctx, node, x, shape[0], "layernorm", _param(ctx, node, weight, "weight"),
                     _param(ctx, node, bias, "bias"), None, None, float(eps))


@function_rule(F.group_norm)
@takes_params
def _group_norm(ctx, node, x: Val, num_groups: int, weight=None, bias=None, eps: float = DEFAULT_EPS) -> Val:
    if x.kind == "input":
        raise ctx.unsupported(node, "F.group_norm on the model input: its channel count is unknown here; put a "
                                    "layer first or use nn.GroupNorm")
    return normalize(ctx, node, x, x.channels, "groupnorm", _param(ctx, node, weight, "weight"),
                     _param(ctx, node, bias, "bias"), None, None, float(eps), int(num_groups))
