"""ZooDataset / ZooWeightDataset: conversion, caching keyed by the converter config, splits by run."""
import pickle

import pytest
import torch
from torch_geometric.loader import DataLoader

from neuralgraph.data.formats.native import ZooFormatError, load_zoo
from neuralgraph.data.zoo import ZooDataset, ZooWeightDataset
from tests.data.test_zoo_format import ARCH, Payload, write_toy_zoo

ARCH2 = dict(ARCH, channels=[8, 4], kernels=[3, 3], activations=["tanh", "relu"], residual=[-1, -1])


@pytest.fixture
def zoo_dir(tmp_path):
    write_toy_zoo(tmp_path, runs=10, ckpts=2)
    from neuralgraph.data.formats.native import write_member
    z = load_zoo(tmp_path)
    m = z[0]
    from neuralgraph.data.arch import build_model
    sd = build_model(ARCH2).state_dict()
    write_member(tmp_path, "run000100", {k: v.numpy()[None] for k, v in sd.items()},
                 {"architecture": ARCH2, "checkpoints": [m.record["checkpoints"][0]]})
    return tmp_path


def test_graphs_targets_splits_and_weight_view(zoo_dir):
    zoo = load_zoo(zoo_dir)
    parts = {s: ZooDataset(zoo, split=s) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == len(zoo) == 21
    runs = {s: {p.member(i).run_id for i in range(len(p))} for s, p in parts.items()}
    assert not (runs["train"] & runs["test"]) and not (runs["train"] & runs["val"])
    ds = parts["train"]
    g = ds[0]
    m = ds.member(0)
    assert g.y.item() == pytest.approx(m.metrics["test_accuracy"])
    assert g.edge_attr.size(1) == 49
    # the graph holds the member's parameters exactly
    from neuralgraph.data.zoo import ToNeuralGraph
    plan = ToNeuralGraph().plan(m)
    sd = plan.state_dict(g)
    assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items() if k in sd)
    batch = next(iter(DataLoader(parts["train"], batch_size=5)))
    assert batch.y.shape == (5,)
    # weight-space view: same members, same order
    wds = ds.weight_dataset()
    assert len(wds) == len(ds) and wds.member(3).run_id == ds.member(3).run_id
    ws, y = wds[0]
    assert y.item() == pytest.approx(g.y.item())
    assert torch.equal(ws.weights[0][0], m.state_dict()["layers.0.weight"])
    wb = ZooWeightDataset.collate([wds[i] for i in range(len(wds))])
    ys = wb.y
    assert len(wb) == len(wds) and ys.shape == (len(wds),)
    alone = ZooWeightDataset(zoo, split="all")
    assert len(alone.signatures) == 2 and not ZooWeightDataset.collate([alone[i] for i in range(len(alone))]).homogeneous


def test_processed_cache_keyed_by_converter_config(zoo_dir):
    a = ZooDataset(zoo_dir, split="all")
    b = ZooDataset(zoo_dir, split="all")
    assert a.processed_dir == b.processed_dir
    c = ZooDataset(zoo_dir, split="all", converter={"max_kernel": (9, 9)})
    assert c.processed_dir != a.processed_dir and c[0].edge_attr.size(1) == 81
    d = ZooDataset(zoo_dir, split="all", target="train_accuracy")
    assert d.processed_dir != a.processed_dir


def test_crafted_processed_file_is_refused(zoo_dir):
    a = ZooDataset(zoo_dir, split="all")
    target = zoo_dir / "pwned"
    with open(a.processed_paths[0], "wb") as f:
        pickle.dump(Payload(target), f)
    with pytest.raises(ZooFormatError, match="refusing"):
        ZooDataset(zoo_dir, split="all")
    assert not target.exists()
