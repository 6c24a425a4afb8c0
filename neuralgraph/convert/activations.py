"""The activation vocabulary: an open list of names with stable integer ids.

Id 0 (``"none"``) marks neurons without an activation (identity), id 1 (``"unknown"``) marks an
element-wise function that is known to be element-wise but has no name of its own. New names are
appended by :func:`register_activation`, so existing ids never change.

Activations with parameters (``nn.LeakyReLU(0.2)``, ``nn.ELU(alpha=2)``, ``F.gelu(x, approximate="tanh")``,
...) are named by their family when every parameter has its default (``"leaky_relu"``) and by family and
non-default parameters otherwise (``"leaky_relu(negative_slope=0.2)"``, :func:`variant_name`). A variant must
be in the vocabulary (``register_activation(None, name)``) before a network using it converts: giving it
the family's id would make two different functions indistinguishable in the graph.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: list[str] = [
    "none", "unknown", "relu", "leaky_relu", "gelu", "tanh", "sigmoid", "silu", "elu", "selu", "celu",
    "softplus", "mish", "hardswish", "hardsigmoid", "hardtanh", "relu6", "softsign", "tanhshrink",
    "logsigmoid", "sin", "softmax", "log_softmax",
]

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
    # element-wise functions without a name of their own
    torch.exp: "unknown", torch.abs: "unknown", torch.square: "unknown", torch.erf: "unknown",
    torch.cos: "unknown", torch.sqrt: "unknown", torch.log1p: "unknown",
}

#: tensor method name -> activation name (``x.relu()``, ``x.sigmoid()``, ...)
METHOD_ACTIVATIONS: dict[str, str] = {
    "relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid", "sin": "sin", "softmax": "softmax", "log_softmax": "log_softmax",
    "exp": "unknown", "abs": "unknown", "square": "unknown", "cos": "unknown", "sqrt": "unknown",
}


#: activation family -> the parameters that change its function, in call order after the input, with defaults
PARAMETERS: dict[str, tuple[tuple[str, Any], ...]] = {
    "leaky_relu": (("negative_slope", 0.01),),
    "elu": (("alpha", 1.0),),
    "celu": (("alpha", 1.0),),
    "softplus": (("beta", 1.0), ("threshold", 20.0)),
    "hardtanh": (("min_val", -1.0), ("max_val", 1.0)),
    "gelu": (("approximate", "none"),),
}


def variant_name(family: str, values: dict[str, Any]) -> str:
    """The vocabulary name of ``family`` with parameter ``values`` (missing ones take their defaults).

    >>> variant_name("leaky_relu", {"negative_slope": 0.2})
    'leaky_relu(negative_slope=0.2)'
    >>> variant_name("leaky_relu", {"negative_slope": 0.01})
    'leaky_relu'
    """
    extra = [(k, values[k]) for k, d in PARAMETERS.get(family, ()) if k in values and values[k] != d]
    if not extra:
        return family
    return f"{family}(" + ", ".join(f"{k}={v!r}" for k, v in extra) + ")"


def parse_variant(name: str) -> tuple[str, dict[str, Any]]:
    """Inverse of :func:`variant_name`: ``"leaky_relu(negative_slope=0.2)"`` -> ``("leaky_relu", {...})``."""
    import ast

    if "(" not in name:
        return name, {}
    family, rest = name.split("(", 1)
    call = ast.parse(f"f({rest}", mode="eval").body
    return family, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


def module_variant(family: str, module: nn.Module) -> str:
    """:func:`variant_name` of an activation module, its parameters read from its attributes."""
    return variant_name(family, {k: getattr(module, k) for k, _ in PARAMETERS.get(family, ()) if hasattr(module, k)})


def call_variant(family: str, args: tuple, kwargs: dict) -> str:
    """:func:`variant_name` of a call ``fn(input, *args, **kwargs)`` (``args`` after the input)."""
    values = dict(zip((k for k, _ in PARAMETERS.get(family, ())), args))
    values.update({k: v for k, v in kwargs.items() if k != "inplace"})
    return variant_name(family, values)


def activation_id(name: str) -> int:
    """Integer id of an activation name."""
    try:
        return ACTIVATIONS.index(name)
    except ValueError:
        raise KeyError(f"unknown activation {name!r}; known: {ACTIVATIONS}") from None


def register_activation(fn_or_module: Callable | type | None, name: str) -> int:
    """Teach the converter a new activation: a module class (kept as a leaf of the trace) or a function,
    or (``None``) just a name, e.g. a parameter variant of a known family.

    The name is appended to :data:`ACTIVATIONS` if new; returns its id. Ids follow registration order,
    so register in the same order in every process whose graphs are compared. Examples::

        class Sine(nn.Module):                      # SIREN's sin(w0 * x)
            def forward(self, x): return torch.sin(30.0 * x)
        register_activation(Sine, "sine")
        register_activation(None, "leaky_relu(negative_slope=0.2)")   # nn.LeakyReLU(0.2)
    """
    global VERSION
    VERSION += 1  # plans traced before may have traced through it: they are keyed by the version
    if name not in ACTIVATIONS:
        ACTIVATIONS.append(name)
    if isinstance(fn_or_module, type) and issubclass(fn_or_module, nn.Module):
        MODULE_ACTIVATIONS[fn_or_module] = name
    elif fn_or_module is not None:
        FUNCTION_ACTIVATIONS[fn_or_module] = name
    return activation_id(name)
