"""ToNetworkX: the neural graph as a networkx MultiDiGraph with readable attributes."""
import networkx as nx
import torch
from torch import nn

from neuralgraph import to_neural_graph
from neuralgraph.transforms import ToNetworkX
from tests.helpers.nets import WildParkCNN


def test_to_networkx_counts_and_attributes():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    g = to_neural_graph(m)
    G = ToNetworkX()(g)
    assert isinstance(G, nx.MultiDiGraph)
    assert G.number_of_nodes() == g.num_nodes == 9 and G.number_of_edges() == g.edge_index.size(1) == 20
    assert [G.nodes[i]["role"] for i in range(9)] == ["input"] * 3 + ["hidden"] * 4 + ["output"] * 2
    assert [G.nodes[i]["act"] for i in range(3, 7)] == ["relu"] * 4
    assert [G.nodes[i]["layer"] for i in range(9)] == [0] * 3 + [1] * 4 + [2] * 2
    assert G.nodes[3]["bias"] == m[0].bias[0].item() and G.nodes[7]["bias"] == 0.0
    assert G.edges[0, 3, 0] == {"kind": "linear", "weight": m[0].weight[0, 0].item()}
    assert G.edges[4, 8, 0]["weight"] == m[2].weight[1, 1].item()


def test_to_networkx_keeps_parallel_residual_edges():
    g = to_neural_graph(WildParkCNN())
    G = ToNetworkX()(g)
    assert G.number_of_edges() == g.edge_index.size(1)
    kinds = [d["kind"] for *_, d in G.edges(data=True)]
    assert kinds.count("residual") == 12 and kinds.count("conv") > 0
