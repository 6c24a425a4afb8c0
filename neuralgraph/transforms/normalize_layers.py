"""Per-layer weight and bias normalization fitted on a training set (Neural Graphs §2.4)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor
from torch_geometric.transforms import BaseTransform

from neuralgraph.data.graph import EDGE_KIND_TABLE, NeuralGraph



class NormalizeLayers(BaseTransform):
    r"""Standardise the weights into each layer and the biases of each layer with one mean and one standard
    deviation per layer (separately for weights and biases), fitted on training graphs (Neural Graphs §2.4).

    .. math::
        e_{ij} \leftarrow (e_{ij} - \mu^W_{\ell(j)}) / \sigma^W_{\ell(j)}, \qquad
        b_j \leftarrow (b_j - \mu^b_{\ell(j)}) / \sigma^b_{\ell(j)}

    where :math:`\ell(j)` is ``node_layer`` of the target neuron. One statistic per layer (not per
    neuron) keeps the graph's permutation symmetry. Weight statistics are taken over the non-zero taps of
    parameter-carrying edges, and only those taps are standardised: zero kernel padding stays zero (so a
    real weight that is exactly 0 stays 0 too, like the padding it cannot be told apart from). Neurons
    without a bias keep 0. Layers deeper than any seen in :meth:`fit` use the statistics of all layers.

    Args:
        eps (float, optional): added to every standard deviation. (default: ``1e-8``)
    """

    def __init__(self, eps: float = 1e-8):
        self.eps = eps
        self.w_mean: Tensor | None = None  # [L + 1], last entry: all layers
        self.w_std: Tensor | None = None
        self.b_mean: Tensor | None = None
        self.b_std: Tensor | None = None

    @staticmethod
    def _param_edges(g: NeuralGraph) -> Tensor:
        kinds = torch.tensor([i for i, k in enumerate(EDGE_KIND_TABLE) if k.params], device=g.edge_kind.device)
        return torch.isin(g.edge_kind, kinds)

    def fit(self, graphs: Iterable[NeuralGraph]) -> "NormalizeLayers":
        w_layers, w_vals, b_layers, b_vals = [], [], [], []
        for g in graphs:
            sel = self._param_edges(g)
            layer = g.node_layer[g.edge_index[1, sel]]
            attr = g.edge_attr[sel]
            nz = attr != 0
            w_layers.append(layer.view(-1, 1).expand_as(attr)[nz])
            w_vals.append(attr[nz])
            has_b = g.x[:, 1] > 0
            b_layers.append(g.node_layer[has_b])
            b_vals.append(g.x[has_b, 0])
        wl, wv = torch.cat(w_layers), torch.cat(w_vals).double()
        bl, bv = torch.cat(b_layers), torch.cat(b_vals).double()
        n = int(max(wl.max() if wl.numel() else 0, bl.max() if bl.numel() else 0)) + 1
        self.w_mean, self.w_std = self._per_layer(wl, wv, n)
        self.b_mean, self.b_std = self._per_layer(bl, bv, n)
        return self

    def _per_layer(self, layer: Tensor, val: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of ``val`` per layer ``[n + 1]`` (entry ``n``: over all layers)."""
        count = torch.zeros(n + 1, dtype=torch.float64).index_add_(0, layer, torch.ones_like(val))
        total = torch.zeros(n + 1, dtype=torch.float64).index_add_(0, layer, val)
        count[n], total[n] = val.numel(), val.sum()
        mean = torch.where(count > 0, total / count.clamp(min=1), 0.0)
        dev = (val - mean[layer]) ** 2
        sq = torch.zeros(n + 1, dtype=torch.float64).index_add_(0, layer, dev)
        sq[n] = ((val - mean[n]) ** 2).sum()
        std = torch.where(count > 0, (sq / count.clamp(min=1)).sqrt(), 1.0)
        std = torch.where(count > 0, std, std[n])  # unseen layers: all-layer statistics
        mean = torch.where(count > 0, mean, mean[n])
        return mean.float(), std.float() + self.eps

    def _lookup(self, stats: Tensor, layer: Tensor) -> Tensor:
        n = stats.numel() - 1
        return stats.to(layer.device)[torch.where(layer < n, layer, n)]

    def forward(self, data: NeuralGraph) -> NeuralGraph:
        if self.w_std is None:
            raise RuntimeError("NormalizeLayers is not fitted: call .fit(training_graphs) first")
        data = data.clone()
        a = data.edge_attr  # (E, F_edge)
        layer = data.node_layer[data.edge_index[1]]  # (E,) layer of each edge's target
        w_mean = self._lookup(self.w_mean, layer).to(a.dtype).view(-1, 1)
        w_std = self._lookup(self.w_std, layer).to(a.dtype).view(-1, 1)
        real = self._param_edges(data).view(-1, 1) & (a != 0)  # (E, F_edge): parameter taps, not padding
        data.edge_attr = torch.where(real, (a - w_mean) / w_std, a)
        has_b = data.x[:, 1] > 0
        mean = self._lookup(self.b_mean, data.node_layer).to(data.x.dtype)
        std = self._lookup(self.b_std, data.node_layer).to(data.x.dtype)
        x = data.x.clone()
        x[:, 0] = torch.where(has_b, (x[:, 0] - mean) / std, x[:, 0])
        data.x = x
        return data

    def __repr__(self) -> str:
        fitted = "unfitted" if self.w_std is None else f"{self.w_std.numel() - 1} layers"
        return f"{type(self).__name__}({fitted})"
