"""neuralgraph: learning on neural networks as data."""
from neuralgraph.convert import UnsupportedModuleError, from_neural_graph, to_neural_graph
from neuralgraph.data.graph import NeuralGraph
from neuralgraph.execute import execute

__version__ = "0.1.0"
__all__ = ["to_neural_graph", "from_neural_graph", "execute", "NeuralGraph", "UnsupportedModuleError"]
