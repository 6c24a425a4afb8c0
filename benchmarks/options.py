"""Check a resolved run configuration against the option types and ranges, before any work is done.

Types come from the code: the task's ``Config`` dataclass, :class:`~neuralgraph.training.TrainConfig`
and the model constructor's annotations. Ranges follow one rule with a short list of exceptions:

* an integer is ``>= 1`` (sizes, counts, epochs, runs), or ``>= 0`` where its default is 0 (seeds,
  ``max_steps``: 0 means no limit); list elements of integer lists are ``>= 1``;
* a number is finite and ``>= 0`` (weight decay, ``grad_clip``: 0 means off, penalty weights);
* exceptions in :data:`RANGES` (``lr > 0``, ``0 <= dropout < 1``, split fractions that sum to 1, the choices of
  ``model.probes`` and ``model.readout``).

Every violation is reported at once, each with the key, the value and what is valid; numbers
written in a form YAML 1.1 reads as a string (``1e-3``) are converted. Options that are valid alone but
not together (:data:`CONFLICTS`) are refused next, in one line naming both and the fix.
"""
from __future__ import annotations

import collections.abc
import inspect
import math
import types
import typing
from dataclasses import fields
from typing import Any, Callable

from neuralgraph.models.heads import READOUTS
from neuralgraph.transforms.probe_features import PROBE_CHOICES

# (section, option) or option (any section) -> (check, description of the valid values)
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.probes": (lambda v: v in PROBE_CHOICES, "among " + ", ".join(map(str, PROBE_CHOICES))),
    "model.readout": (lambda v: v in READOUTS, "among " + ", ".join(map(repr, READOUTS))),
    "train.lr": (lambda v: v > 0, "> 0"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "fourier_sigma": (lambda v: v > 0, "> 0"),
    "fourier_features": (lambda v: v >= 0, ">= 0 (0: plain projections)"),
    "task.split": (lambda v: all(f >= 0 for f in v) and abs(sum(v) - 1) < 1e-6,
                   "summing to 1 (train, val, test fractions, each >= 0)"),
}


#: options valid alone but not together: (section, option, is it on), twice, and why / the fix
CONFLICTS: list[tuple[tuple[str, str, Callable[[Any], bool]], tuple[str, str, Callable[[Any], bool]], str]] = [
    (("task", "normalize_layers", bool), ("model", "probes", lambda v: bool(v)),
     "probe features run the members' real parameters, which normalize_layers replaces by standardised ones "
     "in the graphs; set task.normalize_layers=false or model.probes=0"),
]


class OptionError(ValueError):
    """One or more options have a wrong type or are out of range (the message lists each)."""


def check_options(section: str, values: dict[str, Any], hints: dict[str, Any],
                  defaults: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Values converted to their declared types, and one message per invalid value.

    Args:
        section: ``"task"``, ``"model"`` or ``"train"`` (the prefix of keys in messages).
        values: option name -> value (as read from YAML / ``--set``).
        hints: option name -> annotated type.
        defaults: option name -> default value (``inspect.Parameter.empty`` if none).
    """
    out, errors = {}, []
    for name, value in values.items():
        key = f"{section}.{name}"
        tp = hints.get(name, Any)
        group = _dataclass_in(tp)
        if group is not None and isinstance(value, dict):  # a nested options group (model.encoder.act_emb)
            valid = {f.name for f in fields(group)}
            bad = sorted(set(value) - valid)
            if bad:
                errors.append(f"{key}: unknown option(s) {bad}; valid options: {sorted(valid)}")
                continue
            out[name], errs = check_options(key, value, typing.get_type_hints(group), _dataclass_defaults(group))
            errors += errs
            continue
        try:
            v = _conform(value, tp)
        except TypeError:
            errors.append(f"{key}={value!r}: expected {_describe(tp)}{_range_text(key, name, tp, defaults.get(name))}")
            continue
        problem = _range_problem(key, name, v, tp, defaults.get(name))
        if problem:
            errors.append(f"{key}={value!r}: expected {_describe(tp)} {problem}")
            continue
        out[name] = v
    return out, errors


def check_config(cfg: dict[str, dict[str, Any]], task_config: type, model_fn: Callable,
                 train_config: type) -> dict[str, dict[str, Any]]:
    """The whole resolved configuration, converted; raises :class:`OptionError` listing every bad value.

    Args:
        cfg: ``{"task": ..., "model": ..., "train": ...}`` (unknown keys are checked elsewhere).
        task_config: the task's ``Config`` dataclass.
        model_fn: the registered model class or factory.
        train_config: :class:`~neuralgraph.training.TrainConfig`.
    """
    init = model_fn.__init__ if inspect.isclass(model_fn) else model_fn
    model_defaults = {p.name: p.default for p in inspect.signature(model_fn).parameters.values()}
    sources = {"task": (typing.get_type_hints(task_config), _dataclass_defaults(task_config)),
               "model": (typing.get_type_hints(init), model_defaults),
               "train": (typing.get_type_hints(train_config), _dataclass_defaults(train_config))}
    out, errors = {}, []
    for section, (hints, defaults) in sources.items():
        out[section], errs = check_options(section, cfg.get(section, {}), hints, defaults)
        errors += errs
    if errors:
        raise OptionError("invalid option value(s):\n  " + "\n  ".join(errors))
    for *pair, why in CONFLICTS:
        given = [f"{sec}.{name}={_yaml_text(out[sec][name])}" for sec, name, on in pair
                if name in out.get(sec, {}) and on(out[sec][name])]
        if len(given) == len(pair):
            raise OptionError(f"{' and '.join(given)} cannot be combined: {why}")
    return out


def _yaml_text(value: Any) -> str:
    """A value as it is written on the command line (``true``, ``16``)."""
    return "true" if value is True else "false" if value is False else str(value)


def _dataclass_defaults(cls: type) -> dict[str, Any]:
    import dataclasses

    return {f.name: (f.default if f.default is not dataclasses.MISSING else
                     f.default_factory() if f.default_factory is not dataclasses.MISSING else inspect.Parameter.empty)
            for f in fields(cls)}


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass an option's type names (``EncoderConfig | dict``: ``EncoderConfig``), or ``None``."""
    import dataclasses

    for t in (typing.get_args(tp) if _is_union(tp) else (tp,)):
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            return t
    return None


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _conform(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (lists for sequences), or ``TypeError``."""
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    if _is_union(tp):
        for arg in typing.get_args(tp):
            try:
                return _conform(value, arg)
            except TypeError:
                pass
        raise TypeError
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise TypeError from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise TypeError
            return [_conform(v, a) for v, a in zip(value, args)]
        return [_conform(v, args[0] if args else Any) for v in value]
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise TypeError
    return value


def _describe(tp: Any) -> str:
    if _is_union(tp):
        parts = [_describe(a) for a in typing.get_args(tp)]
        return " or ".join(parts)
    if tp is type(None):
        return "null"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in names:
        return names[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple, collections.abc.Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        return f"a list of ({_describe(args[0]) if args else 'values'})"
    return getattr(tp, "__name__", str(tp))


def _base_number_type(tp: Any) -> Any:
    """``int`` / ``float`` for a number option (also ``int | None``); the element type for sequences."""
    if _is_union(tp):
        nums = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_number_type(nums[0]) if len(nums) == 1 else None
    if tp in (int, float):
        return tp
    return None


def _range_text(key: str, name: str, tp: Any, default: Any) -> str:
    rule = RANGES.get(key) or RANGES.get(name)
    if rule:
        return f" {rule[1]}"
    base = _base_number_type(tp)
    if base is int:
        return " >= 0" if default == 0 else " >= 1"
    if base is float:
        return " >= 0"
    return ""


def _range_problem(key: str, name: str, v: Any, tp: Any, default: Any) -> str | None:
    """Why a well-typed value is out of range, or ``None``."""
    rule = RANGES.get(key) or RANGES.get(name)
    if rule:
        return None if v is None or rule[0](v) else rule[1]
    if v is None:
        return None
    base = _base_number_type(tp)
    if base is int:
        lo = 0 if default == 0 else 1
        return None if v >= lo else f">= {lo}"
    if base is float:
        return None if v >= 0 else ">= 0"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple, collections.abc.Sequence) and isinstance(v, list):
        if args and all(a is int for a in args if a is not Ellipsis) and any(x < 1 for x in v):
            return "with every element >= 1"
    return None
