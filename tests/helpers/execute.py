"""Run a neural graph as a network, from the graph alone: the semantic reference for the converter.

Node j computes ``v_j = act_j(b_j + sum_i op_ij(v_i))`` where ``op_ij`` is the edge's operation:
a scalar weight (linear; a map source is globally pooled first), a convolution with the edge's padded
kernel and geometry (conv), the identity (residual / identity edges) or the pick of one spatial position
(flatten). Supports odd kernels and global pooling; enough to check what the converter claims.

A global pooling recorded on a neuron (``node_pool``) is read by every consumer but convolutions and flatten
edges, which read the map. ``flatten="repeat"`` copies (``node_spatial > 0``, not virtual) hold their
channel's value at their position, input copies included. Normalization edges: BatchNorm and InstanceNorm with
running statistics (non-zero variance tap) in eval mode, InstanceNorm over space otherwise, LayerNorm over the
sources of all layernorm edges into the same layer, GroupNorm over the sources of the neurons of its group
(the virtual neuron with ``group`` edges to them); ``eps`` from its tap. Not supported (the graph does not
store what it depends on): local pooling (its kernel and stride).

Attention (see :mod:`neuralgraph.convert.rules.attention`). A graph with attention edges reads token
sequences: ``x`` is ``[B, T, d_in]`` (or a sequence of such tensors whose features feed the input neurons
in order, e.g. query and key / value inputs of different lengths) and every neuron's value is
``[B, T]``; the output is ``[B, T, d_out]`` (``[B, d_out]`` after pooling over tokens). A head neuron's
``Q, K, V`` are the sums over its attention edges of taps 0, 1, 2 times the source value (1 for its
virtual head neuron, whose edges carry the biases); the head neurons sharing a virtual head neuron form
one head and output ``softmax(Q K^T / sqrt(d_H)) V``. A linear edge from a token neuron acts per token,
unless the neuron records a global pooling (over tokens).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from neuralgraph.convert.activations import ACTIVATIONS, parse_variant
from neuralgraph.convert.rules.norm import DEFAULT_EPS, norm_taps
from neuralgraph.data.graph import EDGE_KIND, POOL, ROLE

_FN = {"none": lambda x: x, "relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu,
       "leaky_relu": F.leaky_relu, "silu": F.silu, "elu": F.elu, "celu": F.celu, "softplus": F.softplus,
       "hardtanh": F.hardtanh, "sin": torch.sin}


def _eps(w: Tensor) -> float:
    """A normalization edge's eps (its tap, or the default when the edge has fewer than 4 taps)."""
    tap = norm_taps(w.numel(), w.numel() // 2)[2]
    return DEFAULT_EPS if tap is None else float(w[tap])


def execute(g, x: Tensor | Sequence[Tensor], max_kernel=(7, 7), tokens: bool | None = None) -> Tensor:
    n = g.num_nodes
    val: list[Tensor | None] = [None] * n
    order = torch.argsort(g.node_layer, stable=True).tolist()
    inputs = g.input_nodes().tolist()
    xs = list(x) if isinstance(x, (tuple, list)) else [x]
    if tokens is None:  # a network with attention reads token sequences [B, T, d]
        tokens = bool((g.edge_kind == EDGE_KIND["attention"]).any())
    cols = [t.select(-1 if tokens else 1, c) for t in xs for c in range(t.size(-1 if tokens else 1))]
    # flatten="repeat" copies of an input channel (node_spatial = position + 1) follow the channel's own input
    # neuron, or stand in its place if nothing else reads it: they hold the channel's value at their position
    channel, after_original = -1, False
    for i in inputs:
        pos = int(g.node_spatial[i])
        if pos == 0 or (pos == 1 and not after_original):
            channel += 1
        val[i] = cols[channel] if pos == 0 else cols[channel].flatten(1)[:, pos - 1]
        after_original = pos == 0
    incoming: dict[int, list[int]] = {}
    for e, d in enumerate(g.edge_index[1].tolist()):
        incoming.setdefault(d, []).append(e)
    # attention heads: head neuron -> its virtual head neuron, and the head neurons of each head
    head_of = {d: s for e, (s, d) in enumerate(g.edge_index.t().tolist())
               if g.edge_kind[e] == EDGE_KIND["attention"] and g.node_role[s] == ROLE["virtual"]}
    members: dict[int, list[int]] = {}
    for d, s in head_of.items():
        members.setdefault(s, []).append(d)
    # GroupNorm groups: output neuron -> its group's virtual neuron, and the neurons of each group
    group_of = {d: s for e, (s, d) in enumerate(g.edge_index.t().tolist()) if g.edge_kind[e] == EDGE_KIND["group"]}
    group: dict[int, list[int]] = {}
    for d, s in group_of.items():
        group.setdefault(s, []).append(d)
    norm_src = {d: s for e, (s, d) in enumerate(g.edge_index.t().tolist()) if g.edge_kind[e] == EDGE_KIND["groupnorm"]}
    attended: dict[int, Tensor] = {}
    dims = len(max_kernel)
    for j in order:
        if g.node_role[j] == ROLE["input"]:
            continue
        pre = None
        if j in head_of:  # a head neuron: its head's attention, computed once for all its neurons
            if j not in attended:
                attended.update(_attend(g, val, members[head_of[j]], incoming))
            pre = attended[j]
        for e in incoming.get(j, []):
            i = int(g.edge_index[0, e])
            v = val[i]
            kind = int(g.edge_kind[e])
            if kind not in (EDGE_KIND["conv"], EDGE_KIND["flatten"]):
                v = _global_pool(g, i, v)  # a global pooling recorded on the source: readers of a vector read it
            w = g.edge_attr[e]
            if kind == EDGE_KIND["attention"]:
                continue  # read by _attend
            if kind == EDGE_KIND["linear"]:
                if v.dim() > 1 and not tokens and int(g.node_spatial[i]) > 0 and int(g.node_pool[i]) not in (
                        POOL["global_avg"], POOL["global_max"]):
                    # a flatten="repeat" copy of a channel: the channel's value at the copy's position
                    v = v.flatten(1)[:, int(g.node_spatial[i]) - 1]
                elif v.dim() > 1 and not tokens and int(g.node_pool[i]) == POOL["none"]:
                    # a flattened map of one position feeds its channels directly
                    assert v[0].numel() == 1, "a map feeds a linear layer without pooling or flattening"
                    v = v.flatten(1)[:, 0]
                elif v.dim() > 1 and (not tokens or int(g.node_pool[i]) != POOL["none"]):
                    # a map (or a token sequence) feeding a linear layer: the global pool recorded on the source
                    assert int(g.node_pool[i]) in (POOL["global_avg"], POOL["global_max"])
                    v = v.flatten(1).mean(1) if g.node_pool[i] == POOL["global_avg"] else v.flatten(1).amax(1)
                term = w[w.numel() // 2] * v
            elif kind == EDGE_KIND["conv"]:
                sd = v.dim() - 1
                stride, pad, dil, ksize = g.edge_conv[e].view(4, dims)[:, dims - sd:].tolist()
                kern = w.view(*max_kernel)[(tuple(K // 2 for K in max_kernel[:dims - sd]))]
                # the kernel sits at offset (K - k) // 2 in the padded one: pad so that tap u of the
                # padded kernel reads what tap u - offset of the original read
                spatial_pad = []
                for K, k, p, d in reversed(list(zip(max_kernel[dims - sd:], ksize, pad, dil))):
                    off = (K - k) // 2
                    spatial_pad += [p + off * d, p + (K - k - off) * d]
                conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[sd]
                term = conv(F.pad(v.unsqueeze(1), spatial_pad), kern[None, None], stride=stride,
                            dilation=dil).squeeze(1)
            elif kind == EDGE_KIND["embedding"]:  # token t -> dim d: E[t, d] times the one-hot input
                term = w[w.numel() // 2] * v
            elif kind == EDGE_KIND["flatten"]:
                term = v.flatten(1)[:, int(g.node_spatial[j]) - 1]
            elif kind == EDGE_KIND["batchnorm"]:  # eval mode
                mean, var, _ = norm_taps(w.numel(), w.numel() // 2)
                mean, var = w[mean], w[var]
                term = (v - mean) / torch.sqrt(var + _eps(w)) * w[w.numel() // 2]
            elif kind == EDGE_KIND["instancenorm"]:  # per sample and channel, over space
                mean, var, _ = norm_taps(w.numel(), w.numel() // 2)
                if w[var] != 0:  # track_running_stats: eval mode uses the running statistics
                    term = (v - w[mean]) / torch.sqrt(w[var] + _eps(w)) * w[w.numel() // 2]
                else:
                    over = tuple(range(1, v.dim()))
                    term = (v - v.mean(over, keepdim=True)) / torch.sqrt(
                        v.var(over, unbiased=False, keepdim=True) + _eps(w)) * w[w.numel() // 2]
            elif kind == EDGE_KIND["group"]:  # membership only: no term
                continue
            elif kind == EDGE_KIND["groupnorm"]:  # over the group's sources and space
                stack = torch.stack([val[norm_src[m]] for m in group[group_of[j]]], 1)   # [B, members, *S]
                over = tuple(range(1, stack.dim()))
                shape = (-1,) + (1,) * (v.dim() - 1)
                mean = stack.mean(over).view(shape)
                var = stack.var(over, unbiased=False).view(shape)
                term = (v - mean) / torch.sqrt(var + _eps(w)) * w[w.numel() // 2]
            elif kind == EDGE_KIND["layernorm"]:  # over every source of this layer's layernorm edges
                srcs = [int(g.edge_index[0, f]) for f in range(g.edge_index.size(1))
                        if int(g.edge_kind[f]) == kind and int(g.node_layer[g.edge_index[1, f]]) == int(g.node_layer[j])]
                stack = torch.stack([_global_pool(g, s, val[s]) for s in srcs], dim=-1)
                term = (v - stack.mean(-1)) / torch.sqrt(stack.var(-1, unbiased=False) + _eps(w)) * w[w.numel() // 2]
            else:  # identity / residual edges: the value times the edge's weight (1, or a constant scale)
                term = w[w.numel() // 2] * v
            pre = term if pre is None else pre + term
        bias = g.x[j, 0]
        pre = bias.expand(xs[0].size(0)) if pre is None else pre + bias
        family, params = parse_variant(ACTIVATIONS[int(g.node_act[j])])
        val[j] = _FN[family](pre, **params)
    outs = [_global_pool(g, i, val[i]) for i in g.output_nodes().tolist()]
    return torch.stack(outs, dim=-1 if tokens else 1)


def _global_pool(g, i: int, v: Tensor) -> Tensor:
    """An output neuron's value, globally pooled (over space / tokens) if it records a global pooling."""
    if v.dim() > 1 and int(g.node_pool[i]) in (POOL["global_avg"], POOL["global_max"]):
        return v.flatten(1).mean(1) if g.node_pool[i] == POOL["global_avg"] else v.flatten(1).amax(1)
    return v


def _attend(g, val: list, heads: list[int], incoming: dict[int, list[int]]) -> dict[int, Tensor]:
    """``softmax(Q K^T / sqrt(d_H)) V`` of one head (its head neurons ``heads``), per head neuron."""
    qkv = []
    for j in heads:
        acc = [0.0, 0.0, 0.0]
        for e in incoming[j]:
            if g.edge_kind[e] != EDGE_KIND["attention"]:
                continue
            i = int(g.edge_index[0, e])
            src = 1.0 if g.node_role[i] == ROLE["virtual"] else val[i]
            for r in range(3):
                w = g.edge_attr[e, r]
                if w != 0:  # a zero tap adds nothing (query edges have no key / value taps)
                    acc[r] = acc[r] + w * src
        qkv.append(acc)
    q, k, v = (torch.stack(torch.broadcast_tensors(*[torch.as_tensor(a[r]) for a in qkv]), -1) for r in range(3))
    out = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(len(heads)), -1) @ v  # [B, T, d_H]
    return {j: out[..., c] for c, j in enumerate(heads)}
