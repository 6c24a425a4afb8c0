"""timm-style model registry: ``@register_model`` on a factory, ``create_model(name, **hparams)``."""
from __future__ import annotations

import fnmatch
import inspect
from typing import Any, Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
#: models that only make sense for one task (e.g. the hand-written optimizers of ``l2o``): name -> task
_TASK_ONLY: dict[str, str] = {}


def register_model(name: str, task: str | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``fn`` (a class or factory returning an ``nn.Module``) under ``name``; with ``task``, a
    model of that task only (listed by ``list_models(task=...)``, not among the general encoders)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        if task is not None:
            _TASK_ONLY[name] = task
        return fn

    return deco


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered model names matching a shell-style wildcard, e.g. ``list_models("ng-*")``: the general
    models, plus the models of ``task`` only when a task is given."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern) and _TASK_ONLY.get(n, task) == task)


def model_task(name: str) -> str | None:
    """The one task a model belongs to (``None``: a general model)."""
    return _TASK_ONLY.get(name)


def create_model(name: str, **hparams) -> nn.Module:
    """Build a registered model. ``None`` values are dropped so callers can forward optional flags."""
    if name not in _MODELS:
        raise KeyError(f"Could not resolve {name!r} among choices {list_models()}")
    return _MODELS[name](**{k: v for k, v in hparams.items() if v is not None})


def model_arguments(name: str) -> dict[str, Any]:
    """Constructor arguments of a registered model and their defaults (``inspect.Parameter.empty`` if none)."""
    if name not in _MODELS:
        raise KeyError(f"Could not resolve {name!r} among choices {list_models()}")
    sig = inspect.signature(_MODELS[name])
    return {p.name: p.default for p in sig.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def model_class(name: str) -> Callable[..., nn.Module]:
    """The registered class (or factory) of a model, e.g. to read its ``input_kind`` before building it."""
    if name not in _MODELS:
        raise KeyError(f"Could not resolve {name!r} among choices {list_models()}")
    return _MODELS[name]
