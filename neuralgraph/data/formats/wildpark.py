"""Reader for the CNN Wild Park (Kofinas et al., ICLR 2024), read-only, and a one-time converter.

Layout (a Ray Tune experiment)::

    <root>/<trial>/<checkpoint>/checkpoint.pt     a torch.save'd dict:
        model       state dict: layers.{i}.weight / .bias (Conv2d), fc.weight / .bias
        config      n_layers, n_classes, channels (input channels first), kernel_size, stride,
                    padding, residual, activation
        last_result {"test/acc": ..., "test/loss": ...}
        iteration   the epoch

Config -> our ``wildpark`` description: ``channels[1:]`` are the layer widths, ``channels[0]`` the
input channels, ``kernel_size`` -> ``kernels``, ``activation`` -> ``activations`` (``"none"`` ->
``"identity"``), ``residual`` unchanged. The published forward adds the skip exactly where ours does:
the post-activation output of layer ``residual[i]`` is added into the first
``min(c_i, c_residual[i])`` channels of layer ``i``'s conv output, before layer ``i``'s activation
(they add in place on a clone, we concatenate; the values are identical). Strides other than 1 or
paddings other than ``k // 2`` are not part of the published zoo and are refused.

Safety: the published files store ``config`` as an OmegaConf object, and Ray adds more objects, so
they cannot be loaded without full unpickling. This reader only uses ``torch.load(weights_only=True)``
and refuses such files with a message that explains the one-time conversion::

    python -m neuralgraph.data.formats.wildpark --src <root> --out <dir> --trust-pickles

which the user runs in an environment they trust; it writes our format (arrays + JSON), which
:func:`neuralgraph.data.formats.native.load_zoo` then reads safely. Files that hold only tensors and
plain containers (e.g. re-saved with ``config`` as a dict) are read directly.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from neuralgraph.data.arch import validate_wildpark
from neuralgraph.data.formats.native import BaseZoo, ZooFormatError, ZooMember
from neuralgraph.data.formats.safe import UnsafeFileError, safe_torch_load
from neuralgraph.io import DataFileError, StorageError

CONVERT_HINT = ("Convert the zoo once, in an environment you trust, with: python -m "
                "neuralgraph.data.formats.wildpark --src <wild park root> --out <new dir> --trust-pickles ; "
                "then load <new dir> with neuralgraph.data.formats.load_zoo.")


def _cfg_get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg[key]
    return getattr(cfg, key)


def config_to_description(cfg: Any, input_size: Sequence[int] = (32, 32)) -> dict[str, Any]:
    """Map a published Wild Park ``config`` onto our ``wildpark`` architecture description."""
    channels = [int(c) for c in _cfg_get(cfg, "channels")]
    kernels = [int(k) for k in _cfg_get(cfg, "kernel_size")]
    strides = [int(s) for s in _cfg_get(cfg, "stride")]
    paddings = [int(p) for p in _cfg_get(cfg, "padding")]
    n = int(_cfg_get(cfg, "n_layers"))
    if len(channels) != n + 1:
        raise ZooFormatError(f"Wild Park config: {len(channels)} channels for {n} layers (expected n_layers + 1)")
    if any(s != 1 for s in strides) or any(p != k // 2 for p, k in zip(paddings, kernels)):
        raise ZooFormatError(f"Wild Park config with stride {strides} / padding {paddings}: only stride 1 and "
                             "padding k // 2 (the published recipe) map onto the 'wildpark' family")
    return validate_wildpark({
        "family": "wildpark", "in_channels": channels[0], "n_classes": int(_cfg_get(cfg, "n_classes")),
        "input_size": list(input_size), "channels": channels[1:], "kernels": kernels,
        "activations": [str(a) for a in _cfg_get(cfg, "activation")],
        "residual": [int(r) for r in _cfg_get(cfg, "residual")],
    })


def find_checkpoints(root: Path) -> list[Path]:
    """``<root>/<trial>/<checkpoint>/checkpoint.pt`` sorted by trial, then checkpoint number."""
    def key(p: Path):
        nums = re.findall(r"\d+", p.parent.name)
        return (p.parent.parent.name, int(nums[-1]) if nums else -1, p.parent.name)
    return sorted(root.glob("*/*/checkpoint.pt"), key=key)


def _checkpoint_fields(ck: Any, path: Path) -> tuple[dict, Any, dict, int | None]:
    if not isinstance(ck, Mapping) or "model" not in ck or "config" not in ck:
        raise ZooFormatError(f"{path}: expected a dict with 'model' and 'config'")
    result = ck.get("last_result") or {}
    return ck["model"], ck["config"], dict(result), ck.get("iteration")


def _metrics(result: Mapping) -> dict[str, float]:
    out = {}
    for src, dst in (("test/acc", "test_accuracy"), ("test/loss", "test_loss"),
                     ("train/acc", "train_accuracy"), ("train/loss", "train_loss")):
        if src in result:
            out[dst] = float(result[src])
    return out


class WildParkZoo(BaseZoo):
    """The CNN Wild Park, read without unpickling objects (see the module docstring).

    Args:
        root (str): the experiment directory holding ``<trial>/<checkpoint>/checkpoint.pt``.
        input_size (tuple, optional): image size recorded in the descriptions. (default: ``(32, 32)``)

    Raises:
        UnsafeFileError: a checkpoint needs full unpickling (the message explains the conversion).
    """

    def __init__(self, root: str | os.PathLike, input_size: Sequence[int] = (32, 32)) -> None:
        root = Path(root)
        self.roots = [root]
        paths = find_checkpoints(root)
        if not paths:
            raise ZooFormatError(f"no <trial>/<checkpoint>/checkpoint.pt files under {str(root)!r}")
        self.header = {"format": "cnn-wild-park", "preset": f"wildpark:{root.name}"}
        self.records, self.members = {}, []
        for path in paths:
            ck = safe_torch_load(path, hint=CONVERT_HINT, what="a Wild Park checkpoint")
            sd, cfg, result, it = _checkpoint_fields(ck, path)
            trial = path.parent.parent.name
            desc = config_to_description(cfg, input_size)
            rec = self.records.setdefault(trial, {"architecture": desc, "checkpoints": []})
            c = len(rec["checkpoints"])
            epoch = int(it) if it is not None else c
            rec["checkpoints"].append({"path": str(path), "epoch": epoch})
            self.members.append(ZooMember(trial, c, epoch, epoch, desc, _metrics(result), {}, rec, self))

    def source_files(self) -> list[Path]:
        return [Path(ck["path"]) for rec in self.records.values() for ck in rec["checkpoints"]]

    def member_source(self, member: ZooMember) -> str:
        return member.record["checkpoints"][member.checkpoint]["path"]

    def member_params(self, member: ZooMember) -> dict[str, np.ndarray]:
        path = member.record["checkpoints"][member.checkpoint]["path"]
        sd = safe_torch_load(path, hint=CONVERT_HINT, what="a Wild Park checkpoint")["model"]
        return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def convert(src: str | os.PathLike, out: str | os.PathLike, trust_pickles: bool = False,
            input_size: Sequence[int] = (32, 32), progress: bool = True) -> int:
    """Convert a Wild Park experiment into our format; returns the number of runs written.

    With ``trust_pickles=False`` only plain-tensor files are accepted (as :class:`WildParkZoo`).
    With ``trust_pickles=True`` the files are fully unpickled (**this executes code stored in them**),
    so only use it on files from a source you trust, ideally in an isolated environment.
    """
    import torch
    from tqdm.auto import tqdm

    from neuralgraph.data.formats.native import completed_runs, init_zoo_dir, write_member

    src, out = Path(src), Path(out)
    paths = find_checkpoints(src)
    if not paths:
        raise ZooFormatError(f"no <trial>/<checkpoint>/checkpoint.pt files under {str(src)!r}")
    init_zoo_dir(out, {"preset": f"wildpark:{src.name}", "seed": 0,
                       "description": f"converted from the CNN Wild Park at {src}", "config": {"source": str(src)}})
    done = completed_runs(out)
    by_trial: dict[str, list[Path]] = {}
    for p in paths:
        by_trial.setdefault(p.parent.parent.name, []).append(p)
    written = 0
    for trial, ps in tqdm(by_trial.items(), desc="wild park -> neuralgraph", disable=not progress):
        rid = re.sub(r"[^A-Za-z0-9_.-]", "_", trial)
        if rid in done:
            continue
        params: dict[str, list[np.ndarray]] = {}
        cks, desc = [], None
        for p in ps:
            ck = (torch.load(p, map_location="cpu", weights_only=False) if trust_pickles
                  else safe_torch_load(p, hint=CONVERT_HINT, what="a Wild Park checkpoint"))
            sd, cfg, result, it = _checkpoint_fields(ck, p)
            d = config_to_description(cfg if isinstance(cfg, Mapping) else _to_plain(cfg), input_size)
            if desc is not None and d != desc:
                raise ZooFormatError(f"trial {trial}: checkpoints disagree on the architecture")
            desc = d
            for k, v in sd.items():
                params.setdefault(k, []).append(v.detach().cpu().numpy())
            cks.append({"epoch": int(it) if it is not None else len(cks), "step": int(it or 0), **_metrics(result)})
        write_member(out, rid, {k: np.stack(v) for k, v in params.items()},
                     {"architecture": desc, "hyperparameters": {}, "dataset": "cifar10", "checkpoints": cks,
                      "source_trial": trial})
        written += 1
    return written


def _to_plain(cfg: Any) -> dict[str, Any]:
    keys = ("n_layers", "n_classes", "channels", "kernel_size", "stride", "padding", "residual", "activation")
    return {k: (list(_cfg_get(cfg, k)) if k not in ("n_layers", "n_classes") else _cfg_get(cfg, k)) for k in keys}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m neuralgraph.data.formats.wildpark",
                                 description="Convert a CNN Wild Park experiment into the neuralgraph zoo format.")
    ap.add_argument("--src", required=True, help="directory with <trial>/<checkpoint>/checkpoint.pt")
    ap.add_argument("--out", required=True, help="output zoo directory")
    ap.add_argument("--trust-pickles", action="store_true",
                    help="fully unpickle the checkpoints (EXECUTES CODE IN THEM; only for files you trust)")
    args = ap.parse_args(argv)
    try:
        n = convert(args.src, args.out, trust_pickles=args.trust_pickles)
    except (DataFileError, StorageError) as e:  # a bad file, or an unwritable --out (both named)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {n} runs written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
