"""The generator: resumable after SIGKILL, disjoint shards, deterministic runs, clear errors."""
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

from neuralgraph.data.formats.native import load_arrays, load_zoo
from neuralgraph.zoo import presets
from neuralgraph.zoo.generate import generate, main, run_id


@pytest.fixture
def small_groups(monkeypatch):
    """wildpark-digits with groups of 2 (in-process generation only)."""
    p = dataclasses.replace(presets.PRESETS["wildpark-digits"], group_size=2)
    monkeypatch.setitem(presets.PRESETS, "wildpark-digits", p)
    return p


SEED = 184  # a seed whose first groups are small networks on small train fractions: fast tests


def _member_bytes(d: Path, rid: str):
    return json.loads((d / "members" / f"{rid}.json").read_text()), load_arrays(d / "members" / f"{rid}.npz")


def test_resume_shards_and_determinism(tmp_path, small_groups):
    full, s0, s1 = tmp_path / "full", tmp_path / "s0", tmp_path / "s1"
    rep = generate("wildpark-digits", 5, full, epochs=1, seed=SEED, progress=False)
    assert (rep.trained, rep.total) == (5, 5)
    zoo = load_zoo(full)
    assert sorted(zoo.run_ids) == [run_id(i) for i in range(5)]
    assert len(zoo) == 5  # one checkpoint per run with epochs=1
    m = zoo[0]
    assert set(m.metrics) == {"test_accuracy", "test_loss", "train_accuracy", "train_loss"}
    m.model()  # parameters load into the rebuilt module

    # shards write disjoint runs and read back as one zoo equal to the unsharded one
    generate("wildpark-digits", 5, s0, shard=(0, 2), epochs=1, seed=SEED, progress=False)
    generate("wildpark-digits", 5, s1, shard=(1, 2), epochs=1, seed=SEED, progress=False)
    r0, r1 = set(load_zoo(s0).run_ids), set(load_zoo(s1).run_ids)
    assert not r0 & r1 and r0 | r1 == set(zoo.run_ids)
    both = load_zoo([s0, s1])
    for rid in zoo.run_ids:
        where = s0 if rid in r0 else s1
        a, b = _member_bytes(full, rid), _member_bytes(where, rid)
        assert a[0] == b[0]
        for k in a[1]:
            np.testing.assert_allclose(a[1][k], b[1][k], rtol=1e-5, atol=1e-6)
    assert len(both) == len(zoo)

    # damage: a lost member, a member with arrays but no JSON, a stale temp file
    mdir = full / "members"
    before = _member_bytes(full, run_id(3))
    (mdir / f"{run_id(3)}.json").unlink()
    (mdir / f"{run_id(4)}.json").unlink()
    (mdir / f"{run_id(4)}.npz").write_bytes(b"truncated")
    (mdir / f".{run_id(4)}.json.abc.tmp").write_bytes(b"{")
    assert sorted(load_zoo(full).run_ids) == [run_id(i) for i in range(3)]
    rep = generate("wildpark-digits", 5, full, epochs=1, seed=SEED, progress=False)
    assert (rep.trained, rep.skipped) == (2, 3)
    assert not list(mdir.glob(".*.tmp"))
    after = _member_bytes(full, run_id(3))
    assert after[0] == before[0]
    assert sorted(load_zoo(full).run_ids) == [run_id(i) for i in range(5)]
    # nothing left to do
    assert generate("wildpark-digits", 5, full, epochs=1, seed=SEED, progress=False).trained == 0


def test_errors(tmp_path, capsys):
    assert main(["--preset", "nope", "--runs", "2", "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'nope'" in err and "wildpark-digits" in err and "arch1-mnist1d" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--preset", "wildpark-digits", "--runs", "2", "--out", str(blocker / "z")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {str(blocker / 'z' / 'members')!r}: not a directory" in err and "(--out)" in err
    assert main(["--preset", "wildpark-digits", "--runs", "2", "--out", str(tmp_path / "z"), "--shard", "3/2"]) == 2
    # a directory holding another recipe is not mixed into
    generate("wildpark-digits", 1, tmp_path / "y", epochs=1, seed=SEED, progress=False)
    with pytest.raises(ValueError, match="already holds a zoo"):
        generate("wildpark-digits", 1, tmp_path / "y", epochs=1, seed=5, progress=False)


@pytest.mark.slow
def test_sigkill_then_rerun_completes(tmp_path):
    out = tmp_path / "zoo"
    cmd = [sys.executable, "-m", "neuralgraph.zoo.generate", "--preset", "wildpark-digits", "--runs", "10",
           "--out", str(out), "--epochs", "1", "--no-progress", "--threads", "1", "--seed", str(SEED)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list((out / "members").glob("*.json")) if (out / "members").exists() \
            else time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)   # mid-way: the first group is written, the second is training
    proc.wait()
    done_before = {p.stem for p in (out / "members").glob("*.json")}
    assert 0 < len(done_before) < 10
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    zoo = load_zoo(out)
    assert sorted(zoo.run_ids) == [run_id(i) for i in range(10)]
    for m in zoo:
        assert all(np.isfinite(v).all() for v in m.params().values())
    assert not list((out / "members").glob(".*"))


def test_shard_from_torchrun_environment():
    from neuralgraph.zoo.generate import parse_shard

    assert parse_shard(None, {}) == (0, 1)
    assert parse_shard(None, {"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    assert parse_shard("1/2", {}) == (1, 2)
    with pytest.raises(ValueError, match="torchrun already gives each rank its shard; drop --shard"):
        parse_shard("1/2", {"RANK": "0", "WORLD_SIZE": "2"})


def _generate_cmd(out: Path, *extra: str) -> list[str]:
    return ["-m", "neuralgraph.zoo.generate", "--preset", "wildpark-digits", "--runs", "40", "--out", str(out),
            "--epochs", "1", "--no-progress", "--threads", "1", "--seed", str(SEED), *extra]


def _same_zoo(a: Path, b: Path) -> None:
    ids = sorted(p.stem for p in (a / "members").glob("*.json"))
    assert ids == sorted(p.stem for p in (b / "members").glob("*.json")) == [run_id(i) for i in range(40)]
    for rid in ids:
        x, y = _member_bytes(a, rid), _member_bytes(b, rid)
        assert x[0] == y[0]
        for k in x[1]:
            np.testing.assert_array_equal(x[1][k], y[1][k])
    assert not [p for p in (b / "members").iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.slow
def test_torchrun_shards_write_one_zoo_and_a_killed_shard_resumes(tmp_path):
    """Two shard processes (torchrun ranks, or --shard I/N commands running at once) fill one directory with
    the zoo one process writes; a shard killed mid-way finishes when rerun, other shards untouched."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1")
    single, ranks, shards = tmp_path / "single", tmp_path / "ranks", tmp_path / "shards"
    subprocess.run([sys.executable, *_generate_cmd(single)], env=env, check=True, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(29_900 + os.getpid() % 90)]
    subprocess.run(torchrun + _generate_cmd(ranks), env=env, check=True, capture_output=True)
    _same_zoo(single, ranks)
    assert json.loads((ranks / "zoo.json").read_text()) == json.loads((single / "zoo.json").read_text())

    procs = [subprocess.Popen([sys.executable, *_generate_cmd(shards, "--shard", f"{i}/2")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
    shard1 = {run_id(r) for g in (1, 3) for r in range(8 * g, 8 * g + 8)}  # groups of 8: shard 1 has 1 and 3
    deadline = time.time() + 120
    while not {p.stem for p in (shards / "members").glob("*.json")} & shard1 if (shards / "members").exists() \
            else True:
        assert time.time() < deadline and procs[1].poll() is None
        time.sleep(0.05)
    os.kill(procs[1].pid, signal.SIGKILL)  # shard 1 mid-way (its first group written, the second training)
    procs[1].wait()
    assert {p.stem for p in (shards / "members").glob("*.json")} & shard1 != shard1  # it was mid-way
    assert procs[0].wait() == 0
    subprocess.run([sys.executable, *_generate_cmd(shards, "--shard", "1/2")], env=env, check=True,
                   capture_output=True)
    _same_zoo(single, shards)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_device_without_cuda_is_refused_by_name(tmp_path, capsys):
    assert main(["--preset", "wildpark-digits", "--runs", "1", "--out", str(tmp_path / "z"), "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device is available here" in capsys.readouterr().err
    assert main(["--preset", "wildpark-digits", "--runs", "1", "--out", str(tmp_path / "z"), "--device", "gpu0"]) == 2
    assert "is not a device" in capsys.readouterr().err
