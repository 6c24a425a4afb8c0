"""PermuteNeurons: random hidden-neuron permutations that are symmetries of the network."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch_geometric.loader import DataLoader

from neuralgraph import from_neural_graph, to_neural_graph
from neuralgraph.data.graph import ROLE
from neuralgraph.transforms import PermuteNeurons
from neuralgraph.transforms.permute_neurons import neuron_symmetry
from tests.convert.test_norm import BNBlock, randomize
from tests.convert.test_property import architectures
from tests.helpers.nets import MLP, SmallResNet, WildParkCNN
from tests.helpers.permute import assert_isomorphic, assert_params_moved, assert_same_function

CNN_FLAT = lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.ReLU(),  # noqa: E731
                                 nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 2))

#: name -> (module factory, input factory, converter options, permutable group shapes [cells, size])
NETS = {
    "mlp": (MLP, lambda: torch.randn(5, 6), {}, [(1, 16), (1, 12)]),
    # nested segments: layer 0 with layer 2's first 8 channels, layer 1 with layer 3's first 4
    "wildpark": (WildParkCNN, lambda: torch.randn(3, 1, 8, 8), {}, [(2, 8), (2, 4), (1, 8), (1, 4)]),
    "wildpark-mlp": (lambda: WildParkCNN(linear=True), lambda: torch.randn(3, 1), {},
                     [(2, 8), (2, 4), (1, 8), (1, 4)]),
    # residual streams (stem + every block writing into them) and each block's inner channels
    "resnet": (SmallResNet, lambda: torch.randn(2, 3, 8, 8), {}, [(3, 8), (1, 8), (1, 8), (3, 16), (1, 16), (1, 16)]),
    "batchnorm": (lambda: randomize(BNBlock()), lambda: torch.randn(3, 2, 6, 6), {}, [(4, 4), (2, 4)]),
    # GroupNorm couples channels by group: that layer stays fixed; the InstanceNorm layer permutes
    "groupnorm": (lambda: randomize(nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.GroupNorm(3, 6), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.InstanceNorm2d(4, affine=True),
        nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))), lambda: torch.randn(2, 1, 8, 8), {},
        [(2, 4)]),
    # a channel moves with its 16 virtual flatten neurons
    "flatten-virtual": (CNN_FLAT, lambda: torch.randn(2, 1, 8, 8), {}, [(1, 3), (17, 4), (1, 5)]),
    "flatten-repeat": (CNN_FLAT, lambda: torch.randn(2, 1, 8, 8), {"flatten": "repeat"}, [(1, 3), (1, 5)]),
    "depthwise-separable": (lambda: nn.Sequential(
        nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Conv2d(6, 6, 3, groups=6), nn.ReLU(), nn.Conv2d(6, 4, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)), lambda: torch.randn(2, 2, 8, 8), {},
        [(2, 6), (1, 4)]),
    "embedding": (lambda: nn.Sequential(nn.Embedding(7, 5), nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)),
                  lambda: torch.randint(0, 7, (4, 3)), {}, [(1, 5), (1, 6)]),
}


@pytest.mark.parametrize("net", sorted(NETS))
def test_permuted_graph_reads_back_to_the_same_function(net):
    make, example, cfg, shapes = NETS[net]
    torch.manual_seed(0)
    m = make().eval()
    x = example()
    g = to_neural_graph(m, **cfg)
    assert sorted(tuple(r.shape) for r in neuron_symmetry(g).groups) == sorted(shapes)
    gp = PermuteNeurons(seed=0)(g)
    # structure and categories untouched, values moved
    for key in ("edge_index", "node_layer", "node_role", "node_pos", "node_act", "node_pool", "node_spatial",
                "edge_kind", "edge_geom", "geometry"):
        assert torch.equal(gp[key], g[key]), key
    assert not torch.equal(gp.edge_attr, g.edge_attr)
    assert_isomorphic(g, gp)
    mp = from_neural_graph(gp, m, **cfg)
    assert_params_moved(m, mp)
    assert_same_function(m, mp, x)
    # the permuted graph is exactly the graph of the permuted module (consistent copies, constants in place)
    back = to_neural_graph(mp, **cfg)
    assert torch.equal(back.x, gp.x) and torch.equal(back.edge_attr, gp.edge_attr)


def test_inputs_and_outputs_never_move_and_seeds_reproduce():
    torch.manual_seed(0)
    g = to_neural_graph(WildParkCNN())
    fixed = (g.node_role == ROLE["input"]) | (g.node_role == ROLE["output"])
    perms = [PermuteNeurons(seed=s).sample(g) for s in (1, 1, 2)]
    assert torch.equal(perms[0], perms[1]) and not torch.equal(perms[0], perms[2])
    for p in perms:
        assert torch.equal(p[fixed], torch.arange(g.num_nodes)[fixed])
        assert torch.equal(p.sort().values, torch.arange(g.num_nodes))
    t = PermuteNeurons(generator=torch.Generator().manual_seed(1))
    assert torch.equal(t(g).x, PermuteNeurons(seed=1)(g).x)
    with pytest.raises(ValueError, match="a generator or a seed"):
        PermuteNeurons(generator=torch.Generator(), seed=1)
    # a permutation that is not a symmetry (swapping two inputs of a multi-input CNN) is refused
    g2 = to_neural_graph(SmallResNet())
    bad = torch.arange(g2.num_nodes)
    bad[[0, 1]] = bad[[1, 0]]
    with pytest.raises(AssertionError, match="moves a neuron onto one with other categories"):
        PermuteNeurons().apply(g2, bad)
    # same categories, but only one of the two receives a skip (Wild Park layer 2: channels 0 and 15)
    layer2 = ((g.node_layer == g.node_layer.unique()[3]) & (g.node_role == ROLE["hidden"])).nonzero().view(-1)
    assert layer2.numel() == 16
    bad = torch.arange(g.num_nodes)
    bad[layer2[[0, 15]]] = layer2[[15, 0]]
    with pytest.raises(AssertionError, match="does not map the graph onto itself"):
        PermuteNeurons().apply(g, bad)


class Augmented(torch.utils.data.Dataset):
    def __init__(self, graphs, transform):
        self.graphs, self.transform = graphs, transform

    def __len__(self):
        return len(self.graphs)

    def __getitem__(self, i):
        return self.transform(self.graphs[i])


def test_in_a_dataloader_pipeline():
    torch.manual_seed(0)
    models = [WildParkCNN().eval() for _ in range(2)] + [WildParkCNN(residual=(-1, -1, -1, 1)).eval()]
    graphs = [to_neural_graph(m) for m in models]
    loader = DataLoader(Augmented(graphs, PermuteNeurons(seed=0)), batch_size=3)
    first, second = next(iter(loader)), next(iter(loader))
    assert first.num_graphs == 3 and first.x.size(0) == sum(g.num_nodes for g in graphs)
    assert not torch.equal(first.edge_attr, torch.cat([g.edge_attr for g in graphs]))
    assert not torch.equal(first.edge_attr, second.edge_attr)  # a new permutation every epoch
    x = torch.randn(2, 1, 8, 8)
    for m, g in zip(models, first.to_data_list()):
        assert_same_function(m, from_neural_graph(g, m), x)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures(), seed=st.integers(0, 2**16))
def test_random_wildpark_architectures(arch, seed):
    torch.manual_seed(seed)
    m = WildParkCNN(**arch)
    x = torch.randn(2, arch["in_channels"]) if arch["linear"] else torch.randn(2, arch["in_channels"], 6, 6)
    g = to_neural_graph(m)
    gp = PermuteNeurons(seed=seed)(g)
    mp = from_neural_graph(gp, m)
    assert_same_function(m, mp, x)
    back = to_neural_graph(mp)
    assert torch.equal(back.x, gp.x) and torch.equal(back.edge_attr, gp.edge_attr)
    # at least the symmetries the hand-written permutation uses: every nested segment of >= 2 channels
    movable = torch.zeros(g.num_nodes, dtype=torch.bool)
    for rows in neuron_symmetry(g).groups:
        movable[rows.view(-1)] = True
    widths = list(arch["channels"])
    layers = (g.node_role == ROLE["hidden"]).nonzero().view(-1).split(widths)  # conv i's channels, in order
    cuts = sorted({0} | set(widths))
    for nodes, width in zip(layers, widths):
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b <= width and b - a >= 2:
                assert movable[nodes[a:b]].all()
