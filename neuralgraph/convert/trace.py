"""Discover a module's dataflow with ``torch.fx`` and walk it, calling one rule per operation."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import inspect
import math
import operator
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.fx.experimental.meta_tracer import MetaProxy, MetaTracer
from torch.fx.immutable_collections import immutable_dict, immutable_list
from torch.fx.passes.shape_prop import ShapeProp

from neuralgraph.convert import activations as A
from neuralgraph.convert import rules  # noqa: F401  (registers every rule)
from neuralgraph.convert.builder import SYM, GraphBuilder, HandedOn, Param, Sym, Val
from neuralgraph.convert.config import ConvertConfig
from neuralgraph.convert.errors import UnsupportedModuleError
from neuralgraph.data.graph import FieldRangeError, compact_field
from neuralgraph.convert.registry import (CLAIM, GRAPH_PASSES, METHOD_RULES, MODULE_RULES,
                                          find_function_rule, find_module_rule, overridden_rule,
                                          redefined_on_instance)
from neuralgraph.convert.rules.activation import activation
from neuralgraph.convert.rules.functional import channel_slice


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def supported_modules() -> list[str]:
    names = {t.rsplit(".", 1)[-1] if isinstance(t, str) else t.__name__ for t in MODULE_RULES}
    names |= {t.__name__ for t in A.MODULE_ACTIVATIONS}
    return sorted(names)


#: what the converter supports, in one line (the full list: :func:`supported_modules`)
SUPPORTED_SUMMARY = ("Linear, Conv1d/2d/3d, BatchNorm/LayerNorm/GroupNorm/InstanceNorm, max/avg/adaptive pooling, "
                     "Embedding, MultiheadAttention, TransformerEncoder(Layer), Dropout/Identity/Flatten, element-wise "
                     "activations; custom modules are traced through")

#: why a module type cannot be converted, and what to do instead
_HINTS: dict[type, str] = {
    nn.RNNBase: ": recurrent layers reuse their weights across time steps, which a feed-forward neural graph cannot "
                "express; convert the cell unrolled by hand (nn.Linear layers) if the sequence length is fixed",
    nn.TransformerDecoderLayer: ": decoders need masked cross-attention over a second sequence; only encoders "
                                "convert (nn.TransformerEncoder)",
    nn.TransformerDecoder: ": decoders need masked cross-attention over a second sequence; only encoders convert "
                           "(nn.TransformerEncoder)",
    nn.Transformer: ": it contains a decoder; only encoders convert (nn.TransformerEncoder)",
}


def _hint(mod: nn.Module) -> str:
    """Why ``mod`` is not supported and the closest supported alternative, when known."""
    if torch.nn.utils.parametrize.is_parametrized(mod):
        names = ", ".join(mod.parametrizations.keys())
        return (f" (its {names} is parametrized, e.g. weight_norm / spectral_norm: computed in forward, not stored; "
                f"a neural graph stores parameters: remove the parametrization first, "
                f"torch.nn.utils.parametrize.remove_parametrizations(module, {next(iter(mod.parametrizations))!r}))")
    for cls, hint in _HINTS.items():
        if isinstance(mod, cls):
            return hint
    names = supported_modules()
    close = difflib.get_close_matches(type(mod).__name__, names, n=2, cutoff=0.6)
    if close:
        return f" (no rule for it; the closest supported: {', '.join(close)})"
    if type(mod).__module__.startswith("torch.nn"):
        return " (no conversion rule for this layer; write one, see CONTRIBUTING.md)"
    return ""


class _Proxy(fx.Proxy):
    """A traced value that records ``x += y`` as the in-place ``operator.iadd`` (``fx.Proxy`` falls back to ``x = x + y``,
    which loses that every other name of ``x`` sees the sum too; see :func:`_inplace_writes`)."""

    def _inplace(self, op, other):
        if not _tensor_like(self.node):  # a size (n += 1) rebinds a number: record it as n = n + 1
            return getattr(operator, op.__name__.replace("i", "", 1))(self, other)
        return self.tracer.create_proxy("call_function", op, (self, other), {})

    def __iadd__(self, other):
        return self._inplace(operator.iadd, other)

    def __isub__(self, other):
        return self._inplace(operator.isub, other)

    def __imul__(self, other):
        return self._inplace(operator.imul, other)

    def __itruediv__(self, other):
        return self._inplace(operator.itruediv, other)


class _Tracer(fx.Tracer):
    """fx tracer whose leaves are the modules we have rules for (plus torch.nn built-ins, which then
    fail with a clear message if no rule exists); records which module was being traced on failure."""

    def __init__(self) -> None:
        # no autowrapping of `math` functions: we never need it, and patching costs most of a trace
        super().__init__(autowrap_modules=(), autowrap_functions=())
        self.failed_at: tuple[str, nn.Module] | None = None

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if redefined_on_instance(m):  # m.forward = ..., forward hooks: what it computes is in them, trace it
            return False
        if find_module_rule(m) is not None or type(m) in A.MODULE_ACTIVATIONS:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = (self.path_of_module(m), m)
            raise


def _sequential_graph(model: nn.Module, tracer: _Tracer) -> fx.Graph | None:
    """The dataflow of a (nested) ``nn.Sequential`` of leaf modules, read off its structure.

    A Sequential's forward is by definition the chain of its children, so this is the graph
    ``torch.fx`` would record, without the cost of patching torch for a symbolic run. Returns ``None``
    when a child needs a real trace.
    """
    chain: list[str] = []

    def walk(m: nn.Module, prefix: str) -> bool:
        for name, child in m._modules.items():
            path = f"{prefix}{name}"
            if type(child) is nn.Sequential and not redefined_on_instance(child):  # hooks: a real trace
                if not walk(child, path + "."):
                    return False
            elif child is not None and tracer.is_leaf_module(child, path):
                chain.append(path)
            else:
                return False
        return True

    if type(model) is not nn.Sequential or not walk(model, ""):
        return None
    graph = fx.Graph()
    x = graph.placeholder("input")
    for path in chain:
        x = graph.call_module(path, (x,))
    graph.output(x)
    return graph


class _ShapeProxy(_Proxy, MetaProxy):
    """A traced value that knows its shape (a meta tensor of the example input's run): ``x.shape``, ``x.size(d)``
    and ``x.dim()`` are numbers, so Python arithmetic and branches on sizes run; its values stay unknown."""

    def size(self, dim: int | None = None) -> Any:
        meta = getattr(self, "_tensor_meta", None)
        if meta is None:
            return self.tracer.create_proxy("call_method", "size", (self,) if dim is None else (self, dim), {})
        return meta.size() if dim is None else meta.size(dim)

    @property
    def ndim(self) -> Any:
        meta = getattr(self, "_tensor_meta", None)
        return self.dim() if meta is None else meta.dim()


class _ShapeTracer(_Tracer, MetaTracer):
    """:class:`_Tracer` specialised to the example input's sizes (``torch.fx``'s meta tracing): used when a forward
    computes with or branches on sizes (``math.ceil(ih / stride)`` of TF "same" padding, ``if H % window``)."""

    proxy_buffer_attributes = True  # buffers read in forward (F.batch_norm's statistics) get sizes too

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ShapeProxy(node, self)

    def path_of_module(self, mod: nn.Module) -> str:
        return fx.Tracer.path_of_module(self, mod)  # never adds a module to the user's model

    def call_module(self, m: nn.Module, forward, args, kwargs):
        if self.is_leaf_module(m, self.path_of_module(m)):  # its output's sizes: from a meta copy of it
            if m not in self._meta_copies:
                self._meta_copies[m] = copy.deepcopy(m).to("meta")
            forward = self._meta_copies[m].forward
        return super().call_module(m, forward, args, kwargs)

    def trace(self, root, meta_args, concrete_args=None):
        self._meta_copies: dict[nn.Module, nn.Module] = {}
        try:
            return super().trace(root, meta_args, concrete_args)
        finally:
            self._meta_copies.clear()


def fx_trace(model: nn.Module, example_input: Any = None) -> tuple[fx.Graph, bool]:
    """The dataflow of ``model`` as an fx graph, and whether it holds the input's sizes. Traced symbolically (for
    any input size); a forward that computes with sizes in Python is traced again with ``example_input``'s sizes
    as numbers, which the graph then holds (the converted graph is that input size's; ``trace_module`` checks it
    reproduces the forward there and records the sizes on the input neurons)."""
    if redefined_on_instance(model):  # torch.fx traces type(model).forward, without the instance's forward or hooks
        raise UnsupportedModuleError(
            f"<root> ({_type_name(type(model))}) has a forward set on the instance or forward hooks, which may change "
            "what it computes and which tracing its class's forward would drop: remove them, or convert a module "
            "that calls it, e.g. to_neural_graph(nn.Sequential(model)) (its hooks are then traced)")
    tracer = _Tracer()
    graph = _sequential_graph(model, tracer)
    if graph is not None:
        return graph, False
    if find_module_rule(model) is not None:  # its rule converts calls of it, never its own forward
        raise UnsupportedModuleError(
            f"<root> ({_type_name(type(model))}) is a single layer: convert a module that calls it, e.g. "
            f"to_neural_graph(nn.Sequential(layer)) for a one-input layer")
    constants, sized = _constant_defaults(model), False
    try:
        with _containers_kept(model):
            graph = tracer.trace(model, concrete_args=constants)
    except Exception as err:  # noqa: BLE001 - re-raised with the culprit named
        graph, again = _shape_trace(model, example_input, constants)
        if graph is None:
            path, mod = tracer.failed_at or ("<root>", model)
            raise UnsupportedModuleError(
                f"{path or '<root>'} ({_type_name(type(mod))}) cannot be traced by torch.fx: "
                f"{type(err).__name__}: {err}. Write its forward without control flow on tensor values, "
                f"or register a leaf rule for it (see CONTRIBUTING.md)"
                + ("; if it only computes with input sizes, pass example_input=..." if example_input is None
                   else f"; traced again at example_input's sizes it failed too: {again}") + "."
            ) from err
        sized = True
    if constants:  # fx keeps a placeholder per constant argument: put the constant into its users instead
        holders = [n for n in graph.nodes if n.op == "placeholder"]
        names = list(inspect.signature(model.forward).parameters)
        for name, ph in zip(names, holders):
            if name in constants:
                for user in list(ph.users):
                    user.args = fx.node.map_arg(user.args, lambda n, ph=ph, v=constants[name]: v if n is ph else n)
                    user.kwargs = fx.node.map_arg(user.kwargs,
                                                  lambda n, ph=ph, v=constants[name]: v if n is ph else n)
                graph.erase_node(ph)
    return graph, sized


@contextlib.contextmanager
def _containers_kept(model: nn.Module):
    """Trace without leaving traces: a forward that fills a cache on its module (timm's eval-mode attention bias
    cache keyed by ``str(x.device)``) would store proxies in the user's model, and a second trace would read them
    back. The dicts, lists and sets in the modules' attributes get their contents back afterwards."""
    kept = [(v, list(v.items()) if isinstance(v, dict) else list(v)) for m in model.modules()
            for k, v in vars(m).items() if not k.startswith("_") and type(v) in (dict, list, set)]
    try:
        yield
    finally:
        for v, items in kept:
            v.clear()
            if isinstance(v, dict):
                v.update(items)
            elif isinstance(v, list):
                v.extend(items)
            else:
                v.update(items)


def _shape_trace(model: nn.Module, example_input: Any,
                 constants: dict[str, Any] | None) -> tuple[fx.Graph | None, str | None]:
    """``model`` traced with ``example_input``'s sizes as numbers (:class:`_ShapeTracer`); ``(None, why)`` if there
    is no example input (of tensors) or this fails too (a branch on tensor values, an unsupported construct)."""
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if example_input is None or not all(isinstance(t, Tensor) and t.dim() > 0 for t in inputs):
        return None, "example_input is not one or more tensors with a batch dim"
    names = [n for n in inspect.signature(model.forward).parameters if n not in (constants or {})]
    if len(names) < len(inputs):
        return None, f"forward takes fewer arguments than the {len(inputs)} example inputs"

    def trace(batch: int) -> fx.Graph:
        meta = {n: t.new_empty((batch, *t.shape[1:]), device="meta") for n, t in zip(names, inputs)}
        with warnings.catch_warnings(), _containers_kept(model):
            warnings.simplefilter("ignore")  # "could not compute metadata": that value's sizes stay symbolic
            return _ShapeTracer().trace(model, meta, concrete_args=constants)

    batch = inputs[0].shape[0]
    try:
        graph = trace(batch)
        # the graph is for these sizes; it must not depend on the batch size, which a graph does not record
        others = [(b, trace(b)) for b in (1, 2 * batch + 3) if b != batch]
    except Exception as err:  # noqa: BLE001 - reported with the symbolic trace's error, which names the culprit
        return None, f"{type(err).__name__}: {err}"
    for b, other in others:
        differs = _first_difference(graph, other, batch, b)
        if differs is not None:
            raise UnsupportedModuleError(
                f"{_where(differs, model)}: its forward computes with input sizes and its dataflow depends on the "
                f"batch size (traced at batch {batch} and {b}, it differs at {differs.name}); a neural graph "
                "computes each sample alone, so it cannot represent that")
    shapes = ", ".join(str(tuple(t.shape[1:])) for t in inputs)
    warnings.warn(f"{type(model).__name__}'s forward computes with its input's sizes (symbolic tracing failed), so it "
                  f"was traced at example_input's sizes {shapes} (any batch size): the graph computes the module "
                  "for inputs of these sizes only", stacklevel=6)
    return graph, None


def _first_difference(g1: fx.Graph, g2: fx.Graph, b1: int, b2: int) -> fx.Node | None:
    """The first operation of ``g1`` where two traces of one forward at batch sizes ``b1`` / ``b2`` differ (other
    than in the batch size itself), ``None`` if they do not."""
    def same(u, v) -> bool:
        if isinstance(u, fx.Node) or isinstance(v, fx.Node):
            return isinstance(u, fx.Node) and isinstance(v, fx.Node) and u.name == v.name
        if isinstance(u, (tuple, list)) and isinstance(v, (tuple, list)):
            return type(u) is type(v) and len(u) == len(v) and all(same(a, b) for a, b in zip(u, v))
        if isinstance(u, dict) and isinstance(v, dict):
            return u.keys() == v.keys() and all(same(u[k], v[k]) for k in u)
        if isinstance(u, slice) and isinstance(v, slice):
            return same((u.start, u.stop, u.step), (v.start, v.stop, v.step))
        if isinstance(u, Tensor) or isinstance(v, Tensor):
            return isinstance(u, Tensor) and isinstance(v, Tensor) and u.shape == v.shape and torch.equal(u, v)
        return (type(u) is int and type(v) is int and (u, v) == (b1, b2)) or (type(u) is type(v) and u == v)

    n1, n2 = list(g1.nodes), list(g2.nodes)
    for a, b in zip(n1, n2):
        if a.op != b.op or a.target != b.target or not same((a.args, a.kwargs), (b.args, b.kwargs)):
            return a
    return None if len(n1) == len(n2) else max(n1, n2, key=len)[min(len(n1), len(n2))]


def _where(node: fx.Node, root: nn.Module) -> str:
    """``path (type)`` of the module a traced node belongs to (the innermost on its module stack), for messages."""
    if node.op == "call_module":
        return f"{node.target} ({_type_name(type(root.get_submodule(node.target)))})"
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, (_, cls) = list(stack.items())[-1]
        return f"{path} ({cls if isinstance(cls, str) else _type_name(cls)})"
    return f"<root> ({_type_name(type(root))})"


def _constant_defaults(model: nn.Module) -> dict[str, Any] | None:
    """Arguments of ``model.forward`` after the first that default to a constant (``attn_mask=None``,
    ``is_causal=False``): traced as those constants, so that ``if attn_mask is not None`` takes the branch the
    default call takes, as converting the model with its input alone means."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    out = {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
           and p.default is not p.empty and (p.default is None or isinstance(p.default, (bool, int, float, str)))}
    return out or None


class TraceContext:
    """Everything a rule may use: the builder, the traced module, and helpers that resolve inputs."""

    def __init__(self, root: nn.Module, builder: GraphBuilder):
        self.root = root
        self.builder = builder
        self.config = builder.config
        self.tokens = False  # values are token sequences [B, T, C] (set by the attention pass)

    # ---------------------------------------------------------------------------------- naming
    def module(self, node: fx.Node) -> nn.Module:
        return self.root.get_submodule(node.target)

    def param(self, node: fx.Node, name: str) -> str | None:
        """Qualified name of a module node's parameter (``None`` if the module has none by that name)."""
        mod = self.module(node)
        p = getattr(mod, name, None)
        if not isinstance(p, nn.Parameter):
            return None
        qual = f"{node.target}.{name}"
        self.builder.register_param(qual, tuple(p.shape))
        return qual

    def buffer(self, node: fx.Node, name: str) -> str:
        """Qualified name of a module node's buffer (gathered into the graph like a parameter)."""
        buf = getattr(self.module(node), name)
        qual = f"{node.target}.{name}"
        self.builder.register_param(qual, tuple(buf.shape))
        return qual

    def where(self, node: fx.Node) -> str:
        """``path (type)`` of the module a node belongs to, for error messages."""
        return _where(node, self.root)

    def unsupported(self, node: fx.Node, why: str) -> UnsupportedModuleError:
        return UnsupportedModuleError(f"{self.where(node)}: {why}{self._traced_subclass(node)}")

    def _traced_subclass(self, node: fx.Node) -> str:
        """Why an operation inside a subclass of a supported layer was traced at all (its rule does not apply)."""
        stack = node.meta.get("nn_module_stack") or {}
        for path in reversed(list(stack)):
            try:
                base = overridden_rule(self.root.get_submodule(path))
            except AttributeError:
                continue
            if base is not None:
                how = "has its own forward or forward hooks" if redefined_on_instance(self.root.get_submodule(path)) \
                    else f"is a subclass of {_type_name(base)} that redefines its computation"
                return f" ({path} {how}, so the {base.__name__} rule does not apply and its forward was traced)"
        return ""

    def attribute(self, node: fx.Node) -> Param:
        """A parameter / buffer read in forward (``get_attr``)."""
        try:
            t = self.root.get_parameter(node.target)
        except AttributeError:
            try:
                t = self.root.get_buffer(node.target)
            except AttributeError:
                what = ("a tensor created in forward (torch.tensor(...))" if str(node.target).startswith(
                    "_tensor_constant") else f"the plain tensor attribute {node.target!r}")
                raise self.unsupported(node, f"reads {what}, which is neither a parameter nor a buffer of the model; "
                                             "only those can be represented (register it: "
                                             "self.register_buffer(name, tensor))") from None
        self.builder.register_param(node.target, tuple(t.shape))
        return Param(node.target, tuple(t.shape))

    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    # ---------------------------------------------------------------------------------- inputs
    def as_features(self, node: fx.Node, v: Val, n: int) -> Tensor:
        """Nodes feeding ``n`` features (a Linear's input), resolving inputs and flattened maps."""
        self._require_value(node, v)
        b = self.builder
        if v.kind == "input":
            v.nodes, v.kind = b.add_inputs(n), "vec"
            return v.nodes
        if v.kind == "map":
            raise self.unsupported(node, "a Linear layer applied to the last spatial dim of a feature map "
                                         "is not supported; flatten or pool the map first")
        if v.channels == n:
            return v.nodes
        if v.kind != "flat" or n % v.channels:
            raise self.unsupported(node, f"expects {n} input features but receives {v.channels} neurons")
        positions = n // v.channels
        if v.positions is not None and v.positions != positions:
            raise self.unsupported(node, f"flattened map has {v.positions} positions but the layer expects "
                                         f"{positions}")
        if self.config.flatten == "repeat":
            copies = b.replicate(v.nodes, positions)
            b.record_features(v.name, copies)
            return copies
        virt = b.add_nodes(v.channels * positions, b.next_layer(v.nodes), role="virtual")
        b.spatial[virt[0]:virt[-1] + 1] = [1 + p for _ in range(v.channels) for p in range(positions)]
        b.add_identity_edges(v.nodes.repeat_interleave(positions), virt, "flatten")
        b.record_features(v.name, virt)
        return virt

    def _require_value(self, node: fx.Node, v: Any) -> None:
        if isinstance(v, Param):
            raise self.unsupported(node, f"its input is the parameter {v.name!r} (a learned query or latent token "
                                         "projected in forward, e.g. attention pooling with a latent query, timm "
                                         "AttentionPoolLatent / global_pool='map'), not a neuron value; a layer of a "
                                         "neural graph reads neurons")

    def as_map(self, node: fx.Node, v: Val, channels: int, sdims: int) -> Tensor:
        """Nodes of a ``channels``-channel feature map (a conv's input)."""
        self._require_value(node, v)
        if v.kind == "input":
            v.nodes, v.kind, v.sdims = self.builder.add_inputs(channels), "map", sdims
        elif v.kind != "map":
            raise self.unsupported(node, f"a {sdims}-d convolution needs a feature map input, got {v.kind} "
                                         "features")
        if v.channels != channels:
            raise self.unsupported(node, f"expects {channels} input channels but receives {v.channels}")
        return v.nodes

    def materialize(self, node: fx.Node, arg: fx.Node, v: Val) -> Val:
        """Give an untouched input its nodes from the traced shape (needs ``example_input``)."""
        if v.kind != "input":
            return v
        shape = self.shape(arg)
        if shape is None:
            raise self.unsupported(node, "uses the model input before any layer fixes its size; pass "
                                         "example_input=... to to_neural_graph")
        kind = "vec" if len(shape) == 2 else "map"
        v.nodes, v.kind, v.sdims = self.builder.add_inputs(shape[1]), kind, max(len(shape) - 2, 0)
        return v


def _dim_arg(args: tuple, kwargs: dict) -> Any:
    """The ``dim`` of an activation call ``fn(x, dim, ...)`` (softmax); ``None`` if not given."""
    return kwargs.get("dim", args[1] if len(args) > 1 else None)


def _flatten_args(args: Any) -> list[Any]:
    out: list[Any] = []
    fx.node.map_aggregate(args, out.append)
    return out


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, (Val, Sym, Param, fx.Node))


def trace_module(model: nn.Module, example_input: Any, config: ConvertConfig,
                 for_graph: bool = True) -> GraphBuilder:
    """Trace ``model`` and run every rule; returns the filled :class:`GraphBuilder`. ``for_graph``: a graph will be
    built from it (its ``edge_attr`` counts in the memory check); ``False`` for a plan that only reads graphs
    back."""
    graph, sized = fx_trace(model, example_input)
    if example_input is not None:
        inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
        training = any(m.training for m in model.modules())
        # a training-mode forward updates buffers (BatchNorm's running statistics): keep the model as it was
        buffers = {k: b.clone() for k, b in model.named_buffers()} if training else {}
        try:
            with torch.no_grad():
                traced = _ShapeProp(fx.GraphModule(model, graph)).propagate(*_copies(inputs))
        except Exception as err:  # noqa: BLE001 - the user's input does not fit the model
            raise ValueError(f"running the model on example_input failed ({type(err).__name__}: {err}); "
                             "pass an input of the shape the model expects") from err
        finally:
            with torch.no_grad():
                for k, b in buffers.items():
                    model.get_buffer(k).copy_(b)
        if not training:  # in training mode the forward may be random (dropout): nothing to compare
            _check_trace(model, inputs, traced)
    builder = GraphBuilder(config, for_graph=for_graph)
    builder.fx_graph = graph
    ctx = TraceContext(model, builder)
    _inplace_writes(ctx, graph)
    for graph_pass in GRAPH_PASSES:  # patterns spanning several operations claim their nodes
        graph_pass(ctx, graph)
    env: dict[fx.Node, Any] = {}
    for node in graph.nodes:
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        # this operation reads its inputs now: release their pending reads
        for inp in node.all_input_nodes:
            v = env[inp]
            if isinstance(v, Val) and v.nodes is not None:
                builder.add_pending(_reads(node, v, ctx.shape(inp)), -1)
        if node.op == "placeholder":
            result: Any = Val(None, "input", name=node.name)
        elif node.op == "get_attr":
            result = ctx.attribute(node)
        elif node.op == "output":
            for v in _flatten_args(args):
                if isinstance(v, Val):
                    v = ctx.materialize(node, node.all_input_nodes[0], v)
                    builder.mark_outputs(v.nodes)
            break
        else:
            try:
                result = _call(ctx, node, args, kwargs)
            except FieldRangeError as err:  # a geometry the format's compact integer fields cannot hold
                raise ctx.unsupported(node, str(err)) from None
            if isinstance(result, Val):
                if result.name is not None:  # a rule handed back an existing value: keep that one intact
                    result = dataclasses.replace(result)
                result.name = node.name
                builder.record_value(result)
        if isinstance(result, Val):
            shape = ctx.shape(node)
            if shape is not None and result.kind == "map" and len(shape) > 2:
                result.positions = math.prod(shape[2:])
            if result.nodes is not None:
                for user in node.users:
                    builder.add_pending(_reads(user, result, shape), 1)
        env[node] = result
    # input neurons hold the model inputs themselves (whatever later operations did to them)
    for node in graph.nodes:
        if node.op == "placeholder" and isinstance(env.get(node), Val):
            builder.record_value(env[node], force=True)
            if sized:  # the graph is for this input's sizes: the executor refuses others
                _record_input_size(ctx, node, env[node])
    return builder


def _record_input_size(ctx: TraceContext, node: fx.Node, v: Val) -> None:
    """Hold the spatial size of a graph input traced at ``example_input``'s sizes on its input neurons:
    ``node_window``'s kernel columns (right-aligned), stride columns 0 (input neurons never pool;
    :func:`~neuralgraph.execute` reads it)."""
    shape = ctx.shape(node)
    if v.nodes is None or shape is None or v.kind not in ("map", "vec") or len(shape) < 3:
        return  # features [B, C] have no size to hold; embedding indices are looked up per token
    size = shape[2:] if v.kind == "map" else shape[1:-1]
    b = ctx.builder
    if len(size) > b.dims:
        return  # the rules refused such an input already
    default = b.default_window()
    window = (1,) * (b.dims - len(size)) + tuple(size) + (0,) * b.dims + default[2 * b.dims:]
    try:
        compact_field("node_window", window, "the input's size")
    except FieldRangeError as err:
        raise ctx.unsupported(node, str(err)) from None
    for i in v.nodes.tolist():
        b.window[i] = window


#: operations whose result shares the memory of their first argument (an in-place write to one changes the other)
_VIEW_METHODS = {"view", "view_as", "reshape", "reshape_as", "permute", "transpose", "swapaxes", "swapdims", "flatten",
                 "unflatten", "squeeze", "unsqueeze", "expand", "expand_as", "contiguous", "chunk", "split", "unbind",
                 "narrow", "select", "movedim", "t", "detach", "to", "float", "type_as"}
_VIEW_FUNCTIONS = {operator.getitem, torch.reshape, torch.flatten, torch.permute, torch.transpose, torch.squeeze,
                   torch.unsqueeze, torch.chunk, torch.split, torch.unbind, torch.narrow, torch.select, torch.movedim,
                   torch.swapaxes, torch.swapdims}
_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _mutated(ctx: TraceContext, node: fx.Node) -> fx.Node | None:
    """The tensor an operation writes in place (``nn.ReLU(inplace=True)``, ``F.relu(x, inplace=True)``, ``x.add_(y)``,
    ``x += y`` on a tensor), else ``None``."""
    first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if first is None:
        return None
    if node.op == "call_module":
        return first if getattr(ctx.module(node), "inplace", False) is True else None
    if node.op == "call_method":
        name = str(node.target)
        return first if name.endswith("_") and not name.startswith("_") else None
    if node.op != "call_function":
        return None
    if node.target in _INPLACE_OPERATORS:  # x += y writes into a tensor x, but rebinds a number
        return first if _tensor_like(first) else None
    if getattr(node.target, "__name__", "").endswith("_") and not node.target.__name__.startswith("_"):
        return first  # torch.relu_(x), F.relu_(x)
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):
        return None
    return first if bound.arguments.get("inplace") is True else None


class _ShapeProp(ShapeProp):
    """``ShapeProp`` calling functions with plain lists and dicts: the fx interpreter hands over its immutable
    containers, which a wrapped function that edits its list argument (torchvision's video Swin clips its window
    size in place) cannot take, though the eager forward can."""

    def call_function(self, target, args, kwargs):
        return super().call_function(target, _mutable(args), _mutable(kwargs))


def _mutable(v: Any) -> Any:
    if isinstance(v, list) and type(v) in (list, immutable_list):
        return [_mutable(x) for x in v]
    if isinstance(v, dict) and type(v) in (dict, immutable_dict):
        return {k: _mutable(x) for k, x in v.items()}
    if type(v) is tuple:
        return tuple(_mutable(x) for x in v)
    return v


def _copies(inputs: tuple) -> tuple:
    """The example inputs, cloned (a forward that writes into its input must not change them for the next run)."""
    return tuple(x.clone() if isinstance(x, Tensor) else x for x in inputs)


def _check_trace(model: nn.Module, inputs: tuple, traced: Any) -> None:
    """The traced dataflow must compute what the module's forward computes on ``example_input``; a forward doing
    something ``torch.fx`` does not record (state kept between calls, a write into memory another name holds
    that tracing cannot see) would otherwise give a graph of another function."""
    with torch.no_grad():
        eager = model(*_copies(inputs))
    got = [t for t in torch.utils._pytree.tree_leaves(traced) if isinstance(t, Tensor)]
    want = [t for t in torch.utils._pytree.tree_leaves(eager) if isinstance(t, Tensor)]
    for a, b in zip(got, want):
        scale = float(b.abs().nan_to_num(0.0, 0.0, 0.0).max()) if b.numel() and b.is_floating_point() else 0.0
        # loose: the same operations run twice (a device may pick other kernels); what it catches differs by O(1)
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-3, atol=1e-3 * scale, equal_nan=True):
            diff = f"shapes {tuple(a.shape)} / {tuple(b.shape)}" if a.shape != b.shape else \
                f"max difference {float((a - b).abs().max()):.3g}"
            raise UnsupportedModuleError(
                f"<root> ({_type_name(type(model))}): its dataflow traced by torch.fx computes another result than "
                f"its forward on example_input ({diff}): the forward does something tracing does not record (state "
                "kept between calls, data-dependent Python control flow, a write into memory that another name "
                "holds). A graph of the traced dataflow would compute a different function; rewrite that part "
                "of the forward")
    if len(got) != len(want):
        raise UnsupportedModuleError(f"<root> ({_type_name(type(model))}): its traced dataflow returns {len(got)} "
                                     f"tensors, its forward {len(want)} on example_input")


_NUMBER_METHODS = {"size", "dim", "numel", "item", "tolist", "stride", "element_size", "nelement"}


def _tensor_like(node: fx.Node) -> bool:
    """Whether ``node`` holds a tensor (not a size or a number): the type ShapeProp recorded (with
    ``example_input``), else judged from the operations that produced it."""
    kind = node.meta.get("type")
    if isinstance(kind, type):
        return issubclass(kind, Tensor)
    if node.op in ("placeholder", "call_module", "get_attr"):
        return True
    if node.op == "call_method":
        return node.target not in _NUMBER_METHODS and isinstance(node.args[0], fx.Node) and _tensor_like(node.args[0])
    if node.target is getattr:
        return False
    if str(getattr(node.target, "__module__", "")).startswith("torch"):
        return True
    args = node.args[:1] if node.target is operator.getitem else node.args
    return any(isinstance(a, fx.Node) and _tensor_like(a) for a in args)


def _is_view(ctx: TraceContext, node: fx.Node) -> bool:
    """Whether ``node``'s result may share the memory of its first argument (a view, or a module that returns
    its input: ``nn.Identity``, dropout in eval mode)."""
    if node.op == "call_module":
        return isinstance(ctx.module(node), (nn.Identity, nn.modules.dropout._DropoutNd))
    return (node.op == "call_method" and node.target in _VIEW_METHODS) or (
        node.op == "call_function" and node.target in _VIEW_FUNCTIONS)


def _inplace_writes(ctx: TraceContext, graph: fx.Graph) -> None:
    """Make in-place writes explicit in the dataflow: ``torch.fx`` records ``relu(h, inplace=True)`` as a new node,
    but every later reader of ``h`` reads the written value. Those readers are pointed at the writing node, so
    ``y = relu_(h); z = h + 1`` converts as ``z = relu(h) + 1``, as torch computes it. A write into a view of a
    tensor that is read again elsewhere (through another alias: ``x[:, :2].relu_()``, then ``x``) is refused."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        target = _mutated(ctx, node)
        if target is None:
            continue
        later = [u for u in target.users if order[u] > order[node]]
        # other names of the written memory: the tensors target is a view of, and the views taken of them before
        aliases, stack = set(), [target]
        while stack:
            n = stack.pop()
            near = ([n.args[0]] if _is_view(ctx, n) and n.args and isinstance(n.args[0], fx.Node) else []) + \
                [u for u in n.users if _is_view(ctx, u) and order[u] < order[node]]
            for m in near:
                if m is not target and m not in aliases:
                    aliases.add(m)
                    stack.append(m)
        for alias in aliases:
            readers = [u for u in alias.users if order[u] > order[node] and u not in aliases]
            if readers:
                raise ctx.unsupported(node, f"writes in place into {target.name}, which may share its memory with "
                                            f"{alias.name} (a view; reshape / flatten copy only a non-contiguous "
                                            f"input, which the trace cannot tell), read again by {readers[0].name}; "
                                            "the graph records values, not memory: write it out of place "
                                            "(inplace=False, x = x + y)")
        for user in later:
            user.args = fx.node.map_arg(user.args, lambda n: node if n is target else n)
            user.kwargs = fx.node.map_arg(user.kwargs, lambda n: node if n is target else n)


def _reads(user: fx.Node, v: Val, shape: Sequence | None) -> Tensor:
    """The neurons of ``v`` (of tensor shape ``shape``, if known) that ``user`` reads: a channel slice reads only
    its channels."""
    if user.op == "call_function" and user.target is operator.getitem and len(user.args) == 2:
        sel = channel_slice(user.args[1], v.kind, None if shape is None else len(shape))
        if sel is not None:
            return v.nodes[sel]
    return v.nodes


#: operations that draw random numbers (a refusal says to convert in eval mode) and reductions (never element-wise)
_RANDOM_OPS = {"new_empty", "bernoulli", "bernoulli_", "rand", "rand_like", "randn", "randn_like", "randint",
               "uniform_", "normal_", "dropout", "native_dropout"}
_REDUCTIONS = {"sum", "prod", "var", "std", "var_mean", "std_mean", "norm", "logsumexp", "cumsum", "cumprod", "median",
               "argmax", "argmin", "max", "min", "amax", "amin", "mean", "all", "any"}


def _refuse_hooked_parts(ctx, node, mod: nn.Module) -> None:
    """A module a rule converts as a whole (a leaf of the trace) whose submodule has forward (pre-)hooks or a
    ``forward`` set on the instance is refused by name: the module's forward may run them, and the rule reads its parts
    (their parameters and attributes), not their calls, so it would drop them (Swin's bias MLP, MaxViT's to_qkv)."""
    for name, sub in mod.named_modules():
        if name and redefined_on_instance(sub):
            raise UnsupportedModuleError(
                f"{node.target}.{name} ({_type_name(type(sub))}): has forward hooks or a forward set on the instance, "
                f"which the forward of {node.target} ({_type_name(type(mod))}) may run; that module converts by its "
                "rule, which reads its parts, not their calls, and would drop them: remove the hooks (or convert "
                "without them and apply them to the graph's function)")


def _call(ctx: TraceContext, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    claimed = node.meta.get(CLAIM)
    if claimed is not None:  # part of a pattern a graph pass matched (e.g. hand-written attention)
        return claimed(ctx, node, *args, **kwargs)
    flat = _flatten_args((args, kwargs))
    handed = next((a for a in flat if isinstance(a, HandedOn)), None)
    if handed is not None:  # a rule's result for one other function's rule (Swin's relative position bias)
        op = getattr(node.target, "__qualname__", str(node.target))
        if node.op != "call_function" or f"{getattr(node.target, '__module__', '')}.{op}" != handed.reader:
            raise ctx.unsupported(node, f"{node.op} {op!r} reads a {type(handed).__name__}, which only "
                                        f"{handed.reader} can read (as the module it comes from calls it)")
    has_val = any(isinstance(a, Val) for a in flat)
    params = [a for a in flat if isinstance(a, Param)]
    if params and not has_val:
        rule = find_function_rule(node.target) if node.op == "call_function" else None
        if rule is not None and getattr(rule, "params_only", False):
            return rule(ctx, node, *args, **kwargs)
        return _param_view(ctx, node, args, kwargs, params[0])
    if node.op == "call_module":
        mod = ctx.module(node)
        rule = find_module_rule(mod)
        if rule is None and type(mod) in A.MODULE_ACTIVATIONS:
            name, values = A.module_activation(A.MODULE_ACTIVATIONS[type(mod)], mod)
            return activation(ctx, node, args[0], name, getattr(mod, "dim", None), values)
        if rule is None:
            raise UnsupportedModuleError(f"{node.target} ({_type_name(type(mod))}) is not supported{_hint(mod)}; "
                                         f"supported modules: {SUPPORTED_SUMMARY} (all: "
                                         "neuralgraph.convert.trace.supported_modules())")
        _check_params(ctx, node, rule, params)
        _refuse_hooked_parts(ctx, node, mod)
        return rule(ctx, node, *args, **kwargs)
    if node.op == "call_function":
        rule = find_function_rule(node.target)
        if rule is None and node.target in A.FUNCTION_ACTIVATIONS and has_val:
            name, values = A.call_activation(A.FUNCTION_ACTIVATIONS[node.target], args[1:], kwargs)
            return activation(ctx, node, args[0], name, _dim_arg(args, kwargs), values)
    else:  # call_method
        rule = METHOD_RULES.get(node.target)
        if rule is None and node.target in A.METHOD_ACTIVATIONS and has_val:
            name, values = A.call_activation(A.METHOD_ACTIVATIONS[node.target], args[1:], kwargs)
            return activation(ctx, node, args[0], name, _dim_arg(args, kwargs), values)
    if rule is not None and has_val:
        _check_params(ctx, node, rule, params)
        return rule(ctx, node, *args, **kwargs)
    _check_params(ctx, node, None, params)
    if not has_val:
        # pure Python / size arithmetic: evaluate when concrete, stay symbolic otherwise
        if all(_is_concrete(a) for a in flat):
            fn = node.target if node.op == "call_function" else getattr(args[0], node.target)
            call_args = args if node.op == "call_function" else args[1:]
            try:
                return fn(*call_args, **kwargs)
            except Exception:  # noqa: BLE001
                return SYM
        return SYM
    name = getattr(node.target, "__name__", str(node.target))
    one_value = isinstance(args[0], Val) and sum(isinstance(a, Val) for a in flat) == 1 if args else False
    if name in _RANDOM_OPS:
        fix = ("It draws random numbers (a stochastic depth / DropPath or dropout in training mode?), which no graph "
               "computes: call model.eval() before converting")
    elif name in _REDUCTIONS:
        fix = "It reduces over a dim of neuron values, which no rule represents there"
    else:
        fix = (f"If it is element-wise, register it: neuralgraph.convert.register_activation({name}, {name!r})"
               if one_value else "It combines several values (or a value inside a container), which no rule represents")
    raise ctx.unsupported(node, f"the operation {name!r} ({node.op}) on neuron values is not supported. "
                                "Supported: layers with rules, element-wise activations, residual "
                                "additions, constant scales, channel slicing/concatenation, token operations, "
                                f"pooling and flattening. {fix}")


_PARAM_USES = ("the weight / bias of F.linear / F.conv*d, a per-channel scale or shift (x * p, x + p with one "
               "value per channel / feature), a token table added to a [B, T, C] sequence (x + pos_embed), a [1, R, C] "
               "class / register token concatenated to one (torch.cat([cls.expand(B, -1, -1), x], 1)), and the "
               "statistics and affine terms of F.batch_norm / F.layer_norm / F.group_norm")


def _check_params(ctx: TraceContext, node: fx.Node, rule, params: list[Param]) -> None:
    if params and not getattr(rule, "takes_params", False):
        op = getattr(node.target, "__name__", str(node.target))
        raise ctx.unsupported(node, f"the operation {op!r} reads parameter {params[0].name!r} (shape "
                                    f"{params[0].shape}) in forward, which it cannot represent; parameters read in "
                                    f"forward convert as {_PARAM_USES}")


#: reshapes of a parameter read in forward that keep its element order (``expand`` is a broadcast)
_PARAM_VIEWS = {"reshape", "view", "unsqueeze", "squeeze", "flatten", "float", "to", "contiguous", "type_as",
                "detach", "clone", "expand", "expand_as"}
_PARAM_VIEW_FUNCTIONS = {torch.reshape: "reshape", torch.unsqueeze: "unsqueeze", torch.squeeze: "squeeze",
                         torch.flatten: "flatten"}


def _param_view(ctx: TraceContext, node: fx.Node, args: tuple, kwargs: dict, p: Param) -> Param:
    """A reshape of a parameter alone (``self.gamma.reshape(1, -1, 1, 1)``): the same elements, a new shape."""
    if node.target is getattr and args[1] in ("shape", "ndim"):
        return torch.Size(p.shape) if args[1] == "shape" else len(p.shape)
    op = node.target if node.op == "call_method" else _PARAM_VIEW_FUNCTIONS.get(node.target)
    if op not in _PARAM_VIEWS or args[0] is not p:
        what = getattr(node.target, "__name__", str(node.target))
        raise ctx.unsupported(node, f"computes {what!r} on parameter {p.name!r} in forward; the graph stores "
                                    f"parameters as they are, so only reshapes of them are supported, used as "
                                    f"{_PARAM_USES}")
    if op in ("expand", "expand_as"):
        return p  # a broadcast: the size-1 dims stay size 1 for the operation that reads it
    if op in ("float", "to", "contiguous", "type_as", "detach", "clone"):
        return p
    rest = args[1:]
    if not all(_is_concrete(a) for a in _flatten_args((rest, kwargs))):
        shape = ctx.shape(node)
        if shape is None:
            raise ctx.unsupported(node, f"reshapes parameter {p.name!r} to a size known only at run time; pass "
                                        "example_input=... to to_neural_graph")
        return Param(p.name, shape)
    return Param(p.name, tuple(getattr(torch.empty(p.shape, device="meta"), op)(*rest, **kwargs).shape))
