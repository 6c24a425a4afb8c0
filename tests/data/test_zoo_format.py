"""Our zoo format: atomic members, lazy params, splits by run, shards, pickles refused."""
import pickle

import numpy as np
import pytest
import torch

from neuralgraph.data.arch import build_model
from neuralgraph.data.formats.native import (ZooFormatError, init_zoo_dir, load_zoo, member_splits,
                                             split_by_run, write_member)

ARCH = {"family": "wildpark", "in_channels": 1, "n_classes": 10, "input_size": [8, 8], "channels": [4, 8, 4],
        "kernels": [3, 5, 3], "activations": ["relu", "identity", "sigmoid"], "residual": [-1, -1, 0]}


def write_toy_zoo(root, runs=6, ckpts=3, seed=0, arch=ARCH):
    init_zoo_dir(root, {"preset": "toy", "seed": 0, "description": "toy", "config": {}})
    torch.manual_seed(seed)
    for r in range(runs):
        sds = [build_model(arch).state_dict() for _ in range(ckpts)]
        params = {k: np.stack([sd[k].numpy() for sd in sds]) for k in sds[0]}
        cks = [{"epoch": c + 1, "step": 10 * (c + 1), "test_accuracy": (r * ckpts + c) / 100, "test_loss": 1.0,
                "train_accuracy": 0.5, "train_loss": 1.0} for c in range(ckpts)]
        write_member(root, f"run{r:06d}", params, {"architecture": arch, "hyperparameters": {"learning_rate": 0.01},
                                                 "checkpoints": cks})
    return root


class Payload:
    """Unpickling this creates a file (what a malicious zoo file would do)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_roundtrip_lazy_and_model(tmp_path):
    write_toy_zoo(tmp_path)
    (tmp_path / "members" / ".run000009.npz.x.tmp").write_bytes(b"half-written")  # ignored
    zoo = load_zoo(tmp_path)
    assert len(zoo.run_ids) == 6 and len(zoo) == 18
    m = zoo[4]
    assert (m.run_id, m.checkpoint, m.epoch) == ("run000001", 1, 2)
    assert m.metrics["test_accuracy"] == pytest.approx(0.04)
    model = m.model()
    assert all(torch.equal(model.state_dict()[k], torch.from_numpy(v)) for k, v in m.params().items())
    assert not zoo._cache or len(zoo._cache) <= 64


def test_split_by_run():
    runs = [f"r{i}" for i in range(50)]
    s = split_by_run(runs, seed=3)
    assert sorted(s["train"] + s["val"] + s["test"]) == sorted(runs)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (40, 5, 5)
    assert s == split_by_run(list(reversed(runs)), seed=3)
    assert s != split_by_run(runs, seed=4)
    with pytest.raises(ValueError):
        split_by_run(runs, (0.5, 0.1, 0.1))


def test_member_splits_keep_runs_together(tmp_path):
    zoo = load_zoo(write_toy_zoo(tmp_path, runs=20))
    sp = member_splits(zoo, seed=0)
    owner = {}
    for name, idx in sp.items():
        for i in idx:
            assert owner.setdefault(zoo[i].run_id, name) == name
    assert sum(map(len, sp.values())) == len(zoo)


def test_shards_merge_and_conflicts(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_toy_zoo(a, runs=2)
    init_zoo_dir(b, {"preset": "toy", "seed": 0, "description": "toy", "config": {}})
    zoo_a = load_zoo(a)
    m = zoo_a[0]
    write_member(b, "run000777", {k: v[None] for k, v in m.params().items()},
                 {"architecture": ARCH, "checkpoints": [m.record["checkpoints"][0]]})
    both = load_zoo([a, b])
    assert set(both.run_ids) == {"run000000", "run000001", "run000777"}
    with pytest.raises(ZooFormatError, match="already holds a zoo"):
        init_zoo_dir(a, {"preset": "other", "seed": 0, "description": "", "config": {}})


def test_pickle_disguised_as_member_is_refused(tmp_path):
    write_toy_zoo(tmp_path, runs=1)
    target = tmp_path / "pwned"
    (tmp_path / "members" / "run000000.npz").write_bytes(pickle.dumps(Payload(target)))
    zoo = load_zoo(tmp_path)
    with pytest.raises(ZooFormatError, match="pickled"):
        zoo[0].params()
    # an object array inside a real npz archive is refused as well
    np.savez(tmp_path / "members" / "run000000.npz", **{"layers.0.weight": np.array([Payload(target)], dtype=object)})
    zoo = load_zoo(tmp_path)
    with pytest.raises(ZooFormatError, match="pickled"):
        zoo[0].params()
    assert not target.exists()
