"""Our on-disk zoo format: arrays and JSON only, never pickles (see docs/formats.md).

::

    <zoo>/zoo.json                  {"format": "neuralgraph-zoo", "version": 1, "preset", "seed",
                                     "description", "config": {...}}
    <zoo>/members/<run_id>.npz      one array per parameter, [n_checkpoints, *shape] float32, plus any
                                    named extra arrays of the run (e.g. an INR's fitted ``image``)
    <zoo>/members/<run_id>.json     run id, architecture description, hyperparameters, dataset,
                                     per checkpoint {epoch, step, test/train accuracy and loss}

Every file is written to a temporary name in the same directory and renamed into place
(``os.replace`` is atomic), and a member's JSON is written after its arrays: a run is complete
exactly when its JSON exists. Writers hold the zoo's lock (``<zoo>/.writer.lock``, :func:`zoo_lock`)
while they have a temporary file, so a cleanup under the lock only removes files of writers that are
gone. A killed writer leaves at worst a temporary file (ignored, and removed by the next writer) or an
array file without JSON (overwritten on the next run). Shards write disjoint run ids, so their
directories can be merged or shared.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from neuralgraph.data.arch import build_model
from neuralgraph.io import (DataFileError, atomic_write, file_fingerprint, file_lock, make_dirs, remove_temps,
                            writing)

FORMAT_NAME = "neuralgraph-zoo"
FORMAT_VERSION = 1
MEMBER_DIR = "members"
LOCK_FILE = ".writer.lock"


class ZooFormatError(DataFileError):
    """A zoo directory or file that is not in the expected format (the message names the file and the fix)."""


#: how to replace a damaged member of one of our zoos
MEMBER_FIX = ("delete {run}.json and {run}.npz and re-run the command that wrote the zoo (python -m "
              "neuralgraph.zoo.generate ...; a default zoo is completed on the next run) to write the run again, "
              "or restore both files")


# ---------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------
def write_json_atomic(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    for k, a in arrays.items():
        if a.dtype == object:
            raise TypeError(f"array {k!r} has dtype object; the zoo format stores numeric arrays only")
    atomic_write(path, lambda f: np.savez(f, **arrays))


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def zoo_lock(root: str | os.PathLike):
    """The lock every writer of the zoo directory ``root`` holds while writing (see the module docstring)."""
    return file_lock(Path(root) / LOCK_FILE)


def init_zoo_dir(root: str | os.PathLike, header: dict[str, Any]) -> Path:
    """Create (or check) a zoo directory; ``header`` holds preset, seed, description, config.

    Raises:
        ZooFormatError: the directory already holds a zoo with a different preset / seed / config.
        StorageError: the directory cannot be created or written (naming it, and where to write instead).
    """
    root = Path(root)
    make_dirs(root / MEMBER_DIR)
    if not os.access(root / MEMBER_DIR, os.W_OK | os.X_OK):
        with writing(root / MEMBER_DIR):
            raise PermissionError(errno.EACCES, "permission denied")
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **header}
    path = root / "zoo.json"
    with zoo_lock(root):
        if path.exists():
            old = read_header(root)
            for key in ("preset", "seed", "config"):
                if key in meta and old.get(key) != meta[key]:
                    raise ZooFormatError(
                        f"{str(root)!r} already holds a zoo with {key}={old.get(key)!r}, not {meta[key]!r}; "
                        "use another --out directory (members of different recipes must not mix)")
            return root
        write_json_atomic(path, meta)
    return root


def write_member(root: str | os.PathLike, run_id: str, params: dict[str, np.ndarray],
                 record: dict[str, Any], extras: dict[str, np.ndarray] | None = None) -> None:
    """Write one member: arrays first, then the JSON that marks it complete.

    ``extras`` are further float32 arrays of the run (any shape, no checkpoint dim), stored in the same
    ``.npz`` and listed in the record's ``extra_arrays``; read them with :meth:`ZooMember.extra`.
    """
    _check_run_id(run_id)
    mdir = Path(root) / MEMBER_DIR
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
    n_ck = len(record["checkpoints"])
    for k, a in arrays.items():
        if a.shape[0] != n_ck:
            raise ValueError(f"{run_id}: parameter {k!r} has {a.shape[0]} checkpoints, record {n_ck}")
    extra = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in (extras or {}).items()}
    clash = set(extra) & set(arrays)
    if clash:
        raise ValueError(f"{run_id}: extra arrays {sorted(clash)} have the names of parameters")
    rec = {"format_version": FORMAT_VERSION, "run_id": run_id, **record,
           "param_names": list(arrays), "params_file": f"{run_id}.npz"}
    if extra:
        rec["extra_arrays"] = list(extra)
    with zoo_lock(root):
        write_npz_atomic(mdir / f"{run_id}.npz", {**arrays, **extra})
        write_json_atomic(mdir / f"{run_id}.json", rec)


def completed_runs(root: str | os.PathLike) -> set[str]:
    """Run ids whose JSON exists (complete members)."""
    mdir = Path(root) / MEMBER_DIR
    if not mdir.is_dir():
        return set()
    return {p.stem for p in mdir.glob("*.json") if not p.name.startswith(".")}


def remove_stale_temps(root: str | os.PathLike, run_ids: Iterable[str]) -> None:
    """Delete leftover temporary files of the given runs. Taken under the zoo's lock, so the files of a
    live writer (which holds the lock while its temporary files exist) are never touched."""
    with zoo_lock(root):
        for rid in run_ids:
            remove_temps(Path(root) / MEMBER_DIR, prefix=f"{rid}.")


def _check_run_id(run_id: str) -> None:
    if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
        raise ValueError(f"invalid run id {run_id!r}: it must be a non-empty file name (no '/' or '\\', not "
                         "starting with '.')")


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _read_json(path: Path, fix: str) -> Any:
    """The JSON in ``path``; invalid JSON is a :class:`ZooFormatError` naming the file and ``fix``."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (ValueError, UnicodeDecodeError) as e:
        raise ZooFormatError(f"{str(path)!r} is not valid JSON ({e}); {fix}") from None


def read_header(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / "zoo.json"
    if not path.exists():
        raise ZooFormatError(f"{str(root)!r} is not a neuralgraph zoo (no zoo.json)")
    fix = "restore it from a copy, or generate the zoo again into a new directory"
    meta = _read_json(path, f"it is the zoo's header; {fix}")
    if not isinstance(meta, dict):
        raise ZooFormatError(f"{str(path)!r} holds a JSON {type(meta).__name__}, but the zoo header is an object "
                             f"{{\"format\": {FORMAT_NAME!r}, \"version\", \"preset\", \"seed\", ...}}; {fix}")
    if meta.get("format") != FORMAT_NAME:
        raise ZooFormatError(f"{str(path)!r}: format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise ZooFormatError(f"{str(path)!r}: format version {meta.get('version')} is newer than this "
                             f"reader ({FORMAT_VERSION}); upgrade neuralgraph")
    return meta


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Load an ``.npz`` of numeric arrays; pickled content is refused, never executed."""
    try:
        z = np.load(path, allow_pickle=False)
    except ValueError as e:  # numpy raises ValueError for pickled data when allow_pickle=False
        raise ZooFormatError(f"refusing {str(path)!r}: it holds pickled data ({e}); zoo files must be "
                             "plain arrays") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ZooFormatError(f"{str(path)!r} is not a readable .npz archive (truncated or damaged: {e}); "
                             + MEMBER_FIX.format(run=path.stem)) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ZooFormatError(f"{str(path)!r} is not an .npz archive; " + MEMBER_FIX.format(run=path.stem))
    with z:
        try:
            return {k: z[k] for k in z.files}
        except ValueError as e:  # an object array inside the archive
            raise ZooFormatError(f"refusing {str(path)!r}: it holds pickled data ({e}); zoo files must be "
                                 "plain arrays") from e
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise ZooFormatError(f"{str(path)!r}: an array cannot be read (truncated or damaged: {e}); "
                                 + MEMBER_FIX.format(run=path.stem)) from None


def read_record(path: Path) -> dict[str, Any]:
    """A member's JSON record, checked for the fields readers rely on."""
    fix = MEMBER_FIX.format(run=path.stem)
    rec = _read_json(path, fix)
    if not isinstance(rec, dict):
        raise ZooFormatError(f"{str(path)!r} holds a JSON {type(rec).__name__}, not a member record; {fix}")
    problems = []
    if not isinstance(rec.get("architecture"), dict):
        problems.append("'architecture' (an object describing the network)")
    cks = rec.get("checkpoints")
    if not (isinstance(cks, list) and cks and all(isinstance(c, dict) for c in cks)):
        problems.append("'checkpoints' (a non-empty list of objects with epoch, step and metrics)")
    names = rec.get("param_names")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        problems.append("'param_names' (the list of parameter names in the .npz)")
    if problems:
        raise ZooFormatError(f"{str(path)!r}: missing or invalid {', '.join(problems)}; {fix}")
    return rec


@dataclass
class ZooMember:
    """One checkpoint of one run.

    Attributes:
        run_id: the run (all checkpoints of a run share it; splits are by run).
        checkpoint: index into the run's checkpoints.
        epoch / step: when the checkpoint was taken.
        architecture: the description for :func:`neuralgraph.data.arch.build_model`.
        metrics: ``test_accuracy``, ``test_loss``, ``train_accuracy``, ``train_loss``.
        hyperparameters: the run's training hyperparameters.
    """

    run_id: str
    checkpoint: int
    epoch: int
    step: int
    architecture: dict[str, Any]
    metrics: dict[str, float]
    hyperparameters: dict[str, Any]
    record: dict[str, Any] = field(repr=False)
    _zoo: "BaseZoo" = field(repr=False, compare=False)

    def params(self) -> dict[str, np.ndarray]:
        """The parameters of this checkpoint (name -> array, torch layout), loaded lazily."""
        return self._zoo.member_params(self)

    def extra(self, name: str) -> np.ndarray:
        """A named extra array of this member's run (e.g. ``"image"`` for INR zoos), loaded lazily.

        Raises:
            KeyError: the run stores no such array (the message lists the ones it has).
        """
        return self._zoo.member_extra(self, name)

    def state_dict(self) -> dict[str, "Any"]:
        """The parameters as torch tensors, ready for ``build_model(arch).load_state_dict``."""
        import torch

        return {k: torch.from_numpy(np.array(v)) for k, v in self.params().items()}

    def model(self):
        """The rebuilt torch module carrying this checkpoint's parameters (eval mode)."""
        m = build_model(self.architecture)
        m.load_state_dict(self.state_dict())
        return m.eval()


class BaseZoo:
    """Common interface of every zoo reader: ``members`` (one per checkpoint) with lazy parameters.

    Subclasses fill ``roots``, ``header``, ``records`` (run id -> record) and ``members``, and
    implement :meth:`member_params`.
    """

    roots: list[Path]
    header: dict[str, Any]
    records: dict[str, dict[str, Any]]
    members: list[ZooMember]

    def member_params(self, member: ZooMember) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def source_files(self) -> list[Path]:
        """Every file the members (parameters, metrics, layout) are read from."""
        raise NotImplementedError

    def member_source(self, member: "ZooMember") -> str:
        """Where a member's parameters are read from (a file, and a row where several share one)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A hash of the content of :meth:`source_files` (see :func:`neuralgraph.io.file_fingerprint`):
        caches of converted members are keyed on it, so a file replaced in place is never served stale."""
        if getattr(self, "_fingerprint", None) is None:
            h = hashlib.sha256()
            for path in sorted(set(map(str, self.source_files()))):
                try:
                    h.update(f"{path}\0{file_fingerprint(path)}\0".encode())
                except OSError as e:
                    raise ZooFormatError(f"cannot read {path!r}, a file of {self!r}: {e.strerror or e}") from None
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def member_extra(self, member: ZooMember, name: str) -> np.ndarray:
        raise KeyError(f"run {member.run_id!r} of this {type(self).__name__} stores no extra array {name!r} "
                       "(only zoos in our format written with extras have them)")

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int) -> ZooMember:
        return self.members[i]

    def __iter__(self):
        return iter(self.members)

    @property
    def run_ids(self) -> list[str]:
        return list(self.records)

    def subset(self, run_ids: Sequence[str]) -> "BaseZoo":
        """A view with only the given runs (sharing loaders and caches)."""
        keep = set(run_ids)
        missing = keep - set(self.records)
        if missing:
            raise KeyError(f"runs not in the zoo: {sorted(missing)[:5]} (it has {len(self.records)} runs, e.g. "
                           f"{sorted(self.records)[:3]}); pass run ids from zoo.run_ids")
        z = object.__new__(type(self))
        z.__dict__.update(self.__dict__)
        z._fingerprint = None  # the view's files only
        z.records = {k: v for k, v in self.records.items() if k in keep}
        z.members = [ZooMember(m.run_id, m.checkpoint, m.epoch, m.step, m.architecture, m.metrics,
                               m.hyperparameters, m.record, z) for m in self.members if m.run_id in keep]
        return z

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(preset={self.header.get('preset')!r}, runs={len(self.records)}, "
                f"checkpoints={len(self.members)})")


class Zoo(BaseZoo):
    """A loaded zoo: ``members`` (one per checkpoint), parameters read on demand.

    Args:
        roots: one directory or several (e.g. shards written to separate directories).
        cache_runs: how many runs' arrays to keep in memory.
    """

    def __init__(self, roots: str | os.PathLike | Sequence[str | os.PathLike], cache_runs: int = 64):
        if isinstance(roots, (str, os.PathLike)):
            roots = [roots]
        self.roots = [Path(r) for r in roots]
        headers = [read_header(r) for r in self.roots]
        for h in headers[1:]:
            if (h.get("preset"), h.get("seed")) != (headers[0].get("preset"), headers[0].get("seed")):
                raise ZooFormatError("cannot load shards of different zoos together: "
                                     f"{headers[0].get('preset')}/{headers[0].get('seed')} vs "
                                     f"{h.get('preset')}/{h.get('seed')}")
        self.header = headers[0]
        self.records: dict[str, dict[str, Any]] = {}
        self._where: dict[str, Path] = {}
        for root in self.roots:
            for rid in sorted(completed_runs(root)):
                rec = read_record(root / MEMBER_DIR / f"{rid}.json")
                if rid in self.records:
                    if rec != self.records[rid]:
                        raise ZooFormatError(f"run {rid!r} appears in two shards with different content")
                    continue
                self.records[rid] = rec
                self._where[rid] = root
        if not self.records:
            raise ZooFormatError(
                f"no complete members in {', '.join(repr(str(r / MEMBER_DIR)) for r in self.roots)} (a run is "
                "complete when members/<run>.json exists); generate them with python -m neuralgraph.zoo.generate "
                "--preset ... --runs N --out <this directory>, or give a directory that holds a zoo")
        self.members: list[ZooMember] = []
        for rid, rec in self.records.items():
            for c, ck in enumerate(rec["checkpoints"]):
                metrics = {k: v for k, v in ck.items() if k not in ("epoch", "step")}
                self.members.append(ZooMember(rid, c, int(ck.get("epoch", c)), int(ck.get("step", 0)),
                                              rec["architecture"], metrics, rec.get("hyperparameters", {}),
                                              rec, self))
        self._cache: dict[str, dict[str, np.ndarray]] = {}
        self._cache_runs = cache_runs

    def _arrays(self, run_id: str) -> dict[str, np.ndarray]:
        if run_id not in self._cache:
            if len(self._cache) >= self._cache_runs:
                self._cache.pop(next(iter(self._cache)))
            path = self._where[run_id] / MEMBER_DIR / f"{run_id}.npz"
            arrays = load_arrays(path)
            rec = self.records[run_id]
            n_ck = len(rec["checkpoints"])
            for k in rec["param_names"]:
                if k not in arrays:
                    raise ZooFormatError(f"{str(path)!r} has no array {k!r} (it has {sorted(arrays)}), but "
                                         f"{run_id}.json lists it; " + MEMBER_FIX.format(run=run_id))
                if arrays[k].ndim == 0 or arrays[k].shape[0] != n_ck:
                    raise ZooFormatError(f"{str(path)!r}: array {k!r} has shape {arrays[k].shape}, but "
                                         f"{run_id}.json has {n_ck} checkpoints (expected [{n_ck}, ...]); "
                                         + MEMBER_FIX.format(run=run_id))
            self._cache[run_id] = arrays
        return self._cache[run_id]

    def source_files(self) -> list[Path]:
        return [self._where[rid] / MEMBER_DIR / f"{rid}.{ext}" for rid in self.records for ext in ("json", "npz")]

    def member_source(self, member: ZooMember) -> str:
        return str(self._where[member.run_id] / MEMBER_DIR / f"{member.run_id}.npz")

    def member_params(self, member: ZooMember) -> dict[str, np.ndarray]:
        arrays = self._arrays(member.run_id)
        return {k: arrays[k][member.checkpoint] for k in member.record["param_names"]}

    def member_extra(self, member: ZooMember, name: str) -> np.ndarray:
        names = member.record.get("extra_arrays", [])
        if name not in names:
            raise KeyError(f"run {member.run_id!r} stores no extra array {name!r} (it has {names}); "
                           f"see {str(self._where[member.run_id] / MEMBER_DIR / (member.run_id + '.json'))!r}")
        return self._arrays(member.run_id)[name]


def load_zoo(root: str | os.PathLike | Sequence[str | os.PathLike]) -> Zoo:
    """Load a zoo directory (or several shard directories) in our format."""
    return Zoo(root)


def split_by_run(run_ids: Sequence[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 seed: int = 0) -> dict[str, list[str]]:
    """Split run ids into ``train`` / ``val`` / ``test`` (seeded; every run in exactly one split).

    Runs are sorted first, so the split depends only on the set of runs and the seed.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    runs = sorted(set(run_ids))
    perm = np.random.default_rng(seed).permutation(len(runs))
    n = len(runs)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    if n >= 3 and fractions[2] > 0 and n_train + n_val >= n:   # keep at least one test run
        n_train = max(1, n - n_val - 1)
    idx = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
    return {k: [runs[i] for i in sorted(v)] for k, v in idx.items()}


def member_splits(zoo: Zoo, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, list[int]]:
    """Member (checkpoint) indices per split, splitting by run."""
    by_run = split_by_run(zoo.run_ids, fractions, seed)
    where = {rid: name for name, rids in by_run.items() for rid in rids}
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, m in enumerate(zoo.members):
        out[where[m.run_id]].append(i)
    return out
