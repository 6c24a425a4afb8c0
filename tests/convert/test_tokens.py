"""Vision Transformers: patch embeddings, class / register tokens, position embeddings, token selection and
timm's packed-qkv attention, checked with the executor, the exact round trip and real-module symmetries."""
import copy
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from neuralgraph.data.graph import EDGE_KIND, token_geometry
from tests.helpers.nets import randomize
from tests.helpers.permute import (assert_isomorphic, assert_params_moved, assert_same_function,
                                   assert_state_equal, head_permutation, isomorphic, permute_features, permute_in,
                                   permute_out)


class PackedAttention(nn.Module):
    """timm's ``Attention``: one packed qkv projection, ``q_norm = Identity``, SDPA with a mask argument that
    defaults to ``None``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()

    def forward(self, x, attn_mask: Optional[torch.Tensor] = None):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), PackedAttention(dim, heads)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x, attn_mask=None):
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """timm's ``VisionTransformer`` in small: patch embedding, class (and register) tokens, a position embedding
    over every token, blocks, final norm and a ``token`` / ``avg`` / distilled (``(x[:, 0] + x[:, 1]) / 2``) head."""

    def __init__(self, dim=8, heads=2, depth=2, patch=4, prefix=1, pool="token", image=8, classes=3):
        super().__init__()
        self.pool, self.prefix = pool, prefix
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, prefix, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, prefix + (image // patch) ** 2, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, 2 * dim) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, classes)

    def forward(self, x, attn_mask: Optional[torch.Tensor] = None):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x, attn_mask=attn_mask)
        x = self.norm(x)
        if self.pool == "avg":
            x = x[:, self.prefix:].mean(dim=1)
        elif self.pool == "distilled":
            x = (x[:, 0] + x[:, 1]) / 2
        else:
            x = x[:, 0]
        return self.head(x)


class TorchvisionViT(nn.Module):
    """torchvision's ``VisionTransformer`` in small: ``reshape`` + ``permute`` into tokens, the class token
    concatenated, the position embedding added inside the encoder, ``nn.MultiheadAttention`` blocks, ``x[:, 0]``."""

    def __init__(self, dim=8, heads=2, patch=4, image=8, classes=3):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, 1 + (image // patch) ** 2, dim))
        self.ln_1, self.ln = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.heads = nn.Linear(dim, classes)

    def forward(self, x):
        n, c, h, w = x.shape
        x = self.conv_proj(x).reshape(n, self.class_token.shape[-1], -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        x = x + self.pos_embedding
        y, _ = self.self_attention(self.ln_1(x), self.ln_1(x), self.ln_1(x), need_weights=False)
        return self.heads(self.ln(x + y)[:, 0])


def _blank(m: nn.Module) -> nn.Module:
    blank = copy.deepcopy(m)
    with torch.no_grad():
        for p in blank.parameters():
            p.fill_(float("nan"))
    return blank


CASES = {
    "token": lambda: TinyViT(),
    "avg": lambda: TinyViT(pool="avg", prefix=2),
    "distilled": lambda: TinyViT(pool="distilled", prefix=2, depth=1),
    "patches": lambda: TinyViT(depth=1),  # converted with max_kernel=(3, 3): the 4x4 patch conv as patches
    "torchvision": lambda: TorchvisionViT(),
}


@pytest.mark.parametrize("name", CASES)
def test_vit_executes_and_round_trips(name):
    m = randomize(CASES[name]())
    x = torch.randn(3, 3, 8, 8)
    options = {"max_kernel": (3, 3)} if name == "patches" else {}
    g = to_neural_graph(m, example_input=x, **options)
    with torch.no_grad():
        assert torch.allclose(execute(g, x, **options), m(x), atol=1e-5)
    assert_state_equal(m, from_neural_graph(g, _blank(m)))
    kinds = set(g.edge_kind.tolist())
    assert {EDGE_KIND["tokens"], EDGE_KIND["position"], EDGE_KIND["attention"]} <= kinds
    assert (EDGE_KIND["subsample"] in kinds) == (name == "patches")


def test_class_token_and_position_embedding_are_stored_on_edges():
    """Changing one entry of the class token or the position embedding changes exactly one edge value."""
    m = randomize(TinyViT(depth=1))
    x = torch.randn(2, 3, 8, 8)
    g = to_neural_graph(m, example_input=x)
    for name, idx in (("cls_token", (0, 0, 3)), ("pos_embed", (0, 2, 5))):
        other = copy.deepcopy(m)
        with torch.no_grad():
            getattr(other, name)[idx] += 1.0
        g2 = to_neural_graph(other, example_input=x)
        diff = (g2.edge_attr != g.edge_attr).any(1)
        assert int(diff.sum()) == 1 and int(g.edge_kind[diff]) == EDGE_KIND["position"]
        assert torch.equal(g2.x, g.x)


@torch.no_grad()
def _permute_tiny_vit(m: TinyViT, gen: torch.Generator) -> None:
    """A symmetry of TinyViT: one permutation of the residual stream's channels, and per block the MLP's hidden
    neurons and the attention heads (q, k, v rows alike)."""
    dim = m.head.in_features
    stream = torch.randperm(dim, generator=gen)
    permute_out(m.patch_embed, stream)
    m.cls_token.copy_(m.cls_token[..., stream])
    m.pos_embed.copy_(m.pos_embed[..., stream])
    for blk in m.blocks:
        a = blk.attn
        rows = head_permutation(a.heads, a.head_dim, gen)
        permute_features(blk.norm1, stream)
        permute_features(blk.norm2, stream)
        permute_in(a.qkv, stream)
        permute_out(a.qkv, torch.cat([rows + k * dim for k in range(3)]))
        permute_in(a.proj, rows)
        permute_out(a.proj, stream)
        hidden = torch.randperm(blk.fc1.out_features, generator=gen)
        permute_in(blk.fc1, stream)
        permute_out(blk.fc1, hidden)
        permute_in(blk.fc2, hidden)
        permute_out(blk.fc2, stream)
    permute_features(m.norm, stream)
    permute_in(m.head, stream)


def test_vit_symmetry_gives_isomorphic_graphs():
    m = randomize(TinyViT(depth=1, image=4))
    x = torch.randn(2, 3, 4, 4)
    p = copy.deepcopy(m)
    _permute_tiny_vit(p, torch.Generator().manual_seed(1))
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    assert_isomorphic(to_neural_graph(m, example_input=x), to_neural_graph(p, example_input=x))


def test_moving_a_position_embedding_is_not_a_symmetry():
    """Swapping two tokens' position embeddings changes the function, and the graph is not isomorphic."""
    m = randomize(TinyViT(depth=1, image=4))
    x = torch.randn(2, 3, 4, 4)
    p = copy.deepcopy(m)
    with torch.no_grad():
        p.pos_embed.copy_(p.pos_embed[:, [1, 0]])
    with torch.no_grad():
        assert not torch.allclose(m(x), p(x), atol=1e-4)
    assert not isomorphic(to_neural_graph(m, example_input=x), to_neural_graph(p, example_input=x))


def test_token_operations_need_token_counts_or_refuse():
    m = randomize(TinyViT(depth=1))
    with pytest.raises(UnsupportedModuleError, match=r"<root> \(.*TinyViT\): .*pass example_input"):
        to_neural_graph(m)

    class Strided(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.embed(x)[:, ::2].mean(1))

    with pytest.raises(UnsupportedModuleError, match=r"slices tokens slice\(None, None, 2\); only a non-empty range"):
        to_neural_graph(Strided(), example_input=torch.randn(2, 6, 3))


def test_a_mask_passed_in_forward_is_still_refused():
    """Only the default (None) is traced as a constant; a model that passes a mask is refused."""
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = TinyViT(depth=1)
            self.register_buffer("mask", torch.zeros(5, 5, dtype=torch.bool))

        def forward(self, x):
            return self.vit(x, attn_mask=self.mask)

    with pytest.raises(UnsupportedModuleError, match="attention masks are not supported"):
        to_neural_graph(randomize(Masked()), example_input=torch.randn(2, 3, 8, 8))


def test_permute_neurons_on_a_vit_graph_keeps_the_function():
    """PermuteNeurons finds symmetries of a ViT graph (the MLP's hidden neurons at least) and the permuted graph
    reads back to a module computing the same function."""
    from neuralgraph.transforms import PermuteNeurons
    from neuralgraph.transforms.permute_neurons import neuron_symmetry

    m, x = randomize(TinyViT(depth=1)), torch.randn(2, 3, 8, 8)
    g = to_neural_graph(m, example_input=x)
    assert any(r.size(-1) == 16 for r in neuron_symmetry(g).groups)  # fc1's 16 hidden neurons
    mp = from_neural_graph(PermuteNeurons(seed=0)(g), m)
    assert_params_moved(m, mp)
    assert_same_function(m, mp, x)


class FeatureSlices(nn.Module):
    """An MLP on [B, T, C] sequences whose hidden features are sliced along the last dim (every spelling), then
    recombined: slices must pick features, never tokens."""

    def __init__(self, spelling: str):
        super().__init__()
        self.spelling = spelling
        self.fc1, self.fc2, self.head = nn.Linear(4, 6), nn.Linear(2, 3), nn.Linear(7, 1)

    def forward(self, x):
        h = torch.relu(self.fc1(x))                                               # [B, T, 6]
        if self.spelling == "index":
            a, b = h[:, :, :2], h[:, :, 2:]
        elif self.spelling == "ellipsis":
            a, b = h[..., :2], h[..., 2:]
        elif self.spelling == "split":
            a, b = h.split([2, 4], -1)
        else:
            a, b, c = h.chunk(3, dim=2)
            b = torch.cat([b, c], -1)
        return self.head(torch.cat([self.fc2(a), b], -1)).mean(1)                 # [B, 1]


@pytest.mark.parametrize("spelling", ["index", "ellipsis", "split", "chunk"])
def test_feature_slices_of_token_sequences(spelling):
    """x[:, :, a:b], x[..., a:b], split / chunk on the last dim of [B, T, C]: the executor reproduces the module,
    the round trip is exact, and permuting fc1's hidden neurons within each slice gives an isomorphic graph."""
    m = randomize(FeatureSlices(spelling))
    x = torch.randn(3, 5, 4)
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        assert torch.allclose(execute(g, x, tokens=True), m(x), atol=1e-5)
    assert_state_equal(m, from_neural_graph(g, _blank(m)))
    p = copy.deepcopy(m)
    with torch.no_grad():
        perm = torch.cat([torch.tensor([1, 0]), 2 + torch.randperm(4, generator=torch.Generator().manual_seed(0))])
        if spelling == "chunk":  # three slices of 2
            perm = torch.tensor([1, 0, 3, 2, 5, 4])
        permute_out(p.fc1, perm)
        permute_in(p.fc2, perm[:2])
        p.head.weight[:, 3:] = p.head.weight[:, 3:][:, perm[2:] - 2]
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p, example_input=x))


def test_mixed_token_and_feature_indexing_is_refused():
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 3), nn.Linear(1, 1)

        def forward(self, x):
            return self.fc2(self.fc1(x)[:, 1:3, 2:3])

    with pytest.raises(UnsupportedModuleError, match=r"rank-3 feature value is not supported; only slices of its "
                                                     r"last dim"):
        to_neural_graph(Both(), example_input=torch.randn(2, 5, 4))


class Hybrid(nn.Module):
    """Tokens and maps interleaved, as PVT / Twins / FastViT / MetaFormer stages do: attention on a conv stem's
    tokens, the tokens back to a (non-square) map for a depthwise conv, the map channel-last for an MLP, its
    positions merged into tokens again for a second attention, each step in one of its spellings."""

    def __init__(self, spelling: str, dim: int = 8, hidden: int = 12):
        super().__init__()
        self.spelling = spelling
        self.stem = nn.Conv2d(3, dim, 2, 2)
        self.norm, self.attn = nn.LayerNorm(dim), PackedAttention(dim, 2)
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.stem(x)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm(t))
        if self.spelling == "reshape":
            m = t.transpose(1, 2).reshape(B, C, H, W)
        elif self.spelling == "unflatten":
            m = t.transpose(1, 2).unflatten(2, (H, W))
        else:
            m = t.reshape(B, H, W, C).permute(0, 3, 1, 2)
        m = m + self.pos(m)
        cl = m.permute(0, 2, 3, 1)
        cl = cl + self.fc2(F.gelu(self.fc1(cl)))
        t = cl.reshape(B, H * W, C) if self.spelling == "channel-last" else cl.flatten(1, 2)
        t = t + self.attn(self.norm(t))
        return self.head(t.mean(1))


@pytest.mark.parametrize("spelling", ["reshape", "unflatten", "channel-last"])
def test_tokens_back_to_a_map_and_channel_last_maps_as_tokens(spelling):
    """x.transpose(1, 2).reshape(B, C, H, W), .unflatten(2, (H, W)), x.reshape(B, H, W, C) and back
    (x.reshape(B, H * W, C), x.flatten(1, 2)) on a 2 x 3 map: the executor reproduces the module (row-major
    positions), the round trip is exact, the tokens edges hold the map's shape, and permuting the MLP's hidden
    neurons gives an isomorphic graph."""
    m = randomize(Hybrid(spelling)).eval()
    x = torch.randn(3, 3, 4, 6)
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        assert torch.allclose(execute(g, x), m(x), atol=1e-5)
    assert_state_equal(m, from_neural_graph(g, _blank(m)))
    rows = g.geometry[g.edge_geom[g.edge_kind == EDGE_KIND["tokens"]].long()]
    assert {tuple(r[:5].tolist()) for r in rows} == {(0, 6, 2, 0, 0), (0, 6, 2, 2, 3)}  # to tokens, to a 2 x 3 map
    with pytest.raises(ValueError, match="lays out 6 positions here, but this input gives 12: it was converted for"):
        execute(g, torch.randn(3, 3, 4, 12))  # another input size: refused, not padded or cut
    p = copy.deepcopy(m)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    permute_out(p.fc1, perm)
    permute_in(p.fc2, perm)
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p, example_input=x))


def test_one_token_back_to_a_1x1_map():
    """PVT-v2's last stage at a small input: one token, ``x.transpose(1, 2).view(B, C, 1, 1)`` is a 1 x 1 map for
    the depthwise conv (not a channel shuffle of C groups of one channel)."""
    m = randomize(Hybrid("reshape")).eval()
    x = torch.randn(3, 3, 2, 2)
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        assert torch.allclose(execute(g, x), m(x), atol=1e-5)
    assert_state_equal(m, from_neural_graph(g, _blank(m)))


class PiT(nn.Module):
    """timm's PiT in small: a position embedding with one value per channel and map position (``[1, C, H, W]``)
    added to the conv stem's map, class tokens concatenated, attention, the tokens split back with bounds read off
    the class tokens' traced shape (``x[:, :n]``, ``x[:, n:]``), the patch tokens back to the map for a strided
    depthwise conv, the class tokens through a Linear."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 2, 2)
        self.pos_embed = nn.Parameter(torch.randn(1, dim, 2, 3))
        self.cls_token = nn.Parameter(torch.randn(1, 2, dim))
        self.block = Block(dim, 2, 2 * dim)
        self.pool, self.fc = nn.Conv2d(dim, dim, 3, 2, 1, groups=dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.stem(x) + self.pos_embed
        B, C, H, W = x.shape
        cls = self.cls_token.expand(B, -1, -1)
        n = cls.shape[1]
        x = self.block(torch.cat([cls, x.flatten(2).transpose(1, 2)], 1))
        cls, x = x[:, :n], x[:, n:]
        x = self.pool(x.transpose(1, 2).reshape(B, C, H, W))
        return self.head(self.fc(cls).mean(1) + x.mean((2, 3)))


def test_a_position_embedding_per_map_position_and_traced_token_bounds():
    """PiT: the ``[1, C, H, W]`` position embedding is stored on ``position`` edges placed at map positions (a 2 x 3
    map), the traced bounds resolve, the executor reproduces the module and the round trip is exact; swapping two
    positions' embeddings changes the function and the graph."""
    m = randomize(PiT()).eval()
    x = torch.randn(3, 3, 4, 6)
    g = to_neural_graph(m, example_input=x)
    with torch.no_grad():
        assert torch.allclose(execute(g, x), m(x), atol=1e-5)
    assert_state_equal(m, from_neural_graph(g, _blank(m)))
    rows = g.geometry[g.edge_geom[g.edge_kind == EDGE_KIND["position"]].long()]
    assert {tuple(r[3:5].tolist()) for r in rows} == {(0, 0), (2, 3)}  # class tokens; the map's positions
    p = copy.deepcopy(m)
    with torch.no_grad():
        p.pos_embed.copy_(p.pos_embed[..., [1, 0, 2]])
        assert not torch.allclose(m(x), p(x), atol=1e-4)
    assert not isomorphic(g, to_neural_graph(p, example_input=x))


def test_token_slices_with_two_traced_bounds_are_refused():
    class Window(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(x)
            a, b = x.shape[1] // 4, x.shape[1] // 2
            return h[:, a:b].mean(1)

    with pytest.raises(UnsupportedModuleError, match="bounds computed in forward; only one computed bound"):
        to_neural_graph(Window(), example_input=torch.randn(2, 8, 4))


def test_a_reshape_mixing_tokens_and_channels_is_refused():
    class Mixing(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(2, 1)

        def forward(self, x):
            B, T, C = x.shape
            return self.fc2(self.fc1(x).reshape(B, T * 2, 2)).mean(1)

    with pytest.raises(UnsupportedModuleError, match=r"reshape to .* is not supported; .*laying the positions"):
        to_neural_graph(Mixing(), example_input=torch.randn(2, 6, 4))
    class Windows(nn.Module):  # MaxViT's window partition starts by splitting each spatial dim in two
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            B, C, H, W = x.shape
            return self.conv(x).view(B, 4, H // 2, 2, W // 2, 2).mean((2, 3, 4, 5))

    with pytest.raises(UnsupportedModuleError, match=r"4-d map \(2, 2, 2, 2\), beyond the 2-d maps .*window"):
        to_neural_graph(Windows(), example_input=torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="does not hold 6 tokens"):
        token_geometry(0, 6, False, 2, (2, 2))
