"""The predictor interface shared by both engines: predict buckets for arriving requests, and receive
the supervisor's feedback (`observe`) so that a learning predictor can retrain online."""
from __future__ import annotations

import numpy as np

from s3sim.core.predictors.buckets import Buckets


class Predictor:
    name = "base"
    reprediction = None  # a re-prediction model of the remaining length (`predictor.repredict`), or None

    def __init__(self, buckets: Buckets):
        self.buckets = buckets
        self.observed = 0

    def predict(self, requests) -> np.ndarray:
        """Bucket index for each request (batched: one call per group of arrivals)."""
        raise NotImplementedError

    def probabilities(self, requests) -> np.ndarray:
        """Probability of each bucket per request, shape (n, buckets). A predictor that names one bucket
        puts all its mass there; a classifier returns its softmax."""
        pred = np.asarray(self.predict(requests), dtype=np.int64)
        out = np.zeros((len(pred), self.buckets.num), dtype=np.float32)
        out[np.arange(len(pred)), pred] = 1.0
        return out

    def observe(self, request, true_length: int) -> None:
        """Feedback from the supervisor: `request` really produced `true_length` tokens."""
        self.observed += 1
