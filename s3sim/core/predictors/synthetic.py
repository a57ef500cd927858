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

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.core.hashing import GOLDEN, mix64
from s3sim.core.predictors.base import Predictor
from s3sim.core.predictors.buckets import Buckets

ERROR_SHAPES = ("uniform", "adjacent", "under", "over")


def uniforms(seed: int, ids: np.ndarray, stream: int) -> np.ndarray:
    """Counter-based uniforms in [0, 1): splitmix64 of (seed, id, stream); vectorised and order-free."""
    with np.errstate(over="ignore"):
        x = mix64(ids.astype(np.uint64) * GOLDEN + np.uint64((seed * 1_000_003 + stream * 7919) & 0xFFFFFFFFFFFFFFFF))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


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
