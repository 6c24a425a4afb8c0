"""Converter configuration: one configuration gives one F_node and F_edge for every architecture."""
from __future__ import annotations

from dataclasses import dataclass, fields
from math import prod


@dataclass(frozen=True)
class ConvertConfig:
    """Options of :func:`neuralgraph.to_neural_graph` (pass them as keyword arguments).

    Args:
        max_kernel (tuple[int, ...]): maximum kernel size; every kernel is zero-padded, centred, to it
            and flattened, so ``F_edge = prod(max_kernel)``. Lower-dimensional kernels fill its trailing
            dims (a Conv1d kernel of 3 becomes a 1x3 kernel in the middle row). A larger kernel converts exactly as
            one neuron per (input channel, kernel offset) and a 1x1 convolution (``rules/conv.py``), so a small
            ``max_kernel`` shrinks the graph: ResNet-50 at ``(3, 3)``. (default: ``(7, 7)``)
        flatten (str): how a flattened ``C x P`` feature map feeds a linear layer: ``"virtual"`` adds a
            virtual layer of ``C * P`` nodes, one per channel and position, each fed by its channel with
            an identity edge; ``"repeat"`` copies each channel node (with its incoming edges) once per
            position. Both mark the position in ``node_spatial``. (default: ``"virtual"``)
        max_edges (int, optional): refuse, while tracing and before the graph is allocated, architectures whose
            graph has more edges (a ``GraphTooLargeError``). Independently, an architecture whose graph would
            not fit in the available memory is refused the same way. (default: ``None``)
    """

    max_kernel: tuple[int, ...] = (7, 7)
    flatten: str = "virtual"
    max_edges: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_kernel", tuple(int(k) for k in self.max_kernel))
        if not self.max_kernel or any(k < 1 for k in self.max_kernel):
            raise ValueError(f"max_kernel must be positive sizes, got {self.max_kernel}")
        if self.max_edges is not None and self.max_edges < 0:
            raise ValueError(f"max_edges must be >= 0, got {self.max_edges}")
        if self.flatten not in ("virtual", "repeat"):
            raise ValueError(f"flatten must be 'virtual' or 'repeat', got {self.flatten!r}")

    @property
    def edge_dim(self) -> int:
        """F_edge: the number of taps of the padded kernel."""
        return prod(self.max_kernel)

    @property
    def node_dim(self) -> int:
        """F_node: additive term, has-additive-term flag, and two activation parameters (a LeakyReLU / PReLU
        slope, an ELU alpha, Softplus beta and threshold, Hardtanh bounds; 0 for activations without)."""
        return 4

    @property
    def centre_tap(self) -> int:
        """Flat index of the kernel centre, where linear weights and identity edges sit."""
        idx = 0
        for k in self.max_kernel:
            idx = idx * k + k // 2
        return idx

    @classmethod
    def from_kwargs(cls, **kwargs) -> "ConvertConfig":
        valid = {f.name for f in fields(cls)}
        bad = sorted(set(kwargs) - valid)
        if bad:
            raise TypeError(f"unknown converter option(s) {bad}; valid options: {sorted(valid)}")
        return cls(**kwargs)
