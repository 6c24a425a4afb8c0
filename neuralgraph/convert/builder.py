"""The one graph builder: rules add nodes and edges here; :meth:`GraphBuilder.finalize` makes a plan.

Rules never write parameter *values*: they record which parameter element each edge tap or node
feature holds. The plan turns those records into two gathers, so the next model of the same
architecture converts without tracing again.

Neuron state. A rule may only add incoming edges to a neuron, or set its activation, while the
neuron is *open*: not an input, not yet activated, not yet read by another operation (observed),
and not referenced by any value that another, still unprocessed, operation will read. Otherwise the
rule adds a new layer (identity edges) and works on that, so the graph always computes what the
module computes.
"""
from __future__ import annotations

import ctypes
import resource
from dataclasses import dataclass, field

import torch
from torch import Tensor

from neuralgraph.convert.config import ConvertConfig
from neuralgraph.convert.errors import GraphTooLargeError
from neuralgraph.data.graph import EDGE_KIND, ROLE, compact_field, plain_geometry


class Sym:
    """A value known only at run time (a size read from a tensor)."""

    def __repr__(self) -> str:
        return "Sym()"


SYM = Sym()


@dataclass
class Val:
    """What the tracer knows about one tensor of the module's dataflow.

    Args:
        nodes: graph node per channel / feature, ``[C]`` (``None``: an input not yet materialised).
        kind: ``"input"`` (not yet known), ``"vec"`` (features on the last dim), ``"map"`` (channels on
            dim 1, ``sdims`` spatial dims after) or ``"flat"`` (a flattened map: ``C * P`` features,
            channel-major).
        sdims: number of spatial dims of a map.
        positions: number of spatial positions ``P`` of a map / flat value when known.
        name: the ``torch.fx`` node holding this value (set by the tracer; probe features read it).
    """

    nodes: Tensor | None
    kind: str
    sdims: int = 0
    positions: int | None = None
    name: str | None = None

    @property
    def channels(self) -> int:
        return 0 if self.nodes is None else self.nodes.numel()

    @property
    def what(self) -> str:
        """The value's kind in words, for messages."""
        return _KIND_WORDS.get(self.kind, f"a {self.kind} value")


_KIND_WORDS = {"map": "a feature map (channels at dim 1)", "flat": "a flattened feature map", "input": "a model input",
               "vec": "a vector, channel-last map or token sequence (features on the last dim)",
               "index": "embedding indices", "attention": "an attention intermediate"}


class HandedOn:
    """A rule's result that is no neuron value but an input of one other function's rule (Swin's relative position
    bias, read by its window attention). The tracer refuses any other operation on it; subclasses set ``reader``,
    that function's qualified name."""

    reader: str = ""


@dataclass
class Param:
    """A parameter or floating buffer of the module read directly in forward (an fx ``get_attr`` node, e.g. a
    layer scale ``self.gamma * x``, ``F.batch_norm(x, self.running_mean, ...)`` or the weight / bias of
    ``F.linear`` / ``F.conv2d``), not a neuron value.

    Args:
        name: its qualified name in the module.
        shape: its shape as the reading operation sees it; ``reshape`` / ``view`` / ``unsqueeze`` / ``expand``
            keep the element order, so element ``k`` of the flattened parameter is still element ``k`` (an
            ``expand`` keeps the size-1 dims: it is a broadcast).
    """

    name: str
    shape: tuple[int, ...]


@dataclass
class EdgeBlock:
    src: Tensor  # [E] long
    dst: Tensor  # [E] long
    kind: int
    geometry: tuple[int, ...]  # stride, padding, dilation, kernel size per spatial dim
    const: float | None = None  # identity edges: value on the centre tap
    # param-backed taps: (param name, element index [E, T] into the flattened param, tap positions [T])
    sources: list[tuple[str, Tensor, Tensor]] = field(default_factory=list)
    tap_consts: tuple[tuple[int, float], ...] = ()  # constants on other taps (a normalization's eps)


@dataclass
class NodeParam:
    nodes: Tensor  # [n] long
    column: int
    param: str
    elem: Tensor  # [n] long index into the flattened param


class GraphBuilder:
    """Accumulates neurons and edges while the tracer walks the module's dataflow."""

    def __init__(self, config: ConvertConfig, for_graph: bool = True):
        self.config = config
        self.graph_taps = config.edge_dim if for_graph else 0  # edge features a graph built from it allocates
        self.dims = len(config.max_kernel)
        # per-node scalars (python lists: the graph is small at trace time)
        self.layer: list[int] = []
        self.role: list[int] = []
        self.act: list[int] = []
        self.act_param: list[tuple[float, ...]] = []  # the activation's parameters (node feature columns 2, 3)
        self.pool: list[int] = []
        self.window: list[tuple[int, ...]] = []  # local pooling geometry (node_window)
        self.spatial: list[int] = []
        self.has_bias: list[int] = []
        self.const: list[float] = []  # a constant added to the neuron (x + c in forward), not a parameter
        self.guards: dict[str, Tensor] = {}  # buffers read as structure (see guard)
        self.frozen: list[bool] = []
        self.read: list[bool] = []  # read as a value by an edge other than conv / flatten (which read the map)
        self.sourced: list[bool] = []  # read by any edge
        self.pending: list[int] = []
        self.replaced: list[bool] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.edges: list[EdgeBlock] = []
        self.num_edges = 0
        self.num_taps = 0  # parameter elements stored on edges so far
        self.node_params: list[NodeParam] = []
        # neurons of one softmax / log_softmax (normalised together), with the operation for error messages
        self.layer_groups: list[tuple[Tensor, str]] = []
        self.param_shapes: dict[str, tuple[int, ...]] = {}
        self.layers: list[tuple[str, str | None]] = []  # (weight, bias) of linear/conv layers, dataflow order
        # where each neuron's value lives in the traced module (probe features): per node an index into
        # `values` ((fx node name, kind, channels) of a traced tensor) and the channel, -1 if unknown.
        # `touched` counts changes of a neuron (creation, incoming edges, activation, bias) so the value
        # recorded is the one after the last change (e.g. after the activation, not after a pooling).
        self.values: list[tuple[str, str, int]] = []
        self.value_of: list[tuple[int, int]] = []
        self.touched: list[int] = []
        self._seen: list[int] = []
        self.fx_graph = None  # the traced torch.fx.Graph, kept by the plan to evaluate the module

    # ----------------------------------------------------------------------------------------- nodes
    @property
    def num_nodes(self) -> int:
        return len(self.layer)

    def add_nodes(self, count: int, layer: int, role: str = "hidden", spatial: int = 0) -> Tensor:
        start = self.num_nodes
        self.layer += [layer] * count
        self.role += [ROLE[role]] * count
        self.act += [0] * count
        self.act_param += [()] * count
        self.pool += [0] * count
        self.window += [self.default_window()] * count
        self.spatial += [spatial] * count
        self.has_bias += [0] * count
        self.const += [0.0] * count
        self.frozen += [role == "input"] * count
        self.read += [False] * count
        self.sourced += [False] * count
        self.pending += [0] * count
        self.replaced += [False] * count
        self._grow(count)
        return torch.arange(start, start + count)

    def add_inputs(self, count: int) -> Tensor:
        nodes = self.add_nodes(count, layer=0, role="input")
        self.inputs += nodes.tolist()
        return nodes

    def next_layer(self, *sources: Tensor) -> int:
        """Layer number of neurons fed by ``sources``: one deeper than the deepest source."""
        return 1 + max((max(self.layer[i] for i in s.tolist()) for s in sources if s.numel()), default=0)

    def deepen(self, nodes: Tensor, layer: int) -> None:
        """Move open ``nodes`` to at least ``layer`` (they gain an input from a deeper neuron)."""
        for i in nodes.tolist():
            self.layer[i] = max(self.layer[i], layer)

    def is_open(self, nodes: Tensor) -> bool:
        """Whether rules may add incoming edges to / set the activation of all ``nodes``."""
        return all(not self.frozen[i] and self.pending[i] == 0 for i in nodes.tolist())

    def observe(self, nodes: Tensor) -> None:
        """``nodes`` are read by an operation: their value is final from now on."""
        for i in nodes.tolist():
            self.frozen[i] = True

    def set_activation(self, nodes: Tensor, act: int, params: tuple[float, ...] = ()) -> None:
        """Apply activation ``act`` with parameter values ``params`` (node feature columns 2, 3) to ``nodes``."""
        compact_field("node_act", [act], "the activation")
        for i in nodes.tolist():
            self.act[i] = act
            self.act_param[i] = params
            self.frozen[i] = True
            self.touched[i] += 1

    def shared(self, nodes: Tensor) -> bool:
        """Whether any of ``nodes`` has been read as a value (not as a map, as convolutions and flatten edges
        read it), or will be read by another pending operation."""
        return any(self.read[i] or self.pending[i] > 0 for i in nodes.tolist())

    def read_anywhere(self, nodes: Tensor) -> Tensor:
        """Per node of ``nodes``: whether an edge (convolutions included) or a pending operation reads it."""
        return torch.tensor([self.sourced[i] or self.read[i] or self.pending[i] > 0 for i in nodes.tolist()],
                            dtype=torch.bool)

    def set_pool(self, nodes: Tensor, pool: int, window: tuple[int, ...] | None = None) -> None:
        """Record pooling ``pool`` (with the local pooling geometry ``window``) on ``nodes``; their value is
        final from now on (an activation or edge added later goes to a new layer)."""
        if window is not None:
            compact_field("node_window", window, "the pooling window")
        for i in nodes.tolist():
            self.pool[i] = pool
            self.window[i] = window or self.default_window()
        self.observe(nodes)

    def add_pending(self, nodes: Tensor, count: int) -> None:
        for i in nodes.reshape(-1).tolist():
            self.pending[i] += count

    def mark_outputs(self, nodes: Tensor) -> None:
        """Make ``nodes`` the next outputs, in order. A neuron that is an output already (``torch.cat([h, h], 1)``
        returned, or one value returned twice) gets an identity-fed copy, so every output position is a neuron."""
        self.observe(nodes)
        seen, nodes = set(self.outputs), nodes.clone()
        repeat = torch.zeros(nodes.numel(), dtype=torch.bool)
        for k, i in enumerate(nodes.tolist()):
            repeat[k] = i in seen
            seen.add(i)
        if repeat.any():
            copies = self.add_nodes(int(repeat.sum()), self.next_layer(nodes[repeat]))
            self.add_identity_edges(nodes[repeat], copies, "identity")
            nodes[repeat] = copies
        self.outputs += nodes.tolist()

    # ----------------------------------------------------------------------------------------- edges
    def default_window(self) -> tuple[int, ...]:
        """``node_window`` of a neuron without local pooling: kernel, stride 1, padding 0, dilation 1 per dim,
        ceil_mode 0, count_include_pad 1, divisor_override 0."""
        return (1,) * self.dims + (1,) * self.dims + (0,) * self.dims + (1,) * self.dims + (0, 1, 0)

    def add_edges(self, src: Tensor, dst: Tensor, kind: str, *, geometry: tuple[int, ...] | None = None,
                  const: float | None = None, sources: list[tuple[str, Tensor, Tensor]] | None = None,
                  tap_consts: tuple[tuple[int, float], ...] = ()) -> None:
        """Add edges ``src[e] -> dst[e]``; the sources become observed (their value is read)."""
        if src.numel() == 0:
            return
        if geometry is not None:
            compact_field("geometry", geometry, f"{kind} edges")  # refused here, where the rule's module is known
        for i in self._distinct(src):  # each source once: a dense layer lists it once per target
            self.frozen[i] = self.sourced[i] = True  # observed: its value is read
            if kind not in ("conv", "flatten"):
                self.read[i] = True
        for i in self._distinct(dst):
            self.touched[i] += 1
        self.edges.append(EdgeBlock(src.long(), dst.long(), EDGE_KIND[kind], geometry or plain_geometry(self.dims),
                                    const, sources or [], tuple(tap_consts)))
        self.num_edges += src.numel()
        self.num_taps += sum(elem.numel() for _, elem, _ in sources or [])
        self.check_size()

    def _distinct(self, nodes: Tensor) -> list[int]:
        """The distinct ids in ``nodes``: for a large edge list one pass and a flag per node (no sorted copy)."""
        if nodes.numel() * 8 < self.num_nodes:  # a few edges of a large graph: cheaper to sort them
            return torch.unique(nodes).tolist()
        hit = torch.zeros(self.num_nodes, dtype=torch.bool)
        hit[nodes] = True
        return hit.nonzero().view(-1).tolist()

    def estimated_bytes(self, taps: int | None = None) -> int:
        """Memory to convert the graph built so far (the graph with its structure, which a large plan shares, and
        the builder's element lists), with ``taps`` edge features (default: the configuration's)."""
        taps = self.graph_taps if taps is None else taps
        # the peak is the finished graph: edge_attr, edge_index, int8 kind, int32 geometry row per edge (the
        # builder's edge lists are freed before edge_attr is allocated); the builder's element index per parameter
        # element (8 bytes) stands for what the plan keeps of it and the gather's temporaries
        per_edge = 4 * taps + 16 + 1 + 4
        return self.num_edges * per_edge + 8 * self.num_taps

    def check_size(self, edges: int = 0, taps: int = 0) -> None:
        """Raise :class:`GraphTooLargeError` if the graph, with ``edges`` more edges carrying ``taps`` parameter
        elements (a rule about to add them calls this before allocating them), exceeds ``max_edges`` or the
        available memory."""
        self.num_edges += edges
        self.num_taps += taps
        try:
            self._check_size()
        finally:
            self.num_edges -= edges
            self.num_taps -= taps

    def _check_size(self) -> None:
        cfg = self.config
        if cfg.max_edges is not None and self.num_edges > cfg.max_edges:
            raise GraphTooLargeError(f"the graph has more than max_edges={cfg.max_edges:,} edges ({self.num_edges:,} "
                                     f"so far, about {self.estimated_bytes() / 2**30:.1f} GB to convert)")
        if self.num_edges < 2_000_000:
            return
        need, free = self.estimated_bytes(), available_memory()
        if free is not None and need > free:
            taps = self.graph_taps  # 0 for a plan traced only to read graphs back: a smaller max_kernel saves nothing
            fewer = (f"a smaller max_kernel if the model's kernels fit it (edges get only its taps: max_kernel=(3, 3) "
                     f"needs about {self.estimated_bytes(9) / 2**30:.1f} GB), " if taps > 9 else "")
            doing, per_edge = ("converting this model", f" x {taps} edge features, plus indices") if taps else (
                "tracing this model's plan to read a graph back", ": indices and parameter positions, no edge features")
            raise GraphTooLargeError(
                f"{doing} needs about {need / 2**30:.1f} GB ({self.num_edges:,} edges so far{per_edge}), more than "
                f"the {free / 2**30:.1f} GB available; its edges were not allocated. Options: {fewer}a machine with "
                "more memory, or max_edges=... to refuse such models early")



    def add_identity_edges(self, src: Tensor, dst: Tensor, kind: str) -> None:
        self.add_edges(src, dst, kind, const=1.0)

    def add_node_const(self, nodes: Tensor, value: float) -> None:
        """Add the constant ``value`` to the pre-activation of ``nodes`` (stored as their bias)."""
        for i in nodes.tolist():
            self.const[i] += value
            self.has_bias[i] = 1
            self.touched[i] += 1

    def add_node_param(self, nodes: Tensor, param: str, elem: Tensor, column: int = 0) -> None:
        self.node_params.append(NodeParam(nodes.long(), column, param, elem.long()))
        for i in nodes.tolist():
            self.touched[i] += 1
            if column == 0:
                self.has_bias[i] = 1

    def register_param(self, name: str, shape: tuple[int, ...]) -> None:
        self.param_shapes[name] = tuple(shape)

    def guard(self, name: str, value: Tensor) -> None:
        """Record that the graph's structure depends on the value of buffer ``name`` (an index table a rule
        checked): a cached conversion plan is reused only for models whose buffer holds the same value."""
        self.guards[name] = value.detach().cpu().clone()

    def replicate(self, nodes: Tensor, copies: int) -> Tensor:
        """``copies`` copies of each node (with its incoming edges and node params), copy-major per node.

        Returns ``[len(nodes) * copies]`` new node ids ordered ``(node, copy)``. The originals are
        dropped from the final graph if nothing else reads them. Copies of a model input are inputs too
        (right after the original in input order: they hold the input's value at each position).
        """
        c = nodes.numel()
        new = torch.empty(c, copies, dtype=torch.long)
        for k, i in enumerate(nodes.tolist()):
            start = self.num_nodes
            self.layer += [self.layer[i]] * copies
            self.role += [self.role[i]] * copies
            self.act += [self.act[i]] * copies
            self.act_param += [self.act_param[i]] * copies
            self.pool += [self.pool[i]] * copies
            self.window += [self.window[i]] * copies
            self.spatial += list(range(1, copies + 1))
            self.has_bias += [self.has_bias[i]] * copies
            self.const += [self.const[i]] * copies
            self.frozen += [True] * copies
            self.read += [False] * copies
            self.sourced += [False] * copies
            self.pending += [0] * copies
            self.replaced += [False] * copies
            self._grow(copies)
            self.replaced[i] = True
            new[k] = torch.arange(start, start + copies)
            if i in self.inputs:  # copies of a model input hold its value at each position: inputs too
                at = self.inputs.index(i) + 1
                self.inputs[at:at] = new[k].tolist()
        # map old node id -> row in `new`
        lookup = torch.full((self.num_nodes,), -1, dtype=torch.long)
        lookup[nodes] = torch.arange(c)
        for block in list(self.edges):
            rows = lookup[block.dst]
            hit = (rows >= 0).nonzero().view(-1)
            if hit.numel() == 0:
                continue
            # each hit edge is copied once per position: [hit, copies] flattened
            dst = new[rows[hit]].reshape(-1)
            src = block.src[hit].repeat_interleave(copies)
            sources = [(p, elem[hit].repeat_interleave(copies, dim=0), taps) for p, elem, taps in block.sources]
            self.edges.append(EdgeBlock(src, dst, block.kind, block.geometry, block.const, sources, block.tap_consts))
        for np_ in list(self.node_params):
            rows = lookup[np_.nodes]
            hit = (rows >= 0).nonzero().view(-1)
            if hit.numel():
                self.node_params.append(NodeParam(new[rows[hit]].reshape(-1), np_.column, np_.param,
                                                  np_.elem[hit].repeat_interleave(copies)))
        return new.reshape(-1)

    # ------------------------------------------------------------------------------ neuron values
    def _grow(self, count: int) -> None:
        self.value_of += [(-1, -1)] * count
        self.touched += [1] * count
        self._seen += [0] * count

    def record_value(self, v: Val, force: bool = False) -> None:
        """The traced tensor ``v.name`` holds the value of ``v``'s neurons (channel ``k``: ``v.nodes[k]``).

        Recorded for neurons changed since their last record (or all with ``force``), so every neuron
        ends with the tensor after its last change: its activation output, not a later pooled copy.
        """
        if v.nodes is None or v.name is None or v.kind == "groups":  # groups: mid channel shuffle, no channel dim
            return
        entry = -1
        for k, i in enumerate(v.nodes.tolist()):
            if force or self.touched[i] != self._seen[i]:
                if entry < 0:
                    self.values.append((v.name, v.kind, v.channels))
                    entry = len(self.values) - 1
                self.value_of[i] = (entry, k)
                self._seen[i] = self.touched[i]

    def record_features(self, name: str | None, nodes: Tensor) -> None:
        """Neuron ``nodes[k]`` holds feature ``k`` of the traced tensor ``name`` flattened to ``[B, -1]``
        (virtual / repeated flatten neurons: channel ``c`` at position ``p`` is feature ``c * P + p``)."""
        if name is None:
            return
        self.values.append((name, "feature", nodes.numel()))
        for k, i in enumerate(nodes.tolist()):
            self.value_of[i] = (len(self.values) - 1, k)
            self._seen[i] = self.touched[i]


def release_freed_memory() -> None:
    """Return memory freed by the process to the operating system (glibc's ``malloc_trim``; a no-op elsewhere).

    glibc keeps freed heap pages (the builder's many per-layer edge tensors) mapped, so a large tensor allocated
    next (the graph's ``edge_attr``) would come on top of them and the peak would be the sum of both."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc
        pass


def available_memory() -> int | None:
    """Bytes of memory available to new allocations: Linux ``MemAvailable``, or less under an address-space limit
    (``ulimit -v`` / ``RLIMIT_AS``: the limit minus the process's current virtual size); ``None`` if unknown."""
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            free = limit - size if free is None else min(free, limit - size)
    except (OSError, StopIteration, ValueError):
        return free
    return free
