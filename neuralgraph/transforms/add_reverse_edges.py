"""Add the reversed copy of every edge (E^T), optionally marked by an extra direction channel."""
from __future__ import annotations

import torch
from torch_geometric.transforms import BaseTransform

from neuralgraph.data.graph import EDGE_CATEGORIES, NeuralGraph


class AddReverseEdges(BaseTransform):
    r"""For every edge :math:`i \to j` add :math:`j \to i` with the same features and categories.

    Args:
        mark (bool, optional): append one edge feature, 0 on original and 1 on reversed edges, so models
            can tell the directions apart (``F_edge`` grows by one). (default: ``True``)

    Shapes:
        ``edge_index [2, E] -> [2, 2E]``, ``edge_attr [E, F] -> [2E, F (+1)]``; originals come first.
    """

    def __init__(self, mark: bool = True):
        self.mark = mark

    def forward(self, data: NeuralGraph) -> NeuralGraph:
        data = data.clone()
        e = data.edge_index.size(1)
        attr = data.edge_attr
        if self.mark:
            flag = torch.cat([attr.new_zeros(e, 1), attr.new_ones(e, 1)])
            attr = torch.cat([torch.cat([attr, attr]), flag], dim=1)
        else:
            attr = torch.cat([attr, attr])
        data.edge_index = torch.cat([data.edge_index, data.edge_index.flip(0)], dim=1)
        data.edge_attr = attr
        for key in EDGE_CATEGORIES:
            data[key] = torch.cat([data[key], data[key]])
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mark={self.mark})"
