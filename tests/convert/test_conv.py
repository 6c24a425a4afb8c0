"""CNNs: kernel padding, geometry, groups, residual CNNs, ResNets, flattening."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from neuralgraph.convert.rules.conv import kernel_taps
from neuralgraph.data.graph import EDGE_KIND, POOL, ROLE
from neuralgraph.transforms import PermuteNeurons
from tests.helpers.nets import SmallResNet, WildParkCNN, permute_resnet, permute_wildpark
from tests.helpers.permute import (assert_isomorphic, assert_params_moved, assert_same_function,
                                   assert_state_equal, permute_in, permute_out)


def check_all(m, x, **cfg):
    """Semantics (the graph computes the module), exact round trip."""
    g = to_neural_graph(m, **cfg)
    with torch.no_grad():
        ref = m.eval()(x)
        assert torch.allclose(execute(g, x, max_kernel=cfg.get("max_kernel", (7, 7))), ref, atol=1e-5)
    assert_state_equal(m, from_neural_graph(g, m, **cfg))
    return g


def test_kernel_taps_are_centred():
    assert kernel_taps((3, 3), (7, 7)).tolist() == [16, 17, 18, 23, 24, 25, 30, 31, 32]
    assert kernel_taps((1, 1), (7, 7)).tolist() == [24]
    assert kernel_taps((3,), (7, 7)).tolist() == [23, 24, 25]  # a 1-d kernel fills the middle row
    assert kernel_taps((2, 2), (5, 5)).tolist() == [6, 7, 11, 12]


def test_small_cnn_zoo_shape():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    g = check_all(m, torch.randn(2, 1, 12, 12))
    assert g.num_nodes == 1 + 16 * 3 + 10
    assert g.edge_index.size(1) == 16 + 256 * 2 + 160
    assert (g.node_pool == POOL["global_avg"]).sum() == 16
    e = 0  # first conv edge: kernel of out channel 0 sits in the centre 3x3 of the 7x7
    assert torch.equal(g.edge_attr[e].view(7, 7)[2:5, 2:5], m[0].weight[0, 0])
    outside = g.edge_attr[e].view(7, 7).clone()
    outside[2:5, 2:5] = 0
    assert outside.eq(0).all()


def test_conv_variants_semantics():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 6, (3, 5), stride=(2, 1), padding=(1, 2)), nn.GELU(),   # non-square, strided
        nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6), nn.Tanh(),     # depthwise, dilated
        nn.Conv2d(6, 4, 3, padding="same", groups=2, bias=False), nn.ReLU(),  # grouped, no bias
        nn.Conv2d(4, 4, 2), nn.SiLU(),                                       # even kernel
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(4, 3))
    g = check_all(m, torch.randn(2, 3, 11, 9))
    dw = (g.edge_conv[:, 4:6] == torch.tensor([2, 2])).all(1)  # dilation 2 only on the depthwise conv
    assert dw.sum() == 6  # depthwise: one edge per channel
    grouped_edges = 4 * 3
    assert g.edge_index.size(1) == 3 * 6 + 6 + grouped_edges + 16 + 12
    row = g.edge_conv[0].tolist()  # stride, padding, dilation, kernel per dim
    assert row == [2, 1, 1, 2, 1, 1, 3, 5]


def test_conv1d_and_conv3d():
    torch.manual_seed(0)
    m1 = nn.Sequential(nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(), nn.Conv1d(4, 4, 3), nn.ReLU(),
                       nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(4, 2))
    check_all(m1, torch.randn(3, 2, 16))
    m3 = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv3d(3, 2, (1, 3, 3)),
                       nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(UnsupportedModuleError, match=r"max_kernel"):
        to_neural_graph(m3)
    g = check_all(m3, torch.randn(2, 1, 5, 6, 6), max_kernel=(3, 3, 3))
    assert g.edge_attr.size(1) == 27 and g.edge_conv.size(1) == 12


def test_wildpark_residual_cnn():
    torch.manual_seed(0)
    m = WildParkCNN()
    x = torch.randn(2, 1, 8, 8)
    g = check_all(m, x)
    # layer 2 (16 ch) gets the 8 channels of layer 0; layer 3 (8 ch) gets the 4 channels of layer 1
    assert (g.edge_kind == EDGE_KIND["residual"]).sum() == 8 + 4
    centre = g.edge_attr[g.edge_kind == EDGE_KIND["residual"]]
    assert centre[:, 24].eq(1).all() and centre.sum() == 12
    p = permute_wildpark(m, torch.Generator().manual_seed(1))
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p))


def test_resnet():
    torch.manual_seed(0)
    m = SmallResNet()
    x = torch.randn(2, 3, 8, 8)
    g = check_all(m, x)
    p = permute_resnet(m, torch.Generator().manual_seed(2))
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p))


class FlattenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 3, 3), nn.Conv2d(3, 2, 3)
        self.fc1, self.fc2 = nn.Linear(2 * 2 * 2, 5), nn.Linear(5, 3)

    def forward(self, x):  # 10x10 -> conv 8x8 -> pool 4x4 -> conv 2x2
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = self.conv2(x)
        x = x.view(x.size(0), -1)
        return self.fc2(torch.relu(self.fc1(x)))


class FlattenNoPool(nn.Module):
    """conv -> flatten -> linear, no pooling (the traditional CNN head)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 3, 3), nn.Conv2d(3, 2, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(2 * 4 * 4, 5), nn.Linear(5, 3)

    def forward(self, x):
        x = torch.tanh(self.conv2(torch.relu(self.conv1(x))))
        x = x.view(x.size(0), -1)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("mode", ["virtual", "repeat"])
def test_flatten_modes(mode):
    torch.manual_seed(0)
    m = FlattenNoPool()
    x = torch.randn(2, 1, 6, 6)
    g = to_neural_graph(m, example_input=x, flatten=mode)
    assert_state_equal(m, from_neural_graph(g, m, example_input=x, flatten=mode))
    positions = 16
    spatial = g.node_spatial[g.node_spatial > 0]
    assert sorted(spatial.tolist()) == sorted(list(range(1, positions + 1)) * 2)
    if mode == "virtual":
        assert g.num_nodes == 1 + 3 + 2 + 2 * positions + 5 + 3
        assert (g.edge_kind == EDGE_KIND["flatten"]).sum() == 2 * positions
        assert (g.node_role == ROLE["virtual"]).sum() == 2 * positions
        with torch.no_grad():
            assert torch.allclose(execute(g, x), m(x), atol=1e-6)
    else:
        # the two conv2 nodes are replaced by 2 x 16 copies, each with conv2's incoming edges
        assert g.num_nodes == 1 + 3 + 2 * positions + 5 + 3
        assert (g.edge_kind == EDGE_KIND["conv"]).sum() == 3 + 2 * positions * 3
    # the flatten size is inferred from the linear layer without example_input too
    g2 = to_neural_graph(m, flatten=mode)
    assert torch.equal(g2.edge_index, g.edge_index) and torch.equal(g2.edge_attr, g.edge_attr)
    # symmetry: permute conv1 / conv2 channels and fc1 neurons
    p = FlattenNoPool()
    p.load_state_dict(m.state_dict())
    gen = torch.Generator().manual_seed(0)
    p1, p2, p3 = torch.randperm(3, generator=gen), torch.randperm(2, generator=gen), torch.randperm(5, generator=gen)
    permute_out(p.conv1, p1), permute_in(p.conv2, p1), permute_out(p.conv2, p2)
    with torch.no_grad():  # fc1 inputs are (channel, position) pairs, channel-major
        p.fc1.weight.copy_(p.fc1.weight.view(5, 2, 16)[:, p2].reshape(5, 32))
    permute_out(p.fc1, p3), permute_in(p.fc2, p3)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p, example_input=x, flatten=mode))


def test_max_pool_is_recorded():
    m = FlattenNet()
    x = torch.randn(1, 1, 10, 10)
    g = to_neural_graph(m, example_input=x)
    assert (g.node_pool == POOL["max"]).sum() == 3
    assert (g.node_spatial > 0).sum() == 2 * 4
    assert_state_equal(m, from_neural_graph(g, m, example_input=x))
    with pytest.raises(ValueError, match="example_input"):
        to_neural_graph(m, example_input=torch.randn(1, 1, 12, 12))


class DenseBlock(nn.Module):
    """DenseNet-style: every conv reads the channel concatenation of all earlier feature maps."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.c1 = nn.Conv2d(3, 2, 3, padding=1)
        self.c2 = nn.Conv2d(5, 2, 3, padding=1)
        self.fc = nn.Linear(7, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        h1 = torch.relu(self.c1(x))
        y = torch.cat([x, h1], dim=1)
        h2 = torch.tanh(self.c2(y))
        return self.fc(torch.cat([y, h2], dim=1).mean((2, 3)))


def test_densenet_concat_block():
    torch.manual_seed(0)
    m = DenseBlock()
    x = torch.randn(2, 1, 6, 6)
    g = check_all(m, x)
    # concatenation adds no neurons; the final global pool goes on copies of the 5 neurons whose maps the convs
    # read (every reader of a globally pooled neuron reads it pooled)
    assert g.num_nodes == 1 + 3 + 2 + 2 + 3 + 5
    p = DenseBlock()
    p.load_state_dict(m.state_dict())
    gen = torch.Generator().manual_seed(3)
    a, b, c = torch.randperm(3, generator=gen), torch.randperm(2, generator=gen), torch.randperm(2, generator=gen)
    permute_out(p.stem, a), permute_in(p.c1, a), permute_out(p.c1, b), permute_out(p.c2, c)
    permute_in(p.c2, torch.cat([a, 3 + b]))
    permute_in(p.fc, torch.cat([a, 3 + b, 5 + c]))
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p))


class PooledAndUnpooled(nn.Module):
    """``h`` is globally pooled for one head and read unpooled by a residual addition (before or after)."""

    def __init__(self, pool_first: bool):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc, self.fc2 = nn.Linear(4, 2), nn.Linear(4, 2)
        self.pool_first = pool_first

    def forward(self, x):
        h = torch.relu(self.c1(x))
        if self.pool_first:
            a = self.fc(h.mean((2, 3)))
            r = self.c2(h) + h
        else:
            r = self.c2(h) + h
            a = self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))
        return a + self.fc2(r.mean((2, 3)))


@pytest.mark.parametrize("pool_first", [True, False])
def test_a_neuron_read_pooled_and_unpooled_gets_a_pooled_copy(pool_first):
    torch.manual_seed(0)
    m = PooledAndUnpooled(pool_first)
    g = check_all(m, torch.randn(3, 1, 6, 6))
    # the 4 neurons of h stay unpooled for the residual; 4 identity-fed copies carry the pool for fc
    src, dst = g.edge_index
    h = dst[(g.edge_kind == EDGE_KIND["conv"]) & (g.node_role[src] == ROLE["input"])].unique()
    copies = dst[(g.edge_kind == EDGE_KIND["identity"]) & torch.isin(src, h)]
    assert h.numel() == 4 and g.node_pool[h].eq(POOL["none"]).all()
    assert copies.numel() == 4 and g.node_pool[copies].eq(POOL["global_avg"]).all()
    # input, h, c2 (+ the residual), h's pooled copy, fc's and fc2's outputs (summed)
    assert g.num_nodes == 1 + 4 + 4 + 4 + 2 + 2


def test_convolutions_read_the_map_so_a_pooled_neuron_needs_no_copy():
    """DenseNet-style reuse: neurons read by convolutions and then pooled are pooled in place."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(3, 2))
    g = check_all(m, torch.randn(2, 1, 7, 7))
    assert g.num_nodes == 1 + 3 + 3 + 2 and not (g.edge_kind == EDGE_KIND["identity"]).any()


# ---------------------------------------------------------------------------- kernels larger than max_kernel
def _net(conv: nn.Module, sdims: int) -> nn.Sequential:
    """``conv`` between a ReLU and a plain 3-wide conv (so the large kernel's neurons feed and are fed by a
    layer), global pooling and a linear head."""
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[sdims]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[sdims]
    return nn.Sequential(cls(conv.in_channels, conv.in_channels, 1), nn.ReLU(), conv, nn.Tanh(),
                         cls(conv.out_channels, 3, 3, padding=1), pool(1), nn.Flatten(), nn.Linear(3, 2))


LARGE = {  # name: (conv, input, max_kernel)
    "stride1-valid": (lambda: nn.Conv2d(3, 4, 5), (2, 3, 9, 8), (3, 3)),
    "resnet-stem": (lambda: nn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False), (2, 3, 13, 12), (3, 3)),
    "dilated-grouped": (lambda: nn.Conv2d(4, 6, 5, padding=4, dilation=2, groups=2), (2, 4, 9, 10), (3, 3)),
    "depthwise-same": (lambda: nn.Conv2d(4, 4, 7, padding="same", groups=4), (2, 4, 8, 9), (3, 3)),
    "one-dim-too-large": (lambda: nn.Conv2d(3, 2, (5, 3), stride=(2, 1), padding=(2, 0)), (2, 3, 9, 7), (3, 3)),
    "alexnet-stem": (lambda: nn.Conv2d(3, 4, 11, stride=4, padding=2), (2, 3, 23, 21), (7, 7)),
    "patches": (lambda: nn.Conv2d(3, 4, 4, stride=4), (2, 3, 8, 12), (3, 3)),
    "conv1d-in-2d": (lambda: nn.Conv1d(2, 3, 9, stride=2, padding=4, dilation=2), (2, 2, 21), (3, 3)),
    "conv1d": (lambda: nn.Conv1d(2, 4, 5, stride=2, padding=2, groups=2), (2, 2, 11), (3,)),
    "conv3d": (lambda: nn.Conv3d(2, 3, (5, 3, 5), stride=(1, 2, 2), padding=(2, 0, 1)), (2, 2, 6, 7, 8), (3, 3, 3)),
}


@pytest.mark.parametrize("name", LARGE)
def test_kernel_larger_than_max_kernel_is_shifted_maps_and_a_1x1_conv(name):
    """Executor == module and an exact round trip; the structure: one shifted neuron (one subsample edge) per
    (input channel, kernel offset), and 1x1 conv edges only within a group, one tap each."""
    make, shape, max_kernel = LARGE[name]
    torch.manual_seed(0)
    conv = make()
    m = _net(conv, len(shape) - 2)
    g = check_all(m, torch.randn(*shape), max_kernel=max_kernel)
    k = math.prod(conv.kernel_size)
    sub = g.edge_kind == EDGE_KIND["subsample"]
    assert int(sub.sum()) == conv.in_channels * k
    # the shifted neurons are exactly the subsample edges' targets, each fed once
    shifted = g.edge_index[1, sub]
    assert shifted.unique().numel() == shifted.numel()
    into_large = torch.isin(g.edge_index[0], shifted)
    assert int(into_large.sum()) == conv.out_channels * conv.in_channels // conv.groups * k
    assert (g.edge_kind[into_large] == EDGE_KIND["conv"]).all()
    centre = kernel_taps((1,), max_kernel)
    attr = g.edge_attr[into_large].clone()
    assert sorted(attr[:, centre].view(-1).tolist()) == sorted(conv.weight.view(-1).tolist())
    attr[:, centre] = 0
    assert attr.eq(0).all()  # one tap per edge


def test_shifted_geometry_columns():
    """``subsample`` rows: stride | offset (kernel offset x dilation) | zero padding | span (dilation (k - 1) + 1)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, (5, 4), stride=(2, 3), padding=(3, 1), dilation=(2, 1))
    g = check_all(_net(conv, 2), torch.randn(2, 1, 12, 11), max_kernel=(3, 3))
    rows = {tuple(r) for r in g.edge_conv[g.edge_kind == EDGE_KIND["subsample"]].tolist()}
    assert rows == {(2, 3, 2 * i, j, 3, 1, 9, 4) for i in range(5) for j in range(4)}


def test_shifted_conv_padding_changes_the_graph():
    """Two large convs that differ only in padding compute different functions and give different graphs."""
    torch.manual_seed(0)
    a = _net(nn.Conv2d(2, 3, 5, padding=2), 2)
    b = copy.deepcopy(a)
    b[2].padding = (1, 1)
    ga, gb = to_neural_graph(a, max_kernel=(3, 3)), to_neural_graph(b, max_kernel=(3, 3))
    assert torch.equal(ga.edge_attr, gb.edge_attr) and not torch.equal(ga.edge_conv, gb.edge_conv)
    check_all(b, torch.randn(2, 2, 9, 9), max_kernel=(3, 3))


def test_shifted_conv_symmetry():
    """Permuting the hidden channels around a 7x7 strided conv and a 5x5 depthwise conv (both converted as shifted
    maps at max_kernel=(3, 3)) keeps the function and gives an isomorphic graph."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 7, stride=2, padding=3), nn.ReLU(),
                      nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, 3))
    x = torch.randn(2, 3, 11, 10)
    gen = torch.Generator().manual_seed(1)
    p1, p2 = torch.randperm(6, generator=gen), torch.randperm(8, generator=gen)
    p = copy.deepcopy(m)
    permute_out(p[0], p1)
    permute_in(p[2], p1)
    permute_out(p[2], p2)
    permute_out(p[4], p2)  # depthwise: each channel's kernel moves with it
    permute_in(p[8], p2)
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    g, gp = check_all(m, x, max_kernel=(3, 3)), check_all(p, x, max_kernel=(3, 3))
    assert_isomorphic(g, gp)
    # the graph's own symmetries (PermuteNeurons) move the shifted neurons with their channel: same function
    moved = from_neural_graph(PermuteNeurons(seed=0)(g), m, max_kernel=(3, 3))
    assert_params_moved(m, moved)
    assert_same_function(m, moved, x)


def test_kernel_equal_to_max_kernel_is_a_plain_conv_edge():
    torch.manual_seed(0)
    for conv, shape, max_kernel in ((nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 8, 8), (3, 3)),
                                    (nn.Conv2d(3, 4, 7), (2, 3, 9, 9), (7, 7)),
                                    (nn.Conv1d(2, 4, 3), (2, 2, 9), (3, 3))):
        g = check_all(_net(conv, len(shape) - 2), torch.randn(*shape), max_kernel=max_kernel)
        assert not (g.edge_kind == EDGE_KIND["subsample"]).any()
        assert g.num_nodes == conv.in_channels * 2 + conv.out_channels + 3 + 2


def test_too_large_geometry_is_refused_by_name():
    # a kernel offset of 2 * 20000 does not fit the geometry table's int16
    m = _net(nn.Conv2d(1, 1, (3, 1), dilation=(20000, 1)), 2)
    with pytest.raises(UnsupportedModuleError, match=r"2 \(.*Conv2d\): geometry value 40001 of subsample edges "
                                                   r"does not fit its dtype int16"):
        to_neural_graph(m, max_kernel=(1, 1))
    # a 3-d kernel with a 2-d max_kernel: the geometry has no column for the third dim
    m3 = nn.Sequential(nn.Conv3d(1, 2, 5), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 1))
    with pytest.raises(UnsupportedModuleError, match=r"0 \(.*Conv3d\): a 3-d kernel \(5, 5, 5\) needs a 3-d "
                                                     r"max_kernel.*max_kernel=\(5, 7, 7\)"):
        to_neural_graph(m3)
    # padding="same" with an even kernel pads one side more, also when the kernel is decomposed
    with pytest.raises(UnsupportedModuleError, match=r"padding='same' with kernel \(4, 4\)"):
        to_neural_graph(_net(nn.Conv2d(1, 2, 4, padding="same"), 2), max_kernel=(3, 3))
    with pytest.raises(UnsupportedModuleError, match=r"padding_mode='reflect'"):
        to_neural_graph(_net(nn.Conv2d(1, 2, 5, padding=2, padding_mode="reflect"), 2), max_kernel=(3, 3))
