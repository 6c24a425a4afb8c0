"""Training mode: a model whose function depends on its mode (BatchNorm, dropout) converts to the graph of its
eval-mode function, with a warning naming the modules; batch-statistics BatchNorm is refused."""
import warnings

import pytest
import torch
from torch import nn

from neuralgraph import UnsupportedModuleError, execute, to_neural_graph
from tests.helpers.permute import isomorphic


def _net(**bn) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, **bn), nn.ReLU(), nn.Dropout(0.3),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    if bn.get("track_running_stats", True):
        with torch.no_grad():
            m[1].running_mean.uniform_(-1, 1)
            m[1].running_var.uniform_(0.5, 2)
    return m


def test_training_mode_warns_and_converts_the_eval_function():
    m = _net().train()
    with pytest.warns(UserWarning, match=r"training mode.*1 \(BatchNorm2d\), 3 \(Dropout\).*model.eval\(\)"):
        g = to_neural_graph(m)
    x = torch.randn(4, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(execute(g, x), m.eval()(x), atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # eval mode: no warning, and the same graph
        assert isomorphic(to_neural_graph(m), g)


def test_no_warning_without_mode_dependent_modules():
    m = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.0), nn.ReLU(), nn.Linear(4, 2)).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_neural_graph(m)


def test_batch_statistics_batchnorm_refused():
    with pytest.raises(UnsupportedModuleError, match=r"1 \(torch.nn.modules.batchnorm.BatchNorm2d\).*"
                                                     r"track_running_stats=False"):
        to_neural_graph(_net(track_running_stats=False).eval())
