"""Tied weights (a module used more than once): every use is stored; reading a graph back requires the copies to
agree (before, the last copy silently won)."""
import pytest
import torch
from torch import nn

from neuralgraph import execute, from_neural_graph, to_neural_graph
from neuralgraph.convert import get_plan
from tests.helpers.permute import assert_state_equal


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.shared(torch.relu(self.shared(self.inp(x))))))


def test_tied_module_round_trip_and_semantics():
    torch.manual_seed(0)
    m = Twice()
    g = to_neural_graph(m)
    assert g.edge_index.size(1) == 3 * 4 + 2 * 4 * 4 + 4 * 2        # both uses are stored
    x = torch.randn(5, 3)
    torch.testing.assert_close(execute(g, x), m(x), atol=1e-6, rtol=1e-6)
    assert_state_equal(m, from_neural_graph(g, m))
    plan = get_plan(m)
    assert plan.edge_copies[0].numel() == 16 and plan.node_copies[0].numel() == 4


@pytest.mark.parametrize("where", ["weight", "bias"])
def test_differing_copies_are_refused_naming_the_parameter(where):
    torch.manual_seed(0)
    m = Twice()
    g = to_neural_graph(m)
    values, stored = (g.edge_attr[:, 24], m.shared.weight[1, 2]) if where == "weight" else (g.x[:, 0], m.shared.bias[0])
    hits = (values == stored).nonzero().view(-1)
    assert hits.numel() == 2    # one copy per use
    values[hits[1]] += 1.0      # the second use now differs from the first
    with pytest.raises(ValueError, match=rf"parameter 'shared.{where}'.*tied weights.*2 times"):
        from_neural_graph(g, m)
