"""Fold eval-mode BatchNorm into the affine map it computes (Neural Graphs appendix C.3)."""
from __future__ import annotations

import torch
from torch_geometric.transforms import BaseTransform

from neuralgraph.convert.config import ConvertConfig
from neuralgraph.data.graph import DEFAULT_EPS, EDGE_KIND, NeuralGraph, norm_taps


class FoldBatchNorm(BaseTransform):
    r"""Replace each BatchNorm neuron's stored statistics by the eval-mode affine map they define.

    A converted BatchNorm neuron ``j`` fed by neuron ``i`` stores :math:`\gamma_j` on the centre tap of
    edge :math:`i \to j`, the running mean :math:`\mu_j` and variance :math:`\sigma^2_j` on two other taps
    and :math:`\epsilon` on a third (:func:`~neuralgraph.data.graph.norm_taps`; the default 1e-5 when
    the edges have fewer than 4 taps), and :math:`\beta_j` as its additive term. In
    eval mode it computes :math:`v_j = s_j v_i + t_j` with

    .. math::
        s_j = \frac{\gamma_j}{\sqrt{\sigma^2_j + \epsilon}}, \qquad t_j = \beta_j - s_j \mu_j .

    After the transform the edge carries :math:`s_j` on its centre tap (the statistics and eps taps are zero) and
    the node carries :math:`t_j` as its additive term (has-additive-term flag set), so a model sees the
    element-wise layer as the scale and shift it applies, like any other weight and bias. The result is a
    model input, not a round-trippable graph: ``from_neural_graph`` needs the unfolded statistics.

    Args:
        max_kernel (tuple[int, ...], optional): the converter's ``max_kernel`` option the graphs were made
            with (it places the centre tap). (default: ``(7, 7)``)
    """

    def __init__(self, max_kernel: tuple[int, ...] = (7, 7)):
        self.max_kernel = tuple(max_kernel)
        cfg = ConvertConfig(max_kernel=self.max_kernel)
        self.centre, self.edge_dim = cfg.centre_tap, cfg.edge_dim

    def forward(self, data: NeuralGraph) -> NeuralGraph:
        e = (data.edge_kind == EDGE_KIND["batchnorm"]).nonzero().squeeze(1)
        if e.numel() == 0:
            return data
        data = data.clone()
        attr, x = data.edge_attr, data.x
        centre = self.centre
        if attr.size(1) != self.edge_dim:
            raise ValueError(f"FoldBatchNorm(max_kernel={self.max_kernel}) got graphs with {attr.size(1)} edge "
                             "features; pass the max_kernel the graphs were converted with")
        mean_tap, var_tap, tap = norm_taps(attr.size(1), centre)
        eps = attr[e, tap] if tap is not None else DEFAULT_EPS
        scale = attr[e, centre] / torch.sqrt(attr[e, var_tap] + eps)
        dst = data.edge_index[1, e]
        x[dst, 0] = x[dst, 0] - scale * attr[e, mean_tap]
        x[dst, 1] = 1.0
        attr[e, centre] = scale
        attr[e, mean_tap] = 0.0
        attr[e, var_tap] = 0.0
        if tap is not None:
            attr[e, tap] = 0.0
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_kernel={self.max_kernel})"
