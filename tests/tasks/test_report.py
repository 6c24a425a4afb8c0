"""`python -m benchmarks.report`: tables from result summaries; hand-written notes survive re-rendering."""
import json

from benchmarks.report import NOTES_MARKER, main


def _summary(root, tau):
    d = root / "wildpark" / "ng-t"
    d.mkdir(parents=True)
    stats = {"kendall_tau": {"mean": tau, "std": 0.01}, "r2": {"mean": 0.5, "std": 0.1}}
    (d / "summary.json").write_text(json.dumps({"task": "wildpark", "model": "ng-t", "seeds": [0, 1],
                                                "config": {}, "summary": {"test": stats}}))


def test_rerender_keeps_hand_written_notes(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "results.md"
    _summary(results, 0.612)
    notes = f"{NOTES_MARKER}\n## Provenance\n\nRun from commit abc.\n"
    out.write_text("# Results\n\nold table\n\n" + notes)
    main(["--results", str(results), "--out", str(out)])
    text = out.read_text()
    assert "| ng-t | 2 | 0.612 ± 0.010 | 0.500 ± 0.100 |" in text and "old table" not in text
    assert text.endswith(notes) and text.count(NOTES_MARKER) == 1
    main(["--results", str(results), "--out", str(out)])          # idempotent
    assert out.read_text() == text


def test_without_marker_only_tables_are_written(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "results.md"
    _summary(results, 0.5)
    out.write_text("# Results\n\nstale text without a marker\n")
    main(["--results", str(results), "--out", str(out)])
    assert "stale text" not in out.read_text()


def test_the_default_report_goes_into_the_results_directory(tmp_path, capsys):
    """docs/results.md belongs to benchmarks.tables: a user's report lands beside their results."""
    results = tmp_path / "results"
    _summary(results, 0.7)
    main(["--results", str(results)])
    assert "| ng-t | 2 | 0.700 ± 0.010 |" in (results / "report.md").read_text()


def test_the_cross_dataset_matrix_says_how_many_seeds_each_cell_has():
    """A cell of one seed shows ± 0.000: the header says over how many seeds (a partial matrix read as certain)."""
    from benchmarks.report import cross_dataset_matrix

    stats = {"kendall_tau": {"mean": 0.5, "std": 0.0}}
    rows = [{"model": "statnn", "seeds": list(range(n)), "config": {"task": {"train_on": z}},
             "summary": {"test/digits": stats}} for z, n in (("digits", 1), ("shapes", 3))]
    assert "mean ± std over 1-3 seeds per training zoo" in cross_dataset_matrix(rows)
    assert "over 1 seed per" in cross_dataset_matrix(rows[:1])


def test_cross_dataset_results_in_the_layout_of_sne_table_1(tmp_path):
    """SNE table 1: rows train → test (each training zoo's own split first), columns models, and each model's
    average over the pairs (mean ± std over the pairs); an average over fewer pairs than the table says so."""
    from benchmarks.report import cross_dataset_table, render

    def row(model, train_on, taus, seeds=3):
        return {"task": "cross-dataset", "model": model, "seeds": list(range(seeds)),
                "config": {"task": {"arch": "arch1", "train_on": train_on, "datasets": ["digits", "mnist1d"]}},
                "summary": {f"test/{z}": {"kendall_tau": {"mean": t, "std": 0.01}} for z, t in taus.items()}}

    rows = [row("statnn", "mnist1d", {"digits": 0.4, "mnist1d": 0.6}), row("statnn", "digits", {"digits": 0.8, "mnist1d": 0.5}),
            row("sne", "digits", {"digits": 0.7, "mnist1d": 0.6})]
    text = cross_dataset_table(rows)
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == "| train → test | statnn | sne |"
    assert [line.split(" | ")[0] for line in lines[1:]] == [
        "| digits → digits", "| digits → mnist1d", "| mnist1d → mnist1d", "| mnist1d → digits", "| average"]
    assert lines[1] == "| digits → digits | 0.800 ± 0.010 | 0.700 ± 0.010 |"
    assert lines[3] == "| mnist1d → mnist1d | 0.600 ± 0.010 | – |"
    assert lines[-1] == "| average | 0.575 ± 0.148 | 0.650 ± 0.050 (2 of 4 pairs) |"
    assert "over 3 seeds per cell" in text
    for r in rows:                                                     # the report renders it first
        d = tmp_path / "cross-dataset" / "arch1" / f"train-{r['config']['task']['train_on']}" / r["model"]
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(r))
    report = render(str(tmp_path))
    assert report.index("| train → test | sne | statnn |") < report.index("| train \\ test |")
