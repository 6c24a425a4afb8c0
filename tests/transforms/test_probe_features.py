"""Probe features: every neuron's value on probe inputs, computed functionally from the graph's parameters."""
import copy

import pytest
import torch
from torch import nn
from torch_geometric.loader import DataLoader

from neuralgraph import to_neural_graph
from neuralgraph.convert import ACTIVATIONS
from neuralgraph.data.arch import build_model
from neuralgraph.data.graph import POOL, ROLE
from neuralgraph.transforms import LearnedProbeFeatures, PermuteNeurons, ProbeFeatures, probe_activations
from tests.helpers.nets import MLP, SmallResNet, WildParkCNN, permute_mlp, permute_resnet, permute_wildpark
from tests.helpers.permute import assert_params_moved, assert_same_function
from tests.models.ng_checks import node_edge_mapping


class Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x)


def siren(hidden=(16, 16), w0=30.0):
    """A SIREN INR (DWSNets style) with the frequency folded into the first layer: sin(w0 W x + w0 b)."""
    dims = (2, *hidden, 1)
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.uniform_(-1 / a, 1 / a) if i == 0 else lin.weight.uniform_(-(6 / a) ** 0.5 / w0,
                                                                                   (6 / a) ** 0.5 / w0)
            if i == 0:
                lin.weight.mul_(w0), lin.bias.mul_(w0)
        layers += [lin, Sin()] if i < len(dims) - 2 else [lin]
    return nn.Sequential(*layers)


def record(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of ``modules`` during ``model(x)``, recorded with forward hooks, as ``[N_module, M]``
    (channel maps averaged over space)."""
    outs = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, i=i: outs.setdefault(i, out.detach()))
             for i, m in enumerate(modules)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [o.flatten(2).mean(-1).t() if o.dim() > 2 else o.t() for o in (outs[i] for i in range(len(modules)))]


def test_inr_probe_values_are_the_forward_hook_activations():
    torch.manual_seed(0)
    m = siren()
    g = to_neural_graph(m)
    probes = torch.rand(8, 2) * 2 - 1
    out = ProbeFeatures(m, probes)(g)
    assert out.x.shape == (g.num_nodes, 4 + 8) and torch.equal(out.x[:, :4], g.x)
    feats = out.x[:, 4:]
    expected = torch.cat([probes.t()] + record(m, [m[1], m[3], m[4]], probes))
    assert torch.allclose(feats, expected, atol=1e-6, rtol=0)
    assert g.num_nodes == 2 + 16 + 16 + 1 and (g.node_role == ROLE["input"]).sum() == 2


def test_wildpark_cnn_probe_values_are_the_forward_hook_activations():
    torch.manual_seed(0)
    desc = {"family": "wildpark", "in_channels": 2, "n_classes": 5, "channels": [4, 8, 6, 3],
            "kernels": [3, 5, 3, 7], "activations": ["relu", "tanh", "identity", "gelu"],
            "residual": [-1, -1, 0, 1]}
    m = build_model(desc)
    g = to_neural_graph(m)
    probes = torch.randn(5, 2, 8, 8)
    feats = probe_activations(g, m, probes)
    expected = torch.cat([probes.mean((2, 3)).t()] + record(m, list(m.acts) + [m.fc], probes))
    assert feats.shape == (g.num_nodes, 5) == expected.shape
    assert torch.allclose(feats, expected, atol=1e-6, rtol=0)


def test_resnet_block_probe_values():
    torch.manual_seed(0)
    m = SmallResNet(widths=(4, 6), blocks=(1, 1))
    g = to_neural_graph(m)
    probes = torch.randn(3, 3, 8, 8)
    feats = probe_activations(g, m, probes)
    blk0, blk1 = m.blocks
    stem, c01, out0, c11, out1, short1, fc = record(
        m, [m.stem, blk0.conv1, blk0, blk1.conv1, blk1, blk1.shortcut, m.fc], probes)
    # F.relu inside forward has no module to hook: apply it to the hooked conv outputs
    relu = lambda v: torch.relu(v).flatten(2).mean(-1).t()  # noqa: E731
    with torch.no_grad():
        h0 = torch.relu(m.stem(probes))
        stem, c01, c11 = relu(m.stem(probes)), relu(blk0.conv1(h0)), relu(blk1.conv1(blk0(h0)))
    # node order: inputs, stem, block 0 conv1 / conv2 (holds the block output), block 1 conv1 / conv2,
    # block 1's 1x1 shortcut, the head
    expected = torch.cat([probes.mean((2, 3)).t(), stem, c01, out0, c11, out1, short1, fc])
    assert torch.allclose(feats, expected, atol=1e-6, rtol=0)


def test_batchnorm_net_runs_in_eval_mode_on_a_private_copy():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.BatchNorm2d(3),
                      nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    with torch.no_grad():
        for bn in (m[1], m[4]):
            bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2), bn.weight.normal_(), bn.bias.normal_()
    g = to_neural_graph(m)
    state = copy.deepcopy(m.state_dict())
    probes = torch.randn(4, 1, 8, 8)
    feats = probe_activations(g, m, probes)  # m is in train mode: probing must not use or update batch stats
    assert m.training and all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    m.eval()
    conv0, act0, conv1, act1, flat, out = record(m, [m[0], m[2], m[3], m[5], m[6], m[7]], probes)
    # inputs, conv0, bn0 (+relu), conv1, bn1 (+tanh), 48 virtual flatten neurons (not averaged), head
    expected = torch.cat([probes.mean((2, 3)).t(), conv0, act0, conv1, act1, flat, out])
    assert (g.node_role == ROLE["virtual"]).sum() == 48
    assert torch.allclose(feats, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("net", ["mlp", "wildpark", "resnet"])
def test_probe_features_follow_hidden_neuron_permutations(net):
    make, permute, shape = {"mlp": (MLP, permute_mlp, (6,)), "wildpark": (WildParkCNN, permute_wildpark, (1, 8, 8)),
                            "resnet": (SmallResNet, permute_resnet, (3, 8, 8))}[net]
    torch.manual_seed(1)
    m = make()
    p = permute(m, torch.Generator().manual_seed(2))
    probes = torch.randn(4, *shape)
    assert_params_moved(m, p)
    assert_same_function(m, p, probes)
    g, gp = to_neural_graph(m), to_neural_graph(p)
    node_map, _ = node_edge_mapping(g, gp)  # exact isomorphism of the two graphs (VF2)
    fg, fp = ProbeFeatures(m, probes)(g), ProbeFeatures(m, probes)(gp)
    assert torch.allclose(fg.x[:, 4:], fp.x[node_map, 4:], atol=1e-5, rtol=0)
    hidden = g.node_role == ROLE["hidden"]
    assert not torch.equal(node_map[hidden], torch.arange(g.num_nodes)[hidden])  # really permuted
    # and the same through the PermuteNeurons augmentation (the transform applied to the graph)
    t = PermuteNeurons(seed=3)
    perm = t.sample(g)
    assert torch.allclose(ProbeFeatures(m, probes)(t.apply(g, perm)).x[perm, 4:], fg.x[:, 4:], atol=1e-5, rtol=0)


def test_learned_probes_get_gradients():
    torch.manual_seed(0)
    # float64: batched and per-graph evaluation round differently in float32 (w0 = 30 amplifies it to ~3e-6)
    nets = [siren().double() for _ in range(3)]
    graphs = [to_neural_graph(n) for n in nets]
    probe = LearnedProbeFeatures(nets[0], num_probes=6, input_shape=(2,), init_std=0.5).double()
    assert [n for n, _ in probe.named_parameters()] == ["probes"]  # the template is not a submodule
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    batch.edge_attr.requires_grad_()
    feats = probe(batch)
    assert feats.shape == (batch.num_nodes, 6)
    # equal to the fixed-probe transform with the same probes, graph by graph
    with torch.no_grad():
        fixed = torch.cat([ProbeFeatures(nets[0], probe.probes.detach())(g).x[:, 4:] for g in graphs])
    assert feats.dtype == torch.float64 and torch.allclose(feats.detach(), fixed, atol=1e-12, rtol=0)
    feats.square().mean().backward()
    grad = probe.probes.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().min() > 0
    assert torch.isfinite(batch.edge_attr.grad).all() and batch.edge_attr.grad.abs().sum() > 0


def test_cnn_learned_probes_and_dataloader_batching():
    torch.manual_seed(0)
    m = WildParkCNN()
    graphs = [to_neural_graph(WildParkCNN()) for _ in range(3)]
    t = ProbeFeatures(m, torch.randn(4, 1, 8, 8))
    batch = next(iter(DataLoader([t(g) for g in graphs], batch_size=3)))
    assert batch.x.shape == (sum(g.num_nodes for g in graphs), 4 + 4)
    assert batch.num_graphs == 3 and batch.edge_index.max() < batch.num_nodes
    probe = LearnedProbeFeatures(m, num_probes=2, input_shape=(1, 8, 8))
    probe(next(iter(DataLoader(graphs, batch_size=3)))).sum().backward()
    assert torch.isfinite(probe.probes.grad).all() and probe.probes.grad.abs().sum() > 0


def test_mixed_architectures_with_a_model_function():
    torch.manual_seed(0)
    a, b = WildParkCNN(), WildParkCNN(channels=(4, 4), kernels=(3, 3), acts=("relu", "tanh"), residual=(-1, -1))
    ga, gb = to_neural_graph(a), to_neural_graph(b)
    templates = {ga.num_nodes: WildParkCNN(), gb.num_nodes: copy.deepcopy(b)}
    probes = torch.randn(3, 1, 8, 8)
    t = ProbeFeatures(lambda g: templates[g.num_nodes], probes)
    for g, m in ((ga, a), (gb, b)):
        with torch.no_grad():
            assert torch.allclose(t(g).x[g.output_nodes(), 4:], m(probes).t(), atol=1e-6, rtol=0)


def test_embedding_inputs_are_one_hot_frequencies():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    g = to_neural_graph(m)
    probes = torch.tensor([[0, 1, 1, 4], [2, 2, 2, 2]])  # 2 probes of 4 tokens each
    feats = probe_activations(g, m, probes)
    assert torch.allclose(feats[g.input_nodes()].t(), torch.tensor([[.25, .5, 0, 0, .25], [0, 0, 1., 0, 0]]))
    with torch.no_grad():  # token sequences: features averaged over tokens
        emb, act, out = (m[0](probes).mean(1).t(), m[2](m[1](m[0](probes))).mean(1).t(), m(probes).mean(1).t())
    assert torch.allclose(feats[5:], torch.cat([emb, act, out]), atol=1e-6, rtol=0)


def test_every_neuron_of_the_builtin_rules_has_a_recorded_value():
    from neuralgraph.convert import get_plan

    torch.manual_seed(0)
    flat = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    nets = [(MLP(), None, {}), (WildParkCNN(), None, {}), (SmallResNet(), None, {}),
            (nn.Sequential(nn.Conv2d(1, 6, 3), nn.GroupNorm(3, 6), nn.ReLU(), nn.Conv2d(6, 4, 3),
                           nn.InstanceNorm2d(4, affine=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(4, 2), nn.LayerNorm(2)), None, {}),
            (flat, None, {"flatten": "repeat"}), (flat, None, {}),
            (nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2)), None, {})]
    for m, example, cfg in nets:
        plan = get_plan(m, example, **cfg)
        virtual = plan.categories["node_role"] == ROLE["virtual"]   # GroupNorm's group neurons hold no value
        assert (plan.node_value[~virtual] >= 0).all(), m
    # repeat copies hold the flattened feature of their channel and position (after the pool and relu)
    probes = torch.randn(3, 1, 8, 8)
    g = to_neural_graph(flat, flatten="repeat")
    (flat_out,) = record(flat, [flat[3]], probes)
    copies = (g.node_spatial > 0).nonzero().view(-1)
    assert copies.numel() == 18
    assert torch.allclose(probe_activations(g, flat, probes, flatten="repeat")[copies], flat_out, atol=1e-6)
    # a channel pooled before its activation: the activation goes on an identity copy (a neuron's pooling follows
    # its activation), which holds the activation of the pooled map (what the next layer reads)
    g = to_neural_graph(flat)
    (act,) = record(flat, [flat[2]], probes)
    relu = (g.node_act == ACTIVATIONS.index("relu")).nonzero().view(-1)
    assert relu.numel() == 2 and (g.node_pool[relu - 2] == POOL["max"]).all()
    assert torch.allclose(probe_activations(g, flat, probes)[relu], act, atol=1e-6)
