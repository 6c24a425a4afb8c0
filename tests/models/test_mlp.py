"""Flat-MLP baseline: input layout, homogeneous-only errors, standardisation."""
from __future__ import annotations

import pytest
import torch

from neuralgraph.models import create_model
from tests.models.weight_checks import collate, zoo


def test_flattened_input_and_standardisation():
    nets = zoo("mlp", 6)
    batch = collate(nets)
    m = create_model("mlp", weight_shapes=batch.groups[0].signature, hidden=(8,))
    assert m.num_params == sum(w[0].numel() + b[0].numel() for w, b in zip(nets[0].weights, nets[0].biases))
    m.train()
    m(batch)
    torch.testing.assert_close(m.norm.running_mean, 0.1 * batch.groups[0].flatten().mean(0))
    m.eval()
    assert m(batch).shape == (6, 1)


def test_errors_name_alternatives():
    mlps, cnns = zoo("mlp", 2), zoo("cnn", 2)
    m = create_model("mlp", weight_shapes=mlps[0].signature)
    with pytest.raises(ValueError, match="homogeneous zoo.*ng-gnn, ng-t or sne"):
        m(collate([mlps[0], cnns[0]]))
    with pytest.raises(ValueError, match="was built for weight space"):
        m(collate(cnns))
