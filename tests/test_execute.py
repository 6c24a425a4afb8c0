"""The public executor: batched inputs, graphs it refuses, inferred options (its semantics are checked per
layer family in tests/convert/ and over random networks in tests/convert/test_fuzz.py)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch

from neuralgraph import execute, to_neural_graph


class _Net(nn.Module):
    """Conv, BatchNorm, residual, global pooling and a linear head: one edge kind of each family."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 5, padding=2)
        self.bn, self.fc = nn.BatchNorm2d(6), nn.Linear(6, 4)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = F.relu(self.bn(self.c2(h)) + h)
        return self.fc(h.mean((2, 3)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    m = _Net()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
    return m.eval()


@pytest.mark.parametrize("batch", [1, 5])
def test_batched_inputs_match_per_sample(batch):
    m = _net()
    g = to_neural_graph(m)
    x = torch.randn(batch, 3, 8, 8)
    y = execute(g, x)
    assert y.shape == (batch, 4)
    torch.testing.assert_close(y, m(x), atol=1e-5, rtol=1e-5)
    # every sample is computed on its own: the batch does not leak between samples
    torch.testing.assert_close(torch.cat([execute(g, x[i:i + 1]) for i in range(batch)]), y, atol=1e-6, rtol=1e-6)


def test_batched_graphs_are_refused_with_the_fix():
    g = to_neural_graph(_net())
    with pytest.raises(ValueError, match="get_example"):
        execute(Batch.from_data_list([g, g]), torch.randn(1, 3, 8, 8))
    one = Batch.from_data_list([g])  # a batch of one graph is that graph
    torch.testing.assert_close(execute(one, torch.ones(2, 3, 8, 8)), execute(g, torch.ones(2, 3, 8, 8)))


def test_max_kernel_inferred_or_required():
    m = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv1d(3, 2, 1))
    x = torch.randn(4, 2, 9)
    torch.testing.assert_close(execute(to_neural_graph(m, max_kernel=(3,)), x), m(x), atol=1e-6, rtol=1e-6)
    g = to_neural_graph(m, max_kernel=(1, 3))  # 3 taps over 2 dims: not a square
    with pytest.raises(ValueError, match="max_kernel"):
        execute(g, x)
    torch.testing.assert_close(execute(g, x, max_kernel=(1, 3)), m(x), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        execute(g, x, max_kernel=(3, 3))


def test_executor_reads_the_graph_not_the_module():
    m = _net()
    g = to_neural_graph(m)
    x = torch.randn(2, 3, 8, 8)
    y = execute(g, x)
    g.edge_attr = g.edge_attr * 2   # doubling every weight (and the norm statistics) changes the function
    assert not torch.allclose(execute(g, x), y, atol=1e-3)


def test_inputs_of_the_wrong_width_are_refused():
    """An input whose channel / feature count differs from the graph's input neurons raises, naming both (it
    used to run on the first channels or fail with an IndexError)."""
    g = to_neural_graph(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match=r"graph has 4 input channels, the input \[\(2, 5\)\] has 5"):
        execute(g, torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"has 3 along dim 1"):
        execute(g, torch.randn(2, 3))
    # a [B, T, d] sequence read as channels: the error says how to read it as tokens
    with pytest.raises(ValueError, match=r"pass tokens=True"):
        execute(g, torch.randn(2, 5, 4))
    assert execute(g, torch.randn(2, 5, 4), tokens=True).shape == (2, 5, 2)
    conv = to_neural_graph(nn.Sequential(nn.Conv1d(4, 3, 1), nn.AdaptiveAvgPool1d(1)),
                           example_input=torch.randn(1, 4, 6))
    with pytest.raises(ValueError, match=r"graph has 4 input channels.*has 6 along dim 1 \(channels\)$"):
        execute(conv, torch.randn(2, 6, 4))


def test_graphs_transformed_for_message_passing_are_refused():
    """Reversed edges and self-loops (stock ToUndirected / AddSelfLoops through CheckedTransform, AddReverseEdges)
    are for message passing: the graph no longer describes a feed-forward network, and execute refuses it up front,
    naming what it found and the fix (it used to fail inside with ``'NoneType' object has no attribute 'dim'``)."""
    from torch_geometric.transforms import AddSelfLoops, Compose, ToUndirected

    from neuralgraph.transforms import AddReverseEdges, CheckedTransform

    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    g, x = to_neural_graph(m), torch.randn(2, 4)
    torch.testing.assert_close(execute(g, x), m(x))  # before the transform: the network
    fix = "execute the graph before the transform"
    cases = [(CheckedTransform(ToUndirected()), r"12 edges into input neurons, 6 edges that do not go forward"),
             (CheckedTransform(AddSelfLoops()), r"9 self-loops \(e\.g\. edge 0 -> 0"),
             (CheckedTransform(Compose([ToUndirected(), AddSelfLoops()])), r"9 self-loops, 12 edges into input neurons"),
             (AddReverseEdges(), r"12 edges into input neurons, 6 edges that do not go forward in node_layer")]
    for transform, found in cases:
        with pytest.raises(ValueError, match=f"not a feed-forward network: {found}.*{fix}"):
            execute(transform(g), x)
    big = to_neural_graph(_net())  # maps: a reversed conv edge is refused the same way
    with pytest.raises(ValueError, match=f"edges into input neurons.*{fix}"):
        execute(CheckedTransform(ToUndirected())(big), torch.randn(1, 3, 8, 8))


class _TwoScales(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.c(x)
        return {"low": y, "high": self.d(y)}


def test_outputs_of_different_shapes_are_refused_by_execute():
    """A multi-scale backbone converts (its graph is the module's), but execute returns one tensor: it names the
    shapes instead of failing inside torch.stack (found by the real-model sweep on torchvision's LRASPP backbone)."""
    x = torch.randn(2, 3, 8, 8)
    g = to_neural_graph(_TwoScales().eval(), example_input=x)
    with pytest.raises(ValueError, match=r"outputs have different shapes \(\[8, 8\] from output neuron \d+, \[4, 4\]"):
        execute(g, x)
