"""Conversion rules: one function per layer type / operation, registered by decorator.

A rule has the signature ``rule(ctx, node, *args, **kwargs)`` where ``ctx`` is the
:class:`~neuralgraph.convert.trace.TraceContext`, ``node`` the ``torch.fx`` node, and args/kwargs
the node's arguments with every tensor replaced by its :class:`~neuralgraph.convert.builder.Val`.
Module rules receive the module as ``ctx.module(node)``. A rule returns the ``Val`` of its result.

Adding a layer type is one rule in one file here plus its registration (see CONTRIBUTING.md).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

MODULE_RULES: dict[type[nn.Module], Callable] = {}
FUNCTION_RULES: dict[Callable, Callable] = {}
METHOD_RULES: dict[str, Callable] = {}


def module_rule(*types: type[nn.Module]) -> Callable[[Callable], Callable]:
    """Register a rule for module types (they become leaves of the trace)."""

    def deco(fn: Callable) -> Callable:
        for t in types:
            MODULE_RULES[t] = fn
        return fn

    return deco


def function_rule(*fns: Callable) -> Callable[[Callable], Callable]:
    """Register a rule for ``call_function`` targets (``torch.cat``, ``operator.add``, ...)."""

    def deco(fn: Callable) -> Callable:
        for f in fns:
            FUNCTION_RULES[f] = fn
        return fn

    return deco


def method_rule(*names: str) -> Callable[[Callable], Callable]:
    """Register a rule for tensor methods (``x.flatten(1)``, ``x.view(...)``, ...)."""

    def deco(fn: Callable) -> Callable:
        for n in names:
            METHOD_RULES[n] = fn
        return fn

    return deco


def takes_params(fn: Callable) -> Callable:
    """Mark a rule as accepting :class:`~neuralgraph.convert.builder.Param` arguments (parameters read
    directly in forward); every other rule is refused a parameter argument with one clear error."""
    fn.takes_params = True
    return fn


#: Passes over the whole ``torch.fx`` graph, run before the walk as ``fn(ctx, graph)``: they validate and
#: match patterns that span several operations (hand-written attention: q/k/v Linear, head reshapes,
#: softmax(q kᵀ) v), and claim the nodes of a match by setting ``node.meta[CLAIM] = rule``; the tracer
#: then calls that rule for the node instead of the one registered for its target.
GRAPH_PASSES: list[Callable] = []
CLAIM = "neuralgraph_rule"


def graph_pass(fn: Callable) -> Callable:
    """Register a pass over the traced graph (see :data:`GRAPH_PASSES`)."""
    GRAPH_PASSES.append(fn)
    return fn


def find_module_rule(module: nn.Module) -> Callable | None:
    """The rule of the nearest registered class of ``module``; a subclass that overrides ``forward`` has none
    (its forward is traced instead: timm's BatchNormAct2d, LayerNorm2d)."""
    for cls in type(module).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls] if type(module).forward is cls.forward else None
    return None


# Registration by import.
from neuralgraph.convert.rules import conv, functional, linear, norm  # noqa: E402,F401
from neuralgraph.convert.rules import embedding  # noqa: E402,F401
from neuralgraph.convert.rules import attention  # noqa: E402,F401
from neuralgraph.convert.rules import layout  # noqa: E402,F401
