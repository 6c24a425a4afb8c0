"""Float32 islands under mixed precision (``--amp``)."""
from __future__ import annotations

import torch
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)


def full_precision(t: Tensor) -> Tensor:
    """``t`` as float32 if it is a half-precision tensor (as autocast makes them), else ``t`` unchanged
    (float32 and float64 inputs keep their precision). For reductions that half precision would lose:
    softmax normalisers, variances, losses."""
    return t.float() if t.dtype in _HALF else t
