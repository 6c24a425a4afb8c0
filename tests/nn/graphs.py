"""Hand-built random neural graphs for layer/model tests (no converter needed)."""
from __future__ import annotations

import torch

from neuralgraph.data.graph import EDGE_KIND, ROLE, NeuralGraph


def random_graph(layers=(3, 5, 4, 2), edge_in: int = 49, node_in: int = 4, seed: int = 0,
                 residual: bool = True, num_acts: int = 4) -> NeuralGraph:
    """An MLP-shaped neural graph with random features (+ a residual edge set if deep enough)."""
    g = torch.Generator().manual_seed(seed)
    offsets = [0]
    for n in layers:
        offsets.append(offsets[-1] + n)
    N = offsets[-1]
    src, dst, kinds = [], [], []
    for l in range(len(layers) - 1):
        for i in range(layers[l]):
            for j in range(layers[l + 1]):
                src.append(offsets[l] + i)
                dst.append(offsets[l + 1] + j)
                kinds.append(EDGE_KIND["linear"])
    if residual and len(layers) >= 4:  # identity edges layer 1 -> layer 3 on min(c1, c3) neurons
        for i in range(min(layers[1], layers[3])):
            src.append(offsets[1] + i)
            dst.append(offsets[3] + i)
            kinds.append(EDGE_KIND["residual"])
    E = len(src)
    layer = torch.cat([torch.full((n,), l, dtype=torch.long) for l, n in enumerate(layers)])
    role = torch.full((N,), ROLE["hidden"], dtype=torch.long)
    role[: layers[0]] = ROLE["input"]
    role[offsets[-2]:] = ROLE["output"]
    pos = layer.clone()
    pos[: layers[0]] = torch.arange(layers[0])
    pos[offsets[-2]:] = torch.arange(layers[-1])
    act = torch.randint(0, num_acts, (len(layers),), generator=g)[layer]
    x = torch.zeros(N, node_in)
    x[layers[0]:, 0] = torch.randn(N - layers[0], generator=g)
    x[layers[0]:, 1] = 1.0
    edge_attr = torch.zeros(E, edge_in)
    edge_attr[:, edge_in // 2] = torch.randn(E, generator=g)
    edge_attr[:, : edge_in // 2] = 0.1 * torch.randn(E, edge_in // 2, generator=g)
    return NeuralGraph(
        x=x, edge_index=torch.tensor([src, dst], dtype=torch.long), edge_attr=edge_attr,
        node_layer=layer, node_role=role, node_pos=pos, node_act=act,
        node_pool=torch.zeros(N, dtype=torch.long), node_spatial=torch.zeros(N, dtype=torch.long),
        edge_kind=torch.tensor(kinds, dtype=torch.long),
        edge_geom=torch.zeros(E, dtype=torch.int32),
        geometry=torch.tensor([[1, 1, 0, 0, 1, 1, 1, 1]], dtype=torch.int16),
    )


def relabel(graph: NeuralGraph, perm: torch.Tensor) -> NeuralGraph:
    """Isomorphic copy: new node ``k`` is old node ``perm[k]``; edges keep their order."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    out = graph.clone()
    for key in ("x", "node_layer", "node_role", "node_pos", "node_act", "node_pool", "node_spatial"):
        out[key] = graph[key][perm]
    out.edge_index = inv[graph.edge_index]
    return out


def hidden_perm(graph: NeuralGraph, seed: int = 0) -> torch.Tensor:
    """A permutation shuffling hidden neurons within each layer (inputs/outputs fixed)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.arange(graph.num_nodes)
    hidden = graph.node_role == ROLE["hidden"]
    for l in graph.node_layer[hidden].unique():
        idx = ((graph.node_layer == l) & hidden).nonzero().view(-1)
        perm[idx] = idx[torch.randperm(idx.numel(), generator=g)]
    return perm
