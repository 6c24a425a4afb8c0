"""The activation vocabulary: an open list of names with stable integer ids.

Id 0 (``"none"``) marks neurons without an activation (identity), id 1 (``"unknown"``) marks an
element-wise function that is known to be element-wise but has no name of its own. New names are
appended by :func:`register_activation`, so existing ids never change.

Activations with parameters are a fixed family name plus numbers: ``nn.LeakyReLU(0.2)`` is ``leaky_relu``
with the slope 0.2 in the neurons' first activation-parameter column (``x[:, 2]``, :data:`PARAMETERS`), so any
slope converts without registration and ``nn.ELU(2)`` / ``nn.ELU(2.0)`` give the same graph. Defaults are
stored too (``nn.LeakyReLU()`` carries 0.01). ``nn.PReLU``'s per-channel slope is a parameter of the module,
gathered into the same column. ``F.gelu(x, approximate="tanh")`` is the family ``gelu_tanh``.
:func:`register_activation` is for functions the vocabulary does not know; the ZooDataset cache key records
the registered names.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: list[str] = [
    "none", "unknown", "relu", "leaky_relu", "gelu", "tanh", "sigmoid", "silu", "elu", "selu", "celu",
    "softplus", "mish", "hardswish", "hardsigmoid", "hardtanh", "relu6", "softsign", "tanhshrink",
    "logsigmoid", "sin", "softmax", "log_softmax", "prelu", "gelu_tanh", "sine", "square", "sqrt", "reciprocal",
    "exp", "abs", "erf", "cos", "log1p", "cosine_attention",
]
#: activations of a virtual head neuron that say how its head scores queries against keys (not element-wise
#: functions of the neuron's own value, which nothing reads): ``cosine_attention`` (Swin V2) scores
#: ``cos(q, k) * exp(min(s, log 100))`` with the head's logit scale ``s`` in the first activation-parameter column,
#: and ignores the key bias
HEAD_ACTIVATIONS = ("cosine_attention",)

#: changes with every registration (part of the conversion plan cache key)
VERSION = 0

#: module type -> activation name
MODULE_ACTIVATIONS: dict[type, str] = {
    nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.GELU: "gelu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
    nn.SiLU: "silu", nn.ELU: "elu", nn.SELU: "selu", nn.CELU: "celu", nn.Softplus: "softplus",
    nn.Mish: "mish", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.Hardtanh: "hardtanh",
    nn.ReLU6: "relu6", nn.Softsign: "softsign", nn.Tanhshrink: "tanhshrink", nn.LogSigmoid: "logsigmoid",
    nn.Softmax: "softmax", nn.LogSoftmax: "log_softmax",
}

#: function -> activation name (torch.* and torch.nn.functional.* spellings)
FUNCTION_ACTIVATIONS: dict[Callable, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu_: "relu", torch.relu_: "relu", F.leaky_relu: "leaky_relu",
    F.gelu: "gelu", torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.silu: "silu", F.elu: "elu", F.selu: "selu", torch.selu: "selu", F.celu: "celu", F.softplus: "softplus",
    F.mish: "mish", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.hardtanh: "hardtanh",
    F.relu6: "relu6", F.softsign: "softsign", F.tanhshrink: "tanhshrink", F.logsigmoid: "logsigmoid",
    torch.sin: "sin", F.softmax: "softmax", torch.softmax: "softmax", F.log_softmax: "log_softmax",
    torch.log_softmax: "log_softmax",
    torch.square: "square", torch.sqrt: "sqrt", torch.reciprocal: "reciprocal", torch.exp: "exp", torch.abs: "abs",
    torch.erf: "erf", torch.special.erf: "erf", torch.cos: "cos", torch.log1p: "log1p", torch.special.log1p: "log1p",
    torch.absolute: "abs", operator.abs: "abs", torch.exp_: "exp", torch.abs_: "abs", torch.cos_: "cos",
    torch.erf_: "erf", torch.log1p_: "log1p",
}

#: tensor method name -> activation name (``x.relu()``, ``x.sigmoid()``, ...)
METHOD_ACTIVATIONS: dict[str, str] = {
    "relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid", "sin": "sin", "softmax": "softmax", "log_softmax": "log_softmax",
    "square": "square", "sqrt": "sqrt", "reciprocal": "reciprocal", "exp": "exp", "abs": "abs", "erf": "erf",
    "cos": "cos", "log1p": "log1p", "absolute": "abs", "exp_": "exp", "abs_": "abs", "absolute_": "abs",
    "erf_": "erf", "cos_": "cos", "log1p_": "log1p", "sqrt_": "sqrt", "reciprocal_": "reciprocal", "square_": "square",
}


#: activation family -> its parameters (after the input in a call, with defaults), stored in order in the node
#: feature columns ``PARAM_COLUMNS`` of the neurons it is applied to
PARAMETERS: dict[str, tuple[tuple[str, float], ...]] = {
    "leaky_relu": (("negative_slope", 0.01),),
    "elu": (("alpha", 1.0),),
    "celu": (("alpha", 1.0),),
    "softplus": (("beta", 1.0), ("threshold", 20.0)),
    "hardtanh": (("min_val", -1.0), ("max_val", 1.0)),
    "prelu": (("weight", 0.25),),  # a parameter of nn.PReLU (gathered like a bias), not a constant
    "sine": (("w0", 1.0),),  # SIREN's sin(w0 * x) as one activation (neuralgraph.data.arch.Sine)
}
#: node feature columns of the activation parameters
PARAM_COLUMNS = (2, 3)


def _resolve(family: str, values: dict[str, Any]) -> tuple[str, tuple[float, ...]]:
    if family == "gelu":
        approximate = values.get("approximate", "none")
        if approximate not in ("none", "tanh"):
            raise ValueError(f"unknown GELU approximation {approximate!r}")
        return ("gelu_tanh" if approximate == "tanh" else "gelu"), ()
    return family, tuple(float(values.get(k, d)) for k, d in PARAMETERS.get(family, ()))


def module_activation(family: str, module: nn.Module) -> tuple[str, tuple[float, ...]]:
    """The vocabulary name and parameter values of an activation module (parameters read from its attributes)."""
    keys = [k for k, _ in PARAMETERS.get(family, ())] + (["approximate"] if family == "gelu" else [])
    return _resolve(family, {k: getattr(module, k) for k in keys if hasattr(module, k)})


def call_activation(family: str, args: tuple, kwargs: dict) -> tuple[str, tuple[float, ...]]:
    """The vocabulary name and parameter values of a call ``fn(input, *args, **kwargs)`` (``args`` after the
    input)."""
    keys = [k for k, _ in PARAMETERS.get(family, ())] + (["approximate"] if family == "gelu" else [])
    values = dict(zip(keys, args))
    values.update({k: v for k, v in kwargs.items() if k != "inplace"})
    return _resolve(family, values)


def activation_id(name: str) -> int:
    """Integer id of an activation name."""
    try:
        return ACTIVATIONS.index(name)
    except ValueError:
        raise KeyError(f"unknown activation {name!r}; known: {ACTIVATIONS}") from None


def register_activation(fn_or_module: Callable | type | None, name: str) -> int:
    """Teach the converter a new element-wise activation: a module class (kept as a leaf of the trace) or a
    function, or (``None``) just a name. Activations with parameters need no registration (:data:`PARAMETERS`).

    The name is appended to :data:`ACTIVATIONS` if new; returns its id. Ids follow registration order,
    so register in the same order in every process whose graphs are compared (``ZooDataset`` records the
    registered names in its cache key). Examples::

        class Sine(nn.Module):                      # SIREN's sin(w0 * x)
            def forward(self, x): return torch.sin(30.0 * x)
        register_activation(Sine, "sine")
    """
    global VERSION
    if name in HEAD_ACTIVATIONS:
        raise ValueError(f"{name!r} is a window attention head's score function (HEAD_ACTIVATIONS), not an "
                         "element-wise activation: choose another name")
    VERSION += 1  # plans traced before may have traced through it: they are keyed by the version
    if "(" in name:
        raise ValueError(f"{name!r}: activation parameters are numbers on the neurons, not names; a parametric "
                         f"family converts without registration (families: {sorted(PARAMETERS)})")
    if name not in ACTIVATIONS:
        ACTIVATIONS.append(name)
    if isinstance(fn_or_module, type) and issubclass(fn_or_module, nn.Module):
        MODULE_ACTIVATIONS[fn_or_module] = name
    elif fn_or_module is not None:
        FUNCTION_ACTIVATIONS[fn_or_module] = name
    return activation_id(name)
