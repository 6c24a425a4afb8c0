"""Offline model zoos: architectures, presets, vectorised training, the generator, the default zoo.

>>> from neuralgraph.zoo import default_zoo
>>> zoo = default_zoo()                      # generated into $NEURALGRAPH_HOME on first use
>>> m = zoo[0]; m.metrics["test_accuracy"], m.model()
"""
from __future__ import annotations

import os
from pathlib import Path

from neuralgraph.data.arch import ACTIVATION_NAMES, build_model, example_input
from neuralgraph.data.formats.native import Zoo, ZooMember, load_zoo, split_by_run
from neuralgraph.io import neuralgraph_home
from neuralgraph.zoo.presets import PRESETS, Preset, get_preset, list_presets

#: Runs of each preset's default zoo (read from the preset table, the one place zoo sizes are set): the small
#: presets take a few minutes on 2 cores, the ``-large`` ones (>= 1,000 runs) rank models.
DEFAULT_RUNS = {name: preset.runs for name, preset in PRESETS.items()}


def default_zoo_dir(preset: str = "wildpark-digits", seed: int = 0) -> Path:
    """The cache directory of a preset's default zoo; named after a hash of the preset's recipe, so a
    changed recipe (a new release) generates a new zoo instead of mixing with an old one."""
    import hashlib
    import json

    recipe = hashlib.sha256(json.dumps(get_preset(preset).config(), sort_keys=True).encode()).hexdigest()[:8]
    return neuralgraph_home() / "zoos" / f"{preset}-seed{seed}-{recipe}"


def default_zoo(preset: str = "wildpark-digits", runs: int | None = None, seed: int = 0,
                workers: int | None = None, progress: bool = True) -> Zoo:
    """The cached zoo of ``preset``: generated on first use, completed if interrupted, then reused.

    Args:
        preset: a preset name (default ``"wildpark-digits"``, the ``wildpark`` task's zoo).
        runs: number of runs (default: the preset's size, :data:`DEFAULT_RUNS`; 128 for wildpark-digits,
            about 2-3 minutes on 2 cores). Asking for more later trains only the extra runs.
        seed: zoo seed.
        workers: generator processes (default: up to 2, one per available core).
        progress: show a progress bar while generating.

    Returns:
        the loaded :class:`~neuralgraph.data.formats.native.Zoo` (exactly ``runs`` runs: run
        indices ``0 .. runs-1``, even if the cache holds more).
    """
    from neuralgraph.zoo.generate import generate, run_id

    get_preset(preset)  # clear error for a bad name before touching the disk
    if runs is None:
        runs = DEFAULT_RUNS[preset]
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    out = default_zoo_dir(preset, seed)
    wanted = {run_id(r) for r in range(runs)}
    from neuralgraph.data.formats.native import completed_runs

    if not wanted <= completed_runs(out):
        if workers is None:
            workers = max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                 else (os.cpu_count() or 1)))
        generate(preset, runs, out, workers=workers, seed=seed, progress=progress, threads=1)
    zoo = load_zoo(out)
    if set(zoo.run_ids) != wanted:
        zoo = zoo.subset(sorted(wanted))
    return zoo


__all__ = ["build_model", "example_input", "ACTIVATION_NAMES", "PRESETS", "Preset", "get_preset",
           "list_presets", "default_zoo", "default_zoo_dir", "neuralgraph_home", "Zoo", "ZooMember",
           "load_zoo", "split_by_run", "DEFAULT_RUNS"]
