"""A predictor with a chosen accuracy and error shape, for sweeps over "how good must prediction be?".

Each request's draw depends only on (seed, request id), never on arrival order or batching, so the same
config gives the same predictions in every engine and in step-by-step or multi-step simulation.
Error shapes (where the wrong predictions go):
- `uniform`: any other bucket, uniformly;
- `adjacent`: one bucket up or down (whichever exists; a coin flip when both do);
- `under`: one bucket lower (the costly error for S3: it causes preemption), or higher from bucket 0;
- `over`: one bucket higher (wastes memory), or lower from the last bucket.
"""
from __future__ import annotations

import math

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.core.hashing import GOLDEN, MASK64, mix64, mix64_int
from s3sim.core.predictors.base import Predictor
from s3sim.core.predictors.buckets import Buckets

ERROR_SHAPES = ("uniform", "adjacent", "under", "over")
GOLDEN_INT = int(GOLDEN)  # for `uniform_one`


def uniforms(seed: int, ids: np.ndarray, stream: int) -> np.ndarray:
    """Counter-based uniforms in [0, 1): splitmix64 of (seed, id, stream); vectorised and order-free."""
    with np.errstate(over="ignore"):
        x = mix64(ids.astype(np.uint64) * GOLDEN + np.uint64((seed * 1_000_003 + stream * 7919) & MASK64))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def uniform_one(seed: int, rid: int, stream: int) -> float:
    """`uniforms` of one id, in Python integers (each product and sum taken mod 2**64, as uint64 arrays do)."""
    x = mix64_int((rid * GOLDEN_INT + ((seed * 1_000_003 + stream * 7919) & MASK64)) & MASK64)
    return float(x >> 11) / float(1 << 53)


class SyntheticPredictor(Predictor):
    name = "synthetic"

    def __init__(self, buckets: Buckets, accuracy: float, error_shape: str = "uniform", seed: int = 0):
        super().__init__(buckets)
        if not 0.0 <= float(accuracy) <= 1.0:
            raise ConfigError(f"predictor.accuracy must be between 0 and 1, got {accuracy}")
        if error_shape not in ERROR_SHAPES:
            raise ConfigError(f"predictor.error_shape '{error_shape}' is unknown; valid: {', '.join(ERROR_SHAPES)}")
        self.accuracy = float(accuracy)
        self.error_shape = error_shape
        self.seed = int(seed)

    def predict(self, requests) -> np.ndarray:
        n = len(requests)
        if n <= 8:  # the few arrivals of one step, the common case in a simulation: the same draws in plain integers
            return np.array([self._predict_one(r.id, r.output_len) for r in requests], dtype=np.int64)
        ids = np.fromiter((r.id for r in requests), np.int64, n)
        true = self.buckets.of(np.fromiter((r.output_len for r in requests), np.int64, n))
        wrong = uniforms(self.seed, ids, 0) >= self.accuracy
        u = uniforms(self.seed, ids, 1)
        k = self.buckets.num
        if self.error_shape == "uniform":
            other = np.floor(u * (k - 1)).astype(np.int64)
            guess = other + (other >= true)  # skip the true bucket
        elif self.error_shape == "adjacent":
            step = np.where(u < 0.5, -1, 1)
            step = np.where(true == 0, 1, np.where(true == k - 1, -1, step))
            guess = true + step
        elif self.error_shape == "under":
            guess = np.where(true == 0, 1, true - 1)
        else:  # over
            guess = np.where(true == k - 1, k - 2, true + 1)
        return np.where(wrong, guess, true)

    def _predict_one(self, rid: int, output_len: int) -> int:
        """`predict` for one request, in Python integers and floats: the same bits as the arrays' arithmetic
        (uint64 mod 2**64, the same float operations), without numpy's cost per call."""
        true = self.buckets.of_one(output_len)
        u0, u1 = (uniform_one(self.seed, rid, stream) for stream in (0, 1))
        if not u0 >= self.accuracy:
            return true
        k = self.buckets.num
        if self.error_shape == "uniform":
            other = math.floor(u1 * (k - 1))
            return other + (other >= true)
        if self.error_shape == "adjacent":
            return true + (1 if true == 0 else -1 if true == k - 1 else -1 if u1 < 0.5 else 1)
        if self.error_shape == "under":
            return 1 if true == 0 else true - 1
        return k - 2 if true == k - 1 else true + 1
