"""Neural graphs in stock PyG pipelines: stock layers with edge features and a standard training loop (the example
of docs/models.md), a NeuralGraph list through InMemoryDataset, and stock transforms that keep categorical fields
intact or are refused."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import InMemoryDataset
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GATv2Conv, GINEConv, TransformerConv, global_mean_pool
from torch_geometric.transforms import AddSelfLoops, BaseTransform, Compose, ToUndirected

from neuralgraph import NeuralGraph, to_neural_graph
from neuralgraph.data.graph import EDGE_CATEGORIES, NODE_CATEGORIES
from neuralgraph.models import create_model
from neuralgraph.transforms import CheckedTransform
from tests.helpers.nets import WildParkCNN, permute_wildpark
from tests.helpers.permute import assert_same_function


def wildpark_graphs(n: int = 6) -> list[NeuralGraph]:
    torch.manual_seed(0)
    shapes = [((4, 6), (3, 5), (-1, -1)), ((6, 4, 8), (5, 3, 3), (-1, -1, 0))]
    graphs = []
    for i in range(n):
        ch, k, r = shapes[i % 2]
        g = to_neural_graph(WildParkCNN(channels=ch, kernels=k, acts=("relu",) * len(ch), residual=r))
        g.y = torch.rand(1)
        graphs.append(g)
    return graphs


class StockGNN(nn.Module):
    """The docs example: stock PyG layers with edge_dim, global mean pooling."""

    def __init__(self, layer: str, node_in: int = 4, edge_in: int = 49, hidden: int = 16):
        super().__init__()
        self.proj = nn.Linear(node_in, hidden)
        make = {"gine": lambda: GINEConv(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()), edge_dim=edge_in),
                "transformer": lambda: TransformerConv(hidden, hidden, edge_dim=edge_in),
                "gatv2": lambda: GATv2Conv(hidden, hidden, edge_dim=edge_in)}[layer]
        self.convs = nn.ModuleList([make(), make()])
        self.out = nn.Linear(hidden, 1)

    def forward(self, data):
        x = self.proj(data.x)
        for conv in self.convs:
            x = conv(x, data.edge_index, data.edge_attr).relu()
        return self.out(global_mean_pool(x, data.batch))


@pytest.mark.parametrize("layer", ["gine", "transformer", "gatv2"])
def test_stock_layers_train_on_neural_graphs(layer):
    torch.manual_seed(0)
    model = StockGNN(layer)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(wildpark_graphs(), batch_size=3, shuffle=True)
    losses = []
    for _ in range(8):  # a standard PyG loop
        for batch in loader:
            loss = F.mse_loss(model(batch).view(-1), batch.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses))) and min(losses[-4:]) < losses[0]
    # invariant to hidden-neuron permutations of the real module (the graph is isomorphic)
    net = WildParkCNN(channels=(4, 6, 8), kernels=(3, 5, 3), acts=("relu", "tanh", "relu"), residual=(-1, -1, 0))
    perm = permute_wildpark(net, torch.Generator().manual_seed(1))
    assert_same_function(net, perm, torch.randn(2, 1, 8, 8))
    a, b = [next(iter(DataLoader([to_neural_graph(m)]))) for m in (net, perm)]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(a), model(b), atol=1e-5, rtol=0)


def test_registered_stock_baseline_runs():
    model = create_model("pyg-gine", out_dim=1, node_in=4, edge_in=49, hidden=8, num_layers=2)
    out = model(next(iter(DataLoader(wildpark_graphs(4), batch_size=4))))
    assert out.shape == (4, 1) and torch.isfinite(out).all()


class GraphList(InMemoryDataset):
    """A NeuralGraph list saved once and loaded through PyG's InMemoryDataset machinery."""

    def __init__(self, root, graphs=None):
        self.graphs = graphs
        super().__init__(root)
        self.load(self.processed_paths[0], data_cls=NeuralGraph)

    @property
    def processed_file_names(self):
        return ["graphs.pt"]

    def process(self):
        self.save(self.graphs, self.processed_paths[0])


def test_in_memory_dataset_round_trip(tmp_path):
    graphs = wildpark_graphs(4)
    GraphList(tmp_path, graphs)
    loaded = GraphList(tmp_path)  # read back from disk (process() is not run again)
    assert len(loaded) == 4 and loaded.graphs is None
    for g, h in zip(graphs, loaded):
        assert isinstance(h, NeuralGraph) and set(g.keys()) == set(h.keys())
        assert all(torch.equal(g[k], h[k]) for k in g.keys())
    batch = next(iter(DataLoader(loaded, batch_size=4)))
    assert torch.equal(batch.node_layer, torch.cat([g.node_layer for g in graphs]))  # categories never offset


def test_stock_transforms_keep_categories_or_are_refused():
    g = wildpark_graphs(1)[0]
    E = g.edge_index.size(1)
    und = CheckedTransform(Compose([ToUndirected()]))(g)
    assert und.edge_index.size(1) == 2 * E  # neural graphs have no reverse pairs to merge: every edge is copied
    for field in NODE_CATEGORIES:
        assert torch.equal(und[field], g[field])
    for field in EDGE_CATEGORIES:  # copied (the reversed edge gets its edge's category), never summed or offset
        assert und[field].dtype == g[field].dtype and torch.isin(und[field].unique(), g[field].unique()).all()
    # stock AddSelfLoops extends edge_index only: refused where it happens, and by every graph model
    with pytest.raises(ValueError, match="AddSelfLoops made a corrupt neural graph.*edge_attr"):
        CheckedTransform(AddSelfLoops())(g)
    class DropActivations(BaseTransform):  # a transform that loses a categorical field
        def forward(self, data):
            del data.node_act
            return data

    with pytest.raises(ValueError, match="DropActivations dropped the categorical field node_act"):
        CheckedTransform(DropActivations())(g)
    bad = AddSelfLoops()(g.clone())
    for name, kw in [("ng-gnn", {"hidden": 8, "num_layers": 1, "readout": "mean", "deg": [0, 1]}),
                     ("ng-t", {"node_dim": 8, "edge_dim": 4, "num_layers": 1, "readout": "mean"}),
                     ("pyg-gine", {"hidden": 8, "num_layers": 1})]:
        with pytest.raises(ValueError, match="corrupt neural graph"):
            create_model(name, out_dim=1, **kw)(bad)


# --- the docs example, as it stands ------------------------------------------------------------------------------
def docs_example() -> str:
    """The first Python block of docs/models.md's "Stock PyG layers on neural graphs" section."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    section = text[text.index("## Stock PyG layers on neural graphs"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def run_docs_example() -> dict:
    namespace: dict = {}
    exec(compile(docs_example(), "docs/models.md (Stock PyG layers)", "exec"), namespace)
    model, opt, graphs = namespace["model"], namespace["opt"], namespace["graphs"]
    # it trained: Adam stepped every parameter, on the wildpark task's graphs, to a finite loss
    assert len(opt.state) == len(list(model.parameters())) and all(int(s["step"]) > 0 for s in opt.state.values())
    assert torch.isfinite(namespace["loss"]) and all(isinstance(g, NeuralGraph) for g in graphs)
    return namespace


def test_the_docs_example_runs_on_a_tiny_wildpark_zoo(tmp_path, monkeypatch):
    """The block runs unchanged (imports and names complete); the task's zoo is a tiny one of real Wild-Park-style
    CNN members instead of the 12 trained runs it generates (that run: the slow test below)."""
    from neuralgraph.data.formats.native import load_zoo
    from neuralgraph.tasks import zoo_tasks
    from tests.data.test_zoo_format import write_toy_zoo

    monkeypatch.setenv("NEURALGRAPH_HOME", str(tmp_path / "home"))
    zoo = load_zoo(write_toy_zoo(tmp_path / "zoo", runs=10, ckpts=2))
    opened = []
    monkeypatch.setattr(zoo_tasks, "default_zoo", lambda preset, runs: opened.append((preset, runs)) or zoo)
    ns = run_docs_example()
    assert opened == [("wildpark-digits", 12)] and len(ns["graphs"]) == 16   # 8 training runs x 2 checkpoints


@pytest.mark.slow
def test_the_docs_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURALGRAPH_HOME", str(tmp_path / "home"))
    run_docs_example()
