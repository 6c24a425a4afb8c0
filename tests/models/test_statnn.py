"""StatNN: the statistics, the depth-slot mapping for heterogeneous zoos, exact invariance."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralgraph.data import WeightSpace
from neuralgraph.models import create_model
from neuralgraph.models.statnn import SLOT_FEATURES, STATS_PER_TENSOR, slot_features, tensor_stats
from tests.models.weight_checks import collate, permuted_pair, zoo


def test_tensor_stats_match_numpy():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    s = tensor_stats(x)
    for i in range(3):
        v = x[i].flatten().numpy()
        ref = [v.mean(), v.var(ddof=1), *np.quantile(v, [0, 0.25, 0.5, 0.75, 1.0])]
        np.testing.assert_allclose(s[i].numpy(), ref, rtol=1e-12)


def test_slots_align_first_and_last_layers():
    deep, shallow = zoo("cnn", 1)[0], zoo("mlp", 1)[0]           # 4 and 3 layers
    K = 6
    fd = slot_features(deep, K).view(K, SLOT_FEATURES)
    fs = slot_features(shallow, K).view(K, SLOT_FEATURES)
    assert fd[:, -1].tolist() == [1, 1, 1, 0, 0, 1]             # mask: layers 0-2, gap, last layer
    assert fs[:, -1].tolist() == [1, 1, 0, 0, 0, 1]
    torch.testing.assert_close(fd[-1, :STATS_PER_TENSOR], tensor_stats(deep.weights[-1])[0])
    torch.testing.assert_close(fs[1, :STATS_PER_TENSOR], tensor_stats(shallow.weights[1])[0])
    assert fd[3].abs().sum() == 0
    with pytest.raises(ValueError, match="max_layers=3"):
        slot_features(deep, 3)


def test_homogeneous_depth_equals_concatenation():
    ws = zoo("cnn", 2)[0]
    f = slot_features(ws, len(ws.weights)).view(1, -1, SLOT_FEATURES)
    ref = torch.stack([torch.cat([tensor_stats(w), tensor_stats(b)], 1) for w, b in zip(ws.weights, ws.biases)], 1)
    torch.testing.assert_close(f[..., :2 * STATS_PER_TENSOR], ref)


def test_max_layers_default_from_weight_shapes():
    ws = zoo("cnn", 1)[0]
    assert create_model("statnn", weight_shapes=ws.signature).max_layers == 4
    assert create_model("statnn").max_layers == 8


def test_invariance_is_exact_for_any_permutation_within_layers():
    ws, ws_perm = permuted_pair("cnn")
    m = create_model("statnn", hidden=(8,)).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(collate([ws])), m(collate([ws_perm])), atol=1e-6, rtol=1e-6)
    shuffled = WeightSpace(tuple(w.flatten(1)[:, torch.randperm(w[0].numel())].view_as(w) for w in ws.weights),
                           ws.biases)
    with torch.no_grad():
        torch.testing.assert_close(m(collate([ws])), m(collate([shuffled])), atol=1e-6, rtol=1e-6)
