"""Corrupt or poisoned inputs: one error naming the file (and run / row), what is wrong and the fix."""
import csv
import gzip
import json
import math

import numpy as np
import pytest

from neuralgraph.data.formats import SmallCNNZoo, ZooFormatError, load_zoo
from neuralgraph.data.formats.native import write_member
from neuralgraph.data.zoo import ZooDataset, ZooWeightDataset
from neuralgraph.io import DataFileError
from tests.data.test_zoo_format import ARCH, write_toy_zoo
from tests.data.test_zoo_readers import write_small_cnn_zoo


@pytest.fixture
def zdir(tmp_path):
    return write_toy_zoo(tmp_path / "zoo", runs=4, ckpts=2)


def _rewrite_member(zdir, run, change):
    """Rewrite run's JSON record through ``change(record)``."""
    path = zdir / "members" / f"{run}.json"
    rec = json.loads(path.read_text())
    path.write_text(json.dumps(change(rec)))


# --- our format ------------------------------------------------------------------------------
def test_truncated_member_archive(zdir):
    path = zdir / "members" / "run000001.npz"
    path.write_bytes(path.read_bytes()[:200])
    zoo = load_zoo(zdir)
    with pytest.raises(ZooFormatError, match=r"run000001.npz' is not a readable .npz archive \(truncated.*"
                                             r"delete run000001.json and run000001.npz and re-run"):
        ZooDataset(zoo, "all", root=zdir / "pyg")


@pytest.mark.parametrize("content, what", [("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list")])
def test_bad_zoo_header(zdir, content, what):
    (zdir / "zoo.json").write_text(content)
    with pytest.raises(ZooFormatError, match=rf"zoo.json' {what}.*restore it"):
        load_zoo(zdir)


@pytest.mark.parametrize("drop", ["architecture", "checkpoints", "param_names"])
def test_member_record_without_a_required_field(zdir, drop):
    _rewrite_member(zdir, "run000002", lambda rec: {k: v for k, v in rec.items() if k != drop})
    with pytest.raises(ZooFormatError, match=rf"run000002.json': missing or invalid '{drop}'.*delete run000002.json"):
        load_zoo(zdir)


def test_member_record_that_is_not_an_object(zdir):
    (zdir / "members" / "run000002.json").write_text("[]")
    with pytest.raises(ZooFormatError, match=r"run000002.json' holds a JSON list, not a member record"):
        load_zoo(zdir)


def test_parameters_of_the_wrong_shape(zdir):
    zoo = load_zoo(zdir)
    params = {k: v.copy() for k, v in zoo._arrays("run000003").items()}
    params["layers.1.weight"] = params["layers.1.weight"][..., :3]              # [2, 8, 4, 5, 5] -> [..., 3]
    rec = {k: v for k, v in zoo.records["run000003"].items() if k in ("architecture", "checkpoints")}
    write_member(zdir, "run000003", params, rec)
    with pytest.raises(ZooFormatError, match=r"run000003.npz \(run run000003\): parameter 'layers.1.weight' has "
                                             r"shape \(8, 4, 5, 3\), but its architecture needs \(8, 4, 5, 5\)"):
        ZooDataset(load_zoo(zdir), "all", root=zdir / "pyg")
    ws = ZooWeightDataset(load_zoo(zdir), "all")
    with pytest.raises(ZooFormatError, match="'layers.1.weight' has shape"):   # the weight-space view checks too
        [ws[i] for i in range(len(ws))]


def test_arrays_that_disagree_with_the_record(zdir):
    zoo = load_zoo(zdir)
    params = {k: v[:1] for k, v in zoo._arrays("run000000").items()}            # one checkpoint, record has two
    np.savez(zdir / "members" / "run000000.npz", **params)
    with pytest.raises(ZooFormatError, match=r"run000000.npz': array '.*' has shape \(1, .*2 checkpoints"):
        load_zoo(zdir)[0].params()


def test_empty_members_directory(tmp_path):
    write_toy_zoo(tmp_path, runs=0)
    with pytest.raises(ZooFormatError, match=r"no complete members in .*members.*python -m neuralgraph.zoo.generate"):
        load_zoo(tmp_path)


def test_truncated_processed_graph_cache(zdir):
    ds = ZooDataset(zdir, "all")
    path = ds.processed_paths[0]
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataFileError, match=r"graphs.pt', a processed-graph cache, is damaged .*delete .* and it "
                                            r"is processed again"):
        ZooDataset(zdir, "all")


# --- the Small CNN Zoo -----------------------------------------------------------------------
@pytest.fixture
def cnn_dir(tmp_path):
    write_small_cnn_zoo(tmp_path, rows=8)
    return tmp_path


def _edit_layout(root, line, **values):
    rows = list(csv.reader(open(root / "layout.csv")))
    header = rows[0]
    for k, v in values.items():
        rows[line - 1][header.index(k)] = v
    with open(root / "layout.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_layout_past_the_end_of_the_array(cnn_dir):
    _edit_layout(cnn_dir, 9, start_idx="4960", end_idx="4980")
    with pytest.raises(ZooFormatError, match=r"layout.csv' line 9 \('sequential/dense/bias:0'\): values 4960..4980 "
                                             r"lie outside a weights.npy row \(0..4970\); use the layout.csv"):
        SmallCNNZoo(cnn_dir, split="all", step=None)


def test_layout_with_a_wrong_shape(cnn_dir):
    _edit_layout(cnn_dir, 2, shape="(3, 3, 1, 8)")
    with pytest.raises(ZooFormatError, match=r"line 2 .*shape \(3, 3, 1, 8\) needs 72 values but start_idx..end_idx "
                                             r"holds 144"):
        SmallCNNZoo(cnn_dir, split="all", step=None)


def test_permutation_out_of_range(cnn_dir):
    np.savetxt(cnn_dir / "perm.csv", [0, 3, 8, 1], fmt="%d")
    with pytest.raises(ZooFormatError, match=r"perm.csv': row index 8 is out of range \(weights.npy has 8 rows"):
        SmallCNNZoo(cnn_dir, split="all", permutation_file=cnn_dir / "perm.csv")


def test_missing_step_column(cnn_dir):
    with gzip.open(cnn_dir / "metrics.csv.gz", "rt") as f:
        rows = list(csv.reader(f))
    with gzip.open(cnn_dir / "metrics.csv.gz", "wt", newline="") as f:
        csv.writer(f).writerows([r[:1] + r[2:] for r in rows])
    with pytest.raises(ZooFormatError, match=r"metrics.csv.gz' has no 'step' column .*pass step=None"):
        SmallCNNZoo(cnn_dir, split="all")
    assert len(SmallCNNZoo(cnn_dir, split="all", step=None)) == 8


# --- non-finite targets and parameters -------------------------------------------------------
def test_nan_target_names_zoo_run_and_field_or_is_dropped_with_a_count(zdir):
    def poison(rec):
        rec["checkpoints"][1]["test_accuracy"] = float("nan")
        return rec

    _rewrite_member(zdir, "run000002", poison)
    with pytest.raises(ZooFormatError, match=r"zoo.*: run run000002 \(checkpoint 1, .*run000002.npz\): target "
                                             r"'test_accuracy' = nan.*drop_nonfinite"):
        ZooDataset(zdir, "all")
    with pytest.warns(UserWarning, match=r"dropped 1 of 8 members of the 'all' split .*run run000002 checkpoint 1"):
        ds = ZooDataset(zdir, "all", drop_nonfinite=True)
    assert len(ds) == 7 and all(math.isfinite(g.y.item()) for g in ds)
    assert len(ds.weight_dataset()) == 7 and [m.run_id for m in ds.dropped] == ["run000002"]


def test_nan_parameter_names_the_parameter(zdir):
    zoo = load_zoo(zdir)
    params = {k: v.copy() for k, v in zoo._arrays("run000001").items()}
    params["layers.2.bias"][0, 1] = np.inf
    write_member(zdir, "run000001", params, {k: v for k, v in zoo.records["run000001"].items()
                                             if k in ("architecture", "checkpoints")})
    with pytest.raises(ZooFormatError, match=r"run run000001 \(checkpoint 0, .*\): parameter 'layers.2.bias' has "
                                             r"NaN / Inf values"):
        ZooDataset(zdir, "all")
    with pytest.warns(UserWarning, match="dropped 1 of 8"):
        assert len(ZooDataset(zdir, "all", drop_nonfinite=True)) == 7


def test_task_option_drop_nonfinite(zdir, tmp_path, monkeypatch):
    from neuralgraph.tasks import create_task

    monkeypatch.setenv("NEURALGRAPH_HOME", str(tmp_path / "home"))
    _rewrite_member(zdir, "run000002", lambda rec: {**rec, "checkpoints": [
        {**ck, "test_accuracy": float("nan")} for ck in rec["checkpoints"]]})
    with pytest.raises(ZooFormatError, match="run run000002 .*task.drop_nonfinite=true"):
        create_task("wildpark", zoo=str(zdir), split=(0.5, 0.25, 0.25)).splits
    with pytest.warns(UserWarning, match="dropped 2 of 4 members of the .train. split"):
        splits = create_task("wildpark", zoo=str(zdir), split=(0.5, 0.25, 0.25), drop_nonfinite=True).splits
    assert sum(len(s) for s in splits.values()) == 6
