"""The papers' choices as defaults (issue 15), each pinned: the readout concatenates the output neurons
(Neural Graphs appendix D), NG-GNN's edge update reads the layer's input node states (eq. 3)."""
from __future__ import annotations

import pytest
import torch

from neuralgraph import to_neural_graph
from neuralgraph.data.graph import ROLE
from neuralgraph.models import create_model, model_arguments
from neuralgraph.tasks import Split, Task
from tests.helpers.nets import MLP, WildParkCNN
from tests.models.ng_checks import batch_of
from tests.nn.graphs import random_graph

SMALL = {"ng-gnn": dict(hidden=8, num_layers=2), "ng-t": dict(node_dim=8, edge_dim=4, num_layers=2)}


def build(name, **kw):
    torch.manual_seed(0)
    m = create_model(name, out_dim=2, **{**SMALL[name], **kw})
    if hasattr(m, "fit_statistics"):
        m.fit_statistics([random_graph(seed=0)])
    return m.eval()


@pytest.mark.parametrize("name", ["ng-gnn", "ng-t"])
def test_readout_default_concatenates_the_output_neurons(name):
    assert model_arguments(name)["readout"] == "output_cat"
    m = build(name, num_outputs=2)
    assert m.head.readout == "output_cat"
    graphs = [random_graph((3, 5, 4, 2), seed=0), random_graph((3, 7, 2), seed=1)]
    data = batch_of(graphs)
    with torch.no_grad():
        x, _ = m.encode(data)
        out = m(data)
        # the pooled vector of each graph is its output neurons' states, in output order
        rows = []
        for b in range(2):
            idx = ((data.batch == b) & (data.node_role == ROLE["output"])).nonzero().view(-1)
            rows.append(x[idx[data.node_pos[idx].argsort()]].reshape(-1))
        torch.testing.assert_close(out, m.head.mlp(torch.stack(rows)))


@pytest.mark.parametrize("name", ["ng-gnn", "ng-t"])
def test_readout_output_size_rules(name):
    # unknown output size: documented fallback to the mean, with a warning naming the fix
    with pytest.warns(UserWarning, match="num_outputs"):
        m = build(name)
    assert m.head.readout == "mean"
    # a batch whose output size differs from num_outputs is refused, naming the graph and the fix
    m = build(name, num_outputs=2)
    with pytest.raises(ValueError, match=r"graph 1 of the batch has 3.*readout='mean'"):
        m(batch_of([random_graph((3, 4, 2), seed=0), random_graph((3, 4, 3), seed=1)]))


def test_ng_gnn_edge_update_reads_the_layers_input_node_states():
    """Eq. 3: e^(k+1) = phi_e([v_i^(k), e_ij^(k), v_j^(k)]), with v^(k) the states the layer received."""
    m = build("ng-gnn", num_layers=3, num_outputs=2)
    seen: list[tuple[str, torch.Tensor]] = []
    for conv in m.convs:
        conv.register_forward_pre_hook(lambda mod, args: seen.append(("layer input", args[0])))
        conv.update_edges = (lambda f: lambda x, ei, e: (seen.append(("edge update", x)), f(x, ei, e))[1])(
            conv.update_edges)
    with torch.no_grad():
        m(random_graph(seed=0))
    kinds = [k for k, _ in seen]
    assert kinds == ["layer input", "edge update", "layer input", "edge update", "layer input"]
    for k in (0, 2):
        assert seen[k + 1][1] is seen[k][1]  # the very tensor the layer got, not its output


class _OutputsTask(Task):
    name = "outputs"

    def __init__(self, nets):
        super().__init__(None)
        self.nets = nets

    def build_splits(self):
        g = [to_neural_graph(n) for n in self.nets]
        y = torch.zeros(len(g))
        return {s: Split(y=y, make_graphs=lambda: g, make_weights=lambda: []) for s in ("train", "val", "test")}

    def member_network(self):
        return None


def test_tasks_supply_the_output_size_when_it_is_fixed():
    torch.manual_seed(0)
    fixed = [WildParkCNN(channels=(4, 6), kernels=(3, 5), acts=("relu", "tanh"), residual=(-1, -1), n_classes=10), MLP((4, 6, 10))]
    assert _OutputsTask(fixed).model_kwargs("ng-t")["num_outputs"] == 10
    assert _OutputsTask([MLP((4, 6, 10)), MLP((4, 6, 3))]).model_kwargs("ng-t")["num_outputs"] is None  # mean, warned


def test_statnn_default_is_the_papers_1000_1000():
    """Neural Graphs appendix D.2: StatNN with 1000 hidden dimensions; it fits the CPU, so it is the default
    of the model and of the runner (one source: the model's signature; the YAML does not restate it)."""
    from benchmarks.run import resolve_config
    from neuralgraph.models.statnn import SLOT_FEATURES

    assert tuple(model_arguments("statnn")["hidden"]) == (1000, 1000)
    assert model_arguments("statnn")["dropout"] == 0.0
    cfg = resolve_config("wildpark", "statnn", None, False, [])
    m = create_model("statnn", max_layers=6, **cfg["model"])
    widths = [lin.out_channels for lin in m.mlp.lins]                   # PyG MLP: its Linear layers
    assert widths == [1000, 1000, 1]
    # the paper's count (1,087,001 for 84 inputs) plus our 6 x 4 extra slot features per hidden unit
    assert sum(p.numel() for p in m.parameters()) == 1_087_001 + 6 * (SLOT_FEATURES - 14) * 1000
