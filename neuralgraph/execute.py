"""Run a neural graph as a network, from the graph alone: the semantic reference of the format.

Node ``j`` computes

.. math::
    v_j = \\mathrm{act}_j\\Big(b_j + \\sum_{i \\to j} \\mathrm{op}_{ij}(v_i)\\Big)

where ``b_j = x[j, 0]`` and ``op_ij`` is what the edge's kind means (see ``docs/formats.md``, "What a graph
computes"). The graph is run one dataflow layer (``node_layer``) at a time; within a layer the edges are
grouped by kind and evaluated together: the convolution edges of one geometry as one dense convolution, the
scalar-weight edges as one matrix product, normalizations as one element-wise expression per kind.

Values. A neuron's value is ``[B]`` (a feature), ``[B, *S]`` (a feature map) or ``[B, T]`` (a token sequence,
in a graph with attention edges). A global pooling recorded on a neuron (``node_pool``) is applied when a
consumer other than a convolution / flatten edge reads it, and to output neurons.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from neuralgraph.convert.activations import ACTIVATIONS, HEAD_ACTIVATIONS, PARAM_COLUMNS
from neuralgraph.data.graph import (ATTENTION_SCALE_TAP, DEFAULT_EPS, EDGE_KIND, EDGE_KIND_TABLE, POOL, POOLS, ROLE,
                                    EdgeKind, NeuralGraph, norm_taps)

#: activation family -> element-wise function (``softmax`` / ``log_softmax`` act over the neurons of a layer)
ACTIVATION_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "none": lambda x: x, "relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": F.silu, "selu": F.selu, "mish": F.mish,
    "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "relu6": F.relu6, "softsign": F.softsign, "tanhshrink": F.tanhshrink,
    "logsigmoid": F.logsigmoid, "sin": torch.sin, "square": torch.square, "sqrt": torch.sqrt,
    "reciprocal": torch.reciprocal, "exp": torch.exp, "abs": torch.abs, "erf": torch.erf, "cos": torch.cos,
    "log1p": torch.log1p,
}
#: activations with parameters: ``fn(z, a, b)`` with the neurons' parameter columns ``a``, ``b`` (PARAMETERS order)
PARAMETRIC_ACTIVATIONS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "leaky_relu": lambda z, a, b: torch.where(z >= 0, z, z * a),
    "prelu": lambda z, a, b: torch.where(z >= 0, z, z * a),
    "elu": lambda z, a, b: torch.where(z > 0, z, a * torch.expm1(z)),
    "celu": lambda z, a, b: torch.where(z > 0, z, a * torch.expm1(z / a)),
    "softplus": lambda z, a, b: torch.where(z * a > b, z, torch.log1p(torch.exp(z * a)) / a),
    "hardtanh": lambda z, a, b: torch.minimum(torch.maximum(z, a), b),
    "sine": lambda z, a, b: torch.sin(a * z),
}
#: activations normalising over the neurons of one layer that carry them (dim 0 of the stacked values)
LAYER_ACTIVATIONS = {"softmax": torch.softmax, "log_softmax": torch.log_softmax}

_GLOBAL = (POOL["global_avg"], POOL["global_max"])


def _join(a: Tensor, b: Tensor) -> Tensor:
    """``a + b`` for two contributions to one neuron: a per-sample feature (``[B]``, e.g. a Linear read of a
    one-position map) and a map (``[B, *S]``, e.g. a residual read of that same map) are aligned on the batch
    dimension (the feature is constant over the positions) rather than broadcast from the right, which would mix
    the samples of a batch (``[B] + [B, 1, 1]`` is ``[B, 1, B]``)."""
    rank = max(a.dim(), b.dim())
    return _lift(a, rank) + _lift(b, rank)


def _lift(t: Tensor, rank: int) -> Tensor:
    """``t`` with trailing singleton dims up to ``rank``: a per-sample value broadcast over a map's positions."""
    return t.reshape(*t.shape, *([1] * (rank - t.dim())))


def _infer_max_kernel(g: NeuralGraph) -> tuple[int, ...]:
    dims, taps = g.geometry.size(1) // 4, g.edge_attr.size(1)
    k = round(taps ** (1 / dims)) if dims else 0
    if dims == 0 or k ** dims != taps:
        raise ValueError(f"cannot infer max_kernel from {taps} edge features and {dims} spatial dims; pass "
                         "execute(graph, x, max_kernel=...) with the converter's max_kernel")
    return (k,) * dims


@torch.no_grad()
def execute(graph: NeuralGraph, x: Tensor | Sequence[Tensor], *, max_kernel: Sequence[int] | None = None,
            tokens: bool | None = None) -> Tensor:
    """Compute the network a neural graph describes on inputs ``x``, from the graph alone.

    ``execute(to_neural_graph(m), x)`` equals ``m(x)`` (eval mode) to float tolerance: this is what the
    converter promises, and the definition of what a graph means.

    Args:
        graph (NeuralGraph): one graph (not a batch of several).
        x (Tensor or sequence of Tensors): the input, ``[B, C, *S]`` / ``[B, C]``, or ``[B, T, d]`` token
            sequences for a graph with attention edges (a sequence of such tensors feeds the input neurons in
            order, e.g. queries and keys of different lengths).
        max_kernel (tuple[int, ...], optional): the converter's ``max_kernel``; inferred when the edge
            features are a cube of the spatial dims (``(7, 7)`` from 49 taps). (default: ``None``)
        tokens (bool, optional): read ``x`` as token sequences; by default when the graph has attention
            edges and its inputs are not read as maps (a ViT embeds an image). A graph whose inputs feed a
            Linear directly, run on a rank >= 3 input, must be told (an MLP on ``[B, T, d]`` and a map permuted
            channel-last inside the module give the same graph), and so must a graph with attention whose inputs are
            read per position, on a rank >= 4 input holding the input channels both at dim 1 and along the last dim
            (MaxViT's ``PartitionAttentionLayer`` on ``[B, C, H, W]`` and Swin's blocks on ``[B, H, W, C]`` give the
            same graph). (default: ``None``)

    Returns:
        Tensor: the outputs, ``[B, n_out]`` (``[B, n_out, *S]`` for unpooled maps, ``[B, T, n_out]`` for token
        sequences).

    Shapes:
        x: ``[B, C_in, *S]`` or ``[B, T, C_in]``; graph: N nodes, E edges.

    Raises:
        ValueError: a batch of graphs, a graph that is not feed-forward (self-loops, edges into input neurons or
            edges that do not go forward in ``node_layer``: what message-passing transforms add), a ``max_kernel``
            that does not match the graph, an input whose channel count (dim 1, or the last dim of token
            sequences) differs from the graph's input channels, an input layout the graph leaves open (see
            ``tokens``), or outputs of different shapes (a module returning several scales).
    """
    if getattr(graph, "num_graphs", 1) > 1:
        raise ValueError(f"execute runs one graph; got a batch of {graph.num_graphs}: run "
                         "batch.get_example(i) for each")
    _check_feed_forward(graph)
    mk = tuple(max_kernel) if max_kernel is not None else _infer_max_kernel(graph)
    if math.prod(mk) != graph.edge_attr.size(1) or 4 * len(mk) != graph.geometry.size(1):
        raise ValueError(f"max_kernel={mk} does not match the graph ({graph.edge_attr.size(1)} edge features, "
                         f"{graph.geometry.size(1) // 4} spatial dims)")
    return _Run(graph, x, mk, tokens).outputs()


def _check_feed_forward(g: NeuralGraph) -> None:
    """Refuse a graph whose edges do not all go forward: a converted graph's every edge runs from a lower
    ``node_layer`` to a higher one and never into an input neuron. Reversed copies (``ToUndirected``,
    ``AddReverseEdges``) and self-loops (``AddSelfLoops``) are for message passing; the network is the graph
    before them."""
    src, dst = g.edge_index
    loops = src == dst
    into_input = (g.node_role[dst] == ROLE["input"]) & ~loops
    backward = (g.node_layer[dst] <= g.node_layer[src]) & ~loops & ~into_input
    counts = [int(loops.sum()), int(into_input.sum()), int(backward.sum())]
    if not any(counts):
        return
    found = [f"{n} {what}" for n, what in zip(counts, ("self-loops", "edges into input neurons",
                                                       "edges that do not go forward in node_layer")) if n]
    e = int((loops | into_input | backward).nonzero()[0])
    s, d = int(src[e]), int(dst[e])
    raise ValueError(f"execute: the graph is not a feed-forward network: {', '.join(found)} (e.g. edge {s} -> {d}, "
                     f"node_layer {int(g.node_layer[s])} -> {int(g.node_layer[d])}). Reversed edges (ToUndirected, "
                     "AddReverseEdges) and self-loops (AddSelfLoops) are for message passing and change what the "
                     "graph computes: execute the graph before the transform")


def _scores(q: Tensor, k: Tensor, root: float, logit: Tensor | None) -> Tensor:
    """Attention scores of queries ``q`` against keys ``k`` (``[..., T, d]``): the scaled dot product ``q k^T / root``,
    or for a cosine attention head (``logit``: ``exp(min(s, log 100))`` of its logit scale ``s``, Swin V2) the cosine
    similarities (``F.normalize``) times ``logit``."""
    if logit is None:
        return q @ k.transpose(-2, -1) / root
    return F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * logit.to(q.dtype)


class _Run:
    """One execution: per-node values, computed layer by layer."""

    def __init__(self, g: NeuralGraph, x, max_kernel: tuple[int, ...], tokens: bool | None):
        self.g, self.mk = g, max_kernel
        self.centre = 0
        for k in max_kernel:
            self.centre = self.centre * k + k // 2
        self.xs = list(x) if isinstance(x, (tuple, list)) else [x]
        inputs_read = g.edge_kind[torch.isin(g.edge_index[0], g.input_nodes())].cpu()

        def inputs_read_as(how: str) -> bool:
            return bool(torch.isin(inputs_read, torch.tensor(
                [i for i, k in enumerate(EDGE_KIND_TABLE) if k.reads == how])).any())
        # an input is read as a map (not tokens): by a map edge, or as flatten="repeat" copies of its positions
        self.maps_in = inputs_read_as("map") or bool((g.node_spatial[g.input_nodes()] > 0).any())
        if tokens is None:
            # a network with attention reads token sequences [B, T, d], unless it embeds an image
            tokens = not self.maps_in and bool((g.edge_kind == EDGE_KIND["attention"]).any())
            if not tokens and not self.maps_in and any(t.dim() >= 3 for t in self.xs) and inputs_read_as("linear"):
                # a Linear reads the input directly: [B, T, d] (torch applies it to the last dim) and a map
                # [B, C, *S] permuted channel-last inside the module give the same graph
                raise ValueError(f"execute: the graph's inputs feed a Linear directly and the input has shape "
                                 f"{tuple(self.xs[0].shape)}: pass tokens=True for [B, T, d] sequences (features "
                                 "last) or tokens=False for [B, C, *S] maps (channels at dim 1)")
            elif tokens and any(t.dim() >= 4 for t in self.xs) and \
                    sum(t.size(1) for t in self.xs) == sum(t.size(-1) for t in self.xs) == self._input_channels()[1]:
                # inputs read per position (a norm, a residual) into attention: [B, H, W, C] token maps (Swin's
                # blocks) and [B, C, H, W] maps (MaxViT's PartitionAttentionLayer) give the same graph, and this
                # input's dim 1 and last dim both hold the graph's input channels: either reading would run
                raise ValueError(f"execute: the graph's inputs are read per position into attention, and the input "
                                 f"{[tuple(t.shape) for t in self.xs]} has the graph's input channels both at dim 1 "
                                 "and along the last dim: pass tokens=False for [B, C, H, W] maps (channels at dim "
                                 "1, e.g. a model starting with MaxViT's PartitionAttentionLayer) or tokens=True "
                                 "for [B, H, W, C] token maps (features last, e.g. Swin's blocks)")
        self.tokens = tokens
        self.batch = self.xs[0].size(0)
        self.role, self.pool = g.node_role.tolist(), g.node_pool.tolist()
        self.spatial = g.node_spatial.tolist()
        self.val: list[Tensor | None] = [None] * g.num_nodes
        self._read: dict[tuple[int, str], Tensor] = {}
        self._set_inputs()
        self.src_t, self.dst_t = g.edge_index[0].cpu(), g.edge_index[1].cpu()
        # non-input nodes per layer, and edges per (target layer, kind), both in id order
        layer = g.node_layer.cpu()
        nodes = (g.node_role.cpu() != ROLE["input"]).nonzero().view(-1)
        order = nodes[torch.argsort(layer[nodes], stable=True)]
        layers, counts = torch.unique_consecutive(layer[order], return_counts=True)
        by_layer = dict(zip(layers.tolist(), order.split(counts.tolist())))
        n_kinds = len(EDGE_KIND_TABLE)
        key = layer[self.dst_t] * n_kinds + g.edge_kind.cpu()
        order = torch.argsort(key, stable=True)
        keys, counts = torch.unique_consecutive(key[order], return_counts=True)
        self.edges: dict[int, list[tuple[EdgeKind, Tensor]]] = defaultdict(list)
        for k, e in zip(keys.tolist(), order.split(counts.tolist())):
            self.edges[k // n_kinds].append((EDGE_KIND_TABLE[k % n_kinds], e))
        self.windows = self._windows()
        for layer_id in sorted(by_layer):
            self._run_layer(layer_id, by_layer[layer_id].tolist())

    def _windows(self) -> dict[int, tuple[tuple[int, ...], Tensor]]:
        """Per virtual head neuron of a window attention: its geometry (window, shift, map size, then the partition's
        dilation from the dilation columns of its ``node_window``) and its relative position bias
        ``[2 wh - 1, 2 ww - 1]`` (by offset ``dy, dx``), from its ``window_bias`` edges."""
        g, out = self.g, {}
        e = (g.edge_kind == EDGE_KIND["window_bias"]).nonzero().view(-1).cpu()
        et = (g.edge_kind == EDGE_KIND["bias_table"]).nonzero().view(-1).cpu()
        if (e.numel() or et.numel()) and len(self.mk) != 2:
            raise ValueError("window_bias / bias_table edges need a 2-d max_kernel")
        geom = g.geometry[g.edge_geom[e].long()].long().cpu() if e.numel() else None
        tables = {}  # Swin V2: virtual head neuron -> (source neuron, w), its bias table read when the head runs
        for i in et.tolist():
            h = int(self.dst_t[i])
            row = g.geometry[int(g.edge_geom[i])].long().tolist()
            if h in tables or bool((self.dst_t[e] == h).any()) or row[:2] != [0, 0]:
                raise ValueError(f"virtual head neuron {h}: more than one bias_table edge, or window_bias edges beside "
                                 "it, or a bias_table edge with an offset (a corrupt graph)")
            tables[h] = (int(self.src_t[i]), g.edge_attr[i, self.centre])
            out[h] = self._partition(h, row[2:8], None)
        for h in torch.unique(self.dst_t[e]).tolist():
            mine = (self.dst_t[e] == h).nonzero().view(-1)
            rows = geom[mine]
            spec = rows[:, 2:8].unique(dim=0)
            wh, ww = spec[0, :2].tolist()
            offsets = rows[:, :2] + torch.tensor([wh - 1, ww - 1])                      # table row / column
            size = torch.tensor([2 * wh - 1, 2 * ww - 1])
            inside = bool(((offsets >= 0) & (offsets < size)).all())
            one_each = mine.numel() == int(size.prod()) and offsets.unique(dim=0).size(0) == mine.numel()
            if spec.size(0) != 1 or not inside or not one_each:
                raise ValueError(f"virtual head neuron {h}: its window_bias edges do not hold one bias per offset of one "
                                 "window (a corrupt graph)")
            table = g.edge_attr.new_zeros(2 * wh - 1, 2 * ww - 1)
            table[offsets[:, 0], offsets[:, 1]] = g.edge_attr[e[mine], self.centre]
            out[h] = self._partition(h, spec[0].tolist(), table)
        self.tables = tables
        return out

    def _partition(self, h: int, spec: list[int], table: Tensor | None) -> tuple[tuple[int, ...], Tensor | None]:
        """A window attention head's geometry (window, shift, map size from its bias edges' ``spec``, then the
        partition's dilation and roll order from its virtual neuron's ``node_window``), checked, with its bias
        ``table`` (``None``: read from its ``bias_table`` source when the head runs)."""
        g = self.g
        (wh, ww), shift, (mh, mw) = spec[:2], spec[2:4], spec[4:6]
        dilation = g.node_window[h, 6:8].tolist()                                     # the dilation columns (2-d)
        roll_first = g.node_window[h, 4:6].tolist()                                   # the padding columns (2-d)
        if min(wh, ww, *dilation) < 1 or (dilation != [1, 1] and (any(shift) or mh % (wh * dilation[0]) or
                                                                   mw % (ww * dilation[1]))):
            raise ValueError(f"virtual head neuron {h}: a window partition of dilation {dilation} needs windows of "
                             f"at least one position, no shift and a map of whole dilated windows; window "
                             f"{[wh, ww]}, shift {shift}, map {[mh, mw]} (a corrupt graph)")
        if any(r not in (0, 1) or (r and not s) for r, s in zip(roll_first, shift)):
            raise ValueError(f"virtual head neuron {h}: its roll order {roll_first} (padding columns of node_window) "
                             f"is not 0 / 1 per dim, or 1 along a dim without shift {shift} (a corrupt graph)")
        return tuple(spec) + tuple(dilation) + tuple(roll_first), table

    # ------------------------------------------------------------------------------------------ inputs
    def _input_channels(self) -> tuple[list[int], int]:
        """The input channel each input neuron holds (in ``input_nodes`` order) and the number of input channels.
        flatten="repeat" copies of an input channel (node_spatial = position + 1) follow the channel's own input
        neuron, or stand in its place if nothing else reads it: they hold the channel's value at their position."""
        spatial = self.g.node_spatial[self.g.input_nodes()].tolist()
        channels, channel, after_original = [], -1, False
        for pos in spatial:
            if pos == 0 or (pos == 1 and not after_original):
                channel += 1
            channels.append(channel)
            after_original = pos == 0
        return channels, channel + 1

    def _set_inputs(self) -> None:
        g = self.g
        dim = -1 if self.tokens else 1
        if any(t.dim() < 2 for t in self.xs):
            raise ValueError(f"execute: inputs of shape {[tuple(t.shape) for t in self.xs]}; expected [B, C, *S], "
                             "[B, C] or [B, T, d] (a batch dim first)")
        cols = [t.select(dim, c) for t in self.xs for c in range(t.size(dim))]
        inputs = g.input_nodes().tolist()
        channels, n_in = self._input_channels()
        if n_in != len(cols):
            where = "the last dim (token sequences)" if self.tokens else "dim 1 (channels)"
            hint = "; for [B, T, d] token sequences pass tokens=True" if not (self.tokens or self.maps_in) and any(
                t.dim() >= 3 for t in self.xs) and sum(t.size(-1) for t in self.xs) == n_in else \
                "; for [B, C, *S] maps (channels at dim 1) pass tokens=False" if self.tokens and any(
                    t.dim() >= 3 for t in self.xs) and sum(t.size(1) for t in self.xs) == n_in else ""
            raise ValueError(f"execute: the graph has {n_in} input channels, the input "
                             f"{[tuple(t.shape) for t in self.xs]} has {len(cols)} along {where}{hint}")
        dims = len(self.mk)
        for i, channel in zip(inputs, channels):
            pos = self.spatial[i]
            self.val[i] = cols[channel] if pos == 0 else cols[channel].flatten(1)[:, pos - 1]
            window = g.node_window[i].tolist()
            if pos == 0 and not any(window[dims:2 * dims]):  # stride 0: the size the graph was traced at
                held, size = window[:dims], list(self.val[i].shape[1:])
                while len(held) > max(len(size), 1) and held[0] == 1:  # right-aligned: leading 1s pad it
                    held = held[1:]
                if held != size:
                    raise ValueError(f"execute: the graph was converted at input size {held} (its module's forward "
                                     f"computes with its input's sizes, so it was traced at example_input's), but "
                                     f"this input is {list(self.val[i].shape[1:])}: execute it at that size, or "
                                     "convert again with an example_input of this size")

    # ------------------------------------------------------------------------------------------ reads
    def read(self, i: int, how: str) -> Tensor:
        """Neuron ``i``'s value as an edge reads it, after the local pooling it records (which every reader sees):
        ``"map"`` (convolution, flatten: the map itself; a global pooling as a one-position map), ``"linear"``
        (linear, embedding: a feature; a globally pooled map pooled, a flatten copy at its position, any other
        map per position) or ``"value"`` (everything else, and outputs: globally pooled if the neuron records a
        global pooling)."""
        key = (i, how)
        if key in self._read:
            return self._read[key]
        v = self.local(i)
        if v.dim() > 1 and self.pool[i] in _GLOBAL:
            pooled = v.flatten(1).mean(1) if self.pool[i] == POOL["global_avg"] else v.flatten(1).amax(1)
            # a convolution / flatten edge reads a global pooling as a one-position map
            v = pooled.view(*pooled.shape, *([1] * (v.dim() - 1))) if how == "map" else pooled
        if how == "linear" and v.dim() > 1 and not self.tokens:
            if self.spatial[i] > 0:  # a flatten="repeat" copy of a channel: its value at the copy's position
                v = v.flatten(1)[:, self.spatial[i] - 1]
            elif self.pool[i] == POOL["none"] and v[0].numel() == 1:  # a one-position map
                v = v.flatten(1)[:, 0]
            # else: an unpooled map read per position (a Linear on channel-last maps, like a 1x1 convolution)
        self._read[key] = v
        return v

    def local(self, i: int) -> Tensor:
        """Neuron ``i``'s value after the local pooling it records (``node_pool`` max / avg / adaptive, geometry
        in ``node_window``); else its value."""
        v, kind = self.val[i], POOLS[self.pool[i]]
        if kind not in ("max", "avg", "adaptive_avg", "adaptive_max"):
            return v
        sd, dims = v.dim() - 1, len(self.mk)
        w = self.g.node_window[i].tolist()
        kernel, stride, pad, dil = (w[a * dims + dims - sd:(a + 1) * dims] for a in range(4))
        ceil, include_pad, divisor = w[4 * dims:]
        x = v.unsqueeze(1)                                                            # [B, 1, *S]
        if kind == "max":
            out = getattr(F, f"max_pool{sd}d")(x, kernel, stride, pad, dil, bool(ceil))
        elif kind == "avg":
            extra = (divisor or None,) if sd > 1 else ()
            out = getattr(F, f"avg_pool{sd}d")(x, kernel, stride, pad, bool(ceil), bool(include_pad), *extra)
        else:
            out = getattr(F, f"{kind}_pool{sd}d")(x, kernel)
        return out.squeeze(1)

    def stacked(self, nodes: list[int], how: str) -> list[tuple[list[int], Tensor]]:
        """The reads of ``nodes`` stacked per shape: ``(positions in nodes, [n, B, *S])`` per shape."""
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        reads = [self.read(i, how) for i in nodes]
        for k, v in enumerate(reads):
            by_shape[tuple(v.shape)].append(k)
        return [(pos, torch.stack([reads[k] for k in pos])) for pos in by_shape.values()]

    def _split(self, e: Tensor, how: str):
        """Edges ``e`` grouped by the shape of their sources' reads. Yields ``(sel, targets, sl, dl, stack)``:
        the positions in ``e`` of the group's edges, its distinct targets, the local source / target index of
        each of its edges, and the stacked source reads ``[Cs, B, *S]``; a map read of a feature ``[B]`` (a Linear
        of a one-position map) is a one-position map ``[Cs, B, 1, ...]``."""
        src, dst = self.src_t[e], self.dst_t[e]
        usrc, sinv = torch.unique(src, return_inverse=True)
        for pos, stack in self.stacked(usrc.tolist(), how):
            if how == "map" and stack.dim() == 2:
                stack = stack.view(*stack.shape, *([1] * len(self.mk)))
            local = torch.full((usrc.numel(),), -1, dtype=torch.long)
            local[torch.tensor(pos)] = torch.arange(len(pos))
            sl = local[sinv]
            sel = (sl >= 0).nonzero().view(-1)
            udst, dl = torch.unique(dst[sel], return_inverse=True)
            yield sel, udst.tolist(), sl[sel], dl, stack

    # ------------------------------------------------------------------------------------------ layers
    def _run_layer(self, layer: int, nodes: list[int]) -> None:
        g = self.g
        pre: dict[int, Tensor] = {}

        def add(dst: list[int], terms: Tensor) -> None:  # terms: [len(dst), B, ...]
            for j, t in zip(dst, terms):
                pre[j] = t if j not in pre else _join(pre[j], t)

        for kind, e in self.edges.get(layer, []):
            if kind.op == "conv":
                self._conv(e, add)
            elif kind.op == "flatten":
                self._flatten(e, add)
            elif kind.op in ("batchnorm", "instancenorm", "layernorm", "groupnorm"):
                self._norm(kind.op, e, add)
            elif kind.op == "attention":
                self._attention(e, add)
            elif kind.op == "product":
                self._product(e, add)
            elif kind.op == "tokens":
                self._tokens(e, add)
            elif kind.op == "subsample":
                self._subsample(e, add)
            elif kind.op == "upsample":
                self._upsample(e, add)
            elif kind.op == "conv_transpose":
                self._conv_transpose(e, add)
            elif kind.op == "scalar":  # the centre tap times the source's value
                self._scalar(e, kind.reads, add)
            elif kind.op != "none":
                raise ValueError(f"edge kind {kind.name!r} has no executor operation {kind.op!r}")
        bias = g.x[:, 0]
        # stack the neurons by shape and activation, add the bias and apply the activation
        groups: dict[tuple, list[int]] = defaultdict(list)
        for j in nodes:
            if j not in pre:
                pre[j] = bias.new_zeros(self.batch)  # no inputs: the bias alone (a constant neuron)
            groups[(tuple(pre[j].shape), int(g.node_act[j]))].append(j)
        for (shape, act), members in groups.items():
            z = torch.stack([pre[j] for j in members]) + bias[torch.tensor(members)].view(-1, *([1] * len(shape)))
            family = ACTIVATIONS[act]
            if family in LAYER_ACTIVATIONS:
                out = LAYER_ACTIVATIONS[family](z, 0)
            elif family in PARAMETRIC_ACTIVATIONS:  # per-neuron parameters from the node feature columns
                p = g.x[torch.tensor(members)][:, list(PARAM_COLUMNS)].to(z.dtype).view(-1, 2, *([1] * len(shape)))
                out = PARAMETRIC_ACTIVATIONS[family](z, p[:, 0], p[:, 1])
            elif family in ACTIVATION_FUNCTIONS:
                out = ACTIVATION_FUNCTIONS[family](z)
            elif family in HEAD_ACTIVATIONS:  # a virtual head neuron's score function: its attention applies it
                out = z
            else:
                raise ValueError(f"activation {ACTIVATIONS[act]!r} has no executor function; add it to "
                                 "ACTIVATION_FUNCTIONS in neuralgraph/execute.py")
            for j, v in zip(members, out):
                self.val[j] = v

    def _scalar(self, e: Tensor, how: str, add) -> None:
        """``w * v_i`` summed per target: one (dense or scattered) matrix product per source shape."""
        w_all = self.g.edge_attr[e, self.centre]
        for sel, udst, sl, dl, stack in self._split(e, how):
            w = w_all[sel].to(stack.dtype)
            flat = stack.reshape(stack.size(0), -1)                                   # [Cs, B*S]
            if len(udst) * stack.size(0) <= 16 * sel.numel() + 4096:
                weight = stack.new_zeros(len(udst), stack.size(0)).index_put_((dl, sl), w, accumulate=True)
                out = weight @ flat                                                   # [Cd, B*S]
            else:
                out = stack.new_zeros(len(udst), flat.size(1)).index_add_(0, dl, w.view(-1, 1) * flat[sl])
            add(udst, out.view(len(udst), *stack.shape[1:]))

    def _product(self, e: Tensor, add) -> None:
        """Product edges: the product over a target's product edges of ``w * v_i``, a pooled (``[B]`` or
        ``[B, 1, ...]``) factor broadcast over the positions of a map (a per-channel gate)."""
        w = self.g.edge_attr[e, self.centre]
        factors: dict[int, list[Tensor]] = defaultdict(list)
        for k, (i, j) in enumerate(zip(self.src_t[e].tolist(), self.dst_t[e].tolist())):
            factors[j].append(w[k] * self.read(i, "value"))
        for j, fs in factors.items():
            rank = max(f.dim() for f in fs)
            out = _lift(fs[0], rank)
            for f in fs[1:]:
                out = out * _lift(f, rank)
            add([j], out.unsqueeze(0))

    def _geometries(self, e: Tensor, columns: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The edges ``e`` grouped by their ``geometry`` row (or its first ``columns``): per distinct row, the row
        and the positions in ``e`` of the edges that have it."""
        used, inverse = torch.unique(self.g.edge_geom[e].long(), return_inverse=True)  # table rows of e's edges
        rows = self.g.geometry[used].long()
        # rows equal in their first `columns` (or repeated in a table built by hand) form one group
        uniq, row_group = torch.unique(rows if columns is None else rows[:, :columns], dim=0, return_inverse=True)
        group = row_group[inverse]                                                    # [len(e)]
        for u in range(uniq.size(0)):
            yield uniq[u], (group == u).nonzero().view(-1)

    def _tokens(self, e: Tensor, add) -> None:
        """Token edges (``tokens``, ``position``): ``w`` times the source read as a token sequence (a map's positions
        flattened, a ``[B]`` value one token), target token ``t < length`` reading source token ``start + t`` (zero
        outside it); mode 1 (drop): the one token as a feature ``[B]``; mode 2 (layout): the source has exactly
        ``length`` tokens (else the input is not of the conversion's size); a map shape: the ``length`` tokens as a
        map of that shape, row-major (geometry ``data.graph.token_geometry``)."""
        w_all = self.g.edge_attr[e, self.centre]
        for row, eg in self._geometries(e, columns=3 + len(self.mk)):
            start, length, mode, *shape = row.tolist()
            shape, drop = [s for s in shape if s > 0], mode == 1
            for sel, udst, sl, dl, stack in self._split(e[eg], "value"):
                seq = stack.reshape(stack.size(0), stack.size(1), -1)                  # [Cs, B, P]
                if mode == 2 and seq.size(2) != length:
                    raise ValueError(f"the graph lays out {length} positions here, but this input gives "
                                     f"{seq.size(2)}: it was converted for inputs of another size (the token / "
                                     "map layouts hold the conversion's sizes); execute it at that size")
                left, right = max(0, -start), max(0, start + length - seq.size(2))
                seq = F.pad(seq, (left, right))[:, :, start + left:start + left + length]  # [Cs, B, length]
                if drop:
                    seq = seq[:, :, 0]                                                # [Cs, B]
                elif shape:
                    seq = seq.reshape(*seq.shape[:2], *shape)                         # [Cs, B, *shape]
                w = w_all[eg[sel]].to(seq.dtype).view(-1, *([1] * (seq.dim() - 1)))
                out = seq.new_zeros(len(udst), *seq.shape[1:]).index_add_(0, dl, w * seq[sl])
                add(udst, out)

    def _subsample(self, e: Tensor, add) -> None:
        """Subsample edges: output position ``o`` reads source position ``o * stride + offset - padding`` per spatial
        dim (zero outside the source), for ``o < (n + 2 * padding - span) // stride + 1`` (stride, offset, padding and
        span in the four column groups of ``geometry``), times the centre tap. A convolution's shifted map of kernel
        offset ``t`` has offset ``t * dilation`` and span ``dilation * (k - 1) + 1``."""
        dims, w_all = len(self.mk), self.g.edge_attr[e, self.centre]
        for row, eg in self._geometries(e):
            stride, offset, padding, span = row.view(4, dims).tolist()
            for sel, udst, sl, dl, stack in self._split(e[eg], "map"):
                sd = stack.dim() - 2
                lead = dims - sd                                                     # unused leading dims
                pads = [p for d in reversed(range(lead, dims)) for p in (padding[d], padding[d])]
                stack = F.pad(stack, pads) if any(pads) else stack                    # [Cs, B, *(S + 2p)]
                index = [slice(None), slice(None)]
                for d in range(lead, dims):
                    n_out = (stack.size(2 + d - lead) - span[d]) // stride[d] + 1
                    index.append(slice(offset[d], offset[d] + stride[d] * (n_out - 1) + 1, stride[d]))
                sub = stack[tuple(index)]                                             # [Cs, B, *S']
                w = w_all[eg[sel]].to(sub.dtype).view(-1, *([1] * (sub.dim() - 1)))
                add(udst, sub.new_zeros(len(udst), *sub.shape[1:]).index_add_(0, dl, w * sub[sl]))

    def _upsample(self, e: Tensor, add) -> None:
        """Upsample edges: source position ``o`` fills target positions ``o * stride + offset`` to ``+ fill`` per
        spatial dim (stride, offset, fill in the stride, padding and kernel columns of ``geometry``); the target
        has ``stride`` times the source's positions."""
        dims, w_all = len(self.mk), self.g.edge_attr[e, self.centre]
        for row, eg in self._geometries(e):
            stride, offset, _, fill = row.view(4, dims).tolist()
            for sel, udst, sl, dl, stack in self._split(e[eg], "map"):
                sd = stack.dim() - 2
                up = stack
                for d in range(sd):  # each position to a block of `stride`, the value in [offset, offset + fill)
                    k = dims - sd + d
                    block = torch.zeros(stride[k], dtype=stack.dtype)
                    block[offset[k]:offset[k] + fill[k]] = 1
                    up = (up.unsqueeze(3 + d) * block.view(-1, *([1] * (sd - 1 - d)))).flatten(2 + d, 3 + d)
                w = w_all[eg[sel]].to(up.dtype).view(-1, *([1] * (up.dim() - 1)))
                add(udst, up.new_zeros(len(udst), *up.shape[1:]).index_add_(0, dl, w * up[sl]))

    def _conv_transpose(self, e: Tensor, add) -> None:
        """Transposed convolution edges: per geometry, one dense ``conv_transpose`` with a ``[Cs, Cd, *k]`` kernel
        (each edge's kernel cropped from the centred padding), stride, padding and output_padding from
        ``geometry``."""
        g, mk, dims = self.g, self.mk, len(self.mk)
        for row, pos in self._geometries(e):
            eg = e[pos]
            stride, pad, out_pad, ksize = row.view(4, dims).tolist()
            for sel, udst, sl, dl, stack in self._split(eg, "map"):
                sd = stack.dim() - 2
                crop = tuple(slice((K - k) // 2, (K - k) // 2 + k) for K, k in zip(mk[dims - sd:], ksize[dims - sd:]))
                kern = g.edge_attr[eg[sel]].view(-1, *mk)[(slice(None),) + tuple(K // 2 for K in mk[:dims - sd])]
                kern = kern[(slice(None),) + crop].to(stack.dtype)
                weight = stack.new_zeros(stack.size(0), len(udst), *kern.shape[1:])
                weight.index_put_((sl, dl), kern, accumulate=True)                     # [Cs, Cd, *k]
                fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[sd]
                out = fn(stack.movedim(0, 1), weight, stride=stride[dims - sd:], padding=pad[dims - sd:],
                         output_padding=out_pad[dims - sd:])                          # [B, Cd, *S']
                add(udst, out.movedim(1, 0))

    def _flatten(self, e: Tensor, add) -> None:
        """Flatten edges: the source map at the target's position (``node_spatial - 1``)."""
        spatial = self.g.node_spatial.cpu()
        for sel, udst, sl, dl, stack in self._split(e, "map"):
            pos = spatial[self.dst_t[e[sel]]] - 1
            terms = stack.flatten(2)[sl, :, pos]                                      # [E, B]
            add(udst, stack.new_zeros(len(udst), stack.size(1)).index_add_(0, dl, terms))

    def _conv(self, e: Tensor, add) -> None:
        """Convolution edges: per geometry and source shape, one dense convolution with a ``[Cd, Cs, *k]`` kernel.
        Tap ``u`` of a padded kernel (size ``K``) of an edge with kernel size ``k``, padding ``p`` and dilation
        ``d`` reads input position ``o * stride - p + (u - (K - k) // 2) * d`` for output ``o``: the ``k`` taps
        from ``(K - k) // 2`` on are the kernel, read from ``edge_attr`` alone (not the whole padded rows)."""
        g, mk, dims = self.g, self.mk, len(self.mk)
        for row, pos in self._geometries(e):
            eg = e[pos]
            geometry = row.view(4, dims).tolist()
            for sel, udst, sl, dl, stack in self._split(eg, "map"):
                sd = stack.dim() - 2                                                  # spatial dims of the source
                stride, pad, dil, ksize = (t[dims - sd:] for t in geometry)
                # flat taps of the kernel inside the padded one; lower-dim kernels sit in the centre of the leading
                # dims
                full = (1,) * (dims - sd) + tuple(ksize)
                grid = torch.stack(torch.meshgrid(*(torch.arange(k) + (K - k) // 2 for K, k in zip(mk, full)),
                                                  indexing="ij")).view(dims, -1)
                taps = sum(grid[d] * math.prod(mk[d + 1:]) for d in range(dims))       # [prod(k)]
                kern = g.edge_attr[eg[sel].view(-1, 1), taps.view(1, -1)].view(-1, *ksize).to(stack.dtype)
                weight = stack.new_zeros(len(udst), stack.size(0), *ksize)
                weight.index_put_((dl, sl), kern, accumulate=True)                     # [Cd, Cs, *k]
                conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[sd]
                out = conv(stack.movedim(0, 1), weight, stride=stride, padding=pad, dilation=dil)  # [B, Cd, *S']
                add(udst, out.movedim(1, 0))

    def _norm(self, kind: str, e: Tensor, add) -> None:
        """Normalization edges: ``(v - mean) / sqrt(var + eps) * gamma`` with ``gamma`` on the centre tap and
        ``eps`` on its tap; the statistics by kind (see ``docs/formats.md``)."""
        w = self.g.edge_attr[e]
        mean_tap, var_tap, eps_tap = norm_taps(w.size(1), self.centre)
        eps = w[:, eps_tap] if eps_tap is not None else torch.full((e.numel(),), DEFAULT_EPS, dtype=w.dtype)
        gamma = w[:, self.centre]
        if kind == "layernorm":  # over every source of this layer's layernorm edges
            ((_, stack),) = self.stacked(self.src_t[e].tolist(), "value")
            mean, var = stack.mean(0, keepdim=True), stack.var(0, unbiased=False, keepdim=True)
            shape = (-1,) + (1,) * (stack.dim() - 1)
            terms = (stack - mean) / torch.sqrt(var + eps.view(shape)) * gamma.view(shape)
            add(self.dst_t[e].tolist(), terms)
            return
        for sel, udst, sl, dl, stack in self._split(e, "value"):
            v = stack[sl]                                                             # [E, B, *S]
            shape = (-1,) + (1,) * (v.dim() - 1)
            over = tuple(range(2, v.dim()))
            if kind == "groupnorm":  # over the group's sources and space
                mean, var = self._group_stats(e[sel], v, over)
            elif kind == "batchnorm" or not over:  # running statistics (eval mode)
                mean, var = w[sel, mean_tap].view(shape), w[sel, var_tap].view(shape)
            else:  # instancenorm: the running statistics if tracked (non-zero variance tap), else over space
                running = (w[sel, var_tap] != 0).view(shape)
                mean = torch.where(running, w[sel, mean_tap].view(shape), v.mean(over, keepdim=True))
                var = torch.where(running, w[sel, var_tap].view(shape), v.var(over, unbiased=False, keepdim=True))
            terms = (v - mean) / torch.sqrt(var + eps[sel].view(shape)) * gamma[sel].view(shape)
            add(udst, stack.new_zeros(len(udst), *v.shape[1:]).index_add_(0, dl, terms))

    def _group_stats(self, e: Tensor, v: Tensor, over: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """Mean and variance per GroupNorm edge ``e`` (sources ``v``: ``[E, B, *S]``) over the sources of its
        target's group (the neurons one virtual neuron feeds through ``group`` edges) and space."""
        g = self.g
        is_group = g.edge_kind.cpu() == EDGE_KIND["group"]
        group_of = torch.full((g.num_nodes,), -1, dtype=torch.long)
        group_of[self.dst_t[is_group]] = self.src_t[is_group]
        _, gid = torch.unique(group_of[self.dst_t[e]], return_inverse=True)          # [E] group per edge
        n_groups = int(gid.max()) + 1
        count = torch.bincount(gid, minlength=n_groups).to(v.dtype).view(-1, 1)
        expand = (-1, v.size(1)) + (1,) * len(over)
        per = v.mean(over) if over else v                                             # [E, B]
        mean = (v.new_zeros(n_groups, v.size(1)).index_add_(0, gid, per) / count)[gid].view(expand)
        sq = (v - mean) ** 2
        sq = sq.mean(over) if over else sq
        var = (v.new_zeros(n_groups, v.size(1)).index_add_(0, gid, sq) / count)[gid].view(expand)
        return mean, var

    def _attention(self, e: Tensor, add) -> None:
        """Attention edges: per head (the head neurons one virtual neuron feeds) ``softmax(Q K^T / sqrt(d_H)) V``,
        where a head neuron's ``Q, K, V`` are the sums over its attention edges of taps 0, 1, 2 times the source
        value (1 for the virtual head neuron, whose edges carry the biases); a head whose virtual neuron has
        ``window_bias`` edges attends within windows of a map (:meth:`_window_attention`)."""
        w = self.g.edge_attr[e, :3]
        virtual = torch.tensor([self.role[i] == ROLE["virtual"] for i in self.src_t[e].tolist()], dtype=torch.bool)
        dst, dl = torch.unique(self.dst_t[e], return_inverse=True)
        n = dst.numel()
        head = torch.full((n,), -1, dtype=torch.long)
        head[dl[virtual]] = self.src_t[e][virtual]
        # the biases (edges from virtual head neurons), then the weighted sums of the sources of each shape
        bias = [w.new_zeros(n).index_add_(0, dl[virtual], w[virtual, r]) for r in range(3)]
        sums: list[Tensor | None] = [None] * 3
        real = (~virtual).nonzero().view(-1)
        for sel, udst, sl, dl_, stack in self._split(e[real], "value"):
            rows = real[sel]
            tgt = dl[rows]
            flat = stack.reshape(stack.size(0), -1)                                   # [Cs, B*T]
            for r in range(3):
                wr = w[rows, r].to(stack.dtype)  # a float32 graph run on a float64 input: its dtype
                if not bool((wr != 0).any()):
                    continue  # a zero tap adds nothing (query edges have no key / value taps)
                weight = stack.new_zeros(n, stack.size(0)).index_put_((tgt, sl), wr, accumulate=True)
                term = (weight @ flat).view(n, *stack.shape[1:])                      # [n, B, T]
                sums[r] = term if sums[r] is None else sums[r] + term
        scale_dims = self._scale_dims(e[virtual])
        for h in torch.unique(head).tolist():
            idx = (head == h).nonzero().view(-1)
            parts = [(torch.zeros_like(bias[r][idx]) if s_ is None else s_[idx], bias[r][idx])
                     for r, s_ in enumerate(sums)]
            root = math.sqrt(scale_dims.get(h) or idx.numel())                      # sqrt(D), D = d_H by default
            logit = None
            if ACTIVATIONS[int(self.g.node_act[h])] == "cosine_attention":  # Swin V2: no key bias, a logit scale
                parts[1] = (parts[1][0], torch.zeros_like(parts[1][1]))
                logit = self.g.x[h, PARAM_COLUMNS[0]].clamp(max=math.log(100.0)).exp()
            if h in self.windows:
                spec, table = self.windows[h]
                if table is None:
                    table = self._bias_table(h, spec)
                add(dst[idx].tolist(), self._window_attention(parts, spec, table, root, logit))
                continue
            q, k, v = ((t + b_.view(-1, *([1] * (t.dim() - 1)))).movedim(0, -1) for t, b_ in parts)  # [B, T, d_H]
            out = torch.softmax(_scores(q, k, root, logit), -1) @ v
            add(dst[idx].tolist(), out.movedim(-1, 0))

    def _bias_table(self, h: int, spec: tuple[int, ...]) -> Tensor:
        """The relative position bias table of the Swin V2 head whose virtual neuron is ``h``: ``w`` times the value of
        its ``bias_table`` edge's source, ``[B, 2 wh - 1, 2 ww - 1]`` by offset."""
        src, w = self.tables[h]
        value = self.read(src, "value")
        rows, cols = 2 * spec[0] - 1, 2 * spec[1] - 1
        if (rows, cols) == (1, 1) and value.dim() == 1:  # a 1 x 1 window's one-offset table: its one-position map
            value = value.view(-1, 1, 1)                 # is read as a feature [B] by the bias MLP's linear edges
        if value.dim() != 3 or tuple(value.shape[1:]) != (rows, cols):
            raise ValueError(f"virtual head neuron {h}: its bias_table source {src} holds a value of shape "
                             f"{tuple(value.shape)}, not the [B, {rows}, {cols}] table of window {list(spec[:2])} (a "
                             "corrupt graph)")
        return w.to(value.dtype) * value

    def _scale_dims(self, e: Tensor) -> dict[int, float]:
        """Per virtual head neuron (the sources of the attention edges ``e``): the scale dim ``D`` its edges hold on tap
        ``ATTENTION_SCALE_TAP`` (scores ``q . k / sqrt(D)``); absent where 0 (``D = d_H``) or the edges are too short."""
        if self.g.edge_attr.size(1) <= ATTENTION_SCALE_TAP or not e.numel():
            return {}
        dims = self.g.edge_attr[e, ATTENTION_SCALE_TAP]
        out = {}
        for h in torch.unique(self.src_t[e]).tolist():
            mine = dims[self.src_t[e] == h]
            if bool((mine != mine[0]).any()) or float(mine[0]) < 0:
                raise ValueError(f"virtual head neuron {h}: its attention edges disagree on the scale dim (tap "
                                 f"{ATTENTION_SCALE_TAP}) or hold a negative one (a corrupt graph)")
            if float(mine[0]) > 0:
                out[h] = float(mine[0])
        return out

    def _window_attention(self, parts: list[tuple[Tensor, Tensor]], spec: tuple[int, ...], table: Tensor,
                          root: float, logit: Tensor | None = None) -> Tensor:
        """One head's window attention over a map (Swin's shifted windows, MaxViT's blocks and grids): ``parts`` the
        (weighted sum of the sources ``[d, B, H, W]``, bias ``[d]``) of q, k and v (the zero-padded positions get the
        bias alone), ``spec`` the window, shift, map size (``data.graph.window_geometry``) and dilation, ``table`` the
        bias by offset (``[2 wh - 1, 2 ww - 1]``, or per sample ``[B, 2 wh - 1, 2 ww - 1]``), ``root`` what the scores
        are divided by (``sqrt(D)``), ``logit`` a cosine attention head's logit scale (:func:`_scores`); returns
        ``[d, B, H, W]``.

        The map is zero-padded at the bottom / right to whole dilated windows (``wh * dh`` rows), rolled by
        ``-shift`` (along a dim whose roll order ``spec[8:10]`` is 1, the map is rolled before it is padded: timm's
        Swin), and cut into windows: along a dim of window ``w`` and dilation ``dl``, blocks of ``w * dl``
        positions, and within a block window ``r < dl`` holds positions ``t * dl + r`` (``t < w``, its tokens in
        that order): dilation 1 is a window of adjacent positions, a dilation of the map's ``n / w`` a grid. Shifted,
        positions of different regions of the padded map (cut by Swin's slices ``[0, -w), [-w, -s), [-s, end)``
        per dim, as Python slices: a dim of shift 0 is one region) attend with -100 added to their scores."""
        (wh, ww), shift, size, (dh, dw) = spec[:2], spec[2:4], spec[4:6], spec[6:8]
        first = [bool(r) and bool(s) for r, s in zip(spec[8:10], shift)]             # dims rolled before padding
        later = [s if not f else 0 for s, f in zip(shift, first)]                   # shifts rolled after padding
        if parts[0][0].dim() == 2 and tuple(size) == (1, 1):  # a one-position map is read as a feature [d, B]
            return self._window_attention([(t.view(*t.shape, 1, 1), b_) for t, b_ in parts], spec, table,
                                          root, logit)[..., 0, 0]
        if parts[0][0].dim() != 4 or tuple(parts[0][0].shape[2:]) != tuple(size):
            raise ValueError(f"the graph's window attention attends over a {size[0]} x {size[1]} map (the "
                             f"conversion's size), but this input gives {tuple(parts[0][0].shape[2:])}: execute it "
                             "at that size")
        d, b, h, w = parts[0][0].shape
        ph, pw = -h % (wh * dh) + h, -w % (ww * dw) + w
        nh, nw, n = ph // (wh * dh), pw // (ww * dw), wh * ww                          # blocks per dim, tokens

        def partition(t: Tensor) -> Tensor:  # [..., pH, pW] -> [..., windows, tokens]
            lead = t.shape[:-2]
            t = t.reshape(*lead, nh, wh, dh, nw, ww, dw)
            k = len(lead)
            t = t.permute(*range(k), k, k + 2, k + 3, k + 5, k + 1, k + 4)              # blocks, dilations, window
            return t.reshape(*lead, nh * dh * nw * dw, n)

        windows = []
        for t, bias in parts:
            t = torch.roll(t, (-shift[0] * first[0], -shift[1] * first[1]), (2, 3)) if any(first) else t
            t = F.pad(t, (0, pw - w, 0, ph - h)) + bias.view(-1, 1, 1, 1)              # [d, B, pH, pW]
            t = torch.roll(t, (-later[0], -later[1]), (2, 3)) if any(later) else t
            windows.append(partition(t).permute(1, 2, 3, 0))                          # [B, nW, N, d]
        q, k, v = windows
        y, x = torch.meshgrid(torch.arange(wh, device=table.device), torch.arange(ww, device=table.device),
                              indexing="ij")
        y, x = y.reshape(-1), x.reshape(-1)
        bias = table[..., y[:, None] - y[None, :] + wh - 1, x[:, None] - x[None, :] + ww - 1]    # [(B,) N, N]
        scores = _scores(q, k, root, logit) + (bias[:, None] if bias.dim() == 3 else bias)
        if any(shift):  # Swin's mask: positions of different regions of the rolled map do not attend (-100)
            region = torch.zeros(ph, pw, dtype=torch.long, device=scores.device)
            cuts = [((0, -wh), (-wh, -shift[0]), (-shift[0], None)), ((0, -ww), (-ww, -shift[1]), (-shift[1], None))]
            for i, (a0, a1) in enumerate(cuts[0]):          # Python slices, as Swin writes them: -0 is 0, so a dim
                for j, (c0, c1) in enumerate(cuts[1]):      # of shift 0 is one region (its last slice, the whole dim)
                    region[a0:a1, c0:c1] = 3 * i + j
            region = partition(region)                                                # [nW, N]
            scores = scores + (region[:, :, None] != region[:, None, :]).to(scores.dtype) * -100.0
        out = torch.softmax(scores, -1) @ v                                           # [B, nW, N, d]
        out = out.permute(3, 0, 1, 2).reshape(d, b, nh, dh, nw, dw, wh, ww)
        out = out.permute(0, 1, 2, 6, 3, 4, 7, 5).reshape(d, b, ph, pw)                # the inverse of partition
        out = torch.roll(out, tuple(later), (2, 3)) if any(later) else out
        out = out[:, :, :h, :w]
        return torch.roll(out, (shift[0] * first[0], shift[1] * first[1]), (2, 3)) if any(first) else out

    # ------------------------------------------------------------------------------------------ outputs
    def outputs(self) -> Tensor:
        nodes = self.g.output_nodes().tolist()
        outs = [self.read(i, "value") for i in nodes]
        shapes = {tuple(o.shape[1:]) for o in outs}
        if len(shapes) > 1:
            first = {}
            for i, o in zip(nodes, outs):
                first.setdefault(tuple(o.shape[1:]), i)
            raise ValueError("execute: the graph's outputs have different shapes (" + ", ".join(
                f"{list(s)} from output neuron {i}" for s, i in first.items()) + "): a module returning maps of "
                "several scales, or a map and a vector; execute returns all outputs as one tensor, so it runs "
                "graphs whose outputs share a shape (convert the part of the module you want to run)")
        return torch.stack(outs, dim=-1 if self.tokens else 1)
