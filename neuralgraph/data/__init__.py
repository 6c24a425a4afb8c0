"""Data: the NeuralGraph class, weight-space batches, zoo formats and datasets."""
from neuralgraph.data.graph import EDGE_KIND, EDGE_KINDS, POOL, POOLS, ROLE, ROLES, NeuralGraph
from neuralgraph.data.weightspace import WeightSpace, WeightSpaceBatch

__all__ = ["NeuralGraph", "WeightSpace", "WeightSpaceBatch", "ROLES", "ROLE", "EDGE_KINDS", "EDGE_KIND",
           "POOLS", "POOL"]
