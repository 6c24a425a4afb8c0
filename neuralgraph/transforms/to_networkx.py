"""A neural graph as a networkx ``MultiDiGraph`` (for inspection, drawing and graph algorithms)."""
from __future__ import annotations

import networkx as nx
from torch_geometric.transforms import BaseTransform

from neuralgraph.data.graph import NeuralGraph
from neuralgraph.viz import to_networkx


class ToNetworkX(BaseTransform):
    """Convert a :class:`NeuralGraph` into a ``networkx.MultiDiGraph`` (:func:`neuralgraph.viz.to_networkx`).

    Nodes keep their ids and get ``role``, ``layer``, ``act`` (names) and ``bias``; edges get ``kind``
    (name) and ``weight`` (the centre tap, where linear weights and identity edges sit). Parallel
    edges (e.g. a residual edge beside a weight) stay separate. Draw the result with
    :func:`neuralgraph.viz.draw_neural_graph` on the original graph, or with any networkx tool.

    Returns a networkx graph, not a PyG ``Data``: use it last in a ``Compose``.
    """

    def forward(self, data: NeuralGraph) -> nx.MultiDiGraph:  # type: ignore[override]
        return to_networkx(data)
