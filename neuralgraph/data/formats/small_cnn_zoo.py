"""Reader for the Small CNN Zoo (Unterthiner et al. 2020, "Predicting Neural Network Accuracy from
Weights"), read-only.

Files of one zoo (e.g. CIFAR10-GS)::

    weights.npy       [rows, 4970] float32, one flattened network per row (memory-mapped here)
    layout.csv        varname,start_idx,end_idx,shape   e.g. sequential/conv2d/kernel:0,0,144,"(3, 3, 1, 16)"
    metrics.csv.gz    one row per weights row: step, test_accuracy, test_loss, train_accuracy, ...,
                      config.activation, config.learning_rate, ...

TensorFlow layouts become torch layouts: a conv kernel ``(h, w, in, out)`` -> ``(out, in, h, w)``, a
dense kernel ``(in, out)`` -> ``(out, in)``. Parameters are named ``layers.{i}.weight/bias`` in layout
order, matching the ``cnn`` family of :mod:`neuralgraph.data.arch`.

The standard split of NFN and Neural Graphs: reorder rows by a permutation file (one row index per
line, no header), keep rows with ``step == 86``, take the second half as test, and split the first
half 80/20 into train / val after shuffling its positions with ``random.Random(0)``.

The rebuilt torch module uses ``conv_stride`` / ``conv_padding`` (default 2 / 1). The zoo was trained
with TensorFlow "same" padding, which for stride 2 on even inputs pads asymmetrically; a torch conv
pads symmetrically, so the rebuilt module matches the original function up to border effects. The
parameters (and hence neural graphs and weight spaces) are exact.
"""
from __future__ import annotations

import ast
import csv
import gzip
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from neuralgraph.data.formats.native import BaseZoo, ZooFormatError, ZooMember


def standard_split(n: int, split: str) -> list[int]:
    """Positions (after permutation and step filtering) of the NFN / Neural Graphs split."""
    test_point = int(0.5 * n)
    if split == "test":
        return list(range(test_point, n))
    trainval = list(range(test_point))
    random.Random(0).shuffle(trainval)
    val_point = int(0.8 * len(trainval))
    if split == "train":
        return trainval[:val_point]
    if split == "val":
        return trainval[val_point:]
    if split == "all":
        return list(range(n))
    raise ValueError(f"split must be train, val, test or all, got {split!r}")


def _read_layout(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            shape = ast.literal_eval(r["shape"])
            if not (isinstance(shape, tuple) and all(isinstance(s, int) for s in shape)):
                raise ZooFormatError(f"{path}: bad shape {r['shape']!r} for {r['varname']!r}")
            rows.append({"varname": r["varname"], "start": int(r["start_idx"]), "end": int(r["end_idx"]),
                         "shape": shape})
    return rows


def _read_metrics(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def _num(v: str) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in str(v) and "e" not in str(v).lower() else f


class SmallCNNZoo(BaseZoo):
    """One split of a Small CNN Zoo directory.

    Args:
        root (str): directory with ``weights.npy``, ``layout.csv``, ``metrics.csv.gz``.
        split (str, optional): ``"train"``, ``"val"``, ``"test"`` or ``"all"``. (default: ``"train"``)
        permutation_file (str, optional): the row permutation (one index per line); ``None`` keeps
            file order. (default: ``None``)
        step (int or None, optional): keep only rows at this step (``None``: keep all). (default: ``86``)
        input_size (tuple, optional): image size for the rebuilt module. (default: ``(32, 32)``)
        conv_stride, conv_padding (int, optional): conv geometry of the rebuilt module. (default: 2, 1)

    Every row is its own run (run id ``row<index in weights.npy>``); members expose ``metrics``
    (``test_accuracy`` ...) and ``hyperparameters`` (the ``config.*`` columns).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", permutation_file: str | None = None,
                 step: int | None = 86, input_size: tuple[int, int] = (32, 32), conv_stride: int = 2,
                 conv_padding: int = 1) -> None:
        root = Path(root)
        self.roots = [root]
        for name in ("weights.npy", "layout.csv"):
            if not (root / name).exists():
                raise ZooFormatError(f"{str(root)!r} is not a Small CNN Zoo directory: {name} is missing")
        metrics_path = root / "metrics.csv.gz"
        if not metrics_path.exists() and (root / "metrics.csv").exists():
            metrics_path = root / "metrics.csv"
        try:  # memory-mapped: rows are read only when a member's parameters are requested
            self.weights = np.load(root / "weights.npy", mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise ZooFormatError(f"refusing {str(root / 'weights.npy')!r}: not a plain .npy array ({e})") from e
        if not isinstance(self.weights, np.ndarray) or self.weights.ndim != 2:
            raise ZooFormatError(f"refusing {str(root / 'weights.npy')!r}: expected a 2-D .npy array")
        self.layout = _read_layout(root / "layout.csv")
        metrics = _read_metrics(metrics_path)
        if len(metrics) != self.weights.shape[0]:
            raise ZooFormatError(f"{root}: {len(metrics)} metrics rows but {self.weights.shape[0]} weight rows")
        order = np.arange(len(metrics))
        if permutation_file is not None:
            order = np.loadtxt(permutation_file, dtype=np.int64, delimiter=",", ndmin=1).reshape(-1)
        if step is not None:
            order = np.array([i for i in order if int(float(metrics[i]["step"])) == step], dtype=np.int64)
        rows = order[standard_split(len(order), split)]
        self.header = {"format": "small-cnn-zoo", "preset": f"small-cnn-zoo:{root.name}", "split": split}
        self._geometry = (tuple(input_size), conv_stride, conv_padding)
        self.records, self.members = {}, []
        for row in rows.tolist():
            m = metrics[row]
            hp = {k[len("config."):]: _num(v) for k, v in m.items() if k.startswith("config.")}
            met = {k: float(v) for k, v in m.items()
                   if not k.startswith("config.") and k not in ("step", "modeldir") and _is_float(v)}
            arch = self.architecture(hp.get("activation", "relu"))
            rid = f"row{row}"
            rec = {"row": row, "step": _num(m.get("step", "0"))}
            self.records[rid] = rec
            self.members.append(ZooMember(rid, 0, int(float(m.get("step", 0) or 0)), int(float(m.get("step", 0) or 0)),
                                          arch, met, hp, rec, self))

    def architecture(self, activation: str = "relu") -> dict[str, Any]:
        """The ``cnn`` description of a row (convs, global average pool, dense), from ``layout.csv``."""
        (size, stride, pad) = self._geometry
        layers, pooled = [], False
        kernels = [r for r in self.layout if r["varname"].endswith("kernel:0")]
        for i, r in enumerate(kernels):
            last = i == len(kernels) - 1
            if len(r["shape"]) == 4:
                layers.append({"kind": "conv", "out": r["shape"][3], "kernel": r["shape"][0], "stride": stride,
                               "padding": pad, "pool": 0, "act": activation})
            else:
                if not pooled:
                    layers.append({"kind": "gap"})
                    pooled = True
                layers.append({"kind": "linear", "out": r["shape"][1], "act": "identity" if last else activation})
        in_ch = kernels[0]["shape"][2] if kernels and len(kernels[0]["shape"]) == 4 else 1
        return {"family": "cnn", "in_channels": in_ch, "input_size": list(size),
                "n_classes": kernels[-1]["shape"][-1] if kernels else 10, "layers": layers}

    def row_params(self, row: int) -> dict[str, np.ndarray]:
        """Parameters of a weights row in torch layout (``layers.{i}.weight`` / ``.bias``)."""
        flat = np.asarray(self.weights[row], dtype=np.float32)
        out, i = {}, -1
        for r in self.layout:
            a = flat[r["start"]:r["end"]].reshape(r["shape"])
            if r["varname"].endswith("kernel:0"):
                i += 1
                a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T     # (h,w,in,out)->(out,in,h,w); (in,out)->(out,in)
                out[f"layers.{i}.weight"] = np.ascontiguousarray(a)
            elif r["varname"].endswith("bias:0"):
                out[f"layers.{i}.bias"] = a.copy()
            else:
                raise ZooFormatError(f"unrecognised variable {r['varname']!r} in layout.csv")
        return out

    def member_params(self, member: ZooMember) -> dict[str, np.ndarray]:
        return self.row_params(member.record["row"])


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False
