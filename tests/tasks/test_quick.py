"""`python -m benchmarks.run --quick` end to end for every registered task (zoos generated into a temp home),
and (slow) every registered model x task pair: it runs, or it is refused with the reason."""
import json

import pytest

from benchmarks.run import FIGURES, main, resolve_config
from neuralgraph.models import list_models
from neuralgraph.tasks import IncompatibleModelError, create_task, list_tasks


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("NEURALGRAPH_HOME", str(path))
    yield path
    mp.undo()


def quick(task: str, model: str, out) -> dict:
    main(["--task", task, "--model", model, "--quick", "--out", str(out), "--no-progress", "--threads", "1"])
    summaries = list(out.rglob("summary.json"))
    assert len(summaries) == 1
    return json.loads(summaries[0].read_text())


def quick_task(task_name: str):
    """The task as ``--quick`` configures it."""
    return create_task(task_name, **resolve_config(task_name, list_models()[0], None, True, [])["task"])


def check_outputs(task_name: str, model: str, out, printed: str) -> None:
    task = quick_task(task_name)
    summary = json.loads(next(out.rglob("summary.json")).read_text())["summary"]
    assert f"### {task_name} / {model}" in printed and task.select_metric in printed
    assert any(k.startswith("test") for k in summary) and task.select_metric in summary["val"]
    if task.figure is not None:
        assert list(out.rglob(FIGURES[task.figure][1]))
    assert list(out.rglob("config.yaml")) and list(out.rglob("predictions.json"))
    assert "data: train" in printed  # what the run used
    if task_name in ("wildpark", "cnn-zoo", "cross-dataset", "cross-arch"):  # a small zoo: where to rank models
        assert "zoo: " in printed and "-large" in printed and "docs/results.md" in printed


def accepted_model(task_name: str, offset: int) -> str:
    """A model the task accepts, rotating through the registry so the quick runs cover many models."""
    task = quick_task(task_name)
    models = list_models()
    for k in range(len(models)):
        name = models[(offset + k) % len(models)]
        try:
            task.model_kwargs(name)
        except IncompatibleModelError:
            continue
        return name
    raise AssertionError(f"no registered model serves {task_name}")


@pytest.mark.parametrize("task", list_tasks())
def test_quick_run(task, home, tmp_path, capsys):
    model = accepted_model(task, 2 * list_tasks().index(task))
    quick(task, model, tmp_path)
    check_outputs(task, model, tmp_path, capsys.readouterr().out)


@pytest.mark.slow
@pytest.mark.parametrize("model", list_models())
@pytest.mark.parametrize("task", list_tasks())
def test_every_pair_runs_or_is_refused(task, model, home, tmp_path, capsys):
    try:
        quick_task(task).model_kwargs(model)
    except IncompatibleModelError as err:
        with pytest.raises(SystemExit, match=str(err)[:40].replace("(", r"\(").replace(")", r"\)")):
            quick(task, model, tmp_path)
        return
    quick(task, model, tmp_path)
    check_outputs(task, model, tmp_path, capsys.readouterr().out)
