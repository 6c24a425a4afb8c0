"""Property tests over random residual MLPs and CNNs of the Wild Park family.

Every example: the graph computes the module's function (executor), the round trip is bit-exact, and a
random function-preserving hidden-neuron permutation yields an isomorphic graph.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuralgraph import execute, from_neural_graph, to_neural_graph
from tests.helpers.nets import ACTS, WildParkCNN, permute_wildpark
from tests.helpers.permute import assert_isomorphic, assert_same_function, assert_state_equal


@st.composite
def architectures(draw):
    depth = draw(st.integers(1, 5))
    residual = []
    has_skip = set()
    for i in range(depth):
        choices = [-1] + [j for j in range(i - 1) if j not in has_skip]  # >= 1 layer in between
        j = draw(st.sampled_from(choices))
        residual.append(j)
    return dict(
        channels=tuple(draw(st.lists(st.sampled_from([1, 2, 3, 4, 6]), min_size=depth, max_size=depth))),
        kernels=tuple(draw(st.lists(st.sampled_from([1, 3, 5, 7]), min_size=depth, max_size=depth))),
        acts=tuple(draw(st.lists(st.sampled_from(sorted(ACTS)), min_size=depth, max_size=depth))),
        residual=tuple(residual),
        in_channels=draw(st.integers(1, 3)),
        n_classes=draw(st.integers(1, 4)),
        linear=draw(st.booleans()),
    )


def check(arch, seed):
    torch.manual_seed(seed)
    m = WildParkCNN(**arch)
    x = torch.randn(2, arch["in_channels"]) if arch["linear"] else torch.randn(2, arch["in_channels"], 6, 6)
    g = to_neural_graph(m)
    with torch.no_grad():
        assert torch.allclose(execute(g, x), m(x), atol=1e-5)
    assert_state_equal(m, from_neural_graph(g, m))
    p = permute_wildpark(m, torch.Generator().manual_seed(seed))
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures(), seed=st.integers(0, 2**16))
def test_random_architectures(arch, seed):
    check(arch, seed)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures(), seed=st.integers(0, 2**16))
def test_random_architectures_many(arch, seed):
    check(arch, seed)
