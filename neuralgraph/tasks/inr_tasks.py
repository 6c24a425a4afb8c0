"""Tasks on implicit neural representations (SIRENs fitted to images): ``inr-cls`` and ``inr-edit``.

Neural Graphs §4.1-4.2 (tables 3, 5), NFN §3.2 and §3.4 (appendix D.4). Every member is one SIREN
2 -> 32 -> 32 -> 1 fitted to one image (our INR zoos, :mod:`neuralgraph.zoo.inr`; ``inr-cls`` also reads a
DWSNets INR directory). The zoo is homogeneous, so every registered model applies (NFN and the flat MLP
included), and graph models can use probe features (``model.probes``).

The graphs use ``max_kernel=(1,)``: an INR has linear layers only, so each weight is one edge feature.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuralgraph.data.formats.dwsnets import PUBLISHED_SPLITS, DWSNetsINRs, published_splits_files
from neuralgraph.data.formats.native import load_zoo
from neuralgraph.data.zoo import ZooDataset
from neuralgraph.tasks.base import ClassificationTask, Split, Task, register_task
from neuralgraph.tasks.parameters import parameter_values
from neuralgraph.tasks.zoo_tasks import dataset_split, processed_root, zoo_splits
from neuralgraph.zoo import default_zoo
from neuralgraph.zoo.inr import member_image, render_sirens

__all__ = ["InrClsTask", "InrEditTask", "dilate"]


def dilate(images: Tensor) -> Tensor:
    """3x3 grey-scale morphological dilation (the maximum over each pixel's 3x3 neighbourhood inside the
    image, as OpenCV's ``cv2.dilate`` with a 3x3 kernel). ``[n, H, W] -> [n, H, W]``."""
    return F.max_pool2d(images.unsqueeze(1), 3, stride=1, padding=1).squeeze(1)


class _InrTask(Task):
    """Shared by the INR tasks: the zoo, its splits by run and the members' one architecture."""

    #: the directory formats besides ours that the task reads (for the error message)
    other_formats: ClassVar[str] = ""

    def zoo_root(self) -> Path:
        """The task's ``zoo`` directory (an error naming it if it does not exist)."""
        root = Path(os.path.expanduser(self.cfg.zoo))
        if not root.is_dir():
            raise FileNotFoundError(f"task.zoo={self.cfg.zoo!r}: no such directory")
        return root

    @property
    def converter(self) -> dict[str, Any]:
        return {"max_kernel": tuple(self.cfg.max_kernel)}

    def our_zoo_splits(self) -> dict[str, Split]:
        """Splits of our INR zoo (the task's ``zoo`` directory, or the preset) by run."""
        c = self.cfg
        if c.zoo is None:
            zoo = default_zoo(preset=c.preset, runs=c.runs)
        else:
            root = self.zoo_root()
            if not (root / "zoo.json").exists():
                raise FileNotFoundError(f"{str(root)!r} is not an INR zoo in our format (no zoo.json)"
                                        + self.other_formats)
            zoo = load_zoo(root)
        return zoo_splits(zoo, c.split, c.split_seed, "label", self.converter)

    def architecture(self) -> dict[str, Any]:
        """The architecture every member shares (an error if the zoo mixes several)."""
        arch = super().architecture()
        if arch is None:
            raise ValueError(f"the {self.name} zoo mixes architectures; the INR tasks need one")
        return arch


@dataclass
class InrClsConfig:
    zoo: str | None = None  # an INR zoo (ours) or a DWSNets INR directory; None: the preset in $NEURALGRAPH_HOME
    # DWSNets directory only: its splits JSON (train / val / test paths + labels); None: the one in `zoo` by its
    # published name (mnist_splits.json or fmnist_splits.json)
    splits_file: str | None = None
    preset: str = "inr-digits"  # preset of the embedded zoo
    runs: int | None = None  # INRs of the embedded zoo (one per image); None: the preset's size (1,797 / 10,000)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test fractions (our zoos)
    split_seed: int = 0  # seed of the split
    max_kernel: tuple[int, ...] = (1,)  # converter option (INRs are linear layers only)


@register_task("inr-cls")
class InrClsTask(_InrTask, ClassificationTask):
    """Classify the image an INR encodes from the INR's weights (NG table 3, NFN table 3)."""

    Config = InrClsConfig
    other_formats = (" nor a DWSNets INR directory (no splits JSON named " + " or ".join(PUBLISHED_SPLITS)
                     + " in it, no *.pth INR files below it); pass a DWSNets splits JSON as task.splits_file=...")

    def splits_file(self) -> Path | None:
        """The DWSNets splits JSON: ``task.splits_file``, else the one in the ``zoo`` directory by its published
        name; ``None`` for a zoo in our format (or no zoo)."""
        c = self.cfg
        if c.splits_file is not None:
            return Path(os.path.expanduser(c.splits_file))
        if c.zoo is None or (self.zoo_root() / "zoo.json").exists():
            return None
        root = self.zoo_root()
        found = published_splits_files(root)
        if len(found) > 1:
            raise ValueError(f"{str(root)!r} holds {len(found)} DWSNets splits files ({', '.join(f.name for f in found)}"
                             f"); choose one with task.splits_file={found[0]}")
        if not found and next(root.rglob("*.pth"), None) is not None:
            raise FileNotFoundError(f"{str(root)!r} holds DWSNets INR files but no splits JSON named "
                                    f"{' or '.join(PUBLISHED_SPLITS)} (DWSNets' split script writes it beside the INR "
                                    "directory): copy it into this directory or pass task.splits_file=...")
        return found[0] if found else None

    def build_splits(self) -> dict[str, Split]:
        c = self.cfg
        splits_file = self.splits_file()
        if c.zoo is not None and splits_file is not None:
            zoos = {name: DWSNetsINRs(self.zoo_root(), splits_file, split=name) for name in ("train", "val", "test")}
            return {name: dataset_split(ZooDataset(z, "all", root=processed_root(z), target="label",
                                                   converter=self.converter)) for name, z in zoos.items()}
        if c.splits_file is not None:
            raise ValueError("task.splits_file is for a DWSNets INR directory: set task.zoo to that directory too")
        return self.our_zoo_splits()


@dataclass
class InrEditConfig:
    zoo: str | None = None  # an INR zoo in our format (members keep their image); None: the preset
    preset: str = "inr-digits"  # preset of the embedded zoo
    runs: int | None = None  # INRs of the embedded zoo (one per image); None: the preset's size (1,797 / 10,000)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test fractions
    split_seed: int = 0  # seed of the split
    edit: str = "dilate"  # the image-space edit to learn in weight space: "dilate" (3x3 grey-scale dilation)
    gamma_init: float = 0.01  # initial step size of the edit U' = U + gamma * dU (gamma is learned)
    max_kernel: tuple[int, ...] = (1,)  # converter option (INRs are linear layers only)


class EditedINR(nn.Module):
    """A model whose per-parameter output ``dU`` edits its input INR ``U`` to ``U + gamma * dU`` (NFN
    appendix D.4): the model plus the learned step size ``gamma``. Everything else is the wrapped model's."""

    def __init__(self, net: nn.Module, gamma: float):
        super().__init__()
        self.net = net
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))

    def forward(self, batch):
        return self.net(batch)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # input_kind, fit_statistics, ... of the wrapped model
            return getattr(super().__getattr__("net"), name)


_EDITS = {"dilate": dilate}


@register_task("inr-edit")
class InrEditTask(_InrTask):
    """Edit an INR's weights so that it renders the dilated image (NG figure 2c / table 5, NFN table 6):
    the model outputs one update per parameter, the loss is the pixel MSE of the edited INR's rendering
    against the dilated original image (NFN eq. 21). Metric: pixel ``mse`` (and ``mse_unedited``, the
    unedited INR against the same target, as the reference point)."""

    Config = InrEditConfig
    output: ClassVar[str] = "parameters"
    select_metric: ClassVar[str] = "mse"
    select_mode: ClassVar[str] = "min"
    example_fields: ClassVar[tuple[str, ...]] = ("original", "target", "edited")
    figure: ClassVar[str | None] = "reconstructions"

    def build_splits(self) -> dict[str, Split]:
        if self.cfg.edit not in _EDITS:
            raise ValueError(f"Could not resolve edit {self.cfg.edit!r} among choices {sorted(_EDITS)}")
        splits = self.our_zoo_splits()
        for split in splits.values():
            ds = split.dataset
            images = torch.from_numpy(np.stack([member_image(ds.member(i)) for i in range(len(ds))]))
            split.y = _EDITS[self.cfg.edit](images.float())  # [n, H, W] target images
        return splits

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return EditedINR(model, self.cfg.gamma_init)

    def edit(self, model: EditedINR, batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The input INRs ``U`` and the edited ones ``U + gamma * dU``, ``{name: [B, *shape]}``."""
        plan = self.plan()
        params = parameter_values(batch, plan)
        update = parameter_values(model(batch), plan)
        return params, {k: v + model.gamma * update[k] for k, v in params.items()}

    def render(self, params: dict[str, Tensor], like: Tensor) -> Tensor:
        """SIRENs ``{name: [B, *shape]}`` rendered on the pixel grid of the images ``like`` ``[B, H, W]``."""
        arch = self.architecture()
        return render_sirens(params, like.size(1), like.size(2), w0=arch["w0"], output_offset=arch["output_offset"])

    def loss(self, model: nn.Module, batch) -> Tensor:
        _, edited = self.edit(model, batch)
        target = batch.y  # (B, H, W)
        return F.mse_loss(self.render(edited, target), target)

    def predict(self, model: nn.Module, batch) -> dict[str, Tensor]:
        params, edited = self.edit(model, batch)
        target = batch.y
        before, after = self.render(params, target), self.render(edited, target)  # (B, H, W)
        return {"mse": (after - target).pow(2).mean((1, 2)), "mse_unedited": (before - target).pow(2).mean((1, 2)),
                "original": before, "target": target, "edited": after}

    def metrics(self, records: dict[str, np.ndarray]) -> dict[str, float]:
        return {"mse": float(records["mse"].mean()), "mse_unedited": float(records["mse_unedited"].mean())}
