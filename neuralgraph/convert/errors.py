"""Errors raised by the converter."""
from __future__ import annotations


class UnsupportedModuleError(TypeError):
    """A module or operation the converter cannot represent as a neural graph.

    The message names the module's path in the model, its type, and what is supported, e.g.
    ``"encoder.rnn (torch.nn.LSTM) is not supported; supported modules: Linear, Conv1d, ..."``.
    """


class GraphTooLargeError(MemoryError):
    """The neural graph of a model would exceed ``max_edges`` or the available memory; raised while tracing,
    before the graph is allocated, with the estimated size and the options that shrink it."""
