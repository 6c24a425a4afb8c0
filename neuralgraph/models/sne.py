"""SNE: Set-based Neural network Encoder (pad-chunk-encode), with logit-invariance regularisation.

`Andreis et al., "Set-based Neural Network Encoding" <https://arxiv.org/abs/2305.16625>`_ and
"... Without Weight Tying" (logit invariance). No public implementation exists; every choice we made
where the papers are silent is listed in ``docs/models.md`` (section SNE).

Pipeline for one network (all chunks, layers and networks of a batch are processed together):

1. **pad-chunk** each layer: weights of a linear layer flattened whole, of a convolution per filter
   (over the kernel taps), biases flattened; zero-padded to a multiple of the chunk size ``c``; chunks of
   ``c`` values with a mask of the real ones.
2. **chunk encoder** (eq. 6): value embedding (+ position in the chunk), SAB x depth, + layer-type and
   layer-level sinusoidal encodings, SAB x depth, PMA(k=1) -> one vector per chunk.
3. **layer encoder** (eq. 7): over the chunks of a layer's weights (resp. biases): SAB x depth,
   + level encoding, PMA.
4. **weights+bias combiner** (appendix F, "separated layer encoder"): SAB x depth, PMA over the pair.
5. **network encoder** (eq. 9): + level encoding, SAB x depth, PMA over the layers -> ``z``.
6. **predictor** MLP (table 8) -> ``out_dim`` raw outputs (the task applies sigmoid / BCE).
"""
from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuralgraph.data.weightspace import WeightSpace, WeightSpaceBatch
from neuralgraph.nn.feedforward import mlp
from neuralgraph.models.registry import register_model
from neuralgraph.nn.set_layers import PMA, SAB, sinusoidal_encoding

# layer-type ids for the type encoding: biases, then weights by number of kernel dims
TYPE_BIAS, TYPE_LINEAR, TYPE_CONV1D, TYPE_CONV2D, TYPE_CONV3D = range(5)


def layer_type(weight: Tensor) -> int:
    """Type id of a ``[B, out, in, *kernel]`` weight: linear, conv1d, conv2d, conv3d, ..."""
    return TYPE_LINEAR + max(weight.dim() - 3, 0)


def pad_chunk(x: Tensor, c: int, pad_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """Pad the last dim of ``x`` ``[*, n]`` to a multiple of ``c`` and split it into chunks.

    Returns:
        chunks ``[*, ceil(n / c), c]`` and the mask of real values (same shape, bool).
    """
    n = x.size(-1)
    q = max(1, -(-n // c))
    mask = torch.arange(q * c, device=x.device) < n
    x = F.pad(x, (0, q * c - n), value=pad_value)
    return x.unflatten(-1, (q, c)), mask.view(q, c).expand(x.shape[:-1] + (q, c))


def chunk_layer(weight: Tensor, c: int, pad_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """Chunks of one layer's weights ``[B, out, in, *kernel]`` -> ``[B, q, c]`` chunks and mask.

    Linear layers are flattened whole; convolutions are chunked per filter over the kernel taps (SNE §3.2),
    so a chunk never mixes two filters.
    """
    B = weight.size(0)
    if weight.dim() <= 3:
        chunks, mask = pad_chunk(weight.reshape(B, -1), c, pad_value)                  # [B, q, c]
    else:
        chunks, mask = pad_chunk(weight.flatten(3).flatten(1, 2), c, pad_value)        # [B, out*in, q', c]
        chunks, mask = chunks.flatten(1, 2), mask.flatten(1, 2)
    return chunks, mask


def permute_hidden_neurons(ws: WeightSpace, generator: Optional[torch.Generator] = None) -> WeightSpace:
    """A random function-preserving hidden-neuron permutation of each network (independently).

    For every layer ``l`` but the last, the outputs (rows of ``W^(l)``, entries of ``v^(l)``) and the
    matching inputs of layer ``l + 1`` are permuted together. If layer ``l + 1`` has ``r`` times as many
    inputs as layer ``l`` has outputs, its inputs are taken to be the channel-major flatten of an
    ``out x r`` map (``nn.Flatten`` after a convolution) and are permuted in blocks of ``r``; if the sizes
    are not multiples, layer ``l`` is left alone.

    Exact for plain feed-forward chains (Linear / Conv with element-wise activations and pooling between
    them). **Not** function-preserving for residual networks (a skip connection ties the neurons of
    several layers: they must be permuted jointly) or for normalisation layers stored as extra layers.
    """
    W, v = list(ws.weights), list(ws.biases)
    B = len(ws)
    for l in range(len(W) - 1):
        n, n_next = W[l].size(1), W[l + 1].size(2)
        if n_next % n != 0:
            continue
        perm = torch.rand(B, n, generator=generator).argsort(1).to(W[l].device)          # [B, n]
        W[l] = W[l].gather(1, perm.view(B, n, *[1] * (W[l].dim() - 2)).expand_as(W[l]))
        v[l] = v[l].gather(1, perm)
        r = n_next // n
        cols = (perm[:, :, None] * r + torch.arange(r, device=perm.device)).view(B, n_next)
        W[l + 1] = W[l + 1].gather(2, cols.view(B, 1, n_next, *[1] * (W[l + 1].dim() - 3)).expand_as(W[l + 1]))
    return WeightSpace(tuple(W), tuple(v))


class _SetEncoder(nn.Module):
    """``depth`` SABs then PMA(k=1); an optional additive encoding between them (eqs. 7, 9)."""

    def __init__(self, dim: int, heads: int, depth: int, layer_norm: bool) -> None:
        super().__init__()
        self.sabs = nn.ModuleList(SAB(dim, heads, layer_norm=layer_norm) for _ in range(depth))
        self.pma = PMA(dim, 1, heads, layer_norm=layer_norm)

    def reset_parameters(self) -> None:
        for m in [*self.sabs, self.pma]:
            m.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor, pre: Optional[Tensor] = None, mid: Optional[Tensor] = None) -> Tensor:
        if pre is not None:
            x = x + pre
        for sab in self.sabs:
            x = sab(x, mask)
        if mid is not None:
            x = x + mid
        return self.pma(x, mask).squeeze(1)                                    # [S, dim]


@register_model("sne")
class SNE(nn.Module):
    r"""Set-based neural network encoder for networks of any architecture.

    .. math::
        z = \Gamma_\gamma\Phi_4\big(\mathrm{PE}_{lvl} + [\,\Gamma_{wb}\Phi_{wb}(\{
        \Gamma_\beta(\mathrm{PE}_{lvl} + \Phi_3(\{\Gamma_\alpha\Phi_2(\mathrm{PE}_{type} + \mathrm{PE}_{lvl}
        + \Phi_1(\text{chunk}))\}))\}_{\text{weights, bias}})\,]_{\text{layers}}\big), \quad y = \mathrm{MLP}(z)

    (:math:`\Phi` = SAB stacks, :math:`\Gamma` = PMA with one seed). Sizes are scaled down from the paper for
    CPU (paper: hidden 512, encoding 1024, chunk 32, predictor 1000-1000): see ``docs/models.md``.

    Not permutation invariant by construction (chunks of a linear layer mix neurons); the logit-invariance
    regulariser (:meth:`regularizer`) learns the invariance instead.

    Args:
        out_dim (int, optional): output size. (default: :obj:`1`)
        chunk_size (int, optional): ``c``, values per chunk. (default: :obj:`16`)
        hidden (int, optional): width of the layer, combiner and network encoders and of ``z``. (default: :obj:`32`)
        heads (int, optional): attention heads of those encoders. (default: :obj:`4`)
        depth (int, optional): SABs per set-to-set stage (paper: 2). (default: :obj:`2`)
        chunk_hidden (int, optional): width of the chunk encoder, which sees every value of the network and
            dominates the cost; projected to ``hidden`` after its PMA. (default: :obj:`16`)
        chunk_heads (int, optional): attention heads of the chunk encoder. (default: :obj:`2`)
        head_hidden (sequence of int, optional): predictor hidden sizes. (default: ``(256, 256)``)
        layer_norm (bool, optional): layer norms in the attention blocks (paper: off). (default: :obj:`False`)
        element_encoding (bool, optional): add the position of each value within its chunk. (default: :obj:`True`)
        logit_invariance (bool, optional): enable :meth:`regularizer`. (default: :obj:`True`)
        invariance_weight (float, optional): weight of the regulariser. (default: :obj:`1.0`)
        dropout (float, optional): dropout in the predictor. (default: :obj:`0.0`)

    Shapes:
        - **input:** :class:`WeightSpaceBatch` of ``B`` networks (any mix of architectures)
        - **output:** ``[B, out_dim]`` (raw)
    """

    input_kind: ClassVar[str] = "weights"
    permutation_invariant: ClassVar[bool] = False

    def __init__(self, out_dim: int = 1, chunk_size: int = 16, hidden: int = 32, heads: int = 4, depth: int = 2,
                 chunk_hidden: int = 16, chunk_heads: int = 2, head_hidden: Sequence[int] = (256, 256),
                 layer_norm: bool = False, element_encoding: bool = True, logit_invariance: bool = True,
                 invariance_weight: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.out_dim, self.chunk_size, self.hidden, self.chunk_hidden = out_dim, chunk_size, hidden, chunk_hidden
        self.element_encoding = element_encoding
        self.logit_invariance, self.invariance_weight = logit_invariance, float(invariance_weight)
        self.pad_value = 0.0                       # padded values are masked: any value gives the same output
        self.value_embed = nn.Linear(1, chunk_hidden)
        self.phi1 = nn.ModuleList(SAB(chunk_hidden, chunk_heads, layer_norm=layer_norm) for _ in range(depth))
        self.chunk_encoder = _SetEncoder(chunk_hidden, chunk_heads, depth, layer_norm)  # Phi_2 + Gamma_alpha
        self.chunk_proj = nn.Linear(chunk_hidden, hidden)
        self.layer_encoder = _SetEncoder(hidden, heads, depth, layer_norm)     # Phi_3 + Gamma_beta
        self.wb_encoder = _SetEncoder(hidden, heads, depth, layer_norm)        # weights + bias combiner
        self.net_encoder = _SetEncoder(hidden, heads, depth, layer_norm)       # Phi_4 + Gamma_gamma
        self.head = mlp(hidden, tuple(head_hidden), out_dim, dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.value_embed.reset_parameters()
        self.chunk_proj.reset_parameters()
        for m in [*self.phi1, self.chunk_encoder, self.layer_encoder, self.wb_encoder, self.net_encoder, self.head]:
            m.reset_parameters()

    # positional encodings: distinct periods so type and level codes do not coincide
    @staticmethod
    def _type_pe(t: Tensor, dim: int) -> Tensor:
        return sinusoidal_encoding(t, dim, max_period=100.0)

    @staticmethod
    def _level_pe(l: Tensor, dim: int) -> Tensor:
        return sinusoidal_encoding(l, dim, max_period=10_000.0)

    def encode(self, batch: WeightSpaceBatch) -> Tensor:
        """Network encodings ``z`` ``[B, hidden]`` in batch order."""
        c, device = self.chunk_size, batch.groups[0].weights[0].device
        # 1. pad-chunk every (group, layer, part) into one flat list of chunks, sorted by set id
        values, masks, types, levels, set_ids = [], [], [], [], []
        n_sets = 0
        pair_sets = []                 # per group: [L_g, 2, B_g] set ids of (layer, weights/bias, network)
        for g in batch.groups:
            B = len(g)
            ids = torch.empty(len(g.weights), 2, B, dtype=torch.long)
            for l, (w, b) in enumerate(zip(g.weights, g.biases)):
                for part, (x, m) in enumerate((chunk_layer(w, c, self.pad_value), pad_chunk(b, c, self.pad_value))):
                    q = x.size(1)
                    values.append(x.reshape(B * q, c))
                    masks.append(m.reshape(B * q, c))
                    types.append(torch.full((B * q,), TYPE_BIAS if part else layer_type(w)))
                    levels.append(torch.full((B * q,), l))
                    set_ids.append(torch.arange(n_sets, n_sets + B).repeat_interleave(q))
                    ids[l, part] = torch.arange(n_sets, n_sets + B)
                    n_sets += B
            pair_sets.append(ids)
        x = torch.cat(values)                                                  # [N, c]
        mask = torch.cat(masks).to(device)                                     # [N, c]
        types, levels = torch.cat(types).to(device), torch.cat(levels).to(device)
        set_ids = torch.cat(set_ids).to(device)

        # 2. chunk encoder (eq. 6)
        Hc, H = self.chunk_hidden, self.hidden
        h = self.value_embed(x.unsqueeze(-1))                                  # [N, c, Hc]
        if self.element_encoding:
            h = h + self._level_pe(torch.arange(c, device=device), Hc)        # position within the chunk
        for sab in self.phi1:
            h = sab(h, mask)
        pe = (self._type_pe(types, Hc) + self._level_pe(levels, Hc))[:, None]  # [N, 1, Hc]
        h = self.chunk_proj(self.chunk_encoder(h, mask, pre=pe))              # [N, H]

        # 3. layer encoder over the chunks of each (layer, part) set (eq. 7). Sets differ in size by
        # orders of magnitude (a bias: 1 chunk, a 32x32 7x7 conv: 4096), so instead of padding every set to
        # the largest, sets of equal size are stacked and encoded together, without padding.
        set_level = torch.zeros(n_sets, dtype=torch.long, device=device).scatter_(0, set_ids, levels)
        level_pe = self._level_pe(set_level, H)                                 # [S, H]
        sizes = torch.bincount(set_ids, minlength=n_sets)                      # chunks per set
        starts = sizes.cumsum(0) - sizes                                       # chunks are sorted by set id
        parts, order = [], []
        for q in sizes.unique().tolist():
            sets = (sizes == q).nonzero().squeeze(1)                          # [S_q]
            rows = starts[sets, None] + torch.arange(q, device=device)         # [S_q, q]
            parts.append(self.layer_encoder(h[rows], None, mid=level_pe[sets][:, None]))
            order.append(sets)
        s = torch.cat(parts)[torch.argsort(torch.cat(order))]                  # [S, H] in set order

        # 4. weights + bias combiner, 5. network encoder (eq. 9), per architecture group
        zs = []
        for ids in pair_sets:
            L, _, B = ids.shape
            pairs = s[ids.permute(0, 2, 1).reshape(-1, 2).to(device)]          # [L*B, 2, H]
            layer_enc = self.wb_encoder(pairs, torch.ones(L * B, 2, dtype=torch.bool, device=device))
            layer_enc = layer_enc.view(L, B, -1).transpose(0, 1)                # [B, L, H]
            zs.append(layer_enc)
        L_max = max(z.size(1) for z in zs)
        seq = torch.cat([F.pad(z, (0, 0, 0, L_max - z.size(1))) for z in zs])  # [B, L_max, H] (group order)
        smask = torch.cat([torch.arange(L_max, device=device).expand(z.size(0), L_max) < z.size(1) for z in zs])
        z = self.net_encoder(seq, smask, pre=self._level_pe(torch.arange(L_max, device=device), H)[None])
        return batch.scatter(list(z.split([len(g) for g in batch.groups])))    # [B, H] (batch order)

    def forward(self, batch: WeightSpaceBatch) -> Tensor:
        return self.head(self.encode(batch))                                   # [B, out_dim]

    def regularizer(self, batch: WeightSpaceBatch, out: Tensor,
                    generator: Optional[torch.Generator] = None) -> Tensor:
        r"""Logit-invariance loss :math:`\lambda\, \mathrm{mean}\, \| f(\sigma U) - f(U) \|^2` for one random
        function-preserving hidden-neuron permutation :math:`\sigma` per network
        (:func:`permute_hidden_neurons`); ``out`` = ``self(batch)``. Zero if ``logit_invariance`` is off."""
        if not self.logit_invariance or self.invariance_weight == 0.0:
            return out.new_zeros(())
        # only plain feed-forward networks have the layer-by-layer permutation symmetry used here
        keep = [k for k, g in enumerate(batch.groups) if g.feedforward]
        if not keep:
            return out.new_zeros(())
        groups = [permute_hidden_neurons(batch.groups[k], generator) for k in keep]
        positions = [batch.positions[k] for k in keep]
        rows = torch.cat(positions)
        # renumber the kept networks 0..n-1 so the permuted batch scatters into its own order
        order = torch.empty(int(rows.max()) + 1, dtype=torch.long, device=rows.device)
        order[rows] = torch.arange(rows.numel(), device=rows.device)
        permuted = WeightSpaceBatch(groups, [order[p] for p in positions])
        return self.invariance_weight * (self(permuted) - out[rows]).pow(2).mean()
