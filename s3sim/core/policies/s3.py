"""S3: iteration-level batching that reserves prompt + the upper bound of the predicted bucket.

Waiting requests are packed into free KV memory by decreasing first-fit on their reservation size
(equivalently: repeatedly admit the largest waiting request that fits; ties go to the earliest). A
sorted container keeps that O(log n) per admission even with 10^6 requests waiting.

The reserved bucket is the most likely one (`reserve=mode`, the paper) or the one at a quantile of the
predicted distribution (`reserve=quantile`). A request that outgrows its reservation is the supervisor's
(see `supervisor.py`): grown in place when memory is free; when it is not and `make_room` is on, the
newest running requests are preempted to make room if recomputing them costs fewer tokens than
recomputing the overflowing one, else that one is preempted. Decreasing first-fit starves large
requests under a stream of small ones; `max_wait` bounds that: a request queued that long is admitted
first, and nothing else is admitted until it fits.

Memory is reserved in tokens (`block_size=1`, the paper) or in blocks of `block_size` tokens (S3's
reservations over a paged KV cache, as vLLM holds it: a reservation rounds up to whole blocks); the admission
order, the supervisor and the token budget stay the same, so S3 over paged blocks is a configuration.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from sortedcontainers import SortedKeyList

from s3sim.core.errors import ConfigError, InvariantViolation
from s3sim.core.kv_pool import block_pool
from s3sim.core.output import SchedulerOutput
from s3sim.core.policies.base import PolicyConfig, Scheduler
from s3sim.core.policies.supervisor import GROW_MODES, Supervisor, check_quantile, quantile_bucket
from s3sim.core.predictors.base import Predictor
from s3sim.core.request import Request


RESERVE_MODES = ("mode", "quantile", "cost")


@dataclass
class S3Config(PolicyConfig):
    grow: str = "next"  # on overflow: the next bucket, max_seq_len, or the conditional distribution's quantile
    in_place: bool = True  # grow the reservation in place when memory is free; false: the paper's supervisor
    reserve: str = "mode"  # the bucket reserved at arrival: the most likely one (the paper), a quantile, or cost
    overflow_cost: float = 1.0  # reserve=cost: what one token recomputed after an overflow costs, in reserved tokens
    quantile: float = 0.5  # the quantile of the predicted distribution for reserve=quantile and grow=conditional
    make_room: bool = True  # an overflow with memory short preempts the newest requests instead, if cheaper
    max_wait: Optional[float] = None  # seconds: a request queued this long is admitted before any other
    block_size: int = 1  # tokens per unit reserved: 1, tokens (the paper); 16, S3's reservations over paged blocks

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ConfigError(f"policy.block_size must be a positive integer, got {self.block_size!r}")
        if self.grow not in GROW_MODES:
            raise ConfigError(f"policy.grow '{self.grow}' is unknown; valid: {', '.join(GROW_MODES)}")
        if self.reserve not in RESERVE_MODES:
            raise ConfigError(f"policy.reserve '{self.reserve}' is unknown; valid: {', '.join(RESERVE_MODES)}")
        check_quantile(self.quantile)
        if not 0 <= self.overflow_cost < math.inf:
            raise ConfigError(f"policy.overflow_cost must be a non-negative number, got {self.overflow_cost!r}")
        if self.max_wait is not None and not 0 <= self.max_wait < math.inf:
            raise ConfigError(f"policy.max_wait must be a non-negative number of seconds or null, got {self.max_wait!r}")


class S3Scheduler(Scheduler):
    name = "s3"
    Config = S3Config
    uses_predictor = True

    @classmethod
    def from_config(cls, conf: S3Config, capacity_tokens, max_seq_len, predictor=None, feedback="mispredicted"):
        sup = Supervisor(predictor, grow=conf.grow, in_place=conf.in_place, feedback=feedback,
                         quantile=conf.quantile)
        pool = block_pool(capacity_tokens, conf.block_size)
        return cls(pool, max_seq_len, predictor, sup, max_batch_size=conf.max_batch_size,
                   preemption_mode=conf.preemption_mode, max_num_batched_tokens=conf.max_num_batched_tokens,
                   reserve=conf.reserve, make_room=conf.make_room, max_wait=conf.max_wait,
                   overflow_cost=conf.overflow_cost)

    def __init__(self, pool, max_seq_len, predictor: Predictor, supervisor: Supervisor | None = None,
                 reserve: str = "mode", make_room: bool = False, max_wait: float | None = None,
                 overflow_cost: float = 1.0, **kw):
        super().__init__(pool, max_seq_len, **kw)
        if reserve not in RESERVE_MODES:
            raise ConfigError(f"policy.reserve '{reserve}' is unknown; valid: {', '.join(RESERVE_MODES)}")
        self.predictor = predictor
        self.supervisor = supervisor or Supervisor(predictor)
        self.buckets = predictor.buckets
        self.reserve = reserve
        self.make_room = bool(make_room)
        self.overflow_cost = float(overflow_cost)
        # the predicted distribution is kept per request only when something reads it
        self._keeps_dist = reserve != "mode" or self.supervisor.grow == "conditional"
        self.waiting = SortedKeyList(key=lambda r: (self._units(r), -r.id))
        self.max_wait = max_wait
        self._queued_at: dict[int, float] = {}  # waiting request id -> when it (re-)entered the queue
        self._by_age: list = []  # heap of (queued_at, id, request); entries of admitted requests are skipped
        self.aged_admissions = 0  # admissions made ahead of the packing order because a request waited too long
        self._smallest_out = min(self.buckets.upper_of(0), self.max_seq_len)

    def _reserved_out(self, bucket: int) -> int:
        return min(self.buckets.upper_of(bucket), self.max_seq_len)

    def _units(self, r: Request, out: int | None = None) -> int:
        """The pool's units (tokens, or blocks of `block_size`) holding `r`'s prompt and `out` (its reserved
        output by default) tokens."""
        return self.kv.units(r.prompt_len, r.reserved_out if out is None else out)

    def add(self, requests):
        if not requests:
            return
        if self._keeps_dist:
            probs = self.predictor.probabilities(requests)
            buckets = self._reserved_buckets(requests, probs)
            for r, p in zip(requests, probs):
                r.dist = p
        else:
            buckets = self.predictor.predict(requests)
        for r, b in zip(requests, buckets):
            r.first_bucket = r.bucket = int(b)
            r.reserved_out = self._reserved_out(r.bucket)
            self._enqueue(r, r.arrival)

    def _reserved_buckets(self, requests, probs) -> np.ndarray:
        """The bucket each request reserves at arrival, by `reserve` (a quantile of a distribution with no
        mass falls back to its most likely bucket)."""
        if self.reserve == "cost":
            return self._cheapest(requests, probs)
        if self.reserve == "quantile":
            picked = [quantile_bucket(p, self.supervisor.quantile) for p in probs]
            return np.array([b if b >= 0 else int(np.argmax(p)) for p, b in zip(probs, picked)], dtype=np.int64)
        return np.argmax(probs, axis=1)

    def _cheapest(self, requests, probs) -> np.ndarray:
        """reserve=cost: per request, the bucket j minimising the tokens reserved, (prompt + upper_j), plus the
        expected tokens recomputed if the answer outgrows it, overflow_cost * P(length > upper_j) * (prompt +
        upper_j) (an overflow is not always a preemption: a bound, weighted)."""
        prompt = np.fromiter((r.prompt_len for r in requests), np.float64, len(requests))[:, None]
        upper = np.minimum(self.buckets.upper, self.max_seq_len)[None, :].astype(np.float64)
        p = np.asarray(probs, dtype=np.float64)
        beyond = 1.0 - np.cumsum(p, axis=1) / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
        return np.argmin((prompt + upper) * (1.0 + self.overflow_cost * np.clip(beyond, 0.0, 1.0)), axis=1)

    def _enqueue(self, r: Request, t: float) -> None:
        self.waiting.add(r)
        if self.max_wait is not None:
            self._queued_at[r.id] = t
            heapq.heappush(self._by_age, (t, r.id, r))

    def _oldest(self):
        """(queued_at, request) of the request that has waited longest, or None."""
        h = self._by_age
        while h and self._queued_at.get(h[0][1]) != h[0][0]:
            heapq.heappop(h)
        return (h[0][0], h[0][2]) if h else None

    def _take(self, r: Request, batch: SchedulerOutput, now: float) -> int:
        """Reserve for and admit waiting request `r` (already out of `waiting`); returns its reservation (units)."""
        need = self._units(r)
        self._queued_at.pop(r.id, None)
        self.kv.take(r, need)
        self._admit(r, batch, now)
        return need

    def has_waiting(self) -> bool:
        return bool(self.waiting)

    def could_admit(self, r: Request) -> bool:
        # the arrival is not predicted yet: assume the smallest bucket (conservative, hence exact)
        return len(self.running) < self.max_batch and self.kv.fits(
            self.kv.units(r.prompt_len, self._smallest_out))

    def schedule(self, now: float) -> SchedulerOutput:
        batch = self._decode_batch()
        room = self._room(batch)
        free = self.kv.free
        if self.max_wait is not None and room > 0 and batch.budget > 0:
            old = self._oldest()
            if old is not None and now - old[0] >= self.max_wait:
                r = old[1]
                if self._units(r) > free:
                    return batch  # nothing else is admitted until the memory it needs has been freed
                self.waiting.remove(r)
                free -= self._take(r, batch, now)
                self.aged_admissions += 1
                room -= 1
        while self.waiting and room > 0 and batch.budget > 0:
            i = self.waiting.bisect_key_right((free, math.inf))
            if i == 0:
                break
            free -= self._take(self.waiting.pop(i - 1), batch, now)
            room -= 1
        return batch

    def _on_limit(self, r: Request, now: float) -> None:
        bucket = self.supervisor.on_overflow(r)
        new_out = self._reserved_out(bucket)
        if new_out <= r.reserved_out:
            raise InvariantViolation(
                f"t={now:.6f}s request {r.id} needs more than max_seq_len={self.max_seq_len} output tokens")
        extra = self._units(r, new_out) - self._units(r)
        free = self.kv.fits(extra)
        if self.supervisor.in_place and not free and self.make_room:
            free = self._make_room(r, extra, now)
        if self.supervisor.in_place and free:
            self.kv.grow(r, extra)
            self.supervisor.grown_in_place += 1
            r.bucket, r.reserved_out = bucket, new_out
            self._push_event(r)
            return
        self._preempt(r, now, cause="overflow" if free else "memory")
        r.bucket, r.reserved_out = bucket, new_out
        self._enqueue(r, now)

    def _make_room(self, r: Request, extra: int, now: float) -> bool:
        """Preempt the newest running requests (not `r`) until `extra` units are free, if recomputing them
        costs fewer tokens than recomputing `r`; returns whether the room is there."""
        own = r.prompt_len + self.generated(r)  # what preempting `r` itself would recompute
        victims, freed, cost = [], self.kv.free, 0
        for v in reversed(list(self.running.values())):
            if freed >= extra or cost >= own:
                break
            if v is r or self.generated(v) >= self._event_target(v):
                continue  # a request due at this iteration (finishing, or at its limit) is handled by its event
            victims.append(v)
            freed += self.kv.held(v)
            cost += v.prompt_len + self.generated(v)
        if freed < extra or cost >= own:
            return False
        for v in victims:
            self._preempt(v, now, cause="memory")
            self._enqueue(v, now)
        return True

    def counters(self) -> dict:
        sup = self.supervisor
        return {**super().counters(), "mispredictions": sup.mispredictions,
                "under_predictions": sup.under_predictions, "grown_in_place": sup.grown_in_place}

    def summary_fields(self) -> dict:
        return {"aged_admissions": self.aged_admissions} if self.max_wait is not None else {}

    def _on_finish(self, r: Request) -> None:
        self.supervisor.on_finish(r)


class OracleScheduler(S3Scheduler):
    """S3 with a predictor that knows every length: the upper bound of prediction."""
    name = "oracle"
    fixed_predictor = "oracle"
