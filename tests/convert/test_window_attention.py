"""Shifted-window attention and patch merging (torchvision's Swin Transformer V1), on a pure-torch replica.

The replica's three functions carry torchvision's qualified names and are wrapped for ``torch.fx`` as torchvision
wraps them, so the converter sees the calls it sees in ``torchvision.models.swin_t``; their bodies are written here
from the Swin paper's definition (window partition, relative position bias, cyclic shift with a -100 mask between
the rolled regions, bottom / right zero padding to whole windows), independently of the executor.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from neuralgraph.data.graph import EDGE_KIND
from neuralgraph.transforms import PermuteNeurons
from tests.helpers.nets import nan_copy
from tests.helpers.permute import assert_state_equal

_SWIN = "torchvision.models.swin_transformer"


def _patch_merging_pad(x):
    """2 x 2 neighbourhoods of a channel-last map as 4 C channels: (0, 0), (1, 0), (0, 1), (1, 1)."""
    h, w = x.shape[1], x.shape[2]
    x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
    return torch.cat([x[:, i::2, j::2, :] for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))], -1)


def _get_relative_position_bias(table, index, window_size):
    n = window_size[0] * window_size[1]
    return table[index].view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)


def shifted_window_attention(input, qkv_weight, proj_weight, relative_position_bias, window_size, num_heads,
                             shift_size, attention_dropout=0.0, dropout=0.0, qkv_bias=None, proj_bias=None,
                             logit_scale=None, training=True):
    b, h, w, c = input.shape
    (wh, ww), d = window_size, c // num_heads
    ph, pw = h + (-h) % wh, w + (-w) % ww
    x = F.pad(input, (0, 0, 0, pw - w, 0, ph - h))
    shift = [0 if wh >= ph else shift_size[0], 0 if ww >= pw else shift_size[1]]
    if sum(shift) > 0:  # as torchvision: no roll, no mask unless the shifts sum above 0
        x = x.roll((-shift[0], -shift[1]), (1, 2))
    nh, nw = ph // wh, pw // ww
    win = x.reshape(b, nh, wh, nw, ww, c).transpose(2, 3).reshape(b * nh * nw, wh * ww, c)
    q, k, v = F.linear(win, qkv_weight, qkv_bias).reshape(win.shape[0], wh * ww, 3, num_heads, d).unbind(2)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / d ** 0.5 + relative_position_bias
    if sum(shift) > 0:
        region = torch.zeros(ph, pw)
        for i, rows in enumerate((slice(0, ph - wh), slice(ph - wh, ph - shift[0]), slice(ph - shift[0], ph))):
            for j, cols in enumerate((slice(0, pw - ww), slice(pw - ww, pw - shift[1]), slice(pw - shift[1], pw))):
                region[rows, cols] = 3 * i + j
        region = region.reshape(nh, wh, nw, ww).transpose(1, 2).reshape(nh * nw, wh * ww)
        mask = (region[:, :, None] != region[:, None, :]).float() * -100.0                # [nW, N, N]
        scores = (scores.view(b, nh * nw, num_heads, wh * ww, wh * ww) + mask[None, :, None]).flatten(0, 1)
    out = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(win.shape[0], wh * ww, c)
    out = F.linear(out, proj_weight, proj_bias)
    out = out.reshape(b, nh, nw, wh, ww, c).transpose(2, 3).reshape(b, ph, pw, c)
    if sum(shift) > 0:
        out = out.roll(tuple(shift), (1, 2))
    return out[:, :h, :w]


for _fn in (_patch_merging_pad, _get_relative_position_bias, shifted_window_attention):
    _fn.__module__ = _SWIN  # the converter finds the rules by torchvision's qualified names
    torch.fx.wrap(_fn.__name__)


def swin_index(window):
    wh, ww = window
    y, x = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    y, x = y.flatten(), x.flatten()
    return ((y[:, None] - y[None] + wh - 1) * (2 * ww - 1) + x[:, None] - x[None] + ww - 1).flatten()


class WindowAttention(nn.Module):
    def __init__(self, dim, window, shift, heads, bias=True):
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = list(window), list(shift), heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=bias), nn.Linear(dim, dim, bias=bias)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window[0] - 1) * (2 * window[1] - 1), heads))
        self.register_buffer("relative_position_index", swin_index(window))

    def forward(self, x):
        bias = _get_relative_position_bias(self.relative_position_bias_table, self.relative_position_index,
                                           self.window_size)
        return shifted_window_attention(x, self.qkv.weight, self.proj.weight, bias, self.window_size, self.num_heads,
                                        shift_size=self.shift_size, qkv_bias=self.qkv.bias, proj_bias=self.proj.bias,
                                        training=self.training)


class PatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        return self.reduction(self.norm(_patch_merging_pad(x)))


class Block(nn.Module):
    def __init__(self, dim, window, shift, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, shift, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinySwin(nn.Module):
    """Patch embedding (conv, channel-last, LayerNorm), a plain and a shifted block, patch merging, a block,
    LayerNorm, global average pool, head."""

    def __init__(self, dim=8, window=(3, 3), heads=2):
        super().__init__()
        shift = [w // 2 for w in window]
        self.embed, self.norm0 = nn.Conv2d(3, dim, 2, 2), nn.LayerNorm(dim)
        self.blocks = nn.Sequential(Block(dim, window, [0, 0], heads), Block(dim, window, shift, heads))
        self.merge = PatchMerging(dim)
        self.last = Block(2 * dim, window, shift, heads)
        self.norm, self.head = nn.LayerNorm(2 * dim), nn.Linear(2 * dim, 3)

    def forward(self, x):
        x = self.norm0(self.embed(x).permute(0, 2, 3, 1))
        x = self.last(self.merge(self.blocks(x)))
        return self.head(self.norm(x).mean((1, 2)))


def _randomized(m):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return m.eval()


@pytest.mark.parametrize("size", [(12, 12), (14, 10), (6, 6), (4, 4), (2, 2)],
                         ids=["windows-fit", "padded-odd-merge", "shift-on-two-windows", "window-covers-map",
                              "one-position-map"])
def test_swin_executes_like_the_module_and_reads_back(size):
    """Maps of whole windows, maps padded to whole windows (and an odd size at the patch merging), two windows per
    dim, and windows covering the map (torchvision then drops the shift): the graph computes the module."""
    m = _randomized(TinySwin())
    x = torch.randn(2, 3, 2 * size[0], 2 * size[1])
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x), m(x), atol=1e-5, rtol=1e-4)
    assert_state_equal(from_neural_graph(g, nan_copy(m), example_input=x), m)
    kinds = g.edge_kind.tolist()
    assert kinds.count(EDGE_KIND["window_bias"]) == 3 * 25 * 2  # 3 blocks x (2 * 3 - 1)^2 offsets x 2 heads


def test_the_bias_table_the_shift_and_the_heads_are_all_in_the_function():
    """Each ingredient changes the function, and the graph follows: a changed bias entry, a dropped shift, and
    heads permuted as whole heads (a symmetry: same function, and the graph still executes to it)."""
    m = _randomized(Block(4, (3, 3), (1, 1), 2))
    x = torch.randn(2, 6, 6, 4)
    g = to_neural_graph(nn.Sequential(m), example_input=x)
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(execute(g, x, tokens=True), y, atol=1e-5, rtol=1e-4)
        m2 = copy.deepcopy(m)
        m2.attn.relative_position_bias_table[7, 1] += 1.0
        g2 = to_neural_graph(nn.Sequential(m2), example_input=x)
        assert not torch.allclose(m2(x), y, atol=1e-3)
        torch.testing.assert_close(execute(g2, x, tokens=True), m2(x), atol=1e-5, rtol=1e-4)
        m3 = copy.deepcopy(m)
        m3.attn.shift_size = [0, 0]
        assert not torch.allclose(m3(x), y, atol=1e-3)
        torch.testing.assert_close(execute(to_neural_graph(nn.Sequential(m3), example_input=x), x, tokens=True),
                                   m3(x), atol=1e-5, rtol=1e-4)
        # swap the two heads: the q, k, v rows, the proj columns and the bias table columns move together
        perm = torch.cat([torch.arange(2, 4), torch.arange(0, 2)])
        m4 = copy.deepcopy(m)
        qkv = m4.attn.qkv
        rows = torch.cat([perm + 4 * r for r in range(3)])
        qkv.weight.copy_(qkv.weight[rows])
        qkv.bias.copy_(qkv.bias[rows])
        m4.attn.proj.weight.copy_(m4.attn.proj.weight[:, perm])
        m4.attn.relative_position_bias_table.copy_(m4.attn.relative_position_bias_table[:, [1, 0]])
        torch.testing.assert_close(m4(x), y, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(execute(to_neural_graph(nn.Sequential(m4), example_input=x), x, tokens=True), y,
                                   atol=1e-5, rtol=1e-4)
        moved = PermuteNeurons(seed=0)(g.clone())
        torch.testing.assert_close(execute(moved, x, tokens=True), y, atol=1e-5, rtol=1e-4)


def test_window_attention_refuses_what_it_cannot_represent():
    m = _randomized(TinySwin())
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(UnsupportedModuleError, match="traced .* shape|example_input"):
        to_neural_graph(m)
    g = to_neural_graph(m, example_input=x)
    with pytest.raises(ValueError, match="conversion's size"):
        execute(g, torch.randn(2, 3, 20, 20))
    with pytest.raises(UnsupportedModuleError, match="2-d max_kernel"):
        to_neural_graph(m, example_input=x, max_kernel=(3,))
    with pytest.raises(UnsupportedModuleError, match="at least 3 edge features"):  # was "needs a 2-d max_kernel"
        to_neural_graph(m, example_input=x, max_kernel=(1, 1))
    odd = _randomized(TinySwin())
    odd.blocks[0].attn.relative_position_index = swin_index((3, 3)).flip(0)
    with pytest.raises(UnsupportedModuleError, match="relative position index .* is not Swin's"):
        to_neural_graph(odd, example_input=x)

    class V2(WindowAttention):
        def __init__(self, *args):
            super().__init__(*args)
            self.logit_scale = nn.Parameter(torch.ones(self.num_heads, 1, 1))

        def forward(self, x):
            bias = _get_relative_position_bias(self.relative_position_bias_table, self.relative_position_index,
                                               self.window_size)
            return shifted_window_attention(x, self.qkv.weight, self.proj.weight, bias, self.window_size,
                                            self.num_heads, self.shift_size, logit_scale=self.logit_scale,
                                            training=False)

    with pytest.raises(UnsupportedModuleError, match="Swin V2"):
        to_neural_graph(nn.Sequential(nn.Linear(4, 4), V2(4, (3, 3), (0, 0), 2)), example_input=torch.randn(1, 3, 3, 4))


@pytest.mark.parametrize("shift", [(1, -1), (-1, -1), (0, -2)], ids=["sum-zero", "both-negative", "one-negative"])
def test_shifts_summing_to_at_most_zero_do_not_shift(shift):
    """torchvision rolls and masks only when the shifts sum above 0: negative shifts that do not are no shift at
    all, and the graph must not roll the map either."""
    m = _randomized(WindowAttention(4, (2, 2), shift, 2))
    x = torch.randn(2, 6, 8, 4)
    g = to_neural_graph(nn.Sequential(m), example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x, tokens=True), m(x), atol=1e-5, rtol=1e-4)
        unshifted = copy.deepcopy(m)
        unshifted.shift_size = [0, 0]
        torch.testing.assert_close(m(x), unshifted(x))


@pytest.mark.parametrize("shift", [(2, -1), (7, 1), (1, 9)], ids=["negative", "beyond-rows", "beyond-cols"])
def test_shifts_whose_mask_is_not_swins_are_refused(shift):
    """A negative shift (with a positive sum) or one beyond the padded map: torchvision's mask slices then are
    not the regions of the rolled map, which is all a graph's window geometry holds."""
    m = _randomized(WindowAttention(4, (2, 2), shift, 2))
    with pytest.raises(UnsupportedModuleError, match=r"shift .* on a 6 x 8 \(padded\) map"):
        to_neural_graph(nn.Sequential(m), example_input=torch.randn(2, 6, 8, 4))


def test_a_graph_is_not_read_back_into_a_model_of_another_shift_or_stride():
    """Two architectures whose graphs have the same nodes and edges but other edge geometry (a window attention's
    shift, a convolution's stride): reading one's graph into the other would give a module computing another
    function than the graph, so it is refused, naming the field."""
    m = _randomized(WindowAttention(4, (2, 2), (0, 0), 2))
    x = torch.randn(2, 6, 8, 4)
    g = to_neural_graph(nn.Sequential(m), example_input=x)
    shifted = copy.deepcopy(m)
    shifted.shift_size = [1, 1]
    with pytest.raises(ValueError, match="geometry differs"):
        from_neural_graph(g, nn.Sequential(nan_copy(shifted)), example_input=x)
    assert_state_equal(from_neural_graph(g, nn.Sequential(nan_copy(m)), example_input=x), nn.Sequential(m))
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, stride=1), nn.ReLU(), nn.Conv2d(3, 2, 3))
    strided = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2), nn.ReLU(), nn.Conv2d(3, 2, 3))
    with pytest.raises(ValueError, match="geometry differs"):
        from_neural_graph(to_neural_graph(conv), strided)


def test_patch_merging_holds_at_every_map_size():
    """Patch merging's graph does not depend on the parity of the map it was converted at (review finding: a
    graph converted at an even width dropped the last column of an odd one, returning a narrower map)."""
    m = _randomized(nn.Sequential(PatchMerging(4)))
    for traced in ((5, 6), (6, 5)):
        g = to_neural_graph(m, example_input=torch.randn(2, *traced, 4))
        for size in ((5, 6), (6, 5), (5, 5), (6, 6), (1, 3), (7, 4)):
            x = torch.randn(2, *size, 4)
            with torch.no_grad():
                torch.testing.assert_close(execute(g, x, tokens=True), m(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("use", ["method", "add", "slice"])
def test_the_relative_position_bias_read_by_another_operation_is_refused(use):
    """The gathered bias table is handed to the window attention only; another operation on it is refused
    (review finding: ``bias.mean()`` crashed with an AttributeError inside the tracer)."""

    class Misused(WindowAttention):
        def forward(self, x):
            bias = _get_relative_position_bias(self.relative_position_bias_table, self.relative_position_index,
                                               self.window_size)
            if use == "method":
                return self.proj(x) + bias.mean()
            if use == "add":
                return self.proj(x) + bias
            return shifted_window_attention(x, self.qkv.weight, self.proj.weight, bias[:, :, :, :], self.window_size,
                                            self.num_heads, self.shift_size, training=False)

    with pytest.raises(UnsupportedModuleError, match="reads a RelativeBias, which only .*shifted_window_attention"):
        to_neural_graph(_randomized(Misused(4, (2, 2), (1, 1), 2)), example_input=torch.randn(2, 2, 4, 4))


def test_a_graph_is_not_read_back_into_a_template_whose_index_differs():
    """The relative position index is an integer buffer: the graph does not hold it and the read-back module keeps
    the template's. A template whose index is not the one the graph was converted with must not be found by the
    cached plan of its architecture (review finding: without example_input it was, and the module read back
    computed another function than the graph)."""
    m = nn.Sequential(_randomized(WindowAttention(4, (2, 2), (1, 1), 2)))
    x = torch.randn(2, 4, 6, 4)
    g = to_neural_graph(m, example_input=x)
    bad = nan_copy(m)
    bad[0].relative_position_index = swin_index((2, 2)).flip(0)
    for example in (None, x):
        with pytest.raises(UnsupportedModuleError, match="relative position index .* is not Swin's"):
            from_neural_graph(g, bad, example_input=example)
    assert_state_equal(from_neural_graph(g, nan_copy(m)), m)


def test_a_map_input_permuted_channel_last_inside_the_module_is_executed_with_tokens_false():
    """A window attention reading the model's [B, C, H, W] input permuted channel-last: execute guesses token
    sequences (an attention graph whose inputs no map edge reads); the error says to pass tokens=False, which
    reproduces the module (its output channel-first, as execute stacks outputs of maps)."""

    class FromMap(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.head = WindowAttention(4, (2, 3), (1, 1), 2), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.attn(x.permute(0, 2, 3, 1)))

    m = _randomized(FromMap())
    x = torch.randn(2, 4, 5, 6)
    g = to_neural_graph(m, example_input=x)
    with pytest.raises(ValueError, match="pass tokens=False"):
        execute(g, x)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x, tokens=False), m(x).permute(0, 3, 1, 2), atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_window_attention_executes_on_the_graphs_device():
    """The shifted-window mask and the bias lookup are built on the device of the graph and the input."""
    m = _randomized(TinySwin())
    x = torch.randn(2, 3, 20, 16)
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(execute(g.to("cuda"), x.cuda()).cpu(), m(x), atol=1e-4, rtol=1e-4)


def test_a_window_computed_from_the_input_size_is_refused():
    """A window / shift computed from the input's sizes is symbolic in the trace (review finding: int() of it
    crashed with a TypeError); the graph holds numbers, so it is refused naming the argument."""

    class SizedWindow(WindowAttention):
        def forward(self, x):
            bias = _get_relative_position_bias(self.relative_position_bias_table, self.relative_position_index,
                                               self.window_size)
            return shifted_window_attention(x, self.qkv.weight, self.proj.weight, bias, [2, x.shape[2] // 3],
                                            self.num_heads, [1, 1], training=False)

    with pytest.raises(UnsupportedModuleError, match=r"window_size \[2, Sym\(\)\] is computed from the input's"):
        to_neural_graph(_randomized(SizedWindow(4, (2, 2), (1, 1), 2)), example_input=torch.randn(2, 4, 6, 4))
