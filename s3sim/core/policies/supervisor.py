"""The S3 supervisor: acts when a request outgrows its predicted reservation, and reports mistakes.

On overflow the reservation is enlarged to the next bucket (`grow=next`) or to max_seq_len
(`grow=max`). With `in_place=True` it first tries to grow the reservation where it is, if that much
memory is free; otherwise (and always with the paper's default) the request is preempted: its memory is
released and it is re-queued with the larger reservation, its KV either dropped and recomputed later
(`recompute`) or kept in host memory and copied back (`swap`). Every finished request whose first
predicted bucket was wrong is counted and fed back to the predictor through `observe` (the paper's
choice; `feedback="all"` reports every finished request, which a predictor facing a shift learns more from).
"""
from __future__ import annotations

from s3sim.core.errors import ConfigError
from s3sim.core.predictors.base import Predictor
from s3sim.core.request import Request

GROW_MODES = ("next", "max")
FEEDBACK = ("mispredicted", "all")


class Supervisor:
    def __init__(self, predictor: Predictor, grow: str = "next", in_place: bool = False,
                 feedback: str = "mispredicted"):
        if grow not in GROW_MODES:
            raise ConfigError(f"supervisor.grow '{grow}' is unknown; valid: {', '.join(GROW_MODES)}")
        if feedback not in FEEDBACK:
            raise ConfigError(f"predictor.feedback '{feedback}' is unknown; valid: {', '.join(FEEDBACK)}")
        self.feedback = feedback
        self.predictor = predictor
        self.buckets = predictor.buckets
        self.grow = grow
        self.in_place = bool(in_place)
        self.overflows = 0
        self.grown_in_place = 0
        self.mispredictions = 0
        self.under_predictions = 0
        self.over_predictions = 0

    def next_bucket(self, r: Request) -> int:
        last = self.buckets.num - 1
        return min(r.bucket + 1, last) if self.grow == "next" else last

    def on_overflow(self, r: Request) -> int:
        """Choose the bucket the request's reservation grows to; returns it."""
        self.overflows += 1
        return self.next_bucket(r)

    def on_finish(self, r: Request) -> None:
        true_bucket = int(self.buckets.of(r.output_len))
        if true_bucket != r.first_bucket:
            self.mispredictions += 1
            if true_bucket > r.first_bucket:
                self.under_predictions += 1
            else:
                self.over_predictions += 1
        if true_bucket != r.first_bucket or self.feedback == "all":
            self.predictor.observe(r, r.output_len)
