"""Zoo presets: which architectures are sampled, on which data, with which hyperparameters.

A preset is a small explicit table entry. Runs are numbered ``0..N-1``; run ``r`` belongs to group
``r // group_size``. Everything about a run is a pure function of ``(preset, seed, r)``:

* the group's architecture and train fraction come from ``rng(seed, group)``;
* the member's hyperparameters, init and data order from ``rng(seed, r)``;

so any process (a worker, a shard, a re-run after a crash) regenerates exactly the same run.

Hyperparameters follow Unterthiner et al. 2020 (appendix A.2, "Predicting Neural Network Accuracy
from Weights"): optimizer uniform over {Adam, RMSProp, SGD}; learning rate log-uniform in
[5e-4, 5e-2]; L2 coefficient log-uniform in [1e-8, 1e-2]; dropout uniform in [0, 0.7]; init std
log-uniform in [1e-3, 0.5]; init scheme uniform over {he normal, glorot normal, orthogonal,
normal, truncated normal}; train fraction uniform over {0.1, 0.25, 0.5, 1.0}; activation (Arch1 /
Arch2 presets) uniform over {ReLU, tanh}. Batch size 32. The train fraction is drawn per group
(members trained together see the same number of steps); everything else per run.

``wildpark-digits`` narrows these ranges (:func:`sample_wildpark_hparams`): the published Wild Park
trains every CNN with one recipe for hundreds of epochs, and its spread of accuracies comes from the
architectures and the checkpoints. With 10 epochs on 8x8 digits, Unterthiner et al.'s full ranges
leave 47% of all checkpoints (29% of final ones) at chance (< 15% test accuracy; 48 runs measured),
the narrowed ranges 28% (10% of final ones), with final accuracies spread from 0.1 to 0.94.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from neuralgraph.zoo.datasets import IMAGE_SETS, load_image_data, load_images
from neuralgraph.zoo.inr import COORDINATES, SIREN_DESC, FitConfig, fit_sirens
from neuralgraph.zoo.train import INIT_SCHEMES, OPTIMIZERS, TrainConfig

TRAIN_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
WILDPARK_ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "leaky_relu", "identity")


def run_id(index: int) -> str:
    """The id (file name stem) of run ``index``."""
    return f"run{index:06d}"


def rng_for(*keys: int) -> np.random.Generator:
    """A numpy generator for a tuple of non-negative ints (stable across processes)."""
    return np.random.default_rng([int(k) for k in keys])


def seed_for(*keys: Any) -> int:
    """A 63-bit torch seed from a tuple of keys (stable across processes and Python versions)."""
    h = hashlib.sha256(repr(tuple(keys)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def sample_hparams(rng: np.random.Generator) -> dict[str, Any]:
    """Per-run training hyperparameters (Unterthiner et al. 2020)."""
    return {
        "optimizer": OPTIMIZERS[rng.integers(len(OPTIMIZERS))],
        "learning_rate": float(np.exp(rng.uniform(np.log(5e-4), np.log(5e-2)))),
        "l2": float(np.exp(rng.uniform(np.log(1e-8), np.log(1e-2)))),
        "dropout": float(rng.uniform(0.0, 0.7)),
        "init_std": float(np.exp(rng.uniform(np.log(1e-3), np.log(0.5)))),
        "init": INIT_SCHEMES[rng.integers(len(INIT_SCHEMES))],
        "batch_size": 32,
    }


def sample_wildpark_hparams(rng: np.random.Generator) -> dict[str, Any]:
    """Per-run hyperparameters of ``wildpark-digits``: Unterthiner et al.'s optimizers and train
    fractions, with ranges that train in 10 epochs: learning rate log-uniform in [1e-3, 1e-2] for Adam
    and RMSProp, [1e-2, 1e-1] for SGD; L2 log-uniform in [1e-8, 1e-3]; dropout uniform in [0, 0.3];
    init uniform over the fan-scaled schemes {he normal, glorot normal, orthogonal}."""
    optimizer = OPTIMIZERS[rng.integers(len(OPTIMIZERS))]
    lo, hi = (1e-2, 1e-1) if optimizer == "sgd" else (1e-3, 1e-2)
    return {
        "optimizer": optimizer,
        "learning_rate": float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),
        "l2": float(np.exp(rng.uniform(np.log(1e-8), np.log(1e-3)))),
        "dropout": float(rng.uniform(0.0, 0.3)),
        "init_std": 0.1,                       # unused by the fan-scaled schemes
        "init": ("he_normal", "glorot_normal", "orthogonal")[rng.integers(3)],
        "batch_size": 32,
    }


def sample_wildpark(rng: np.random.Generator, in_channels: int, n_classes: int, input_size) -> dict[str, Any]:
    """A CNN Wild Park architecture (Kofinas et al. 2024, appendix E.1).

    2-5 conv layers; channels from {4, 8, 16, 32}; kernels from {3, 5, 7}; an activation per
    layer; layer ``i >= 2`` receives a skip from layer ``j`` uniform over {none, 0, ..., i - 2}
    (at least one layer in between, at most one incoming skip), joining min(c_i, c_j) channels.
    """
    n = int(rng.integers(2, 6))
    return {
        "family": "wildpark",
        "in_channels": in_channels,
        "n_classes": n_classes,
        "input_size": list(input_size),
        "channels": [int(c) for c in rng.choice([4, 8, 16, 32], n)],
        "kernels": [int(k) for k in rng.choice([3, 5, 7], n)],
        "activations": [WILDPARK_ACTIVATIONS[a] for a in rng.integers(len(WILDPARK_ACTIVATIONS), size=n)],
        "residual": [-1 if i < 2 else int(rng.integers(-1, i - 1)) for i in range(n)],
    }


def arch1(act: str, input_size) -> dict[str, Any]:
    """SNE Arch1 / the Small CNN Zoo network without strides: three 3x3 convs of 16 channels
    (no padding), global average pool, linear. Parameter shapes do not depend on the input size."""
    conv = lambda: {"kind": "conv", "out": 16, "kernel": 3, "stride": 1, "padding": 0, "pool": 0, "act": act}  # noqa: E731
    return {"family": "cnn", "in_channels": 1, "n_classes": 10, "input_size": list(input_size),
            "layers": [conv(), conv(), conv(), {"kind": "gap"}, {"kind": "linear", "out": 10, "act": "identity"}]}


#: Arch2 paddings per input resolution, chosen so the last conv map is 3x3 as in SNE's Table 4
#: (28x28 MNIST: no padding). Parameter shapes are then identical for every dataset:
#: conv 1->8 (5x5), 8->6 (5x5), 6->4 (2x2), linear 36->20, 20->10.
ARCH2_PADDING = {8: (2, 2, 1), 12: (0, 2, 1), 16: (2, 0, 1), 20: (0, 0, 1), 28: (0, 0, 0)}


def arch2(act: str, input_size) -> dict[str, Any]:
    """SNE Arch2: conv5-maxpool-conv5-maxpool-conv2, flatten, linear 20, linear 10."""
    size = input_size[0]
    if input_size[0] != input_size[1] or size not in ARCH2_PADDING:
        raise ValueError(f"arch2 has no padding rule for input size {tuple(input_size)}; "
                         f"known square sizes: {sorted(ARCH2_PADDING)}")
    p1, p2, p3 = ARCH2_PADDING[size]
    return {"family": "cnn", "in_channels": 1, "n_classes": 10, "input_size": list(input_size),
            "layers": [{"kind": "conv", "out": 8, "kernel": 5, "stride": 1, "padding": p1, "pool": 2, "act": act},
                       {"kind": "conv", "out": 6, "kernel": 5, "stride": 1, "padding": p2, "pool": 2, "act": act},
                       {"kind": "conv", "out": 4, "kernel": 2, "stride": 1, "padding": p3, "pool": 0, "act": act},
                       {"kind": "flatten"},
                       {"kind": "linear", "out": 20, "act": act},
                       {"kind": "linear", "out": 10, "act": "identity"}]}


@dataclass
class GeneratedRun:
    """One trained run, ready for :func:`neuralgraph.data.formats.native.write_member`."""

    index: int                                   # run index in the zoo
    params: dict[str, np.ndarray]                # name -> [n_checkpoints, *shape]
    record: dict[str, Any]                       # the member JSON (architecture, metrics per checkpoint, ...)
    extras: dict[str, np.ndarray] = field(default_factory=dict)   # further arrays of the run


@dataclass(frozen=True)
class Preset:
    """A zoo recipe of trained classifiers (see :class:`INRPreset` for INR zoos; both offer
    ``name``, ``group_size``, ``max_runs``, ``group_runs``, ``train_group``, ``with_epochs``, ``config``).

    Args:
        name: preset name (``wildpark-digits``, ``arch1-mnist1d`` ...).
        dataset: a :data:`neuralgraph.zoo.datasets.DATASETS` name.
        description: one line for ``zoo.json``.
        sample_arch: ``(rng, data) -> architecture description`` for a group.
        train: epochs, checkpoint epochs, batch size.
        group_size: members trained together (same architecture and train fraction).
        sample_hparams: ``rng -> hyperparameters`` of a run.
        runs: the zoo's default size (:func:`neuralgraph.zoo.default_zoo` and the tasks' ``runs: null``).
        mixed_architectures: groups sample different architectures (weight shapes vary), so models needing one
            architecture are refused before the zoo is built.
    """

    name: str
    dataset: str
    description: str
    sample_arch: Callable[[np.random.Generator, Any], dict[str, Any]]
    train: TrainConfig = field(default_factory=TrainConfig)
    group_size: int = 8
    sample_hparams: Callable[[np.random.Generator], dict[str, Any]] = sample_hparams
    runs: int = 160
    mixed_architectures: bool = False

    max_runs = None       # no limit on the number of runs
    worker_threads = None  # torch threads per generator worker: cores / workers

    def group_runs(self, runs: int, group: int) -> list[int]:
        """Run indices of ``group`` in a zoo of ``runs`` runs."""
        G = self.group_size
        return list(range(group * G, min((group + 1) * G, runs)))

    def train_group(self, seed: int, runs: int, group: int, missing: list[int],
                    device: str = "cpu") -> list["GeneratedRun"]:
        """Train ``group`` (all its members together, on ``device``) and return the runs in ``missing``."""
        from neuralgraph.zoo.train import MemberSpec, train_group

        idx = self.group_runs(runs, group)
        desc, frac = self.group_plan(seed, group)
        data = load_image_data(self.dataset)
        specs = [MemberSpec(run_id(r), seed_for(seed, r, "member"), self.run_hparams(seed, r)) for r in idx]
        results = train_group(desc, specs, data, self.train, frac, seed_for(seed, group, "group"), device)
        out = []
        for r, spec, res in zip(idx, specs, results):
            if r not in missing:
                continue
            hp = dict(spec.hparams, train_fraction=frac, epochs=self.train.epochs)
            record = {"run_index": r, "group": group, "preset": self.name, "seed": seed,
                      "dataset": self.dataset, "architecture": desc, "hyperparameters": hp,
                      "diverged": res.diverged, **res.extra, "checkpoints": res.checkpoints}
            out.append(GeneratedRun(r, res.params, record))
        return out

    def group_plan(self, seed: int, group: int) -> tuple[dict[str, Any], float]:
        """Architecture and train fraction of a group."""
        rng = rng_for(seed, group, 0)
        data = load_image_data(self.dataset)
        desc = self.sample_arch(rng, data)
        frac = float(TRAIN_FRACTIONS[rng.integers(len(TRAIN_FRACTIONS))])
        return desc, frac

    def run_hparams(self, seed: int, run: int) -> dict[str, Any]:
        return self.sample_hparams(rng_for(seed, run, 1))

    def with_epochs(self, epochs: int | None) -> "Preset":
        """This preset trained for ``epochs`` epochs (checkpoints beyond it dropped, the last added)."""
        if epochs is None or epochs == self.train.epochs:
            return self
        if epochs < 1:
            raise ValueError(f"epochs must be positive, got {epochs}")
        cks = tuple(sorted({c for c in self.train.checkpoint_epochs if c <= epochs} | {epochs}))
        return dataclasses.replace(self, train=dataclasses.replace(self.train, epochs=epochs, checkpoint_epochs=cks))

    def config(self) -> dict[str, Any]:
        """JSON-serialisable summary stored in ``zoo.json``."""
        t = self.train
        return {"dataset": self.dataset, "group_size": self.group_size, "epochs": t.epochs,
                "checkpoint_epochs": list(t.checkpoint_epochs), "batch_size": t.batch_size,
                "train_eval_size": t.train_eval_size, "hparams": self.sample_hparams.__name__}


def _wildpark_sampler(rng, data):
    return sample_wildpark(rng, 1, data.n_classes, data.input_size)


def _homogeneous(kind: str):
    builder = {"arch1": arch1, "arch2": arch2}[kind]

    def sample(rng, data):
        return builder(("relu", "tanh")[rng.integers(2)], data.input_size)
    return sample


PRESETS: dict[str, Preset] = {
    "wildpark-digits": Preset(
        "wildpark-digits", "digits",
        "CNN Wild Park recipe (Neural Graphs app. E.1) on sklearn digits 8x8, 10 epochs",
        _wildpark_sampler, TrainConfig(epochs=10, checkpoint_epochs=(1, 2, 3, 5, 10)),
        sample_hparams=sample_wildpark_hparams, runs=128, mixed_architectures=True),
}
for _kind in ("arch1", "arch2"):
    for _ds in ("digits", "mnist1d", "shapes"):
        PRESETS[f"{_kind}-{_ds}"] = Preset(
            f"{_kind}-{_ds}", _ds,
            f"SNE {_kind.capitalize()} (app. C) on {_ds}, Unterthiner et al. hyperparameters, 10 epochs",
            _homogeneous(_kind), TrainConfig(epochs=10, checkpoint_epochs=(1, 2, 3, 5, 10)), group_size=16, runs=96)

#: Default sizes of the ``-large`` presets: the same recipes, large enough to rank models (a test split of
#: >= 100 runs at the usual 80/10/10 split by run). Runs are a pure function of (seed, run index), so the
#: first runs of a large zoo are the runs of its small preset.
LARGE_RUNS = {"wildpark-digits": 1280, **{f"{a}-{d}": 1024 for a in ("arch1", "arch2")
                                          for d in ("digits", "mnist1d", "shapes")}}
for _name, _runs in LARGE_RUNS.items():
    PRESETS[f"{_name}-large"] = dataclasses.replace(
        PRESETS[_name], name=f"{_name}-large", description=PRESETS[_name].description + " (large: ranks models)",
        runs=_runs)


@dataclass(frozen=True)
class INRPreset:
    """A zoo of SIREN INRs (:data:`neuralgraph.zoo.inr.SIREN_DESC`), one per image: run ``r`` fits image
    ``r`` of the image set (drawn with the zoo seed), with its own init seed ``seed_for(seed, r, "inr")``.

    Args:
        name: preset name (``inr-digits`` ...).
        image_set: a :data:`neuralgraph.zoo.datasets.IMAGE_SETS` name.
        description: one line for ``zoo.json``.
        fit: steps, learning rate and member batch of the fit.
        group_size: runs per generator job (written together; members are independent).
    """

    name: str
    image_set: str
    description: str
    fit: FitConfig = field(default_factory=FitConfig)
    group_size: int = 64

    @property
    def runs(self) -> int:
        """The default size: one INR per image (10,000 for an unbounded procedural set)."""
        return self.max_runs or 10000

    @property
    def max_runs(self) -> int | None:
        """At most one run per image (``None`` for an unbounded procedural set)."""
        return IMAGE_SETS[self.image_set].count

    #: one torch thread per generator worker: a fit is many tiny matmuls, which threads only slow down
    #: (measured: 2 threads on 2 busy cores, 40 instead of 1,200 INRs per core-minute); use --workers
    worker_threads = 1

    group_runs = Preset.group_runs

    def train_group(self, seed: int, runs: int, group: int, missing: list[int],
                    device: str = "cpu") -> list[GeneratedRun]:
        """Fit the INRs of the runs in ``missing`` on ``device`` (members are independent: only those are
        fitted)."""
        images, labels = load_images(self.image_set, missing, seed)
        res = fit_sirens(images, [seed_for(seed, r, "inr") for r in missing], self.fit, SIREN_DESC, device)
        hp = {k: v for k, v in dataclasses.asdict(self.fit).items() if k != "batch"}
        out = []
        for i, r in enumerate(missing):
            label, mse, db = int(labels[i]), float(res.mse[i]), float(res.psnr[i])
            ck = {"epoch": self.fit.steps, "step": self.fit.steps, "label": label, "psnr": db, "mse": mse}
            record = {"run_index": r, "group": group, "preset": self.name, "seed": seed,
                      "dataset": self.image_set, "image_index": r, "label": label, "architecture": SIREN_DESC,
                      "hyperparameters": dict(hp, init_seed=seed_for(seed, r, "inr")), "checkpoints": [ck]}
            params = {k: v[i].unsqueeze(0).numpy() for k, v in res.params.items()}     # [1, *shape]
            out.append(GeneratedRun(r, params, record, {"image": images[i]}))
        return out

    def with_epochs(self, epochs: int | None) -> "INRPreset":
        """This preset with ``epochs`` Adam steps (a full-batch step is one epoch over the pixels)."""
        if epochs is None or epochs == self.fit.steps:
            return self
        if epochs < 1:
            raise ValueError(f"epochs (INR fitting steps) must be positive, got {epochs}")
        return dataclasses.replace(self, fit=dataclasses.replace(self.fit, steps=epochs))

    def config(self) -> dict[str, Any]:
        """JSON-serialisable summary stored in ``zoo.json``."""
        s = IMAGE_SETS[self.image_set]
        cfg = {"image_set": self.image_set, "image_size": s.size, "group_size": self.group_size,
               "architecture": SIREN_DESC, "coordinates": COORDINATES, "fit": dataclasses.asdict(self.fit)}
        return json.loads(json.dumps(cfg))       # as read back from zoo.json (tuples become lists)


#: The INR fit used by every INR preset (measured in ``benchmarks/perf/zoo.py``, see docs/formats.md).
INR_FIT = FitConfig(steps=80, lr=4e-3, batch=8)
for _set in ("digits", "glyphs", "shapes"):
    PRESETS[f"inr-{_set}"] = INRPreset(
        f"inr-{_set}", _set, f"SIREN 2-32-32-1 INRs (DWSNets) of {IMAGE_SETS[_set].description}", INR_FIT)


def get_preset(name: str) -> Preset | INRPreset:
    """The preset ``name``; raises ``ValueError`` listing the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def list_presets() -> list[str]:
    return sorted(PRESETS)
