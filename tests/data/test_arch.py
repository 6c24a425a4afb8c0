"""Architectures: exact rebuild, published Wild Park semantics, batched forwards == modules."""
import pytest
import torch
import torch.fx
import torch.nn.functional as F

from neuralgraph.data.arch import build_model, example_input, validate_wildpark
from neuralgraph.zoo.presets import ARCH2_PADDING, arch1, arch2, rng_for, sample_wildpark
from neuralgraph.zoo.train import FORWARDS, init_member

WP = {"family": "wildpark", "in_channels": 1, "n_classes": 10, "channels": [16, 8, 32, 4],
      "kernels": [3, 7, 5, 3], "activations": ["relu", "tanh", "none", "gelu"], "residual": [-1, -1, 0, 1]}


def published_forward(sd, cfg, x):
    """The Wild Park forward as specified (skip from layer j's activated output, added in place
    into the first min channels of layer i's conv output, before i's activation)."""
    acts = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
            "leaky_relu": F.leaky_relu, "none": lambda t: t}
    saved = {}
    for i in range(cfg["n_layers"]):
        k = cfg["kernel_size"][i]
        x = F.conv2d(x, sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"], padding=k // 2)
        j = cfg["residual"][i]
        if j > -1:
            ch = min(cfg["channels"][j + 1], cfg["channels"][i + 1])
            x = x.clone()
            x[:, :ch] += saved[j][:, :ch]
        x = acts[cfg["activation"][i]](x)
        if i in cfg["residual"]:
            saved[i] = x
    return F.linear(x.mean((-2, -1)), sd["fc.weight"], sd["fc.bias"])


def test_wildpark_matches_published_semantics_and_traces():
    torch.manual_seed(0)
    m = build_model(WP)
    cfg = {"n_layers": 4, "channels": [1, 16, 8, 32, 4], "kernel_size": WP["kernels"],
           "residual": WP["residual"], "activation": WP["activations"]}
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(m(x), published_forward(m.state_dict(), cfg, x), atol=1e-6)
    assert list(m.state_dict()) == [f"layers.{i}.{p}" for i in range(4) for p in ("weight", "bias")] + \
        ["fc.weight", "fc.bias"]
    gm = torch.fx.symbolic_trace(m)
    assert torch.allclose(gm(x), m(x))
    # rebuilt from its description: same class, same parameter names and shapes
    m2 = build_model(m.desc)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2(x), m(x))


def test_validation_errors():
    with pytest.raises(ValueError, match="choose from"):
        build_model({"family": "resnet"})
    with pytest.raises(ValueError, match="at least one layer"):
        validate_wildpark(dict(WP, residual=[-1, 0, -1, -1]))
    with pytest.raises(ValueError, match="odd"):
        validate_wildpark(dict(WP, kernels=[3, 4, 5, 3]))


def test_sampled_wildpark_recipe():
    for s in range(50):
        d = sample_wildpark(rng_for(0, s, 0), 1, 10, (8, 8))
        n = len(d["channels"])
        assert 2 <= n <= 5 and set(d["channels"]) <= {4, 8, 16, 32} and set(d["kernels"]) <= {3, 5, 7}
        assert all(j == -1 or j < i - 1 for i, j in enumerate(d["residual"]))
        build_model(d)


@pytest.mark.parametrize("size", sorted(ARCH2_PADDING))
def test_arch2_same_shapes_for_every_resolution(size):
    m = build_model(arch2("relu", (size, size)))
    shapes = [tuple(v.shape) for v in m.state_dict().values()]
    assert shapes == [(8, 1, 5, 5), (8,), (6, 8, 5, 5), (6,), (4, 6, 2, 2), (4,), (20, 36), (20,), (10, 20), (10,)]
    assert m(torch.zeros(2, 1, size, size)).shape == (2, 10)


@pytest.mark.parametrize("desc", [WP, dict(WP, residual=[-1, -1, -1, 0]), arch1("tanh", (8, 8)),
                                  arch2("relu", (16, 16))], ids=["wp", "wp2", "arch1", "arch2"])
def test_batched_forward_equals_modules(desc):
    desc = build_model(desc).desc
    shapes = {k: v.shape for k, v in build_model(desc).state_dict().items()}
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    members = [init_member(shapes, "he_normal", 0.1, g) for g in gens]
    for mem in members:  # non-zero biases too
        for k in mem:
            if k.endswith("bias"):
                mem[k].normal_(0, 0.1)
    p = {k: torch.stack([m[k] for m in members]) for k in shapes}
    x = example_input(desc, 4).normal_()
    out = FORWARDS[desc["family"]](desc, p, x.unsqueeze(1).expand(-1, 3, *x.shape[1:]))   # [B, M, K]
    for i, mem in enumerate(members):
        m = build_model(desc)
        m.load_state_dict(mem)
        assert torch.allclose(out[:, i], m(x), atol=1e-5)


def test_siren_matches_dwsnets_keys():
    m = build_model({"family": "siren", "in_dim": 2, "hidden": [32, 32], "out_dim": 1, "w0": 30.0,
                     "output_offset": 0.5})
    assert [k for k in m.state_dict()] == [f"seq.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    assert m(torch.zeros(7, 2)).shape == (7, 1)
