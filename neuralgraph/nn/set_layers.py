"""Set Transformer blocks with padding masks: MAB, SAB and PMA.

`Lee et al., "Set Transformer" (ICML 2019) <https://arxiv.org/abs/1810.00825>`_, the set-to-set and
set-to-vector functions of SNE (`Andreis et al. <https://arxiv.org/abs/2305.16625>`_, eqs. 10-13).

Sets of different sizes are batched by padding to a common size ``N`` with a boolean mask
``[B, N]`` (``True`` = real element). Padded elements never act as keys, so they cannot change the
output of a real element, and the pooled output of :class:`PMA` does not depend on them.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def lecun_normal_(linear: nn.Linear) -> None:
    """Weights :math:`\\mathcal{N}(0, 1/\\text{fan-in})`, zero bias.

    PyTorch's default ``nn.Linear`` init shrinks activations by about :math:`\\sqrt{3}` per layer; in a
    stack of attention blocks without layer norm (SNE's setting) the residual stream is then dominated by
    the constant seeds and encodings, and the input-dependent part of the output all but vanishes (we
    measured 1e-7 of its size after SNE's four pooling stages). This init keeps it of order one.
    """
    nn.init.normal_(linear.weight, 0.0, 1.0 / math.sqrt(linear.in_features))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class MAB(nn.Module):
    r"""Multihead attention block.

    .. math::
        H = \mathrm{LN}(X + \mathrm{MultiHead}(X, Y, Y)), \qquad
        \mathrm{MAB}(X, Y) = \mathrm{LN}(H + \mathrm{rFF}(H))

    with the layer norms optional (SNE uses none, paper table 7).

    Args:
        dim (int): feature size of queries, keys and outputs.
        heads (int, optional): number of attention heads; must divide ``dim``. (default: :obj:`4`)
        ff_hidden (int, optional): hidden size of the row-wise feed-forward net (default: ``dim``).
        layer_norm (bool, optional): apply the two layer norms. (default: :obj:`False`)

    Shapes:
        - **input:** queries ``[B, Nq, dim]``, keys ``[B, Nk, dim]``, optional key mask ``[B, Nk]`` (bool)
        - **output:** ``[B, Nq, dim]``
    """

    def __init__(self, dim: int, heads: int = 4, ff_hidden: Optional[int] = None,
                 layer_norm: bool = False) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.dim, self.heads = dim, heads
        self.ff_hidden = ff_hidden or dim
        self.layer_norm = layer_norm
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.o = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, self.ff_hidden), nn.ReLU(), nn.Linear(self.ff_hidden, dim))
        self.ln0 = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.ln1 = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                lecun_normal_(m)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()

    def forward(self, x: Tensor, y: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        B, Nq, D = x.shape
        Nk, h = y.size(1), self.heads
        q = self.q(x).view(B, Nq, h, D // h).transpose(1, 2)               # [B, h, Nq, D/h]
        k, v = self.kv(y).view(B, Nk, 2, h, D // h).permute(2, 0, 3, 1, 4)  # 2 x [B, h, Nk, D/h]
        attn_mask = None if mask is None else mask[:, None, None, :]        # [B, 1, 1, Nk]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)    # [B, h, Nq, D/h]
        hid = self.ln0(x + self.o(a.transpose(1, 2).reshape(B, Nq, D)))      # [B, Nq, D]
        return self.ln1(hid + self.ff(hid))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(dim={self.dim}, heads={self.heads}, layer_norm={self.layer_norm})"


class SAB(nn.Module):
    r"""Set attention block, a permutation-equivariant set-to-set map: :math:`\mathrm{SAB}(X) = \mathrm{MAB}(X, X)`.

    Args:
        dim (int): element feature size.
        heads (int, optional): attention heads. (default: :obj:`4`)
        ff_hidden (int, optional): row-wise feed-forward hidden size. (default: ``dim``)
        layer_norm (bool, optional): use layer norms in the MAB. (default: :obj:`False`)

    Shapes:
        - **input:** ``[B, N, dim]``, optional mask ``[B, N]`` (bool, ``True`` = real element)
        - **output:** ``[B, N, dim]`` (rows of padded elements are meaningless)
    """

    def __init__(self, dim: int, heads: int = 4, ff_hidden: Optional[int] = None,
                 layer_norm: bool = False) -> None:
        super().__init__()
        self.mab = MAB(dim, heads, ff_hidden, layer_norm)

    def reset_parameters(self) -> None:
        self.mab.reset_parameters()

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return self.mab(x, x, mask)

    def __repr__(self) -> str:
        return f"SAB(dim={self.mab.dim}, heads={self.mab.heads}, layer_norm={self.mab.layer_norm})"


class PMA(nn.Module):
    r"""Pooling by multihead attention, a permutation-invariant set-to-vector map.

    .. math::
        \mathrm{PMA}_k(X) = \mathrm{MAB}(S, \mathrm{rFF}(X)), \qquad S \in \mathbb{R}^{k \times d}
        \text{ learned seeds}

    Args:
        dim (int): element feature size.
        num_seeds (int, optional): ``k``, the number of output vectors. (default: :obj:`1`)
        heads (int, optional): attention heads. (default: :obj:`4`)
        ff_hidden (int, optional): feed-forward hidden size. (default: ``dim``)
        layer_norm (bool, optional): use layer norms in the MAB. (default: :obj:`False`)

    Shapes:
        - **input:** ``[B, N, dim]``, optional mask ``[B, N]`` (every set needs one real element)
        - **output:** ``[B, k, dim]``
    """

    def __init__(self, dim: int, num_seeds: int = 1, heads: int = 4, ff_hidden: Optional[int] = None,
                 layer_norm: bool = False) -> None:
        super().__init__()
        self.num_seeds = num_seeds
        self.seeds = nn.Parameter(torch.empty(1, num_seeds, dim))
        self.rff = nn.Sequential(nn.Linear(dim, ff_hidden or dim), nn.ReLU(), nn.Linear(ff_hidden or dim, dim))
        self.mab = MAB(dim, heads, ff_hidden, layer_norm)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.seeds, -1 / math.sqrt(self.seeds.size(-1)), 1 / math.sqrt(self.seeds.size(-1)))
        for m in self.rff:
            if isinstance(m, nn.Linear):
                lecun_normal_(m)
        self.mab.reset_parameters()

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return self.mab(self.seeds.expand(x.size(0), -1, -1), self.rff(x), mask)

    def __repr__(self) -> str:
        return f"PMA(dim={self.mab.dim}, num_seeds={self.num_seeds}, heads={self.mab.heads})"


def sinusoidal_encoding(pos: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    r"""Transformer positional encoding (Vaswani et al. 2017) of integer or real positions.

    .. math::
        \mathrm{PE}(p)_{2i} = \sin(p / T^{2i/d}), \quad \mathrm{PE}(p)_{2i+1} = \cos(p / T^{2i/d})

    Shapes:
        - **input:** ``pos`` of any shape ``[*]``
        - **output:** ``[*, dim]``
    """
    half = (dim + 1) // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    ang = pos.to(torch.float32)[..., None] * freqs                         # [*, half]
    pe = torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(-2)          # [*, 2 * half]
    return pe[..., :dim]
