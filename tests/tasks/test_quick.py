"""`python -m benchmarks.run --quick` end to end for every task (zoos generated into a temp home)."""
import json

import pytest

from benchmarks.run import main
from neuralgraph.tasks import list_tasks

CASES = {"wildpark": "ng-t", "cnn-zoo": "nfn-np", "cross-dataset": "statnn", "cross-arch": "ng-gnn"}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("NEURALGRAPH_HOME", str(path))
    yield path
    mp.undo()


def test_every_task_has_a_quick_case():
    assert sorted(CASES) == list_tasks()


@pytest.mark.parametrize("task", sorted(CASES))
def test_quick_run(task, home, tmp_path, capsys):
    main(["--task", task, "--model", CASES[task], "--quick", "--out", str(tmp_path), "--no-progress",
          "--threads", "1"])
    printed = capsys.readouterr().out
    assert f"### {task} / {CASES[task]}" in printed and "kendall_tau" in printed
    summaries = list(tmp_path.rglob("summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())["summary"]
    assert any(k.startswith("test") for k in summary)
    assert list(tmp_path.rglob("scatter.png")) and list(tmp_path.rglob("config.yaml"))
