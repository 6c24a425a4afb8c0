"""Neural graphs in stock PyG pipelines: stock layers with edge features and a standard training loop (the example
of docs/models.md), a NeuralGraph list through InMemoryDataset, and stock transforms (ToUndirected, AddSelfLoops,
Compose) applied through CheckedTransform on real converted networks: every field intact, self-loops well defined,
batching, saving and every graph model working on the result, corrupting transforms refused."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch, InMemoryDataset
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GATv2Conv, GINEConv, TransformerConv, global_mean_pool
from torch_geometric.transforms import AddRemainingSelfLoops, AddSelfLoops, BaseTransform, Compose, ToUndirected
from torch_geometric.utils import scatter

from neuralgraph import NeuralGraph, to_neural_graph
from neuralgraph.data.graph import EDGE_KIND, NODE_CATEGORIES, plain_geometry
from neuralgraph.models import create_model
from neuralgraph.transforms import AddReverseEdges, CheckedTransform
from tests.convert.test_tokens import TinyViT
from tests.helpers.nets import MLP, WildParkCNN, permute_mlp, permute_wildpark, randomize
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


# ------------------------------------------------------------------------------------------ stock transforms
class SkipAdd(nn.Module):
    """x + fc(x): a linear and a residual edge between the same two neurons (parallel edges)."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(x + self.fc(x))


def real_graphs() -> dict[str, NeuralGraph]:
    """A small CNN with a residual, an MLP, a tiny ViT (patches, class token, position embedding, attention,
    LayerNorm) and a conv-only net (no plain geometry row; as many geometry rows as edges)."""
    torch.manual_seed(0)
    cnn = WildParkCNN(channels=(4, 6, 8), kernels=(3, 5, 3), acts=("relu", "tanh", "relu"), residual=(-1, -1, 0))
    convs = nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU(), nn.Conv2d(1, 1, 5, stride=2))
    return {"cnn": to_neural_graph(randomize(cnn)), "mlp": to_neural_graph(randomize(MLP())),
            "vit": to_neural_graph(randomize(TinyViT(depth=1)), example_input=torch.randn(1, 3, 8, 8)),
            "convs": to_neural_graph(randomize(convs), example_input=torch.randn(1, 1, 12, 12))}


TRANSFORMS = {"undirected": lambda: ToUndirected(), "self-loops": lambda: AddSelfLoops(),
              "both": lambda: Compose([ToUndirected(), AddSelfLoops()])}


def edge_table(g: NeuralGraph) -> dict[tuple[int, int], int]:
    """(source, target) -> edge id (the graphs here have no parallel edges)."""
    table = {tuple(p): e for e, p in enumerate(g.edge_index.t().tolist())}
    assert len(table) == g.edge_index.size(1)
    return table


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_stock_transforms_keep_every_field(transform):
    for name, g in real_graphs().items():
        h = CheckedTransform(TRANSFORMS[transform]())(g)
        N, E = g.num_nodes, g.edge_index.size(1)
        reverse, loops = transform != "self-loops", transform != "undirected"
        assert h.edge_index.size(1) == E * (1 + reverse) + N * loops, name
        assert set(h.keys()) == set(g.keys()) and all(h[k].dtype == g[k].dtype for k in g.keys())
        for field in ("x", *NODE_CATEGORIES):  # per-node fields untouched
            assert torch.equal(h[field], g[field]), (name, field)
        G = g.geometry.size(0)  # the table keeps its rows; only a missing plain row is appended
        assert torch.equal(h.geometry[:G], g.geometry)
        plain = torch.tensor(plain_geometry(2), dtype=torch.int16)
        has_plain = bool((g.geometry == plain).all(1).any())
        assert h.geometry.size(0) == G + (loops and not has_plain), name
        assert (name == "convs") == (not has_plain)
        rows, new = edge_table(h), edge_table(g)
        for (s, d), e in new.items():  # every edge keeps its weights, kind and geometry, its reverse copies them
            for pair in [(s, d), (d, s)] if reverse else [(s, d)]:
                f = rows.pop(pair)
                assert torch.equal(h.edge_attr[f], g.edge_attr[e]), (name, pair)
                assert h.edge_kind[f] == g.edge_kind[e] and torch.equal(h.edge_conv[f], g.edge_conv[e]), (name, pair)
        assert sorted(rows) == ([(i, i) for i in range(N)] if loops else []), name  # one self-loop per neuron
        if loops:
            f = torch.tensor([rows[(i, i)] for i in range(N)])
            assert (h.edge_kind[f] == EDGE_KIND["self_loop"]).all() and (h.edge_conv[f] == plain).all()
            assert (h.edge_attr[f] == 1.0).all()  # AddSelfLoops' default fill_value, on every tap
            assert (h.edge_kind[h.edge_index[0] != h.edge_index[1]] != EDGE_KIND["self_loop"]).all()


def test_self_loop_features_follow_fill_value():
    g = real_graphs()["cnn"]
    E, N = g.edge_index.size(1), g.num_nodes
    # whichever field attr names (neural graphs have no edge_weight), edge_attr gets PyG's fill_value semantics
    for fill in (0.5, torch.arange(49.0), "mean", "max"):
        a = CheckedTransform(AddSelfLoops(fill_value=fill))(g)
        b = CheckedTransform(AddSelfLoops(attr="edge_attr", fill_value=fill))(g)  # stock fills edge_attr itself
        assert torch.equal(a.edge_attr, b.edge_attr) and torch.equal(a.edge_kind, b.edge_kind)
        assert torch.equal(a.edge_attr[:E], g.edge_attr) and torch.equal(a.edge_index[:, E:], torch.arange(N).repeat(2, 1))
    loops = CheckedTransform(AddSelfLoops(fill_value="mean"))(g).edge_attr[E:]
    target = g.edge_index[1]  # mean of the features of the edges into each neuron, 0 for inputs
    assert torch.allclose(loops, scatter(g.edge_attr, target, 0, dim_size=N, reduce="mean"))
    j = int(target[0])
    assert torch.allclose(loops[j], g.edge_attr[target == j].mean(0)) and loops[j].abs().sum() > 0
    assert torch.equal(CheckedTransform(AddSelfLoops(fill_value=torch.arange(49.0)))(g).edge_attr[E:],
                       torch.arange(49.0).expand(N, 49))
    # AddRemainingSelfLoops on a graph without self-loops appends the same loops
    for fill in (0.5, "mean"):
        a, b = (CheckedTransform(t(fill_value=fill))(g) for t in (AddSelfLoops, AddRemainingSelfLoops))
        assert all(torch.equal(a[k], b[k]) for k in g.keys())


def test_transformed_graphs_batch_and_save(tmp_path):
    transform = CheckedTransform(Compose([ToUndirected(), AddSelfLoops()]))
    graphs = [transform(g) for g in real_graphs().values()]
    batch = Batch.from_data_list(graphs)
    # edge_geom offset by the earlier graphs' tables (one of them grew a plain row): every edge keeps its geometry
    assert torch.equal(batch.edge_conv, torch.cat([h.edge_conv for h in graphs]))
    for i, h in enumerate(graphs):
        assert all(torch.equal(batch.get_example(i)[k], h[k]) for k in h.keys())
    assert torch.equal(batch.edge_kind, torch.cat([h.edge_kind for h in graphs]))  # categories never offset
    assert torch.equal(batch.node_layer, torch.cat([h.node_layer for h in graphs]))
    GraphList(tmp_path, graphs)
    loaded = GraphList(tmp_path)
    for h, k in zip(graphs, loaded):
        assert set(h.keys()) == set(k.keys()) and all(torch.equal(h[f], k[f]) for f in h.keys())


GRAPH_MODELS = {"ng-gnn": {"hidden": 8, "num_layers": 2, "readout": "mean", "deg": [0, 1]},
                "ng-t-dense": {"node_dim": 8, "edge_dim": 4, "num_layers": 2, "readout": "mean", "mode": "dense"},
                "ng-t-sparse": {"node_dim": 8, "edge_dim": 4, "num_layers": 2, "readout": "mean", "mode": "sparse"},
                "pyg-gine": {"hidden": 8, "num_layers": 2}}


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_graph_models_run_on_transformed_graphs(name):
    torch.manual_seed(0)
    model = create_model(name.removesuffix("-dense").removesuffix("-sparse"), out_dim=1, node_in=4, edge_in=49,
                         **GRAPH_MODELS[name])
    transform = CheckedTransform(Compose([ToUndirected(), AddSelfLoops()]))
    batch = Batch.from_data_list([transform(g) for g in real_graphs().values()])
    out = model(batch)
    assert out.shape == (4, 1) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    kind_emb = getattr(getattr(model, "encoder", None), "kind_emb", None)
    if kind_emb is not None:  # the self-loops are seen as their own kind
        assert kind_emb.weight.grad[EDGE_KIND["self_loop"]].abs().sum() > 0
    # a permutation of the real module's hidden neurons gives the same output through the transform
    net = randomize(MLP())
    perm = permute_mlp(net, torch.Generator().manual_seed(3))
    assert_same_function(net, perm, torch.randn(4, 6))
    a, b = [Batch.from_data_list([transform(to_neural_graph(m))]) for m in (net, perm)]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(a), model(b), atol=1e-5, rtol=0)


def test_corrupting_transforms_are_refused_with_the_fix():
    g = to_neural_graph(randomize(SkipAdd()))
    # ToUndirected coalesces the parallel linear + residual edges of x + fc(x), summing kinds and weights
    with pytest.raises(ValueError, match=r"ToUndirected merged or dropped 4 edge\(s\).*AddReverseEdges\(mark=False\)"):
        CheckedTransform(ToUndirected())(g)
    h = CheckedTransform(Compose([AddReverseEdges(mark=False), AddSelfLoops()]))(g)  # the fix works
    assert h.edge_index.size(1) == 2 * g.edge_index.size(1) + g.num_nodes
    # a self-loop coalesced with its own reverse: its kind summed
    with pytest.raises(ValueError, match="ToUndirected .*self_loop.*apply ToUndirected before AddSelfLoops"):
        CheckedTransform(Compose([AddSelfLoops(), ToUndirected()]))(real_graphs()["mlp"])

    class Shuffle(BaseTransform):  # values stay in the vocabulary, edges no longer carry their own
        def __init__(self, field):
            self.field = field

        def forward(self, data):
            data[self.field] = data[self.field].flip(0)
            return data

    class Offset(BaseTransform):
        def forward(self, data):
            data.edge_kind = data.edge_kind + 1
            return data

    class DropActivations(BaseTransform):  # a transform that loses a categorical field
        def forward(self, data):
            del data.node_act
            return data

    class AddEdge(BaseTransform):  # a new edge that is not a self-loop, without its fields
        def forward(self, data):
            data.edge_index = torch.cat([data.edge_index, torch.tensor([[0], [1]])], 1)
            return data

    cnn = real_graphs()["cnn"]
    for transform, match in [(Shuffle("edge_kind"), "Shuffle made .* edge.* match no edge of the input"),
                             (Shuffle("edge_geom"), "Shuffle made .* edge.* match no edge of the input"),
                             (Offset(), r"Offset made 120 edge\(s\) whose kind / geometry match no edge"),
                             (Shuffle("node_layer"), "Shuffle changed the per-node categorical field node_layer"),
                             (DropActivations(), "DropActivations dropped the categorical field node_act"),
                             (AddEdge(), "AddEdge made a corrupt neural graph.*edge_attr has"),
                             (Compose([ToUndirected(), Shuffle("node_act")]), "Shuffle changed .* node_act")]:
        with pytest.raises(ValueError, match=match):
            CheckedTransform(transform)(cnn)
    # stock AddSelfLoops alone extends edge_index only: every graph model refuses the result
    bad = AddSelfLoops()(cnn.clone())
    for name, kw in GRAPH_MODELS.items():
        with pytest.raises(ValueError, match="corrupt neural graph.*CheckedTransform"):
            create_model(name.removesuffix("-dense").removesuffix("-sparse"), out_dim=1, **kw)(bad)


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
