"""``benchmarks/perf/gpu.py``: its CPU smoke variant runs every section (so the GPU script does not rot), and
without CUDA the real run says so and exits."""
import json

import pytest
import torch

from benchmarks.perf import gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check")
def test_without_cuda_it_says_so(capsys):
    assert gpu.main([]) == 2
    assert "needs a CUDA device and none is available here" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_measures_every_section(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NEURALGRAPH_HOME", str(tmp_path / "home"))
    assert gpu.main(["--dry", "--json", str(tmp_path / "gpu.json")]) == 0
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert [(r["model"], r["amp"]) for r in res["train"]] == [(m, a) for m in gpu.TRAIN_MODELS for a in ("off", "bf16")]
    assert all(r["graphs_per_s"] > 0 and "error" not in r for r in res["train"])
    assert [(r["model"], r["amp"]) for r in res["forward"]] == [
        (m, a) for m in gpu.FORWARD_MODELS for a in ("off", "bf16")]
    assert all(r["forward_s"] > 0 and r["edges"] > 0 for r in res["forward"])
    assert [r["amp"] for r in res["main"]] == ["off", "bf16"] and all(r["ok"] for r in res["main"])
    printed = capsys.readouterr().out
    assert "Training step" in printed and "Main command wall time" in printed
