"""Drawing neural graphs: a layered layout (columns = ``node_layer``) with matplotlib."""
from __future__ import annotations

from typing import Any

import networkx as nx

from neuralgraph.convert.activations import ACTIVATIONS
from neuralgraph.data.graph import EDGE_KIND_TABLE, EDGE_KINDS, ROLES, NeuralGraph

_ROLE_COLOR = {"input": "#9ecae1", "hidden": "#fdd0a2", "output": "#a1d99b", "virtual": "#dadaeb"}


def to_networkx(g: NeuralGraph) -> nx.MultiDiGraph:
    """A networkx multigraph with readable attributes (role, layer, activation, bias; kind, weight)."""
    G = nx.MultiDiGraph()
    centre = g.edge_attr.size(1) // 2
    for i in range(g.num_nodes):
        G.add_node(i, role=ROLES[int(g.node_role[i])], layer=int(g.node_layer[i]),
                   act=ACTIVATIONS[int(g.node_act[i])], bias=float(g.x[i, 0]))
    for e, (s, d) in enumerate(g.edge_index.t().tolist()):
        G.add_edge(s, d, kind=EDGE_KINDS[int(g.edge_kind[e])], weight=float(g.edge_attr[e, centre]))
    return G


def draw_neural_graph(g: NeuralGraph, ax: Any = None, title: str | None = None, labels: bool = True) -> Any:
    """Draw ``g`` with inputs on the left and one column per layer; edges coloured by kind."""
    import matplotlib.pyplot as plt

    G = to_networkx(g)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    columns: dict[int, list[int]] = {}
    for n, d in G.nodes(data=True):
        columns.setdefault(d["layer"], []).append(n)
    pos = {}
    for layer, nodes in columns.items():
        for k, n in enumerate(nodes):
            pos[n] = (layer, (len(nodes) - 1) / 2 - k)
    from matplotlib.lines import Line2D

    handles = []
    for kind in EDGE_KIND_TABLE:
        color, style = kind.style
        edges = [(u, v) for u, v, d in G.edges(data=True) if d["kind"] == kind.name]
        if edges:
            nx.draw_networkx_edges(G, pos, edgelist=edges, ax=ax, edge_color=color, style=style, alpha=0.6,
                                   arrows=True, arrowsize=6, connectionstyle="arc3,rad=0.08")
            handles.append(Line2D([], [], color=color, linestyle=style, label=kind.name))
    nx.draw_networkx_nodes(G, pos, ax=ax, node_size=160,
                           node_color=[_ROLE_COLOR[d["role"]] for _, d in G.nodes(data=True)],
                           edgecolors="black", linewidths=0.5)
    if labels:
        short = {"none": "", "relu": "R", "gelu": "G", "tanh": "T", "sigmoid": "S", "leaky_relu": "L"}
        nx.draw_networkx_labels(G, pos, ax=ax, font_size=6,
                                labels={n: short.get(d["act"], d["act"][:2]) for n, d in G.nodes(data=True)})
    ax.legend(handles=handles, loc="upper left", fontsize=6, frameon=False)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax
