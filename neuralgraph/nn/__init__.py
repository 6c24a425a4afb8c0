from neuralgraph.nn.embeddings import EncoderConfig, FourierFeatures, NeuralGraphEncoder  # noqa: F401
from neuralgraph.nn.feedforward import FeatureNorm, mlp  # noqa: F401
from neuralgraph.nn.film_pna import FiLMPNAConv, degree_histogram  # noqa: F401
from neuralgraph.nn.relational_attention import (  # noqa: F401
    RelationalAttention, RelationalEdgeUpdate, RelationalTransformerLayer)
from neuralgraph.nn.nf_layers import (  # noqa: F401
    HNPLayer, IOEncoding, NFFeatures, NPLayer, PointwiseLayer, hnp_pool,
    np_pool, to_features)
from neuralgraph.nn.set_layers import MAB, PMA, SAB, sinusoidal_encoding  # noqa: F401
