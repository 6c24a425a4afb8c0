"""The shared training loop and the runner's configuration handling."""
import json
import os

import pytest
import torch
from torch import nn

from benchmarks.run import resolve_config
from neuralgraph import to_neural_graph
from neuralgraph.convert import get_plan
from neuralgraph.models import create_model
from neuralgraph.tasks.base import Split, Task
from neuralgraph.training import TrainConfig, fit


class TinyTask(Task):
    """Predict a smooth function of a small MLP's weights (no zoo needed)."""

    name = "tiny"

    def build_splits(self):
        g = torch.Generator().manual_seed(0)
        splits = {}
        for name, n in (("train", 24), ("val", 8), ("test", 8)):
            nets = []
            for _ in range(n):
                m = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
                with torch.no_grad():
                    for p in m.parameters():
                        p.copy_(torch.randn(p.shape, generator=g))
                nets.append(m)
            y = torch.stack([torch.sigmoid(m[0].weight.abs().mean() - 0.8) for m in nets]).detach()
            splits[name] = Split(y=y, make_graphs=lambda nets=nets: [to_neural_graph(m) for m in nets],
                                 make_weights=lambda nets=nets: [get_plan(m).weight_space(m) for m in nets])
        return splits


def make_model(kind):
    torch.manual_seed(0)
    if kind == "graph":
        return create_model("ng-gnn", node_in=4, edge_in=49, out_dim=1, hidden=16, num_layers=2)
    return create_model("statnn", out_dim=1)


@pytest.mark.parametrize("kind", ["graph", "weights"])
def test_resume_gives_the_same_result_as_one_run(tmp_path, kind):
    full = fit(make_model(kind), TinyTask(None), TrainConfig(epochs=3, batch_size=8), str(tmp_path / "a"),
               progress=False)
    # the same run interrupted after one epoch, then resumed by the same call with more epochs
    fit(make_model(kind), TinyTask(None), TrainConfig(epochs=1, batch_size=8), str(tmp_path / "b"), progress=False)
    resumed = fit(make_model(kind), TinyTask(None), TrainConfig(epochs=3, batch_size=8), str(tmp_path / "b"),
                  progress=False)
    assert resumed["history"] == full["history"]
    assert resumed["test"] == full["test"]
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert saved["test"] == full["test"] and saved["best_epoch"] == full["best_epoch"]
    assert not [f for f in os.listdir(tmp_path / "b") if f.endswith(".tmp")]


def test_model_selection_uses_validation_only(tmp_path):
    res = fit(make_model("weights"), TinyTask(None), TrainConfig(epochs=4, batch_size=8), None, progress=False)
    best = max(range(len(res["history"])), key=lambda i: res["history"][i]["val_kendall_tau"])
    assert res["best_epoch"] == res["history"][best]["epoch"]
    assert "test_kendall_tau" not in res["history"][0]


def test_config_resolution_and_errors(tmp_path):
    cfg = resolve_config("wildpark", "ng-t", None, True, ["train.epochs=5", "model.num_layers=2",
                                                          "task.split=[0.5, 0.25, 0.25]"])
    assert cfg["train"]["epochs"] == 5 and cfg["train"]["max_steps"] == 10  # --set beats --quick
    assert cfg["model"]["num_layers"] == 2 and cfg["task"]["split"] == [0.5, 0.25, 0.25]
    assert cfg["task"]["runs"] == 12  # the quick zoo
    with pytest.raises(SystemExit, match=r"unknown model option\(s\) \['hiden'\] for ng-t; valid options"):
        resolve_config("wildpark", "ng-t", None, False, ["model.hiden=3"])
    with pytest.raises(SystemExit, match=r"unknown task option\(s\) \['zooo'\]"):
        resolve_config("wildpark", "ng-t", None, False, ["task.zooo=x"])
    with pytest.raises(SystemExit, match="expected SECTION.KEY=VALUE"):
        resolve_config("wildpark", "ng-t", None, False, ["epochs=3"])
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.01\nmodels:\n  x: 1\n")
    with pytest.raises(SystemExit, match=r"unknown section 'models'"):
        resolve_config("wildpark", "ng-t", str(f), False, [])


def test_resuming_with_another_configuration_is_refused(tmp_path):
    fit(make_model("weights"), TinyTask(None), TrainConfig(epochs=1, batch_size=8), str(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"another configuration \(train.lr: 0.001 -> 0.01\)"):
        fit(make_model("weights"), TinyTask(None), TrainConfig(epochs=2, batch_size=8, lr=0.01), str(tmp_path),
            progress=False)


def test_normalize_graphs_fits_on_train_only(monkeypatch):
    from neuralgraph.tasks.zoo_tasks import normalize_graphs
    from neuralgraph.transforms import NormalizeLayers

    fitted = []
    real_fit = NormalizeLayers.fit
    monkeypatch.setattr(NormalizeLayers, "fit", lambda self, graphs: fitted.append(len(graphs)) or
                        real_fit(self, graphs))
    raw = TinyTask(None).splits
    norm = normalize_graphs(TinyTask(None).build_splits())
    for name in ("train", "val", "test"):
        a, b = raw[name].graphs(), norm[name].graphs()
        assert len(a) == len(b) and not torch.equal(a[0].edge_attr, b[0].edge_attr)
        assert torch.equal(a[0].edge_index, b[0].edge_index)
    assert fitted == [len(raw["train"])]  # fitted once, on the training graphs only


def test_weight_standardization_fits_on_train_only(monkeypatch):
    from neuralgraph.models.nfn import NFN

    seen = []
    real_fit = NFN.fit_statistics
    monkeypatch.setattr(NFN, "fit_statistics", lambda self, items: seen.append(list(items)) or
                        real_fit(self, seen[-1]))
    task = TinyTask(None)
    sig = task.splits["train"].weights()[0].signature
    torch.manual_seed(0)
    model = create_model("nfn-np", weight_shapes=sig, hidden_channels=(4,), head_hidden=(8,))
    fit(model, task, TrainConfig(epochs=1, batch_size=8), progress=False)
    assert len(seen) == 1 and len(seen[0]) == len(task.splits["train"])
    train = torch.cat([ws.weights[0] for ws in task.splits["train"].weights()])
    torch.testing.assert_close(model.get_buffer("w_std_0").view(-1), train.std((0, 1), unbiased=False))
