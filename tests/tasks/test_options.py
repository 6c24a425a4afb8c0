"""The runner checks every option's type and range before any work, and keeps old results intact."""
import pytest
import yaml

import benchmarks.run as runner
from benchmarks.run import resolve_config
from neuralgraph.models import list_models
from neuralgraph.tasks import list_tasks
from tests.tasks.test_training import TinyTask


@pytest.mark.parametrize("item, expected", [
    ("train.epochs=abc", "train.epochs='abc': expected an integer >= 1"),
    ("train.epochs=-1", "train.epochs=-1: expected an integer >= 1"),
    ("train.epochs=0", "train.epochs=0: expected an integer >= 1"),
    ("train.epochs=2.5", "train.epochs=2.5: expected an integer >= 1"),
    ("train.lr=abc", "train.lr='abc': expected a number > 0"),
    ("train.lr=0", "train.lr=0: expected a number > 0"),
    ("model.node_dim=abc", "model.node_dim='abc': expected an integer >= 1"),
    ("model.dropout=1.5", "model.dropout=1.5: expected a number in [0, 1)"),
    ("task.runs=abc", "task.runs='abc': expected an integer or null >= 1"),
    ("task.runs=-5", "task.runs=-5: expected an integer or null >= 1"),
    ("task.runs=0", "task.runs=0: expected an integer or null >= 1"),
    ("task.split=[0.5, 0.5]", "task.split=[0.5, 0.5]: expected a list of 3 values"),
    ("task.split=[0.5, 0.6, 0.1]", "summing to 1"),
    ("task.normalize_layers=3", "task.normalize_layers=3: expected true or false"),
    ("task.zoo=5", "task.zoo=5: expected a string or null"),
    ("model.probes=8", "model.probes=8: expected an integer among 0, 4, 16, 64"),
    ("model.readout=sum", "model.readout='sum': expected a string among 'mean', 'attention', 'output_mean'"),
])
def test_bad_option_values_are_refused_with_key_value_and_valid_range(item, expected):
    with pytest.raises(SystemExit) as e:
        resolve_config("wildpark", "ng-t", None, False, [item])
    assert expected in str(e.value)


def test_every_bad_value_is_listed_at_once_and_good_values_are_converted():
    with pytest.raises(SystemExit) as e:
        resolve_config("wildpark", "ng-t", None, False, ["train.epochs=abc", "model.heads=-2", "task.runs=0"])
    assert all(k in str(e.value) for k in ("train.epochs='abc'", "model.heads=-2", "task.runs=0"))
    cfg = resolve_config("wildpark", "ng-t", None, False, ["train.lr=1e-3", "model.attn_dim=null"])
    assert cfg["train"]["lr"] == 0.001 and cfg["model"]["attn_dim"] is None   # YAML 1.1 reads 1e-3 as text


def test_every_shipped_default_configuration_is_valid():
    for task in list_tasks():
        for model in list_models():
            for quick in (False, True):
                resolve_config(task, model, None, quick, [])


def test_a_section_that_is_not_a_mapping_is_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  - epochs\n  - 3\n")
    with pytest.raises(SystemExit, match=r"c.yaml: section 'train' must be a mapping of option: value, got list"):
        resolve_config("wildpark", "ng-t", str(f), False, [])


def test_missing_default_configuration_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "CONFIGS", str(tmp_path))
    with pytest.raises(SystemExit, match=r"no default configuration for task 'wildpark'.*tasks/wildpark.yaml"):
        resolve_config("wildpark", "ng-t", None, True, [])
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "wildpark.yaml").write_text("task: {runs: 12}\n")
    with pytest.raises(SystemExit, match=r"no default configuration for model 'ng-t'"):
        resolve_config("wildpark", "ng-t", None, True, [])


def test_refused_rerun_leaves_the_saved_configuration_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "create_task", lambda name, **options: TinyTask(None))
    cfg = {"task": {}, "model": {}, "train": {"epochs": 1, "batch_size": 8}}
    runner.run("tiny", "statnn", [0], cfg, "cpu", str(tmp_path), progress=False)
    saved = next(tmp_path.rglob("config.yaml"))
    before = saved.read_text()
    assert yaml.safe_load(before)["train"] == cfg["train"]
    changed = {**cfg, "train": {**cfg["train"], "lr": 0.01}}
    with pytest.raises(ValueError, match="another configuration"):
        runner.run("tiny", "statnn", [0], changed, "cpu", str(tmp_path), progress=False)
    assert saved.read_text() == before


def test_cli_reports_a_bad_zoo_file_without_a_traceback(tmp_path):
    (tmp_path / "zoo.json").write_text("[]")
    with pytest.raises(SystemExit) as e:
        runner.main(["--task", "wildpark", "--model", "ng-t", "--quick", "--set", f"task.zoo={tmp_path}",
                     "--out", str(tmp_path / "out"), "--no-progress"])
    assert str(e.value).startswith("error: ") and "zoo.json' holds a JSON list" in str(e.value)


@pytest.mark.parametrize("task", ["wildpark", "cnn-zoo"])
def test_layer_normalisation_with_probe_features_is_refused_before_any_work(task, monkeypatch):
    """Probe features run the members' real parameters; normalize_layers replaces them in the graphs."""
    monkeypatch.setattr(runner, "create_task", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(SystemExit) as e:
        runner.main(["--task", task, "--model", "ng-t", "--set", "task.normalize_layers=true",
                     "--set", "model.probes=4"])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("task.normalize_layers=true and model.probes=4 cannot be combined")
    assert "set task.normalize_layers=false or model.probes=0" in msg
    # either alone is fine
    resolve_config(task, "ng-t", None, False, ["task.normalize_layers=true"])
    resolve_config(task, "ng-t", None, False, ["model.probes=4", "task.normalize_layers=false"])


def test_a_model_refusing_its_options_is_reported_in_one_line(tmp_path, monkeypatch):
    """Options valid in type and range that the model refuses once it sees the task (probes on a task without
    one member architecture): the runner's one-line error, not a traceback from the constructor."""
    monkeypatch.setattr(runner, "create_task", lambda name, **options: TinyTask(None))
    with pytest.raises(SystemExit) as e:
        runner.main(["--task", "wildpark", "--model", "ng-t", "--set", "model.probes=16", "--out", str(tmp_path),
                     "--no-progress"])
    msg = str(e.value)
    assert msg.startswith("error: --model ng-t refused its options: ") and "\n" not in msg
    assert "probes=16 needs the networks' architecture" in msg and "set probes=0" in msg


def test_a_rerun_with_other_options_names_them_with_their_resolved_defaults(tmp_path, monkeypatch):
    """The saved run left model.dropout at its default; the refusal shows that default (0.0), not None, and
    setting an option to its default is the same configuration."""
    monkeypatch.setattr(runner, "create_task", lambda name, **options: TinyTask(None))
    args = ["--task", "wildpark", "--model", "statnn", "--out", str(tmp_path), "--no-progress",
            "--set", "train.epochs=1", "--set", "train.batch_size=8"]
    runner.main(args)
    with pytest.raises(SystemExit) as e:
        runner.main(args + ["--set", "model.dropout=0.5", "--set", "task.split_seed=3"])
    msg = str(e.value)
    assert msg.startswith("error: ") and "\n" not in msg
    assert "another configuration (model.dropout: 0.0 -> 0.5; task.split_seed: 0 -> 3)" in msg
    runner.main(args + ["--set", "model.dropout=0.0", "--set", "task.split_seed=0"])  # the defaults: resumes


@pytest.mark.parametrize("task, model, sets, expected", [
    ("cross-arch", "nfn-np", [], "nfn-np needs a homogeneous zoo of feed-forward networks (one architecture, no "
     "residual or normalization layers), but the cross-arch zoo does not qualify: it trains on arch1 and tests on "
     "arch2 networks. Use ng-gnn, ng-t, sne or statnn."),
    ("wildpark", "mlp", [], "but the wildpark zoo does not qualify: the wildpark-digits preset samples an "
     "architecture per group of runs"),
    ("wildpark", "ng-gnn", ["model.probes=16"], "model.probes=16 runs every member network on the probe inputs, "
     "which needs one architecture, but the wildpark task mixes them: the wildpark-digits preset samples an "
     "architecture per group of runs; set model.probes=0"),
])
def test_a_model_the_configuration_rules_out_is_refused_before_any_zoo_is_built(task, model, sets, expected,
                                                                                monkeypatch, tmp_path):
    from neuralgraph.tasks import zoo_tasks

    monkeypatch.setattr(zoo_tasks, "default_zoo", lambda *a, **k: pytest.fail("a zoo was built"))
    args = ["--task", task, "--model", model, "--quick", "--out", str(tmp_path), "--no-progress"]
    with pytest.raises(SystemExit) as e:
        runner.main(args + [a for s in sets for a in ("--set", s)])
    assert expected in str(e.value) and "\n" not in str(e.value)
    # the library refuses as early: model_kwargs checks the configuration before the data
    if not sets:
        from neuralgraph.tasks import IncompatibleModelError, create_task

        with pytest.raises(IncompatibleModelError, match="does not qualify"):
            create_task(task).model_kwargs(model)
