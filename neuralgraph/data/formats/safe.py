"""Loading torch files without executing pickled code: the one loader of every torch file we read
(processed graphs, results checkpoints, Wild Park checkpoints, DWSNets INRs).

Published zoos ship ``torch.save`` files. Unpickling runs arbitrary code, so we only ever call
``torch.load(weights_only=True)``: its unpickler accepts tensors, numbers, strings and plain
containers (dict, list, tuple, OrderedDict) and refuses every other global *before* calling it.
There is no fallback to full unpickling here; files holding other objects must be converted once,
by the user, in an environment they trust (see the message of :class:`UnsafeFileError`).
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from typing import Any

import torch

from neuralgraph.io import DataFileError


class UnsafeFileError(DataFileError):
    """A file that would need full (code-executing) unpickling to load; refused, never executed."""


def safe_torch_load(path: str | os.PathLike, hint: str = "", what: str = "a torch file",
                    fix: str = "restore it from its source") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; refuses (never executes) anything else.

    Args:
        path: the file.
        hint: appended to the refusal (e.g. the one-time conversion command for a trusted source).
        what: what the file is, for the messages (e.g. ``"a results checkpoint"``).
        fix: what to do with a damaged (truncated, not a torch file) one.

    Raises:
        UnsafeFileError: the file holds objects other than tensors and plain containers. The message
            names the file and never suggests ``weights_only=False`` (torch's own message does).
        DataFileError: the file is truncated, damaged or not a ``torch.save`` file.
    """
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a crafted file
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        holds = f"it refers to {found.group(1)}" if found else "it holds pickle instructions beyond plain data"
        raise UnsafeFileError(
            f"refusing to load {str(path)!r} ({what}) as unsafe: {holds}, not only tensors and plain containers, "
            f"and unpickling it could execute code stored in the file. {hint}".strip()) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0]  # torch's first sentence
        raise DataFileError(f"{str(path)!r}, {what}, is damaged ({why}): truncated, or not a torch.save file; "
                            f"{fix}") from None
