"""Normalization layers: element-wise layers with exact running statistics."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from neuralgraph.data.graph import norm_taps
from neuralgraph.data.graph import EDGE_KIND, ROLE
from tests.helpers.permute import (assert_isomorphic, assert_params_moved, assert_same_function,
                                   assert_state_equal, isomorphic, permute_in, permute_out)


@torch.no_grad()
def permute_norm(layer: nn.Module, perm: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(layer, name, None)
        if t is not None:
            t.copy_(t[perm])


def randomize(m: nn.Module) -> nn.Module:
    """Non-trivial affine parameters and running statistics."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)):
                if getattr(mod, "weight", None) is not None:
                    mod.weight.uniform_(0.5, 1.5), mod.bias.normal_()
                if getattr(mod, "running_mean", None) is not None:
                    mod.running_mean.normal_(), mod.running_var.uniform_(0.5, 2)
    return m.eval()


class BNBlock(nn.Module):
    """A ResNet basic block with BatchNorm, inside a tiny network."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.fc(F.relu(out + x).mean((2, 3)))


def test_resnet_block_with_batchnorm():
    torch.manual_seed(0)
    m = randomize(BNBlock())
    x = torch.randn(2, 2, 6, 6)
    g = to_neural_graph(m)
    assert (g.edge_kind == EDGE_KIND["batchnorm"]).sum() == 12
    with torch.no_grad():
        assert torch.allclose(execute(g, x), m(x), atol=1e-5)
    back = from_neural_graph(g, m)
    assert_state_equal(m, back)  # running statistics included, bit for bit
    # running statistics are really stored in the graph (not copied from the template module)
    other = randomize(BNBlock())
    assert torch.equal(from_neural_graph(g, other).bn1.running_var, m.bn1.running_var)
    gen = torch.Generator().manual_seed(0)
    p = copy.deepcopy(m)
    s, inner = torch.randperm(4, generator=gen), torch.randperm(4, generator=gen)
    permute_out(p.stem, s), permute_norm(p.bn0, s), permute_in(p.conv1, s)
    permute_out(p.conv1, inner), permute_norm(p.bn1, inner), permute_in(p.conv2, inner)
    permute_out(p.conv2, s), permute_norm(p.bn2, s), permute_in(p.fc, s)
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p))


def test_mlp_with_layernorm():
    torch.manual_seed(0)
    m = randomize(nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 2)))
    x = torch.randn(5, 3)
    g = to_neural_graph(m)
    with torch.no_grad():
        assert torch.allclose(execute(g, x), m(x), atol=1e-5)
    assert_state_equal(m, from_neural_graph(g, m))
    p = copy.deepcopy(m)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    permute_out(p[0], perm), permute_norm(p[1], perm), permute_in(p[3], perm)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p))


def test_cnn_with_groupnorm_and_instancenorm():
    torch.manual_seed(0)
    m = randomize(nn.Sequential(nn.Conv2d(1, 6, 3), nn.GroupNorm(3, 6), nn.ReLU(), nn.Conv2d(6, 4, 3),
                                nn.InstanceNorm2d(4, affine=True), nn.Tanh(), nn.Conv2d(4, 4, 1),
                                nn.InstanceNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))
    x = torch.randn(2, 1, 8, 8)
    g = to_neural_graph(m)
    assert (g.edge_kind == EDGE_KIND["groupnorm"]).sum() == 6
    assert (g.edge_kind == EDGE_KIND["instancenorm"]).sum() == 8
    plain = g.edge_attr[g.edge_kind == EDGE_KIND["instancenorm"]][4:]  # no affine: constant 1, and eps
    tap = norm_taps(49, 24)[2]
    assert plain[:, 24].eq(1).all() and plain[:, tap].eq(torch.tensor(1e-5)).all() and plain.count_nonzero() == 8
    assert_state_equal(m, from_neural_graph(g, m))
    # permutation within GroupNorm groups (2 channels each), whole groups swapped too
    p = copy.deepcopy(m)
    perm = torch.tensor([3, 2, 5, 4, 0, 1])
    permute_out(p[0], perm), permute_norm(p[1], perm), permute_in(p[3], perm)
    q = torch.randperm(4, generator=torch.Generator().manual_seed(2))
    permute_out(p[3], q), permute_norm(p[4], q), permute_in(p[6], q)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p))


def test_running_statistics_never_share_a_tap_with_gamma():
    """With a 1x3 kernel the centre tap is 1: the statistics must move to taps 0 and 2."""
    torch.manual_seed(0)
    m = randomize(BNBlock())
    for mk in [(3,), (1, 3), (3, 3)]:
        m1 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
        randomize(m1)
        with torch.no_grad():
            m1[1].running_mean.normal_(), m1[1].running_var.uniform_(0.5, 2)
        g = to_neural_graph(m1, max_kernel=mk)
        assert_state_equal(m1, from_neural_graph(g, m1, max_kernel=mk))
        x = torch.randn(4, 3)
        with torch.no_grad():
            assert torch.allclose(execute(g, x, max_kernel=mk), m1.eval()(x), atol=1e-5)
    assert_state_equal(m, from_neural_graph(to_neural_graph(m, max_kernel=(3, 3)), m, max_kernel=(3, 3)))


@pytest.mark.parametrize("norm,x", [
    (lambda eps: nn.BatchNorm1d(4, eps=eps), torch.randn(6, 3)),
    (lambda eps: nn.LayerNorm(4, eps=eps), torch.randn(6, 3)),
    (lambda eps: nn.InstanceNorm1d(4, eps=eps, affine=True), torch.randn(6, 3)),
])
def test_eps_is_stored_and_used(norm, x):
    """A normalization's eps sits on the third non-centre tap: two layers differing only in eps give
    different graphs, and each graph computes its own module (eps = 0.5 moves outputs visibly)."""
    graphs = []
    for eps in (1e-5, 0.5):
        torch.manual_seed(0)
        lin = nn.Conv1d(3, 4, 1) if isinstance(norm(eps), nn.InstanceNorm1d) else nn.Linear(3, 4)
        m = randomize(nn.Sequential(lin, norm(eps), nn.Tanh()))
        if isinstance(m[1], nn.BatchNorm1d):
            with torch.no_grad():
                m[1].running_var.uniform_(0.1, 0.3)
        inp = torch.randn(6, 3, 5) if isinstance(lin, nn.Conv1d) else x
        g = to_neural_graph(m, max_kernel=(3, 3))
        with torch.no_grad():
            torch.testing.assert_close(execute(g, inp, max_kernel=(3, 3)), m.eval()(inp), atol=1e-5, rtol=1e-5)
        assert_state_equal(m, from_neural_graph(g, m, max_kernel=(3, 3)))
        graphs.append(g)
    assert not torch.equal(graphs[0].edge_attr, graphs[1].edge_attr)


def test_eps_needs_a_free_tap():
    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4, eps=1e-3), nn.Linear(4, 2))
    with pytest.raises(UnsupportedModuleError, match="eps=0.001 is stored on an edge tap"):
        to_neural_graph(m, max_kernel=(3,))
    m[1] = nn.LayerNorm(4)
    to_neural_graph(m, max_kernel=(3,))            # the default eps needs no tap


def test_groupnorm_groups_are_in_the_graph():
    """One virtual neuron per group with ``group`` edges to its neurons: the graph computes the GroupNorm,
    group counts give different graphs, and moving a channel to another group is not a symmetry."""
    def net(groups: int) -> nn.Module:
        torch.manual_seed(0)
        return randomize(nn.Sequential(nn.Conv2d(1, 6, 3), nn.GroupNorm(groups, 6, eps=1e-3), nn.ReLU(),
                                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))).eval()

    x = torch.randn(3, 1, 7, 7)
    graphs = {}
    for groups in (1, 2, 3, 6):
        m = net(groups)
        g = to_neural_graph(m)
        with torch.no_grad():
            torch.testing.assert_close(execute(g, x), m(x), atol=1e-5, rtol=1e-5)
        assert (g.node_role == ROLE["virtual"]).sum() == groups
        assert (g.edge_kind == EDGE_KIND["group"]).sum() == 6
        assert_state_equal(m, from_neural_graph(g, m))
        graphs[groups] = g
    assert not isomorphic(graphs[1], graphs[6]) and not isomorphic(graphs[2], graphs[3])
    # within-group and whole-group permutations are symmetries; a swap across groups changes the function
    m = net(3)
    inside = copy.deepcopy(m)
    perm = torch.tensor([3, 2, 5, 4, 0, 1])
    permute_out(inside[0], perm), permute_norm(inside[1], perm), permute_in(inside[5], perm)
    assert_same_function(m, inside, x)
    assert_isomorphic(to_neural_graph(m), to_neural_graph(inside))
    across = copy.deepcopy(m)
    perm = torch.tensor([0, 2, 1, 3, 4, 5])              # channels 1 and 2 sit in groups 0 and 1
    permute_out(across[0], perm), permute_norm(across[1], perm), permute_in(across[5], perm)
    with torch.no_grad():
        assert not torch.allclose(across(x), m(x), atol=1e-4)
    assert not isomorphic(to_neural_graph(m), to_neural_graph(across))
