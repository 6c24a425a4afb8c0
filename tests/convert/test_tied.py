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
    shared = [(k, v) for k, v in plan.edge_param.items() if k.startswith("shared")]
    assert [k for k, _ in shared] == ["shared.weight"] and shared[0][1].numel() == 16  # read from one copy


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


def test_copies_outside_runs_are_checked_too():
    """``flatten="repeat"`` stores a conv's kernel once per position (elements outside the plan's runs): every copy
    reads back, and one that differs is refused."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    x = torch.randn(1, 1, 5, 5)
    g = to_neural_graph(m, x, flatten="repeat")
    assert get_plan(m, x, flatten="repeat")._edge_src.numel() > 0
    assert_state_equal(m, from_neural_graph(g, m, x, flatten="repeat"))
    hits = (g.edge_attr == m[0].weight[1, 0, 2, 1]).nonzero()
    assert hits.size(0) == 9  # one copy per output position
    g.edge_attr[hits[4, 0], hits[4, 1]] = 0.5
    with pytest.raises(ValueError, match=r"parameter '0.weight'.*tied weights\) 9 times.*element 16"):
        from_neural_graph(g, m, x, flatten="repeat")


def test_a_large_graph_reads_back_in_blocks_and_still_checks_copies(monkeypatch):
    """The plan of a large architecture is not cached, so reading back traces again; the read goes run by run (no
    per-element map of the graph is built) and still refuses disagreeing copies."""
    from neuralgraph.convert import plan as plan_mod

    monkeypatch.setattr(plan_mod, "UNCACHED_EDGES", 10)  # every graph counts as large
    plan_mod.clear_plan_cache()
    torch.manual_seed(0)
    m = Twice()
    g = to_neural_graph(m)
    assert not plan_mod._PLANS  # dropped after the conversion
    used = []
    find = plan_mod.find_plan
    monkeypatch.setattr(plan_mod, "find_plan", lambda *a, **k: used.append(find(*a, **k)) or used[-1])
    assert_state_equal(m, from_neural_graph(g, m))
    assert not plan_mod._PLANS  # and after reading back
    assert used[0]._read_maps is None and len(used[0].edge_runs) >= 3
    assert used[0].reads_only and "edge_geom" not in used[0].categories  # no geometry kept to read back
    with pytest.raises(RuntimeError, match="traced to read graphs back"):
        used[0].graph(m)
    hits = (g.edge_attr[:, 24] == m.shared.weight[3, 1]).nonzero().view(-1)
    g.edge_attr[hits[0], 24] += 1.0  # the first use now differs from the second
    with pytest.raises(ValueError, match=r"parameter 'shared.weight'.*2 times.*element 13"):
        from_neural_graph(g, m)


@pytest.mark.parametrize("shared", ["module", "parameter"])
def test_a_module_or_parameter_registered_at_two_paths_is_one_tied_parameter(shared):
    """``nn.Sequential(lin, act, lin)`` (one module at paths 0 and 2), or one Parameter assigned to two modules:
    named_parameters() lists it once, at its first path; every use is a tied copy of it (was a KeyError on the
    further path). The plan cache tells a tied model from an untied one of the same architecture."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    untied = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    if shared == "module":
        m = nn.Sequential(lin, nn.ReLU(), lin)
    else:
        m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        m[2].weight = m[0].weight
    x = torch.randn(5, 4)
    to_neural_graph(untied)  # cached first: an architecture key without the tying would reuse its plan
    g = to_neural_graph(m)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x), m(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(execute(to_neural_graph(untied), x), untied(x), atol=1e-6, rtol=1e-6)
    template = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    template = nn.Sequential(template[0], nn.ReLU(), template[0]) if shared == "module" else template
    if shared == "parameter":
        template[2].weight = template[0].weight
    assert_state_equal(from_neural_graph(g, template), m)
