"""inr-cls and inr-edit on a tiny INR zoo of real fitted SIRENs (and a DWSNets-format copy of it)."""
import copy
import json

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from neuralgraph.data import WeightSpaceBatch
from neuralgraph.models import create_model, list_models
from neuralgraph.tasks import create_task
from neuralgraph.tasks.inr_tasks import EditedINR, dilate
from neuralgraph.training import NUM_EXAMPLES, TrainConfig, fit
from neuralgraph.zoo.generate import generate
from neuralgraph.zoo.inr import member_image
from tests.helpers.permute import assert_params_moved, assert_same_function, permute_in, permute_out

SPLIT = [0.5, 0.25, 0.25]


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("inr") / "zoo"
    generate("inr-digits", 24, d, epochs=30, progress=False)
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("NEURALGRAPH_HOME", str(home))  # processed graphs go here
    yield d
    mp.undo()


def test_dilate_is_the_3x3_maximum_inside_the_image():
    img = torch.rand(2, 5, 6)
    ref = torch.empty_like(img)
    for i in range(5):
        for j in range(6):
            ref[:, i, j] = img[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].amax((1, 2))
    assert torch.equal(dilate(img), ref)


def test_inr_cls_serves_every_model(zoo_dir, tmp_path):
    task = create_task("inr-cls", zoo=str(zoo_dir), split=SPLIT)
    assert task.num_classes == 10 and len(task.splits["train"]) == 12
    labels = [int(task.splits["test"].dataset.member(i).metrics["label"]) for i in range(6)]
    assert task.splits["test"].y.long().tolist() == labels
    for name in list_models():  # one architecture, feed-forward: nothing is refused
        assert "out_dim" in task.model_kwargs(name) or name == "mlp"
    kwargs = task.model_kwargs("ng-t")
    torch.manual_seed(0)
    model = create_model("ng-t", **kwargs, node_dim=8, edge_dim=4, num_layers=1, probes=4)
    res = fit(model, task, TrainConfig(epochs=1, batch_size=4), str(tmp_path), progress=False)
    assert 0 <= res["test"]["accuracy"] <= 1 and "acc_c9" in res["test"]


def write_dwsnets(zoo_dir, dataset):
    """Our zoo's members as DWSNets publishes its INRs: ``dataset/mnist-inrs/mnist_png_<kind>_<label>_<id>/
    checkpoints/model_final.pth`` and ``dataset/mnist_splits.json`` with paths relative to the DWSNets checkout
    (``dataset/mnist-inrs/...``) and labels as strings, as its split script writes them."""
    ours = create_task("inr-cls", zoo=str(zoo_dir), split=SPLIT)
    table = {}
    for name, split in ours.splits.items():
        paths, labels = [], []
        for i in range(len(split)):
            m = split.dataset.member(i)
            label = int(m.metrics["label"])
            kind = "testing" if name == "test" else "training"
            d = dataset / "mnist-inrs" / f"mnist_png_{kind}_{label}_{m.run_id}" / "checkpoints"
            d.mkdir(parents=True)
            torch.save({k: torch.from_numpy(v) for k, v in m.params().items()}, d / "model_final.pth")
            paths.append(f"dataset/{(d / 'model_final.pth').relative_to(dataset)}")
            labels.append(str(label))
        table[name] = {"path": paths, "label": labels}
    (dataset / "mnist_splits.json").write_text(json.dumps(table))
    return ours


def test_inr_cls_reads_a_dwsnets_directory(zoo_dir, tmp_path):
    dataset = tmp_path / "dataset"
    ours = write_dwsnets(zoo_dir, dataset)
    inrs = dataset / "mnist-inrs"
    # as published: the directory holding the INRs and mnist_splits.json; the INR directory with the splits
    # file copied in; any directory with task.splits_file=
    (inrs / "mnist_splits.json").write_text((dataset / "mnist_splits.json").read_text())
    for kw in (dict(zoo=str(dataset)), dict(zoo=str(inrs)),
               dict(zoo=str(inrs), splits_file=str(dataset / "mnist_splits.json"))):
        theirs = create_task("inr-cls", **kw)
        for name in ("train", "val", "test"):
            assert torch.equal(theirs.splits[name].y, ours.splits[name].y)
            a, b = theirs.splits[name].graphs()[0], ours.splits[name].graphs()[0]
            assert torch.equal(a.edge_attr, b.edge_attr) and torch.equal(a.x, b.x)
    with pytest.raises(ValueError, match="splits_file is for a DWSNets INR directory"):
        create_task("inr-cls", splits_file="x.json").splits


def test_inr_cls_names_what_a_directory_lacks(zoo_dir, tmp_path):
    dataset = tmp_path / "dataset"
    write_dwsnets(zoo_dir, dataset)
    inrs = dataset / "mnist-inrs"
    # DWSNets INR files, but their splits file is elsewhere (beside the directory, where the script writes it)
    with pytest.raises(FileNotFoundError, match=r"mnist-inrs' holds DWSNets INR files but no splits JSON named "
                                                r"mnist_splits.json or fmnist_splits.json.*task.splits_file="):
        create_task("inr-cls", zoo=str(inrs)).splits
    # two published splits files: which one is the user's choice
    (dataset / "fmnist_splits.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds 2 DWSNets splits files \(mnist_splits.json, fmnist_splits.json\); "
                                         r"choose one with task.splits_file="):
        create_task("inr-cls", zoo=str(dataset)).splits
    # neither format
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty' is not an INR zoo in our format \(no zoo.json\) nor a DWSNets "
                                                r"INR directory \(no splits JSON named mnist_splits.json or "
                                                r"fmnist_splits.json in it, no \*.pth INR files below it\)"):
        create_task("inr-cls", zoo=str(tmp_path / "empty")).splits
    with pytest.raises(FileNotFoundError, match=r"task.zoo='.*nowhere': no such directory"):
        create_task("inr-cls", zoo=str(tmp_path / "nowhere")).splits


def test_inr_edit_end_to_end(zoo_dir, tmp_path):
    task = create_task("inr-edit", zoo=str(zoo_dir), split=SPLIT)
    split = task.splits["train"]
    images = torch.from_numpy(np.stack([member_image(split.dataset.member(i)) for i in range(len(split))]))
    assert torch.equal(split.y, dilate(images))
    torch.manual_seed(0)
    model = create_model("nfn-np", **task.model_kwargs("nfn-np"), hidden_channels=(8,))
    res = fit(model, task, TrainConfig(epochs=2, batch_size=4), str(tmp_path), progress=False)
    assert set(res["test"]) == {"mse", "mse_unedited"} and res["test"]["mse"] >= 0
    saved = json.loads((tmp_path / "predictions.json").read_text())["test"]
    assert len(saved["mse"]) == 6 and len(saved["edited"]) == min(6, NUM_EXAMPLES)
    # the unedited INRs against the dilated images, computed directly
    test = task.splits["test"]
    imgs = torch.from_numpy(np.stack([member_image(test.dataset.member(i)) for i in range(6)]))
    fits = torch.tensor([test.dataset.member(i).metrics["mse"] for i in range(6)])
    assert fits.max() < 1e-2  # the INRs do encode their images
    direct = (torch.tensor(saved["original"]) - dilate(imgs)).pow(2).mean()
    assert res["test"]["mse_unedited"] == pytest.approx(float(direct), rel=1e-3, abs=1e-4)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    assert "gamma" in state  # the learned step size is trained and checkpointed with the model


def _permuted(m, gen):
    p = copy.deepcopy(m)
    a, b = torch.randperm(32, generator=gen), torch.randperm(32, generator=gen)
    permute_out(p.seq[0], a), permute_in(p.seq[1], a), permute_out(p.seq[1], b), permute_in(p.seq[2], b)
    return p


@pytest.mark.parametrize("name,extra", [("ng-gnn", {"hidden": 8, "num_layers": 2}),
                                        ("ng-t", {"node_dim": 8, "edge_dim": 4, "num_layers": 2, "probes": 4}),
                                        ("nfn-np", {"hidden_channels": (8,)}),
                                        ("nfn-hnp", {"hidden_channels": (8,)})])
def test_edited_inr_is_the_same_for_permuted_hidden_neurons(zoo_dir, name, extra):
    task = create_task("inr-edit", zoo=str(zoo_dir), split=SPLIT)
    plan = task.plan()
    split = task.splits["test"]
    nets = [split.dataset.member(i).model() for i in range(4)]
    gen = torch.Generator().manual_seed(0)
    perm = [_permuted(m, gen) for m in nets]
    coords = torch.rand(30, 2) * 2 - 1
    for a, b in zip(nets, perm):
        assert_params_moved(a, b)
        assert_same_function(a, b, coords)
    torch.manual_seed(0)
    model = EditedINR(create_model(name, **task.model_kwargs(name), **extra), gamma=0.05).eval()
    if hasattr(model, "fit_statistics"):  # as the training loop does
        model.fit_statistics(split.graphs() if model.input_kind == "graph" else split.weights())
    renders = []
    for population in (nets, perm):
        if model.input_kind == "graph":
            batch = Batch.from_data_list([plan.graph(m) for m in population])
        else:
            batch = WeightSpaceBatch.collate([plan.weight_space(m) for m in population])
        with torch.no_grad():
            params, edited = task.edit(model, batch)
            renders.append((task.render(params, split.y[:4]), task.render(edited, split.y[:4])))
    (before_a, after_a), (before_b, after_b) = renders
    assert torch.allclose(before_a, before_b, atol=1e-5)
    assert not torch.allclose(after_a, before_a, atol=1e-3)  # the edit changes the image
    assert torch.allclose(after_a, after_b, atol=1e-4), (after_a - after_b).abs().max()
