"""Hand-written attention: a ``torch.fx`` pattern matcher that proves a block is multi-head attention.

Three ``nn.Linear`` projections, the head split ``.view(B, T, H, d).transpose(1, 2)`` (or one packed projection
``qkv(x).reshape(B, T, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)``, timm's ``Attention``, or a query projection
and a packed key / value one ``kv(x_).reshape(B, -1, 2, H, d)...``, PVT's, whose keys may be fewer tokens),
``F.scaled_dot_product_attention(q, k, v)`` or ``softmax(q @ k.transpose(-2, -1) * scale, -1) @ v``, and the merge
``.transpose(1, 2).reshape(B, T, C)``. Tensor dims are tracked by labels (batch, tokens, heads, head dim,
features) and scalar expressions of sizes (``q.size(-1) ** -0.5``) evaluated, so a block is accepted only if it
provably is this pattern. A match claims its nodes (``node.meta[CLAIM]``); the tracer then builds the attention
with :func:`~neuralgraph.convert.rules.attention.attention_heads`. See :mod:`neuralgraph.convert.rules.attention`.
"""
from __future__ import annotations

import builtins
import math
import operator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from neuralgraph.convert import activations as A
from neuralgraph.convert.builder import Val
from neuralgraph.convert.registry import CLAIM
from neuralgraph.convert.rules.attention import Projection, attention_heads


# ---------------------------------------------------------------- hand-written attention: matching
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def bound_args(node: fx.Node, names: tuple[str, ...]) -> dict[str, Any]:
    """The call's arguments by name (``names``: the callee's positional parameters, in order)."""
    return dict(zip(names, node.args)) | dict(node.kwargs)


_FUNCTION_OPS = {torch.reshape: "view", torch.transpose: "transpose", torch.permute: "permute",
                 operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div",
                 torch.softmax: "softmax", F.softmax: "softmax", operator.matmul: "matmul", torch.matmul: "matmul",
                 F.scaled_dot_product_attention: "sdpa", F.dropout: "dropout", torch.flatten: "flatten",
                 torch.mean: "mean", torch.amax: "amax"}
_METHOD_OPS = {"view": "view", "reshape": "view", "transpose": "transpose", "permute": "permute",
               "contiguous": "id", "mul": "mul", "div": "div", "softmax": "softmax", "matmul": "matmul",
               "flatten": "flatten", "mean": "mean", "amax": "amax"}
_ARITH = {operator.pow: operator.pow, operator.mul: operator.mul, operator.truediv: operator.truediv,
          operator.floordiv: operator.floordiv, operator.add: operator.add, operator.sub: operator.sub}
_SIZE_ATTRS = ("shape", "ndim", "dtype", "device")


def op_kind(ctx, n: Any) -> str | None:
    """What the fx node ``n`` does, in the vocabulary of the matcher (``None``: something else)."""
    if not isinstance(n, fx.Node):
        return None
    if n.op == "call_method":
        return _METHOD_OPS.get(n.target)
    if n.op == "call_function":
        try:
            return _FUNCTION_OPS.get(n.target)
        except TypeError:  # unhashable target
            return None
    if n.op == "call_module":
        mod = ctx.module(n)
        if isinstance(mod, nn.Linear):
            return "linear"
        if isinstance(mod, (nn.modules.dropout._DropoutNd, nn.Identity)):
            return "dropout"
    return None


def _is_sum(n: fx.Node) -> bool:
    """``a + b`` / ``a - b`` in any spelling (operator, torch function, method, in place)."""
    if n.op == "call_method":
        return n.target in ("add", "add_", "sub", "sub_")
    return n.op == "call_function" and n.target in (operator.add, operator.sub, operator.iadd, operator.isub,
                                                     torch.add, torch.sub)


def is_sdpa(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target is F.scaled_dot_product_attention


def is_size_query(n: fx.Node) -> bool:
    """Reads only the size / type of its input, not its values."""
    if n.op == "call_method":
        return n.target in ("size", "dim")
    return n.op == "call_function" and n.target is builtins.getattr and n.args[1] in _SIZE_ATTRS


def _data_users(n: fx.Node) -> list[fx.Node]:
    return [u for u in n.users if not is_size_query(u)]


def _data_arg(ctx, n: fx.Node) -> fx.Node | None:
    """The tensor input of a chain operation (for ``*`` / ``/`` the operand that is not a scalar)."""
    if op_kind(ctx, n) in ("mul", "div"):
        if n.kwargs.get("rounding_mode") is not None:
            return None
        tensors = [a for a in n.args[:2] if isinstance(a, fx.Node) and not _is_scalar_expr(a)]
        if len(tensors) != 1 or (op_kind(ctx, n) == "div" and n.args[0] is not tensors[0]):
            return None
        return tensors[0]
    return n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None


def _is_scalar_expr(n: Any) -> bool:
    """A Python number computed from tensor sizes (``q.size(-1) ** -0.5``)."""
    if not isinstance(n, fx.Node):
        return isinstance(n, (int, float))
    if is_size_query(n):
        return True
    if n.op == "call_function" and (n.target is operator.getitem or n.target in _ARITH):
        return all(_is_scalar_expr(a) or isinstance(a, slice) for a in n.args)
    return False


def _size_ref(n: Any) -> tuple[fx.Node, int] | None:
    """``(tensor, dim)`` if ``n`` is the size of one dim of a tensor (``x.size(1)``, ``x.shape[1]``,
    ``B, T = x.shape[:2]``)."""
    if not isinstance(n, fx.Node):
        return None
    if n.op == "call_method" and n.target == "size":
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        return (n.args[0], dim) if isinstance(dim, int) else None
    if n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[1], int):
        base, k = n.args
        tensor = _shape_of(base)
        if tensor is not None:
            return tensor, k
        if isinstance(base, fx.Node) and base.op == "call_function" and base.target is operator.getitem \
                and isinstance(base.args[1], slice):  # x.shape[a:b][k]
            tensor, sl = _shape_of(base.args[0]), base.args[1]
            if tensor is not None and (sl.start or 0) >= 0 and sl.step in (None, 1) and k >= 0:
                return tensor, (sl.start or 0) + k
    return None


def _shape_of(n: Any) -> fx.Node | None:
    """The tensor whose whole shape ``n`` is (``x.shape``, ``x.size()``)."""
    if not isinstance(n, fx.Node):
        return None
    if n.op == "call_function" and n.target is builtins.getattr and n.args[1] == "shape":
        return n.args[0]
    if n.op == "call_method" and n.target == "size" and len(n.args) == 1 and not n.kwargs:
        return n.args[0]
    return None


def _dim_label(n: Any, labels: dict[fx.Node, tuple]) -> Any:
    """The label of the tensor dim whose size ``n`` is (``-1`` stays ``-1``; ``None``: unknown)."""
    if type(n) is int:
        return -1 if n == -1 else None
    ref = _size_ref(n)
    if ref is None or ref[0] not in labels:
        return None
    lab, i = labels[ref[0]], ref[1]
    if i < 0:  # only tensors of known rank (the 4-d head tensors) can be indexed from the end
        return lab[i] if len(lab) == 4 or (i == -1 and lab[-1] == "F") else None
    return lab[i] if i < len(lab) else None


def _scalar(n: Any, labels: dict[fx.Node, tuple], sizes: dict[str, int]) -> float | None:
    """The value of a scalar expression built from numbers and the sizes of labelled dims."""
    if isinstance(n, bool):
        return None
    if isinstance(n, (int, float)):
        return float(n)
    lab = _dim_label(n, labels)
    if lab is not None:
        return float(sizes[lab]) if lab in sizes else None
    if isinstance(n, fx.Node) and n.op == "call_function" and n.target in _ARITH and not n.kwargs:
        vals = [_scalar(a, labels, sizes) for a in n.args]
        return None if None in vals else float(_ARITH[n.target](*vals))
    return None


_LEADING_MODULES = (nn.Linear, nn.LayerNorm, nn.modules.dropout._DropoutNd, nn.Identity)


def _same_leading(ctx, x: fx.Node) -> set[fx.Node]:
    """Tensors whose first two dims are those of ``x``: ``x`` and what it is computed from by
    operations acting on the last dim only (linear layers, LayerNorm, activations, dropout, additions)."""
    seen: set[fx.Node] = set()
    stack = [x]
    while stack:
        n = stack.pop()
        if not isinstance(n, fx.Node) or n in seen:
            continue
        seen.add(n)
        if n.op == "call_module":
            mod = ctx.module(n)
            if isinstance(mod, _LEADING_MODULES) or type(mod) in A.MODULE_ACTIVATIONS:
                stack.append(n.args[0])
        elif n.op == "call_function" and (n.target in (operator.add, torch.add, F.dropout)
                                          or n.target in A.FUNCTION_ACTIVATIONS):
            stack += [a for a in n.args[:2] if isinstance(a, fx.Node)]
        elif n.op == "call_method" and (n.target in ("contiguous", "clone") or n.target in A.METHOD_ACTIVATIONS):
            stack.append(n.args[0])
    return seen


@dataclass
class _Branch:
    """One projection: its ``nn.Linear`` node and the operations from there to the attention."""

    linear: fx.Node
    chain: list[fx.Node]
    heads: int
    head_dim: int
    scalars: list[fx.Node]  # multiplications / divisions by numbers on the way
    part: int = 0  # which part of a packed projection it is (qkv(x).reshape(B, T, 3, H, d): q, k, v order)


@dataclass
class _Match:
    """A hand-written attention: filled while the tracer walks the claimed nodes."""

    site: fx.Node
    q: _Branch
    k: _Branch
    v: _Branch
    inner: list[fx.Node]  # scores, scaling, softmax, dropout (the softmax(q kᵀ) v form)
    merge: list[fx.Node]  # from the attention output to the merged [B, T, C] value
    packed: list[fx.Node] = field(default_factory=list)  # packed projections' splits, permutes and unbinds
    src: dict[str, Tensor] = field(default_factory=dict)
    held: list[Tensor] = field(default_factory=list)  # projection inputs read at the attention (pending till then)
    heads: Tensor | None = None


def softmax_before(ctx, n: Any) -> fx.Node | None:
    """The softmax node that ``n`` is (after dropout), else ``None``."""
    while op_kind(ctx, n) in ("dropout", "id"):
        n = n.args[0]
    return n if op_kind(ctx, n) == "softmax" else None


def _fail(ctx, site: fx.Node, why: str):
    return ctx.unsupported(site, f"attention at {site.name}: {why}")


def _walk(ctx, site: fx.Node, consumer: fx.Node, start: Any, role: str) -> tuple[fx.Node, list[fx.Node]]:
    """Walk back from ``start`` (read by ``consumer`` as the ``role`` of the attention at ``site``) to its
    ``nn.Linear`` projection: ``(linear node, operations from there to start)``."""
    chain, n = [], start
    while op_kind(ctx, n) != "linear" and _packed_select(ctx, n) is None:
        if op_kind(ctx, n) not in ("view", "transpose", "permute", "id", "dropout", "mul", "div") or \
                _data_arg(ctx, n) is None:
            what = n.name if isinstance(n, fx.Node) else repr(n)
            if isinstance(n, fx.Node) and n.op == "call_module":
                what += f", a {type(ctx.module(n)).__name__}: only nn.Identity may act on q / k"
            elif isinstance(n, fx.Node) and n.target in (F.layer_norm, F.rms_norm, F.group_norm):
                what += ", a normalisation of q / k (timm qk_norm=True), which is not supported"
            raise _fail(ctx, site, f"cannot prove that its {role} ({what}) is a head-split nn.Linear projection "
                                   "(expected linear(x).view(B, T, heads, head_dim).transpose(1, 2), or one third "
                                   "of a packed qkv(x).reshape(B, T, 3, heads, head_dim).permute(2, 0, 3, 1, 4))")
        chain.append(n)
        n = _data_arg(ctx, n)
    chain.reverse()
    for a, b in zip([n] + chain, chain + [consumer]):
        if _data_users(a) != [b]:
            raise _fail(ctx, site, f"{a.name} (on the {role} path) is also used elsewhere; a projection may "
                                   "only feed its attention")
    return n, chain


def _branch(ctx, site: fx.Node, linear: fx.Node, chain: list[fx.Node], role: str, tok: str,
            labels: dict[fx.Node, tuple], batch: set[fx.Node]) -> _Branch:
    """Label the dims from the projection ``linear`` along ``chain``: ``B`` batch, ``tok`` tokens, ``F``
    features, ``H`` heads, ``D`` head dim. ``batch``: tensors whose dim 0 is the batch."""
    width = ctx.module(linear).out_features
    known = {x: ("B", None) for x in batch} | {x: ("B", tok) for x in _same_leading(ctx, linear.args[0])}
    cur = labels[linear] = ("B", tok, "F")
    heads = head_dim = None
    split = 0
    for k, n in enumerate(chain):
        if op_kind(ctx, n) == "view":
            if cur != ("B", tok, "F"):
                raise _fail(ctx, site, f"{n.name} reshapes the {role} projection again after splitting heads")
            heads, head_dim = _head_split(ctx, site, n, linear, width, tok, known | labels)
            cur = labels[n] = ("B", tok, "H", "D")
            split = k + 1
            break
        if op_kind(ctx, n) in ("transpose", "permute"):
            raise _fail(ctx, site, f"{n.name} transposes the {role} projection before its heads are split")
        labels[n] = cur
    if heads is None:
        raise _fail(ctx, site, f"the {role} projection {linear.name} is not split into heads "
                               "(.view(B, T, heads, head_dim))")
    scalars = _label_heads(ctx, site, chain[split:], cur, role, labels)
    return _Branch(linear, chain, heads, head_dim, scalars)


def _label_heads(ctx, site: fx.Node, chain: list[fx.Node], cur: tuple, role: str,
                 labels: dict[fx.Node, tuple]) -> list[fx.Node]:
    """Label ``chain`` (after the head split, whose labels are ``cur``); returns its scalings."""
    scalars = []
    for n in chain:
        kind = op_kind(ctx, n)
        if kind == "view":
            raise _fail(ctx, site, f"{n.name} reshapes the {role} projection again after splitting heads")
        if kind in ("transpose", "permute"):
            cur = _permuted(ctx, site, n, cur)
        elif kind in ("mul", "div"):
            if role == "value":
                raise _fail(ctx, site, f"{n.name} scales the values; only queries and keys may be scaled")
            scalars.append(n)
        labels[n] = cur
    return scalars


def _packed_select(ctx, n: Any) -> tuple[fx.Node, int, fx.Node | None] | None:
    """``(packed tensor, index, unbind node)`` if ``n`` is one part of a packed q / k / v tensor:
    ``t.unbind(0)[i]`` (timm: ``q, k, v = qkv.unbind(0)``) or ``t[i]``; else ``None``."""
    if not (isinstance(n, fx.Node) and n.op == "call_function" and n.target is operator.getitem
            and type(n.args[1]) is int and isinstance(n.args[0], fx.Node)):
        return None
    u = n.args[0]
    if (u.op == "call_method" and u.target == "unbind") or (u.op == "call_function" and u.target is torch.unbind):
        dim = u.args[1] if len(u.args) > 1 else u.kwargs.get("dim", 0)
        return (u.args[0], n.args[1], u) if dim == 0 and isinstance(u.args[0], fx.Node) else None
    if op_kind(ctx, u) in ("view", "transpose", "permute", "id"):
        return u, n.args[1], None
    return None


def _packed_branches(ctx, site: fx.Node, labels: dict[fx.Node, tuple], walks: list, roles) -> tuple[list, list]:
    """The branches of one packed projection split by ``unbind(0)`` (or indexing): ``qkv(x).reshape(B, T, 3, H,
    d).permute(2, 0, 3, 1, 4)`` (query, key and value) or ``kv(x).reshape(B, T, 2, H, d)...`` (key and value),
    and the shared nodes (reshape, permute, unbind, the parts)."""
    selects = [_packed_select(ctx, head) for head, _ in walks]
    if any(sel is None or sel[0] is not selects[0][0] for sel in selects) or \
            sorted(sel[1] for sel in selects) != list(range(len(walks))):
        reads = ", ".join(f"{role} {head.name}" for (head, _), (role, _) in zip(walks, roles))
        raise _fail(ctx, site, "query, key and value must be separate nn.Linear projections or the parts of a "
                               "packed one (qkv(x).reshape(B, T, 3, heads, head_dim).permute(2, 0, 3, 1, 4)"
                               ".unbind(0), or keys and values as kv(x).reshape(B, T, 2, heads, head_dim)...); "
                               f"here {reads} are not the parts of one packed projection")
    t, unbind = selects[0][0], selects[0][2]
    shared, n = [], t
    while op_kind(ctx, n) != "linear":
        if op_kind(ctx, n) not in ("view", "transpose", "permute", "id") or _data_arg(ctx, n) is None:
            raise _fail(ctx, site, f"cannot prove that {n.name} is a packed q / k / v projection "
                                   "(qkv(x).reshape(B, T, 3, heads, head_dim).permute(2, 0, 3, 1, 4))")
        shared.append(n)
        n = _data_arg(ctx, n)
    shared.reverse()
    linear, parts = n, [head for head, _ in walks]
    for a, b in zip([linear] + shared[:-1], shared):
        if _data_users(a) != [b]:
            raise _fail(ctx, site, f"{a.name} (the packed projection) is also used elsewhere")
    if set(_data_users(t)) != ({unbind} if unbind is not None else set(parts)) or (
            unbind is not None and set(_data_users(unbind)) != set(parts)):
        raise _fail(ctx, site, f"the packed projection {t.name} is also used elsewhere")
    width = ctx.module(linear).out_features
    batch = _same_leading(ctx, linear.args[0])
    known = {x: ("B", "T") for x in batch}
    cur = labels[linear] = ("B", "T", "F")
    heads = head_dim = None
    for n in shared:
        if op_kind(ctx, n) == "view":
            if cur != ("B", "T", "F"):
                raise _fail(ctx, site, f"{n.name} reshapes the packed projection again after splitting it")
            heads, head_dim = _packed_split(ctx, site, n, linear, width, len(walks), known | labels)
            cur = ("B", "T", "S", "H", "D")
        elif op_kind(ctx, n) in ("transpose", "permute"):
            if len(cur) != 5:
                raise _fail(ctx, site, f"{n.name} transposes the packed projection before splitting it")
            cur = _permuted(ctx, site, n, cur)
        labels[n] = cur
    if heads is None or cur[0] != "S":
        raise _fail(ctx, site, f"the packed projection {linear.name} is not split into ({len(walks)}, batch, heads, "
                               f"tokens, head_dim): use .reshape(B, T, {len(walks)}, heads, head_dim)"
                               ".permute(2, 0, 3, 1, 4)")
    branches = []
    for (head, chain), sel, (role, tok) in zip(walks, selects, roles):
        lab = tuple(tok if x == "T" else x for x in cur[1:])
        scalars = _label_heads(ctx, site, [head, *chain], lab, role, labels)
        branches.append(_Branch(linear, [head, *chain], heads, head_dim, scalars, part=sel[1]))
    return branches, shared + ([unbind] if unbind is not None else []) + parts


def _packed_split(ctx, site, n: fx.Node, linear: fx.Node, width: int, parts: int,
                  labels: dict[fx.Node, tuple]) -> tuple[int, int]:
    """``(heads, head_dim)`` of ``reshape(B, T, parts, heads, head_dim)``, proving it splits only the feature dim."""
    shape = _shape_args(n)
    if len(shape) != 5 or shape[2] != parts:
        raise _fail(ctx, site, f"{n.name} reshapes the packed projection to {shape}; expected "
                               f".reshape(B, T, {parts}, heads, head_dim)")
    h, d = _posint(shape[3]), _posint(shape[4])
    if h is None and d is not None and (width // parts) % d == 0:
        h = width // parts // d
    if d is None and h is not None and (width // parts) % h == 0:
        d = width // parts // h
    if h is None or d is None or parts * h * d != width:
        raise _fail(ctx, site, f"{n.name} does not split {width} features into {parts} x heads x head_dim")
    lead = (_dim_label(shape[0], labels), _dim_label(shape[1], labels))
    ok = lead == ("B", "T") or lead in (("B", -1), (-1, "T"))
    if not ok:
        si, so = ctx.shape(linear), ctx.shape(n)
        ok = si is not None and so is not None and len(si) == 3 and so == (si[0], si[1], parts, h, d)
    if not ok:
        raise _fail(ctx, site, f"cannot prove that {n.name} splits only the feature dim: read B and T from the "
                               "input (B, T, C = x.shape) or pass example_input=... to to_neural_graph")
    return h, d


def _branches(ctx, site: fx.Node, labels: dict[fx.Node, tuple],
              *reads: tuple[fx.Node, Any]) -> tuple[list[_Branch], list[fx.Node]]:
    """The query, key and value branches, and the nodes packed projections share (their splits); ``reads``:
    (consumer, tensor) of each. Branches read from ``nn.Linear`` projections of their own, or are the parts of
    one packed projection: all three, or the key and value with a separate query."""
    roles = (("query", "Tq"), ("key", "Tk"), ("value", "Tk"))
    walks = [_walk(ctx, site, consumer, start, role) for (consumer, start), (role, _) in zip(reads, roles)]
    own = [i for i, (head, _) in enumerate(walks) if op_kind(ctx, head) == "linear"]
    packed = [i for i in range(3) if i not in own]
    if packed not in ([], [1, 2], [0, 1, 2]):
        which = ", ".join(roles[i][0] for i in packed)
        raise _fail(ctx, site, f"only the {which} come from a packed projection; pack all three (qkv) or the key "
                               "and value (kv), or use separate nn.Linear projections")
    out: list[_Branch | None] = [None] * 3
    shared: list[fx.Node] = []
    if packed:
        branches, shared = _packed_branches(ctx, site, labels, [walks[i] for i in packed], [roles[i] for i in packed])
        for i, br in zip(packed, branches):
            out[i] = br
    batch = set().union(*(_same_leading(ctx, walks[i][0].args[0]) for i in own))
    for i in own:
        linear, chain = walks[i]
        out[i] = _branch(ctx, site, linear, chain, *roles[i], labels, batch)
    return out, shared


def _shape_args(n: fx.Node) -> tuple:
    args = n.args[1:]
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    return tuple(args) if args else tuple(n.kwargs.get("shape", n.kwargs.get("size", ())))


def _posint(a: Any) -> int | None:
    return a if type(a) is int and a > 0 else None


def _head_split(ctx, site, n: fx.Node, linear: fx.Node, width: int, tok: str,
                labels: dict[fx.Node, tuple]) -> tuple[int, int]:
    """``(heads, head_dim)`` of ``view(B, T, heads, head_dim)``, proving it splits only the feature dim."""
    shape = _shape_args(n)
    if len(shape) != 4:
        raise _fail(ctx, site, f"{n.name} reshapes a projection to {len(shape)} dims; expected "
                               ".view(B, T, heads, head_dim)")
    a0, a1, a2, a3 = shape
    h, d = _posint(a2), _posint(a3)
    explicit = h is not None and d is not None
    if explicit and h * d != width:
        raise _fail(ctx, site, f"{n.name} splits {width} features into {h} x {d}")
    if not explicit and h is not None and width % h == 0:
        d = width // h
    elif not explicit and d is not None and width % d == 0:
        h = width // d
    elif not explicit:
        raise _fail(ctx, site, f"{n.name}: the head count or the head size must be a constant int")
    lead = (_dim_label(a0, labels), _dim_label(a1, labels))
    ok = lead == ("B", tok) or (explicit and lead in (("B", -1), (-1, tok)))
    if not ok:
        si, so = ctx.shape(linear), ctx.shape(n)
        ok = si is not None and so is not None and len(si) == 3 and so == (si[0], si[1], h, d)
    if not ok:
        raise _fail(ctx, site, f"cannot prove that {n.name} splits only the feature dim into heads: read B and T "
                               "from the input (B, T, C = x.shape) or pass example_input=... to to_neural_graph")
    return h, d


def _permuted(ctx, site, n: fx.Node, cur: tuple) -> tuple:
    if op_kind(ctx, n) == "transpose":
        dims = list(n.args[1:3]) or [n.kwargs.get("dim0"), n.kwargs.get("dim1")]
        if len(dims) != 2 or not all(type(d) is int for d in dims):
            raise _fail(ctx, site, f"{n.name}: transpose dims must be constant ints")
        a, b = (d % len(cur) for d in dims)
        out = list(cur)
        out[a], out[b] = cur[b], cur[a]
        return tuple(out)
    dims = n.args[1:] if n.op == "call_method" else n.args[1:2]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    r = len(cur)
    if sorted(d % r for d in dims if type(d) is int) != list(range(r)) or len(dims) != r:
        raise _fail(ctx, site, f"{n.name}: permute dims must be {r} constant ints")
    return tuple(cur[d % r] for d in dims)


def match_attention(ctx, site: fx.Node) -> _Match:
    """Prove that ``site`` (an SDPA call, or the ``probs @ v`` product) is multi-head attention over
    three ``nn.Linear`` projections, and claim its nodes."""
    labels: dict[fx.Node, tuple] = {}
    inner: list[fx.Node] = []
    if is_sdpa(site):
        args = bound_args(site, _SDPA_ARGS)
        if args.get("attn_mask") is not None:
            mask = getattr(args["attn_mask"], "name", args["attn_mask"])
            raise _fail(ctx, site, f"attention masks are not supported (attn_mask={mask}: a mask or a bias added to "
                                   "the attention scores, e.g. the relative position bias of BEiT / Swin, is a term "
                                   "a neural graph does not store)")
        if args.get("is_causal"):
            raise _fail(ctx, site, "causal (masked) attention is not supported")
        if args.get("enable_gqa"):
            raise _fail(ctx, site, "grouped-query attention (enable_gqa) is not supported")
        (q, k, v), packed = _branches(ctx, site, labels, (site, args.get("query")), (site, args.get("key")),
                                      (site, args.get("value")))
        want = {"query": ("B", "H", "Tq", "D"), "key": ("B", "H", "Tk", "D"), "value": ("B", "H", "Tk", "D")}
        scale = args.get("scale")
        scalars = q.scalars + k.scalars
        sizes = {"H": q.heads, "D": q.head_dim, "F": q.heads * q.head_dim}
        scale_value = None if scale is None else _scalar(scale, labels, sizes)
        if scale is not None and scale_value is None:
            raise _fail(ctx, site, f"cannot evaluate scale={scale}; use a constant")
        factor = 1 / math.sqrt(q.head_dim) if scale is None else scale_value
    else:
        probs, v_arg = site.args[0], site.args[1]
        n = probs
        while op_kind(ctx, n) in ("dropout", "id"):
            inner.append(n)
            n = n.args[0]
        softmax = n
        dim = softmax.args[1] if len(softmax.args) > 1 else softmax.kwargs.get("dim")
        if dim not in (-1, 3) or softmax.kwargs.get("dtype") is not None:
            raise _fail(ctx, site, f"{softmax.name} must be a softmax over the last dim (the keys)")
        inner.append(softmax)
        n, scalars_inner = softmax.args[0], []
        while op_kind(ctx, n) in ("mul", "div", "id") and _data_arg(ctx, n) is not None:
            inner.append(n)
            if op_kind(ctx, n) != "id":
                scalars_inner.append(n)
            n = _data_arg(ctx, n)
        if op_kind(ctx, n) != "matmul":
            if _is_sum(n):
                raise _fail(ctx, site, f"a term is added to the attention scores ({n.name}, the input of "
                                       f"{softmax.name}): an attention bias or mask (LeViT / EfficientFormer attention "
                                       "biases, a relative position bias, a mask) is a term a neural graph does not "
                                       "store")
            raise _fail(ctx, site, f"the input of {softmax.name} is not q @ k.transpose(-2, -1) (times a scale)")
        scores = n
        inner.append(scores)
        for a, b in zip(inner[1:], inner[:-1]):
            if _data_users(a) != [b]:
                raise _fail(ctx, site, f"{a.name} (attention scores) is also used elsewhere")
        if _data_users(inner[0]) != [site]:
            raise _fail(ctx, site, f"the attention probabilities {inner[0].name} are also used elsewhere")
        (q, k, v), packed = _branches(ctx, site, labels, (scores, scores.args[0]), (scores, scores.args[1]),
                                      (site, v_arg))
        want = {"query": ("B", "H", "Tq", "D"), "key": ("B", "H", "D", "Tk"), "value": ("B", "H", "Tk", "D")}
        scalars = q.scalars + k.scalars + scalars_inner
        factor = 1.0
    for role, br in (("query", q), ("key", k), ("value", v)):
        got = labels[br.chain[-1]] if br.chain else ("B", "T", "F")
        if got != want[role]:
            raise _fail(ctx, site, f"its {role} has dims {_dims(got)}, expected {_dims(want[role])}")
    if len({(br.heads, br.head_dim) for br in (q, k, v)}) != 1:
        raise _fail(ctx, site, "query, key and value must have the same heads and head size")
    if len({(br.linear, br.part) for br in (q, k, v)}) != 3:
        raise _fail(ctx, site, "query, key and value must come from separate nn.Linear calls or the parts of one "
                               "packed projection")
    sizes = {"H": q.heads, "D": q.head_dim, "F": q.heads * q.head_dim}
    for n in scalars:
        other = [a for a in n.args[:2] if a is not _data_arg(ctx, n)]
        value = _scalar(other[0], labels, sizes) if len(other) == 1 else None
        if value is None:
            raise _fail(ctx, site, f"cannot evaluate the scale applied by {n.name}; use a constant or "
                                   "q.size(-1) ** -0.5")
        factor = factor / value if op_kind(ctx, n) == "div" else factor * value
    if not math.isclose(factor * math.sqrt(q.head_dim), 1.0, rel_tol=1e-6):
        raise _fail(ctx, site, f"scales q kᵀ by {factor:g}, not by 1/sqrt(head_dim) = {q.head_dim ** -0.5:g}; "
                               "only the standard scale is representable")
    labels[site] = ("B", "H", "Tq", "D")
    known = {x: ("B", "Tq") for x in _same_leading(ctx, q.linear.args[0])} | labels
    match = _Match(site, q, k, v, inner, _merge(ctx, site, q.heads * q.head_dim, known), packed=packed)
    _claim(ctx, match)
    return match


def _dims(labels: tuple) -> str:
    names = {"B": "batch", "H": "heads", "D": "head_dim", "Tq": "tokens", "Tk": "tokens", "T": "tokens",
             "F": "features"}
    return "(" + ", ".join(names[x] for x in labels) + ")"


def _merge(ctx, site: fx.Node, width: int, labels: dict[fx.Node, tuple]) -> list[fx.Node]:
    """The operations merging the heads back: ``.transpose(1, 2).reshape(B, T, C)`` or ``.flatten(2)``."""
    chain, n, cur = [], site, labels[site]
    while True:
        users = _data_users(n)
        if len(users) != 1:
            raise _fail(ctx, site, f"the attention output {n.name} is used by {len(users)} operations; merge the "
                                   "heads once: out.transpose(1, 2).reshape(B, T, C)")
        u = users[0]
        kind = op_kind(ctx, u)
        if kind in ("transpose", "permute"):
            cur = _permuted(ctx, site, u, cur)
        elif kind not in ("id", "view", "flatten"):
            raise _fail(ctx, site, f"the attention output goes to {u.name}; merge the heads first: "
                                   "out.transpose(1, 2).reshape(B, T, C)")
        elif kind != "id":
            if cur != ("B", "Tq", "H", "D"):
                raise _fail(ctx, site, f"{u.name} merges dims {_dims(cur)}; transpose to (batch, tokens, heads, "
                                       "head_dim) first")
            if kind == "flatten":
                start = u.args[1] if len(u.args) > 1 else u.kwargs.get("start_dim", 0)
                end = u.args[2] if len(u.args) > 2 else u.kwargs.get("end_dim", -1)
                ok = start in (2, -2) and end in (-1, 3)
            else:
                shape = _shape_args(u)
                lead = tuple(_dim_label(a, labels) for a in shape[:2])
                ok = len(shape) == 3 and (lead == ("B", "Tq") or (
                    lead in (("B", -1), (-1, "Tq")) and _posint(shape[2]) == width))
                if not ok and len(shape) == 3:
                    sc, so = ctx.shape(site), ctx.shape(u)
                    ok = sc is not None and so == (sc[0], sc[2], width)
            if not ok:
                raise _fail(ctx, site, f"cannot prove that {u.name} merges exactly the heads: use "
                                       ".reshape(B, T, C) with B, T = x.shape[:2], or .flatten(2)")
            chain.append(u)
            return chain
        labels[u] = cur
        chain.append(u)
        n = u


def _claim(ctx, match: _Match) -> None:
    nodes = [n for br in (match.q, match.k, match.v) for n in [br.linear, *br.chain]] + match.inner + [
        match.site, *match.merge] + match.packed
    for n in nodes:
        if CLAIM in n.meta:
            raise _fail(ctx, match.site, f"{n.name} belongs to two attention patterns")
    for role, br in (("q", match.q), ("k", match.k), ("v", match.v)):
        serves = "".join(r for r, b in (("q", match.q), ("k", match.k), ("v", match.v)) if b.linear is br.linear)
        br.linear.meta[CLAIM] = partial(_project, match, serves)
        for n in br.chain:
            n.meta[CLAIM] = _deferred
    for n in match.inner + match.merge[:-1] + match.packed:
        n.meta[CLAIM] = _deferred
    match.site.meta[CLAIM] = partial(_attend, match)
    match.merge[-1].meta[CLAIM] = partial(_merged, match)


# ------------------------------------------------------------- hand-written attention: the rules
def _deferred(ctx, node, *args, **kwargs) -> Val:
    """An intermediate of a matched attention (a projection, its head split, the scores): no neurons."""
    return Val(None, "attention")


def _project(match: _Match, role: str, ctx, node, x: Val, *args, **kwargs) -> Val:
    """A q / k / v projection: remember the neurons it reads (their value now is what it reads). Its edges come at
    the attention, so the read stays pending till then: an operation in between (a pooling of the same neurons
    for the keys) must not change what the projection reads."""
    src = ctx.as_features(node, x, ctx.module(node).in_features)
    ctx.builder.observe(src)
    ctx.builder.add_pending(src, 1)
    match.held.append(src)
    for r in role:  # the roles this projection serves: "q", "kv", "qkv", ...
        match.src[r] = src
    return Val(None, "attention")


def _attend(match: _Match, ctx, node, *args, **kwargs) -> Val:
    projs = []
    for role, br in (("q", match.q), ("k", match.k), ("v", match.v)):
        weight, bias = ctx.param(br.linear, "weight"), ctx.param(br.linear, "bias")
        if br.part == 0:  # one layer per projection (a packed one's first part)
            ctx.builder.layers.append((weight, bias))
        e = br.heads * br.head_dim  # a packed projection holds its parts as consecutive blocks of E rows
        projs.append(Projection(match.src[role], weight, br.part * e * match.src[role].numel(), bias, br.part * e))
    match.heads, _ = attention_heads(ctx, node, match.q.heads, match.q.head_dim, *projs)
    for src in match.held:
        ctx.builder.add_pending(src, -1)
    return Val(None, "attention")


def _merged(match: _Match, ctx, node, *args, **kwargs) -> Val:
    return Val(match.heads, "vec")
