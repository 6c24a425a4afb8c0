"""Stock PyG transforms on neural graphs, checked: self-loops get well-defined fields, and a result whose fields no
longer describe the input's edges is refused."""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.transforms import BaseTransform, Compose, ToUndirected
from torch_geometric.utils import add_self_loops

from neuralgraph.data.graph import (EDGE_CATEGORIES, EDGE_KIND, EDGE_KINDS, NODE_CATEGORIES, NeuralGraph,
                                    plain_geometry)

_LOOP = EDGE_KIND["self_loop"]


class CheckedTransform(BaseTransform):
    r"""Apply a stock transform (``ToUndirected``, ``AddSelfLoops``, ``Compose([...])``, ...) to a
    :class:`~neuralgraph.NeuralGraph`, complete the fields of the self-loops it adds, and refuse a corrupt result
    with a ``ValueError`` naming the transform, the field and the fix.

    The steps of a ``Compose`` are applied and checked one at a time. A step must keep one row per edge of
    ``edge_index`` in every per-edge field and one row per node in every per-node field, leave the per-node
    categories (layer, role, position, activation, pooling) and the ``geometry`` table unchanged, and keep every
    edge of its input with its kind and geometry (it may reorder edges and add reversed copies); categories are
    copied, never offset, averaged or summed. Self-loops are the one kind of new edge: self-loops appended to
    ``edge_index`` (stock ``AddSelfLoops`` / ``AddRemainingSelfLoops``, which extend ``edge_index`` and the
    field their ``attr`` names only) get

    * ``edge_attr``: PyG's ``fill_value`` semantics (the step's ``fill_value``: a float or tensor for every loop,
      or ``"add"`` / ``"mean"`` / ``"min"`` / ``"max"`` / ``"mul"`` of the edge features into the node), whichever
      field ``attr`` names (neural graphs have no ``edge_weight``); ``attr="edge_attr"`` fills it the same way;
    * ``edge_kind``: ``self_loop`` (no term of the network; :func:`neuralgraph.execute` refuses such graphs);
    * ``edge_geom``: the plain geometry row (stride 1, padding 0, dilation 1, kernel 1), appended to ``geometry``
      if the graph has none, so the earlier rows and every ``edge_geom`` keep their values.

    Stock ``ToUndirected`` coalesces parallel edges (a linear and a residual edge between the same two neurons,
    ``x + fc(x)``; a self-loop and its own reverse), summing their fields: refused on such graphs, with the fix
    (:class:`~neuralgraph.transforms.AddReverseEdges`, or ``AddSelfLoops`` after ``ToUndirected``).

    Args:
        transform (callable): the stock transform.
    """

    def __init__(self, transform):
        self.transform = transform

    def forward(self, data: NeuralGraph) -> NeuralGraph:
        for step in _steps(self.transform):
            data = _apply(step, data)
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


def _steps(transform) -> list:
    """The transforms of a (nested) ``Compose``, in order."""
    if isinstance(transform, Compose):
        return [s for t in transform.transforms for s in _steps(t)]
    return [transform]


def _apply(step, data: NeuralGraph) -> NeuralGraph:
    hidden = data.clone()
    # the geometry table is per graph: a stock transform would take it for a per-edge field when it happens to have
    # E rows (PyG decides by size), so it is set aside while the transform runs
    geometry = hidden.geometry if "geometry" in hidden else None
    if geometry is not None:
        del hidden.geometry
    out = step(hidden)
    if geometry is not None:
        out.geometry = geometry
    _fill_self_loops(step, data, out)
    _check(type(step).__name__, step, data, out)
    return out


def _fill_self_loops(step, data: NeuralGraph, out: NeuralGraph) -> None:
    """Give self-loops appended after the input's edges their per-edge fields (see :class:`CheckedTransform`)."""
    E = data.edge_index.size(1)
    if out.edge_index.size(1) <= E or not torch.equal(out.edge_index[:, :E], data.edge_index):
        return
    src, dst = out.edge_index[:, E:]
    if not bool((src == dst).all()):
        return
    L = src.numel()
    if "edge_attr" in out and out.edge_attr.size(0) == E:
        # PyG's fill_value semantics: the loop of every node, as add_self_loops computes it, then the loops added
        loops = add_self_loops(data.edge_index, data.edge_attr, fill_value=getattr(step, "fill_value", None),
                               num_nodes=data.num_nodes)[1][E:]
        out.edge_attr = torch.cat([out.edge_attr, loops[src]])
    if "edge_kind" in out and out.edge_kind.size(0) == E:
        out.edge_kind = torch.cat([out.edge_kind, out.edge_kind.new_full((L,), _LOOP)])
    if "edge_geom" in out and "geometry" in out and out.edge_geom.size(0) == E:
        table = out.geometry
        plain = torch.tensor(plain_geometry(table.size(1) // 4), dtype=table.dtype, device=table.device)
        found = (table == plain).all(1).nonzero().view(-1)
        if found.numel():
            row = int(found[0])
        else:
            row = table.size(0)
            out.geometry = torch.cat([table, plain.view(1, -1)])
        out.edge_geom = torch.cat([out.edge_geom, out.edge_geom.new_full((L,), row)])


def _check(name: str, step, data: NeuralGraph, out: NeuralGraph) -> None:
    N, E = out.num_nodes, out.edge_index.size(1)
    for field in ("edge_attr", *EDGE_CATEGORIES):
        if field in out and out[field].size(0) != E:
            raise ValueError(f"{name} made a corrupt neural graph: edge_index has {E} edges but {field} has "
                             f"{out[field].size(0)} rows (it changed the edges without their per-edge fields, and "
                             "the new edges are not self-loops appended after the old ones); neural graphs do not "
                             "support it")
    for field in ("x", *NODE_CATEGORIES):
        if field in out and out[field].size(0) != N:
            raise ValueError(f"{name} made a corrupt neural graph: {N} nodes but {field} has {out[field].size(0)} rows")
    for field in (*NODE_CATEGORIES, *EDGE_CATEGORIES, "geometry"):
        if field in data and field not in out:
            raise ValueError(f"{name} dropped the categorical field {field}; a neural graph needs it")
        if field in data and out[field].dtype != data[field].dtype:
            raise ValueError(f"{name} changed the dtype of the categorical field {field} ({data[field].dtype} -> "
                             f"{out[field].dtype}); categories of a neural graph may only be copied")
    for field in NODE_CATEGORIES:
        if field in data and not (N == data.num_nodes and torch.equal(out[field], data[field])):
            raise ValueError(f"{name} changed the per-node categorical field {field} (offset, averaged, reordered "
                             "or nodes added / removed); categories of a neural graph may only be copied")
    if "geometry" in data and "edge_geom" in data:
        G = data.geometry.size(0)
        if out.geometry.size(0) < G or not torch.equal(out.geometry[:G], data.geometry):
            raise ValueError(f"{name} changed the geometry table; it is per graph and may only be copied")
        geom = out.edge_geom
        if geom.numel() and (int(geom.min()) < 0 or int(geom.max()) >= out.geometry.size(0)):
            raise ValueError(f"{name} made edge_geom values outside the geometry table ({out.geometry.size(0)} rows; "
                             "offset or summed categories); categories of a neural graph may only be copied")
        if "edge_kind" in data:
            _check_edges(name, step, data, out)


def _check_edges(name: str, step, data: NeuralGraph, out: NeuralGraph) -> None:
    """Every input edge is still there (same endpoints, kind and geometry row; reversed copies allowed), every result
    edge is an input edge or its reverse, and self-loops are exactly the ``self_loop`` edges, with the plain
    geometry. Vectorised: ``unique`` over (endpoint pair, category) keys."""
    s, d = out.edge_index
    loop = s == d
    kind = out.edge_kind.long()
    if not torch.equal(loop, kind == _LOOP):
        e = int((loop != (kind == _LOOP)).nonzero()[0])
        raise ValueError(f"{name} made a corrupt neural graph: edge {int(s[e])} -> {int(d[e])} has edge_kind "
                         f"{_kind_name(int(kind[e]))}; self-loops, and only they, have edge_kind self_loop "
                         f"(summed or offset categories){_hint(step)}")
    if bool(loop.any()):
        plain = torch.tensor(plain_geometry(out.geometry.size(1) // 4), dtype=out.geometry.dtype)
        rows = out.geometry[out.edge_geom[loop].long()]
        if not bool((rows == plain.to(rows.device)).all()):
            raise ValueError(f"{name} gave self-loops a geometry other than the plain row {tuple(plain.tolist())} "
                             f"(summed or offset categories){_hint(step)}")
    n = max(data.num_nodes, out.num_nodes)
    si, di = data.edge_index
    keep = data.edge_kind.long() != _LOOP  # self-loops may be dropped; every other edge must stay
    # one row per edge: (endpoint pair, category), for the input's edges forward (which must stay), reversed
    # (allowed in the result too), then the result's edges (its self-loops are checked above); packed into one
    # integer through dense ids of each column, so one 1-d unique does it
    pairs = torch.cat([(si * n + di)[keep], di * n + si, (s * n + d)[~loop]])
    cats = torch.cat([_category(data)[keep], _category(data), _category(out)[~loop]])
    pair_id = torch.unique(pairs, return_inverse=True)[1]
    uc, cat_id = torch.unique(cats, return_inverse=True)
    _, inv = torch.unique(pair_id * uc.numel() + cat_id, return_inverse=True)
    k = int(keep.sum())
    fwd, allowed, res = inv[:k], inv[:k + data.edge_index.size(1)], inv[k + data.edge_index.size(1):]
    known = torch.zeros(int(inv.max()) + 1 if inv.numel() else 0, dtype=torch.bool, device=inv.device)
    known[allowed] = True
    if not bool(known[res].all()):
        e = int((~loop).nonzero().view(-1)[(~known[res]).nonzero()[0]])
        raise ValueError(f"{name} made {int((~known[res]).sum())} edge(s) whose kind / geometry match no edge of "
                         f"the input in either direction, e.g. {int(s[e])} -> {int(d[e])} with edge_kind "
                         f"{_kind_name(int(kind[e]))} (offset, averaged or summed categories); categories of a neural "
                         f"graph may only be copied{_hint(step)}")
    have = torch.bincount(res, minlength=known.numel())
    need = torch.bincount(fwd, minlength=known.numel())
    if bool((have < need).any()):
        missing = int((have[fwd] < need[fwd]).nonzero()[0])
        e = int(keep.nonzero().view(-1)[missing])
        raise ValueError(f"{name} merged or dropped {int((need - have).clamp(min=0).sum())} edge(s) of the input, "
                         f"e.g. {int(si[e])} -> {int(di[e])} with edge_kind {_kind_name(int(data.edge_kind[e]))}: "
                         f"the result no longer holds every weight of the network{_hint(step)}")


def _category(g: NeuralGraph) -> Tensor:
    """``[E]``: every edge's kind and ``geometry`` row as one integer (the result's table starts with the input's,
    so rows compare by index)."""
    return (g.edge_kind.long() + 128) * 2 ** 32 + g.edge_geom.long() + 2 ** 31


def _kind_name(k: int) -> str:
    return repr(EDGE_KINDS[k]) if 0 <= k < len(EDGE_KINDS) else f"{k} (no such kind)"


def _hint(step) -> str:
    if not isinstance(step, ToUndirected):
        return ""
    return ("; stock ToUndirected coalesces parallel edges between the same two neurons (a linear and a residual "
            "edge of x + fc(x); a self-loop and its own reverse), adding up their kinds, geometries and weights: "
            "apply ToUndirected before AddSelfLoops, and on graphs with parallel edges use "
            "neuralgraph.transforms.AddReverseEdges(mark=False), which copies every edge")
