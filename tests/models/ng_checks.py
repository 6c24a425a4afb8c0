"""Shared checks for the neural-graph models (NG-GNN, NG-T): real-module symmetry and batching."""
from __future__ import annotations

import copy

import networkx as nx
import torch
from torch import nn
from torch_geometric.loader import DataLoader

from neuralgraph import to_neural_graph
from tests.helpers.nets import MLP, SmallResNet, WildParkCNN, permute_mlp, permute_resnet, permute_wildpark
from tests.helpers.permute import (assert_params_moved, assert_same_function, head_permutation,
                                   permute_attention_inputs, permute_encoder_layer, permute_heads, permute_in,
                                   permute_out, to_nx)


class NormCNN(nn.Module):
    """conv -> BatchNorm -> ReLU (x2), global average pool, linear; random running statistics."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.n2 = nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)
        for bn in (self.n1, self.n2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(bn.weight)
            nn.init.normal_(bn.bias)

    def forward(self, x):
        x = torch.relu(self.n1(self.c1(x)))
        x = torch.relu(self.n2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


@torch.no_grad()
def permute_normcnn(model: NormCNN, gen: torch.Generator) -> NormCNN:
    m = copy.deepcopy(model)
    for conv, bn, nxt in ((m.c1, m.n1, m.c2), (m.c2, m.n2, m.fc)):
        perm = torch.randperm(conv.out_channels, generator=gen)
        permute_out(conv, perm)
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.copy_(t[perm])
        permute_in(nxt, perm)
    return m

class AttnNet(nn.Module):
    """token embedding -> multi-head self-attention -> mean over tokens -> linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        h = self.embed(x)
        h = self.attn(h, h, h, need_weights=False)[0]
        return self.fc(h.mean(1))


def permute_attn(model: AttnNet, gen: torch.Generator) -> AttnNet:
    """Permute the embedding neurons (inputs of q, k and v), the attention neurons (whole heads, and within
    each head one permutation shared by its q, k and v rows: the neural graph binds a head neuron's q, k
    and v rows, see neuralgraph.convert.rules.attention) and the attention's output neurons."""
    m = copy.deepcopy(model)
    embed = torch.randperm(8, generator=gen)
    permute_out(m.embed, embed)
    permute_attention_inputs(m.attn, embed)
    permute_heads(m.attn, head_permutation(2, 4, gen))
    out = torch.randperm(8, generator=gen)
    permute_out(m.attn.out_proj, out)
    permute_in(m.fc, out)
    return m


class TransformerNet(nn.Module):
    """token embedding -> pre-norm nn.TransformerEncoderLayer -> mean over tokens -> linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=True)
        self.fc = nn.Linear(8, 2)
        for ln in (self.encoder.norm1, self.encoder.norm2):
            nn.init.normal_(ln.weight)
            nn.init.normal_(ln.bias)

    def forward(self, x):
        return self.fc(self.encoder(self.embed(x)).mean(1))


def permute_transformer(model: TransformerNet, gen: torch.Generator) -> TransformerNet:
    """The residual stream (embedding outputs through the encoder layer), heads, neurons within heads, and
    feed-forward hidden neurons."""
    m = copy.deepcopy(model)
    stream = torch.randperm(8, generator=gen)
    permute_out(m.embed, stream)
    permute_encoder_layer(m.encoder, gen, stream)
    permute_in(m.fc, stream)
    return m


#: (name, module factory, permutation, example input) for the symmetry tests
NETS = {
    "mlp": (lambda: MLP((6, 16, 12, 3)), permute_mlp, lambda: torch.randn(4, 6)),
    "wildpark": (lambda: WildParkCNN(), permute_wildpark, lambda: torch.randn(2, 1, 8, 8)),
    "resnet": (lambda: SmallResNet(), permute_resnet, lambda: torch.randn(2, 3, 8, 8)),
    "norm": (lambda: NormCNN().eval(), permute_normcnn, lambda: torch.randn(2, 2, 6, 6)),
    "attention": (lambda: AttnNet().eval(), permute_attn, lambda: torch.randn(2, 5, 3)),
    "transformer": (lambda: TransformerNet().eval(), permute_transformer, lambda: torch.randn(2, 5, 3)),
}


def permuted_pair(net: str, seed: int = 0):
    """(graph, graph of a hidden-neuron-permuted copy); checks the permuted copy computes the same."""
    make, permute, example = NETS[net]
    torch.manual_seed(seed)
    model = make()
    other = permute(model, torch.Generator().manual_seed(seed + 1))
    assert_params_moved(model, other)
    assert_same_function(model, other, example())
    return (to_neural_graph(model, example_input=example()), to_neural_graph(other, example_input=example()))


#: real networks for the symmetry tests
SYMMETRY_NETS = ["mlp", "wildpark", "resnet", "norm", "attention", "transformer"]


def node_edge_mapping(g1, g2) -> tuple[torch.Tensor, torch.Tensor]:
    """Isomorphism g1 -> g2 found by VF2 on exact features: ``node_map[i]`` is the g2 node of g1 node
    ``i`` and ``edge_map[k]`` the g2 edge of g1 edge ``k``."""
    G1, G2 = to_nx(g1), to_nx(g2)
    gm = nx.algorithms.isomorphism.MultiDiGraphMatcher(
        G1, G2, node_match=lambda a, b: a["f"] == b["f"],
        edge_match=lambda a, b: sorted(d["f"] for d in a.values()) == sorted(d["f"] for d in b.values()))
    assert gm.is_isomorphic()
    node_map = torch.tensor([gm.mapping[i] for i in range(g1.num_nodes)])
    key2 = {}
    for k, (s, d) in enumerate(g2.edge_index.t().tolist()):
        key2.setdefault((s, d, int(g2.edge_kind[k]), tuple(g2.edge_attr[k].tolist())), []).append(k)
    edge_map = []
    for k, (s, d) in enumerate(g1.edge_index.t().tolist()):
        key = (int(node_map[s]), int(node_map[d]), int(g1.edge_kind[k]), tuple(g1.edge_attr[k].tolist()))
        edge_map.append(key2[key].pop())
    return node_map, torch.tensor(edge_map)


def batch_of(graphs):
    return next(iter(DataLoader(list(graphs), batch_size=len(graphs))))


def assert_batch_independent(model, small, big_graphs, atol=1e-5):
    """``small``'s output alone equals its output batched before and after larger graphs."""
    model.eval()
    with torch.no_grad():
        alone = model(batch_of([small]))
        first = model(batch_of([small, *big_graphs]))
        last = model(batch_of([*big_graphs, small]))
    torch.testing.assert_close(first[:1], alone, atol=atol, rtol=0)
    torch.testing.assert_close(last[-1:], alone, atol=atol, rtol=0)


def assert_all_grads(model, data):
    """A backward pass reaches every parameter with a finite gradient."""
    model.train()
    model.zero_grad()
    out = model(data)
    loss = sum(o.square().mean() for o in out) if isinstance(out, tuple) else out.square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    return zero
