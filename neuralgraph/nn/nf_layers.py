"""Permutation-equivariant NF-layers (NP, HNP, pointwise), invariant pools and IO-encoding.

`Zhou et al., "Permutation Equivariant Neural Functionals" (NeurIPS 2023)
<https://arxiv.org/abs/2302.14040>`_.

Weight-space features
---------------------
An L-layer feed-forward network has weights :math:`W^{(i)} \\in \\mathbb{R}^{n_i \\times n_{i-1}}` and
biases :math:`v^{(i)} \\in \\mathbb{R}^{n_i}`. A *weight-space feature* with ``C`` channels attaches a
``C``-vector to every weight and bias. We store it channels-last (every channel map is then one
matrix product) and fold the kernel of a convolution into the channels (paper §2.2, "Extension to
convolutional weight-spaces"): with ``k_i`` the number of kernel taps of layer ``i`` (1 for linear
layers),

- ``weights[i]``: ``[B, n_i, n_{i-1}, C * k_i]``, channel index ``c * k_i + tap`` (channel-major),
- ``biases[i]``: ``[B, n_i, C]``.

A :class:`~neuralgraph.data.WeightSpace` (weights ``[B, out, in, *kernel]``) becomes a 1-channel feature
with :func:`to_features`. Between a convolution and a linear layer the network must pool globally
(``n_{i} = `` the linear layer's ``in``), as in the Small CNN Zoo; flattening a spatial map is rejected.

Means (not sums) are used for every pooled term, so the layers are well scaled for any width.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuralgraph.nn.set_layers import sinusoidal_encoding


class NFFeatures(NamedTuple):
    """Weight-space features, channels last, kernel taps folded into channels (see module docstring)."""

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]

    def map(self, fn) -> "NFFeatures":
        """Apply ``fn`` (e.g. an activation) to every weight and bias tensor."""
        return NFFeatures(tuple(fn(w) for w in self.weights), tuple(fn(b) for b in self.biases))


def layer_dims(weight_shapes: Sequence) -> list[tuple[int, int, int]]:
    """``(n_out, n_in, kernel_taps)`` per layer.

    Args:
        weight_shapes: a :attr:`WeightSpace.signature` (``((out, in, *k), (out,))`` per layer) or
            plain weight shapes ``(out, in, *k)`` per layer; lists (from YAML/JSON) are accepted.
    """
    dims = []
    for item in weight_shapes:
        shape = item[0] if isinstance(item[0], (tuple, list)) else item
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2:
            raise ValueError(f"weight shape {shape} is not [out, in, *kernel]")
        dims.append((shape[0], shape[1], math.prod(shape[2:])))
    if not dims:
        raise ValueError("weight_shapes is empty")
    return dims


def check_feedforward(weight_shapes: Sequence, who: str = "NF-layers") -> list[tuple[int, int, int]]:
    """:func:`layer_dims`, after checking consecutive layers chain (``in_{i+1} == out_i``)."""
    dims = layer_dims(weight_shapes)
    for i in range(len(dims) - 1):
        if dims[i + 1][1] != dims[i][0]:
            raise ValueError(
                f"{who}: layer {i + 1} has {dims[i + 1][1]} inputs but layer {i} has {dims[i][0]} outputs; "
                "NF-layers need a plain feed-forward chain (a CNN must pool globally before its linear "
                "layers). Use ng-gnn, ng-t or sne for this architecture.")
    return dims


def to_features(ws) -> NFFeatures:
    """A :class:`~neuralgraph.data.WeightSpace` as 1-channel features (kernel taps -> channels)."""
    weights = tuple(w.reshape(w.shape[0], w.shape[1], w.shape[2], -1) for w in ws.weights)  # [B, n, m, k]
    biases = tuple(b.unsqueeze(-1) for b in ws.biases)                                   # [B, n, 1]
    return NFFeatures(weights, biases)


def np_pool(feats: NFFeatures) -> Tensor:
    r"""NP-invariant pool :math:`P(U) = (W^{(1)}_{\star,\star}, \dots, W^{(L)}_{\star,\star}, v^{(1)}_\star,
    \dots, v^{(L)}_\star)` (paper §2.3), with means.

    Shapes:
        - **output:** ``[B, sum_i C k_i + L C]`` (all weight terms, then all bias terms)
    """
    return torch.cat([w.mean(dim=(1, 2)) for w in feats.weights] + [b.mean(dim=1) for b in feats.biases], -1)


def hnp_pool(feats: NFFeatures) -> Tensor:
    r"""HNP-invariant pool (appendix eq. 20): :math:`\tilde P(U) = (P(U), W^{(1)}_{\star,:},
    W^{(L)}_{:,\star}, v^{(L)})` -- inputs and outputs are not summed over.

    Shapes:
        - **output:** ``[B, sum_i C k_i + L C + n_0 C k_1 + n_L C k_L + n_L C]``
    """
    w0, wl, bl = feats.weights[0], feats.weights[-1], feats.biases[-1]
    return torch.cat([np_pool(feats), w0.mean(1).flatten(1), wl.mean(2).flatten(1), bl.flatten(1)], -1)


def pool_dim(weight_shapes: Sequence, channels: int, kind: str) -> int:
    """Output size of :func:`np_pool` (``kind="np"``) or :func:`hnp_pool` (``kind="hnp"``)."""
    dims = layer_dims(weight_shapes)
    n = sum(k * channels for _, _, k in dims) + len(dims) * channels
    if kind == "hnp":
        n += dims[0][1] * dims[0][2] * channels + dims[-1][0] * dims[-1][2] * channels + dims[-1][0] * channels
    elif kind != "np":
        raise ValueError(f"unknown pool kind {kind!r}; choose 'np' or 'hnp'")
    return n


def _uniform_(tensors: Sequence[Tensor], fan_in: int) -> None:
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    for t in tensors:
        nn.init.uniform_(t, -bound, bound)


class NPLayer(nn.Module):
    r"""NP-equivariant NF-layer :math:`H: \mathcal{U}^{c_i} \to \mathcal{U}^{c_o}` with biases
    (paper eq. 2, appendix eq. 3), the most general linear map equivariant to permutations of *all*
    neurons, including inputs and outputs:

    .. math::
        Y^{(i)}_{jk} &= \textstyle\sum_s \big(a^{i,s} W^{(s)}_{\star\star} + a_\phi^{i,s} v^{(s)}_\star\big)
            + b^{i,i} W^{(i)}_{\star k} + b^{i,i-1} W^{(i-1)}_{k\star} + c_\phi^{i} v^{(i-1)}_k \\
            &\quad + c^{i,i} W^{(i)}_{j\star} + c^{i,i+1} W^{(i+1)}_{\star j} + b_\phi^{i} v^{(i)}_j
            + d^{i} W^{(i)}_{jk} \\
        z^{(i)}_j &= \textstyle\sum_s \big(a_\varphi^{i,s} W^{(s)}_{\star\star} + a_\psi^{i,s} v^{(s)}_\star\big)
            + b_\varphi^{i,i} W^{(i)}_{j\star} + b_\varphi^{i,i+1} W^{(i+1)}_{\star j} + b_\psi^i v^{(i)}_j

    (:math:`\star` = mean; every coefficient is a :math:`c_o k_i \times c_i k_s` matrix). Implementation:
    the ``a`` terms are one linear map of :func:`np_pool`; the ``b`` ("row", indexed by ``k``) and ``c``
    ("column", indexed by ``j``) terms are one linear map each of the concatenated broadcast features;
    the bias output shares the column features. A single bias per output (on the pooled term) replaces the
    redundant biases of the individual terms.

    Args:
        weight_shapes (sequence): the input weight space (:attr:`WeightSpace.signature`); only the
            number of layers and kernel sizes matter, so one layer serves any widths.
        in_channels (int): :math:`c_i`.
        out_channels (int): :math:`c_o`.

    Shapes:
        - **input / output:** :class:`NFFeatures` with ``in_channels`` / ``out_channels`` channels.
    """

    def __init__(self, weight_shapes: Sequence, in_channels: int, out_channels: int) -> None:
        super().__init__()
        dims = check_feedforward(weight_shapes, "NPLayer")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_layers = L = len(dims)
        ci, co = in_channels, out_channels
        self.f_in = [k * ci for _, _, k in dims]
        self.f_out = [k * co for _, _, k in dims]
        self.pool_dim = sum(self.f_in) + L * ci
        # invariant term: outputs [w_0 .. w_{L-1}, b_0 .. b_{L-1}], matching np_pool's order
        self.inv_sizes = self.f_out + [co] * L
        self.inv_weight = nn.Parameter(torch.empty(sum(self.inv_sizes), self.pool_dim))
        self.inv_bias = nn.Parameter(torch.empty(sum(self.inv_sizes)))
        self.point = nn.ParameterList()
        self.row = nn.ParameterList()
        self.col = nn.ParameterList()
        for i in range(L):
            row_in = self.f_in[i] + (self.f_in[i - 1] + ci if i > 0 else 0)
            col_in = self.f_in[i] + ci + (self.f_in[i + 1] if i < L - 1 else 0)
            self.point.append(nn.Parameter(torch.empty(self.f_out[i], self.f_in[i])))
            self.row.append(nn.Parameter(torch.empty(self.f_out[i], row_in)))
            self.col.append(nn.Parameter(torch.empty(self.f_out[i] + co, col_in)))  # weight rows, then bias rows
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # fan-in of each output = sum of the input sizes of every term that feeds it
        inv_w = self.inv_weight.data.split(self.inv_sizes, 0)
        L, fo = self.num_layers, self.f_out
        for i in range(L):
            fan_w = self.pool_dim + self.point[i].size(1) + self.row[i].size(1) + self.col[i].size(1)
            fan_b = self.pool_dim + self.col[i].size(1)
            col_w, col_b = self.col[i].data.split([fo[i], self.out_channels], 0)
            _uniform_([inv_w[i], self.point[i].data, self.row[i].data, col_w], fan_w)
            _uniform_([inv_w[L + i], col_b], fan_b)
        nn.init.zeros_(self.inv_bias)     # zero biases: ReLUs after the layer start data-dependent, not dead

    def forward(self, feats: NFFeatures) -> NFFeatures:
        W, v = feats
        L = self.num_layers
        row_mean = [w.mean(1) for w in W]                                    # [B, n_{i-1}, F_i]
        col_mean = [w.mean(2) for w in W]                                    # [B, n_i, F_i]
        pooled = torch.cat([r.mean(1) for r in row_mean] + [b.mean(1) for b in v], -1)  # [B, pool_dim]
        inv = F.linear(pooled, self.inv_weight, self.inv_bias).split(self.inv_sizes, -1)
        out_w, out_b = [], []
        for i in range(L):
            rows = [row_mean[i]] + ([col_mean[i - 1], v[i - 1]] if i > 0 else [])
            cols = [col_mean[i], v[i]] + ([row_mean[i + 1]] if i < L - 1 else [])
            r = F.linear(torch.cat(rows, -1), self.row[i])                 # [B, n_{i-1}, Fo]
            cw, cb = F.linear(torch.cat(cols, -1), self.col[i]).split([self.f_out[i], self.out_channels], -1)
            y = F.linear(W[i], self.point[i])                              # [B, n_i, n_{i-1}, Fo]
            y = y + (cw + inv[i][:, None])[:, :, None] + r[:, None]
            out_w.append(y)
            out_b.append(cb + inv[L + i][:, None])                         # [B, n_i, co]
        return NFFeatures(tuple(out_w), tuple(out_b))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"num_layers={self.num_layers})")


class HNPLayer(nn.Module):
    r"""HNP-equivariant NF-layer :math:`\tilde H` (appendix C.1, parameter sharing of tables 8-11):
    equivariant to permutations of the *hidden* neurons only, so inputs (columns of :math:`W^{(1)}`) and
    outputs (rows of :math:`W^{(L)}`, :math:`v^{(L)}`) keep their identity.

    Terms, with ``j`` the row and ``k`` the column of the output entry:

    - invariant term: a linear map of :func:`hnp_pool` (appendix eq. 20), with separate outputs per input
      column for :math:`W^{(1)}` and per output row for :math:`W^{(L)}`, :math:`v^{(L)}`;
    - first layer (rows permuted, columns fixed): a linear map of the features of hidden neuron ``j``:
      the whole row :math:`W^{(1)}_{j,:}`, :math:`v^{(1)}_j`, :math:`W^{(2)}_{\star j}` (and the whole column
      :math:`W^{(2)}_{:,j}` if :math:`L = 2`) to the whole output row;
    - last layer (columns permuted, rows fixed): a linear map of the features of hidden neuron ``k``: the
      whole column :math:`W^{(L)}_{:,k}`, :math:`W^{(L-1)}_{k\star}`, :math:`v^{(L-1)}_k` (and the row
      :math:`W^{(1)}_{k,:}` if :math:`L = 2`) to the whole output column; the output bias
      :math:`z^{(L)}` has only the invariant term;
    - hidden layers: as :class:`NPLayer`, plus the whole row :math:`W^{(1)}_{k,:}` among the row features
      of layer 2 and the whole column :math:`W^{(L)}_{:,j}` among the column features of layer L-1.

    A few of these inputs are linear functions of others (e.g. :math:`W^{(1)}_{k\star}` of
    :math:`W^{(1)}_{k,:}`); they are kept so the feature sets are easy to read. Note: the reference package
    ``nfn`` 0.1.2 omits the :math:`v^{(L-1)}_k \to Y^{(L)}_{jk}` term (table 9, :math:`b_\phi^{L,L-1,j}`);
    we include it, so ``nfn`` equals this layer with those coefficients set to zero.

    Args:
        weight_shapes (sequence): the input weight space; input and output sizes and kernel sizes matter.
        in_channels (int): :math:`c_i`.
        out_channels (int): :math:`c_o`.

    Shapes:
        - **input / output:** :class:`NFFeatures` with ``in_channels`` / ``out_channels`` channels.
    """

    def __init__(self, weight_shapes: Sequence, in_channels: int, out_channels: int) -> None:
        super().__init__()
        dims = check_feedforward(weight_shapes, "HNPLayer")
        if len(dims) < 2:
            raise ValueError("HNPLayer needs at least 2 layers (a 1-layer network has no hidden neurons)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_layers = L = len(dims)
        ci, co = in_channels, out_channels
        self.n_in, self.n_out = dims[0][1], dims[-1][0]
        n0, nl = self.n_in, self.n_out
        fi = self.f_in = [k * ci for _, _, k in dims]
        fo = self.f_out = [k * co for _, _, k in dims]
        self.pool_dim = pool_dim(weight_shapes, ci, "hnp")
        # invariant outputs: weights then biases per layer; first-layer weights per input column,
        # last-layer weights and bias per output row
        w_sizes = [n0 * fo[0]] + fo[1:-1] + [nl * fo[-1]]
        b_sizes = [co] * (L - 1) + [nl * co]
        self.inv_sizes = w_sizes + b_sizes
        self.inv_weight = nn.Parameter(torch.empty(sum(self.inv_sizes), self.pool_dim))
        self.inv_bias = nn.Parameter(torch.empty(sum(self.inv_sizes)))
        # first layer: per hidden neuron j of layer 1
        first_in = n0 * fi[0] + fi[1] + ci + (nl * fi[1] if L == 2 else 0)
        self.first = nn.Parameter(torch.empty(n0 * fo[0] + co, first_in))     # weight rows, then bias rows
        # last layer: per hidden neuron k of layer L-1
        last_in = nl * fi[-1] + fi[-2] + ci + (n0 * fi[0] if L == 2 else 0)
        self.last = nn.Parameter(torch.empty(nl * fo[-1], last_in))
        self.point = nn.ParameterList()
        self.row = nn.ParameterList()
        self.col = nn.ParameterList()
        for i in range(1, L - 1):
            row_in = fi[i] + fi[i - 1] + ci + (n0 * fi[0] if i == 1 else 0)
            col_in = fi[i] + ci + fi[i + 1] + (nl * fi[-1] if i == L - 2 else 0)
            self.point.append(nn.Parameter(torch.empty(fo[i], fi[i])))
            self.row.append(nn.Parameter(torch.empty(fo[i], row_in)))
            self.col.append(nn.Parameter(torch.empty(fo[i] + co, col_in)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        L, co, P = self.num_layers, self.out_channels, self.pool_dim
        inv_w = self.inv_weight.data.split(self.inv_sizes, 0)
        fw, fb = self.first.data.split([self.first.size(0) - co, co], 0)
        _uniform_([inv_w[0], fw], P + self.first.size(1))
        _uniform_([inv_w[L], fb], P + self.first.size(1))
        _uniform_([inv_w[L - 1], self.last.data], P + self.last.size(1))
        _uniform_([inv_w[2 * L - 1]], P)
        for m, i in enumerate(range(1, L - 1)):
            fan_w = P + self.point[m].size(1) + self.row[m].size(1) + self.col[m].size(1)
            col_w, col_b = self.col[m].data.split([self.f_out[i], co], 0)
            _uniform_([inv_w[i], self.point[m].data, self.row[m].data, col_w], fan_w)
            _uniform_([inv_w[L + i], col_b], P + self.col[m].size(1))
        nn.init.zeros_(self.inv_bias)     # zero biases: ReLUs after the layer start data-dependent, not dead

    def forward(self, feats: NFFeatures) -> NFFeatures:
        W, v = feats
        L, co, n0, nl = self.num_layers, self.out_channels, self.n_in, self.n_out
        B = W[0].size(0)
        row_mean = [w.mean(1) for w in W]                                    # [B, n_{i-1}, F_i]
        col_mean = [w.mean(2) for w in W]                                    # [B, n_i, F_i]
        pooled = torch.cat([r.mean(1) for r in row_mean] + [b.mean(1) for b in v]
                           + [row_mean[0].flatten(1), col_mean[-1].flatten(1), v[-1].flatten(1)], -1)
        inv = F.linear(pooled, self.inv_weight, self.inv_bias).split(self.inv_sizes, -1)
        w0_rows = W[0].flatten(2)                                            # [B, n_1, n_0 F_0]
        wl_cols = W[-1].transpose(1, 2).flatten(2)                           # [B, n_{L-1}, n_L F_L]
        out_w, out_b = [None] * L, [None] * L

        # first layer: one linear map per hidden neuron j of layer 1 (its row of outputs)
        feats0 = [w0_rows, row_mean[1], v[0]] + ([wl_cols] if L == 2 else [])
        y, z = F.linear(torch.cat(feats0, -1), self.first).split([n0 * self.f_out[0], co], -1)
        out_w[0] = y.view(B, -1, n0, self.f_out[0]) + inv[0].view(B, 1, n0, -1)   # [B, n_1, n_0, Fo_0]
        out_b[0] = z + inv[L][:, None]                                             # [B, n_1, co]

        # last layer: one linear map per hidden neuron k of layer L-1 (its column of outputs)
        feats_l = [wl_cols, col_mean[-2], v[-2]] + ([w0_rows] if L == 2 else [])
        y = F.linear(torch.cat(feats_l, -1), self.last).view(B, -1, nl, self.f_out[-1])  # [B, n_{L-1}, n_L, Fo]
        out_w[-1] = y.transpose(1, 2) + inv[L - 1].view(B, nl, 1, -1)                   # [B, n_L, n_{L-1}, Fo]
        out_b[-1] = inv[2 * L - 1].view(B, nl, co)

        for m, i in enumerate(range(1, L - 1)):
            rows = [row_mean[i], col_mean[i - 1], v[i - 1]] + ([w0_rows] if i == 1 else [])
            cols = [col_mean[i], v[i], row_mean[i + 1]] + ([wl_cols] if i == L - 2 else [])
            r = F.linear(torch.cat(rows, -1), self.row[m])
            cw, cb = F.linear(torch.cat(cols, -1), self.col[m]).split([self.f_out[i], co], -1)
            y = F.linear(W[i], self.point[m])
            out_w[i] = y + (cw + inv[i][:, None])[:, :, None] + r[:, None]
            out_b[i] = cb + inv[L + i][:, None]
        return NFFeatures(tuple(out_w), tuple(out_b))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"num_layers={self.num_layers}, n_in={self.n_in}, n_out={self.n_out})")


class PointwiseLayer(nn.Module):
    r"""The pointwise ablation NFN\ :sub:`PT` (paper §3): only the last term of eq. 2,
    :math:`Y^{(i)}_{jk} = d^i W^{(i)}_{jk}`, :math:`z^{(i)}_j = d_v^i v^{(i)}_j` (plus biases); no interaction
    between weights. Equivariant to any permutation of the entries of each layer.

    Args:
        weight_shapes (sequence): the input weight space (number of layers and kernel sizes).
        in_channels (int): input channels.
        out_channels (int): output channels.
    """

    def __init__(self, weight_shapes: Sequence, in_channels: int, out_channels: int) -> None:
        super().__init__()
        dims = layer_dims(weight_shapes)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_layers = len(dims)
        self.weight_maps = nn.ModuleList(nn.Linear(k * in_channels, k * out_channels) for _, _, k in dims)
        self.bias_maps = nn.ModuleList(nn.Linear(in_channels, out_channels) for _ in dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in list(self.weight_maps) + list(self.bias_maps):
            m.reset_parameters()
            nn.init.zeros_(m.bias)        # as in NPLayer: ReLUs after the layer start data-dependent

    def forward(self, feats: NFFeatures) -> NFFeatures:
        return NFFeatures(tuple(f(w) for f, w in zip(self.weight_maps, feats.weights)),
                          tuple(f(b) for f, b in zip(self.bias_maps, feats.biases)))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"num_layers={self.num_layers})")


class IOEncoding(nn.Module):
    r"""IO-encoding (paper §2.2): position embeddings of the input and output neurons, which break the
    NP symmetry at the inputs and outputs while keeping hidden-neuron equivariance.

    ``dim`` channels are appended to every weight and bias feature (per kernel tap for convolutions): the
    embedding of input neuron ``q`` on every entry of column ``q`` of :math:`W^{(1)}`, the embedding of
    output neuron ``j`` on row ``j`` of :math:`W^{(L)}` and on :math:`v^{(L)}_j`, zeros elsewhere. (No layer
    embedding is needed: NF-layers have separate coefficients per layer.)

    Args:
        weight_shapes (sequence): the input weight space (for ``n_0``, ``n_L`` and kernel sizes).
        kind (str, optional): ``"sinusoidal"`` (fixed transformer encodings of the neuron index) or
            ``"learned"`` (free embeddings, :math:`\mathcal{N}(0, 1)` init). (default: ``"sinusoidal"``)
        dim (int, optional): embedding size, i.e. added channels. (default: :obj:`8`)

    Shapes:
        - **input:** :class:`NFFeatures` with ``C`` channels; **output:** with ``C + dim`` channels.
    """

    def __init__(self, weight_shapes: Sequence, kind: str = "sinusoidal", dim: int = 8) -> None:
        super().__init__()
        dims = layer_dims(weight_shapes)
        self.kind, self.dim = kind, dim
        self.taps = [k for _, _, k in dims]
        self.n_in, self.n_out = dims[0][1], dims[-1][0]
        if kind == "sinusoidal":
            self.register_buffer("in_emb", sinusoidal_encoding(torch.arange(self.n_in), dim), persistent=False)
            self.register_buffer("out_emb", sinusoidal_encoding(torch.arange(self.n_out), dim), persistent=False)
        elif kind == "learned":
            self.in_emb = nn.Parameter(torch.empty(self.n_in, dim))
            self.out_emb = nn.Parameter(torch.empty(self.n_out, dim))
        else:
            raise ValueError(f"unknown IO-encoding {kind!r}; choose 'sinusoidal' or 'learned'")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.kind == "learned":
            nn.init.normal_(self.in_emb)
            nn.init.normal_(self.out_emb)

    def forward(self, feats: NFFeatures) -> NFFeatures:
        W, v = feats
        L, d = len(W), self.dim
        out_w, out_b = [], []
        for i, (w, b) in enumerate(zip(W, v)):
            B, n, m, _ = w.shape
            k = self.taps[i]
            enc = w.new_zeros(1, n, m, d)
            if i == 0:
                enc = enc + self.in_emb.to(w.dtype)[None, None, :, :]      # column q of W^(1)
            if i == L - 1:
                enc = enc + self.out_emb.to(w.dtype)[None, :, None, :]     # row j of W^(L)
            enc = enc[..., None].expand(B, n, m, d, k)                      # same for every kernel tap
            out_w.append(torch.cat([w.view(B, n, m, -1, k), enc], 3).flatten(3))
            benc = self.out_emb.to(b.dtype)[None].expand(B, -1, -1) if i == L - 1 else b.new_zeros(B, n, d)
            out_b.append(torch.cat([b, benc], -1))
        return NFFeatures(tuple(out_w), tuple(out_b))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(kind={self.kind!r}, dim={self.dim})"
