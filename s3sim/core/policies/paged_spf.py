"""Paged allocation with the waiting queue served shortest-predicted-first: prediction on top of paging.

Memory and iterations are exactly `paged`'s (blocks on demand, watermark, newest preempted first; prompt-only
iterations, as vLLM ran in 2023, unless `policy.iterations=mixed`); only the order in which waiting requests
are admitted changes: preempted requests first (as paged puts them back at the front), then the others by
predicted bucket, then by arrival. Prediction here never sizes memory, so a wrong
prediction costs waiting time, not a preemption. This is the ordering of learning-to-rank schedulers
(vllm-ltr, SSJF) with the S3 predictor's buckets as the rank.
"""
from __future__ import annotations

import itertools

from sortedcontainers import SortedKeyList

from s3sim.core.policies.paged import PagedScheduler
from s3sim.core.predictors.base import Predictor
from s3sim.core.request import Request


class PredictedQueue:
    """The deque verbs `PagedScheduler` uses, over a queue ordered shortest-predicted-first.

    Requests put back with `appendleft` (preempted ones) go to the front, the latest first, exactly as
    in paged's deque: the victim just preempted heads the queue, and since it cannot fit again at the
    very next iteration, nothing is admitted then (which keeps multi-iteration jumps exact)."""

    def __init__(self):
        self._front: dict[int, int] = {}  # request id -> minus its push count
        self._pushes = itertools.count()
        self._q = SortedKeyList(key=self._key)

    def _key(self, r: Request):
        f = self._front.get(r.id)
        return (0, f, 0) if f is not None else (1, r.bucket, r.id)

    def __len__(self) -> int:
        return len(self._q)

    def __getitem__(self, i: int) -> Request:
        return self._q[i]

    def extend(self, requests) -> None:
        self._q.update(requests)

    def appendleft(self, r: Request) -> None:
        self._front[r.id] = -next(self._pushes)
        self._q.add(r)

    def popleft(self) -> Request:
        r = self._q.pop(0)
        self._front.pop(r.id, None)
        return r


class PagedSpfScheduler(PagedScheduler):
    name = "paged_spf"
    uses_predictor = True

    def __init__(self, pool, max_seq_len, predictor: Predictor, **kw):
        super().__init__(pool, max_seq_len, **kw)
        self.predictor = predictor
        self.waiting = PredictedQueue()

    def add(self, requests):
        if not requests:
            return
        for r, b in zip(requests, self.predictor.predict(requests)):
            r.first_bucket = r.bucket = int(b)
            r.reserved_out = self.max_seq_len
        self.waiting.extend(requests)

    def could_admit(self, r: Request) -> bool:
        # a new arrival may jump the queue, so a non-empty queue does not rule it out
        return (len(self.running) < self.max_batch
                and self.pool.free - self._growth(1) - self._blocks(r.context + 1) >= self.watermark)
