"""Evaluation metrics (numpy in, float out)."""
from __future__ import annotations

import numpy as np
from scipy import stats


def kendall_tau(pred: np.ndarray, target: np.ndarray) -> float:
    """Kendall's tau-b rank correlation (scipy); 0 when either side is constant."""
    pred, target = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(target, dtype=np.float64).ravel()
    if pred.size < 2 or np.ptp(pred) == 0 or np.ptp(target) == 0:
        return 0.0
    return float(stats.kendalltau(pred, target).statistic)


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot."""
    pred, target = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(target, dtype=np.float64).ravel()
    ss_tot = float(((target - target.mean()) ** 2).sum())
    if ss_tot == 0:
        return 0.0
    return 1.0 - float(((target - pred) ** 2).sum()) / ss_tot


def mse(pred: np.ndarray, target: np.ndarray) -> float:
    pred, target = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(target, dtype=np.float64).ravel()
    return float(((pred - target) ** 2).mean())


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``[N, C]`` logits against integer labels."""
    return float((np.asarray(logits).argmax(-1) == np.asarray(labels).ravel()).mean())


REGRESSION_METRICS = {"kendall_tau": kendall_tau, "r2": r2, "mse": mse}
