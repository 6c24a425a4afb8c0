"""Per-architecture conversion plans and the public ``to_neural_graph`` / ``from_neural_graph``.

Tracing a module once yields a :class:`ConversionPlan`: the graph's structure and categories as
templates, plus two index maps saying which parameter element lands in which edge tap / node
feature. Converting any model of that architecture is then one gather into preallocated tensors;
reading a graph back into parameters is the inverse gather, so the round trip is exact.
"""
from __future__ import annotations

import bisect
import copy
import functools
import math
import warnings
from collections import OrderedDict
from typing import Any, Mapping

import torch
from torch import Tensor, fx, nn

from neuralgraph.convert import activations
from neuralgraph.convert.builder import GraphBuilder, release_freed_memory
from neuralgraph.convert.config import ConvertConfig
from neuralgraph.convert.errors import UnsupportedModuleError
from neuralgraph.convert.trace import trace_module
from neuralgraph.data.graph import EDGE_KIND, EDGE_KINDS, FIELD_DTYPES, ROLE, NeuralGraph, compact_field
from neuralgraph.data.weightspace import WeightSpace

_CACHE_SIZE = 256
#: ``to_neural_graph`` does not cache the plans of architectures with more edges than this: a plan holds about
#: 33 bytes per edge (in 2-d), and the one graph converted takes its index tensors instead of copies
UNCACHED_EDGES = 2_000_000


class ConversionPlan:
    """Structure of the neural graph of one architecture and the parameter <-> graph index maps.

    Attributes:
        config (ConvertConfig): the converter options.
        num_nodes (int), num_edges (int): graph size.
        param_names (list[str]): parameters (and buffers, e.g. running statistics) represented in the
            graph, in the module's order.
        gather_names (list[str]): the same in gather order: the order of the vector of all their elements that
            the index maps (:meth:`edge_gather`, ``node_src``, ``offsets``) refer to. Parameters read element by
            element (biases, edge elements outside runs) come first.
        param_shapes (dict[str, tuple]): their shapes.
        layers (list[tuple[str, str | None]]): (weight, bias) names of linear/conv layers in dataflow order.
        edge_param (dict[str, Tensor]): for each edge-backed parameter, the flat position in
            ``edge_attr.view(-1)`` of each of its elements (``[numel]``, parameter order; built on first use, 8
            bytes per element: :meth:`state_dict` reads blocks instead).
        node_param (dict[str, Tensor]): likewise into ``x.view(-1)`` for node-backed parameters.
        edge_runs (list[tuple[int, int, list[int], int]]): parameter elements on consecutive edges and taps (a
            Linear, a conv, a norm's gamma): ``(first edge row, edges, taps, first element)``; the elements outside
            runs are listed one by one.
        fx_graph (torch.fx.Graph): the traced dataflow (run it on any member with
            ``torch.func.functional_call``, see :mod:`neuralgraph.transforms.probe_features`).
        values (list[tuple[str, str, int]]): traced tensors holding neuron values: (fx node name, kind,
            channels), kind ``"vec"`` (features on the last dim), ``"map"`` (channels on dim 1),
            ``"flat"`` (a flattened map, channel-major), ``"feature"`` (one neuron per feature of the
            tensor flattened to ``[B, -1]``) or ``"index"`` (integer inputs read as one-hot vectors).
        node_value (Tensor): ``[N]`` long, the entry of ``values`` holding each neuron (-1: none).
        node_channel (Tensor): ``[N]`` long, its channel / feature in that tensor.
    """

    def __init__(self, builder: GraphBuilder, module_params: list[str]):
        cfg = builder.config
        self.config = cfg
        n_all = builder.num_nodes
        f_edge, f_node = cfg.edge_dim, cfg.node_dim

        # -- drop nodes that 'repeat' flattening replaced and nothing reads
        has_out = torch.zeros(n_all, dtype=torch.bool)
        for blk in builder.edges:
            has_out[blk.src] = True
        is_output = torch.zeros(n_all, dtype=torch.bool)
        is_output[torch.tensor(builder.outputs, dtype=torch.long)] = True
        keep = ~(torch.tensor(builder.replaced, dtype=torch.bool) & ~has_out & ~is_output)
        remap = torch.cumsum(keep.long(), 0) - 1
        n = int(keep.sum())
        self.num_nodes = n

        # -- node categories
        def node_tensor(values: list[int]) -> Tensor:
            return torch.tensor(values, dtype=torch.long)[keep]

        layer = node_tensor(builder.layer)
        role = node_tensor(builder.role)
        pos = layer.clone()
        inputs = remap[torch.tensor([i for i in builder.inputs if keep[i]], dtype=torch.long)]
        outputs = remap[torch.tensor(list(OrderedDict.fromkeys(builder.outputs)), dtype=torch.long)]
        role[outputs] = ROLE["output"]
        role[inputs] = ROLE["input"]
        pos[outputs] = torch.arange(outputs.numel())
        pos[inputs] = torch.arange(inputs.numel())
        self.categories = {name: compact_field(name, values, "the neurons") for name, values in (
            ("node_layer", layer), ("node_role", role), ("node_pos", pos), ("node_act", node_tensor(builder.act)),
            ("node_pool", node_tensor(builder.pool)), ("node_spatial", node_tensor(builder.spatial)),
            ("node_window", torch.tensor(builder.window, dtype=torch.long).view(n_all, -1)[keep]))}
        _check_layer_groups(builder, layer, remap, keep)
        x0 = torch.zeros(n, f_node, dtype=torch.float64)  # float64: a constant is rounded once, to the graph's dtype
        x0[:, 1] = node_tensor(builder.has_bias).double()
        x0[:, 0] = torch.tensor(builder.const, dtype=torch.float64)[keep]   # constants (x + c); params overwrite
        for col in range(max(map(len, builder.act_param), default=0)):  # activation parameters (a slope, ...)
            x0[:, 2 + col] = torch.tensor([p[col] if col < len(p) else 0.0 for p in builder.act_param], dtype=torch.float64)[keep]

        # -- edges, constant taps and the parameter gather
        # every per-edge tensor is allocated once at its final size and filled block by block (no lists of parts
        # concatenated at the end, which held two copies at once)
        kept_of = [None if blk.src is None else keep[blk.src] & keep[blk.dst] for blk in builder.edges]
        sizes = [0 if k is None else int(k.sum()) for k in kept_of]
        n_edges = sum(sizes)
        # a parameter's elements on consecutive edges and taps (a Linear, a conv, a norm's gamma) are one *run*
        # (first edge row, edges, taps, first element): the gather copies it as a block, with no index per element
        runs: list[tuple[int, int, list[int], int]] = []
        contiguous = [[k is not None and bool(k.all()) and _consecutive(elem) for _, elem, _ in blk.sources]
                      for k, blk in zip(kept_of, builder.edges)]
        # gather order (element k of the vector all index maps refer to): the parameters read element by element
        # (node parameters such as biases, edge elements outside runs) first, so that :meth:`graph` concatenates
        # only those; the rest are copied run by run from the parameters themselves (no copy of every parameter).
        # Within each group, the module's own order.
        used = {name for blk in builder.edges for name, _, _ in blk.sources} | {
            np_.param for np_ in builder.node_params}
        gathered = {np_.param for np_ in builder.node_params} | {
            name for blk, cont in zip(builder.edges, contiguous) for (name, _, _), c in zip(blk.sources, cont) if not c}
        self.param_names: list[str] = [p for p in module_params if p in used]
        self.gather_names = [p for p in self.param_names if p in gathered] + [
            p for p in self.param_names if p not in gathered]
        self._num_gathered = sum(p in gathered for p in self.param_names)
        # a module whose parameters are all represented is read with one .parameters() walk, then put in this order
        position = {p: i for i, p in enumerate(module_params)}
        self._module_order = ([position[p] for p in self.gather_names] if len(self.param_names) == len(module_params)
                              else None)
        offsets: dict[str, int] = {}
        start = 0
        for p in self.gather_names:
            offsets[p] = start
            start += _numel(builder.param_shapes[p])

        def offset(name: str) -> int:
            return offsets[name]
        n_taps = sum(int(k.sum()) * elem.size(1) for k, blk, cont in zip(kept_of, builder.edges, contiguous)
                     if k is not None for (_, elem, _), c in zip(blk.sources, cont) if not c)
        edge_index = torch.empty(2, n_edges, dtype=torch.long)
        edge_kind = torch.empty(n_edges, dtype=FIELD_DTYPES["edge_kind"])
        #: a large plan traced only to read graphs back (never cached, see get_plan) holds no edge geometry
        self.reads_only = builder.graph_taps == 0 and n_edges > UNCACHED_EDGES
        # geometry: the distinct rows of the blocks (in order of first use) and per edge its row's index
        rows_of: dict[tuple[int, ...], int] = {}
        for blk, m in zip(builder.edges, sizes):
            if m:
                rows_of.setdefault(tuple(blk.geometry), len(rows_of))
        compact_field("edge_geom", [len(rows_of) - 1], f"the {len(rows_of)} distinct edge geometries")
        edge_geom = None if self.reads_only else torch.empty(n_edges, dtype=FIELD_DTYPES["edge_geom"])
        edge_src, edge_dst = torch.empty(n_taps, dtype=torch.long), torch.empty(n_taps, dtype=torch.long)
        c_pos, c_val = [], []
        rows = taps_done = 0
        centre = cfg.centre_tap
        for blk, kept, m, cont in zip(builder.edges, kept_of, sizes, contiguous):
            src, dst, sources = blk.src, blk.dst, blk.sources
            blk.src = blk.dst = blk.sources = None  # the builder is discarded: free its edges as they are copied
            if m == 0:
                continue
            ok = None if m == src.numel() else kept.nonzero().view(-1)
            edge_index[0, rows:rows + m] = remap[src if ok is None else src[ok]]
            edge_index[1, rows:rows + m] = remap[dst if ok is None else dst[ok]]
            del src, dst
            edge_kind[rows:rows + m] = compact_field("edge_kind", [blk.kind])
            if edge_geom is not None:
                edge_geom[rows:rows + m] = rows_of[tuple(blk.geometry)]
            edge_rows = torch.arange(rows, rows + m)
            # every block has rows of its own: its taps (parameters and constants) must be distinct
            const_taps = ((() if blk.const is None else ((centre, blk.const),)) + blk.tap_consts)
            used_taps = [t for _, _, taps in sources for t in taps.tolist()] + [t for t, _ in const_taps]
            if len(set(used_taps)) != len(used_taps):
                raise AssertionError("two parameter elements or constants were assigned the same edge tap; a "
                                     "conversion rule is wrong (please report it with the module)")
            for tap, value in const_taps:
                c_pos.append(edge_rows * f_edge + tap)
                c_val.append(torch.full((m,), float(value), dtype=torch.float64))
            for (name, elem, taps), run in zip(sources, cont):
                if run:
                    runs.append((rows, m, taps.tolist(), int(elem[0, 0]) + offset(name)))
                    continue
                k = m * taps.numel()
                edge_dst[taps_done:taps_done + k] = (edge_rows.view(-1, 1) * f_edge + taps.view(1, -1)).view(-1)
                edge_src[taps_done:taps_done + k] = ((elem if ok is None else elem[ok]) + offset(name)).view(-1)
                taps_done += k
            rows += m
        self.num_edges = rows
        self.edge_index = edge_index
        self.categories["edge_kind"] = edge_kind
        if edge_geom is not None:
            self.categories["edge_geom"] = edge_geom
            self.categories["geometry"] = compact_field(
                "geometry", list(rows_of) or torch.empty(0, 4 * len(cfg.max_kernel), dtype=torch.long), "edges")
        del edge_index, edge_kind, edge_geom

        n_src, n_dst = [], []
        for np_ in builder.node_params:
            ok = keep[np_.nodes].nonzero().view(-1)
            n_dst.append(remap[np_.nodes[ok]] * f_node + np_.column)
            n_src.append(np_.elem[ok] + offset(np_.param))

        def cat(parts: list[Tensor], dtype=torch.long) -> Tensor:
            return torch.cat(parts) if parts else torch.empty(0, dtype=dtype)

        # constant taps (identity edges, a normalization's eps): sparse, no dense template of edge_attr
        # float64, like x0: a float64 graph holds eps = 1e-3 as 1e-3, not its float32 rounding
        self.const_pos, self.const_val = cat(c_pos), cat(c_val, torch.float64)
        self.edge_runs = runs
        self._edge_src, self._edge_dst = edge_src, edge_dst  # the elements outside runs
        self.node_src, self.node_dst = cat(n_src), cat(n_dst)
        bias_slots = self.node_dst[self.node_dst % f_node == 0]
        if (x0.view(-1)[bias_slots] != 0).any():
            raise AssertionError("a constant shift was stored on a neuron that also has a bias parameter; a "
                                 "conversion rule is wrong (please report it with the module)")
        self.x0 = x0
        self.param_shapes = {p: builder.param_shapes[p] for p in self.param_names}
        self.layers = list(builder.layers)
        #: buffers a rule read as structure (name -> value): a cached plan serves a model only while they agree
        self.guards = dict(builder.guards)
        # -- where each kept neuron's value lives in the traced module
        self.fx_graph = _detached_copy(builder.fx_graph)
        self.values = list(builder.values)
        value_of = torch.tensor(builder.value_of, dtype=torch.long).view(-1, 2)[keep]
        self.node_value, self.node_channel = value_of[:, 0].clone(), value_of[:, 1].clone()
        self.offsets = offsets
        self._read_maps: tuple | None = None  # read-back maps, built on first use
        self._device_cache: dict = {}  # device (or ("read", device), ("constants", device, dtype)) -> the plan's tensors on it
        #: a plain feed-forward chain of linear / conv layers with element-wise maps between them
        #: (activations, constant scales and shifts): what NFN-style weight-space models assume
        self.feedforward = self._is_feedforward()
        if self.num_edges > UNCACHED_EDGES:  # a large graph is allocated next: not on top of the builder's freed pages
            release_freed_memory()

    def _is_feedforward(self) -> bool:
        """Only linear / conv / flatten edges, plus identity edges that map one neuron to one new neuron and
        nothing else reads the old one (a constant scale such as SIREN's ``sin(w0 * x)``, or ``x + c``):
        such element-wise maps commute with permutations of the neurons they act on."""
        kind = self.categories["edge_kind"]
        kinds = {EDGE_KINDS[k] for k in kind.unique().tolist()}
        if not kinds <= {"linear", "conv", "flatten", "identity"}:
            return False
        ident = kind == EDGE_KIND["identity"]
        if not ident.any():
            return True
        out_deg = torch.bincount(self.edge_index[0], minlength=self.num_nodes)
        in_deg = torch.bincount(self.edge_index[1], minlength=self.num_nodes)
        src, dst = self.edge_index[:, ident]
        return bool((out_deg[src] == 1).all() and (in_deg[dst] == 1).all())

    def _maps(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if self._read_maps is None:
            self._read_maps = self._read_map(*self.edge_gather()), self._read_map(self.node_src, self.node_dst)
        return self._read_maps

    @property
    def edge_param(self) -> dict[str, Tensor]:
        return self._maps()[0]

    @property
    def node_param(self) -> dict[str, Tensor]:
        return self._maps()[1]

    def edge_gather(self) -> tuple[Tensor, Tensor]:
        """``(src, dst)``: parameter element ``src[k]`` (in the gather vector) is stored at ``edge_attr.view(-1)
        [dst[k]]``, every element (runs expanded: built on use, 16 bytes per element)."""
        f_edge = self.config.edge_dim
        src, dst = [self._edge_src], [self._edge_dst]
        for row, m, taps, first in self.edge_runs:
            src.append(torch.arange(first, first + m * len(taps)))
            dst.append((torch.arange(row, row + m).view(-1, 1) * f_edge + torch.tensor(taps).view(1, -1)).view(-1))
        return torch.cat(src), torch.cat(dst)

    def _read_map(self, src: Tensor, dst: Tensor) -> dict[str, Tensor]:
        """For each parameter gathered by ``(src, dst)``, one graph position per element: its first copy (an
        element stored more than once: a module used twice, tied weights)."""
        total = sum(_numel(s) for s in self.param_shapes.values())
        order = torch.argsort(src, stable=True)
        s, d = src[order], dst[order]
        first = torch.ones_like(s, dtype=torch.bool)
        first[1:] = s[1:] != s[:-1]
        pos = torch.full((total,), -1, dtype=torch.long)
        pos[s[first]] = d[first]
        out: dict[str, Tensor] = {}
        for name in self.param_names:
            start = self.offsets[name]
            sl = pos[start:start + _numel(self.param_shapes[name])]
            hit = sl >= 0
            if hit.all():
                out[name] = sl
            elif hit.any():
                raise AssertionError(f"conversion plan does not represent every element of {name}")
        return out

    # ------------------------------------------------------------------------------------------ use
    def _param_tensors(self, params: nn.Module | Mapping[str, Tensor]) -> list[Tensor]:
        """The represented parameters (and buffers) of ``params`` in gather order (:attr:`gather_names`), as they
        are (no copies)."""
        if isinstance(params, nn.Module):
            if self._module_order is not None:
                # the common case: every parameter is represented (and no buffer): one .parameters() walk
                tensors = list(params.parameters())
                if len(tensors) == len(self._module_order):
                    return [tensors[i] for i in self._module_order]
            params = dict(params.named_parameters()) | dict(params.named_buffers())
        try:
            return [params[name] for name in self.gather_names]
        except KeyError as err:
            raise KeyError(f"parameter {err.args[0]!r} of this architecture is missing from the given "
                           f"parameters") from None

    def _on(self, device: torch.device) -> dict[str, Tensor]:
        """The plan's index and template tensors on ``device`` (moved once, then cached)."""
        if device not in self._device_cache:
            self._device_cache[device] = {
                k: v.to(device) for k, v in dict(
                    self.categories, edge_index=self.edge_index, const_pos=self.const_pos, edge_src=self._edge_src,
                    edge_dst=self._edge_dst, node_src=self.node_src, node_dst=self.node_dst).items()}
        return self._device_cache[device]

    def _constants(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The plan's constants (``x0``, the constant taps' values; float64) in ``dtype`` on ``device``, cast before
        the move (a device may have no float64), once per device and dtype."""
        key = ("constants", device, dtype)
        if key not in self._device_cache:
            self._device_cache[key] = (self.x0.to(dtype).to(device), self.const_val.to(dtype).to(device))
        return self._device_cache[key]

    def _read_positions(self, device: torch.device) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """:attr:`edge_param` and :attr:`node_param` on ``device`` (moved once, then cached: a training step
        reading per-parameter outputs copies no index to the device)."""
        key = ("read", device)
        if key not in self._device_cache:
            self._device_cache[key] = ({k: v.to(device) for k, v in self.edge_param.items()},
                                       {k: v.to(device) for k, v in self.node_param.items()})
        return self._device_cache[key]

    def graph(self, params: nn.Module | Mapping[str, Tensor], allow_nonfinite: bool = False,
              share: bool = False) -> NeuralGraph:
        """The neural graph of a model of this architecture (a module or a ``name -> tensor`` mapping).

        NaN / Inf parameters raise a ``ValueError`` naming the parameter unless ``allow_nonfinite``. With ``share``
        the graph's structure fields are this plan's own tensors, not copies (for a plan used once and dropped:
        :func:`to_neural_graph` of a large architecture).
        """
        if self.reads_only:
            raise RuntimeError("this plan was traced to read graphs back and holds no edge geometry (a large "
                               "architecture's read-back plan); build graphs with to_neural_graph")
        tensors = [p.detach() for p in self._param_tensors(params)]
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in tensors))
        # one reduction decides in the common case; the full check only runs if the sum is not finite
        if not allow_nonfinite and not math.isfinite(float(torch.stack([p.sum().to(dtype) for p in tensors]).sum())):
            by_name = dict(zip(self.gather_names, tensors))
            bad = next((n for n in self.param_names if not torch.isfinite(by_name[n]).all()), None)
            if bad is not None:
                raise ValueError(f"parameter {bad!r} contains NaN or Inf values; a neural graph of it would be "
                                 "meaningless (pass allow_nonfinite=True to convert it anyway)")
        x, ea = self._fill(tensors, dtype, channels=None)
        return self._graph(x, ea, share)

    def feature_graph(self, feats: Mapping[str, Tensor]) -> NeuralGraph:
        """The graph of this architecture with ``C`` features per parameter element in place of its value
        (gradients, momenta, ...: the learned optimizers' input). ``feats`` maps every parameter name to
        ``[*shape, C]``; each slot of the graph becomes ``C + 1`` channels: the plan's constant first (``x0``
        and the constant taps, e.g. the has-bias flag; 0 elsewhere), then the ``C`` features. Differentiable
        (no copies of the inputs are detached); the structure fields are this plan's own tensors, not copies.

        Shapes:
            x: ``[N, F_node * (C + 1)]``, edge_attr: ``[E, F_edge * (C + 1)]``, channel-minor per slot.
        """
        if self.reads_only:
            raise RuntimeError("this plan was traced to read graphs back and holds no edge geometry; "
                               "feature graphs need a plan from get_plan")
        tensors = self._param_tensors(feats)
        channels = tensors[0].size(-1) if tensors[0].dim() else 0
        if channels < 1:
            raise ValueError(f"feature_graph: {self.gather_names[0]!r} has features of shape "
                             f"{tuple(tensors[0].shape)}; expected [*shape, C] with C >= 1 channels")
        for name, v in zip(self.gather_names, tensors):
            if tuple(v.shape) != (*self.param_shapes[name], channels):
                raise ValueError(f"feature_graph: {name!r} has features of shape {tuple(v.shape)}; expected "
                                 f"{(*self.param_shapes[name], channels)} (the parameter's shape, then C = "
                                 f"{channels} channels, as for {self.gather_names[0]!r})")
        dtype = functools.reduce(torch.promote_types, (v.dtype for v in tensors))
        return self._graph(*self._fill(tensors, dtype, channels), share=True)

    def _fill(self, tensors: list[Tensor], dtype: torch.dtype, channels: int | None) -> tuple[Tensor, Tensor]:
        """``x`` and ``edge_attr`` holding ``tensors`` (gather order) at their slots. ``channels=None``: one
        value per slot, the constants in the same channel (their slots hold no parameter); ``C``: ``C + 1``
        channels per slot, the constants in channel 0, the ``[*shape, C]`` tensors' features after them."""
        t = self._on(tensors[0].device)
        lo, n_vals = (0, 1) if channels is None else (1, channels)  # first channel and count of the values
        width = lo + n_vals  # channels per slot
        x0, const_val = self._constants(tensors[0].device, dtype)
        x = x0.reshape(-1, 1)
        x = x.clone() if width == 1 else torch.cat([x, x.new_zeros(x.size(0), width - 1)], 1)  # [N F_node, width]
        ea = torch.zeros(self.num_edges * self.config.edge_dim, width, dtype=dtype, device=x.device)
        ea[t["const_pos"], 0] = const_val
        # the parameters read element by element come first in gather order: only they are concatenated
        vec = torch.cat([v.reshape(-1, n_vals).to(dtype) for v in tensors[:self._num_gathered]]
                        or [ea.new_empty(0, n_vals)])                                    # [P, n_vals]
        x[t["node_dst"], lo:] = vec[t["node_src"]]
        ea[t["edge_dst"], lo:] = vec[t["edge_src"]]
        del vec
        ea3 = ea.view(self.num_edges, self.config.edge_dim, width)
        starts = [self.offsets[n] for n in self.gather_names]
        for row, m, taps, first in self.edge_runs:  # contiguous blocks, copied straight from the parameter
            i = bisect.bisect_right(starts, first) - 1
            block = tensors[i].reshape(-1, n_vals)[first - starts[i]:first - starts[i] + m * len(taps)]
            if len(taps) == 1:
                ea3[row:row + m, taps[0], lo:] = block
            else:
                ea3[row:row + m, taps, lo:] = block.view(m, len(taps), n_vals)
        return (x.view(self.num_nodes, self.config.node_dim * width),
                ea.view(self.num_edges, self.config.edge_dim * width))

    def _graph(self, x: Tensor, edge_attr: Tensor, share: bool) -> NeuralGraph:
        t = self._on(x.device)
        copy = (lambda v: v) if share else (lambda v: v.clone())  # noqa: E731
        fields = {"x": x, "edge_index": copy(t["edge_index"]), "edge_attr": edge_attr}
        fields.update((k, copy(t[k])) for k in self.categories)
        return NeuralGraph.from_fields(fields)

    def read(self, edge_values: Tensor, node_values: Tensor) -> dict[str, Tensor]:
        """Parameter-shaped tensors read from per-edge ``[E, F_edge, ...]`` and per-node ``[N, F_node, ...]``
        values laid out like ``edge_attr`` / ``x`` (e.g. the graph itself, or an equivariant head's
        output). Differentiable. A parameter stored more than once (tied weights) is read from its first copy
        (in edge / node order); :meth:`state_dict` checks that the copies agree."""
        out: dict[str, Tensor] = {}
        edge_pos, node_pos = self._read_positions(edge_values.device)
        for maps, values in ((edge_pos, edge_values), (node_pos, node_values)):
            flat = values.reshape(values.size(0) * values.size(1), *values.shape[2:])
            for name, pos in maps.items():
                out[name] = flat[pos].reshape(*self.param_shapes[name], *values.shape[2:])
        return {name: out[name] for name in self.param_names}

    def read_batch(self, edge_values: Tensor, node_values: Tensor) -> dict[str, Tensor]:
        """:meth:`read` for ``B`` graphs of this plan laid out one after the other, as a PyG batch does:
        per-edge ``[B * E, F_edge]`` and per-node ``[B * N, F_node]`` values -> ``{name: [B, *shape]}``,
        one gather for the whole batch. Differentiable."""
        E, N, f_edge, f_node = self.num_edges, self.num_nodes, self.config.edge_dim, self.config.node_dim
        B = edge_values.size(0) // max(E, 1)
        if (edge_values.shape != (B * E, f_edge) or node_values.shape != (B * N, f_node)):
            raise ValueError(f"values of shape {tuple(node_values.shape)} per node / {tuple(edge_values.shape)} per "
                             f"edge are not a batch of graphs of this architecture ({N} nodes x {f_node}, {E} edges "
                             f"x {f_edge} each)")
        edge = edge_values.reshape(B, E, f_edge).permute(1, 2, 0)  # (E, F_edge, B)
        node = node_values.reshape(B, N, f_node).permute(1, 2, 0)  # (N, F_node, B)
        return {k: v.movedim(-1, 0) for k, v in self.read(edge, node).items()}  # name -> (B, *shape)

    def state_dict(self, graph: NeuralGraph) -> dict[str, Tensor]:
        """The parameters stored in ``graph`` (exact copies of the converted values).

        A parameter used more than once in the module (tied weights: a module called twice) is stored on every
        use; all copies must be equal (as converted), else a ``ValueError`` names the parameter. The graph is read
        in blocks (one per run of :attr:`edge_runs`, then the elements outside runs): besides the parameters it
        needs one flag per element, no per-element index map, so a large graph reads back in little memory."""
        self.check(graph)
        edge, node = graph.edge_attr, graph.x[:, :self.config.node_dim]
        dev = edge.device
        vec = edge.new_empty(sum(_numel(s) for s in self.param_shapes.values()))
        seen = torch.zeros(vec.numel(), dtype=torch.bool, device=dev)
        # the first copy of an element is the one first in gather order: elements outside runs, runs, node params
        self._fill_elements(vec, seen, self._edge_src.to(dev), edge.reshape(-1)[self._edge_dst.to(dev)])
        for row, m, taps, first in self.edge_runs:
            block = edge[row:row + m, taps[0]] if len(taps) == 1 else edge[row:row + m, taps].reshape(-1)
            self._fill_range(vec, seen, first, block)
        self._fill_elements(vec, seen, self.node_src.to(dev), node.reshape(-1)[self.node_dst.to(dev)])
        if not bool(seen.all()):
            e = int((~seen).nonzero()[0])
            raise AssertionError(f"conversion plan does not represent every element of {self._param_of(e)}")
        return {name: vec[self.offsets[name]:self.offsets[name] + _numel(shape)].view(shape)
                for name, shape in self.param_shapes.items()}

    def _fill_elements(self, vec: Tensor, seen: Tensor, src: Tensor, values: Tensor) -> None:
        """Store ``values[k]`` as element ``src[k]`` of ``vec`` unless ``seen``; a copy (an element given again,
        here or before) must equal the first."""
        if src.numel() == 0:
            return
        order = torch.argsort(src, stable=True)
        s, v = src[order], values[order]
        first = torch.ones_like(s, dtype=torch.bool)
        first[1:] = s[1:] != s[:-1]
        head = torch.where(first, torch.arange(s.numel(), device=s.device), 0).cummax(0).values  # its first copy
        self._check_copies(s, v[head], v)
        s, v = s[first], v[first]
        old = seen[s]
        self._check_copies(s[old], vec[s[old]], v[old])
        vec[s[~old]] = v[~old]
        seen[s] = True

    def _fill_range(self, vec: Tensor, seen: Tensor, start: int, values: Tensor) -> None:
        """Store ``values`` as elements ``start ..`` of ``vec``; elements already ``seen`` must be equal."""
        end = start + values.numel()
        old = seen[start:end]
        if bool(old.any()):
            have = vec[start:end]
            self._check_copies(torch.arange(start, end, device=vec.device)[old], have[old], values[old])
            values = torch.where(old, have, values)
        vec[start:end] = values
        seen[start:end] = True

    def _check_copies(self, elem: Tensor, first: Tensor, copy_: Tensor) -> None:
        """Raise a ``ValueError`` naming the parameter if a copy of a stored element differs from its first copy
        (NaN equals NaN: both copies are the same stored value)."""
        bad = ((first != copy_) & ~(first.isnan() & copy_.isnan())).nonzero().view(-1)
        if bad.numel():
            k = int(bad[0])
            e = int(elem[k])
            name = self._param_of(e)
            runs = sum(f <= e < f + m * len(t) for _, m, t, f in self.edge_runs)
            copies = runs + int((self._edge_src == e).sum()) + int((self.node_src == e).sum())
            raise ValueError(f"the graph stores parameter {name!r} (a module used more than once: tied weights) "
                             f"{copies} times, and the copies differ (element {e - self.offsets[name]}: "
                             f"{float(first[k])} vs {float(copy_[k])}); set every copy to the same value before "
                             "reading the graph back")

    def _first_position(self, e: int) -> tuple[str, int]:
        """``("edge_attr" or "x", flat position)`` of the first copy of element ``e`` of the gather vector (the
        copy :meth:`state_dict` reads)."""
        hit = (self._edge_src == e).nonzero()
        if hit.numel():
            return "edge_attr", int(self._edge_dst[hit[0, 0]])
        for row, m, taps, first in self.edge_runs:
            if first <= e < first + m * len(taps):
                r, t = divmod(e - first, len(taps))
                return "edge_attr", (row + r) * self.config.edge_dim + taps[t]
        return "x", int(self.node_dst[(self.node_src == e).nonzero()[0, 0]])

    def _param_of(self, e: int) -> str:
        """The parameter holding element ``e`` of the gather vector."""
        return next(n for n in self.param_names if self.offsets[n] <= e < self.offsets[n] + _numel(self.param_shapes[n]))

    def weight_space(self, params: nn.Module | Mapping[str, Tensor]) -> WeightSpace:
        """The linear / conv parameters as a one-network :class:`WeightSpace` (dataflow order)."""
        weights, biases = [], []
        for w, b in self.layers:
            wt = _get(params, w).detach()
            weights.append(wt.unsqueeze(0))
            biases.append((_get(params, b).detach() if b else wt.new_zeros(wt.size(0))).unsqueeze(0))
        return WeightSpace(tuple(weights), tuple(biases), self.feedforward)

    def check(self, graph: NeuralGraph) -> None:
        """Raise a ``ValueError`` naming every field of ``graph`` that does not match this plan's graphs (a
        graph of another architecture or converter configuration, or a field cut or edited by hand). Columns
        of ``x`` beyond the converter's (features appended by a transform) are allowed."""
        _require_graph(graph)
        want = {"x": (self.num_nodes, self.config.node_dim), "edge_index": tuple(self.edge_index.shape),
                "edge_attr": (self.num_edges, self.config.edge_dim)}
        fields = {k: getattr(graph, k) for k in want}
        wrong = [f"{k} has shape {tuple(v.shape)}, not {want[k]}" for k, v in fields.items()
                 if v.size(0) != want[k][0] or not (v.size(1) >= want[k][1] if k == "x" else v.size(1) == want[k][1])]
        if not wrong and not torch.equal(fields["edge_index"].cpu(), self.edge_index):
            wrong.append("edge_index connects other nodes")
        if graph.num_nodes != self.num_nodes:
            wrong.append(f"num_nodes is {graph.num_nodes}, not {self.num_nodes}")
        if not wrong:  # the same shape and edges, but neurons / edges of other kinds or geometry (a convolution's
            # stride, a window attention's shift): a graph of another architecture that has this one's shape
            for k, want_k in self.categories.items():
                got = getattr(graph, k, None)
                if isinstance(got, Tensor) and (got.shape != want_k.shape or not torch.equal(got.cpu().to(
                        want_k.dtype), want_k)):
                    wrong.append(f"{k} differs")
        if wrong:
            raise ValueError(f"the graph does not belong to this architecture/configuration (the template model's "
                             f"graphs have {self.num_nodes} nodes x {self.config.node_dim}, {self.num_edges} edges x "
                             f"{self.config.edge_dim}): "
                             f"{'; '.join(dict.fromkeys(wrong))}. Read a graph back with a model of the architecture "
                             "it was converted from and the same converter options / example_input, and keep its "
                             "fields whole")

    def nonfinite(self, params: Mapping[str, Tensor]) -> str | None:
        """Where a graph of this plan stores the first NaN / Inf among ``params`` (read from it): parameter,
        element and graph position; ``None`` if every value is finite."""
        for name in self.param_names:
            if math.isfinite(float(params[name].sum())):  # one reduction decides in the common case
                continue
            bad = (~torch.isfinite(params[name])).view(-1).nonzero()
            if bad.numel():
                i = int(bad[0])
                element = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), self.param_shapes[name]))
                field, pos = self._first_position(self.offsets[name] + i)
                if field == "edge_attr":
                    e, f = divmod(pos, self.config.edge_dim)
                    where = f"edge_attr[{e}, {f}] (edge {int(self.edge_index[0, e])} -> {int(self.edge_index[1, e])})"
                else:
                    n, f = divmod(pos, self.config.node_dim)
                    where = f"x[{n}, {f}] (node {n})"
                return f"parameter {name!r}{list(element)} = {float(params[name].view(-1)[i])} at {where}"
        return None

    def __repr__(self) -> str:
        return (f"ConversionPlan(nodes={self.num_nodes}, edges={self.num_edges}, "
                f"params={len(self.param_names)}, config={self.config})")


def _check_layer_groups(builder: GraphBuilder, layer: Tensor, remap: Tensor, keep: Tensor) -> None:
    """Each softmax's neurons must be exactly the neurons of their layer carrying that activation (the executor
    normalises over those): two softmaxes at the same depth are refused."""
    act = torch.tensor(builder.act, dtype=torch.long)[keep]
    seen: dict[tuple[int, int], str] = {}
    for nodes, where in builder.layer_groups:
        nodes = remap[nodes]
        key = (int(layer[nodes[0]]), int(act[nodes[0]]))
        if key in seen or int(((layer == key[0]) & (act == key[1])).sum()) != nodes.numel():
            other = seen.get(key, "another operation at the same depth")
            raise UnsupportedModuleError(f"{where} lies at the same graph depth as {other}; the graph would "
                                         "normalise their neurons together. Not supported: give them different "
                                         "depths (e.g. one softmax over their concatenation)")
        seen[key] = where


def _detached_copy(graph: fx.Graph | None) -> fx.Graph | None:
    """A copy of a traced graph owned by no module (shape propagation attaches the traced model; a cached
    plan must not keep it alive)."""
    if graph is None:
        return None
    copy_ = fx.Graph()
    copy_.output(copy_.graph_copy(graph, {}))
    for node in copy_.nodes:
        node.meta = {}  # rule annotations may reference the traced graph
    return copy_


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _get(params: nn.Module | Mapping[str, Tensor], name: str) -> Tensor:
    """A parameter (or a gathered buffer such as BatchNorm's running statistics) by qualified name."""
    if isinstance(params, nn.Module):
        try:
            return params.get_parameter(name)
        except AttributeError:
            return params.get_buffer(name)
    return params[name]


# ---------------------------------------------------------------------------------------- caching
def _freeze(v: Any) -> Any:
    if isinstance(v, (int, float, str, bool, type(None), torch.dtype)):
        return v
    if isinstance(v, (tuple, list)):
        return tuple(_freeze(i) for i in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _freeze(i)) for k, i in v.items()))
    if isinstance(v, Tensor):
        return ("tensor", tuple(v.shape), v.dtype)
    try:
        hash(v)
        return v
    except TypeError:
        return (type(v), id(v))


def architecture_key(model: nn.Module) -> tuple:
    """A hashable description of everything but parameter values: module names and types,
    hyperparameters and plain attributes a forward may branch on, parameter shapes / dtypes, and which parameters /
    buffers are one tensor registered at several paths."""
    parts: list[Any] = []
    _describe(model, parts)
    alias = _aliases(model)
    if alias:  # tensors registered at several paths (tied): which are one
        parts.append(("tied", tuple(sorted(alias.items()))))
    return tuple(parts)


_PLAIN = (int, float, str, bool, type(None))


def _describe(m: nn.Module, parts: list[Any]) -> None:
    parts.append(type(m))
    for k, v in m.__dict__.items():
        if k[0] != "_":  # `training` included: a traced forward may branch on it (F.batch_norm's flag)
            if type(v) in _PLAIN or (type(v) is tuple and all(type(i) in _PLAIN for i in v)):
                parts.append((k, v))
            else:
                parts.append((k, _freeze(v)))
    if m._forward_pre_hooks or m._forward_hooks:  # traced with the module (redefined_on_instance): part of its plan
        parts.append(("forward hooks", tuple(map(id, (*m._forward_pre_hooks.values(), *m._forward_hooks.values())))))
    for k, p in m._parameters.items():
        parts.append((k, None if p is None else (p.shape, p.dtype)))
    for k, child in m._modules.items():
        parts.append(k)
        if child is not None:
            _describe(child, parts)
        parts.append(None)  # end of child


def _input_key(example_input: Any) -> Any:
    if example_input is None:
        return None
    items = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    return tuple((tuple(t.shape), t.dtype) if isinstance(t, Tensor) else _freeze(t) for t in items)


_PLANS: "OrderedDict[tuple, ConversionPlan]" = OrderedDict()


def _guards_hold(plan: ConversionPlan, model: nn.Module) -> bool:
    """Whether ``model``'s buffers that ``plan``'s rules read as structure (an index table) hold the values the plan
    was traced with (a template whose buffers differ computes another function than the plan's graphs)."""
    return all(torch.equal(model.get_buffer(n).cpu(), v) for n, v in plan.guards.items())


def _aliases(model: nn.Module) -> dict[str, str]:
    """The further paths of parameters / buffers registered at more than one place (a module, or a tensor, shared:
    ``nn.Sequential(lin, act, lin)``, a bias MLP shared by two blocks) -> the name ``named_parameters()`` /
    ``named_buffers()`` give it (its first path)."""
    alias: dict[str, str] = {}
    for named in (model.named_parameters, model.named_buffers):
        first: dict[int, str] = {}
        for name, t in named(remove_duplicate=False):
            alias[name] = first.setdefault(id(t), name)
    return {a: c for a, c in alias.items() if a != c}


def _canonical_names(builder: GraphBuilder, alias: dict[str, str]) -> GraphBuilder:
    """Rename the parameters / buffers the rules registered under a further path of a shared tensor (``alias``) to
    its first path, so that every use is a tied copy of one parameter of the model."""
    if not alias:
        return builder
    for blk in builder.edges:
        blk.sources = [(alias.get(n, n), elem, taps) for n, elem, taps in blk.sources]
    for np_ in builder.node_params:
        np_.param = alias.get(np_.param, np_.param)
    shapes = {}
    for n, shape in builder.param_shapes.items():
        shapes[alias.get(n, n)] = shape
    builder.param_shapes = shapes
    builder.layers = [tuple(None if n is None else alias.get(n, n) for n in layer) for layer in builder.layers]
    return builder


def get_plan(model: nn.Module, example_input: Any = None, **config) -> ConversionPlan:
    """The (cached) conversion plan of ``model``'s architecture under the given converter options."""
    model = _as_module(model)
    read_only = config.pop("_read_only", False)  # a plan to read graphs back with: no graph is built from it
    cfg = config.pop("_config", None) or ConvertConfig.from_kwargs(**config)
    arch = architecture_key(model)
    alias = _aliases(model)
    key = (arch, _input_key(example_input), cfg, activations.VERSION)
    plan = _PLANS.get(key)
    if plan is not None and not _guards_hold(plan, model):
        plan = None  # a buffer its rules read as structure (an index table) differs: trace this model anew
    if plan is None:
        tensors = [n for n, _ in model.named_parameters()] + [n for n, b in model.named_buffers()
                                                               if b.is_floating_point()]
        if not tensors:
            raise UnsupportedModuleError(_nothing_to_convert(model, "has no parameters"))
        plan = ConversionPlan(_canonical_names(trace_module(model, example_input, cfg, for_graph=not read_only),
                                               alias), tensors)
        if not plan.param_names:
            raise UnsupportedModuleError(_nothing_to_convert(model, "uses none of its parameters in layers the "
                                                                    "converter represents"))
        unused = [t for t in tensors if t not in plan.param_names and t not in plan.guards]  # guards: read as structure
        if unused and not read_only:
            named = ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else "")
            warnings.warn(f"{len(unused)} parameter(s) / buffer(s) of {type(model).__name__} are not read by its "
                          f"forward ({named}; e.g. an auxiliary head used only in training): the graph does not "
                          "hold them, and from_neural_graph keeps the template's values for them", stacklevel=3)
        if plan.reads_only:  # cannot build graphs: not for the cache, where to_neural_graph would find it
            return plan
        _PLANS[key] = plan
        if len(_PLANS) > _CACHE_SIZE:
            _PLANS.popitem(last=False)
    else:
        _PLANS.move_to_end(key)
    return plan


def _consecutive(elem: Tensor) -> bool:
    """Whether ``elem`` (``[edges, taps]`` element indices) counts up by one in row-major order."""
    flat = elem.reshape(-1)
    return flat.numel() > 0 and int(flat[-1] - flat[0]) == flat.numel() - 1 and bool((flat.diff() == 1).all())


def _as_module(model: Any) -> nn.Module:
    """``model`` as the eager module to trace: a ``torch.compile``'d module is its original module (the same
    parameters); a TorchScript module, which has no Python forward left, and anything else are refused."""
    if not isinstance(model, nn.Module):
        fix = (" (a state dict: load it into a module of its architecture first, model.load_state_dict(sd))"
               if isinstance(model, Mapping) else "")
        raise TypeError(f"expected the network as a torch.nn.Module, got {type(model).__name__} "
                        f"{str(model)[:60]!r}{fix}")
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModuleError(f"<root> ({type(model).__name__}) is a TorchScript module (torch.jit.script / "
                                     "torch.jit.trace): its Python forward, which the converter traces, is gone; "
                                     "convert the nn.Module it was made from")
    inner = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
        return inner  # torch.compile(model): the module it wraps
    return model


def _require_graph(graph: Any) -> None:
    missing = [k for k in ("x", "edge_index", "edge_attr") if not isinstance(getattr(graph, k, None), Tensor)]
    if missing:
        raise TypeError(f"expected a NeuralGraph (x, edge_index and edge_attr tensors), got {type(graph).__name__} "
                        f"without {', '.join(missing)}")
    flat = [f"{k} has shape {tuple(graph[k].shape)}" for k in ("x", "edge_index", "edge_attr") if graph[k].dim() != 2]
    if flat:
        raise ValueError(f"not a neural graph: {'; '.join(flat)}, where x is [nodes, features], edge_index [2, "
                         "edges] and edge_attr [edges, features]")


def _nothing_to_convert(model: nn.Module, why: str) -> str:
    name = f"{type(model).__module__}.{type(model).__qualname__}"
    return (f"<root> ({name}) {why}: there is nothing to convert (a neural graph stores a network's "
            "parameters: weights on edges, biases on nodes)")


def clear_plan_cache() -> None:
    """Forget every cached plan (the next conversion of each architecture traces again)."""
    _PLANS.clear()


def to_neural_graph(model: nn.Module, example_input: Any = None, *, allow_nonfinite: bool = False,
                    **config) -> NeuralGraph:
    """Convert a torch module into its :class:`NeuralGraph`.

    Args:
        model (nn.Module): the network; its dataflow is discovered with ``torch.fx`` (a ``torch.compile``'d
            module converts as the module it wraps; a TorchScript module is refused: convert the module it was
            made from).
        example_input (Tensor or tuple, optional): an input to run shape propagation with, needed when
            sizes can only be known by running the model (e.g. a flatten before a linear layer that
            cannot be resolved from layer sizes alone). (default: ``None``)
        allow_nonfinite (bool, optional): convert parameters containing NaN / Inf (e.g. diverged
            checkpoints) instead of raising. A check of the values, not a converter option: it does not
            change the plan. (default: ``False``)
        **config: converter options, see :class:`~neuralgraph.convert.config.ConvertConfig`.

    Raises:
        UnsupportedModuleError: a module or operation that cannot be represented, named by path and type;
            also a module without parameters (nothing to convert).
        ValueError: NaN / Inf parameters (unless ``allow_nonfinite``).

    Warns:
        UserWarning: the model is in training mode and has modules whose function depends on it (BatchNorm,
            dropout): the graph is the eval-mode function.
    """
    model = _as_module(model)
    plan = get_plan(model, example_input, **config)
    # a large plan is not kept: its index tensors become the graph's own (half the memory of a cached plan plus a copy)
    large = _forget_if_large(plan)
    graph = plan.graph(model, allow_nonfinite=allow_nonfinite, share=large)
    _warn_training(model)
    return graph


def _forget_if_large(plan: ConversionPlan) -> bool:
    """Drop ``plan`` from the cache if it has more than :data:`UNCACHED_EDGES` edges; whether it has."""
    large = plan.num_edges > UNCACHED_EDGES
    if large:
        for key in [k for k, v in _PLANS.items() if v is plan]:
            del _PLANS[key]
    return large


def _warn_training(model: nn.Module) -> None:
    """Warn when modules whose function depends on the mode are in training mode: the graph is the eval-mode
    function (BatchNorm with running statistics, dropout as identity)."""
    culprits = [f"{name or '<root>'} ({type(m).__name__})" for name, m in model.named_modules()
                if m.training and _mode_dependent(m)]
    if culprits:
        more = f" and {len(culprits) - 3} more" if len(culprits) > 3 else ""
        warnings.warn(f"the model is in training mode, where {', '.join(culprits[:3])}{more} compute a different "
                      "function than in eval mode; the neural graph describes the eval-mode function (running "
                      "statistics, no dropout). Call model.eval() before converting.", UserWarning, stacklevel=3)


def _mode_dependent(m: nn.Module) -> bool:
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return m.track_running_stats
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return m.p > 0
    return isinstance(m, nn.MultiheadAttention) and m.dropout > 0


def find_plan(graph: NeuralGraph, model: nn.Module, example_input: Any = None, **config) -> ConversionPlan:
    """The plan ``graph`` was converted with, ``model`` being any module of its architecture.

    With no ``example_input`` / options, a cached plan of this architecture matching the graph's shape
    is used (so graphs converted with non-default options are found too); otherwise the plan of
    ``get_plan(model, example_input, **config)``.
    """
    model = _as_module(model)
    _require_graph(graph)
    if example_input is None and not config:
        arch = architecture_key(model)
        for (a, _, _, version), cand in reversed(_PLANS.items()):
            if a == arch and version == activations.VERSION and cand.num_nodes == graph.num_nodes \
                    and cand.num_edges == graph.edge_index.size(1) and cand.config.edge_dim == graph.edge_attr.size(1) \
                    and _guards_hold(cand, model):
                return cand
    return get_plan(model, example_input, _read_only=True, **config)


def from_neural_graph(graph: NeuralGraph, model: nn.Module, example_input: Any = None, *,
                      allow_nonfinite: bool = False, **config) -> nn.Module:
    """A copy of ``model`` carrying the parameters stored in ``graph`` (bit-exact inverse of
    :func:`to_neural_graph`). Pass the same ``example_input`` / options used for the conversion if they
    were needed; otherwise a plan of this architecture already in the cache is found by the graph's
    shape.

    Args:
        graph (NeuralGraph): a graph of ``model``'s architecture.
        model (nn.Module): the template: any module of that architecture (its parameters are replaced; those its
            forward does not read, e.g. an auxiliary head used only in training, are not in the graph and keep
            the template's values).
        example_input (Tensor or tuple, optional): as for :func:`to_neural_graph`. (default: ``None``)
        allow_nonfinite (bool, optional): read NaN / Inf values back as they are (they round-trip
            exactly) instead of raising, as :func:`to_neural_graph`'s option. (default: ``False``)

    Raises:
        TypeError: ``model`` is not a module, or ``graph`` lacks ``x`` / ``edge_index`` / ``edge_attr``.
        ValueError: the graph's fields do not match the template's graphs (shapes, counts, edges), naming
            each; or a NaN / Inf value (unless ``allow_nonfinite``), naming the parameter, its element and
            the graph position.
    """
    model = _as_module(model)
    plan = find_plan(graph, model, example_input, **config)
    if graph.x.dim() == 2 and graph.x.size(1) > plan.config.node_dim:  # features appended by a transform
        graph = copy.copy(graph)
        graph.x = graph.x[:, :plan.config.node_dim]
    params = plan.state_dict(graph)
    _forget_if_large(plan)  # a large plan is not kept after reading back either (it holds the graph's structure)
    where = None if allow_nonfinite else plan.nonfinite(params)
    if where:
        raise ValueError(f"the graph holds a NaN or Inf value: {where}; a module carrying it would compute NaN "
                         "(pass allow_nonfinite=True to read it back anyway)")
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in params.items():
            _get(out, name).copy_(value)
    return out
