"""The rule registries: one function per layer type / operation, registered by decorator.

A rule has the signature ``rule(ctx, node, *args, **kwargs)`` where ``ctx`` is the
:class:`~neuralgraph.convert.trace.TraceContext`, ``node`` the ``torch.fx`` node, and args/kwargs
the node's arguments with every tensor replaced by its :class:`~neuralgraph.convert.builder.Val`.
Module rules receive the module as ``ctx.module(node)``. A rule returns the ``Val`` of its result.

Adding a layer type is one rule in one file of :mod:`neuralgraph.convert.rules` plus its registration (see
CONTRIBUTING.md).
"""
from __future__ import annotations

from typing import Callable

from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

MODULE_RULES: dict[type[nn.Module] | str, Callable] = {}
FUNCTION_RULES: dict[Callable | str, Callable] = {}
METHOD_RULES: dict[str, Callable] = {}


def module_rule(*types: type[nn.Module] | str) -> Callable[[Callable], Callable]:
    """Register a rule for module types (they become leaves of the trace); a string is the qualified name of a
    class of a library the converter does not import (``"torchvision.models.maxvit.PartitionAttentionLayer"``)."""

    def deco(fn: Callable) -> Callable:
        for t in types:
            MODULE_RULES[t] = fn
        return fn

    return deco


def function_rule(*fns: Callable | str) -> Callable[[Callable], Callable]:
    """Register a rule for ``call_function`` targets (``torch.cat``, ``operator.add``, ...); a string is the
    qualified name of a function of a library the converter does not import (``"torchvision.ops.
    stochastic_depth.stochastic_depth"``, a leaf of the trace through ``torch.fx.wrap``)."""

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


def reads_params_only(fn: Callable) -> Callable:
    """Mark a function rule as also taking calls whose arguments are parameters alone (no neuron value): a
    table gathered in forward (Swin's relative position bias) whose result another rule consumes. Calls of
    every other function on parameters alone may only reshape them."""
    fn.takes_params = True
    fn.params_only = True
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


#: methods a subclass may redefine and still use its parent's rule (they do not change what forward computes)
_SAFE_OVERRIDES = {"__init__", "reset_parameters", "extra_repr", "__repr__", "__setstate__", "_load_from_state_dict",
                   "_save_to_state_dict"}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _rule_of(cls: type) -> Callable | None:
    """The rule registered for the class itself or for its qualified name."""
    return MODULE_RULES.get(cls) or MODULE_RULES.get(_qualname(cls))


def _ruled_class(module: nn.Module) -> type | None:
    return next((cls for cls in type(module).__mro__ if _rule_of(cls) is not None), None)


_WEIGHT_HOOKS = (WeightNorm, SpectralNorm)


def redefined_on_instance(module: nn.Module) -> bool:
    """Whether ``module`` itself changes what its class computes: a ``forward`` set on the instance, or forward
    (pre-)hooks, which may replace its inputs or output. Such a module is traced into (its hooks with it), never
    converted by a rule of its class, which would silently drop them."""
    hooks = (*module._forward_pre_hooks.values(), *module._forward_hooks.values())
    # torch's old weight_norm / spectral_norm pre-hooks compute a weight: the rules refuse it with the fix
    return "forward" in vars(module) or any(not isinstance(h, _WEIGHT_HOOKS) for h in hooks)


def overridden_rule(module: nn.Module) -> type | None:
    """The registered class whose rule ``module`` would use, if ``module``'s class (or ``module`` itself, an attribute
    set on the instance) redefines one of its methods (``forward``, ``_conv_forward``, ...) or ``module`` has forward
    hooks (:func:`redefined_on_instance`): then the rule does not apply and the module is traced into."""
    ruled = _ruled_class(module)
    if ruled is None:
        return None
    if redefined_on_instance(module):
        return ruled
    for scope in (vars(module), *map(vars, type(module).__mro__[:type(module).__mro__.index(ruled)])):
        for name, value in scope.items():  # the instance's own attributes first: ``m.forward = ...`` redefines it too
            if callable(value) and name not in _SAFE_OVERRIDES and hasattr(ruled, name):
                return ruled
    return None


def find_module_rule(module: nn.Module) -> Callable | None:
    """The rule of ``module``'s class or its nearest registered base class; a subclass that redefines a method
    of that base (e.g. ``forward``: timm's weight-standardised ``StdConv2d``) gets none, and is traced into."""
    ruled = _ruled_class(module)
    if ruled is None or overridden_rule(module) is not None:
        return None
    return _rule_of(ruled)


def find_function_rule(fn: Callable) -> Callable | None:
    """The rule of a ``call_function`` target: registered for the function itself or its qualified name."""
    rule = FUNCTION_RULES.get(fn)
    if rule is None and hasattr(fn, "__qualname__"):
        rule = FUNCTION_RULES.get(f"{getattr(fn, '__module__', '')}.{fn.__qualname__}")
    return rule
