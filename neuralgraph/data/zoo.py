"""PyG and weight-space datasets over a zoo in our format.

:class:`ZooDataset` converts every zoo member (one checkpoint of one run) into a
:class:`~neuralgraph.data.graph.NeuralGraph` with the pre-transform :class:`ToNeuralGraph`
(a per-architecture cached conversion plan), stores the result under
``<root>/processed/<key>/`` and serves one split of it. ``<key>`` hashes the pre-transform's
``repr`` (which spells out the converter configuration), the target, the set of runs and a
fingerprint of the content of every source file (:meth:`BaseZoo.fingerprint`), so changing the
converter configuration or replacing a zoo file in place processes again instead of silently reusing
stale graphs.

The processed files hold plain tensors and are loaded with ``torch.load(weights_only=True)``
without any fallback: a crafted pickle dropped into the directory is refused, never executed
(PyG's own ``InMemoryDataset`` files may fall back to full unpickling, so they are not used).

:class:`ZooWeightDataset` serves the *same members and splits* as per-network
:class:`~neuralgraph.data.weightspace.WeightSpace` objects (conv / linear weights and biases in
dataflow order) for NFN, SNE, StatNN and the flat MLP; its ``collate`` builds a
:class:`~neuralgraph.data.weightspace.WeightSpaceBatch`.

Splits are by run (:func:`~neuralgraph.data.formats.native.split_by_run`): every checkpoint of
one run lands in one split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import InMemoryDataset

from neuralgraph.convert import ConvertConfig, get_plan
from neuralgraph.data.arch import arch_key, build_model, example_input
from neuralgraph.data.formats.native import BaseZoo, ZooFormatError, ZooMember, load_zoo, member_splits
from neuralgraph.convert.activations import ACTIVATIONS
from neuralgraph.data.formats.safe import safe_torch_load
from neuralgraph.data.graph import FORMAT_VERSION, NeuralGraph
from neuralgraph.data.weightspace import WeightSpace, WeightSpaceBatch
from neuralgraph.io import atomic_write, file_lock, make_dirs, remove_temps

SPLITS = ("train", "val", "test", "all")


class ToNeuralGraph:
    """Pre-transform: a :class:`ZooMember` -> its :class:`NeuralGraph` (via the cached plan).

    Args:
        **config: converter options (:class:`~neuralgraph.convert.config.ConvertConfig`); they
            appear in ``repr`` so processed files are keyed by them.
    """

    def __init__(self, **config: Any) -> None:
        self.config = ConvertConfig.from_kwargs(**config)
        self._plans: dict[str, Any] = {}

    def plan(self, member: ZooMember):
        """The conversion plan of the member's architecture (one module built per architecture, with
        the global RNG left untouched so seeded runs do not depend on which zoo was converted)."""
        arch = member.architecture
        key = arch_key(arch)
        if key not in self._plans:
            with torch.random.fork_rng():
                self._plans[key] = get_plan(build_model(arch), example_input(arch), _config=self.config)
        return self._plans[key]

    def params(self, member: ZooMember) -> dict[str, Tensor]:
        """The member's parameters, checked against its architecture (names and shapes)."""
        plan, sd = self.plan(member), member.state_dict()
        for name, shape in plan.param_shapes.items():
            if name not in sd:
                raise ZooFormatError(f"{member._zoo.member_source(member)} (run {member.run_id}): parameter "
                                     f"{name!r} of its architecture is missing (it has {sorted(sd)}); the file "
                                     "does not match the member's architecture: restore or regenerate it")
            if tuple(sd[name].shape) != tuple(shape):
                raise ZooFormatError(f"{member._zoo.member_source(member)} (run {member.run_id}): parameter "
                                     f"{name!r} has shape {tuple(sd[name].shape)}, but its architecture needs "
                                     f"{tuple(shape)}; the file does not match the member's architecture: restore "
                                     "or regenerate it")
        return sd

    def __call__(self, member: ZooMember) -> NeuralGraph:
        # non-finite parameters are kept here; ZooDataset refuses (or drops) such members per split
        return self.plan(member).graph(self.params(member), allow_nonfinite=True)

    def __repr__(self) -> str:
        return f"ToNeuralGraph({self.config!r})"


def _as_zoo(zoo: "str | os.PathLike | Sequence | BaseZoo") -> BaseZoo:
    return zoo if isinstance(zoo, BaseZoo) else load_zoo(zoo)


def _split_indices(zoo: BaseZoo, split: str, fractions, seed: int) -> list[int]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return list(range(len(zoo)))
    return member_splits(zoo, tuple(fractions), seed)[split]


def _target(member: ZooMember, target: str | Callable[[ZooMember], float]) -> float:
    if callable(target):
        return float(target(member))
    if target in member.metrics:
        return float(member.metrics[target])
    if target in member.hyperparameters:
        return float(member.hyperparameters[target])
    raise KeyError(f"unknown target {target!r}; metrics: {sorted(member.metrics)}, "
                   f"hyperparameters: {sorted(member.hyperparameters)}")


class ZooDataset(InMemoryDataset):
    """Neural graphs of a zoo's members, one split, targets ``y`` (default: test accuracy).

    Args:
        zoo (str or Zoo): a zoo directory (or list of shard directories) in our format, or a loaded :class:`Zoo`.
        split (str, optional): ``"train"``, ``"val"``, ``"test"`` or ``"all"``. (default: ``"train"``)
        root (str, optional): where processed files go. (default: ``<first zoo dir>/pyg``)
        target (str or callable, optional): a metric name, a hyperparameter name or a function of the
            member. (default: ``"test_accuracy"``)
        split_fractions (tuple, optional): train / val / test fractions of runs. (default: ``(0.8, 0.1, 0.1)``)
        split_seed (int, optional): seed of the run split. (default: ``0``)
        pre_transform (callable, optional): member -> NeuralGraph. (default: :class:`ToNeuralGraph` with
            ``converter`` options)
        converter (dict, optional): converter options for the default pre-transform.
        transform (callable, optional): PyG transform applied on access.
        force_reload (bool, optional): process again even if processed files exist.
        drop_nonfinite (bool, optional): drop members of the split whose target or parameters are NaN / Inf
            (a warning says how many); otherwise such a member is an error naming the zoo, run and field.
            (default: ``False``)

    Each graph carries ``y`` ``[1]``, ``epoch`` ``[1]`` and ``zoo_member`` ``[1]`` (the member's
    position in ``zoo.members``).
    """

    def __init__(self, zoo, split: str = "train", root: str | os.PathLike | None = None,
                 target: str | Callable[[ZooMember], float] = "test_accuracy",
                 split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), split_seed: int = 0,
                 pre_transform: Callable[[ZooMember], NeuralGraph] | None = None,
                 converter: dict[str, Any] | None = None, transform: Callable | None = None,
                 force_reload: bool = False, log: bool = False, drop_nonfinite: bool = False) -> None:
        self.zoo = _as_zoo(zoo)
        self.target = target
        pre_transform = pre_transform or ToNeuralGraph(**(converter or {}))
        key_src = json.dumps({"pre_transform": repr(pre_transform),
                              "target": target if isinstance(target, str) else repr(target),
                              "runs": hashlib.sha256(json.dumps(  # run ids and their records (metrics, ...)
                                  [[r, self.zoo.records[r]] for r in sorted(self.zoo.run_ids)],
                                  sort_keys=True, default=str).encode()).hexdigest(),
                              "sources": self.zoo.fingerprint(),  # content of every source file
                              "format": FORMAT_VERSION,  # and the activation ids (registration order)
                              "activations": list(ACTIVATIONS)}, sort_keys=True)
        self.key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
        self._key_src = key_src
        root = Path(root) if root is not None else self.zoo.roots[0] / "pyg"
        super().__init__(str(root), transform, pre_transform, None, log=log, force_reload=force_reload)
        self._load_processed()
        self.split = split
        self._indices = self._finite(_split_indices(self.zoo, split, split_fractions, split_seed), drop_nonfinite)

    # --- PyG plumbing -------------------------------------------------------------------------
    @property
    def raw_file_names(self) -> list[str]:
        return []

    @property
    def processed_dir(self) -> str:
        return os.path.join(self.root, "processed", self.key)

    @property
    def processed_file_names(self) -> list[str]:
        return ["graphs.pt", "config.json"]

    def download(self) -> None:  # pragma: no cover - nothing to download
        pass

    def _process(self) -> None:
        # replaces PyG's version, which unpickles pre_transform.pt with weights_only=False
        if not self.force_reload and all(os.path.exists(p) for p in self.processed_paths):
            return
        make_dirs(self.processed_dir)
        # one writer per cache directory: a concurrent run waits, then finds the files; temporary files
        # found under the lock are those of a killed writer
        with file_lock(os.path.join(self.processed_dir, ".lock")):
            remove_temps(self.processed_dir)
            if self.force_reload or not all(os.path.exists(p) for p in self.processed_paths):
                self.process()

    def process(self) -> None:
        graphs = []
        for i, m in enumerate(self.zoo.members):
            try:
                g = self.pre_transform(m)
            except ZooFormatError:
                raise
            except (ValueError, KeyError, RuntimeError) as e:
                raise ZooFormatError(f"{self.zoo.member_source(m)} (run {m.run_id}, checkpoint {m.checkpoint}) "
                                     f"cannot be converted: {e}") from e
            g.y = torch.tensor([_target(m, self.target)], dtype=torch.float)
            g.epoch = torch.tensor([m.epoch], dtype=torch.long)
            g.zoo_member = torch.tensor([i], dtype=torch.long)
            graphs.append(g)
        data, slices = self.collate(graphs)
        payload = {"data": data.to_dict(), "slices": None if slices is None else dict(slices)}  # None: one graph
        atomic_write(self.processed_paths[0], lambda f: torch.save(payload, f))
        atomic_write(self.processed_paths[1], lambda f: f.write(self._key_src.encode()))

    def _load_processed(self) -> None:
        path = self.processed_paths[0]
        fix = f"delete {self.processed_dir!r} and it is processed again from the zoo"
        payload = safe_torch_load(path, hint=f"If you did not write it, {fix}.", what="a processed-graph cache",
                                  fix=fix)
        if not (isinstance(payload, dict) and isinstance(payload.get("data"), dict) and "slices" in payload):
            raise ZooFormatError(f"{path!r} is not a processed-graph cache (expected {{'data', 'slices'}}); delete "
                                 f"{self.processed_dir!r} and it is processed again from the zoo")
        self._data = NeuralGraph.from_dict(payload["data"])
        self.slices = payload["slices"]

    def _finite(self, indices: list[int], drop: bool) -> list[int]:
        """``indices`` without members whose target or parameters (graph values) are not finite; without
        ``drop`` the first such member is an error naming the zoo, run and field."""
        data = self._data
        bad_graphs = set()
        for key in ("x", "edge_attr"):  # every parameter value lives in one of them
            if math.isfinite(float(data[key].sum())):  # one reduction decides in the common case
                continue
            rows = (~torch.isfinite(data[key])).flatten(1).any(1).nonzero().view(-1)
            if rows.numel():
                bounds = self.slices[key] if self.slices is not None else torch.tensor([0, data[key].size(0)])
                bad_graphs.update(torch.searchsorted(bounds, rows, right=True).sub(1).tolist())
        keep, dropped = [], []
        for i in indices:
            m = self.zoo.members[i]
            y = _target(m, self.target)
            field = (f"target {self.target!r} = {y}" if not math.isfinite(y) else
                     f"parameter {self._nonfinite_param(m)!r} has NaN / Inf values" if i in bad_graphs else None)
            if field is None:
                keep.append(i)
            elif drop:
                dropped.append((m, field))
            else:
                raise ZooFormatError(
                    f"{self.zoo!r} ({', '.join(str(r) for r in self.zoo.roots)}): run {m.run_id} (checkpoint "
                    f"{m.checkpoint}, {self.zoo.member_source(m)}): {field}. Training on it would make every loss "
                    "and metric NaN; repair or remove the run, or drop such members (task.drop_nonfinite=true, "
                    "ZooDataset(..., drop_nonfinite=True))")
        if dropped:
            m, field = dropped[0]
            warnings.warn(f"{self.zoo!r}: dropped {len(dropped)} of {len(indices)} members of the {self.split!r} "
                          f"split with non-finite targets or parameters (first: run {m.run_id} checkpoint "
                          f"{m.checkpoint}, {field})", stacklevel=3)
        self.dropped = [m for m, _ in dropped]
        return keep

    @staticmethod
    def _nonfinite_param(m: ZooMember) -> str:
        return next((k for k, v in m.params().items() if not np.isfinite(v).all()), "(a graph value)")

    # --- convenience --------------------------------------------------------------------------
    def member(self, idx: int) -> ZooMember:
        """The zoo member behind item ``idx`` of this split."""
        return self.zoo.members[self.indices()[idx]]

    def architectures(self) -> list[dict[str, Any]]:
        """The distinct architecture descriptions of this split's members."""
        archs = {}
        for i in self.indices():
            arch = self.zoo.members[i].architecture
            archs.setdefault(arch_key(arch), arch)
        return list(archs.values())

    @property
    def y(self) -> Tensor:
        return torch.tensor([_target(self.member(i), self.target) for i in range(len(self))])

    def weight_dataset(self) -> "ZooWeightDataset":
        """The same members (this split, same order) as weight-space items."""
        return ZooWeightDataset(self.zoo, indices=self.indices(), target=self.target,
                                converter=dataclasses.asdict(self.pre_transform.config)
                                if isinstance(self.pre_transform, ToNeuralGraph) else None)

    def __repr__(self) -> str:
        return f"ZooDataset(split={self.split!r}, graphs={len(self)}, zoo={self.zoo!r})"


class ZooWeightDataset(torch.utils.data.Dataset):
    """The members of a zoo split as ``(WeightSpace, y)`` items (B = 1 each).

    Use ``DataLoader(ds, batch_size=..., collate_fn=ZooWeightDataset.collate)`` to get a
    ``WeightSpaceBatch`` with targets ``y [B]``. Same arguments as :class:`ZooDataset` (or explicit ``indices``).
    """

    def __init__(self, zoo, split: str = "train", target: str | Callable[[ZooMember], float] = "test_accuracy",
                 split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), split_seed: int = 0,
                 indices: Sequence[int] | None = None, converter: dict[str, Any] | None = None) -> None:
        self.zoo = _as_zoo(zoo)
        self.indices = list(indices) if indices is not None else _split_indices(self.zoo, split, split_fractions,
                                                                                split_seed)
        self.target = target
        self.to_graph = ToNeuralGraph(**(converter or {}))

    def __len__(self) -> int:
        return len(self.indices)

    def member(self, idx: int) -> ZooMember:
        return self.zoo.members[self.indices[idx]]

    def __getitem__(self, idx: int) -> tuple[WeightSpace, Tensor]:
        m = self.member(idx)
        ws = self.to_graph.plan(m).weight_space(self.to_graph.params(m))
        return ws, torch.tensor(_target(m, self.target), dtype=torch.float)

    collate = staticmethod(WeightSpaceBatch.from_items)

    @property
    def signatures(self) -> set:
        """Distinct architectures (weight-space signatures) in this split."""
        return {self[i][0].signature for i in range(len(self))}
