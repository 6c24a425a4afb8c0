"""One writer at a time per zoo and per graph cache: cleanups never delete a live writer's file, a
killed writer's temporary files are removed, and pool workers die with their parent."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from neuralgraph.data.formats.native import load_zoo, remove_stale_temps, write_member
from neuralgraph.data.zoo import ZooDataset
from tests.data.test_zoo_format import write_toy_zoo


def test_cleanup_waits_for_a_live_writer(tmp_path, monkeypatch):
    zdir = write_toy_zoo(tmp_path, runs=1, ckpts=1)
    zoo = load_zoo(zdir)
    params = zoo._arrays("run000000")
    record = {k: v for k, v in zoo.records["run000000"].items() if k in ("architecture", "checkpoints")}
    writing, real_savez = threading.Event(), np.savez

    def slow_savez(f, **arrays):   # the injected write delay, while the writer's temporary file exists
        writing.set()
        time.sleep(0.5)
        real_savez(f, **arrays)

    monkeypatch.setattr(np, "savez", slow_savez)
    errors = []

    def writer():
        try:
            write_member(zdir, "run000005", params, record)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    assert writing.wait(10)
    assert list((zdir / "members").glob(".run000005.npz.*.tmp"))    # in flight
    remove_stale_temps(zdir, ["run000005"])                          # a second writer's cleanup of that run
    t.join()
    assert not errors, errors
    assert "run000005" in load_zoo(zdir).run_ids
    assert not list((zdir / "members").glob(".*.tmp"))


def test_a_killed_processing_leaves_no_temporary_file(tmp_path):
    zdir = write_toy_zoo(tmp_path / "zoo", runs=2, ckpts=1)
    ds = ZooDataset(zdir, "all")
    leftover = Path(ds.processed_dir) / ".graphs.pt.k1ll3d.tmp"   # what a writer killed mid-write leaves
    leftover.write_bytes(b"\0" * 4096)
    ZooDataset(zdir, "all", force_reload=True)
    assert not leftover.exists()
    assert sorted(p.name for p in Path(ds.processed_dir).iterdir()) == [".lock", "config.json", "graphs.pt"]


def _children(pid):
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_workers_die_with_a_killed_main_process(tmp_path):
    cmd = [sys.executable, "-m", "neuralgraph.zoo.generate", "--preset", "wildpark-digits", "--runs", "64",
           "--out", str(tmp_path / "zoo"), "--epochs", "3", "--workers", "2", "--threads", "1", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers = []
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.2)
        workers = [p for p in _children(proc.pid)
                   if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(workers) == 2, "the pool did not start"
    time.sleep(3)                                   # workers importing / training
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for p in left:                                  # do not leave them behind on failure
        os.kill(p, signal.SIGKILL)
    assert not left, f"orphaned workers {left} kept running after the main process was killed"


@pytest.mark.slow
def test_two_concurrent_runs_on_one_cold_cache(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), NEURALGRAPH_HOME=str(tmp_path / "home"),
               OMP_NUM_THREADS="1")
    cmds = [[sys.executable, "-m", "benchmarks.run", "--task", "wildpark", "--model", "statnn", "--quick",
             "--no-progress", "--threads", "1", "--out", str(tmp_path / f"out{i}")] for i in range(2)]
    procs = [subprocess.Popen(c, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in cmds]
    outs = [p.communicate(timeout=900)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    a, b = ((tmp_path / f"out{i}" / "wildpark" / "statnn" / "seed0" / "metrics.json").read_text() for i in range(2))
    import json
    assert json.loads(a)["test"] == json.loads(b)["test"]          # same zoo, same graphs, same result
    assert not [p for p in (tmp_path / "home").rglob(".*.tmp")]
