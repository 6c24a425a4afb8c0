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
                               neuron has a learnable additive term; further columns are
                               converter options (see ``ConvertConfig.node_features``)
``edge_index``   [2, E] long   source -> target, forward dataflow
``edge_attr``    [E, F_edge]   the flattened, zero-padded, centred kernel (F_edge = prod of
                               ``max_kernel``); a linear weight or an identity edge sits on the
                               centre tap; attention edges use the first 3 taps for (q, k, v)
``node_layer``   [N] long      dataflow depth: 0 for input neurons, 1 + the deepest source else
``node_role``    [N] long      :data:`ROLES`
``node_pos``     [N] long      position id: index of an input / output neuron; the layer number
                               (``node_layer``) for every other neuron
``node_act``     [N] long      activation applied by the neuron (:mod:`neuralgraph.convert.activations`)
``node_pool``    [N] long      pooling applied to the neuron's output map (:data:`POOLS`)
``node_spatial`` [N] long      0, or 1 + the spatial position of a flatten node
``edge_kind``    [E] long      :data:`EDGE_KINDS`
``edge_conv``    [E, 4*D] long stride, padding, dilation and kernel size per spatial dim
                               (1, 0, 1, 1 for non-conv edges)
===============  ============  ==============================================================
"""
from __future__ import annotations

from typing import Any

import torch
from torch_geometric.data import Data

#: Node roles (``node_role``).
ROLES = ("input", "hidden", "output", "virtual")
ROLE = {name: i for i, name in enumerate(ROLES)}

#: Edge kinds (``edge_kind``).
EDGE_KINDS = ("linear", "conv", "residual", "identity", "batchnorm", "layernorm", "groupnorm", "instancenorm",
              "attention", "flatten", "embedding", "group", "product")
EDGE_KIND = {name: i for i, name in enumerate(EDGE_KINDS)}

#: Pooling recorded on the neurons whose output map is pooled (``node_pool``).
POOLS = ("none", "max", "avg", "global_avg", "global_max", "lp", "other")
POOL = {name: i for i, name in enumerate(POOLS)}

#: ``eps`` of a normalization edge too short to store it (fewer than 4 taps)
DEFAULT_EPS = 1e-5


def norm_taps(edge_dim: int, centre: int) -> tuple[int | None, int | None, int | None]:
    """Taps of ``running_mean``, ``running_var`` and ``eps`` on a normalization edge: the first three that are
    not the centre tap (``None`` where the edge is too short)."""
    free = [t for t in range(edge_dim) if t != centre]
    return tuple(free[i] if i < len(free) else None for i in range(3))


#: Integer per-node fields (all batched by concatenation, none offset).
NODE_CATEGORIES = ("node_layer", "node_role", "node_pos", "node_act", "node_pool", "node_spatial")
#: Integer per-edge fields.
EDGE_CATEGORIES = ("edge_kind", "edge_conv")


class NeuralGraph(Data):
    """A neural network as a graph: a :class:`torch_geometric.data.Data` with fixed extra fields.

    Built by :func:`neuralgraph.to_neural_graph`; see the module docstring for the fields.
    Only ``edge_index`` is offset when batching; every categorical field is concatenated along
    dim 0 unchanged.
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
        return 0

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
