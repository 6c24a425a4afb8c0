"""The ``-large`` zoo presets: the same recipes as the small ones, >= 1,000 runs, a test split of >= 100 runs,
resolved by the tasks (the big zoos are never generated here)."""
import dataclasses

import pytest

from neuralgraph.data.formats.native import split_by_run
from neuralgraph.tasks import create_task
from neuralgraph.tasks import zoo_tasks
from neuralgraph.zoo import DEFAULT_RUNS, get_preset
from neuralgraph.zoo.presets import run_id

LARGE = ["wildpark-digits-large"] + [f"{a}-{d}-large" for a in ("arch1", "arch2") for d in ("digits", "mnist1d", "shapes")]


@pytest.mark.parametrize("name", LARGE)
def test_large_preset_sizes_and_recipe(name):
    large, small = get_preset(name), get_preset(name.removesuffix("-large"))
    assert large.runs == DEFAULT_RUNS[name] >= 1000 and small.runs < 200
    # the same recipe: training, hyperparameter and architecture samplers, and so the same first runs
    assert large.config() == small.config()
    same = {f.name for f in dataclasses.fields(small)} - {"name", "description", "runs"}
    assert all(getattr(large, f) == getattr(small, f) for f in same)
    assert large.group_plan(0, 3) == small.group_plan(0, 3) and large.run_hparams(0, 5) == small.run_hparams(0, 5)
    splits = split_by_run([run_id(r) for r in range(large.runs)], (0.8, 0.1, 0.1), seed=0)
    assert len(splits["test"]) >= 100 and len(splits["val"]) >= 100


class _Resolved(Exception):
    pass


@pytest.fixture
def opened(monkeypatch):
    """The (preset, runs) each default zoo is opened with, without generating it."""
    seen = []

    def fake(preset, runs):
        seen.append((preset, DEFAULT_RUNS[preset] if runs is None else runs))
        raise _Resolved

    monkeypatch.setattr(zoo_tasks, "default_zoo", fake)
    return seen


def test_tasks_resolve_the_large_presets(opened):
    for task, options in [("wildpark", {"preset": "wildpark-digits-large"}),
                          ("cnn-zoo", {"preset": "arch2-shapes-large"}),
                          ("cross-dataset", {"large": True, "runs": None}),
                          ("cross-arch", {"large": True, "runs": None})]:
        with pytest.raises(_Resolved):
            create_task(task, **options).splits
    assert opened == [("wildpark-digits-large", 1280), ("arch2-shapes-large", 1024), ("arch1-digits-large", 1024),
                      ("arch1-digits-large", 1024)]


def test_default_zoo_size_has_one_source(opened):
    """runs=None (the tasks' default and YAML) reads the preset table; the code carries no second number."""
    for task in ("wildpark", "cnn-zoo"):
        with pytest.raises(_Resolved):
            create_task(task).splits
    assert opened == [("wildpark-digits", 128), ("arch1-digits", 96)]


@pytest.mark.parametrize("task", ["inr-cls", "inr-edit"])
def test_inr_zoo_size_has_one_source(task, monkeypatch):
    """As for wildpark: the runner's default (YAML and code) is runs=None, the preset's size, so choosing a preset
    alone gives its size (inr-glyphs: 10,000, not inr-digits' 1,797); --quick keeps its small size."""
    from benchmarks.run import resolve_config
    from neuralgraph.tasks import inr_tasks

    seen = []

    def fake(preset, runs):
        seen.append((preset, DEFAULT_RUNS[preset] if runs is None else runs))
        raise _Resolved

    monkeypatch.setattr(inr_tasks, "default_zoo", fake)
    for quick, sets in ((False, []), (False, ["task.preset=inr-glyphs"]), (True, ["task.preset=inr-glyphs"])):
        with pytest.raises(_Resolved):
            create_task(task, **resolve_config(task, "mlp", None, quick, sets)["task"]).splits
    with pytest.raises(_Resolved):
        create_task(task, preset="inr-shapes").splits
    assert seen == [("inr-digits", 1797), ("inr-glyphs", 10000), ("inr-glyphs", 40), ("inr-shapes", 10000)]
