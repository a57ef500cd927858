"""The S3 supervisor: acts when a request outgrows its predicted reservation, and reports mistakes.

On overflow the reservation is enlarged to the next bucket (`grow=next`), to max_seq_len (`grow=max`), or
to the bucket at `quantile` of the predicted distribution conditioned on the length already generated
(`grow=conditional`: the buckets above the current one, renormalised; a predictor without a distribution
falls back to `next`). By default (`in_place=True`) the reservation grows where it is when that much memory
is free, and the request is preempted only when it is not; `in_place=False` is the paper's supervisor,
which preempts every overflowing request even with memory free. A preempted request's memory is released
and it is re-queued with the larger reservation, its KV either dropped and recomputed later (`recompute`)
or kept in host memory and copied back (`swap`). Every finished request whose first bucket was wrong is
counted and fed back to the predictor through `observe` (the paper's choice; `feedback="all"` reports every
finished request, which a predictor facing a shift learns more from).
"""
from __future__ import annotations

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.core.predictors.base import Predictor
from s3sim.core.request import Request

GROW_MODES = ("next", "max", "conditional")
FEEDBACK = ("mispredicted", "all")


def check_quantile(q, field: str = "policy.quantile") -> float:
    """A quantile of a predicted distribution: strictly between 0 and 1 (one line naming the field if not)."""
    try:
        v = float(q)
    except (TypeError, ValueError):
        v = float("nan")
    if not 0.0 < v < 1.0:
        raise ConfigError(f"{field} must be a fraction strictly between 0 and 1, got {q!r}")
    return v


def quantile_bucket(dist: np.ndarray, q: float, above: int = -1) -> int:
    """The first bucket (> `above`) where the distribution, restricted to buckets above `above` and
    renormalised, reaches `q`; -1 when it puts no mass there."""
    tail = np.asarray(dist[above + 1:], dtype=np.float64)
    total = tail.sum()
    if not total > 0:
        return -1
    j = int(np.searchsorted(np.cumsum(tail) / total, q - 1e-12))
    return above + 1 + min(j, len(tail) - 1)


class Supervisor:
    def __init__(self, predictor: Predictor, grow: str = "next", in_place: bool = True,
                 feedback: str = "mispredicted", quantile: float = 0.5):
        if grow not in GROW_MODES:
            raise ConfigError(f"supervisor.grow '{grow}' is unknown; valid: {', '.join(GROW_MODES)}")
        if feedback not in FEEDBACK:
            raise ConfigError(f"predictor.feedback '{feedback}' is unknown; valid: {', '.join(FEEDBACK)}")
        self.feedback = feedback
        self.predictor = predictor
        self.buckets = predictor.buckets
        self.grow = grow
        self.in_place = bool(in_place)
        self.quantile = check_quantile(quantile)
        self.overflows = 0
        self.grown_in_place = 0
        self.mispredictions = 0
        self.under_predictions = 0
        self.over_predictions = 0

    def next_bucket(self, r: Request) -> int:
        last = self.buckets.num - 1
        if self.grow == "max":
            return last
        if self.grow == "conditional" and r.dist is not None:
            b = quantile_bucket(r.dist, self.quantile, above=r.bucket)
            if b >= 0:
                return b
        return min(r.bucket + 1, last)

    def on_overflow(self, r: Request) -> int:
        """Choose the bucket the request's reservation grows to; returns it."""
        self.overflows += 1
        return self.next_bucket(r)

    def on_finish(self, r: Request) -> None:
        true_bucket = self.buckets.of_one(r.output_len)
        if true_bucket != r.first_bucket:
            self.mispredictions += 1
            if true_bucket > r.first_bucket:
                self.under_predictions += 1
            else:
                self.over_predictions += 1
        if true_bucket != r.first_bucket or self.feedback == "all":
            self.predictor.observe(r, r.output_len)
        r.dist = None
