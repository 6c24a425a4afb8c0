"""Module -> neural graph conversion: pure functions, no learnable state.

``to_neural_graph`` traces a module with ``torch.fx`` once per architecture into a
:class:`ConversionPlan`; every further model of that architecture is a gather of its parameters.
"""
from neuralgraph.convert.activations import ACTIVATIONS, activation_id, register_activation
from neuralgraph.convert.config import ConvertConfig
from neuralgraph.convert.errors import GraphTooLargeError, UnsupportedModuleError
from neuralgraph.convert.plan import (ConversionPlan, architecture_key, clear_plan_cache, find_plan,
                                      from_neural_graph, get_plan, to_neural_graph)

__all__ = ["to_neural_graph", "from_neural_graph", "get_plan", "ConversionPlan", "ConvertConfig",
           "UnsupportedModuleError", "GraphTooLargeError", "ACTIVATIONS", "activation_id", "register_activation",
           "architecture_key", "clear_plan_cache", "find_plan"]
