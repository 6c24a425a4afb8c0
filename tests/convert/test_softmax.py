"""Softmax / log_softmax: only over the feature (channel) dim, which the graph represents as an activation that
normalises over the neurons of a layer; any other dim is refused (it used to be dropped silently)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from tests.helpers.permute import assert_isomorphic, assert_state_equal, permute_in, permute_out, permuted_copy


class Fn(nn.Module):
    def __init__(self, fn, conv: bool = False):
        super().__init__()
        self.layer = nn.Conv2d(2, 4, 3) if conv else nn.Linear(3, 4)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.layer(x))


FEATURE = [  # (softmax over the features / channels, conv)
    (nn.Softmax(dim=1), False), (nn.Softmax(-1), False), (nn.LogSoftmax(1), False),
    (lambda h: F.softmax(h, dim=-1), False), (lambda h: torch.log_softmax(h, 1), False),
    (lambda h: h.softmax(-1), False), (nn.Softmax(1), True), (lambda h: F.log_softmax(h, dim=-3), True),
]


@pytest.mark.parametrize("case", range(len(FEATURE)))
def test_feature_softmax_converts_and_executes(case):
    fn, conv = FEATURE[case]
    torch.manual_seed(case)
    m = Fn(fn, conv).eval()
    x = torch.randn(5, 2, 6, 6) if conv else torch.randn(5, 3)
    g = to_neural_graph(m)
    torch.testing.assert_close(execute(g, x), m(x), atol=1e-5, rtol=1e-5)
    assert_state_equal(m, from_neural_graph(g, m))
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(0))
    p = permuted_copy(m, lambda p: permute_out(p.layer, perm))  # outputs move: the graph is the same up to them
    torch.testing.assert_close(p(x), m(x)[:, perm], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fn, conv, example", [
    (nn.Softmax(dim=0), False, None), (lambda h: F.softmax(h, 0), False, None), (lambda h: h.log_softmax(0), False, None),
    (nn.Softmax(dim=2), True, None), (lambda h: F.softmax(h, -1), True, None), (nn.Softmax(), False, None),
    (lambda h: F.softmax(h, 1), False, torch.randn(2, 5, 3)),   # [B, T, C]: dim 1 is the tokens
])
def test_other_dims_refused(fn, conv, example):
    m = Fn(fn, conv)
    with pytest.raises(UnsupportedModuleError, match=r"softmax"):
        to_neural_graph(m, example)


def test_two_softmaxes_at_one_depth_refused():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return torch.cat([self.a(x).softmax(-1), self.b(x).softmax(-1)], -1)

    with pytest.raises(UnsupportedModuleError, match="same graph depth"):
        to_neural_graph(Two())


def test_softmax_over_a_concatenation_of_two_depths():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(2, 2)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            return torch.cat([h, self.b(h)], -1).softmax(-1)

    torch.manual_seed(0)
    m = Cat()
    x = torch.randn(4, 3)
    torch.testing.assert_close(execute(to_neural_graph(m), x), m(x), atol=1e-6, rtol=1e-6)


def test_symmetry_with_hidden_softmax():
    """A softmax on a hidden layer: permuting its neurons (and the next layer's inputs) gives an isomorphic graph."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 5), nn.Softmax(-1), nn.Linear(5, 2))
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(1))

    def apply(p):
        permute_out(p[0], perm)
        permute_in(p[2], perm)

    p = permuted_copy(m, apply)
    x = torch.randn(4, 3)
    torch.testing.assert_close(p(x), m(x), atol=1e-6, rtol=1e-6)
    assert_isomorphic(to_neural_graph(m), to_neural_graph(p))
    torch.testing.assert_close(execute(to_neural_graph(m), x), m(x), atol=1e-6, rtol=1e-6)
