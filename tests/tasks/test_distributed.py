"""Data-parallel training under torchrun (gloo, 2 CPU processes): the same result as one process with the same
global batch, and a killed rank fails the job promptly; rerunning the command resumes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

#: 2-process results match 1-process results within this (measured: train loss 1e-7, metrics 1e-8)
TOL = 1e-5
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    out = root / "zoo"
    subprocess.run([sys.executable, "-m", "neuralgraph.zoo.generate", "--preset", "wildpark-digits", "--runs", "40",
                    "--epochs", "1", "--out", str(out), "--no-progress", "--threads", "1"], check=True, env=ENV)
    return root


def _command(zoo, out, epochs: int, nproc: int) -> list[str]:
    args = ["-m", "benchmarks.run", "--task", "wildpark", "--model", "ng-gnn", "--set", f"task.zoo={zoo / 'zoo'}",
            "--set", "task.runs=40", "--set", f"train.epochs={epochs}", "--set", "train.patience=1000",
            "--set", "train.batch_size=8", "--set", "model.hidden=16", "--set", "model.num_layers=2",
            "--no-progress", "--threads", "1", "--out", str(out), "--dist-timeout", "60"]
    if nproc == 1:
        return [sys.executable, *args]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(29_400 + os.getpid() % 500)]
    return torchrun + args


def _metrics(out) -> dict:
    return json.loads(next(Path(out).rglob("metrics.json")).read_text())


def _assert_same_run(a: dict, b: dict) -> None:
    assert len(a["history"]) == len(b["history"])
    for x, y in zip(a["history"], b["history"]):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=TOL, abs=TOL), (k, x, y)
    for k in a["test"]:
        assert a["test"][k] == pytest.approx(b["test"][k], rel=TOL, abs=TOL), k
    assert a["best_epoch"] == b["best_epoch"]


def test_two_processes_match_one_with_the_same_global_batch(zoo):
    env = {**ENV, "NEURALGRAPH_HOME": str(zoo / "home")}
    subprocess.run(_command(zoo, zoo / "one", 3, 1), check=True, env=env, capture_output=True)
    subprocess.run(_command(zoo, zoo / "two", 3, 2), check=True, env=env, capture_output=True)
    one, two = _metrics(zoo / "one"), _metrics(zoo / "two")
    _assert_same_run(one, two)
    assert (one["world_size"], one["batch_size_per_rank"], one["batch_size_global"]) == (1, 8, 8)
    assert (two["world_size"], two["batch_size_per_rank"], two["batch_size_global"]) == (2, 4, 8)
    config = yaml.safe_load(next((zoo / "two").rglob("config.yaml")).read_text())
    assert config["parallel"] == {"world_size": 2, "batch_size_per_rank": 4, "batch_size_global": 8}
    # one writer: rank 0's files only, no temporaries left
    assert not [p for p in (zoo / "two").rglob("*") if p.name.endswith(".tmp")]


def _rank_pids(launcher: int) -> dict[int, int]:
    """``rank -> pid`` of the workers torchrun started (its children with ``RANK`` in their environment)."""
    out = {}
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    for pid in map(int, children):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                out[int(item[5:])] = pid
    return out


def test_a_killed_rank_fails_the_job_promptly_and_the_rerun_resumes(zoo):
    env = {**ENV, "NEURALGRAPH_HOME": str(zoo / "home")}
    epochs, out = 25, zoo / "killed"
    job = subprocess.Popen(_command(zoo, out, epochs, 2), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt = out / "wildpark" / "ng-gnn" / "seed0" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists():  # a checkpoint exists: training is under way
        assert job.poll() is None, job.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    pids = _rank_pids(job.pid)
    assert set(pids) == {0, 1}, pids
    killed_at = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    try:
        log = job.communicate(timeout=180)[0].decode()
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail("the job hung after a rank was killed")
    assert job.returncode != 0
    assert time.monotonic() - killed_at < 180
    assert "Signal 9" in log or "SIGKILL" in log or "exitcode" in log, log[-3000:]
    assert not (out / "wildpark" / "ng-gnn" / "seed0" / "metrics.json").exists()
    # the same command resumes from rank 0's last checkpoint and finishes: the result of an uninterrupted run on
    # the same two processes (two vs one process is the test above: over 25 epochs the two summation orders
    # drift apart by ~1e-7 in the loss, which R^2 of this near-constant predictor amplifies to ~1e-4)
    rerun = subprocess.run(_command(zoo, out, epochs, 2), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    resumed = _metrics(out)
    assert resumed["epochs_run"] == epochs
    subprocess.run(_command(zoo, zoo / "two-long", epochs, 2), check=True, env=env, capture_output=True)
    _assert_same_run(_metrics(zoo / "two-long"), resumed)
