"""Set Transformer blocks: permutation symmetry and padding masks."""
from __future__ import annotations

import torch

from neuralgraph.nn import MAB, PMA, SAB, sinusoidal_encoding


def test_sab_equivariant_pma_invariant():
    torch.manual_seed(0)
    sab, pma = SAB(8, heads=2), PMA(8, num_seeds=2, heads=2)
    x = torch.randn(3, 5, 8)
    perm = torch.randperm(5)
    y = sab(x)
    assert y.shape == (3, 5, 8) and pma(x).shape == (3, 2, 8)
    torch.testing.assert_close(sab(x[:, perm]), y[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pma(x[:, perm]), pma(x), atol=1e-5, rtol=1e-5)


def test_padding_is_ignored():
    torch.manual_seed(0)
    sab, pma = SAB(8, heads=4, layer_norm=True), PMA(8, heads=4)
    x = torch.randn(2, 4, 8)
    padded = torch.cat([x, 100 * torch.randn(2, 3, 8)], 1)                 # 3 padded elements
    mask = torch.arange(7).expand(2, 7) < 4
    torch.testing.assert_close(sab(padded, mask)[:, :4], sab(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pma(padded, mask), pma(x), atol=1e-5, rtol=1e-5)


def test_gradients_and_repr():
    mab = MAB(8, heads=2, ff_hidden=16)
    mab(torch.randn(2, 3, 8), torch.randn(2, 4, 8)).sum().backward()
    assert all(p.grad is not None for p in mab.parameters())
    assert "heads=2" in repr(mab)


def test_sinusoidal_encoding():
    pe = sinusoidal_encoding(torch.arange(5), 6)
    assert pe.shape == (5, 6)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0] * 3))
    assert len({tuple(r.tolist()) for r in pe}) == 5
