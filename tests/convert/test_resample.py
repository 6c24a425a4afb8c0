"""Resolution changes: ConvTranspose1d/2d, nearest upsampling (nn.Upsample, F.interpolate), PixelShuffle /
PixelUnshuffle: the executor reproduces the module, the round trip is exact, and permuting hidden channels of a
real module (a symmetry) gives an isomorphic graph."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from neuralgraph.data.graph import EDGE_KIND
from tests.helpers.nets import randomize
from tests.helpers.permute import (assert_isomorphic, assert_params_moved, assert_same_function,
                                   assert_state_equal, isomorphic, permute_in, permute_out)


class AutoEncoder(nn.Module):
    """A small U-Net: strided encoder, transposed-conv / nearest / pixel-shuffle decoders, skip concatenations."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, 2, 1)
        self.up = nn.ConvTranspose2d(8, 4, 3, 2, 1, output_padding=1)
        self.grouped = nn.ConvTranspose2d(8, 6, 4, 2, 1, groups=2)
        self.nearest = nn.Upsample(scale_factor=2)
        self.expand = nn.Conv2d(8, 12, 1)
        self.shuffle, self.unshuffle = nn.PixelShuffle(2), nn.PixelUnshuffle(2)
        self.dec = nn.Conv2d(4 + 6 + 8 + 3 + 3, 5, 3, 1, 1)
        self.out = nn.Conv2d(5 + 12, 2, 1)

    def forward(self, x):
        h = torch.relu(self.enc(x))                                                # [B, 8, 4, 4]
        s = self.shuffle(torch.tanh(self.expand(h)))                              # [B, 3, 8, 8]
        d = torch.cat([self.up(h), self.grouped(h), self.nearest(h), s, x], 1)
        d = torch.relu(self.dec(d))
        u = self.unshuffle(F.interpolate(x, scale_factor=2, mode="nearest"))       # [B, 12, 8, 8]
        return self.out(torch.cat([d, u], 1))


class Decoder1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.ConvTranspose1d(3, 4, 5, 3, 2, output_padding=2)
        self.b = nn.Conv1d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.b(F.interpolate(torch.relu(self.a(x)), scale_factor=3))


@pytest.mark.parametrize("make, shape", [(AutoEncoder, (2, 3, 8, 8)), (Decoder1d, (2, 3, 7))])
def test_resampling_executes_and_round_trips(make, shape):
    m, x = randomize(make()), torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        y = m(x)
        assert float((execute(g, x) - y).abs().max()) <= 1e-5 * float(y.abs().max())  # float32 rounding
    blank = copy.deepcopy(m)
    with torch.no_grad():
        for p in blank.parameters():
            p.fill_(float("nan"))
    assert_state_equal(m, from_neural_graph(g, blank))


def test_edge_kinds_and_geometry():
    g = to_neural_graph(randomize(AutoEncoder()), example_input=torch.randn(1, 3, 8, 8))
    kinds = set(g.edge_kind.tolist())
    assert {EDGE_KIND["conv_transpose"], EDGE_KIND["upsample"], EDGE_KIND["subsample"]} <= kinds
    ct = g.edge_conv[g.edge_kind == EDGE_KIND["conv_transpose"]]
    # stride, padding, output_padding, kernel size per dim
    assert {tuple(r) for r in ct.tolist()} == {(2, 2, 1, 1, 1, 1, 3, 3), (2, 2, 1, 1, 0, 0, 4, 4)}
    # the grouped transposed conv connects only channels of one group: 8 inputs x 3 outputs per group
    assert int((g.edge_kind == EDGE_KIND["conv_transpose"]).sum()) == 8 * 4 + 8 * 3


def test_hidden_channel_symmetry_is_isomorphic():
    """Permuting the encoder's channels (within the transposed conv's groups of 4; every reader's input channels
    alike), the transposed conv's outputs and the pixel-shuffled channels (whole groups of 4 expand channels)
    keeps the function and gives an isomorphic graph."""
    m, x = randomize(AutoEncoder()), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(3)
    enc = torch.cat([torch.randperm(4, generator=gen), 4 + torch.randperm(4, generator=gen)])
    up, shuffled = torch.randperm(4, generator=gen), torch.randperm(3, generator=gen)
    p = copy.deepcopy(m)
    with torch.no_grad():
        permute_out(p.enc, enc)
        p.up.weight.copy_(p.up.weight[enc][:, up])                                # [in, out, k, k]
        p.up.bias.copy_(p.up.bias[up])
        p.grouped.weight.copy_(p.grouped.weight[enc])
        permute_in(p.expand, enc)
        permute_out(p.expand, torch.cat([c * 4 + torch.arange(4) for c in shuffled.tolist()]))
        permute_in(p.dec, torch.cat([up, 4 + torch.arange(6), 10 + enc, 18 + shuffled, 21 + torch.arange(3)]))
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    assert_isomorphic(to_neural_graph(m, example_input=x), to_neural_graph(p, example_input=x))


def test_pixel_shuffle_channel_order_matters():
    """Moving one channel inside a pixel-shuffle group (a different sub-pixel position) changes the function and
    gives a non-isomorphic graph."""
    m, x = randomize(AutoEncoder()), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    p = copy.deepcopy(m)
    swap = torch.arange(12)
    swap[[0, 1]] = swap[[1, 0]]
    with torch.no_grad():
        permute_out(p.expand, swap)
        assert not torch.allclose(m(x), p(x), atol=1e-4)
    assert not isomorphic(to_neural_graph(m, example_input=x), to_neural_graph(p, example_input=x))


@pytest.mark.parametrize("layer, match", [
    (nn.Upsample(scale_factor=2, mode="bilinear"), r"interpolation mode 'bilinear' is not supported"),
    (nn.Upsample(scale_factor=1.5), r"nearest upsampling by \(1.5, 1.5\) is not supported; only integer"),
    (nn.ConvTranspose2d(3, 3, 3, dilation=2), r"dilation=\(2, 2\), padding_mode='zeros': only dilation 1"),
])
def test_unsupported_resampling_is_refused_by_name(layer, match):
    with pytest.raises(UnsupportedModuleError, match=r"^1 \(.*\): " + match):
        to_neural_graph(nn.Sequential(nn.Conv2d(3, 3, 1), layer), example_input=torch.randn(1, 3, 4, 4))


def test_permute_neurons_on_a_resampling_graph_keeps_the_function():
    from neuralgraph.transforms import PermuteNeurons

    m, x = randomize(AutoEncoder()), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    mp = from_neural_graph(PermuteNeurons(seed=0)(to_neural_graph(m, example_input=x)), m)
    assert_params_moved(m, mp)
    assert_same_function(m, mp, x)
