"""nn.Embedding as a linear map from one-hot inputs."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from neuralgraph.data.graph import EDGE_KIND, ROLE
from tests.helpers.permute import (assert_isomorphic, assert_params_moved, assert_same_function,
                                   assert_state_equal, permute_in, permute_out)


def model(padding_idx=None):
    return nn.Sequential(nn.Embedding(7, 5, padding_idx=padding_idx), nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))


def test_embedding_structure():
    torch.manual_seed(0)
    m = model()
    g = to_neural_graph(m)
    assert g.num_nodes == 7 + 5 + 6 + 3
    assert g.node_role[:7].eq(ROLE["input"]).all() and g.node_role[7:12].eq(ROLE["hidden"]).all()
    emb = g.edge_kind == EDGE_KIND["embedding"]
    assert emb.sum() == 7 * 5 and g.edge_kind[~emb].eq(EDGE_KIND["linear"]).all()
    # token t -> dim d carries E[t, d] on the centre tap only; no bias on the embedding neurons
    for e in emb.nonzero().view(-1).tolist():
        t, d = int(g.edge_index[0, e]), int(g.edge_index[1, e]) - 7
        assert g.edge_attr[e, 24] == m[0].weight[t, d]
    assert g.edge_attr[emb][:, :24].eq(0).all() and g.edge_attr[emb][:, 25:].eq(0).all()
    assert g.x[7:12].eq(0).all()


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_semantics_roundtrip_symmetry(padding_idx):
    torch.manual_seed(1)
    m = model(padding_idx)
    if padding_idx is not None:
        with torch.no_grad():
            m[0].weight[padding_idx] = torch.randn(5)  # a non-zero padding row still round-trips
    idx = torch.randint(0, 7, (9,))
    g = to_neural_graph(m, example_input=idx)
    with torch.no_grad():
        assert torch.allclose(execute(g, F.one_hot(idx, 7).float()), m(idx), atol=1e-6)
    back = from_neural_graph(g, m)
    assert_state_equal(m, back)
    assert back[0].padding_idx == padding_idx
    # the embedding dims and the hidden layer are hidden neurons
    p = copy.deepcopy(m)
    gen = torch.Generator().manual_seed(0)
    dims, hidden = torch.randperm(5, generator=gen), torch.randperm(6, generator=gen)
    with torch.no_grad():
        p[0].weight.copy_(p[0].weight[:, dims])
    permute_in(p[1], dims), permute_out(p[1], hidden), permute_in(p[3], hidden)
    assert_params_moved(m, p)
    assert_same_function(m, p, idx)
    assert_isomorphic(g, to_neural_graph(p))


def test_token_sequences_and_shared_inputs():
    class TwoTables(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Embedding(6, 4), nn.Embedding(6, 4)
            self.fc = nn.Linear(8, 2)

        def forward(self, tokens):
            return self.fc(torch.tanh(torch.cat([self.a(tokens), self.b(tokens)], -1)))

    torch.manual_seed(0)
    m = TwoTables()
    g = to_neural_graph(m)
    assert (g.node_role == ROLE["input"]).sum() == 6  # one vocabulary, read by both tables
    tokens = torch.randint(0, 6, (3,))
    with torch.no_grad():
        assert torch.allclose(execute(g, F.one_hot(tokens, 6).float()), m(tokens), atol=1e-6)
    assert_state_equal(m, from_neural_graph(g, m))


def test_embedding_errors():
    with pytest.raises(UnsupportedModuleError, match=r"0 \(.*Embedding\): max_norm=1.0 renormalises"):
        to_neural_graph(nn.Sequential(nn.Embedding(4, 3, max_norm=1.0), nn.Linear(3, 1)))

    class Mismatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Embedding(6, 4), nn.Embedding(5, 4)

        def forward(self, t):
            return self.a(t) + self.b(t)

    with pytest.raises(UnsupportedModuleError, match=r"b \(.*Embedding\): an Embedding must read the model's "
                                                     r"integer input"):
        to_neural_graph(Mismatch())
