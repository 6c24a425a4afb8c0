"""Blocks of real architectures (torchvision / timm), as small faithful replicas written in plain torch: each is
checked against the executor, the exact round trip, and a symmetry (hidden neurons of the torch module
permuted, the function checked unchanged, both converted and compared)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from neuralgraph.data.graph import EDGE_KINDS
from tests.helpers.permute import (assert_isomorphic, assert_params_moved, assert_same_function, assert_state_equal,
                                   isomorphic, permute_features, permute_in, permute_out, permuted_copy)


def randomize(m: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for every parameter and floating buffer (no ones / zeros that hide a wrong graph)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if t.is_floating_point():
                r = torch.rand(t.shape, generator=gen)
                t.copy_(r + 0.5 if name.endswith("running_var") else (r - 0.5) * 1.5)
    return m.eval()


def check(m: nn.Module, x: torch.Tensor, example: bool = False, **run):
    """The graph runs like the module (``run``: options of :func:`execute`) and reads back into it exactly; returns
    the graph."""
    g = to_neural_graph(m, example_input=x if example else None)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x, **run), m(x).reshape(x.size(0), -1) if m(x).dim() == 2 else m(x),
                                   atol=1e-5, rtol=1e-4)
    blank = copy.deepcopy(m)
    with torch.no_grad():
        for t in list(blank.parameters()) + list(blank.buffers()):
            if t.is_floating_point():
                t.fill_(float("nan"))
    assert_state_equal(from_neural_graph(g, blank), m)
    return g


def kinds(g) -> set[str]:
    return {EDGE_KINDS[k] for k in g.edge_kind.unique().tolist()}


# ------------------------------------------------------------------------ Squeeze-and-Excitation
class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))``, fc as 1x1 convs."""

    def __init__(self, c: int, squeeze: int, gate: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.activation, self.scale_activation = nn.ReLU(), gate()

    def forward(self, x):
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class TimmSE(nn.Module):
    """timm's SqueezeExcite (efficientnet blocks): ``x * gate(conv_expand(act(conv_reduce(x.mean((2, 3))))))``."""

    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.conv_reduce, self.act1 = nn.Conv2d(c, squeeze, 1), nn.SiLU()
        self.conv_expand, self.gate = nn.Conv2d(squeeze, c, 1), nn.Hardsigmoid()

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.conv_expand(self.act1(self.conv_reduce(x_se)))
        return x * self.gate(x_se)


class MBConv(nn.Module):
    """An inverted residual with SE (torchvision EfficientNet / MobileNetV3): expand, depthwise, SE, project."""

    def __init__(self, c: int = 4, e: int = 8, s: int = 3, se: type[nn.Module] = SqueezeExcitation):
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e)
        self.dw, self.bn2 = nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e)
        self.se = se(e, s)
        self.project, self.bn3 = nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        h = F.silu(self.bn1(self.expand(x)))
        h = F.silu(self.bn2(self.dw(h)))
        h = self.bn3(self.project(self.se(h)))
        return self.head((h + x).mean((2, 3)))


def permute_mbconv(m: MBConv, gen: torch.Generator) -> None:
    """Expanded channels (expand, bn1, depthwise, bn2, SE in / out, project in) and the SE's hidden neurons."""
    e = m.expand.out_channels
    p = torch.randperm(e, generator=gen)
    permute_out(m.expand, p), permute_features(m.bn1, p), permute_out(m.dw, p), permute_features(m.bn2, p)
    permute_in(m.project, p)
    fc1, fc2 = (m.se.fc1, m.se.fc2) if hasattr(m.se, "fc1") else (m.se.conv_reduce, m.se.conv_expand)
    permute_in(fc1, p), permute_out(fc2, p)
    q = torch.randperm(fc1.out_channels, generator=gen)
    permute_out(fc1, q), permute_in(fc2, q)


@pytest.mark.parametrize("se", [SqueezeExcitation, TimmSE])
def test_squeeze_excitation_gate(se):
    m = randomize(MBConv(se=se))
    x = torch.randn(3, 4, 6, 6)
    g = check(m, x)
    assert "product" in kinds(g)
    gen = torch.Generator().manual_seed(1)
    other = permuted_copy(m, lambda s: permute_mbconv(s, gen))
    assert_params_moved(m, other)
    assert_same_function(m, other, x)
    assert_isomorphic(g, to_neural_graph(other))


def test_a_gate_on_other_channels_is_another_graph():
    """Each channel is gated by its own gate neuron: swapping the SE's output channels changes the function
    and gives a non-isomorphic graph."""
    m = randomize(MBConv())
    other = copy.deepcopy(m)
    permute_out(other.se.fc2, torch.tensor([1, 0, 2, 3, 4, 5, 6, 7]))
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        assert not torch.allclose(m(x), other(x))
    assert not isomorphic(to_neural_graph(m), to_neural_graph(other))


class Broadcast(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(3, 4), nn.Linear(3, width), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.a(x) * self.b(x))


def test_products_of_values_that_do_not_pair_channels_are_refused():
    with pytest.raises(UnsupportedModuleError, match=r"multiplies values with 4 and 2 channels"):
        to_neural_graph(Broadcast(2))


class Quotient(nn.Module):
    """``x / y`` where ``y`` shares neurons with ``x`` (found by review: the reciprocal was set on the shared
    neurons, so the numerator read ``1 / x`` too)."""

    def __init__(self, form: str):
        super().__init__()
        self.form, self.conv = form, nn.Conv2d(3, 4, 1)

    def forward(self, x):
        d = torch.sigmoid(self.conv(x)) + 0.5
        a, b = d[:, :2], d[:, 2:]
        return {"self": lambda: d / d, "first": lambda: d / d[:, :1], "shifted": lambda: d[:, :3] / d[:, 1:],
                "swapped": lambda: torch.cat([a, b], 1) / torch.cat([b, a], 1), "other": lambda: d / (d * d)}[
            self.form]()


class Centred(nn.Module):
    """A one-channel value added to / subtracted from a value of several channels (torch broadcasts it): a map
    centred over its channels, tokens centred over their features, and the one-channel operand first."""

    def __init__(self, form: str):
        super().__init__()
        self.form, self.conv = form, nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(4, 4) if form == "tokens" else None

    def forward(self, x):
        h = self.conv(x)
        if self.form == "map":
            return h - h.mean(1, keepdim=True)
        if self.form == "first":
            return torch.sigmoid(h[:, :1]) + h
        t = self.fc(h.flatten(2).transpose(1, 2))
        return (t - t.mean(-1, keepdim=True)).mean(1)


@pytest.mark.parametrize("form", ["map", "first", "tokens"])
def test_a_one_channel_summand_is_broadcast_over_the_channels(form):
    """The executor reproduces the module and the round trip is exact (found by review: refused, advising to
    slice both operands)."""
    check(randomize(Centred(form)).eval(), torch.randn(2, 3, 3, 4), example=True)


class ChannelLastPool(nn.Module):
    """Global pooling of a channel-last map over its positions, ``t.mean((1, 2))`` / ``t.amax((-3, -2))`` (found by
    review: refused as if (1, 2) were not the spatial dims)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        t = self.fc(self.conv(x).permute(0, 2, 3, 1))
        return self.head(t.mean((1, 2))) + self.head(t.amax((-3, -2)))


def test_global_pooling_of_a_channel_last_map():
    check(randomize(ChannelLastPool()).eval(), torch.randn(2, 3, 5, 6), example=True)


@pytest.mark.parametrize("form", ["self", "first", "shifted", "swapped", "other"])
def test_quotients_of_values_sharing_neurons(form):
    check(randomize(Quotient(form)).eval(), torch.randn(2, 3, 3, 4))


def test_a_one_channel_factor_is_broadcast_over_the_channels():
    """``a(x) * b(x)`` with a one-channel ``b``: its neuron feeds every product neuron, as torch broadcasts it;
    permuting ``a``'s outputs (and the head's inputs) is a symmetry, and the graphs are isomorphic."""
    m = randomize(Broadcast(1))
    x = torch.randn(5, 3)
    g = check(m, x)
    other = copy.deepcopy(m)
    perm = torch.tensor([2, 0, 3, 1])
    permute_out(other.a, perm)
    permute_in(other.head, perm)
    assert_params_moved(m, other)
    assert_same_function(m, other, x)
    assert_isomorphic(g, to_neural_graph(other))


# ------------------------------------------------------------------------ fused norm + activation
class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: a BatchNorm2d subclass whose forward calls F.batch_norm with its own parameters,
    then its activation (so it is traced, not converted as a plain BatchNorm)."""

    def __init__(self, c: int, act: type[nn.Module] = nn.SiLU):
        super().__init__(c)
        self.drop, self.act = nn.Identity(), act()

    def forward(self, x):
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, bn_training,
                         self.momentum, self.eps)
        return self.act(self.drop(x))


class ConvBnAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), BatchNormAct2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), BatchNormAct2d(6, nn.ReLU)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.bn2(self.conv2(self.bn1(self.conv1(x)))).mean((2, 3)))


def test_fused_batchnorm_activation():
    m = randomize(ConvBnAct())
    x = torch.randn(2, 3, 5, 5)
    g = check(m, x)
    plain = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.SiLU(),
                          nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    plain.load_state_dict(dict(zip(plain.state_dict(), m.state_dict().values())))
    # the same graph as the unfused layers
    assert_isomorphic(g, to_neural_graph(plain.eval()))
    gen = torch.Generator().manual_seed(0)
    p, q = torch.randperm(6, generator=gen), torch.randperm(6, generator=gen)

    def apply(s):
        permute_out(s.conv1, p), permute_features(s.bn1, p), permute_in(s.conv2, p)
        permute_out(s.conv2, q), permute_features(s.bn2, q), permute_in(s.fc, q)

    other = permuted_copy(m, apply)
    assert_params_moved(m, other)
    assert_same_function(m, other, x)
    assert_isomorphic(g, to_neural_graph(other))


def test_functional_batch_norm_in_train_mode_is_refused():
    m = ConvBnAct()
    m.bn1.train()
    with pytest.raises(UnsupportedModuleError, match=r"bn1 .*model.eval\(\)"):
        to_neural_graph(m)


# ------------------------------------------------------------------------ channel LayerNorm, layer scale
class LayerNorm2d(nn.LayerNorm):
    """timm / torchvision LayerNorm2d: LayerNorm over the channels of an NCHW map, at every position."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """torchvision's ConvNeXt block: depthwise 7x7, channel-last LayerNorm and MLP, layer scale, residual."""

    def __init__(self, dim: int = 4):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1))

    def forward(self, x):
        h = self.dw(x).permute(0, 2, 3, 1)
        h = self.fc2(F.gelu(self.fc1(self.norm(h)))).permute(0, 3, 1, 2)
        return self.layer_scale * h + x


class ConvNeXt(nn.Module):
    def __init__(self, dim: int = 4):
        super().__init__()
        self.stem, self.stem_norm = nn.Conv2d(3, dim, 2, stride=2), LayerNorm2d(dim)
        self.block = CNBlock(dim)
        self.head_norm, self.fc = LayerNorm2d(dim), nn.Linear(dim, 3)

    def forward(self, x):
        h = self.block(self.stem_norm(self.stem(x)))
        return self.fc(torch.flatten(self.head_norm(F.adaptive_avg_pool2d(h, 1)), 1))


def test_convnext_channel_layernorm_and_layer_scale():
    m = randomize(ConvNeXt())
    x = torch.randn(2, 3, 8, 8)
    g = check(m, x)
    assert {"layernorm", "scale"} <= kinds(g)
    g2 = check(m, x, example=True)
    assert torch.equal(g.edge_index, g2.edge_index)
    gen = torch.Generator().manual_seed(0)
    h = torch.randperm(16, generator=gen)

    def apply(s):
        permute_out(s.block.fc1, h), permute_in(s.block.fc2, h)

    other = permuted_copy(m, apply)
    assert_params_moved(m, other)
    assert_same_function(m, other, x)
    assert_isomorphic(g, to_neural_graph(other))


class ChannelLinearResidual(nn.Module):
    """``x + Linear(x channel-last)`` on the map of ``conv``: the residual reads the map as a map, the Linear
    reads it as a feature when the map has one position (the last stage of a ConvNeXt at a small input)."""

    def __init__(self, conv: nn.Module, dim: int = 4):
        super().__init__()
        self.conv, self.fc = conv, nn.Linear(dim, dim)

    def forward(self, x):
        h = self.conv(x)
        return F.adaptive_avg_pool2d(h + self.fc(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), 1).flatten(1)


class OnePositionConvNeXt(ConvNeXt):
    """The ConvNeXt replica with a stem that leaves one position: the block's depthwise 7x7 conv, channel-last
    LayerNorm, MLP, layer scale and residual, and the head's pool, LayerNorm2d and Linear on a 1x1 map."""

    def __init__(self, dim: int = 4):
        super().__init__(dim)
        self.stem = nn.Conv2d(3, dim, 4, stride=4)


@pytest.mark.parametrize("make", [lambda: ChannelLinearResidual(nn.Conv2d(3, 4, 4, stride=4)),
                                  lambda: ChannelLinearResidual(nn.Conv2d(3, 4, 1)), OnePositionConvNeXt],
                         ids=["residual-1x1", "residual-4x4", "convnext-1x1"])
def test_a_feature_and_a_map_term_of_one_neuron_are_summed_per_sample(make):
    """Regression: a Linear term (``[B]``) and a residual term (``[B, 1, 1]``) into one neuron were broadcast
    from the right (``[B, 1, B]``), mixing the samples of a batch: torchvision ConvNeXt with four stages at
    32x32 ran with relative error 4e-3. A batch of more than one sample (a batch of
    one hides it), in float64, to round-off."""
    m = randomize(make()).double()
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for example in (False, True):
        g = to_neural_graph(m, example_input=x if example else None)
        with torch.no_grad():
            torch.testing.assert_close(execute(g, x), m(x), atol=1e-9, rtol=1e-9)
    check(m, x)


def test_a_channel_linear_is_a_1x1_convolution():
    """A Linear on a channel-last map computes a 1x1 convolution, per position."""
    class ChannelsLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 5)

        def forward(self, x):
            return self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).mean((2, 3))

    m = randomize(ChannelsLast())
    x = torch.randn(2, 3, 4, 4)
    g = check(m, x, example=True, tokens=False)  # the raw input's rank is known only from an example
    # the same graph is an MLP on [B, T, d] sequences: which layout x has, the caller says
    with pytest.raises(ValueError, match="pass tokens=True for .* or tokens=False"):
        execute(g, x)


@pytest.mark.parametrize("forward,match", [
    (lambda s, x: s.conv(x).permute(0, 3, 2, 1), r"permutes the dims of a feature map \(channels at dim 1\) to \(0, 3, 2, 1\)"),
    (lambda s, x: s.conv(x) * s.p, r"parameter 'p' of shape \(2, 4, 4\)"),
    (lambda s, x: s.conv(x) * s.p.sum(0), r"computes 'sum' on parameter 'p'"),
])
def test_unrepresentable_layouts_and_parameters_are_refused(forward, match):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.p = nn.Conv2d(3, 2, 1), nn.Parameter(torch.randn(2, 4, 4))

        def forward(self, x):
            return forward(self, x)

    with pytest.raises(UnsupportedModuleError, match=match):
        to_neural_graph(M(), example_input=torch.randn(1, 3, 4, 4))


# ------------------------------------------------------------------------ channel shuffle and split
def channel_shuffle(x, groups: int):
    """torchvision's shufflenetv2.channel_shuffle."""
    batchsize, num_channels, height, width = x.size()
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: split the channels, transform one half, concatenate, shuffle."""

    def __init__(self, c: int = 6, groups: int = 2):
        super().__init__()
        h, self.groups = c // 2, groups
        self.stem = nn.Conv2d(3, c, 1)
        self.branch = nn.Sequential(nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU(),
                                    nn.Conv2d(h, h, 3, padding=1, groups=h), nn.BatchNorm2d(h),
                                    nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU())
        self.fc = nn.Linear(c, 2)

    def forward(self, x):
        x = self.stem(x)
        x1, x2 = x.chunk(2, dim=1)
        out = channel_shuffle(torch.cat((x1, self.branch(x2)), dim=1), self.groups)
        return self.fc(out.mean((2, 3)))


@pytest.mark.parametrize("example", [False, True])
def test_a_shuffle_of_one_channel_groups_converts(example):
    """groups == channels (one channel per group): an identity shuffle, ``x.view(B, C, 1, H, W)`` must read as the
    groups of a shuffle (the transpose follows), not as a 3-d map (found by review: refused with example_input)."""
    check(randomize(ShuffleUnit(c=6, groups=6)), torch.randn(2, 3, 5, 5), example=example)


@pytest.mark.parametrize("example", [False, True])
def test_channel_shuffle_is_a_fixed_permutation(example):
    m = randomize(ShuffleUnit())
    x = torch.randn(2, 3, 5, 5)
    g = check(m, x, example=example)
    assert g.num_nodes == 3 + 6 + 6 * 3 + 2  # no neurons for the split, concatenation and shuffle
    gen = torch.Generator().manual_seed(0)
    q = torch.randperm(3, generator=gen)

    def apply(s):  # the branch's hidden channels, through its depthwise convolution
        b = s.branch
        permute_out(b[0], q), permute_features(b[1], q), permute_out(b[3], q), permute_features(b[4], q)
        permute_in(b[5], q)

    other = permuted_copy(m, apply)
    assert_params_moved(m, other)
    assert_same_function(m, other, x)
    assert_isomorphic(g, to_neural_graph(other))
    # another group count shuffles the channels differently: another function, another graph
    three = ShuffleUnit(groups=3)
    three.load_state_dict(m.state_dict())
    three.eval()
    with torch.no_grad():
        assert not torch.allclose(three(x), m(x))
    assert not isomorphic(check(three, x, example=example), g)


def test_split_with_sizes_and_unsupported_splits():
    class Split(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.conv, self.fc, self.dim = nn.Conv2d(3, 5, 1), nn.Linear(3, 2), dim

        def forward(self, x):
            a, b = torch.split(self.conv(x), [2, 3], dim=self.dim)
            return self.fc(torch.relu(b).mean((2, 3))) + a.mean((2, 3)).sum(1, keepdim=True)

    with pytest.raises(UnsupportedModuleError, match=r"splits dim 2 of a feature map"):
        to_neural_graph(Split(2))


# ------------------------------------------------------------------------ stochastic depth (torchvision.ops)
def stochastic_depth(input, p: float, mode: str, training: bool = True):
    """torchvision.ops.stochastic_depth's signature and eval-mode behaviour (the real one is an fx leaf too)."""
    if not training or p == 0.0:
        return input
    keep = torch.empty([input.shape[0]] + [1] * (input.ndim - 1)).bernoulli_(1 - p)
    return input * keep / (1 - p)


stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"  # the rule is registered by qualified name
torch.fx.wrap("stochastic_depth")


class DropPathBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 3, 3, padding=1), nn.Linear(3, 2)

    def forward(self, x):
        return self.fc((stochastic_depth(self.conv(x), 0.2, "row", self.training) + x).mean((2, 3)))


def test_stochastic_depth_is_the_identity_in_eval_mode():
    m = randomize(DropPathBlock())
    check(m, torch.randn(2, 3, 4, 4))
    with pytest.raises(UnsupportedModuleError, match=r"stochastic depth in training mode.*model.eval\(\)"):
        to_neural_graph(m.train())
