import numpy as np
import pytest
from scipy import stats

from neuralgraph.metrics import accuracy, kendall_tau, mse, r2


def test_metrics_against_definitions():
    rng = np.random.default_rng(0)
    t = rng.random(50)
    p = t + 0.1 * rng.standard_normal(50)
    assert kendall_tau(p, t) == pytest.approx(stats.kendalltau(p, t).statistic)
    assert kendall_tau(t, t) == 1.0 and kendall_tau(-t, t) == -1.0
    assert kendall_tau(np.zeros(5), t[:5]) == 0.0
    assert r2(t, t) == 1.0 and r2(np.full(50, t.mean()), t) == pytest.approx(0.0)
    assert mse(p, t) == pytest.approx(((p - t) ** 2).mean())
    assert accuracy(np.array([[0, 1], [1, 0], [0, 1]]), np.array([1, 0, 0])) == pytest.approx(2 / 3)
