"""S3: iteration-level batching that reserves prompt + the upper bound of the predicted bucket.

Waiting requests are packed into free KV memory by decreasing first-fit on their reservation size
(equivalently: repeatedly admit the largest waiting request that fits; ties go to the earliest). A
sorted container keeps that O(log n) per admission even with 10^6 requests waiting.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from sortedcontainers import SortedKeyList

from s3sim.core.errors import ConfigError, InvariantViolation
from s3sim.core.kv_pool import KVPool
from s3sim.core.output import SchedulerOutput
from s3sim.core.policies.base import PolicyConfig, Scheduler
from s3sim.core.policies.supervisor import GROW_MODES, Supervisor
from s3sim.core.predictors.base import Predictor
from s3sim.core.request import Request


@dataclass
class S3Config(PolicyConfig):
    grow: str = "next"  # on overflow, re-reserve for the next bucket, or for max_seq_len
    in_place: bool = False  # grow the reservation in place when memory is free (else preempt, as the paper)

    def __post_init__(self):
        super().__post_init__()
        if self.grow not in GROW_MODES:
            raise ConfigError(f"policy.grow '{self.grow}' is unknown; valid: {', '.join(GROW_MODES)}")


class S3Scheduler(Scheduler):
    name = "s3"
    Config = S3Config
    uses_predictor = True

    @classmethod
    def from_config(cls, conf: S3Config, capacity_tokens, max_seq_len, predictor=None, feedback="mispredicted"):
        sup = Supervisor(predictor, grow=conf.grow, in_place=conf.in_place, feedback=feedback)
        return cls(KVPool(capacity_tokens), max_seq_len, predictor, sup, max_batch_size=conf.max_batch_size,
                   preemption_mode=conf.preemption_mode, max_num_batched_tokens=conf.max_num_batched_tokens)

    def __init__(self, pool, max_seq_len, predictor: Predictor, supervisor: Supervisor | None = None, **kw):
        super().__init__(pool, max_seq_len, **kw)
        self.predictor = predictor
        self.supervisor = supervisor or Supervisor(predictor)
        self.buckets = predictor.buckets
        self.waiting = SortedKeyList(key=lambda r: (r.prompt_len + r.reserved_out, -r.id))
        self._smallest_out = min(self.buckets.upper_of(0), self.max_seq_len)

    def _reserved_out(self, bucket: int) -> int:
        return min(self.buckets.upper_of(bucket), self.max_seq_len)

    def add(self, requests):
        if not requests:
            return
        for r, b in zip(requests, self.predictor.predict(requests)):
            r.first_bucket = r.bucket = int(b)
            r.reserved_out = self._reserved_out(r.bucket)
        self.waiting.update(requests)

    def has_waiting(self) -> bool:
        return bool(self.waiting)

    def could_admit(self, r: Request) -> bool:
        # the arrival is not predicted yet: assume the smallest bucket (conservative, hence exact)
        return len(self.running) < self.max_batch and self.pool.can_reserve(
            self.pool.units_for(r.prompt_len + self._smallest_out))

    def schedule(self, now: float) -> SchedulerOutput:
        batch = self._decode_batch()
        room = self._room()
        free = self.pool.free
        while self.waiting and room > 0 and self._budget_left > 0:
            i = self.waiting.bisect_key_right((free, math.inf))
            if i == 0:
                break
            r = self.waiting.pop(i - 1)
            need = r.prompt_len + r.reserved_out
            self.pool.reserve(r.id, need)
            free -= need
            self._admit(r, batch, now)
            room -= 1
        return batch

    def _on_limit(self, r: Request, now: float) -> None:
        bucket = self.supervisor.on_overflow(r)
        new_out = self._reserved_out(bucket)
        if new_out <= r.reserved_out:
            raise InvariantViolation(
                f"t={now:.6f}s request {r.id} needs more than max_seq_len={self.max_seq_len} output tokens")
        extra = new_out - r.reserved_out
        free = self.pool.can_reserve(extra)
        if self.supervisor.in_place and free:
            self.pool.grow(r.id, extra)
            self.supervisor.grown_in_place += 1
            r.bucket, r.reserved_out = bucket, new_out
            self._push_event(r)
            return
        self._preempt(r, now, cause="overflow" if free else "memory")
        r.bucket, r.reserved_out = bucket, new_out
        self.waiting.add(r)

    def counters(self) -> dict:
        sup = self.supervisor
        return {**super().counters(), "mispredictions": sup.mispredictions,
                "under_predictions": sup.under_predictions, "grown_in_place": sup.grown_in_place}

    def _on_finish(self, r: Request) -> None:
        self.supervisor.on_finish(r)


class OracleScheduler(S3Scheduler):
    """S3 with a predictor that knows every length: the upper bound of prediction."""
    name = "oracle"
    fixed_predictor = "oracle"
