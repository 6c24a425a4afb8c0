"""The result-table driver (benchmarks/tables.py): resumes by skipping finished (row, seed) pairs, renders only
what is finished (pending rows say so), and replaces only its own set's block of a document."""
from __future__ import annotations

import json
import os

import pytest
import yaml

from benchmarks import tables as T


def _finish(results, row, seed, metrics):
    d = T.seed_dir(str(results), row, seed)
    os.makedirs(d)
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump({"best_epoch": 2, "epochs_run": 8, "train_seconds": 10.0, **metrics}, f)
    with open(os.path.join(d, "config.yaml"), "w") as f:
        yaml.safe_dump({"task": {"train_on": "digits", "arch": "arch1"}}, f)


def test_run_skips_finished_pairs_and_table_shows_only_finished_seeds(tmp_path, capsys):
    first = T.INR_ROWS[0]
    _finish(tmp_path, first, 0, {"test": {"accuracy": 0.5}, "val": {"accuracy": 0.4}})
    _finish(tmp_path, first, 1, {"test": {"accuracy": 0.7}, "val": {"accuracy": 0.6}})
    T.run("inr", str(tmp_path), [0, 1], "inr-cls", dry_run=True)
    printed = capsys.readouterr().out.splitlines()
    cls_rows = [r for r in T.INR_ROWS if r.task == "inr-cls"]
    assert len(printed) == 2 * len(cls_rows) - 2                      # the first row is done for both seeds
    assert all("--task inr-cls" in line for line in printed)
    assert f"--model {first.model} --seeds 0" not in "\n".join(printed)
    table = T.render("inr", str(tmp_path))["inr"]
    assert f"| {first.model} | defaults | 2 (0, 1) | 0.600 ± 0.100 |" in table
    assert table.count("0 (pending)") == len(T.INR_ROWS) - 1


def test_every_row_of_a_set_has_its_own_result_directory():
    for name, rows in T.TABLES.items():
        dirs = [T.seed_dir("r", row, 0) for row in rows]
        assert len(set(dirs)) == len(dirs), name


def test_zoo_table_aggregates_seeds_and_lists_pending_rows(tmp_path):
    row = next(r for r in T.ZOO_ROWS if r.task == "wildpark" and r.model == "statnn")
    for seed, tau in ((0, 0.5), (1, 0.7)):
        _finish(tmp_path, row, seed, {"test": {"kendall_tau": tau, "r2": 0.1}, "val": {"kendall_tau": tau}})
    cross = [r for r in T.ZOO_ROWS if r.task == "cross-dataset" and r.model == "sne"]
    _finish(tmp_path, cross[0], 0, {"test/digits": {"kendall_tau": 0.3}, "test/shapes": {"kendall_tau": 0.2},
                                     "val": {"kendall_tau": 0.3}})
    table = T.render("zoo", str(tmp_path))["zoo"]
    assert "| statnn | 2 | 0.600 ± 0.100 | 0.100 ± 0.000 |" in table    # task_table's row
    assert "| digits | 0.300 ± 0.000 | 0.200 ± 0.000 |" in table                  # the cross-dataset matrix
    assert "| digits → shapes | 0.200 ± 0.000 |" in table                          # and SNE table 1's layout
    assert "Pending" in table and "wildpark/ng-t" in table and "wildpark/statnn," not in table


def test_unknown_task_of_a_set_is_refused():
    with pytest.raises(SystemExit, match="the zoo tables have the tasks"):
        T.run("zoo", "unused", [0], "inr-cls", dry_run=True)


def test_write_replaces_only_the_marked_block(tmp_path):
    doc = tmp_path / "results.md"
    begin, end = T.markers("inr")
    doc.write_text(f"head\n{begin}\nold\n{end}\ntail\n")
    T.write_between_markers(str(doc), "inr", "new\n")
    assert doc.read_text() == f"head\n{begin}\nnew\n{end}\ntail\n"
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="inr-tables:begin"):
        T.write_between_markers(str(doc), "inr", "new\n")


def test_one_task_is_rendered_into_its_own_block_and_the_other_tasks_stay(tmp_path, capsys):
    row = next(r for r in T.ZOO_ROWS if r.task == "cross-dataset" and r.model == "statnn")
    doc = tmp_path / "results.md"
    begin, end = T.markers("zoo")
    doc.write_text(f"head\n{begin}\nold\n{end}\ntail\n")
    T.main(["table", "zoo", "--results", str(tmp_path / "empty"), "--write", str(doc)])  # adds every task's block
    full = doc.read_text()
    for task in ("wildpark", "cnn-zoo", "cross-dataset", "cross-arch"):
        assert full.count(T.markers(f"zoo/{task}")[0]) == 1 and f"**{task}**" in full
    kept = full.split(T.markers("zoo/cross-dataset")[0])[0]       # everything before the cross-dataset block
    _finish(tmp_path / "later", row, 0, {"test/digits": {"kendall_tau": 0.25}, "val": {"kendall_tau": 0.3}})
    T.main(["table", "zoo", "--only", "cross-dataset", "--results", str(tmp_path / "later"), "--write", str(doc)])
    now = doc.read_text()
    assert now.startswith(kept) and now.endswith(full.split(T.markers("zoo/cross-dataset")[1])[1])
    assert "0.250 ± 0.000" in now and "0.250" not in full
    block = now.split(T.markers("zoo/cross-dataset")[0])[1].split(T.markers("zoo/cross-dataset")[1])[0]
    assert "train-mnist1d/statnn" in block and "train-digits/statnn" not in block   # pending: only the others
    with pytest.raises(SystemExit, match="the zoo tables have the tasks"):
        T.main(["table", "zoo", "--only", "inr-cls", "--results", str(tmp_path)])


def test_rows_filter_keeps_priority_order(capsys):
    T.run("inr", "unused", [0], "inr-cls", dry_run=True, rows=["sne", "ng-gnn+p0"])
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and "--model ng-gnn" in printed[0] and "--tag p0" in printed[0]
    assert "--model sne" in printed[1]


def test_device_reaches_every_run_and_wildpark_reports_both_readouts(capsys):
    T.main(["run", "zoo", "--only", "wildpark", "--seeds", "0", "--device", "cuda", "--dry-run",
            "--results", "/nonexistent"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all("--device cuda" in line for line in lines)
    labels = {r.label for r in T.ZOO_ROWS if r.task == "wildpark"}
    assert {"ng-gnn", "ng-t", "ng-gnn+mean-readout", "ng-t+mean-readout"} <= labels
    mean_rows = [r for r in T.ZOO_ROWS if r.tag == "mean-readout"]
    assert all("model.readout=mean" in r.sets for r in mean_rows)


def _fake_runs(monkeypatch, tmp_path, seconds: float = 0.3):
    """Replace each (row, seed) run by a short process that writes its metrics.json (and records overlap)."""
    import sys

    def command(row, seed, results, device="cpu"):
        out = os.path.join(T.seed_dir(results, row, seed), "metrics.json")
        code = (f"import json, os, time; open({str(tmp_path / 'starts')!r}, 'a').write(f'{{time.time()}}\\n'); "
                f"time.sleep({seconds}); json.dump({{'test': {{}}}}, open({out!r}, 'w')); "
                f"open({str(tmp_path / 'ends')!r}, 'a').write(f'{{time.time()}}\\n')")
        return [sys.executable, "-c", code]
    monkeypatch.setattr(T, "command", command)


def test_jobs_run_pairs_at_once_and_a_live_lock_is_left_to_its_driver(tmp_path, monkeypatch, capsys):
    _fake_runs(monkeypatch, tmp_path)
    rows = ["mlp", "statnn", "nfn-np"]
    held = T.seed_dir(str(tmp_path), next(r for r in T.INR_ROWS if r.label == "nfn-np"), 0)
    os.makedirs(held)
    with open(os.path.join(held, ".tables-lock"), "w") as f:
        f.write(str(os.getppid()))  # a live process: another driver
    T.run("inr", str(tmp_path), [0], "inr-cls", rows=rows, jobs=2)
    assert "skipped (another driver is running it): nfn-np seed 0" in capsys.readouterr().out
    starts = sorted(map(float, (tmp_path / "starts").read_text().split()))
    ends = sorted(map(float, (tmp_path / "ends").read_text().split()))
    assert len(starts) == 2 and starts[1] < ends[0]  # the two ran at the same time
    done = [json.loads(line)["row"] for line in open(tmp_path / "tables.jsonl")]
    assert sorted(done) == ["mlp", "statnn"] and not os.path.exists(os.path.join(held, "metrics.json"))
    assert not any(p.name == ".tables-lock" for p in tmp_path.rglob("*") if "nfn-np" not in str(p))
    # a lock left by a dead process is taken over
    with open(os.path.join(held, ".tables-lock"), "w") as f:
        f.write("999999999")
    T.run("inr", str(tmp_path), [0], "inr-cls", rows=rows, jobs=2)
    assert os.path.exists(os.path.join(held, "metrics.json")) and not os.path.exists(os.path.join(held, ".tables-lock"))


def test_a_failed_run_stops_the_driver_with_its_name(tmp_path, monkeypatch):
    import sys
    monkeypatch.setattr(T, "command",
                        lambda row, seed, results, device="cpu": [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(SystemExit, match=r"failed: mlp seed 0 \(exit 3\)"):
        T.run("inr", str(tmp_path), [0], "inr-cls", rows=["mlp", "statnn"])
    assert not list(tmp_path.rglob(".tables-lock"))


def test_a_pair_another_driver_finished_meanwhile_is_not_run_again(tmp_path, monkeypatch):
    """A driver waiting for its own run saw a pair unfinished, then claimed it after the other driver had finished
    it and released its lock, and ran it again (two lines in tables.jsonl for one pair): the claim re-checks."""
    _fake_runs(monkeypatch, tmp_path)
    claim = T._claim

    def finished_by_another(path):
        lock = claim(path)
        if "statnn" in path:  # the other driver finished it while this one waited
            with open(os.path.join(path, "metrics.json"), "w") as f:
                json.dump({"test": {}}, f)
        return lock
    monkeypatch.setattr(T, "_claim", finished_by_another)
    T.run("inr", str(tmp_path), [0], "inr-cls", rows=["mlp", "statnn"])
    assert [json.loads(line)["row"] for line in open(tmp_path / "tables.jsonl")] == ["mlp"]
    assert not list(tmp_path.rglob(".tables-lock"))
