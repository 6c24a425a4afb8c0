"""INR zoos: the batched SIREN fit, the image sets, generation, the stored format and conversion."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neuralgraph import to_neural_graph
from neuralgraph.data.formats import DWSNetsINRs, load_zoo
from neuralgraph.data.formats.native import load_arrays
from neuralgraph.data.formats.dwsnets import siren_description
from neuralgraph.zoo import presets
from neuralgraph.zoo.arch import build_model
from neuralgraph.zoo.datasets import load_images
from neuralgraph.zoo.generate import generate, main, run_id
from neuralgraph.zoo.glyphs import render_glyphs
from neuralgraph.zoo.inr import (SIREN_DESC, FitConfig, _loss_and_grads, fit_sirens, init_sirens, member_image,
                                 pixel_coords, render_sirens)


def _module(params, i):
    m = build_model(SIREN_DESC)
    m.load_state_dict({k: v[i] for k, v in params.items()})
    return m


def test_manual_gradients_match_autograd():
    M, H, W = 3, 7, 5                                   # non-square: rows and columns must not be swapped
    p = init_sirens([1, 2, 3])
    img = torch.rand(M, H, W, generator=torch.Generator().manual_seed(0))
    mse, g = _loss_and_grads(p, img.reshape(M, -1) - 0.5, pixel_coords(H, W).T, 30.0)
    assert set(g) == set(p) and all(g[k].shape == p[k].shape for k in p)
    for i in range(M):
        m = _module(p, i).double()
        loss = (m(pixel_coords(H, W).double())[:, 0] - img[i].reshape(-1).double()).square().mean()
        loss.backward()
        assert torch.allclose(mse[i].double(), loss.detach(), rtol=1e-5)
        for k, prm in m.named_parameters():
            assert torch.allclose(g[k][i].double(), prm.grad, rtol=1e-4, atol=1e-6 * float(prm.grad.abs().max())), k


def test_pixel_coords_follow_dwsnets():
    # DWSNets' make_coordinates: x = column varies fastest, then y = row; both linspace(-1, 1, n)
    expected = torch.tensor([[-1.0, -1.0], [0.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    assert torch.equal(pixel_coords(2, 3), expected)
    # an INR that reads only x renders an image that is constant down each column
    p = init_sirens([0])
    p["seq.0.weight"][..., 1] = 0
    img = render_sirens(p, 5, 4)[0]
    assert torch.allclose(img, img[:1].expand(5, 4)) and not torch.allclose(img, img[:, :1].expand(5, 4))


def test_render_matches_module():
    p = init_sirens([5, 6])
    out = render_sirens(p, 6, 4)                        # [B, H, W]
    assert out.shape == (2, 6, 4)
    for i in range(2):
        assert torch.allclose(out[i].reshape(-1), _module(p, i)(pixel_coords(6, 4))[:, 0].detach(), atol=1e-6)


def test_fit_reaches_psnr_and_is_deterministic():
    images, _ = load_images("glyphs", range(6), seed=0)
    cfg = presets.INR_FIT
    res = fit_sirens(images, list(range(6)), cfg)
    assert res.psnr.shape == (6,) and float(res.psnr.mean()) >= 30.0
    # the stored PSNR is the PSNR of the stored parameters
    for i in range(6):
        rec = _module(res.params, i)(pixel_coords(28, 28)).view(28, 28).detach()
        mse = float((rec - torch.from_numpy(images[i])).square().mean())
        assert abs(mse - float(res.mse[i])) <= 1e-3 * mse
    # same seeds: same bits, whatever the batch composition; another seed: another INR
    again = fit_sirens(images[[4, 1]], [4, 1], dataclasses.replace(cfg, batch=3))
    for k in res.params:
        assert torch.equal(again.params[k], res.params[k][[4, 1]])
    other = fit_sirens(images[:1], [99], cfg)
    assert not torch.equal(other.params["seq.1.weight"][0], res.params["seq.1.weight"][0])


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[M, H, W\]"):
        fit_sirens(np.zeros((2, 4)), [0, 1])
    with pytest.raises(ValueError, match="one seed per image"):
        fit_sirens(np.zeros((2, 4, 4)), [0])


def test_glyphs_deterministic_ten_classes():
    a, la = render_glyphs(range(40), seed=3)
    b, lb = render_glyphs([17, 5], seed=3)
    assert a.shape == (40, 28, 28) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert set(la.tolist()) == set(range(10)) and np.bincount(la).tolist() == [4] * 10
    assert np.array_equal(b, a[[17, 5]]) and np.array_equal(lb, la[[17, 5]])      # per-index, batch-free
    c, _ = render_glyphs(range(40), seed=4)
    assert not np.array_equal(a, c)
    assert (a.reshape(40, -1).max(1) > 0.5).all() and (a.mean((1, 2)) < 0.5).all()   # a bright digit on black
    with pytest.raises(ValueError, match="non-negative"):
        render_glyphs([-1])


def test_image_sets():
    x, y = load_images("digits", [0, 1796])
    assert x.shape == (2, 8, 8) and 0 <= x.min() and x.max() <= 1 and y.tolist() == [0, 8]
    x, y = load_images("shapes", range(10), seed=1)
    assert x.shape == (10, 28, 28) and y.tolist() == list(range(10))
    with pytest.raises(ValueError, match="0..1796"):
        load_images("digits", [1797])
    with pytest.raises(ValueError, match="unknown image set 'mnist'"):
        load_images("mnist", [0])


@pytest.fixture
def small_inr_groups(monkeypatch):
    p = dataclasses.replace(presets.PRESETS["inr-digits"], group_size=3)
    monkeypatch.setitem(presets.PRESETS, "inr-digits", p)
    return p


def _read(d, rid):
    return json.loads((d / "members" / f"{rid}.json").read_text()), load_arrays(d / "members" / f"{rid}.npz")


def test_generate_resume_shards(tmp_path, small_inr_groups):
    full = tmp_path / "full"
    rep = generate("inr-digits", 7, full, epochs=30, progress=False)
    assert (rep.trained, rep.total) == (7, 7)
    zoo = load_zoo(full)
    images, labels = load_images("digits", range(7))
    for i, m in enumerate(zoo):
        assert m.run_id == run_id(i) and int(m.metrics["label"]) == labels[i] and m.metrics["psnr"] > 20
        assert np.array_equal(member_image(m), images[i])
        assert m.architecture == SIREN_DESC and m.epoch == 30
    # a killed generator: a lost member, arrays without JSON, a stale temp file -> the same zoo again
    mdir = full / "members"
    before = {run_id(i): _read(full, run_id(i)) for i in (2, 4)}
    (mdir / f"{run_id(2)}.json").unlink()
    (mdir / f"{run_id(4)}.json").unlink()
    (mdir / f"{run_id(4)}.npz").write_bytes(b"truncated")
    (mdir / f".{run_id(4)}.npz.abc.tmp").write_bytes(b"x")
    rep = generate("inr-digits", 7, full, epochs=30, progress=False)
    assert (rep.trained, rep.skipped) == (2, 5) and not list(mdir.glob(".*.tmp"))
    for rid, (rec, arrays) in before.items():
        rec2, arrays2 = _read(full, rid)
        assert rec2 == rec and all(np.array_equal(arrays[k], arrays2[k]) for k in arrays)
    # shards: disjoint, and together bit-equal to the unsharded zoo
    s0, s1 = tmp_path / "s0", tmp_path / "s1"
    generate("inr-digits", 7, s0, shard=(0, 2), epochs=30, progress=False)
    generate("inr-digits", 7, s1, shard=(1, 2), epochs=30, progress=False)
    r0, r1 = set(load_zoo(s0).run_ids), set(load_zoo(s1).run_ids)
    assert not r0 & r1 and r0 | r1 == set(zoo.run_ids)
    for rid in zoo.run_ids:
        a, b = _read(full, rid), _read(s0 if rid in r0 else s1, rid)
        assert a[0] == b[0] and all(np.array_equal(a[1][k], b[1][k]) for k in a[1])


def test_generate_errors(tmp_path, capsys):
    assert main(["--preset", "inr-digits", "--runs", "1798", "--out", str(tmp_path / "z")]) == 2
    assert "at most 1797 runs" in capsys.readouterr().err


def test_member_converts_like_a_dwsnets_member(tmp_path):
    """A member of our zoo and a published DWSNets INR of the same shape give graphs of the same structure."""
    generate("inr-digits", 1, tmp_path / "zoo", epochs=5, progress=False)
    ours = load_zoo(tmp_path / "zoo")[0]
    d = tmp_path / "dws" / "mnist_png_training_3_7" / "checkpoints"
    d.mkdir(parents=True)
    sd = {k: torch.randn(v.shape) for k, v in ours.state_dict().items()}
    torch.save(sd, d / "model_final.pth")
    theirs = DWSNetsINRs(tmp_path / "dws", split="train")[0]
    assert theirs.architecture == ours.architecture == siren_description(sd)
    ga, gb = to_neural_graph(ours.model()), to_neural_graph(theirs.model())
    assert ga.x.shape == gb.x.shape and ga.edge_attr.shape == gb.edge_attr.shape
    assert torch.equal(ga.edge_index, gb.edge_index)
    for key in ga.keys():
        if key not in ("x", "edge_attr") and torch.is_tensor(ga[key]) and ga[key].dtype in (torch.long, torch.bool):
            assert torch.equal(ga[key], gb[key]), key
    assert not torch.equal(ga.edge_attr, gb.edge_attr)          # the parameters differ, the structure does not
    # the graph carries our member's parameters: its weights are exactly the stored ones
    w = torch.from_numpy(np.asarray(ours.params()["seq.1.weight"]))
    assert torch.isin(w.reshape(-1), ga.edge_attr.reshape(-1)).all()
    with pytest.raises(ValueError, match="no original image"):
        member_image(theirs)


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_zoo(tmp_path):
    out, ref = tmp_path / "zoo", tmp_path / "ref"
    args = ["--preset", "inr-glyphs", "--runs", "150", "--epochs", "20", "--no-progress", "--seed", "3"]
    cmd = [sys.executable, "-m", "neuralgraph.zoo.generate", *args, "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("members/*.json")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)   # while the first group is being written or the second is fitting
    proc.wait()
    done_before = {p.stem for p in (out / "members").glob("*.json")}
    assert 0 < len(done_before) < 150
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert main([*args, "--out", str(ref)]) == 0
    assert sorted(load_zoo(out).run_ids) == sorted(load_zoo(ref).run_ids) == [run_id(i) for i in range(150)]
    for i in range(150):
        a, b = _read(out, run_id(i)), _read(ref, run_id(i))
        assert a[0] == b[0] and all(np.array_equal(a[1][k], b[1][k]) for k in a[1])
    assert not list((out / "members").glob(".*"))


def test_extra_arrays_in_the_native_format(tmp_path):
    from neuralgraph.data.formats.native import init_zoo_dir, write_member

    init_zoo_dir(tmp_path, {"preset": "x", "seed": 0})
    p = {k: v.numpy() for k, v in init_sirens([0]).items()}              # [1, *shape]: one checkpoint
    ck = [{"epoch": 0, "step": 0}]
    write_member(tmp_path, "run000000", p, {"architecture": SIREN_DESC, "checkpoints": ck},
                 extras={"image": np.full((3, 4), 0.25)})
    write_member(tmp_path, "run000001", p, {"architecture": SIREN_DESC, "checkpoints": ck})
    with pytest.raises(ValueError, match="names of parameters"):
        write_member(tmp_path, "run000002", p, {"architecture": SIREN_DESC, "checkpoints": ck},
                     extras={"seq.0.bias": np.zeros(3)})
    a, b = load_zoo(tmp_path)
    assert set(a.params()) == set(p)                                     # extras are not parameters
    assert member_image(a).shape == (3, 4) and (member_image(a) == 0.25).all()
    with pytest.raises(KeyError, match="no extra array 'image'"):
        b.extra("image")
    with pytest.raises(ValueError, match="no original image for member 'run000001'"):
        member_image(b)
