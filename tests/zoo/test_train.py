"""Vectorised training: members are independent runs; the optimizers match torch's."""
import numpy as np
import pytest
import torch

from neuralgraph.zoo.datasets import ImageData
from neuralgraph.zoo.train import MemberSpec, TrainConfig, VectorOptimizer, train_group

DESC = {"family": "wildpark", "in_channels": 1, "n_classes": 10, "input_size": [8, 8], "channels": [4, 8, 4],
        "kernels": [3, 5, 3], "activations": ["relu", "tanh", "gelu"], "residual": [-1, -1, 0]}


@pytest.fixture(scope="module")
def tiny_data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(96) % 10
    x = torch.randn(96, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1) * 0.3
    return ImageData("tiny", x[:64], y[:64], x[64:], y[64:])


def hp(opt, lr, dropout=0.0):
    return {"optimizer": opt, "learning_rate": lr, "l2": 1e-4, "dropout": dropout, "init_std": 0.1,
            "init": "glorot_normal", "batch_size": 16}


def test_group_training_equals_separate_runs(tiny_data):
    cfg = TrainConfig(epochs=2, checkpoint_epochs=(0, 1, 2), batch_size=16, train_eval_size=32)
    specs = [MemberSpec("a", 1, hp("adam", 3e-3)), MemberSpec("b", 2, hp("sgd", 3e-2)),
             MemberSpec("c", 3, hp("rmsprop", 1e-3))]
    group = train_group(DESC, specs, tiny_data, cfg, 0.5, group_seed=0)
    for spec, res in zip(specs, group):
        alone = train_group(DESC, [spec], tiny_data, cfg, 0.5, group_seed=0)[0]
        assert [c["epoch"] for c in res.checkpoints] == [0, 1, 2]
        for k, v in res.params.items():
            assert v.shape[0] == 3
            np.testing.assert_allclose(v, alone.params[k], rtol=1e-4, atol=1e-5)
        assert abs(res.checkpoints[-1]["test_accuracy"] - alone.checkpoints[-1]["test_accuracy"]) < 1e-6
        for c in res.checkpoints:
            assert 0 <= c["test_accuracy"] <= 1 and np.isfinite(c["train_loss"])
    assert res.extra["train_examples"] == 32


def test_dropout_and_divergence_are_handled(tiny_data):
    cfg = TrainConfig(epochs=2, checkpoint_epochs=(2,), batch_size=16, train_eval_size=32)
    specs = [MemberSpec("ok", 1, hp("adam", 1e-3, dropout=0.5)), MemberSpec("boom", 2, hp("sgd", 1e12))]
    ok, boom = train_group(DESC, specs, tiny_data, cfg, 1.0, group_seed=0)
    assert not ok.diverged and boom.diverged
    for r in (ok, boom):
        assert all(np.isfinite(v).all() for v in r.params.values())


@pytest.mark.parametrize("kind", ["adam", "rmsprop", "sgd"])
def test_vector_optimizer_matches_torch(kind):
    torch.manual_seed(0)
    w0 = torch.randn(2, 3, 4)
    target = torch.randn(3, 4)
    lr, l2 = 1e-2, 1e-3
    p = {"w": w0.clone().requires_grad_()}
    opt = VectorOptimizer([kind, kind], [lr, lr], [l2, l2], p)
    ref = w0[0].clone().requires_grad_()
    topt = {"adam": lambda: torch.optim.Adam([ref], lr=lr, eps=1e-7, weight_decay=2 * l2),
            "rmsprop": lambda: torch.optim.RMSprop([ref], lr=lr, alpha=0.9, eps=1e-7, weight_decay=2 * l2),
            "sgd": lambda: torch.optim.SGD([ref], lr=lr, weight_decay=2 * l2)}[kind]()
    for _ in range(5):
        loss = ((p["w"] - target) ** 2).sum()
        (g,) = torch.autograd.grad(loss, [p["w"]])
        opt.step({"w": g}, torch.ones(2, dtype=torch.bool))
        topt.zero_grad()
        ((ref - target) ** 2).sum().backward()
        topt.step()
    assert torch.allclose(p["w"][0], ref, atol=1e-6)


def test_checkpoints_are_snapshots(tiny_data):
    """Each checkpoint keeps the parameters of its own epoch (epoch 0: the initialisation)."""
    from neuralgraph.data.arch import build_model
    from neuralgraph.zoo.train import init_member

    cfg = TrainConfig(epochs=2, checkpoint_epochs=(0, 1, 2), batch_size=16, train_eval_size=32)
    spec = MemberSpec("a", 7, hp("adam", 1e-2, dropout=0.3))
    res = train_group(DESC, [spec], tiny_data, cfg, 1.0, group_seed=0)[0]
    shapes = {k: v.shape for k, v in build_model(DESC).state_dict().items()}
    init = init_member(shapes, "glorot_normal", 0.1, torch.Generator().manual_seed(7))
    for k, v in res.params.items():
        np.testing.assert_array_equal(v[0], init[k].numpy())
        assert not np.array_equal(v[1], v[0]) and not np.array_equal(v[2], v[1])


def test_vector_optimizer_any_memory_layout():
    """Parameters stored channels-last (or strided) update exactly like contiguous ones."""
    torch.manual_seed(0)
    w0, g = torch.randn(3, 4, 2, 3, 3), torch.randn(3, 4, 2, 3, 3)
    kinds, lr, l2 = ["adam", "rmsprop", "sgd"], [1e-2, 3e-3, 5e-2], [1e-3, 0.0, 1e-2]
    layouts = [w0.clone(), w0.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3),
               torch.stack([w0, w0], -1)[..., 0]]
    outs = []
    for w in layouts:
        p = {"w": w.clone() if w.is_contiguous() else w, "b": torch.zeros(3, 4)}
        opt = VectorOptimizer(kinds, lr, l2, p)
        for _ in range(3):
            opt.step({"w": g, "b": g[:, :, 0, 0, 0]}, torch.ones(3, dtype=torch.bool))
        outs.append(p["w"])
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=0, atol=0)
