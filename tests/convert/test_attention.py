"""Attention (Neural Graphs appendix C.4): semantics, exact round trip and head symmetries."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, from_neural_graph, to_neural_graph
from neuralgraph.convert import clear_plan_cache, get_plan
from neuralgraph.convert import plan as plan_mod
from neuralgraph.data.graph import EDGE_KIND, POOL, ROLE
from tests.helpers.nets import randomize
from tests.helpers.permute import (assert_isomorphic, assert_params_moved, assert_same_function,
                                   assert_state_equal, head_permutation, isomorphic, permute_encoder_layer,
                                   permute_heads, permute_in, permute_out)

ATTN = EDGE_KIND["attention"]


class SelfAttention(nn.Module):
    def __init__(self, embed=8, heads=2, **kw):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed, heads, **kw)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


class CrossAttention(nn.Module):
    """Queries, keys and values from three inputs (keys / values of another length and width)."""

    def __init__(self, embed=8, heads=2, **kw):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed, heads, **kw)

    def forward(self, q, k, v):
        out, _ = self.attn(q, k, v)
        return out


class ViTBlock(nn.Module):
    """A pre-norm transformer block written by hand; ``form`` picks how attention is spelled."""

    def __init__(self, dim=8, heads=2, mlp=16, form="sdpa"):
        super().__init__()
        self.heads, self.form = heads, form
        self.scale = (dim // heads) ** -0.5
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(0.1)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim)

    def forward(self, x):
        B, T, C = x.shape
        h = self.ln1(x)
        q = self.q(h).view(B, T, self.heads, -1).transpose(1, 2)
        k = self.k(h).view(B, T, self.heads, -1).transpose(1, 2)
        v = self.v(h).view(B, T, self.heads, C // self.heads).transpose(1, 2)
        if self.form == "sdpa":
            a = F.scaled_dot_product_attention(q, k, v)
        elif self.form == "matmul":  # torch.softmax, scale as a constant
            a = torch.softmax(q @ k.transpose(-2, -1) * self.scale, -1) @ v
        elif self.form == "method":  # .softmax method, division, dropout on the probabilities
            a = self.drop((q @ k.transpose(-2, -1) / math.sqrt(self.q.out_features // self.heads)).softmax(dim=-1)) @ v
        else:  # F.softmax, queries scaled first by a size expression
            q = q * q.size(-1) ** -0.5
            a = torch.matmul(F.softmax(q @ k.transpose(2, 3), dim=-1), v)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, C))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


def permute_vit(m: ViTBlock, gen: torch.Generator) -> ViTBlock:
    p = copy.deepcopy(m)
    rows = head_permutation(m.heads, m.q.out_features // m.heads, gen)
    for lin in (p.q, p.k, p.v):
        permute_out(lin, rows)
    permute_in(p.proj, rows)
    hidden = torch.randperm(m.fc1.out_features, generator=gen)
    permute_out(p.fc1, hidden), permute_in(p.fc2, hidden)
    return p


def tokens_first(f):
    """A module on ``[T, B, d]`` tensors as a function of ``[B, T, d]`` ones (the executor's layout)."""
    return lambda *xs: f(*(x.transpose(0, 1) for x in xs)).transpose(0, 1)


def check_semantics_and_roundtrip(m, xs, batch_first=True):
    g = to_neural_graph(m)
    run = m if batch_first else tokens_first(m)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, xs), run(*xs), atol=1e-5, rtol=1e-5)
    assert_state_equal(m, from_neural_graph(g, m))
    plan = get_plan(m)
    back = plan.state_dict(g)
    assert back.keys() == dict(m.named_parameters()).keys()
    for k, v in back.items():
        assert torch.equal(v, m.get_parameter(k)), k
    return g


# ------------------------------------------------------------------------------- MultiheadAttention
def test_mha_structure_and_tap_layout():
    m = randomize(SelfAttention(4, 2))
    g = to_neural_graph(m)
    mha = m.attn
    # 4 inputs, 2 virtual head neurons, 4 head neurons, 4 outputs
    assert g.num_nodes == 14
    roles = g.node_role.tolist()
    assert roles.count(ROLE["input"]) == 4 and roles.count(ROLE["virtual"]) == 2
    assert roles.count(ROLE["output"]) == 4
    virtual = (g.node_role == ROLE["virtual"]).nonzero().view(-1)
    heads = g.edge_index[1, (g.edge_kind == ATTN)].unique()
    assert heads.numel() == 4 and g.x[heads].eq(0).all() and g.node_act[heads].eq(0).all()
    assert g.x[virtual].eq(0).all() and g.node_layer[virtual].eq(0).all() and g.node_layer[heads].eq(1).all()
    inputs = g.input_nodes().tolist()
    w = mha.in_proj_weight.detach().view(3, 4, 4)
    b = mha.in_proj_bias.detach().view(3, 4)
    head_rank = {int(h): r for r, h in enumerate(heads)}
    members = {}
    for e in (g.edge_kind == ATTN).nonzero().view(-1).tolist():
        s, d = g.edge_index[:, e].tolist()
        o = head_rank[d]
        assert g.edge_attr[e, 3:].eq(0).all()
        if g.node_role[s] == ROLE["virtual"]:  # biases, and head membership
            assert torch.equal(g.edge_attr[e, :3], b[:, o])
            members.setdefault(s, set()).add(o)
        else:
            assert torch.equal(g.edge_attr[e, :3], w[:, o, inputs.index(s)])
    assert sorted(map(sorted, members.values())) == [[0, 1], [2, 3]]
    # the output projection is an ordinary linear layer from the head neurons
    lin = g.edge_kind == EDGE_KIND["linear"]
    assert lin.sum() == 16 and set(g.edge_index[0, lin].tolist()) == set(heads.tolist())
    assert get_plan(m).layers == [("attn.in_proj_weight", "attn.in_proj_bias"),
                                  ("attn.out_proj.weight", "attn.out_proj.bias")]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_mha_self_attention(batch_first, bias, heads):
    m = randomize(SelfAttention(8, heads, bias=bias, batch_first=batch_first), seed=heads)
    g = check_semantics_and_roundtrip(m, [torch.randn(3, 5, 8)], batch_first)
    virtual = g.node_role == ROLE["virtual"]
    assert virtual.sum() == heads
    bias_edges = g.edge_attr[virtual[g.edge_index[0]]]
    assert bias_edges.shape[0] == 8 and (bias_edges[:, :3].ne(0).any() == bias)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dims", [dict(), dict(kdim=5, vdim=3), dict(kdim=6, vdim=6)])
def test_mha_cross_attention(batch_first, bias, dims):
    """Distinct query / key / value inputs; separate projection weights when kdim / vdim differ."""
    m = randomize(CrossAttention(8, 2, bias=bias, batch_first=batch_first, **dims))
    kdim, vdim = dims.get("kdim", 8), dims.get("vdim", 8)
    xs = [torch.randn(3, 5, 8), torch.randn(3, 7, kdim), torch.randn(3, 7, vdim)]
    g = check_semantics_and_roundtrip(m, xs, batch_first)
    assert m.attn._qkv_same_embed_dim == (not dims or dims["kdim"] == 8)
    # the three inputs are 8 + kdim + vdim input neurons; each role's edges carry only its own tap
    inputs = g.input_nodes()
    assert inputs.numel() == 8 + kdim + vdim
    for role, src in enumerate(inputs.split([8, kdim, vdim])):
        from_role = (g.edge_kind == ATTN) & torch.isin(g.edge_index[0], src)
        taps = g.edge_attr[from_role, :3]
        assert from_role.sum() == 8 * src.numel()
        assert taps[:, role].ne(0).all() and taps[:, [t for t in range(3) if t != role]].eq(0).all()


def test_mha_query_is_key_is_value_edges_carry_all_taps_once():
    m = randomize(SelfAttention(8, 2))
    g = to_neural_graph(m)
    from_inputs = (g.edge_kind == ATTN) & (g.node_role[g.edge_index[0]] == ROLE["input"])
    assert from_inputs.sum() == 64 and g.edge_attr[from_inputs, :3].ne(0).all()


# --------------------------------------------------------------------------- transformer encoders
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "callable": F.gelu, "module": nn.GELU()}


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_transformer_encoder_layer(norm_first, act):
    torch.manual_seed(0)
    m = randomize(nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, activation=ACTIVATIONS[act],
                                                           batch_first=True, norm_first=norm_first)))
    x = torch.randn(3, 5, 8)
    g = check_semantics_and_roundtrip(m, [x])
    assert (g.edge_kind == EDGE_KIND["layernorm"]).sum() == 16
    assert (g.edge_kind == EDGE_KIND["residual"]).sum() == 16
    p = copy.deepcopy(m)
    permute_encoder_layer(p[0], torch.Generator().manual_seed(1))
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p))


def test_transformer_encoder_layer_tokens_first_and_without_bias():
    m = randomize(nn.Sequential(nn.TransformerEncoderLayer(8, 4, 12, dropout=0.0, bias=False)))
    check_semantics_and_roundtrip(m, [torch.randn(2, 6, 8)], batch_first=False)


def test_transformer_encoder_with_final_norm():
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, activation="gelu")
    m = randomize(nn.Sequential(nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(8), enable_nested_tensor=False)))
    x = torch.randn(3, 5, 8)
    g = check_semantics_and_roundtrip(m, [x])
    assert (g.node_role == ROLE["virtual"]).sum() == 4
    assert (g.edge_kind == EDGE_KIND["layernorm"]).sum() == 8 * 5
    p = copy.deepcopy(m)
    gen = torch.Generator().manual_seed(3)
    for lay in p[0].layers:
        permute_encoder_layer(lay, gen)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p))


SECOND = {"encoder": lambda: nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)),
          "vit": lambda: ViTBlock(form="matmul"), "mha": lambda: SelfAttention(8, 4, batch_first=True)}


@pytest.mark.parametrize("net", sorted(SECOND))
def test_second_model_converts_by_gather(monkeypatch, net):
    clear_plan_cache()
    calls = []
    real = plan_mod.trace_module
    monkeypatch.setattr(plan_mod, "trace_module", lambda *a, **k: calls.append(1) or real(*a, **k))
    a, b = randomize(SECOND[net](), 0), randomize(SECOND[net](), 1)
    ga, gb = to_neural_graph(a), to_neural_graph(b)
    assert len(calls) == 1
    assert torch.equal(ga.edge_index, gb.edge_index) and not torch.equal(ga.edge_attr, gb.edge_attr)
    assert_state_equal(b, from_neural_graph(gb, a))
    assert_state_equal(a, from_neural_graph(ga, b))
    assert len(calls) == 1
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(execute(gb, [x]), b(x), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------ hand-written attention
@pytest.mark.parametrize("form", ["sdpa", "matmul", "method", "functional"])
def test_vit_block(form):
    m = randomize(ViTBlock(form=form))
    x = torch.randn(3, 5, 8)
    g = check_semantics_and_roundtrip(m, [x])
    assert (g.node_role == ROLE["virtual"]).sum() == 2 and (g.edge_kind == ATTN).sum() == 64 + 8
    assert get_plan(m).layers[:3] == [("q.weight", "q.bias"), ("k.weight", "k.bias"), ("v.weight", "v.bias")]
    p = permute_vit(m, torch.Generator().manual_seed(2))
    assert_params_moved(m, p)
    assert_same_function(m, p, x)
    assert_isomorphic(g, to_neural_graph(p))


def test_vit_block_same_graph_as_multihead_attention():
    """The hand-written block and nn.MultiheadAttention with the same weights give one graph."""
    vit = randomize(ViTBlock())
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([vit.q.weight, vit.k.weight, vit.v.weight]))
        mha.in_proj_bias.copy_(torch.cat([vit.q.bias, vit.k.bias, vit.v.bias]))
        mha.out_proj.load_state_dict(vit.proj.state_dict())

    class Attn(nn.Module):
        def __init__(self, attn):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, x, x)[0]

    class HandWritten(nn.Module):
        def __init__(self, vit):
            super().__init__()
            self.q, self.k, self.v, self.proj = vit.q, vit.k, vit.v, vit.proj

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = (f(x).view(B, T, 2, 4).transpose(1, 2) for f in (self.q, self.k, self.v))
            return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C))

    g1, g2 = to_neural_graph(Attn(mha)), to_neural_graph(HandWritten(vit))
    for key in ("edge_index", "edge_attr", "x", "edge_kind", "node_layer", "node_role", "node_act"):
        assert torch.equal(g1[key], g2[key]), key


# ------------------------------------------------------------------------------- head symmetries
def test_mha_kdim_vdim_head_symmetry():
    m = randomize(CrossAttention(8, 2, kdim=5, vdim=3, batch_first=True))
    xs = [torch.randn(2, 4, 8), torch.randn(2, 6, 5), torch.randn(2, 6, 3)]
    p = copy.deepcopy(m)
    permute_heads(p.attn, head_permutation(2, 4, torch.Generator().manual_seed(0)))
    assert_params_moved(m, p)
    with torch.no_grad():
        torch.testing.assert_close(m(*xs), p(*xs), atol=1e-5, rtol=1e-5)
    assert_isomorphic(to_neural_graph(m), to_neural_graph(p))


@pytest.mark.parametrize("bias", [True, False])
def test_moving_a_neuron_to_another_head_is_not_a_symmetry(bias):
    """Swapping neuron 0 of head 0 with neuron 0 of head 1 (q, k, v rows and W_O columns alike) changes
    the function, and the graphs differ only in which virtual head neuron feeds the two neurons."""
    m = randomize(SelfAttention(8, 2, bias=bias, batch_first=True))
    x = torch.randn(3, 5, 8)
    p = copy.deepcopy(m)
    rows = torch.arange(8)
    rows[0], rows[4] = 4, 0
    permute_heads(p.attn, rows)
    with torch.no_grad():
        assert not torch.allclose(m(x), p(x), atol=1e-3)
    g, gp = to_neural_graph(m), to_neural_graph(p)
    assert sorted(map(tuple, g.edge_attr.tolist())) == sorted(map(tuple, gp.edge_attr.tolist()))
    assert not isomorphic(g, gp)
    # while a permutation within heads is one
    within = torch.tensor([1, 0, 3, 2, 4, 6, 5, 7])
    q = copy.deepcopy(m)
    permute_heads(q.attn, within)
    assert_same_function(m, q, x)
    assert isomorphic(g, to_neural_graph(q))


# ------------------------------------------------------------------------------ token pooling
class Classifier(nn.Module):
    def __init__(self, batch_first=True, pool="mean"):
        super().__init__()
        self.batch_first, self.pool = batch_first, pool
        self.embed = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.embed(x))
        h = self.attn(h, h, h)[0] + h
        t = 1 if self.batch_first else 0
        return self.fc(h.mean(t) if self.pool == "mean" else h.amax(dim=t))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooling_over_tokens(batch_first, pool):
    m = randomize(Classifier(batch_first, pool))
    x = torch.randn(3, 5, 3)
    g = to_neural_graph(m)
    pooled = g.node_pool == POOL[f"global_{'avg' if pool == 'mean' else 'max'}"]
    assert pooled.sum() == 8
    with torch.no_grad():
        torch.testing.assert_close(execute(g, [x]), m(x if batch_first else x.transpose(0, 1)), atol=1e-5,
                                   rtol=1e-5)
    assert_state_equal(m, from_neural_graph(g, m))


# ------------------------------------------------------------------------------------ unsupported
class Masked(nn.Module):
    def __init__(self, which):
        super().__init__()
        self.which = which
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x, mask):
        if self.which == "attn_mask":
            return self.attn(x, x, x, attn_mask=mask)[0]
        return self.attn(x, x, x, key_padding_mask=mask)[0]


class Weights(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        out, weights = self.attn(x, x, x)
        return out, weights


class TwoInputs(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.net = module

    def forward(self, a, b):
        return self.net(a, b)


MHA = r"attn \(torch\.nn\.modules\.activation\.MultiheadAttention\)"


@pytest.mark.parametrize("model, match", [
    (Masked("attn_mask"), MHA + r": is called with attn_mask; attention masks are not supported"),
    (Masked("key_padding_mask"), MHA + r": is called with key_padding_mask"),
    (Weights(), MHA + r": its attention weights \(getitem_1\) are used"),
    (SelfAttention(4, 2, add_bias_kv=True), MHA + r": add_bias_kv=True"),
    (SelfAttention(4, 2, add_zero_attn=True), MHA + r": add_zero_attn=True"),
    (TwoInputs(nn.Transformer(8, 2, 1, 1, 16, batch_first=True)),
     r"net \(torch\.nn\.modules\.transformer\.Transformer\) is not supported"),
    (TwoInputs(nn.TransformerDecoderLayer(8, 2, 16)), r"net \(torch\.nn\.modules\.transformer\."
                                                      r"TransformerDecoderLayer\) is not supported"),
])
def test_unsupported_attention_names_module_and_type(model, match):
    with pytest.raises(UnsupportedModuleError, match=match):
        to_neural_graph(model)


def test_unsupported_encoder_mask_and_activation():
    class WithMask(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)

        def forward(self, x, mask):
            return self.enc(x, src_mask=mask)

    with pytest.raises(UnsupportedModuleError, match=r"enc \(torch\.nn\.modules\.transformer\."
                                                     r"TransformerEncoderLayer\): is called with src_mask"):
        to_neural_graph(WithMask())
    odd = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, activation=lambda t: t * torch.sigmoid(t)))
    with pytest.raises(UnsupportedModuleError, match=r"0 \(.*TransformerEncoderLayer\): activation .* is not a "
                                                     r"known element-wise function"):
        to_neural_graph(odd)


class Custom(ViTBlock):
    def __init__(self, variant):
        super().__init__()
        self.variant = variant
        self.attention_bias = nn.Parameter(torch.randn(2, 1, 1))  # per head (LeViT's are per head and offset)

    def forward(self, x):
        B, T, C = x.shape
        q = self.q(x).view(B, T, 2, 4).transpose(1, 2)
        k = self.k(x).view(B, T, 2, 4).transpose(1, 2)
        v = self.v(x).view(B, T, 2, 4).transpose(1, 2)
        if self.variant == "scale":
            a = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
        elif self.variant == "bias":
            a = torch.softmax(q @ k.transpose(-2, -1) * 0.5 + self.attention_bias, -1) @ v
        elif self.variant == "mask":
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.variant == "no_heads":
            a = F.scaled_dot_product_attention(q, k, self.v(x).unsqueeze(1))
        elif self.variant == "reuse":
            a = F.scaled_dot_product_attention(q, k, v) + v
        elif self.variant == "swapped":
            a = F.scaled_dot_product_attention(q, k.transpose(-2, -1), v)
        else:  # merges (head_dim, heads) instead of (heads, head_dim)
            a = F.scaled_dot_product_attention(q, k, v).permute(0, 2, 3, 1)
        return self.proj(a.transpose(1, 2).reshape(B, T, C) if self.variant != "merge" else a.reshape(B, T, C))


@pytest.mark.parametrize("variant, match", [
    ("scale", r"scales q kᵀ by 1, not by 1/sqrt\(head_dim\) = 0\.5"),
    ("bias", r"a term is added to the attention scores \(add, the input of softmax\): an attention bias"),
    ("mask", r"causal \(masked\) attention is not supported"),
    ("no_heads", r"cannot prove that its value \(unsqueeze\) is a head-split nn\.Linear projection"),
    ("reuse", r"transpose_2 \(on the value path\) is also used elsewhere"),
    ("swapped", r"its key has dims \(batch, heads, head_dim, tokens\), expected \(batch, heads, tokens, "
                r"head_dim\)"),
    ("merge", r"reshape merges dims \(batch, tokens, head_dim, heads\)"),
])
def test_hand_written_attention_that_cannot_be_proven(variant, match):
    with pytest.raises(UnsupportedModuleError, match=r"<root> \(.*Custom\): attention at .*: " + match):
        to_neural_graph(Custom(variant))


def test_token_selection_converts_and_layouts_must_agree():
    class ClassToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.fc = nn.MultiheadAttention(4, 2, batch_first=True), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.attn(x, x, x)[0][:, 0])

    m, x = randomize(ClassToken()), torch.randn(3, 5, 4)
    with torch.no_grad():
        assert torch.allclose(execute(to_neural_graph(m), x), m(x), atol=1e-5)

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.MultiheadAttention(4, 2, batch_first=True)
            self.b = nn.MultiheadAttention(4, 2)

        def forward(self, x):
            return self.b(*(self.a(x, x, x)[0],) * 3)[0]

    with pytest.raises(UnsupportedModuleError, match=r"b \(.*MultiheadAttention\): puts tokens on dim 0 but a on "
                                                     r"dim 1; all attention layers of a network must agree"):
        to_neural_graph(Mixed())


def test_attention_needs_three_edge_features():
    with pytest.raises(UnsupportedModuleError, match=r"at least 3 edge features"):
        to_neural_graph(SelfAttention(4, 2), max_kernel=(1, 1))


class HandWrittenCross(nn.Module):
    """Queries from ``x``, keys and values from a context of another length and width."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = nn.Linear(8, 6), nn.Linear(5, 6), nn.Linear(5, 6), nn.Linear(6, 4)

    def forward(self, x, c):
        B, T, _ = x.shape
        S = c.size(1)
        q = self.q(x).view(B, T, 3, 2).transpose(1, 2)
        k = self.k(c).view(B, S, 3, 2).permute(0, 2, 3, 1)  # keys already transposed: [B, H, d, S]
        v = self.v(c).view(B, S, 3, 2).transpose(1, 2)
        a = (q @ k * 2 ** -0.5).softmax(-1) @ v
        return self.out(a.transpose(1, 2).flatten(2))


def test_hand_written_cross_attention():
    m = randomize(HandWrittenCross())
    g = check_semantics_and_roundtrip(m, [torch.randn(2, 3, 8), torch.randn(2, 7, 5)])
    assert (g.node_role == ROLE["virtual"]).sum() == 3 and g.input_nodes().numel() == 13


def test_stacked_blocks_with_and_without_example_input():
    m = randomize(nn.Sequential(ViTBlock(form="sdpa"), ViTBlock(form="functional")))
    x = torch.randn(2, 4, 8)
    g = check_semantics_and_roundtrip(m, [x])
    assert torch.equal(to_neural_graph(m, example_input=x).edge_attr, g.edge_attr)
    assert (g.node_role == ROLE["virtual"]).sum() == 4


def test_stacked_multihead_attention_layers():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.MultiheadAttention(8, 2), nn.MultiheadAttention(8, 4, kdim=5, vdim=5)

        def forward(self, x, c):
            h = self.a(x, x, x)[0]
            return self.b(h, c, c)[0].mean(0)

    m = randomize(Stack())
    xs = [torch.randn(2, 3, 8), torch.randn(2, 4, 5)]
    g = to_neural_graph(m)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, xs), m(*(x.transpose(0, 1) for x in xs)), atol=1e-5, rtol=1e-5)
    assert_state_equal(m, from_neural_graph(g, m))


@st.composite
def attention_nets(draw):
    """(network, its symmetry, input widths, batch_first): encoder layers, cross-attention with
    kdim / vdim, hand-written blocks of every spelling."""
    heads, head_dim = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    e = heads * head_dim
    kind = draw(st.sampled_from(["encoder", "mha", "vit"]))
    if kind == "encoder":
        batch_first = draw(st.booleans())
        layer = nn.TransformerEncoderLayer(e, heads, draw(st.integers(1, 6)), dropout=0.0, batch_first=batch_first,
                                           norm_first=draw(st.booleans()), bias=draw(st.booleans()),
                                           activation=draw(st.sampled_from(["relu", "gelu"])))
        m = nn.Sequential(layer)

        def permute(gen):
            p = copy.deepcopy(m)
            permute_encoder_layer(p[0], gen)
            return p
        return m, permute, [e], batch_first
    if kind == "mha":
        kdim, vdim = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        batch_first = draw(st.booleans())
        m = CrossAttention(e, heads, kdim=kdim, vdim=vdim, bias=draw(st.booleans()), batch_first=batch_first)

        def permute(gen):
            p = copy.deepcopy(m)
            permute_heads(p.attn, head_permutation(heads, head_dim, gen))
            return p
        return m, permute, [e, kdim, vdim], batch_first
    m = ViTBlock(e, heads, draw(st.integers(1, 6)), form=draw(st.sampled_from(["sdpa", "matmul", "method",
                                                                                 "functional"])))
    return m, lambda gen: permute_vit(m, gen), [e], True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=attention_nets(), seed=st.integers(0, 2**16), tokens=st.integers(1, 4))
def test_random_attention_networks(net, seed, tokens):
    """Executor semantics, exact round trip and a random head / hidden-neuron symmetry."""
    m, permute, widths, batch_first = net
    randomize(m, seed)
    gen = torch.Generator().manual_seed(seed)
    # the queries have `tokens` tokens, keys / values (cross-attention) one more
    xs = [torch.randn(2, tokens + (k > 0), d, generator=gen) for k, d in enumerate(widths)]
    g = check_semantics_and_roundtrip(m, xs, batch_first)
    p = permute(gen).eval()
    run = (lambda mod: mod) if batch_first else tokens_first
    with torch.no_grad():
        torch.testing.assert_close(run(m)(*xs), run(p)(*xs), atol=1e-5, rtol=1e-5)
    assert_isomorphic(g, to_neural_graph(p))
