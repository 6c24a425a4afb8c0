"""Local pooling: its geometry is part of the graph (different poolings give different graphs) and the executor
runs it; symmetry and round trip with pooling layers; what cannot be represented is refused."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from tests.helpers.permute import (assert_isomorphic, assert_params_moved, assert_same_function,
                                   assert_state_equal, isomorphic, permute_in, permute_out, permuted_copy)


class Pooled(nn.Module):
    """conv -> relu -> pool -> conv -> global average -> linear; the pool as a module or a function."""

    def __init__(self, pool, dims: int = 2):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.c1, self.c2, self.fc = conv(2, 4, 3, padding=1), conv(4, 3, 1), nn.Linear(3, 2)
        self.pool, self.space = pool, tuple(range(2, 2 + dims))

    def forward(self, x):
        h = self.pool(F.relu(self.c1(x)))
        return self.fc(self.c2(h).mean(self.space))


POOLS = [  # (pool, dims)
    (nn.MaxPool2d(2), 2), (nn.MaxPool2d(3, 1), 2), (nn.MaxPool2d(3, 2, padding=1), 2), (nn.MaxPool2d(3, 2), 2),
    (nn.MaxPool2d((3, 2), (1, 2), dilation=(2, 1)), 2), (nn.MaxPool2d(3, 2, ceil_mode=True), 2),
    (nn.AvgPool2d(3, 2), 2), (nn.AvgPool2d(2, 2), 2), (nn.AvgPool2d(3, 1, padding=1), 2),
    (nn.AvgPool2d(3, 1, padding=1, count_include_pad=False), 2), (nn.AvgPool2d(3, 2, ceil_mode=True), 2),
    (nn.AvgPool2d(2, divisor_override=3), 2), (nn.AdaptiveAvgPool2d(3), 2), (nn.AdaptiveMaxPool2d((2, 3)), 2),
    (nn.MaxPool1d(3, 2, 1), 1), (nn.AvgPool1d(2), 1), (nn.AdaptiveAvgPool1d(4), 1),
    (lambda x: F.max_pool2d(x, 3, 2, 1), 2), (lambda x: F.avg_pool2d(x, 2, stride=1, count_include_pad=False), 2),
    (lambda x: F.max_pool1d(x, kernel_size=2), 1), (lambda x: F.adaptive_max_pool2d(x, 2), 2),
]


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _model(pool, dims: int) -> nn.Module:
    torch.manual_seed(0)
    return Pooled(pool if isinstance(pool, nn.Module) else _Fn(pool), dims).eval()


def _input(dims: int, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 2, *((9,) * dims))


@pytest.mark.parametrize("case", range(len(POOLS)))
def test_executor_runs_the_pooling(case):
    pool, dims = POOLS[case]
    m = _model(pool, dims)
    x = _input(dims)
    torch.testing.assert_close(execute(to_neural_graph(m), x), m(x), atol=1e-5, rtol=1e-5)


def test_different_poolings_give_different_graphs():
    graphs = [to_neural_graph(_model(pool, dims)) for pool, dims in POOLS if dims == 2 and isinstance(pool, nn.Module)]
    for a in range(len(graphs)):
        for b in range(a + 1, len(graphs)):
            assert not isomorphic(graphs[a], graphs[b]), (a, b)


def test_pool_then_activation_is_exact():
    """An activation after an average pooling acts on the pooled map (the pooling follows a neuron's activation, so
    the activation goes on a new neuron)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AvgPool2d(2), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 3 * 3, 2)).eval()
    x = torch.randn(4, 1, 8, 8)
    for cfg in ({}, {"flatten": "repeat"}):
        torch.testing.assert_close(execute(to_neural_graph(m, **cfg), x), m(x), atol=1e-5, rtol=1e-5)


def test_a_map_read_pooled_and_unpooled():
    """A neuron whose map is read by a convolution and also pooled: the pooling goes on a copy."""

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.c3 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, 2, 1), nn.Conv2d(3, 3, 1)

        def forward(self, x):
            h = torch.relu(self.c1(x))
            return (self.c2(h) + self.c3(F.max_pool2d(h, 2))).mean((2, 3))

    torch.manual_seed(1)
    m = Both().eval()
    x = torch.randn(2, 2, 8, 8)
    torch.testing.assert_close(execute(to_neural_graph(m), x), m(x), atol=1e-5, rtol=1e-5)


def test_3d_pooling_needs_a_3d_max_kernel():
    x = _input(3, 2)
    m = nn.Sequential(nn.MaxPool3d(2), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(UnsupportedModuleError, match=r"0 \(torch.nn.modules.pooling.MaxPool3d\).*max_kernel=\(3, 3, 3\)"):
        to_neural_graph(m, x)
    m = _model(nn.MaxPool3d(2), 3)
    torch.testing.assert_close(execute(to_neural_graph(m, max_kernel=(3, 3, 3)), x), m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pool, match", [
    (nn.LPPool2d(2, 2), "LP"), (nn.MaxPool2d(2, return_indices=True), "return_indices"),
])
def test_unrepresentable_pooling_refused(pool, match):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.pool = nn.Conv2d(1, 2, 3), pool

        def forward(self, x):
            h = self.pool(self.c(x))
            return h[0] if isinstance(h, tuple) else h

    with pytest.raises(UnsupportedModuleError, match=match):
        to_neural_graph(Net())


def test_round_trip_and_symmetry():
    m = _model(nn.MaxPool2d(3, 2, padding=1), 2)
    g = to_neural_graph(m)
    assert_state_equal(m, from_neural_graph(g, m))
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(0))

    def apply(p):
        permute_out(p.c1, perm)
        permute_in(p.c2, perm)

    p = permuted_copy(m, apply)
    assert_params_moved(m, p)
    assert_same_function(m, p, _input(2))
    assert_isomorphic(g, to_neural_graph(p))
