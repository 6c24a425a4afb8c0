"""Zoo architectures: torch modules rebuilt exactly from a JSON architecture description.

Every member of a zoo stores a small JSON-serialisable ``dict`` (its *architecture description*);
:func:`build_model` turns it back into the same :class:`torch.nn.Module` class with the same
parameter names, so a member's stored parameters load with ``load_state_dict(strict=True)``.
Forwards are plain torch with Python control flow on config ints only, so ``torch.fx`` (and the
neural-graph converter) can trace them.

Families
--------
``wildpark``  the CNN Wild Park family (Kofinas et al., ICLR 2024, appendix E.1)::

    {"family": "wildpark", "in_channels": 1, "n_classes": 10,
     "channels": [16, 8, 32],          # output channels of each conv layer
     "kernels": [3, 7, 5],             # odd kernel sizes, padding = k // 2, stride 1
     "activations": ["relu", "tanh", "identity"],
     "residual": [-1, -1, 0]}          # residual[i] = j: layer j's output joins layer i

  Layer ``i`` computes ``h = conv_i(x)``; if ``residual[i] = j >= 0`` the (post-activation)
  output ``s`` of layer ``j`` is added to the first ``m = min(c_i, c_j)`` channels of ``h``
  *before* layer ``i``'s activation; then the activation. A global average pool and a linear
  classifier follow. Parameter names ``layers.{i}.weight/bias`` and ``fc.weight/bias`` are the
  ones of the published Wild Park checkpoints, which therefore load directly.

``cnn``       a plain stack of conv / pool / linear layers (Arch1, Arch2, Small CNN Zoo)::

    {"family": "cnn", "in_channels": 1, "input_size": [8, 8], "n_classes": 10,
     "layers": [{"kind": "conv", "out": 16, "kernel": 3, "stride": 1, "padding": 0,
                 "pool": 0, "act": "relu"},          # pool: max-pool size after the conv (0: none)
                {"kind": "gap"},                      # or {"kind": "flatten"}
                {"kind": "linear", "out": 10, "act": "identity"}]}

  Parametric layers are named ``layers.{i}`` in dataflow order.

``siren``     the SIREN INR of DWSNets (Navon et al., 2023)::

    {"family": "siren", "in_dim": 2, "hidden": [32, 32], "out_dim": 1, "w0": 30.0,
     "output_offset": 0.5}

  ``seq.{i}`` linear layers, ``sin(w0 * x)`` after every hidden layer, ``+ output_offset`` at the end.
"""
from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor, nn

from neuralgraph.convert.activations import register_activation

#: Activation names used in architecture descriptions.
ACTIVATION_NAMES = ("relu", "gelu", "tanh", "sigmoid", "leaky_relu", "identity")

#: Aliases accepted on input (published configs use some of these).
_ACT_ALIASES = {"none": "identity", "linear": "identity", "leakyrelu": "leaky_relu", "lrelu": "leaky_relu"}


def canonical_activation(name: str) -> str:
    """Map an activation name (or a published alias like ``"none"``) to :data:`ACTIVATION_NAMES`."""
    key = str(name).lower()
    key = _ACT_ALIASES.get(key, key)
    if key not in ACTIVATION_NAMES:
        raise ValueError(f"unknown activation {name!r}; choose from {ACTIVATION_NAMES} (or 'none')")
    return key


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for an activation name."""
    key = canonical_activation(name)
    return {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
            "leaky_relu": nn.LeakyReLU, "identity": nn.Identity}[key]()


class WildParkCNN(nn.Module):
    """A CNN Wild Park network (see the module docstring for the description format).

    Args:
        desc (dict): a ``"wildpark"`` architecture description.

    Shapes:
        input ``[B, in_channels, H, W]`` -> output ``[B, n_classes]``.
    """

    def __init__(self, desc: dict[str, Any]) -> None:
        super().__init__()
        self.desc = validate_wildpark(desc)
        channels, kernels = self.desc["channels"], self.desc["kernels"]
        self.channels = list(channels)
        self.residual = list(self.desc["residual"])
        c_in = self.desc["in_channels"]
        self.layers = nn.ModuleList()
        for c, k in zip(channels, kernels):
            self.layers.append(nn.Conv2d(c_in, c, kernel_size=k, padding=k // 2))
            c_in = c
        self.acts = nn.ModuleList(make_activation(a) for a in self.desc["activations"])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, self.desc["n_classes"])
        # which layer outputs are used later as skip sources (a Python-level constant)
        self._sources = sorted({j for j in self.residual if j >= 0})

    def forward(self, x: Tensor) -> Tensor:
        saved: dict[int, Tensor] = {}
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)                                   # [B, c_i, H, W]
            j = self.residual[i]
            if j >= 0:
                m = min(self.channels[i], self.channels[j])
                s = saved[j]
                if m == self.channels[i]:
                    h = h + s[:, :m]
                else:
                    h = torch.cat([h[:, :m] + s[:, :m], h[:, m:]], dim=1)
            h = self.acts[i](h)
            if i in self._sources:
                saved[i] = h
        h = self.pool(h).flatten(1)                         # [B, c_L]
        return self.fc(h)                                   # [B, n_classes]


class SequentialCNN(nn.Module):
    """A plain conv / pool / linear stack (``"cnn"`` family; Arch1, Arch2, Small CNN Zoo).

    Args:
        desc (dict): a ``"cnn"`` architecture description.

    Shapes:
        input ``[B, in_channels, *input_size]`` -> output ``[B, n_classes]``.
    """

    def __init__(self, desc: dict[str, Any]) -> None:
        super().__init__()
        self.desc = validate_cnn(desc)
        self.layers = nn.ModuleList()
        self.acts = nn.ModuleList()
        self.pools = nn.ModuleList()
        self.plan: list[str] = []          # per step: "param", "gap", "flatten"
        c, (hgt, wid) = self.desc["in_channels"], self.desc["input_size"]
        features = None
        for spec in self.desc["layers"]:
            kind = spec["kind"]
            if kind == "conv":
                k, s, p = spec["kernel"], spec.get("stride", 1), spec.get("padding", 0)
                self.layers.append(nn.Conv2d(c, spec["out"], kernel_size=k, stride=s, padding=p))
                c = spec["out"]
                hgt, wid = (hgt + 2 * p - k) // s + 1, (wid + 2 * p - k) // s + 1
                pool = spec.get("pool", 0)
                self.pools.append(nn.MaxPool2d(pool) if pool else nn.Identity())
                if pool:
                    hgt, wid = hgt // pool, wid // pool
            elif kind == "linear":
                if features is None:
                    raise ValueError("a 'linear' layer must follow 'gap' or 'flatten'")
                self.layers.append(nn.Linear(features, spec["out"]))
                self.pools.append(nn.Identity())
                features = spec["out"]
            elif kind in ("gap", "flatten"):
                features = c if kind == "gap" else c * hgt * wid
                self.plan.append(kind)
                continue
            self.acts.append(make_activation(spec.get("act", "identity")))
            self.plan.append("param")
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        h, i = x, 0
        for step in self.plan:
            if step == "gap":
                h = self.gap(h).flatten(1)
            elif step == "flatten":
                h = h.flatten(1)
            else:
                h = self.acts[i](self.pools[i](self.layers[i](h)))
                i += 1
        return h


class Sine(nn.Module):
    """``sin(w0 * x)``: the SIREN activation. Registered as the converter's ``sine`` activation with ``w0`` in
    the neurons' activation-parameter column, so a SIREN's graph has one neuron per hidden unit rather than a
    scale layer (edges ``w0``) followed by ``sin``."""

    def __init__(self, w0: float = 1.0) -> None:
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


register_activation(Sine, "sine")


class SirenINR(nn.Module):
    """The DWSNets SIREN INR (``seq.{i}`` linear layers, sine activations, output offset).

    Shapes:
        input ``[..., in_dim]`` coordinates -> output ``[..., out_dim]``.
    """

    def __init__(self, desc: dict[str, Any]) -> None:
        super().__init__()
        self.desc = dict(desc)
        dims = [desc["in_dim"], *desc["hidden"], desc["out_dim"]]
        self.seq = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.acts = nn.ModuleList(Sine(desc.get("w0", 30.0)) for _ in dims[1:-1])
        self.output_offset = float(desc.get("output_offset", 0.0))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.seq):
            x = layer(x)
            if i < len(self.acts):
                x = self.acts[i](x)
        return x + self.output_offset


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def validate_wildpark(desc: dict[str, Any]) -> dict[str, Any]:
    """Check a ``wildpark`` description and return a normalised copy (canonical activations)."""
    d = json.loads(json.dumps(desc))  # deep copy, and proves it is JSON-serialisable
    n = len(d["channels"])
    for key in ("kernels", "activations", "residual"):
        if len(d[key]) != n:
            raise ValueError(f"wildpark description: {key!r} has {len(d[key])} entries, 'channels' {n}")
    if n < 1:
        raise ValueError("wildpark description needs at least one conv layer")
    for k in d["kernels"]:
        if k % 2 != 1:
            raise ValueError(f"wildpark kernels must be odd (padding k // 2 keeps the size), got {k}")
    # one entry per layer: at most one incoming skip per layer by construction
    for i, j in enumerate(d["residual"]):
        if j >= 0 and not j < i - 1:
            raise ValueError(f"wildpark residual[{i}] = {j}: a skip must span at least one layer (j < i - 1)")
    d["activations"] = [canonical_activation(a) for a in d["activations"]]
    d.setdefault("in_channels", 1)
    d.setdefault("n_classes", 10)
    d["family"] = "wildpark"
    return d


def validate_cnn(desc: dict[str, Any]) -> dict[str, Any]:
    d = json.loads(json.dumps(desc))
    if not d.get("layers"):
        raise ValueError("cnn description needs a non-empty 'layers' list")
    for spec in d["layers"]:
        if spec.get("kind") not in ("conv", "linear", "gap", "flatten"):
            raise ValueError(f"cnn layer kind must be conv, linear, gap or flatten, got {spec.get('kind')!r}")
        if "act" in spec:
            spec["act"] = canonical_activation(spec["act"])
    d.setdefault("in_channels", 1)
    d["input_size"] = list(d.get("input_size", [8, 8]))
    d["family"] = "cnn"
    return d


_FAMILIES = {"wildpark": WildParkCNN, "cnn": SequentialCNN, "siren": SirenINR}


def build_model(desc: dict[str, Any]) -> nn.Module:
    """Rebuild the torch module described by ``desc`` (fresh parameters; load a state dict next).

    Raises:
        ValueError: for an unknown family (listing the known ones) or an invalid description.
    """
    family = desc.get("family")
    if family not in _FAMILIES:
        raise ValueError(f"unknown architecture family {family!r}; choose from {sorted(_FAMILIES)}")
    return _FAMILIES[family](desc)


def example_input(desc: dict[str, Any], batch: int = 1) -> Tensor:
    """A zero input of the right shape for ``build_model(desc)`` (for tracing / conversion)."""
    family = desc["family"]
    if family == "wildpark":
        size = desc.get("input_size", [8, 8])
        return torch.zeros(batch, desc.get("in_channels", 1), *size)
    if family == "cnn":
        return torch.zeros(batch, desc.get("in_channels", 1), *desc.get("input_size", [8, 8]))
    if family == "siren":
        return torch.zeros(batch, desc["in_dim"])
    raise ValueError(f"unknown architecture family {family!r}")


def arch_key(desc: dict[str, Any]) -> str:
    """A canonical string for an architecture (equal strings: same module, same parameter shapes)."""
    return json.dumps(desc, sort_keys=True, separators=(",", ":"))
