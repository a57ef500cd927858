"""The ranking heads of `s3sim.predictor.trained.rank` on features whose order is known: the pairwise (RankNet)
head and the log-length regression recover it, and a feature carrying no signal ranks at chance."""
import numpy as np
import pytest

from s3sim.predictor.trained.evaluate import kendall_tau_b
from s3sim.predictor.trained.rank import fit_pairwise, fit_regression, standardise


def data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    length = np.exp(2.0 * x[:, 1] - 1.0 * x[:, 3] + 0.3 * rng.normal(size=n)) * 50
    return x, np.round(length) + 1


def test_both_heads_learn_an_order_the_features_carry():
    x, length = data(600, 0)
    xt, lt = data(400, 1)
    xs, xts = standardise(x, xt)
    pair = xts @ fit_pairwise(xs, length, pairs=20_000, epochs=10)
    reg = np.c_[xts, np.ones(len(xts))] @ fit_regression(xs, length)
    assert kendall_tau_b(pair, lt) > 0.7 and kendall_tau_b(reg, lt) > 0.7
    noise = np.random.default_rng(2).normal(size=(400, 5)).astype(np.float32)
    assert abs(kendall_tau_b(noise @ fit_pairwise(xs, length, pairs=20_000, epochs=10), lt)) < 0.15


def test_standardise_uses_the_training_statistics():
    a, b = np.array([[1.0, 2.0], [3.0, 6.0]]), np.array([[2.0, 4.0]])
    sa, sb = standardise(a, b)
    assert sa.mean(0) == pytest.approx([0, 0]) and sb[0] == pytest.approx([0, 0])
