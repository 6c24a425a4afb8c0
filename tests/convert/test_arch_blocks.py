"""Blocks found by the sweep over real architectures (timm / torchvision models beyond the coverage table), as
small faithful replicas in plain torch: each is checked against the executor, the exact round trip and a
symmetry (hidden neurons of the torch module permuted, the function checked unchanged, both converted and
compared)."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from neuralgraph.convert import activation_id
from neuralgraph.convert.trace import fx_trace
from neuralgraph.data.graph import EDGE_KIND
from neuralgraph.transforms import PermuteNeurons
from tests.convert.test_blocks import check, randomize
from tests.helpers.permute import (assert_isomorphic, assert_params_moved, assert_same_function, head_permutation,
                                   isomorphic, permute_features, permute_in, permute_out, permuted_copy)


# ------------------------------------------------------------------------ PoolFormer (timm metaformer)
class Pooling(nn.Module):
    """timm's ``metaformer.Pooling`` token mixer: ``pool(x) - x``, a difference of two neuron values."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)

    def forward(self, x):
        return self.pool(x) - x


class Scale(nn.Module):
    """timm's ``metaformer.Scale``: a layer scale ``x * scale.view(C, 1, 1)``."""

    def __init__(self, c: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(c))

    def forward(self, x):
        return x * self.scale.view(-1, 1, 1)


class PoolFormer(nn.Module):
    """A stem, one PoolFormer block (GroupNorm(1, C), pooling mixer, 1x1-conv MLP, layer scales) and a head."""

    def __init__(self, c: int = 6, hidden: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.norm1, self.mixer, self.ls1 = nn.GroupNorm(1, c), Pooling(), Scale(c)
        self.norm2, self.ls2 = nn.GroupNorm(1, c), Scale(c)
        self.fc1, self.act, self.fc2 = nn.Conv2d(c, hidden, 1), nn.GELU(), nn.Conv2d(hidden, c, 1)
        self.head = nn.Linear(c, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.ls1(self.mixer(self.norm1(x)))
        x = x + self.ls2(self.fc2(self.act(self.fc1(self.norm2(x)))))
        return self.head(x.mean((2, 3)))


def permute_poolformer(m: PoolFormer, stream: torch.Tensor, hidden: torch.Tensor) -> None:
    """Permute the residual stream's channels (through the pooling difference) and the MLP's hidden channels."""
    permute_out(m.stem, stream)
    for norm in (m.norm1, m.norm2):
        permute_features(norm, stream)
    with torch.no_grad():
        for ls in (m.ls1, m.ls2):
            ls.scale.copy_(ls.scale[stream])
    permute_in(m.fc1, stream), permute_out(m.fc1, hidden), permute_in(m.fc2, hidden), permute_out(m.fc2, stream)
    permute_in(m.head, stream)


def test_poolformer_difference_of_values():
    m = randomize(PoolFormer())
    x = torch.randn(2, 3, 8, 8)
    g = check(m, x)
    minus = (g.edge_kind == EDGE_KIND["identity"]) & (g.edge_attr[:, g.edge_attr.size(1) // 2] == -1)
    assert int(minus.sum()) == 6  # pool(x) - x: one -1 edge per channel, from x into the pooled copy's difference
    gen = torch.Generator().manual_seed(1)
    other = permuted_copy(m, lambda s: permute_poolformer(s, torch.randperm(6, generator=gen),
                                                          torch.randperm(10, generator=gen)))
    assert_params_moved(m, other)
    assert_same_function(m, other, x)
    assert_isomorphic(g, to_neural_graph(other))


class Differences(nn.Module):
    """``a - b`` in both operand orders and kinds: into open neurons (``fc(x) - x``), onto new neurons when the
    minuend is read again, and ``x - x``."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 5), nn.Linear(5, 5)

    def forward(self, x):
        h = self.a(x) - x                # the minuend is open: x's -1 edges go into fc's neurons
        u = torch.relu(h)
        v = u - self.b(u)                # the subtrahend is open but is not negated in place: new neurons
        return torch.sub(v, h) + (v - v)


def test_differences_of_values():
    m = randomize(Differences())
    g = check(m, torch.randn(7, 5))
    assert int(((g.edge_kind == EDGE_KIND["identity"]) & (g.edge_attr[:, g.edge_attr.size(1) // 2] == -1)).sum()) \
        == 5 * 4


def test_a_difference_of_values_with_other_channels_is_refused():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(5, 3)

        def forward(self, x):
            return self.a(x) - x

    with pytest.raises(UnsupportedModuleError, match="3 and 5 channels"):
        to_neural_graph(Bad())


# ------------------------------------------------------------------------ ResMLP's Affine (timm mlp_mixer)
class Affine(nn.Module):
    """timm's ``mlp_mixer.Affine``: ``torch.addcmul(beta, alpha, x)`` = ``beta + alpha * x`` per channel."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones((1, 1, dim)))
        self.beta = nn.Parameter(torch.zeros((1, 1, dim)))

    def forward(self, x):
        return torch.addcmul(self.beta, self.alpha, x)


class ResMLPChannelBlock(nn.Module):
    """A patch embedding, the channel half of a ResMLP block on its ``[B, T, C]`` tokens
    (``x + ls * mlp(affine(x))``) and a head."""

    def __init__(self, c: int = 6, hidden: int = 12):
        super().__init__()
        self.embed = nn.Conv2d(3, c, 2, stride=2)
        self.norm, self.fc1, self.fc2 = Affine(c), nn.Linear(c, hidden), nn.Linear(hidden, c)
        self.ls = nn.Parameter(torch.ones(c))
        self.out_norm, self.head = Affine(c), nn.Linear(c, 3)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.ls * self.fc2(torch.relu(self.fc1(self.norm(x))))
        return self.head(self.out_norm(x).mean(1))


def test_resmlp_affine_is_a_per_channel_scale_and_shift():
    m = randomize(ResMLPChannelBlock())
    x = torch.randn(2, 3, 4, 4)
    g = check(m, x, example=True)  # the patch grid's size
    assert int((g.edge_kind == EDGE_KIND["scale"]).sum()) == 6 + 6 + 6  # two Affines and the layer scale
    hidden = torch.randperm(12, generator=torch.Generator().manual_seed(2))
    other = permuted_copy(m, lambda s: (permute_out(s.fc1, hidden), permute_in(s.fc2, hidden)))
    assert_params_moved(m, other)
    assert_same_function(m, other, x)
    assert_isomorphic(g, to_neural_graph(other, example_input=x))


@pytest.mark.parametrize("forward", [
    lambda self, x: torch.addcmul(self.beta, self.alpha, x, value=0.5),
    lambda self, x: torch.addcmul(x, self.alpha, self.beta),
])
def test_other_addcmul_uses_are_refused(forward):
    class Other(Affine):
        pass

    Other.forward = forward
    with pytest.raises(UnsupportedModuleError, match="addcmul"):
        to_neural_graph(nn.Sequential(nn.Linear(3, 4), Other(4)))


# ------------------------------------------------------------------------ HGNetV2's LearnableAffineBlock (timm hgnet)
class LearnableAffine(nn.Module):
    """timm's ``hgnet.LearnableAffineBlock``: ``scale * x + bias`` with one learnable scalar each (shape ``[1]``)."""

    def __init__(self):
        super().__init__()
        self.scale, self.bias = nn.Parameter(torch.tensor([1.0])), nn.Parameter(torch.tensor([0.0]))

    def forward(self, x):
        return self.scale * x + self.bias


class HGStem(nn.Module):
    """conv-BN-ReLU-affine twice, global pooling, a head (HGNetV2's ConvBNAct with ``use_lab=True``)."""

    def __init__(self, c: int = 5):
        super().__init__()
        self.c1, self.n1, self.lab1 = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), LearnableAffine()
        self.c2, self.n2, self.lab2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), LearnableAffine()
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        x = self.lab1(torch.relu(self.n1(self.c1(x))))
        x = self.lab2(torch.relu(self.n2(self.c2(x))))
        return self.head(x.mean((2, 3)))


def test_learnable_scalar_affine_is_shared_by_every_channel():
    m = randomize(HGStem())
    x = torch.randn(2, 3, 6, 6)
    g = check(m, x)
    scale = g.edge_kind == EDGE_KIND["scale"]
    centre = g.edge_attr.size(1) // 2
    assert int(scale.sum()) == 10 and set(g.edge_attr[scale, centre].tolist()) == {
        float(m.lab1.scale), float(m.lab2.scale)}
    hidden = torch.randperm(5, generator=torch.Generator().manual_seed(3))

    def permute(s):
        permute_out(s.c1, hidden), permute_features(s.n1, hidden), permute_in(s.c2, hidden)

    other = permuted_copy(m, permute)
    assert_params_moved(m, other)
    assert_same_function(m, other, x)
    assert_isomorphic(g, to_neural_graph(other))


def test_a_scalar_affine_that_disagrees_between_copies_is_refused_on_read_back():
    m = randomize(HGStem())
    g = to_neural_graph(m)
    scale = (g.edge_kind == EDGE_KIND["scale"]).nonzero().view(-1)
    g.edge_attr[scale[1], g.edge_attr.size(1) // 2] += 1.0   # one channel's copy of lab1.scale changed
    with pytest.raises(ValueError, match="lab1.scale"):
        from_neural_graph(g, HGStem())


# ------------------------------------------------------------------------ GhostNetV2's DFC attention (timm ghostnet)
class DFCGate(nn.Module):
    """GhostNetV2's decoupled fully connected attention: a gate computed on a 2x average-pooled map, upsampled back
    to the size of the gated map read off that tensor (``F.interpolate(g, size=(out.shape[-2], out.shape[-1]))``)."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.primary, self.short = nn.Conv2d(3, c, 1), nn.Conv2d(3, c, 3, padding=1)
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        out = torch.relu(self.primary(x))
        g = torch.sigmoid(self.short(torch.nn.functional.avg_pool2d(x, 2, 2)))
        g = torch.nn.functional.interpolate(g, size=(out.shape[-2], out.shape[-1]), mode="nearest")
        return self.head((out * g).mean((2, 3)))


def test_an_upsampling_to_the_size_of_another_tensor():
    m = randomize(DFCGate())
    x = torch.randn(2, 3, 6, 8)
    g = check(m, x, example=True)
    assert int((g.edge_kind == EDGE_KIND["upsample"]).sum()) == 4
    with pytest.raises(UnsupportedModuleError, match="pass example_input"):
        to_neural_graph(m)  # the size is a run-time value without it


# ------------------------------------------------------------------------ Squeeze-and-Excitation, reference form
class SELayer(nn.Module):
    """The SE block as the SENet reference implementation writes it: ``nn.Linear`` layers on the pooled features,
    ``fc(y).view(b, c, 1, 1)`` and ``x * y.expand_as(x)``."""

    def __init__(self, c: int, r: int = 2, unsqueeze: bool = False):
        super().__init__()
        self.avg_pool, self.unsqueeze = nn.AdaptiveAvgPool2d(1), unsqueeze
        self.fc = nn.Sequential(nn.Linear(c, c // r, bias=False), nn.ReLU(inplace=True), nn.Linear(c // r, c),
                                nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        if self.unsqueeze:
            return x * self.fc(y).unsqueeze(-1).unsqueeze(-1)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SENet(nn.Module):
    def __init__(self, c: int = 6, unsqueeze: bool = False):
        super().__init__()
        self.conv, self.se, self.head = nn.Conv2d(3, c, 3, padding=1), SELayer(c, unsqueeze=unsqueeze), nn.Linear(c, 2)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.se(torch.relu(self.conv(x))), 1), 1))


@pytest.mark.parametrize("unsqueeze", [False, True])
def test_reference_squeeze_excitation_with_linear_layers(unsqueeze):
    m = randomize(SENet(unsqueeze=unsqueeze))
    x = torch.randn(2, 3, 5, 5)
    g = check(m, x, example=True)  # view(b, c) with b, c = x.size(): sizes known from example_input
    assert int((g.edge_kind == EDGE_KIND["product"]).sum()) == 2 * 6
    gen = torch.Generator().manual_seed(4)
    stream, hidden = torch.randperm(6, generator=gen), torch.randperm(3, generator=gen)

    def permute(s):
        permute_out(s.conv, stream), permute_in(s.se.fc[0], stream), permute_out(s.se.fc[0], hidden)
        permute_in(s.se.fc[2], hidden), permute_out(s.se.fc[2], stream), permute_in(s.head, stream)

    other = permuted_copy(m, permute)
    assert_params_moved(m, other)
    assert_same_function(m, other, x)
    assert_isomorphic(g, to_neural_graph(other, example_input=x))


def test_features_viewed_as_a_map_are_not_read_by_a_convolution():
    class ConvOnFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.conv = nn.Linear(3, 4), nn.Conv2d(4, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(self.fc(x).view(x.size(0), 4, 1, 1).expand(-1, -1, 3, 3)).flatten(1)

    with pytest.raises(UnsupportedModuleError, match="expands a vector, channel-last map|needs a feature map input"):
        to_neural_graph(ConvOnFeatures(), example_input=torch.randn(2, 3))


# ------------------------------------------------------------------------ zero padding (HGNetV2's StemV2, ZeroPad2d)
class PaddedStem(nn.Module):
    """HGNetV2's stem: ``F.pad(x, (0, 1, 0, 1))`` before a 2x2 conv and a ``MaxPool2d(2, 1, ceil_mode=True)``
    branch; then a ``nn.ZeroPad2d`` before a strided conv (TF-style asymmetric "same" padding), and a crop."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.stem, self.conv2 = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c, 2)
        self.pool, self.zpad = nn.MaxPool2d(2, 1, ceil_mode=True), nn.ZeroPad2d((0, 1, 1, 0))
        self.down, self.head = nn.Conv2d(2 * c, c, 3, stride=2), nn.Linear(c * 2 * 3, 2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.nn.functional.pad(x, (0, 1, 0, 1))
        x = torch.cat([torch.relu(self.conv2(x)), self.pool(x)], 1)
        x = self.down(self.zpad(x))
        return self.head(torch.nn.functional.pad(x, (-1, 0, 0, -1)).flatten(1))  # crop one column / row


def test_zero_padding_also_asymmetric_and_cropping():
    m = randomize(PaddedStem())
    x = torch.randn(2, 3, 6, 8)
    g = check(m, x, example=True)
    assert int((g.edge_kind == EDGE_KIND["subsample"]).sum()) == 4 + 8 + 4
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(5))

    def permute(s):
        permute_out(s.stem, perm), permute_in(s.conv2, torch.arange(4)[perm])
        permute_in(s.down, torch.cat([torch.arange(4), 4 + perm]))

    other = permuted_copy(m, permute)
    assert_params_moved(m, other)
    assert_same_function(m, other, x)
    assert_isomorphic(g, to_neural_graph(other, example_input=x))


@pytest.mark.parametrize("pad, match", [
    (lambda x: torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), "mode=.reflect."),
    (lambda x: torch.nn.functional.pad(x, (1, 1), value=1.0), "value=1.0"),
    (lambda x: torch.nn.functional.pad(x, (0, 0, 0, 0, 1, 1)), "channel and batch dims cannot be padded"),
    (nn.ReflectionPad2d(1), "ReflectionPad2d"),
])
def test_other_paddings_are_refused(pad, match):
    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pad = nn.Conv2d(3, 2, 1), pad

        def forward(self, x):
            return self.pad(self.conv(x)).flatten(1)

    with pytest.raises(UnsupportedModuleError, match=match):
        to_neural_graph(Padded(), example_input=torch.randn(1, 3, 4, 4))


# ------------------------------------------------------------------------ MetaFormer's StarReLU (timm metaformer)
class StarReLU(nn.Module):
    """timm's ``metaformer.StarReLU``: ``scale * relu(x) ** 2 + bias`` with learnable scalars."""

    def __init__(self):
        super().__init__()
        self.scale, self.bias = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.scale * torch.relu(x) ** 2 + self.bias


class StarMLP(nn.Module):
    """A ConvFormer-style MLP block on tokens: ``x + fc2(star(fc1(x)))``, torch.square and x.pow(2) spellings too."""

    def __init__(self, spelling: str = "**"):
        super().__init__()
        self.embed, self.fc1, self.act, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 8), StarReLU(), nn.Linear(8, 4)
        self.head, self.spelling = nn.Linear(4, 2), spelling

    def forward(self, x):
        x = self.embed(x)
        h = self.act(self.fc1(x))
        if self.spelling == "square":
            h = torch.square(h)
        elif self.spelling == "pow":
            h = h.pow(2)
        return self.head(x + self.fc2(h))


@pytest.mark.parametrize("spelling", ["**", "square", "pow"])
def test_star_relu_squares_its_neurons(spelling):
    m = randomize(StarMLP(spelling))
    x = torch.randn(5, 3)
    g = check(m, x)
    assert int((g.node_act == activation_id("square")).sum()) == (8 if spelling == "**" else 16)
    hidden = torch.randperm(8, generator=torch.Generator().manual_seed(6))
    other = permuted_copy(m, lambda s: (permute_out(s.fc1, hidden), permute_in(s.fc2, hidden)))
    assert_params_moved(m, other)
    assert_same_function(m, other, x)
    assert_isomorphic(g, to_neural_graph(other))


@pytest.mark.parametrize("forward", [lambda x: x ** 3, lambda x: torch.pow(x, 0.5), lambda x: 2 ** x])
def test_other_powers_are_refused(forward):
    class Power(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return forward(self.fc(x))

    with pytest.raises(UnsupportedModuleError, match="a power with exponent"):
        to_neural_graph(Power())


# ------------------------------------------------------------------------ PVT-v2's attention (timm pvt_v2)
class KVAttention(nn.Module):
    """timm's ``pvt_v2.Attention``: a query projection and a key / value projection packed in one ``nn.Linear``
    (``kv(x).reshape(B, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)``); with ``sr > 1`` the keys and
    values read a spatially reduced sequence (tokens back to the map, a strided conv, a LayerNorm: fewer key
    tokens than queries)."""

    def __init__(self, dim: int = 8, heads: int = 2, sr: int = 1):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, sr, sr) if sr > 1 else None
        self.norm = nn.LayerNorm(dim) if sr > 1 else None

    def forward(self, x, H: int, W: int):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.heads, -1).permute(0, 2, 1, 3)
        if self.sr is not None:
            x = x.permute(0, 2, 1).reshape(B, C, H, W)
            x = self.norm(self.sr(x).reshape(B, C, -1).permute(0, 2, 1))
        k, v = self.kv(x).reshape(B, -1, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class PVTStage(nn.Module):
    def __init__(self, sr: int, dim: int = 8):
        super().__init__()
        self.embed, self.attn, self.head = nn.Conv2d(3, dim, 2, 2), KVAttention(dim, 2, sr), nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        H, W = x.shape[2:]
        t = x.flatten(2).transpose(1, 2)
        return self.head((t + self.attn(t, H, W)).mean(1))


@pytest.mark.parametrize("sr", [1, 2])
def test_a_packed_key_value_projection_with_spatial_reduction(sr):
    """PVT-v2's attention (a separate query, a packed key / value projection, the keys from a 2x-reduced map: 4 key
    tokens for 16 queries): the executor reproduces it, the round trip is exact, and permuting its heads (the q
    rows, both halves of kv, the output projection's columns) gives an isomorphic graph."""
    m = randomize(PVTStage(sr)).eval()
    x = torch.randn(2, 3, 8, 8)
    g = check(m, x, example=True)
    p = copy.deepcopy(m)
    a = p.attn
    rows = head_permutation(a.heads, a.head_dim, torch.Generator().manual_seed(0))
    permute_out(a.q, rows)
    permute_out(a.kv, torch.cat([rows, rows + 8]))
    permute_in(a.proj, rows)
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p, example_input=x))


def test_only_keys_or_values_packed_with_the_query_is_refused_by_name():
    class QKPacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.qk, self.v, self.proj = nn.Linear(8, 16), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            B, N, C = x.shape
            q, k = self.qk(x).reshape(B, N, 2, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
            v = self.v(x).reshape(B, N, 2, 4).transpose(1, 2)
            return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))

    with pytest.raises(UnsupportedModuleError, match=r"only the query, key come from a packed projection"):
        to_neural_graph(nn.Sequential(nn.Linear(4, 8), QKPacked()), example_input=torch.randn(2, 5, 4))


# ------------------------------------------------------------------------ TF "same" padding (timm Conv2dSame)
class SameConv(nn.Conv2d):
    """timm's ``Conv2dSame`` (TensorFlow "same" padding): the padding is computed in Python from the input's sizes
    (``math.ceil`` of a size fails symbolic tracing), then a strided conv without padding; the head branches on a
    size."""

    def forward(self, x):
        ih, iw = x.size()[-2:]
        kh, kw = self.weight.shape[-2:]
        pad_h = max((math.ceil(ih / self.stride[0]) - 1) * self.stride[0] + kh - ih, 0)
        pad_w = max((math.ceil(iw / self.stride[1]) - 1) * self.stride[1] + kw - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SameNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = SameConv(3, 4, 3, stride=2)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if h.shape[-1] > 1:  # a branch on a size
            h = h.mean((2, 3))
        else:
            h = h.flatten(1)
        return self.head(h)


def test_a_forward_computing_with_sizes_is_traced_at_the_example_inputs_sizes():
    """Without example_input the size arithmetic cannot be traced (refused, naming the fix); with it the sizes are
    numbers (the graph is that input size's): the executor reproduces the module (asymmetric padding at 7 x 7),
    the round trip is exact, and the model is left as it was (no module added, parameters untouched)."""
    m = randomize(SameNet()).eval()
    with pytest.raises(UnsupportedModuleError, match=r"conv \(.*SameConv\) cannot be traced .*pass example_input"):
        to_neural_graph(m)
    x = torch.randn(2, 3, 7, 7)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    modules = [n for n, _ in m.named_modules()]
    with pytest.warns(UserWarning, match=r"SameNet's forward computes with its input's sizes .* traced at "
                                         r"example_input's sizes \(3, 7, 7\)"):
        to_neural_graph(m, example_input=x)
    assert [n for n, _ in m.named_modules()] == modules
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    check(m, x, example=True)


class SizedTokens(nn.Module):
    """A token model whose forward computes with the sequence length: it adds ``T`` to every token (a value a graph
    traced at one length holds as a constant)."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.fc(x) + math.sqrt(x.shape[1]))).mean(1)


def test_a_graph_traced_at_the_example_inputs_sizes_refuses_other_sizes():
    """The graph of a size-computing forward is that size's (review finding: at 8 x 8 SameConv pads differently
    and the graph silently computed the 7 x 7 function): the input neurons hold the size, the executor refuses
    another one naming both, and the size survives neuron permutation and batching. A symbolically traced graph
    holds no size and runs at any."""
    m, x8 = randomize(SameNet()).eval(), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "traced at example_input's sizes" (once per plan)
        g = to_neural_graph(m, example_input=torch.randn(2, 3, 7, 7))
        g8 = to_neural_graph(m, example_input=x8)  # at 8 x 8 it converts again, as that size's graph
    with pytest.raises(ValueError, match=r"converted at input size \[7, 7\].* this input is \[8, 8\]"):
        execute(g, x8)
    with torch.no_grad():
        torch.testing.assert_close(execute(g8, x8), m(x8), atol=1e-5, rtol=1e-4)
    moved = PermuteNeurons(seed=0)(g.clone())
    batch = Batch.from_data_list([g, moved])
    for graph in (moved, batch.get_example(1)):
        with pytest.raises(ValueError, match=r"converted at input size \[7, 7\]"):
            execute(graph, x8)
    with torch.no_grad():
        torch.testing.assert_close(execute(moved, torch.ones(2, 3, 7, 7)), m(torch.ones(2, 3, 7, 7)),
                                   atol=1e-5, rtol=1e-4)
    t = SizedTokens().eval()
    with pytest.warns(UserWarning, match="traced at example_input's sizes"):
        gt = check(t, torch.randn(2, 5, 3), example=True, tokens=True)
    with pytest.raises(ValueError, match=r"converted at input size \[5\].* this input is \[6\]"):
        execute(gt, torch.randn(2, 6, 3), tokens=True)
    plain = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())).eval()
    gp = to_neural_graph(plain)
    with torch.no_grad():
        torch.testing.assert_close(execute(gp, x8), plain(x8), atol=1e-5, rtol=1e-4)


class BatchBranch(nn.Module):
    """A forward whose dataflow depends on the batch size (a branch on ``x.shape[0]``, or a token slice bounded by
    it): a neural graph computes each sample alone, so it cannot represent either (found by review: converted at
    the example's batch size, silently wrong at others)."""

    def __init__(self, form: str):
        super().__init__()
        self.form, self.conv, self.fc = form, nn.Conv2d(3, 4, 1), nn.Linear(4, 4)

    def forward(self, x):
        h = self.conv(x)
        if self.form == "branch":
            if h.shape[0] > 1:
                h = torch.relu(h)
            return h.mean((2, 3))
        t = self.fc(h.flatten(2).transpose(1, 2))
        return t[:, :x.shape[0]].mean(1)


@pytest.mark.parametrize("form, batch", [("branch", 1), ("branch", 2), ("slice", 2)])
def test_a_dataflow_that_depends_on_the_batch_size_is_refused(form, batch):
    why = "its dataflow depends on the batch size" if form == "branch" else "only a bound that is a token or spatial"
    with pytest.raises(UnsupportedModuleError, match=why):
        to_neural_graph(BatchBranch(form).eval(), example_input=torch.randn(batch, 3, 2, 3))


def test_the_batch_size_refusal_names_the_block_where_the_dataflow_differs():
    """Not the root: in a real network (timm MobileViT) the root is the whole model and says nothing."""
    model = nn.Sequential(nn.Conv2d(3, 3, 1), BatchBranch("branch")).eval()
    with pytest.raises(UnsupportedModuleError, match=r"^1 \(.*BatchBranch\): its forward computes with input sizes"):
        to_neural_graph(model, example_input=torch.randn(2, 3, 2, 3))


# ------------------------------------------------------------------------ GRN (ConvNeXt-V2, timm GlobalResponseNorm)
class GRN(nn.Module):
    """timm's ``GlobalResponseNorm``: each channel's L2 norm over the positions, divided by its mean over the
    channels, gates the input: ``x + addcmul(bias, weight, x * x_n)`` (channel-last or channel-first)."""

    def __init__(self, dim: int, channels_last: bool):
        super().__init__()
        self.spatial, self.channel = ((1, 2), -1) if channels_last else ((2, 3), 1)
        self.shape = (1, 1, 1, -1) if channels_last else (1, -1, 1, 1)
        self.weight, self.bias = nn.Parameter(torch.randn(dim)), nn.Parameter(torch.randn(dim))

    def forward(self, x):
        x_g = x.norm(p=2, dim=self.spatial, keepdim=True)
        x_n = x_g / (x_g.mean(dim=self.channel, keepdim=True) + 1e-6)
        return x + torch.addcmul(self.bias.view(self.shape), self.weight.view(self.shape), x * x_n)


class ConvNeXtV2Block(nn.Module):
    """A ConvNeXt-V2 block in small: depthwise conv, channel-last LayerNorm, Linear up, GELU, GRN, Linear down,
    residual; ``channels_last=False`` runs the MLP as 1x1 convs with a channel-first GRN."""

    def __init__(self, dim: int = 4, hidden: int = 8, channels_last: bool = True):
        super().__init__()
        self.channels_last = channels_last
        self.stem = nn.Conv2d(3, dim, 2, 2)
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden) if channels_last else nn.Conv2d(dim, hidden, 1)
        self.grn = GRN(hidden, channels_last)
        self.down = nn.Linear(hidden, dim) if channels_last else nn.Conv2d(hidden, dim, 1)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        x = self.stem(x)
        h = self.norm(self.dw(x).permute(0, 2, 3, 1))
        if not self.channels_last:
            h = h.permute(0, 3, 1, 2)
        h = self.down(self.grn(F.gelu(self.up(h))))
        if self.channels_last:
            h = h.permute(0, 3, 1, 2)
        return self.head((x + h).mean((2, 3)))


@pytest.mark.parametrize("channels_last", [True, False])
def test_grn_global_response_normalization(channels_last):
    """GRN: the L2 norm over positions (square, global average pooling, sqrt of P times it), the mean over the
    channels (one neuron, 1 / C from each), their quotient (reciprocal, a broadcast product): the executor
    reproduces the block, the round trip is exact, and permuting the hidden channels (up's rows, GRN's weight and
    bias, down's columns) gives an isomorphic graph."""
    m = randomize(ConvNeXtV2Block(channels_last=channels_last)).eval()
    x = torch.randn(2, 3, 6, 8)
    g = check(m, x, example=True)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    p = copy.deepcopy(m)
    permute_out(p.up, perm)
    with torch.no_grad():
        p.grn.weight.copy_(p.grn.weight[perm])
        p.grn.bias.copy_(p.grn.bias[perm])
    permute_in(p.down, perm)
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p, example_input=x))


def test_channel_reductions_that_drop_the_channel_dim_or_other_norms_are_refused():
    class NoKeep(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x).mean(1).flatten(1)

    class L1(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x).norm(p=1, dim=(2, 3))

    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(UnsupportedModuleError, match="mean over the channels without keepdim=True"):
        to_neural_graph(NoKeep(), example_input=x)
    with pytest.raises(UnsupportedModuleError, match=r"norm\(p=1, dim=\(2, 3\)\) is not supported"):
        to_neural_graph(L1(), example_input=x)


# ------------------------------------------------------------------------ ECA (timm EcaModule)
class ECA(nn.Module):
    """timm's ``EcaModule``: pooled features viewed as a one-channel sequence, a Conv1d along the channels (two with
    an activation between for ``mlp``), a sigmoid gate viewed back as ``[B, C, 1, 1]``."""

    def __init__(self, k: int = 3, mlp: bool = False, norm: bool = False):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)
        self.conv2 = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=True) if mlp else None
        self.norm = nn.BatchNorm1d(1) if norm else None

    def forward(self, x):
        y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
        if self.conv2 is not None:
            y = self.conv2(F.relu(y))
        if self.norm is not None:
            y = self.norm(y)
        return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1).expand_as(x)


class ECANet(nn.Module):
    def __init__(self, **eca):
        super().__init__()
        self.conv, self.eca, self.head = nn.Conv2d(3, 5, 3), ECA(**eca), nn.Conv2d(5, 2, 1)

    def forward(self, x):
        return self.head(self.eca(torch.relu(self.conv(x)))).mean((2, 3))


@pytest.mark.parametrize("mlp", [False, True])
def test_eca_convolution_over_the_channels(mlp):
    """ECA: the executor reproduces it and the round trip is exact (the kernel elements are tied over the channel
    edges); permuting the gated channels changes the function (neighbours differ) and the graph is not isomorphic."""
    m = randomize(ECANet(mlp=mlp)).eval()
    x = torch.randn(2, 3, 6, 6)
    g = check(m, x, example=True)
    p = copy.deepcopy(m)
    perm = torch.tensor([2, 0, 1, 4, 3])
    permute_out(p.conv, perm)
    permute_in(p.head, perm)
    with torch.no_grad():
        assert not torch.allclose(m(x), p(x), atol=1e-4)
    assert not isomorphic(g, to_neural_graph(p, example_input=x))


@pytest.mark.parametrize("k", [5, 7])
def test_a_channel_convolution_as_wide_as_the_channels_is_refused(k):
    """Found by review: over 3 channels a kernel of 5 connects every channel pair (a dense layer of tied
    weights, which neuron permutations would break on reading back), one of 7 has taps reaching no channel (they
    were not stored: no exact round trip)."""
    class Narrow(ECANet):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 3, 3), nn.Conv2d(3, 2, 1)
            self.eca.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    with pytest.raises(UnsupportedModuleError, match=r"reaches every channel from every channel, or past"):
        to_neural_graph(randomize(Narrow()).eval(), example_input=torch.randn(2, 3, 6, 6))


def test_an_operation_on_channels_laid_out_as_a_sequence_is_refused():
    """A BatchNorm1d after the channel convolution would normalise the one sequence channel: not the ECA chain, so
    the view is refused (never converted as per-channel statistics)."""
    with pytest.raises(UnsupportedModuleError, match=r"views features as a one-channel sequence \[B, 1, C\]; this "
                                                     r"converts only as ECA's chain"):
        to_neural_graph(randomize(ECANet(norm=True)).eval(), example_input=torch.randn(2, 3, 6, 6))


# ------------------------------------------------------------------------ normalizations of dim 1 on tokens
class TokenNorm(nn.Module):
    """A patch embedding into ``[B, T, C]`` tokens, then a normalization module applied to the tokens as they are:
    BatchNorm1d / InstanceNorm1d / GroupNorm normalise dim 1, the tokens (T == C here, so torch accepts it), which a
    per-channel graph layer would get wrong; permuted back (``channel_first``), dim 1 is the channels again."""

    def __init__(self, norm: nn.Module, channel_first: bool = False):
        super().__init__()
        self.embed, self.norm, self.head = nn.Conv2d(3, 6, 1), norm, nn.Linear(6, 2)
        self.channel_first = channel_first

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)                          # [B, T = 6, C = 6]
        t = self.norm(t.transpose(1, 2)).transpose(1, 2) if self.channel_first else self.norm(t)
        return self.head(t.mean(1))


class ChannelLastNorm(nn.Module):
    """BatchNorm2d applied to a channel-last map ``[B, H, W, C]`` (H == C): it normalises dim 1, the rows."""

    def __init__(self):
        super().__init__()
        self.embed, self.norm, self.head = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.norm(self.embed(x).permute(0, 2, 3, 1)).mean((1, 2)))


NORMS = [lambda: nn.BatchNorm1d(6), lambda: nn.InstanceNorm1d(6, affine=True), lambda: nn.GroupNorm(2, 6)]


@pytest.mark.parametrize("make", NORMS)
def test_a_norm_of_dim_1_on_tokens_is_refused(make):
    m = randomize(TokenNorm(make()))
    x = torch.randn(2, 3, 2, 3)
    m(x)  # torch accepts it: dim 1 has 6 entries
    with pytest.raises(UnsupportedModuleError, match=r"^norm \(.*normalises dim 1 of its input, which here is not"):
        to_neural_graph(m, example_input=x)


@pytest.mark.parametrize("make", NORMS)
def test_a_norm_of_the_channels_of_tokens_converts(make):
    check(randomize(TokenNorm(make(), channel_first=True)), torch.randn(2, 3, 2, 3), example=True)


def test_a_batchnorm_on_a_channel_last_map_is_refused():
    m = randomize(ChannelLastNorm())
    with pytest.raises(UnsupportedModuleError, match=r"^norm \(.*BatchNorm2d\): batchnorm normalises dim 1"):
        to_neural_graph(m, example_input=torch.randn(2, 3, 6, 6))


# ------------------------------------------------------------------------ in-place writes
class PreActInplace(nn.Module):
    """A pre-activation block whose ``nn.ReLU(inplace=True)`` (or ``F.relu(h, inplace=True)``) also rewrites the
    shortcut, the same tensor: torch computes ``conv(relu(h)) + relu(h)``. ``how="explicit"`` writes that out."""

    def __init__(self, how: str = "module"):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act, self.head, self.how = nn.ReLU(inplace=how == "module"), nn.Linear(4, 2), how

    def forward(self, x):
        h = self.stem(x)
        if self.how == "explicit":
            h = torch.relu(h)
            shortcut = out = h
        else:
            shortcut = h
            out = torch.nn.functional.relu(h, inplace=True) if self.how == "functional" else self.act(h)
        return self.head((self.conv(out) + shortcut).mean((2, 3)))


class AugmentedInplace(nn.Module):
    """``h += b(x)`` on a tensor another name still holds: both names see the sum (``how="explicit"``: written
    out)."""

    def __init__(self, how: str = "inplace"):
        super().__init__()
        self.a, self.b, self.head, self.how = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(8, 2), how

    def forward(self, x):
        h = self.a(x)
        s = h
        h += self.b(x)
        if self.how == "explicit":
            s = h
        return self.head(torch.cat([h, torch.tanh(s)], 1))


@pytest.mark.parametrize("make, x", [(lambda how="module": PreActInplace(how), torch.randn(2, 3, 5, 5)),
                                     (lambda how="functional": PreActInplace(how), torch.randn(2, 3, 5, 5)),
                                     (lambda how="inplace": AugmentedInplace(how), torch.randn(4, 3))])
@pytest.mark.parametrize("example", [True, False])
def test_readers_after_an_in_place_write_read_the_written_value(make, x, example):
    m = randomize(make())
    g = check(m, x, example=example)
    explicit = make("explicit")
    explicit.load_state_dict(m.state_dict())
    assert_isomorphic(g, to_neural_graph(explicit, example_input=x if example else None))


def test_an_in_place_write_into_a_view_read_through_another_alias_is_refused():
    class ViewWrite(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)

        def forward(self, x):
            h = self.a(x)
            h[:, :2].relu_()        # changes h's first two features
            return h

    with pytest.raises(UnsupportedModuleError, match="writes in place into getitem.*read again by output"):
        to_neural_graph(ViewWrite())


class Counting(nn.Module):
    """A forward whose result depends on state kept between calls: the trace records the first call's constant."""

    def __init__(self):
        super().__init__()
        self.fc, self.calls = nn.Linear(3, 3), 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x) * self.calls


def test_a_trace_that_does_not_reproduce_the_forward_is_refused():
    with pytest.raises(UnsupportedModuleError, match=r"^<root> \(.*Counting\): its dataflow traced by torch.fx "
                                                     r"computes another result than its forward on example_input"):
        to_neural_graph(Counting().eval(), example_input=torch.randn(2, 3))


def test_the_trace_check_accepts_a_nan_filled_model():
    """Reading a graph back into a NaN-filled copy with example_input traces that copy: NaN outputs agree."""
    m = randomize(PoolFormer())
    x = torch.randn(2, 3, 8, 8)
    g = to_neural_graph(m, example_input=x)
    blank = PoolFormer()
    with torch.no_grad():
        for t in list(blank.parameters()) + list(blank.buffers()):
            t.fill_(float("nan"))
    assert_same_function(m, from_neural_graph(g, blank, example_input=x), x)


class RepeatedOutputs(nn.Module):
    """Returns some neurons twice (``torch.cat([h, h[:, :2]], 1)`` pooled): each output position is a neuron."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        h = self.conv(x)
        return torch.cat([h, h[:, :2]], 1).mean((2, 3))


def test_an_output_neuron_returned_twice_gets_a_copy():
    m = randomize(RepeatedOutputs())
    g = check(m, torch.randn(2, 3, 5, 5))
    assert g.num_nodes == 3 + 4 + 2 and int((g.edge_kind == EDGE_KIND["identity"]).sum()) == 2


def test_converting_a_training_mode_model_with_example_input_leaves_it_unchanged():
    """The shape run on example_input of a training-mode model (it warns and converts the eval-mode function)
    must not update its BatchNorm statistics, and dropout's randomness is no reason to refuse it."""
    m = randomize(SENet()).train()
    m.conv = nn.Sequential(m.conv, nn.BatchNorm2d(6), nn.Dropout(0.5))
    randomize(m.conv[1]).train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(4, 3, 5, 5)
    with pytest.warns(UserWarning, match="training mode"):
        g = to_neural_graph(m, example_input=x)
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k
    m.eval()
    torch.testing.assert_close(execute(g, x), m(x), atol=1e-5, rtol=1e-4)


def test_augmented_assignment_on_a_size_rebinds_a_number():
    """``n += 1`` on a size read from the input is n = n + 1 (numbers are immutable): the other name keeps n."""

    class Sizes(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            n = x.size(1)
            m = n
            m += 1  # recorded in place, the traced program would rebind n too and view(B, n + 1) would fail
            return self.fc(x).view(x.size(0), n)

    m, x = randomize(Sizes()), torch.randn(3, 4)
    check(m, x, example=True)
    # the traced program as code (probe features run it): recorded in place, `size += 1` would rebind n
    torch.testing.assert_close(torch.fx.GraphModule(m, fx_trace(m)[0])(x), m(x))


# ------------------------------------------------------------------------ keys / values from pooled tokens (NextViT)
class PooledKeys(nn.Module):
    """timm NextViT's ``EfficientAttention``: queries from the tokens, keys / values from the tokens average-pooled
    along the sequence (``nn.AvgPool1d`` of ``t.transpose(1, 2)``); ``q_first``: the query projection is written
    before the pooling (as NextViT does)."""

    def __init__(self, q_first: bool):
        super().__init__()
        self.q_first = q_first
        self.conv, self.sr = nn.Conv2d(3, 8, 3, padding=1), nn.AvgPool1d(4, 4)
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)
        B, N, C = t.shape
        q = self.q(t).reshape(B, N, 2, 4).transpose(1, 2) if self.q_first else None
        r = self.sr(t.transpose(1, 2)).transpose(1, 2)
        if q is None:
            q = self.q(t).reshape(B, N, 2, 4).transpose(1, 2)
        k, v = (p(r).reshape(B, -1, 2, 4).transpose(1, 2) for p in (self.k, self.v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        return o.transpose(1, 2).reshape(B, C, 4, 4)


@pytest.mark.parametrize("q_first", [False, True])
def test_queries_read_the_tokens_their_keys_pool(q_first):
    """The query projection's read is pending until the attention adds its edges (found by the real-model sweep:
    with the query written first, the pooling went onto the token neurons themselves, so the queries read the
    pooled tokens too: a refusal at execute, or a silently different function)."""
    m = randomize(PooledKeys(q_first)).eval()
    check(m, torch.randn(2, 3, 4, 4), example=True)


class ChannelLastMixer(nn.Module):
    """MambaOut / ConvNeXt style: a channel-last Linear between two convolutions."""

    def __init__(self):
        super().__init__()
        self.c1, self.fc, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 4), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(self.fc(self.c1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)).mean((2, 3))


@pytest.mark.parametrize("size", [1, 2])
def test_a_convolution_reads_a_one_position_channel_last_map(size):
    """At a 1 x 1 map the Linear's neurons hold features ``[B]``; the convolution after it reads them as a
    one-position map (the executor raised KeyError: timm mambaout at 32 px, found by the real-model sweep)."""
    check(randomize(ChannelLastMixer()).eval(), torch.randn(2, 3, size, size), example=True)


class LatentQueryPool(nn.Module):
    """timm's ``AttentionPoolLatent`` in small: the query projects a learned latent token, keys and values the
    input tokens."""

    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads, self.embed = heads, nn.Linear(4, dim)
        self.latent = nn.Parameter(torch.randn(1, 1, dim))
        self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)

    def forward(self, x):
        x = self.embed(x)
        B, N, C = x.shape
        q = self.q(self.latent.expand(B, -1, -1)).reshape(B, 1, self.heads, C // self.heads).transpose(1, 2)
        k, v = self.kv(x).reshape(B, N, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, C)[:, 0]


def test_a_projection_of_a_learned_latent_is_refused_by_name():
    """It crashed (AttributeError on a Param, found by the real-model sweep on timm test_vit3)."""
    with pytest.raises(UnsupportedModuleError, match=r"q \(.*Linear\): its input is the parameter 'latent'"):
        to_neural_graph(LatentQueryPool().eval(), example_input=torch.randn(2, 5, 4))
