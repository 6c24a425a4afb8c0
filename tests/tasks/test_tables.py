"""The issue-16 driver (benchmarks/inr_tables.py): resumes by skipping finished (row, seed) pairs, renders only
what is finished (pending rows say so), and replaces only its own block of a document."""
from __future__ import annotations

import json
import os

import pytest

from benchmarks import inr_tables as T


def _finish(results, row, seed, acc):
    d = T.seed_dir(str(results), row, seed)
    os.makedirs(d)
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump({"test": {"accuracy": acc}, "val": {"accuracy": acc - 0.1}, "best_epoch": 2, "epochs_run": 8,
                   "train_seconds": 10.0}, f)


def test_run_skips_finished_pairs_and_table_shows_only_finished_seeds(tmp_path, capsys):
    first = T.RUNS[0]
    _finish(tmp_path, first, 0, 0.5)
    _finish(tmp_path, first, 1, 0.7)
    T.run(str(tmp_path), [0, 1], "cls", dry_run=True)
    printed = capsys.readouterr().out.splitlines()
    cls_rows = [r for r in T.RUNS if r.task == "inr-cls"]
    assert len(printed) == 2 * len(cls_rows) - 2                      # the first row is done for both seeds
    assert all("--task inr-cls" in line for line in printed)
    assert f"--model {first.model} --seeds 0" not in "\n".join(printed)
    table = T.table(str(tmp_path))
    assert f"| {first.model} | defaults | 2 (0, 1) | 0.600 ± 0.100 |" in table
    assert table.count("0 (pending)") == len(T.RUNS) - 1


def test_write_replaces_only_the_marked_block(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text(f"head\n{T.BEGIN}\nold\n{T.END}\ntail\n")
    T.write_between_markers(str(doc), "new\n")
    assert doc.read_text() == f"head\n{T.BEGIN}\nnew\n{T.END}\ntail\n"
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="inr-tables:begin"):
        T.write_between_markers(str(doc), "new\n")


def test_rows_filter_keeps_priority_order(capsys):
    T.run("unused", [0], "cls", dry_run=True, rows=["sne", "ng-gnn+p0"])
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and "--model ng-gnn" in printed[0] and "--tag p0" in printed[0]
    assert "--model sne" in printed[1]
