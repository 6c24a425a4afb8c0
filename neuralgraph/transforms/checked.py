"""Stock PyG transforms on neural graphs, checked: a result whose fields no longer describe one network is refused."""
from __future__ import annotations

import torch
from torch_geometric.transforms import BaseTransform

from neuralgraph.data.graph import EDGE_CATEGORIES, NODE_CATEGORIES, NeuralGraph


class CheckedTransform(BaseTransform):
    r"""Apply a stock transform (``ToUndirected``, ``Compose([...])``, ...) to a :class:`~neuralgraph.NeuralGraph`
    and refuse a corrupt result with a ``ValueError`` naming the transform and the field.

    A neural graph's per-edge fields (``edge_attr``, ``edge_kind``, ``edge_geom``) must keep one row per edge of
    ``edge_index`` and its per-node fields one row per node, and categorical fields (layer, role, activation,
    edge kind, geometry) may be copied but never offset, averaged or invented. Stock ``AddSelfLoops`` breaks the
    first rule (it extends ``edge_index`` only); ``ToUndirected`` keeps them (it copies the reversed edges'
    fields: neural graphs have no reverse pairs to merge).

    Args:
        transform (callable): the stock transform.
    """

    def __init__(self, transform):
        self.transform = transform

    def forward(self, data: NeuralGraph) -> NeuralGraph:
        out = self.transform(data.clone())
        name = type(self.transform).__name__
        N, E = out.num_nodes, out.edge_index.size(1)
        for field in ("edge_attr", *EDGE_CATEGORIES):
            if field in out and out[field].size(0) != E:
                raise ValueError(f"{name} made a corrupt neural graph: edge_index has {E} edges but {field} has "
                                 f"{out[field].size(0)} rows (it changed the edges without their per-edge fields); "
                                 "neural graphs do not support it")
        for field in ("x", *NODE_CATEGORIES):
            if field in out and out[field].size(0) != N:
                raise ValueError(f"{name} made a corrupt neural graph: {N} nodes but {field} has {out[field].size(0)} rows")
        for field in (*NODE_CATEGORIES, *EDGE_CATEGORIES, "geometry"):
            if field in data and field not in out:
                raise ValueError(f"{name} dropped the categorical field {field}; a neural graph needs it")
            if field in data and (out[field].dtype != data[field].dtype
                                  or not torch.isin(out[field].unique(), data[field].unique()).all()):
                raise ValueError(f"{name} changed the categorical field {field} (offset, averaged or new values); "
                                 "categories of a neural graph may only be copied")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"
