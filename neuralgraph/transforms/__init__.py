"""PyG-style transforms on neural graphs (``forward(data) -> data``, one class per file)."""
from neuralgraph.transforms.add_reverse_edges import AddReverseEdges
from neuralgraph.transforms.fold_batchnorm import FoldBatchNorm
from neuralgraph.transforms.checked import CheckedTransform
from neuralgraph.transforms.normalize_layers import NormalizeLayers
from neuralgraph.transforms.permute_neurons import PermuteNeurons
from neuralgraph.transforms.probe_features import (LearnedProbeFeatures, MemberNetwork, ProbeFeatures,
                                                   probe_activations, with_probe_features)
from neuralgraph.transforms.to_networkx import ToNetworkX

__all__ = ["AddReverseEdges", "CheckedTransform", "FoldBatchNorm", "NormalizeLayers", "PermuteNeurons", "ProbeFeatures", "LearnedProbeFeatures",
           "MemberNetwork", "probe_activations", "with_probe_features", "ToNetworkX"]
