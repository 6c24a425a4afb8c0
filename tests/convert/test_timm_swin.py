"""timm's Swin Transformer (V1), on a pure-torch replica and, where timm is installed, on timm's own model.

The replica's classes carry timm's qualified names (``timm.models.swin_transformer.SwinTransformerBlock``, ...), so
the converter claims them as it claims timm's, and hold the attributes timm's ``__init__`` sets; their forwards are
written here from the Swin paper's definition, independently of timm's reshapes and of the executor: the map is
rolled by ``-shift`` and zero-padded at the bottom / right to whole windows (timm's order: roll, then pad), each
window is a list of padded positions built by arithmetic, gathered, attended with the relative position bias and
the block's mask, scattered back, cropped and rolled back. Where timm is installed, the replica is checked against
timm's block and timm's ``SwinTransformer`` is converted too.
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
from tests.helpers.permute import assert_isomorphic, assert_state_equal, head_permutation, isomorphic

_TIMM = "timm.models.swin_transformer"


def region_labels(n: int, window: int, shift: int) -> list[int]:
    """Per padded position along a dim of ``n`` (a multiple of ``window``): its region of the rolled map, the last
    ``window`` positions cut at ``n - shift`` (none without a shift)."""
    if not shift:
        return [0] * n
    return [0 if p < n - window else 1 if p < n - shift else 2 for p in range(n)]


def swin_offsets_index(window) -> torch.Tensor:
    """``[N, N]``: the bias table row of query ``i`` and key ``j`` of a window, by their offset."""
    wh, ww = window
    coords = [(i // ww, i % ww) for i in range(wh * ww)]
    return torch.tensor([[(yi - yj + wh - 1) * (2 * ww - 1) + xi - xj + ww - 1 for yj, xj in coords]
                         for yi, xi in coords])


def padded_size(size, window):
    return tuple(-n % w + n for n, w in zip(size, window))


def window_mask(window, shift, padded) -> torch.Tensor | None:
    """``[windows, N, N]``: -100 between tokens of a window from different regions (Swin's mask), or ``None``."""
    if not any(shift):
        return None
    (wh, ww), (ph, pw) = window, padded
    ry, rx = region_labels(ph, wh, shift[0]), region_labels(pw, ww, shift[1])
    masks = []
    for by in range(ph // wh):
        for bx in range(pw // ww):
            lab = torch.tensor([3 * ry[by * wh + i] + rx[bx * ww + j] for i in range(wh) for j in range(ww)])
            masks.append((lab[:, None] != lab[None, :]).float() * -100.0)
    return torch.stack(masks)


class WindowAttention(nn.Module):
    def __init__(self, dim, num_heads, window_size):
        super().__init__()
        self.window_size, self.num_heads = tuple(window_size), num_heads
        self.scale, self.fused_attn = (dim // num_heads) ** -0.5, False
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads))
        self.register_buffer("relative_position_index", swin_offsets_index(window_size), persistent=False)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.attn_drop, self.proj_drop, self.softmax = nn.Dropout(0.0), nn.Dropout(0.0), nn.Softmax(dim=-1)

    def forward(self, x, mask=None):  # [B, windows, N, C]
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).unbind(-3)                 # [B, W, N, H, d]
        bias = self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)    # [H, N, N]
        scores = torch.einsum("bwihd,bwjhd->bwhij", q, k) * self.scale + bias
        if mask is not None:
            scores = scores + mask[None, :, None]
        probs = self.attn_drop(self.softmax(scores))
        return self.proj_drop(self.proj(torch.einsum("bwhij,bwjhd->bwihd", probs, v).flatten(-2)))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0)
        self.norm, self.fc2, self.drop2 = nn.Identity(), nn.Linear(hidden, dim), nn.Dropout(0.0)

    def forward(self, x):
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class DropPath(nn.Module):
    def __init__(self, drop_prob):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):  # in training mode: whole samples of the residual branch dropped at random
        if not (self.training and self.drop_prob):
            return x
        keep = (torch.rand(x.shape[0], *([1] * (x.dim() - 1))) >= self.drop_prob).to(x.dtype)
        return x * keep / (1 - self.drop_prob)


class SwinTransformerBlock(nn.Module):
    """timm's block at ``input_resolution``: no shift, and the window cut to the map, where the map fits one window
    (unless ``always_partition``)."""

    def __init__(self, dim, input_resolution, num_heads, window_size, shift_size, always_partition=False,
                 drop_path=0.0):
        super().__init__()
        self.input_resolution, self.dynamic_mask = tuple(input_resolution), False
        window, shift = tuple(window_size), tuple(shift_size)
        if not always_partition:
            window = tuple(min(r, w) for r, w in zip(input_resolution, window))
            shift = tuple(0 if r <= w else s for r, w, s in zip(input_resolution, window, shift))
        self.window_size, self.shift_size = window, shift
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = Mlp(dim, 2 * dim)
        self.drop_path1 = DropPath(drop_path) if drop_path else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path else nn.Identity()
        self.register_buffer("attn_mask", window_mask(window, shift, padded_size(input_resolution, window)),
                             persistent=False)

    def _attn(self, x):  # [B, H, W, C]: roll by -shift, pad, windows by position lists, attend, scatter, crop, roll
        b, h, w, c = x.shape
        (wh, ww), (sh, sw) = self.window_size, self.shift_size
        ph, pw = padded_size((h, w), (wh, ww))
        # padded position (r, s) holds the map's position ((r + sh) % h, (s + sw) % w), or zeros past the map
        src = [((r + sh) % h) * w + (s + sw) % w if r < h and s < w else h * w for r in range(ph) for s in range(pw)]
        windows = torch.tensor([[src[(by * wh + i) * pw + bx * ww + j] for i in range(wh) for j in range(ww)]
                                for by in range(ph // wh) for bx in range(pw // ww)])                    # [W, N]
        flat = torch.cat([x.reshape(b, h * w, c), x.new_zeros(b, 1, c)], 1)
        out = self.attn(flat[:, windows], mask=self.attn_mask)                                     # [B, W, N, C]
        back = x.new_zeros(b, h * w + 1, c)
        back[:, windows.reshape(-1)] = out.reshape(b, -1, c)   # each map position is held once; padding at h * w
        return back[:, :h * w].reshape(b, h, w, c)

    def forward(self, x):
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):  # 2 x 2 neighbourhoods, zero-padded to an even size: (0, 0), (1, 0), (0, 1), (1, 1)
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        return self.reduction(self.norm(torch.cat([x[:, i::2, j::2] for i, j in ((0, 0), (1, 0), (0, 1), (1, 1))], -1)))


for _cls in (WindowAttention, SwinTransformerBlock, PatchMerging):
    _cls.__module__ = _TIMM  # the converter finds the rules by timm's qualified names
Mlp.__module__ = "timm.layers.mlp"
DropPath.__module__ = "timm.layers.drop"


class TinySwin(nn.Module):
    """Patch embedding (conv, channel-last, LayerNorm), a plain and a shifted block, patch merging, a shifted block,
    LayerNorm, global average pool, head."""

    def __init__(self, grid=(6, 6), dim=8, window=(3, 3), heads=2, always_partition=False):
        super().__init__()
        shift = tuple(w // 2 for w in window)
        half = tuple((g + 1) // 2 for g in grid)
        self.embed, self.norm0 = nn.Conv2d(3, dim, 2, 2), nn.LayerNorm(dim)
        self.blocks = nn.Sequential(SwinTransformerBlock(dim, grid, heads, window, (0, 0), always_partition),
                                    SwinTransformerBlock(dim, grid, heads, window, shift, always_partition))
        self.merge = PatchMerging(dim)
        self.last = SwinTransformerBlock(2 * dim, half, heads, window, shift, always_partition, drop_path=0.2)
        self.norm, self.head = nn.LayerNorm(2 * dim), nn.Linear(2 * dim, 3)

    def forward(self, x):
        x = self.norm0(self.embed(x).permute(0, 2, 3, 1))
        x = self.last(self.merge(self.blocks(x)))
        return self.head(self.norm(x).mean((1, 2)))


def _randomized(m, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return m.eval()


def _block(size=(5, 5), window=(3, 3), shift=(1, 1), dim=4, heads=2, **kwargs):
    return _randomized(nn.Sequential(SwinTransformerBlock(dim, size, heads, window, shift, **kwargs)))


CONFIGS = {"windows-fit": dict(grid=(6, 6)), "padded-shifted-odd-merge": dict(grid=(7, 5)),
           "non-square-window": dict(grid=(8, 6), window=(4, 3)), "window-covers-map": dict(grid=(2, 3)),
           "always-partition": dict(grid=(4, 4), window=(5, 5), always_partition=True)}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_timm_swin_executes_like_the_module_and_reads_back(config):
    """Maps of whole windows, maps padded to whole windows with a shift (timm rolls before padding) and an odd size
    at the patch merging, a non-square window, windows covering the map (timm then drops the shift and cuts the
    window) and always_partition (a window larger than the map, shifted): the graph computes the replica in float32
    and float64 and reads back bit for bit."""
    m = _randomized(TinySwin(**config))
    x = torch.randn(2, 3, 2 * config["grid"][0], 2 * config["grid"][1])
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x), m(x), atol=1e-5, rtol=1e-4)
        md, xd = copy.deepcopy(m).double(), x.double()
        assert (execute(to_neural_graph(md, example_input=xd), xd) - md(xd)).abs().max() < 1e-12
    assert_state_equal(from_neural_graph(g, nan_copy(m, persistent_only=True), example_input=x), m)
    blocks = (m.blocks[0], m.blocks[1], m.last)
    offsets = [(2 * b.window_size[0] - 1) * (2 * b.window_size[1] - 1) for b in blocks]
    assert (g.edge_kind == EDGE_KIND["window_bias"]).sum() == sum(2 * o for o in offsets)


def test_the_roll_order_is_in_the_graph_only_where_it_changes_the_function():
    """timm rolls the map before padding it, torchvision after: along a shifted, padded dim the virtual head neurons
    say so (the padding columns of node_window), and the graph without it computes another function; on a map of
    whole windows the two orders are one function and the graph is torchvision's."""
    padded, whole = _block(size=(5, 4), window=(3, 2), shift=(1, 1)), _block(size=(6, 4), window=(3, 2), shift=(1, 1))
    for m, size, flagged in ((padded, (5, 4), [[1, 0]] * 2), (whole, (6, 4), [])):
        x = torch.randn(2, *size, 4)
        g = to_neural_graph(m, example_input=x)
        heads = torch.unique(g.edge_index[1, g.edge_kind == EDGE_KIND["window_bias"]])
        rolls = g.node_window[heads][:, 4:6]
        assert rolls[rolls.any(1)].tolist() == flagged
        with torch.no_grad():
            torch.testing.assert_close(execute(g, x, tokens=True), m(x), atol=1e-5, rtol=1e-4)
            if flagged:
                other = g.clone()
                other.node_window[heads, 4:6] = 0
                assert not torch.allclose(execute(other, x, tokens=True), m(x), atol=1e-3)


def test_heads_permute_as_a_symmetry_and_a_bias_entry_is_in_the_function():
    """Whole heads and the neurons within a head permuted (q, k, v rows, proj columns, bias table columns): the same
    function and an isomorphic graph. A changed bias entry changes both; PermuteNeurons keeps the function."""
    m = _block(size=(5, 5), window=(3, 3), shift=(1, 1), dim=6, heads=3)
    x = torch.randn(2, 5, 5, 6)
    g = to_neural_graph(m, example_input=x)
    att = m[0].attn
    rows = head_permutation(3, 2, torch.Generator().manual_seed(3))
    heads = rows.view(3, 2)[:, 0] // 2
    p = copy.deepcopy(m)
    pa = p[0].attn
    with torch.no_grad():
        pa.qkv.weight.copy_(att.qkv.weight[torch.cat([rows, rows + 6, rows + 12])])
        pa.qkv.bias.copy_(att.qkv.bias[torch.cat([rows, rows + 6, rows + 12])])
        pa.proj.weight.copy_(att.proj.weight[:, rows])
        pa.relative_position_bias_table.copy_(att.relative_position_bias_table[:, heads])
        assert not torch.equal(pa.qkv.weight, att.qkv.weight)
        y = m(x)
        torch.testing.assert_close(p(x), y, atol=1e-5, rtol=1e-4)
    assert_isomorphic(g, to_neural_graph(p, example_input=x))
    changed = copy.deepcopy(m)
    with torch.no_grad():
        changed[0].attn.relative_position_bias_table[4, 1] += 1.0
        assert not torch.allclose(changed(x), y, atol=1e-3)
        gc = to_neural_graph(changed, example_input=x)
        torch.testing.assert_close(execute(gc, x, tokens=True), changed(x), atol=1e-5, rtol=1e-4)
        assert not isomorphic(g, gc)
        torch.testing.assert_close(execute(PermuteNeurons(seed=0)(g.clone()), x, tokens=True), y, atol=1e-5,
                                   rtol=1e-4)


def test_timm_swin_refuses_what_it_cannot_represent():
    m = _randomized(TinySwin())
    x = torch.randn(2, 3, 12, 12)
    with pytest.raises(UnsupportedModuleError, match="needs the traced .* shape.*example_input"):
        to_neural_graph(m)
    g = to_neural_graph(m, example_input=x)
    with pytest.raises(ValueError, match="conversion's size"):
        execute(g, torch.randn(2, 3, 16, 16))
    with pytest.raises(UnsupportedModuleError, match="2-d max_kernel"):
        to_neural_graph(m, example_input=x, max_kernel=(3,))
    # a static mask built for another input_resolution than the converted map (as many windows: the module runs)
    with pytest.raises(UnsupportedModuleError, match=r"mask .* is not Swin's .* input_resolution \(6, 12\)"):
        to_neural_graph(_block(size=(6, 12)), example_input=torch.randn(1, 12, 6, 4))
    odd = _block()
    odd[0].attn_mask = odd[0].attn_mask.flip(0)
    with pytest.raises(UnsupportedModuleError, match="mask .* is not Swin's shifted-window mask"):
        to_neural_graph(odd, example_input=torch.randn(1, 5, 5, 4))
    odd = _block(shift=(0, 0))
    odd[0].attn_mask = window_mask((3, 3), (1, 1), (6, 6))
    with pytest.raises(UnsupportedModuleError, match="mask .* on unshifted windows"):
        to_neural_graph(odd, example_input=torch.randn(1, 5, 5, 4))
    odd = _block()
    odd[0].attn.relative_position_index = swin_offsets_index((3, 3)).flip(0)
    with pytest.raises(UnsupportedModuleError, match="relative position index .* is not Swin's"):
        to_neural_graph(odd, example_input=torch.randn(1, 5, 5, 4))
    odd = _block()
    odd[0].attn.scale = 0.3
    with pytest.raises(UnsupportedModuleError, match="scale 0.3"):
        to_neural_graph(odd, example_input=torch.randn(1, 5, 5, 4))
    odd = _block()
    odd[0].attn.qkv, odd[0].attn.proj = nn.Linear(4, 12 * 2), nn.Linear(8, 4)  # timm's head_dim=4 with 2 heads
    with pytest.raises(UnsupportedModuleError, match="heads x head_dim != dim"):
        to_neural_graph(odd, example_input=torch.randn(1, 5, 5, 4))
    odd = _block()
    odd[0].mlp.act = nn.Softmax(dim=1)
    with pytest.raises(UnsupportedModuleError, match=r"mlp\.act .*Softmax: only layers known to act on each"):
        to_neural_graph(odd, example_input=torch.randn(1, 5, 5, 4))

    class LayerNorm(nn.LayerNorm):  # as timm.layers.LayerNorm: a subclass redefining forward has no rule
        def forward(self, x):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    for name in ("norm1", "norm2"):
        odd = _block()
        setattr(odd[0], name, LayerNorm(4))
        with pytest.raises(UnsupportedModuleError, match=name + r" .*LayerNorm, which redefines .*norm_layer=nn"):
            to_neural_graph(odd, example_input=torch.randn(1, 5, 5, 4))
    training = _block(drop_path=0.2)
    training.train()
    with pytest.raises(UnsupportedModuleError, match="drop_path1 .*model.eval"):
        to_neural_graph(training, example_input=torch.randn(1, 5, 5, 4))
    training = _block()
    training[0].attn.attn_drop.p = 0.1
    training.train()
    with pytest.raises(UnsupportedModuleError, match="attn.attn_drop .*Dropout with p=0.1 .*model.eval"):
        to_neural_graph(training, example_input=torch.randn(1, 5, 5, 4))

    class Sub(SwinTransformerBlock):  # a subclass redefining a method may compute something else: traced into
        def _attn(self, x):
            return super()._attn(x) * 2

    sub = _randomized(nn.Sequential(Sub(4, (5, 5), 2, (3, 3), (1, 1))))
    with pytest.raises(UnsupportedModuleError, match=r"0 \(.*Sub\) cannot be traced"):
        to_neural_graph(sub, example_input=torch.randn(1, 5, 5, 4))

    class Alone(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = WindowAttention(4, 2, (2, 2))

        def forward(self, x):
            return self.attn(x)

    with pytest.raises(UnsupportedModuleError, match="attn .*converts as part of timm's SwinTransformerBlock"):
        to_neural_graph(Alone(), example_input=torch.randn(1, 3, 4, 4))


def test_parts_of_the_attention_that_compute_something_else_are_refused():
    """The rule reads the block's parts from their attributes, not from a trace: a WindowAttention whose softmax,
    attention dropout or output dropout was swapped for another module on the instance, or a block whose forward
    was replaced on the instance, computes something else than the graph would hold, and is refused (before: the
    swapped softmax and attn_drop converted silently, executor error 0.4 / 0.7 relative on timm's block)."""
    x = torch.randn(1, 5, 5, 4)
    for part, swapped, match in (("softmax", nn.Softmax(dim=-2), "softmax .*Softmax over dim -2"),
                                 ("softmax", nn.Softmin(dim=-1), "softmax .*Softmin"),
                                 ("attn_drop", nn.Softplus(), "attn_drop .*Softplus.*not a dropout"),
                                 ("proj_drop", nn.Softmax(dim=1), "proj_drop .*Softmax")):
        odd = _block()
        setattr(odd[0].attn, part, swapped)
        with pytest.raises(UnsupportedModuleError, match=match):
            to_neural_graph(odd, example_input=x)
    odd = _block()
    odd[0].attn.fused_attn = True  # timm's fused path: scaled_dot_product_attention, no softmax module
    odd[0].attn.softmax = nn.Softmax(dim=-2)
    to_neural_graph(odd, example_input=x)
    patched = _block()
    forward = patched[0].forward
    patched[0].forward = lambda t: forward(t) * 2  # an instance's own forward: traced into, not claimed
    with pytest.raises(UnsupportedModuleError):
        to_neural_graph(patched, example_input=x)


def test_a_graph_is_not_read_back_into_a_template_whose_mask_differs():
    """The mask is a buffer the graph does not hold (the executor builds Swin's from the geometry): a template whose
    mask is not the one converted with (NaN-filled, flipped) is traced anew and refused, not read back into a module
    computing another function than the graph."""
    m = _block()
    x = torch.randn(2, 5, 5, 4)
    g = to_neural_graph(m, example_input=x)
    flipped = nan_copy(m, persistent_only=True)
    flipped[0].attn_mask = flipped[0].attn_mask.flip(0)
    for bad in (nan_copy(m), flipped):
        with pytest.raises(UnsupportedModuleError, match="mask .* is not Swin's"):
            from_neural_graph(g, bad, example_input=x)
    assert_state_equal(from_neural_graph(g, nan_copy(m, persistent_only=True)), m)


# ---------------------------------------------------------------------------------------------- real timm
def _timm_swin():
    return pytest.importorskip("timm.models.swin_transformer")


def test_the_replica_is_timms_block():
    ts = _timm_swin()
    for size, window, shift, always in (((5, 5), (3, 3), (1, 1), False), ((6, 4), (3, 2), (1, 1), False),
                                        ((4, 4), (5, 5), (2, 2), True), ((2, 2), (3, 3), (1, 1), False)):
        ours = _randomized(SwinTransformerBlock(8, size, 2, window, shift, always))
        theirs = ts.SwinTransformerBlock(8, size, num_heads=2, window_size=window, shift_size=shift,
                                         always_partition=always, mlp_ratio=2.0).eval()
        assert (theirs.window_size, theirs.shift_size) == (ours.window_size, ours.shift_size)
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(2, *size, 8)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("config", [
    dict(img_size=32, patch_size=2, embed_dim=8, depths=(2, 2), num_heads=(2, 2), window_size=4),
    dict(img_size=(20, 14), patch_size=2, embed_dim=8, depths=(2, 2, 2), num_heads=(2, 2, 4), window_size=(3, 4)),
    dict(img_size=24, patch_size=2, embed_dim=8, depths=(2, 2), num_heads=(2, 2), window_size=5,
         strict_img_size=False, drop_path_rate=0.2),
    dict(img_size=24, patch_size=2, embed_dim=8, depths=(2, 2, 2), num_heads=(2, 2, 2), window_size=5,
         always_partition=True, qkv_bias=False)], ids=["windows-fit", "padded-shifted-non-square", "dynamic-mask", "always-partition"])
def test_timm_swin_converts_exactly(config):
    ts = _timm_swin()
    m = _randomized(ts.SwinTransformer(num_classes=5, **config))
    size = config["img_size"] if isinstance(config["img_size"], tuple) else (config["img_size"],) * 2
    x = torch.randn(2, 3, *size)
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x), m(x), atol=1e-5, rtol=1e-4)
        md, xd = copy.deepcopy(m).double(), x.double()
        assert (execute(to_neural_graph(md, example_input=xd), xd) - md(xd)).abs().max() < 1e-12
    assert_state_equal(from_neural_graph(g, nan_copy(m, persistent_only=True), example_input=x), m)
    permute = PermuteNeurons(seed=0)  # a function-preserving permutation of the hidden neurons (the MLPs, heads)
    perm = permute.sample(g)
    assert (perm != torch.arange(perm.numel())).any()
    with torch.no_grad():
        torch.testing.assert_close(execute(permute.apply(g, perm), x), m(x), atol=1e-5, rtol=1e-4)


def test_a_block_with_a_forward_hook_is_not_claimed():
    m = _block()
    x = torch.randn(1, 5, 5, 4)
    to_neural_graph(m, example_input=x)
    m[0].register_forward_hook(lambda mod, inp, out: out * 2)
    with pytest.raises(UnsupportedModuleError, match="0 has its own forward or forward hooks|0 .* cannot be traced"):
        to_neural_graph(m, example_input=x)
