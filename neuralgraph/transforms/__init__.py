"""PyG-style transforms on neural graphs (``forward(data) -> data``, one class per file)."""
from neuralgraph.transforms.add_reverse_edges import AddReverseEdges
from neuralgraph.transforms.normalize_layers import NormalizeLayers

__all__ = ["AddReverseEdges", "NormalizeLayers"]
