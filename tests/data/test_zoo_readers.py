"""Readers for the published formats, on fixtures written in exactly those formats."""
import argparse
import csv
import gzip
import json
import pickle
import random

import numpy as np
import pytest
import torch

from neuralgraph.data.formats import (DWSNetsINRs, SmallCNNZoo, UnsafeFileError, WildParkZoo, ZooFormatError,
                                      load_zoo)
from neuralgraph.data.formats.small_cnn_zoo import standard_split
from neuralgraph.data.formats.wildpark import convert
from tests.data.test_zoo_format import Payload
from tests.data.test_arch import published_forward


# --- Small CNN Zoo ---------------------------------------------------------------------------
TF_SHAPES = [("sequential/conv2d/kernel:0", (3, 3, 1, 16)), ("sequential/conv2d/bias:0", (16,)),
             ("sequential/conv2d_1/kernel:0", (3, 3, 16, 16)), ("sequential/conv2d_1/bias:0", (16,)),
             ("sequential/conv2d_2/kernel:0", (3, 3, 16, 16)), ("sequential/conv2d_2/bias:0", (16,)),
             ("sequential/dense/kernel:0", (16, 10)), ("sequential/dense/bias:0", (10,))]


def write_small_cnn_zoo(root, rows=40):
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(rows, 4970)).astype(np.float32)
    np.save(root / "weights.npy", weights)
    with open(root / "layout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "shape"])
        start = 0
        for name, shape in TF_SHAPES:
            end = start + int(np.prod(shape))
            w.writerow([name, start, end, str(shape)])
            start = end
    assert start == 4970
    with gzip.open(root / "metrics.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["modeldir", "step", "test_accuracy", "test_loss", "train_accuracy", "config.activation",
                    "config.learning_rate", "config.optimizer"])
        for i in range(rows):
            w.writerow([f"m{i}", 86 if i % 2 == 0 else 0, i / 100, 1.0, 0.5, ["relu", "tanh"][i % 4 // 2], 0.01, "adam"])
    perm = rng.permutation(rows)
    np.savetxt(root / "perm.csv", perm, fmt="%d")
    return weights, perm


def test_small_cnn_zoo(tmp_path):
    weights, perm = write_small_cnn_zoo(tmp_path)
    final = [i for i in perm if i % 2 == 0]                       # step == 86, in permuted order
    parts = {s: SmallCNNZoo(tmp_path, split=s, permutation_file=tmp_path / "perm.csv") for s in ("train", "val", "test")}
    assert isinstance(parts["train"].weights, np.memmap)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [8, 2, 10]
    # the NFN / Neural Graphs split: second half test, first half shuffled with random.Random(0), 80/20
    trainval = list(range(10))
    random.Random(0).shuffle(trainval)
    assert [m.record["row"] for m in parts["test"]] == final[10:]
    assert [m.record["row"] for m in parts["train"]] == [final[i] for i in trainval[:8]]
    assert standard_split(20, "val") == trainval[8:]
    m = parts["test"][0]
    row = m.record["row"]
    assert m.metrics["test_accuracy"] == pytest.approx(row / 100)
    assert m.hyperparameters["activation"] == ["relu", "tanh"][row % 4 // 2]
    p = m.params()
    tf0 = weights[row, :144].reshape(3, 3, 1, 16)                  # (h, w, in, out)
    np.testing.assert_array_equal(p["layers.0.weight"], tf0.transpose(3, 2, 0, 1))
    dense = weights[row, 4970 - 170:4970 - 10].reshape(16, 10)
    np.testing.assert_array_equal(p["layers.3.weight"], dense.T)
    model = m.model()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert sum(v.numel() for v in model.state_dict().values()) == 4970


# --- CNN Wild Park ---------------------------------------------------------------------------
CFG = {"n_layers": 3, "n_classes": 10, "channels": [3, 8, 16, 4], "kernel_size": [3, 5, 3], "stride": [1, 1, 1],
       "padding": [1, 2, 1], "residual": [-1, -1, 0], "activation": ["relu", "none", "tanh"]}


def write_wildpark(root, config_obj=None, trials=2, ckpts=2):
    torch.manual_seed(0)
    for t in range(trials):
        for c in range(ckpts):
            d = root / f"NN_tune_trainable_{t:05d}" / f"checkpoint_{10 * (c + 1):06d}"
            d.mkdir(parents=True)
            sd = {f"layers.{i}.{p}": torch.randn(*s) for i, (ci, co, k) in
                  enumerate(zip(CFG["channels"][:-1], CFG["channels"][1:], CFG["kernel_size"]))
                  for p, s in (("weight", (co, ci, k, k)), ("bias", (co,)))}
            sd.update({"fc.weight": torch.randn(10, 4), "fc.bias": torch.randn(10)})
            torch.save({"model": sd, "optimizer": {}, "config": config_obj if config_obj is not None else dict(CFG),
                        "iteration": 10 * (c + 1), "last_result": {"test/acc": 0.1 * (t + c), "test/loss": 2.0}},
                       d / "checkpoint.pt")


def test_wildpark_reader_maps_config_and_forward(tmp_path):
    write_wildpark(tmp_path)
    zoo = WildParkZoo(tmp_path)
    assert len(zoo.run_ids) == 2 and len(zoo) == 4
    m = zoo[1]
    assert (m.epoch, m.metrics["test_accuracy"]) == (20, pytest.approx(0.1))
    assert m.architecture["channels"] == [8, 16, 4] and m.architecture["in_channels"] == 3
    assert m.architecture["activations"] == ["relu", "identity", "tanh"]
    model = m.model()                                    # published keys load into our class directly
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(model(x), published_forward(m.state_dict(), CFG, x), atol=1e-5)


def test_wildpark_objects_are_refused_then_converted(tmp_path):
    src = tmp_path / "src"
    write_wildpark(src, config_obj=argparse.Namespace(**CFG))    # a non-allowlisted object, like OmegaConf's
    with pytest.raises(UnsafeFileError, match="trust-pickles"):
        WildParkZoo(src)
    with pytest.raises(UnsafeFileError):
        convert(src, tmp_path / "out", trust_pickles=False, progress=False)
    assert convert(src, tmp_path / "out2", trust_pickles=True, progress=False) == 2
    zoo = load_zoo(tmp_path / "out2")
    assert len(zoo) == 4 and zoo[0].architecture["channels"] == [8, 16, 4]
    ref = torch.load(src / "NN_tune_trainable_00000" / "checkpoint_000010" / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(ref["model"][k], v) for k, v in zoo[0].state_dict().items())


# --- DWSNets INRs ----------------------------------------------------------------------------
def siren_sd(seed):
    g = torch.Generator().manual_seed(seed)
    return {"seq.0.weight": torch.randn(32, 2, generator=g), "seq.0.bias": torch.randn(32, generator=g),
            "seq.1.weight": torch.randn(32, 32, generator=g), "seq.1.bias": torch.randn(32, generator=g),
            "seq.2.weight": torch.randn(1, 32, generator=g), "seq.2.bias": torch.randn(1, generator=g)}


def test_dwsnets(tmp_path):
    paths = {"train": [], "test": []}
    for i, (kind, label) in enumerate([("training", 3), ("training", 7), ("testing", 1)]):
        d = tmp_path / "mnist-inrs" / f"mnist_png_{kind}_{label}_{100 + i}" / "checkpoints"
        d.mkdir(parents=True)
        torch.save(siren_sd(i), d / "model_final.pth")
        paths["train" if kind == "training" else "test"].append((d / "model_final.pth", label))
    splits = {s: {"path": [str(p.relative_to(tmp_path)) for p, _ in v], "label": [str(l) for _, l in v]}
              for s, v in paths.items()}
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    tr = DWSNetsINRs(tmp_path, tmp_path / "splits.json", split="train")
    assert [m.metrics["label"] for m in tr] == [3.0, 7.0]
    model = tr[0].model()
    assert model(torch.zeros(5, 2)).shape == (5, 1)
    assert torch.equal(model.seq[1].weight, siren_sd(0)["seq.1.weight"])
    # labels from the path when there is no splits file
    te = DWSNetsINRs(tmp_path / "mnist-inrs", split="test")
    assert [m.metrics["label"] for m in te] == [1.0]


# --- crafted pickles are refused everywhere, never executed ----------------------------------
@pytest.mark.parametrize("fmt", ["wildpark", "dwsnets", "small-cnn-zoo"])
@pytest.mark.parametrize("via_torch_save", [False, True])
def test_crafted_pickles_refused(tmp_path, fmt, via_torch_save):
    target = tmp_path / "pwned"
    payload = {"model": Payload(target), "config": dict(CFG)}

    def dump(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if via_torch_save:
            torch.save(payload, path)
        else:
            path.write_bytes(pickle.dumps(payload))

    if fmt == "wildpark":
        dump(tmp_path / "z" / "trial" / "checkpoint_000001" / "checkpoint.pt")
        with pytest.raises(UnsafeFileError):
            WildParkZoo(tmp_path / "z")
    elif fmt == "dwsnets":
        dump(tmp_path / "z" / "mnist_png_training_3_1" / "checkpoints" / "model_final.pth")
        with pytest.raises(UnsafeFileError):
            DWSNetsINRs(tmp_path / "z", split="train")
    else:
        write_small_cnn_zoo(tmp_path)
        dump(tmp_path / "weights.npy")
        with pytest.raises(ZooFormatError):
            SmallCNNZoo(tmp_path, split="test")
    assert not target.exists()
