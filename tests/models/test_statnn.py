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


def test_a_feature_constant_in_training_does_not_saturate_the_predictions():
    """Cross-arch: trained on 3-layer networks (depth slots 0, 1, K-1), evaluated on 4-layer ones of other layer
    shapes. Slot 2 (empty in training) and the shape features (one value in a homogeneous zoo) had running
    variance ~0, so standardising scaled them ~300x and the MLP gave every test network one saturated prediction
    (the cross-arch StatNN row: tau 0.000, the same R^2 for every seed). Features constant in training are 0 at
    evaluation, as they were in training; the others are standardised as before."""
    torch.manual_seed(0)
    K = 6
    m = create_model("statnn", max_layers=K, hidden=(16,))
    train, test = collate(zoo("mlp", 8)), collate(zoo("cnn", 8, seed=1))
    m.train()
    with torch.no_grad():
        for _ in range(200):                                          # the running statistics settle
            m(train)
    m.eval()
    norm = m.norm
    with torch.no_grad():
        f = m.features(test)
        plain = (f - norm.running_mean) / (norm.running_var + norm.eps).sqrt()
        assert plain.abs().max() > 100                                # what the MLP used to get
        x = norm(f)
        assert x.abs().max() < 20                                     # what it gets
        const = norm.train_max == norm.train_min
        assert const.any() and x[:, const].eq(0).all()
        torch.testing.assert_close(x[:, ~const], plain[:, ~const], atol=1e-4, rtol=1e-4)  # the others as before
        out = m(test)
    assert torch.isfinite(out).all() and out.std() > 1e-3
    # the range is part of the state; a state dict saved before it loads, zeroing nothing
    state = m.state_dict()
    fresh = create_model("statnn", max_layers=K, hidden=(16,)).eval()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.norm.train_max == fresh.norm.train_min, const)
    old = {k: v for k, v in state.items() if not k.startswith("norm.train_")}
    fresh.load_state_dict(old)
    with torch.no_grad():
        torch.testing.assert_close(fresh.norm(f), plain, atol=1e-4, rtol=1e-4)
