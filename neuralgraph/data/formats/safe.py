"""Loading torch files without executing pickled code.

Published zoos ship ``torch.save`` files. Unpickling runs arbitrary code, so we only ever call
``torch.load(weights_only=True)``: its unpickler accepts tensors, numbers, strings and plain
containers (dict, list, tuple, OrderedDict) and refuses every other global *before* calling it.
There is no fallback to full unpickling here; files holding other objects must be converted once,
by the user, in an environment they trust (see the message of :class:`UnsafeFileError`).
"""
from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import torch


class UnsafeFileError(RuntimeError):
    """A file that would need full (code-executing) unpickling to load."""


def safe_torch_load(path: str | os.PathLike, hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; refuses (never executes) anything else.

    Args:
        path: the file.
        hint: appended to the error message (e.g. the one-time conversion command).

    Raises:
        UnsafeFileError: the file holds objects other than tensors and plain containers.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        reason = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise UnsafeFileError(
            f"refusing to load {str(path)!r}: it contains pickled objects that are not plain tensors or "
            f"containers ({reason.strip()}); loading it would execute code stored in the file. {hint}".strip()
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise UnsafeFileError(f"cannot read {str(path)!r} as a torch file ({why}): it is truncated, damaged or "
                              "not a torch.save file; restore it from its source") from None
