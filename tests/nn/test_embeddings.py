"""NeuralGraphEncoder: shapes, symmetric positional embeddings, switches, clear table-size errors."""
from __future__ import annotations

import pytest
import torch

from neuralgraph.data.graph import ROLE
from neuralgraph.nn import EncoderConfig, FourierFeatures, NeuralGraphEncoder
from tests.nn.graphs import random_graph


def test_shapes_and_fourier_features():
    g = random_graph(seed=0)
    for ff in (0, 16):
        torch.manual_seed(0)
        enc = NeuralGraphEncoder(4, 49, 12, 6, EncoderConfig(fourier_features=ff))
        x, e = enc(g)
        assert x.shape == (g.num_nodes, 12) and e.shape == (g.edge_index.size(1), 6)
    rff = FourierFeatures(3, 5, sigma=2.0)
    a = torch.randn(7, 3)
    out = rff(a)
    assert out.shape == (7, 10) and "freqs" in rff.state_dict()
    torch.testing.assert_close(out[:, :5] ** 2 + out[:, 5:] ** 2, torch.ones(7, 5))


def test_positions_unique_for_io_shared_within_hidden_layers():
    g = random_graph((3, 5, 4, 2), seed=0)
    enc = NeuralGraphEncoder(4, 49, 8, 4, EncoderConfig(act_emb=False, role_emb=False, pool_emb=False, spatial_emb=False))
    ids = enc.position_ids(g.node_role, g.node_pos)
    inputs, outputs = ids[g.node_role == ROLE["input"]], ids[g.node_role == ROLE["output"]]
    hidden = g.node_role == ROLE["hidden"]
    assert inputs.unique().numel() == 3 and outputs.unique().numel() == 2
    assert set(inputs.tolist()).isdisjoint(outputs.tolist())
    for layer in (1, 2):
        assert ids[hidden & (g.node_layer == layer)].unique().numel() == 1
    assert ids[hidden & (g.node_layer == 1)][0] != ids[hidden & (g.node_layer == 2)][0]


def test_switches_remove_dependence_on_the_field():
    g = random_graph(seed=0)
    for flag, field in (("act_emb", "node_act"), ("pool_emb", "node_pool"), ("spatial_emb", "node_spatial")):
        other = g.clone()
        other[field] = g[field] + 1
        enc = NeuralGraphEncoder(4, 49, 8, 4, EncoderConfig(**{flag: False}))
        assert torch.equal(enc(g)[0], enc(other)[0])
        enc = NeuralGraphEncoder(4, 49, 8, 4)
        assert not torch.equal(enc(g)[0], enc(other)[0])
    other = g.clone()
    other.edge_kind = (g.edge_kind + 1) % 3
    enc = NeuralGraphEncoder(4, 49, 8, 4, EncoderConfig(kind_emb=False))
    assert torch.equal(enc(g)[1], enc(other)[1])
    enc = NeuralGraphEncoder(4, 49, 8, 4)
    assert not torch.equal(enc(g)[1], enc(other)[1])


def test_table_size_errors_name_the_argument():
    g = random_graph((5, 4, 3), seed=0)
    with pytest.raises(ValueError, match=r"increase `encoder.max_inputs / max_outputs / max_layers` to at least 5"):
        NeuralGraphEncoder(4, 49, 8, 4, EncoderConfig(max_inputs=4))(g)
    with pytest.raises(ValueError, match="max_outputs"):
        NeuralGraphEncoder(4, 49, 8, 4, EncoderConfig(max_outputs=2))(g)
    with pytest.raises(ValueError, match="num_acts"):
        NeuralGraphEncoder(4, 49, 8, 4, EncoderConfig(num_acts=1))(random_graph(seed=1))
    g.node_spatial[0] = 9
    with pytest.raises(ValueError, match="max_spatial"):
        NeuralGraphEncoder(4, 49, 8, 4, EncoderConfig(max_spatial=8))(g)


def test_probe_columns_are_projected_linearly_beside_the_fourier_features():
    """Probe columns (Neural Graphs eq. 2) get their own linear map: the node encoding is affine in them,
    and the Fourier features see the ``node_in`` parameter columns only. (Fourier features of all columns
    made the encoding a hash of the probe values: NG-GNN / NG-T with probes stayed at chance on inr-cls.)"""
    g = random_graph(seed=0)
    torch.manual_seed(0)
    enc = NeuralGraphEncoder(4, 49, 8, 4, EncoderConfig(fourier_features=16, fourier_sigma=3.0), probe_in=6)
    assert enc.node_fourier.in_dim == 4
    p1, p2 = torch.randn(g.num_nodes, 6), torch.randn(g.num_nodes, 6)

    def nodes(p):
        h = g.clone()
        h.x = torch.cat([g.x, p], 1)
        return enc.encode_nodes(h)

    a = 0.3
    torch.testing.assert_close(nodes(a * p1 + (1 - a) * p2), a * nodes(p1) + (1 - a) * nodes(p2))
    assert not torch.allclose(nodes(p1), nodes(p2))
    with pytest.raises(ValueError, match="node_in=4 plus probe_in=6"):
        enc(g)  # the probe columns are missing


def test_no_probe_columns_keep_the_initialisation():
    g = random_graph(seed=0)
    torch.manual_seed(0)
    plain = NeuralGraphEncoder(4, 49, 8, 4, EncoderConfig(fourier_features=16))
    torch.manual_seed(0)
    zero = NeuralGraphEncoder(4, 49, 8, 4, EncoderConfig(fourier_features=16), probe_in=0)
    assert zero.probe_proj is None
    assert all(torch.equal(a, b) for a, b in zip(plain(g), zero(g)))
