"""ZooDataset / ZooWeightDataset: conversion, caching keyed by the converter config, splits by run."""
import pickle

import pytest
import torch
from torch_geometric.loader import DataLoader

from neuralgraph.data.formats.native import ZooFormatError, load_zoo
from neuralgraph.data.zoo import ZooDataset, ZooWeightDataset
from neuralgraph.data.formats.safe import UnsafeFileError
from tests.data.test_zoo_format import ARCH, Payload, write_toy_zoo
from tests.data.test_zoo_readers import assert_refused_as_unsafe

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
    with pytest.raises(UnsafeFileError) as err:
        ZooDataset(zoo_dir, split="all")
    assert not target.exists()
    assert_refused_as_unsafe(err.value, a.processed_paths[0], "a processed-graph cache")
    assert "and it is processed again from the zoo" in str(err.value)


# --- the graph cache is keyed on the content of the source files ------------------------------
def _fresh(make, tmp):
    """The graphs of a dataset processed from scratch (another cache root)."""
    return make(tmp / "fresh")._data.edge_attr


def _replace_in_place_check(tmp_path, make, replace):
    """Build, replace a source file in place (same name, same size), rebuild: the new graphs, never stale."""
    before = make(tmp_path / "pyg")._data.edge_attr
    replace()
    after = make(tmp_path / "pyg")._data.edge_attr
    fresh = _fresh(make, tmp_path)
    assert not torch.equal(before, fresh)            # the replacement changed the parameters
    assert torch.equal(after, fresh)                 # and the cache did not serve the old graphs


def test_cache_sees_a_native_member_replaced_in_place(tmp_path):
    from neuralgraph.data.formats.native import write_member

    zdir = write_toy_zoo(tmp_path / "zoo", runs=3, ckpts=2)

    def replace():
        m = load_zoo(zdir)[0]
        params = {k: v + 1.0 for k, v in load_zoo(zdir)._arrays(m.run_id).items()}   # same record, new arrays
        rec = {k: v for k, v in m.record.items() if k not in ("format_version", "run_id", "param_names", "params_file")}
        write_member(zdir, m.run_id, params, rec)

    _replace_in_place_check(tmp_path, lambda root: ZooDataset(load_zoo(zdir), "all", root=root), replace)


def test_cache_sees_small_cnn_zoo_weights_replaced_in_place(tmp_path):
    import numpy as np

    from neuralgraph.data.formats import SmallCNNZoo
    from tests.data.test_zoo_readers import write_small_cnn_zoo

    zdir = tmp_path / "zoo"
    zdir.mkdir()
    weights, _ = write_small_cnn_zoo(zdir, rows=8)

    def replace():
        with open(zdir / "weights.npy", "r+b") as f:   # rewritten in place: same inode, same size
            np.lib.format.write_array(f, weights * 2)

    make = lambda root: ZooDataset(SmallCNNZoo(zdir, split="all", step=None), "all", root=root)  # noqa: E731
    _replace_in_place_check(tmp_path, make, replace)


def test_cache_sees_a_wild_park_checkpoint_replaced_in_place(tmp_path):
    from neuralgraph.data.formats import WildParkZoo
    from tests.data.test_zoo_readers import write_wildpark

    zdir = tmp_path / "zoo"
    write_wildpark(zdir, trials=1, ckpts=2)
    path = next(zdir.rglob("checkpoint.pt"))

    def replace():
        ck = torch.load(path, weights_only=True)
        ck["model"] = {k: v * 2 for k, v in ck["model"].items()}
        torch.save(ck, path)

    _replace_in_place_check(tmp_path, lambda root: ZooDataset(WildParkZoo(zdir), "all", root=root), replace)


def test_cache_sees_a_dwsnets_inr_replaced_in_place(tmp_path):
    from neuralgraph.data.formats import DWSNetsINRs
    from tests.data.test_zoo_readers import siren_sd

    for i in (1, 0):
        d = tmp_path / "inrs" / f"mnist_png_training_3_10{i}" / "checkpoints"
        d.mkdir(parents=True)
        torch.save(siren_sd(i), d / "model_final.pth")
    make = lambda root: ZooDataset(DWSNetsINRs(tmp_path / "inrs", split="train"), "all", root=root,  # noqa: E731
                                   target="label")
    _replace_in_place_check(tmp_path, make, lambda: torch.save(siren_sd(1), d / "model_final.pth"))


def test_a_one_member_zoo_is_processed(tmp_path):
    ds = ZooDataset(write_toy_zoo(tmp_path, runs=1, ckpts=1), "all")
    assert len(ds) == 1 and ds[0].y.item() == pytest.approx(0.0)
    assert len(ZooDataset(tmp_path, "all")) == 1   # from the cache
