"""The :class:`NeuralGraph` data class and the integer vocabularies of its categorical fields.

A neural graph has one node per neuron / channel and one edge per scalar weight (conv edges carry a
whole zero-padded kernel). All fields are plain tensors so graphs batch with the stock PyG
``DataLoader``; no field name contains ``index`` or ``batch`` except ``edge_index``, so PyG offsets
nothing but the edge endpoints when batching.

Fields (N nodes, E edges, D = number of spatial dims of the converter's ``max_kernel``):

===============  ============  ==============================================================
field            shape/dtype   meaning
===============  ============  ==============================================================
``x``            [N, F_node]   col 0: additive term (bias, BatchNorm shift); col 1: 1 if the
                               neuron has a learnable additive term; cols 2, 3: the parameters
                               of its activation (``convert.activations.PARAMETERS``; a
                               ``cosine_attention`` virtual head neuron: its logit scale), else 0
``edge_index``   [2, E] long   source -> target, forward dataflow
``edge_attr``    [E, F_edge]   the flattened, zero-padded, centred kernel (F_edge = prod of
                               ``max_kernel``); a linear weight or an identity edge sits on the
                               centre tap; attention edges use the first 3 taps for (q, k, v), a
                               virtual head neuron's tap 3 for the head's score scale dim
                               (:data:`ATTENTION_SCALE_TAP`)
``node_layer``   [N] long      dataflow depth: 0 for input neurons, 1 + the deepest source else
``node_role``    [N] int8      :data:`ROLES`
``node_pos``     [N] long      position id: index of an input / output neuron; the layer number
                               (``node_layer``) for every other neuron
``node_act``     [N] int16     activation applied by the neuron (:mod:`neuralgraph.convert.activations`)
``node_pool``    [N] int8      pooling applied to the neuron's output map (:data:`POOLS`)
``node_window``  [N, 4*D+3]    local pooling geometry: kernel size (output size for adaptive pooling),
                 int16         stride, padding, dilation per spatial dim, then ceil_mode,
                               count_include_pad, divisor_override (0: none); defaults otherwise.
                               An input neuron (which never pools) of a graph traced at
                               ``example_input``'s sizes: that input's spatial size in the
                               kernel columns (right-aligned), stride columns 0. A window
                               attention's virtual head neuron: its partition's dilation in the
                               dilation columns (1: windows of adjacent positions; ``H / wh``:
                               MaxViT's grid), its roll order in the padding columns (1: the map
                               is rolled before it is padded, timm's Swin)
``node_spatial`` [N] long      0, or 1 + the spatial position of a flatten node
``edge_kind``    [E] int8      :data:`EDGE_KINDS`
``edge_geom``    [E] int32     row of ``geometry`` holding the edge's geometry (offset by the rows of
                               earlier graphs when batched)
``geometry``     [G, 4*D]      the graph's distinct edge geometries, one row each: stride, padding,
                 int16         dilation and kernel size per spatial dim (1, 0, 1, 1 for non-conv
                               edges); ``conv_transpose``: output_padding in the dilation columns;
                               ``subsample``: stride, offset (padding columns), zero padding
                               (dilation columns), span (kernel columns); ``upsample``: stride,
                               offset, (unused), fill size; ``tokens`` / ``position`` edges: start,
                               length, mode (0 range, 1 drop, 2 layout), the target map's spatial
                               shape (zeros: a token sequence), then zeros (:func:`token_geometry`)
===============  ============  ==============================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch_geometric.data import Data

#: Node roles (``node_role``).
ROLES = ("input", "hidden", "output", "virtual")
ROLE = {name: i for i, name in enumerate(ROLES)}



@dataclass(frozen=True)
class EdgeKind:
    """What one edge kind means: the single place a new kind is declared (its id is its table position).

    Args:
        name (str): the kind's name (``EDGE_KINDS[id]``).
        params (bool): its taps hold parameters (weights, norm scales; :class:`~neuralgraph.transforms.
            NormalizeLayers` standardises them); otherwise constants or structure only.
        permutable (bool): its meaning is given by the edge alone, so moving its endpoints with a neuron
            permutation keeps the function (:class:`~neuralgraph.transforms.PermuteNeurons`); ``False`` for
            kinds that couple neurons beyond their edges (GroupNorm groups, attention heads).
        op (str): how :func:`neuralgraph.execute` runs it: ``"scalar"`` (centre tap times the source), ``"conv"``,
            ``"flatten"``, ``"batchnorm"``, ``"instancenorm"``, ``"groupnorm"``, ``"layernorm"``, ``"attention"``,
            ``"product"`` (a factor of the target's product term) or ``"none"`` (structure only).
        reads (str): how the executor reads the source: ``"linear"`` (a feature: a map must be globally pooled or
            a flatten copy), ``"value"`` (globally pooled if the source records it), ``"map"`` (the map itself).
        style (tuple[str, str]): colour and line style when drawn (:mod:`neuralgraph.viz`).
        meaning (str): one line for documentation.
    """

    name: str
    params: bool
    permutable: bool
    op: str
    reads: str
    style: tuple[str, str]
    meaning: str


#: Every edge kind, in id order (append new kinds; the id of a kind never changes).
EDGE_KIND_TABLE = (
    EdgeKind("linear", True, True, "scalar", "linear", ("tab:gray", "-"), "a Linear weight on the centre tap"),
    EdgeKind("conv", True, True, "conv", "map", ("tab:blue", "-"),
             "a convolution kernel, zero-padded and centred; stride, padding, dilation, kernel size in geometry"),
    EdgeKind("residual", False, True, "scalar", "value", ("tab:red", "--"), "a residual addition (1 on the centre)"),
    EdgeKind("identity", False, True, "scalar", "value", ("tab:purple", ":"),
             "a copy of the source, or a constant scale c * x (c on the centre)"),
    EdgeKind("batchnorm", True, True, "batchnorm", "value", ("tab:green", "-"),
             "BatchNorm: gamma on the centre, running mean / var and eps on the first non-centre taps"),
    EdgeKind("layernorm", True, True, "layernorm", "value", ("tab:green", "--"),
             "LayerNorm over the sources of the target layer's layernorm edges"),
    EdgeKind("groupnorm", True, False, "groupnorm", "value", ("tab:cyan", "-"),
             "GroupNorm over the sources of the target's group (see group)"),
    EdgeKind("instancenorm", True, True, "instancenorm", "value", ("tab:cyan", "--"),
             "InstanceNorm: running statistics if tracked, else over space"),
    EdgeKind("attention", True, False, "attention", "value", ("tab:orange", "-"),
             "q, k, v weights (or biases from a virtual head neuron) on taps 0, 1, 2; from a virtual head neuron "
             "tap 3 holds the score scale dim D (scores q . k / sqrt(D); 0: d_H)"),
    EdgeKind("flatten", False, True, "flatten", "map", ("tab:brown", ":"),
             "the source map at the target's position (node_spatial - 1)"),
    EdgeKind("embedding", True, True, "scalar", "linear", ("tab:olive", "-"),
             "an Embedding entry E[t, d] from a one-hot input neuron"),
    EdgeKind("group", False, False, "none", "value", ("tab:pink", ":"),
             "membership of a GroupNorm group (virtual neuron -> its neurons)"),
    EdgeKind("product", False, True, "product", "value", ("tab:olive", "--"),
             "a factor: the target multiplies its product edges' w * v (x * gate: Squeeze-and-Excitation)"),
    EdgeKind("scale", True, True, "scalar", "value", ("tab:purple", "-"),
             "a per-channel scale parameter read in forward (a layer scale gamma * x) on the centre"),
    EdgeKind("tokens", False, True, "tokens", "value", ("tab:brown", "--"),
             "a token-sequence layout: the source's tokens (a map's positions, flattened) shifted by start, the "
             "target's length; token selection x[:, i]; tokens back to a map of the geometry's shape"),
    EdgeKind("position", True, True, "tokens", "value", ("tab:olive", ":"),
             "a learned token or position-embedding entry (class token, pos_embed[t, c]) on the centre, placed at "
             "one token of the target's sequence (or position of its map) by its token constant neuron (geometry "
             "as tokens)"),
    EdgeKind("subsample", False, True, "subsample", "map", ("tab:gray", ":"),
             "every stride-th position of the zero-padded source map from an offset (a large kernel's shifted map "
             "in[c, stride * y + t * dilation - padding], a patch embedding's pixel (i, j) of each patch, "
             "PixelUnshuffle): stride, offset (padding columns), zero padding (dilation columns) and span (kernel "
             "columns): o < (n + 2 * padding - span) // stride + 1 positions"),
    EdgeKind("conv_transpose", True, True, "conv_transpose", "map", ("tab:cyan", "-"),
             "a transposed convolution kernel weight[c_in, c_out], zero-padded and centred; stride, padding, "
             "output_padding (dilation columns) and kernel size in geometry"),
    EdgeKind("upsample", False, True, "upsample", "map", ("tab:gray", "--"),
             "source position o fills target positions o * stride + offset .. + fill (nearest upsampling: fill = "
             "stride; PixelShuffle: fill 1): stride, offset (padding columns), fill (kernel columns)"),
    EdgeKind("self_loop", False, True, "none", "value", ("black", ":"),
             "a self-loop i -> i added for message passing (stock AddSelfLoops through CheckedTransform): no term "
             "of the network (execute refuses graphs with self-loops); plain geometry"),
    EdgeKind("window_bias", True, False, "none", "value", ("tab:orange", ":"),
             "window attention (Swin, MaxViT): the relative position bias of one key -> query offset for one head, "
             "on the centre, from the offset's constant neuron into the head's virtual neuron; geometry: the offset, "
             "the window, the shift and the map size (window_geometry); the partition's dilation (MaxViT's grid) and "
             "roll order (timm's Swin: roll, then pad) in the virtual neuron's node_window"),
    EdgeKind("bias_table", False, False, "none", "value", ("tab:orange", "-."),
             "window attention (Swin V2): a head's whole relative position bias table, w (the constant 16 on the "
             "centre) times the source's value, a (2wh - 1) x (2ww - 1) map by offset (dy + wh - 1, dx + ww - 1): from "
             "the head's continuous position bias neuron (the bias MLP's output for that head, sigmoid) into its "
             "virtual neuron; geometry as window_bias with offset 0 (window_geometry)"),
)
#: Edge kinds (``edge_kind``) by id, and ids by name.
EDGE_KINDS = tuple(k.name for k in EDGE_KIND_TABLE)
EDGE_KIND = {name: i for i, name in enumerate(EDGE_KINDS)}

#: Version of what graphs mean: bump it with any change to the fields or their meaning (a new edge kind, a
#: new node field, a dtype), so that cached graphs (``ZooDataset``) are rebuilt.
FORMAT_VERSION = 16

#: Pooling recorded on the neurons whose output map is pooled (``node_pool``).
POOLS = ("none", "max", "avg", "global_avg", "global_max", "lp", "other", "adaptive_avg", "adaptive_max")
POOL = {name: i for i, name in enumerate(POOLS)}

#: ``eps`` of a normalization edge too short to store it (fewer than 4 taps)
DEFAULT_EPS = 1e-5

#: tap of a virtual head neuron's ``attention`` edges holding the head's score scale dim ``D``: the scores are
#: ``q . k / sqrt(D)`` (MaxViT: ``D = C``, its whole feature dim); 0 (or edges of 3 taps): ``D = d_H``, the scaled
#: dot product
ATTENTION_SCALE_TAP = 3


def plain_geometry(dims: int) -> tuple[int, ...]:
    """``geometry`` row of an edge without geometry (linear, residual, norms, self-loops, ...): stride 1, padding 0,
    dilation 1, kernel size 1 per spatial dim."""
    return (1,) * dims + (0,) * dims + (1,) * dims + (1,) * dims


def token_geometry(start: int, length: int, drop: bool, dims: int, shape: tuple[int, ...] = (),
                   layout: bool = False) -> tuple[int, ...]:
    """``geometry`` row of a ``tokens`` / ``position`` edge: target token ``t`` (``0 <= t < length``) reads
    source token ``start + t`` (zero outside the source); ``drop``: the target is that one token as a feature
    (``x[:, i]``, ``length`` 1); ``layout``: the same positions laid out anew, so the source has exactly
    ``length`` of them (a map's positions as tokens and back: the graph holds the conversion's sizes); ``shape``:
    the target is a map of that spatial shape (``length`` tokens in row-major order: a token sequence back to a
    map, ``x.transpose(1, 2).reshape(B, C, H, W)``), at most ``dims`` dims. Column 2 holds the mode (0 a token
    range, 1 drop, 2 layout); zeros fill the remaining columns."""
    if len(shape) > dims or any(s < 1 for s in shape) or (shape and (drop or math.prod(shape) != length)) or \
            (drop and layout):
        raise ValueError(f"token geometry: map shape {shape} does not hold {length} tokens in at most {dims} dims"
                         + (" (and a dropped token is a feature, not a map or layout)" if drop else ""))
    return (start, length, 2 if layout else int(drop), *shape) + (0,) * (4 * dims - 3 - len(shape))


def window_geometry(offset: tuple[int, int], window: tuple[int, int], shift: tuple[int, int],
                    size: tuple[int, int], dims: int) -> tuple[int, ...]:
    """``geometry`` row of a ``window_bias`` edge (needs a 2-d ``max_kernel``): the key -> query offset
    ``(dy, dx)`` (query minus key position) the bias is added for, the window ``(wh, ww)``, the cyclic shift
    ``(sh, sw)`` (0 where no shift) and the map size ``(H, W)`` the graph attends over (it holds the
    conversion's sizes, like a layout: ``execute`` refuses another). The map, zero-padded at the bottom / right
    to whole windows, is rolled by ``-shift``, cut into windows and attended within each window; positions from
    different regions of the rolled map get -100 added to their scores (Swin's shifted-window mask).

    The partition's dilation ``(dh, dw)`` is a property of the head: the dilation columns of its virtual neuron's
    ``node_window`` (1 by default). Along a dim of window ``w`` and dilation ``d``, the map (padded to whole
    ``w * d`` blocks) is cut into blocks of ``w * d`` positions, and window ``r < d`` of a block holds its
    positions ``t * d + r`` (``t < w``, the tokens in that order, offsets counted in them): dilation 1 gives windows
    of adjacent positions (Swin, MaxViT's block attention), ``H / wh`` one grid over the whole map (MaxViT's grid
    attention: window ``r`` holds positions ``r, r + H / wh, ...``). A dilation other than 1 comes with no shift.
    The roll order is one too: the padding columns of the virtual neuron's ``node_window`` hold 1 along a dim whose
    map is rolled *before* it is padded (timm's Swin; then cropped before it is rolled back), 0 for torchvision's
    pad-then-roll; only a shifted, padded dim has a 1 (elsewhere the two orders are one function)."""
    if dims != 2:
        raise ValueError(f"window attention geometry needs a 2-d max_kernel (8 columns), got {dims} dims")
    return (*offset, *window, *shift, *size)


def norm_taps(edge_dim: int, centre: int) -> tuple[int | None, int | None, int | None]:
    """Taps of ``running_mean``, ``running_var`` and ``eps`` on a normalization edge: the first three that are
    not the centre tap (``None`` where the edge is too short)."""
    free = [t for t in range(edge_dim) if t != centre]
    return tuple(free[i] if i < len(free) else None for i in range(3))


#: Integer per-node fields (all batched by concatenation, none offset).
NODE_CATEGORIES = ("node_layer", "node_role", "node_pos", "node_act", "node_pool", "node_spatial", "node_window")
#: Integer per-edge fields (``edge_geom`` offset by the ``geometry`` rows of earlier graphs when batched).
EDGE_CATEGORIES = ("edge_kind", "edge_geom")

#: dtype of each integer field: the smallest that holds every legal value. Vocabularies and geometry are small
#: (``edge_kind`` 1 byte per edge, ``geometry`` 2 bytes per column per distinct geometry); depths, input / output
#: indices and flatten positions grow with the network and stay int64. ``edge_geom`` is int32, not int16: PyG's
#: collate adds the earlier graphs' table sizes in the field's own dtype, so a batch's index must hold the sum of
#: every graph's table size (int16 would wrap past 32767 rows: a silently wrong batch). Consumers cast to ``long``
#: where they index with a field.
FIELD_DTYPES = {
    "node_layer": torch.long, "node_role": torch.int8, "node_pos": torch.long, "node_act": torch.int16,
    "node_pool": torch.int8, "node_spatial": torch.long, "node_window": torch.int16,
    "edge_kind": torch.int8, "edge_geom": torch.int32, "geometry": torch.int16,
}
if max(len(EDGE_KINDS), len(POOLS), len(ROLES)) > 128:
    raise AssertionError("a vocabulary outgrew its int8 field: widen it in FIELD_DTYPES and bump FORMAT_VERSION")


class FieldRangeError(ValueError):
    """An integer field value outside its dtype (:data:`FIELD_DTYPES`): the graph cannot store it."""


def compact_field(name: str, values: torch.Tensor | list | tuple, what: str = "") -> torch.Tensor:
    """``values`` as field ``name``'s dtype (:data:`FIELD_DTYPES`), refusing any value the dtype cannot hold
    (a cast would wrap it silently).

    Args:
        name (str): the field (``"geometry"``, ``"node_act"``, ...).
        values (Tensor or list): integers.
        what (str, optional): what holds the values, for the error message (e.g. ``"conv edges"``).

    Raises:
        FieldRangeError: a value outside the dtype's range, naming the field, the value and the range.
    """
    dtype = FIELD_DTYPES[name]
    t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=torch.long)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"{name} holds integers, got a {t.dtype} tensor")
    if t.dtype != dtype and t.numel():
        info = torch.iinfo(dtype)
        lo, hi = int(t.min()), int(t.max())
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise FieldRangeError(f"{name} value {bad}{' of ' + what if what else ''} does not fit its dtype "
                             f"{str(dtype).replace('torch.', '')} [{info.min}, {info.max}]: the neural graph format "
                             "cannot store it (a geometry this large, e.g. a token sequence over 32767, is not "
                             "supported)")
    return t.to(dtype)


def geometry_table(rows: torch.Tensor, what: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The ``geometry`` table and ``edge_geom`` index of per-edge geometry rows (for graphs built by hand, and to
    upgrade a graph of format 9 or older, which stored ``edge_conv [E, 4*D]``: ``g.geometry, g.edge_geom =
    geometry_table(old.edge_conv)``).

    Args:
        rows (Tensor): ``[E, 4*D]`` integer geometry per edge.
        what (str, optional): what holds the rows, for error messages.

    Returns:
        tuple[Tensor, Tensor]: ``geometry`` ``[G, 4*D]`` int16 (the distinct rows, sorted) and ``edge_geom``
        ``[E]`` int32.

    Raises:
        FieldRangeError: a value (or the number of distinct rows) outside its field's dtype.
    """
    table, index = torch.unique(rows.long(), dim=0, return_inverse=True)
    compact_field("edge_geom", [table.size(0) - 1], what)
    return compact_field("geometry", table, what), compact_field("edge_geom", index.view(-1), what)


class NeuralGraph(Data):
    """A neural network as a graph: a :class:`torch_geometric.data.Data` with fixed extra fields.

    Built by :func:`neuralgraph.to_neural_graph`; see the module docstring for the fields.
    When batching, ``edge_index`` is offset by the earlier graphs' nodes and ``edge_geom`` by their ``geometry``
    rows; every other field is concatenated along dim 0 unchanged.
    """

    @classmethod
    def from_fields(cls, fields: dict[str, torch.Tensor]) -> "NeuralGraph":
        """``NeuralGraph(**fields)`` without PyG's per-attribute ``__setattr__`` dispatch (10x faster;
        the converter's hot path). Equal to the keyword constructor, which the tests check."""
        g = cls()
        g._store._mapping.update(fields)
        return g

    def __inc__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if key == "edge_index":
            return self.num_nodes
        if key == "edge_geom":
            return self.geometry.size(0)
        return 0

    @property
    def edge_conv(self) -> torch.Tensor:
        """``[E, 4*D]`` int16: every edge's ``geometry`` row, materialised on demand (16 bytes per edge in 2-d: for
        small graphs and inspection; library code indexes ``geometry`` with ``edge_geom``). Read-only."""
        return self.geometry[self.edge_geom.long()]

    @edge_conv.setter
    def edge_conv(self, value: Any) -> None:
        raise AttributeError("edge_conv is derived from geometry and edge_geom since format 11; set those: "
                             "g.geometry, g.edge_geom = neuralgraph.data.graph.geometry_table(rows). Fields of a graph "
                             "of format 9 or older (a per-edge edge_conv) are upgraded the same way (or convert the "
                             "model again)")

    def __getattr__(self, key: str) -> Any:
        if key in ("geometry", "edge_geom") and "_store" in self.__dict__ and "edge_conv" in self._store:
            raise AttributeError(f"this neural graph has no {key}: it is of format 9 or older (per-edge edge_conv). "
                                 "Convert the model again, or upgrade it: g.geometry, g.edge_geom = "
                                 "neuralgraph.data.graph.geometry_table(g._store.pop('edge_conv'))")
        return super().__getattr__(key)

    def __cat_dim__(self, key: str, value: Any, *args, **kwargs) -> Any:
        return -1 if key == "edge_index" else 0

    @property
    def num_node_features(self) -> int:  # noqa: D102 - mirrors Data
        return 0 if self.x is None else self.x.size(-1)

    def input_nodes(self) -> torch.Tensor:
        """Indices of the input neurons, ordered by input position."""
        idx = (self.node_role == ROLE["input"]).nonzero().view(-1)
        return idx[self.node_pos[idx].argsort()]

    def output_nodes(self) -> torch.Tensor:
        """Indices of the output neurons, ordered by output position."""
        idx = (self.node_role == ROLE["output"]).nonzero().view(-1)
        return idx[self.node_pos[idx].argsort()]


# PyG's InMemoryDataset files hold collated NeuralGraphs: let torch.load(weights_only=True) read them
torch.serialization.add_safe_globals([NeuralGraph])
