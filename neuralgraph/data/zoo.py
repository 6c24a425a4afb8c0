"""PyG and weight-space datasets over a zoo in our format.

:class:`ZooDataset` converts every zoo member (one checkpoint of one run) into a
:class:`~neuralgraph.data.graph.NeuralGraph` with the pre-transform :class:`ToNeuralGraph`
(a per-architecture cached conversion plan), stores the result under
``<root>/processed/<key>/`` and serves one split of it. ``<key>`` hashes the pre-transform's
``repr`` (which spells out the converter configuration), the target and the set of runs, so
changing the converter configuration processes again instead of silently reusing stale graphs.

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
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch_geometric.data import InMemoryDataset

from neuralgraph.convert import ConvertConfig, get_plan
from neuralgraph.data.arch import arch_key, build_model, example_input
from neuralgraph.data.formats.native import BaseZoo, ZooFormatError, ZooMember, load_zoo, member_splits
from neuralgraph.convert.activations import ACTIVATIONS
from neuralgraph.data.graph import FORMAT_VERSION, NeuralGraph
from neuralgraph.data.weightspace import WeightSpace, WeightSpaceBatch
from neuralgraph.io import atomic_write

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

    def __call__(self, member: ZooMember) -> NeuralGraph:
        return self.plan(member).graph(member.state_dict())

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

    Each graph carries ``y`` ``[1]``, ``epoch`` ``[1]`` and ``zoo_member`` ``[1]`` (the member's
    position in ``zoo.members``).
    """

    def __init__(self, zoo, split: str = "train", root: str | os.PathLike | None = None,
                 target: str | Callable[[ZooMember], float] = "test_accuracy",
                 split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), split_seed: int = 0,
                 pre_transform: Callable[[ZooMember], NeuralGraph] | None = None,
                 converter: dict[str, Any] | None = None, transform: Callable | None = None,
                 force_reload: bool = False, log: bool = False) -> None:
        self.zoo = _as_zoo(zoo)
        self.target = target
        pre_transform = pre_transform or ToNeuralGraph(**(converter or {}))
        key_src = json.dumps({"pre_transform": repr(pre_transform),
                              "target": target if isinstance(target, str) else repr(target),
                              "runs": hashlib.sha256(json.dumps(  # run ids and their records (metrics, ...)
                                  [[r, self.zoo.records[r]] for r in sorted(self.zoo.run_ids)],
                                  sort_keys=True, default=str).encode()).hexdigest(),
                              "format": FORMAT_VERSION,  # and the activation ids (registration order)
                              "activations": list(ACTIVATIONS)}, sort_keys=True)
        self.key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
        self._key_src = key_src
        root = Path(root) if root is not None else self.zoo.roots[0] / "pyg"
        super().__init__(str(root), transform, pre_transform, None, log=log, force_reload=force_reload)
        self._load_processed()
        self._indices = _split_indices(self.zoo, split, split_fractions, split_seed)
        self.split = split

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
        os.makedirs(self.processed_dir, exist_ok=True)
        self.process()

    def process(self) -> None:
        graphs = []
        for i, m in enumerate(self.zoo.members):
            g = self.pre_transform(m)
            g.y = torch.tensor([_target(m, self.target)], dtype=torch.float)
            g.epoch = torch.tensor([m.epoch], dtype=torch.long)
            g.zoo_member = torch.tensor([i], dtype=torch.long)
            graphs.append(g)
        data, slices = self.collate(graphs)
        payload = {"data": data.to_dict(), "slices": dict(slices)}
        atomic_write(self.processed_paths[0], lambda f: torch.save(payload, f))
        atomic_write(self.processed_paths[1], lambda f: f.write(self._key_src.encode()))

    def _load_processed(self) -> None:
        path = self.processed_paths[0]
        try:
            payload = torch.load(path, weights_only=True)
        except pickle.UnpicklingError as e:
            raise ZooFormatError(f"refusing {path!r}: not a plain-tensor file ({str(e).splitlines()[0]}); "
                                 "delete it to process again") from e
        self._data = NeuralGraph.from_dict(payload["data"])
        self.slices = payload["slices"]

    # --- convenience --------------------------------------------------------------------------
    def member(self, idx: int) -> ZooMember:
        """The zoo member behind item ``idx`` of this split."""
        return self.zoo.members[self.indices()[idx]]

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
        ws = self.to_graph.plan(m).weight_space(m.state_dict())
        return ws, torch.tensor(_target(m, self.target), dtype=torch.float)

    collate = staticmethod(WeightSpaceBatch.from_items)

    @property
    def signatures(self) -> set:
        """Distinct architectures (weight-space signatures) in this split."""
        return {self[i][0].signature for i in range(len(self))}
