"""A regular (non-editable) install works: build the wheel, install it into a fresh virtual environment,
and run ``benchmarks.run --quick`` from another directory. Slow (minutes: it installs torch)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-4000:]}"
    return r.stdout


@pytest.mark.slow
def test_installed_wheel_runs_quick_from_another_directory(tmp_path):
    src = tmp_path / "src"   # a copy, so the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "neuralgraph", "benchmarks"):
        f = ROOT / name
        if f.is_dir():
            shutil.copytree(f, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(f, src / name)
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
          "-w", str(tmp_path / "dist")])
    wheel = next((tmp_path / "dist").glob("*.whl"))
    _run([sys.executable, "-m", "venv", str(tmp_path / "venv")])
    py = str(tmp_path / "venv" / "bin" / "python")
    _run([py, "-m", "pip", "install", "-q", "torch==2.13.0"])     # first, as the README says (no CUDA build)
    _run([py, "-m", "pip", "install", "-q", str(wheel)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(NEURALGRAPH_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    where = _run([py, "-c", "import neuralgraph; print(neuralgraph.__file__)"], cwd=elsewhere, env=env)
    assert str(tmp_path / "venv") in where                         # the installed copy, not the checkout
    out = _run([py, "-m", "benchmarks.run", "--task", "wildpark", "--model", "ng-t", "--quick", "--out", "out",
                "--no-progress", "--threads", "1"], cwd=elsewhere, env=env)
    assert "### wildpark / ng-t" in out
    cfg = yaml.safe_load((elsewhere / "out" / "wildpark" / "ng-t" / "seed0" / "config.yaml").read_text())
    assert cfg["task"]["runs"] == 12 and cfg["train"]["max_steps"] == 10   # the shipped defaults and quick section
    assert cfg["model"]["node_dim"] == 16                                 # the model's shipped defaults
