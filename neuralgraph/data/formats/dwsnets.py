"""Reader for the DWSNets MNIST / FashionMNIST INR sets (Navon et al., ICML 2023), read-only.

Each INR is a ``torch.save``'d state dict of a SIREN 2 -> 32 -> 32 -> 1: ``seq.0.weight`` [32, 2],
``seq.0.bias``, ``seq.1.weight`` [32, 32], ``seq.1.bias``, ``seq.2.weight`` [1, 32], ``seq.2.bias``
(sine activations with w0 = 30 after the hidden layers, output + 0.5). Layout on disk::

    <root>/mnist_png_training_<label>_<idx>/checkpoints/model_final.pth     (label from the path)
    <root>/mnist_png_testing_<label>_<idx>/checkpoints/model_final.pth

and a splits JSON ``{"train": {"path": [...], "label": [...]}, "val": ..., "test": ...}``, published as
``mnist_splits.json`` / ``fmnist_splits.json`` (:data:`PUBLISHED_SPLITS`, the names DWSNets' split scripts
write) beside the INR directory, with paths relative to the DWSNets checkout
(``dataset/mnist-inrs/mnist_png_.../model_final.pth``): a relative path is read below the root by its longest
tail that exists there, so the root may be the INR directory or the directory holding it. The label
comes from the splits file, else a ``label`` key stored next to the state dict, else the path
(the ``<label>`` field of the grand-parent directory name, as DWSNets' split script does).

Files are loaded with ``torch.load(weights_only=True)`` only (see :mod:`.safe`).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from neuralgraph.data.formats.native import BaseZoo, ZooFormatError, ZooMember
from neuralgraph.data.formats.safe import safe_torch_load

SIREN_W0 = 30.0
SIREN_OUTPUT_OFFSET = 0.5
#: the splits JSON names DWSNets' split scripts write (MNIST and FashionMNIST INRs)
PUBLISHED_SPLITS = ("mnist_splits.json", "fmnist_splits.json")


def published_splits_files(root: str | os.PathLike) -> list[Path]:
    """The splits files by their published names (:data:`PUBLISHED_SPLITS`) in ``root``."""
    return [Path(root) / name for name in PUBLISHED_SPLITS if (Path(root) / name).is_file()]


def _resolve(path: str, root: Path, splits: str | os.PathLike, split: str) -> Path:
    """An INR file named in a splits file: absolute and existing, else the longest tail of the path that exists
    below ``root`` (published paths start with the DWSNets checkout's ``dataset/<inr dir>/``)."""
    p = Path(path)
    if p.is_absolute() and p.exists():
        return p
    parts = p.parts[1:] if p.is_absolute() else p.parts
    for i in range(len(parts)):
        if (root / Path(*parts[i:])).is_file():
            return root / Path(*parts[i:])
    raise ZooFormatError(f"{str(splits)!r}: the {split!r} INR {path!r} is not below {str(root)!r} (nor any tail of "
                         "its path); point the zoo at the directory holding the INR files")


def label_from_path(path: Path) -> int | None:
    """``.../mnist_png_training_7_123/checkpoints/model_final.pth`` -> 7 (``None`` if absent)."""
    parts = path.parent.parent.name.split("_")
    if len(parts) >= 2 and re.fullmatch(r"-?\d+", parts[-2]):
        return int(parts[-2])
    return None


def _state_dict(obj: Any, path: Path) -> tuple[dict, int | None]:
    if isinstance(obj, Mapping) and "state_dict" in obj:
        return dict(obj["state_dict"]), obj.get("label")
    if isinstance(obj, Mapping) and "label" in obj:
        return {k: v for k, v in obj.items() if k != "label"}, int(obj["label"])
    if isinstance(obj, Mapping):
        return dict(obj), None
    raise ZooFormatError(f"{path}: expected a state dict")


def siren_description(sd: Mapping[str, Any]) -> dict[str, Any]:
    """The ``siren`` description matching a DWSNets state dict."""
    ws = sorted((k for k in sd if k.startswith("seq.") and k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))
    if not ws:
        raise ZooFormatError(f"not a DWSNets SIREN state dict: keys {sorted(sd)[:6]}")
    shapes = [tuple(sd[k].shape) for k in ws]
    return {"family": "siren", "in_dim": int(shapes[0][1]), "hidden": [int(s[0]) for s in shapes[:-1]],
            "out_dim": int(shapes[-1][0]), "w0": SIREN_W0, "output_offset": SIREN_OUTPUT_OFFSET}


class DWSNetsINRs(BaseZoo):
    """One split of a DWSNets INR set; members carry ``metrics["label"]``.

    Args:
        root (str): directory of the INR files, or the one holding it (a relative path of the splits file is
            read by its longest tail that exists below ``root``, an absolute one as it is if it exists).
        splits (str, optional): the splits JSON. Without it every ``*.pth`` under ``root`` is read and the
            split taken from the path (``train``/``training`` vs ``test``). (default: ``None``)
        split (str, optional): ``"train"``, ``"val"``, ``"test"`` or ``"all"``. (default: ``"train"``)
    """

    def __init__(self, root: str | os.PathLike, splits: str | os.PathLike | None = None, split: str = "train") -> None:
        root = Path(root)
        self.roots = [root]
        self._splits_file = [Path(splits)] if splits is not None else []
        items: list[tuple[Path, int | None]] = []
        if splits is not None:
            with open(splits) as f:
                table = json.load(f)
            names = ["train", "val", "test"] if split == "all" else [split]
            for name in names:
                if name not in table:
                    raise ZooFormatError(f"{splits}: no {name!r} split (has {sorted(table)})")
                paths, labels = table[name]["path"], table[name].get("label", [None] * len(table[name]["path"]))
                for p, lab in zip(paths, labels):
                    items.append((_resolve(p, root, splits, name), None if lab is None else int(lab)))
        else:
            for p in sorted(root.rglob("*.pth")):  # e.g. mnist_png_training_3_100/...: judged below root only
                s = "train" if "train" in p.relative_to(root).as_posix() else "test"
                if split in ("all", s):
                    items.append((p, None))
        if not items:
            raise ZooFormatError(f"no INR files found for split {split!r} under {str(root)!r}")
        self.header = {"format": "dwsnets-inr", "preset": f"dwsnets:{root.name}", "split": split}
        self.records, self.members = {}, []
        for i, (path, label) in enumerate(items):
            sd, stored = _state_dict(safe_torch_load(path, what="a DWSNets INR"), path)
            label = label if label is not None else stored if stored is not None else label_from_path(path)
            if label is None:
                raise ZooFormatError(f"{path}: no label in the splits file, the file or the path")
            rid = f"inr{i:06d}"
            rec = {"path": str(path)}
            self.records[rid] = rec
            self.members.append(ZooMember(rid, 0, 0, 0, siren_description(sd), {"label": float(label)}, {}, rec, self))

    def source_files(self) -> list[Path]:
        return [Path(rec["path"]) for rec in self.records.values()] + self._splits_file

    def member_source(self, member: ZooMember) -> str:
        return member.record["path"]

    def member_params(self, member: ZooMember) -> dict[str, np.ndarray]:
        sd, _ = _state_dict(safe_torch_load(member.record["path"], what="a DWSNets INR"), Path(member.record["path"]))
        return {k: v.detach().cpu().numpy() for k, v in sd.items()}
