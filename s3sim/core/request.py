"""A request and its lifecycle: waiting -> running -> (preempted -> waiting ->) running -> finished.

Timestamps are recorded as the request moves so that every metric (TTFT, TPOT, ITL, e2e) can be derived
from the finished requests alone. While a request runs, `generated` is stale: the scheduler keeps its
progress lazily (`Scheduler.generated`) so that many decode iterations can be applied at once.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Phase(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False, slots=True)
class Request:
    id: int
    prompt_len: int
    output_len: int  # tokens the engine will generate (fixed-length replay); predictors must not read it
    arrival: float
    phase: Phase = Phase.WAITING
    ready: float = math.nan  # when its scheduler may first see it: arrival, plus the predictor's queue and latency
    queued: float = math.nan  # when its scheduler took it in: the first step boundary from `ready` (vLLM's queued_ts)
    # prediction and reservation
    first_bucket: int = -1  # bucket predicted at arrival
    bucket: int = -1  # bucket the current reservation is sized for (grows on misprediction)
    reserved_out: int = 0  # output tokens the current reservation covers
    dist: object = None  # predicted probability of each bucket (kept only by policies that reserve from it)
    prefix: object = None  # (tokens per key, keys): the chain of block hashes a workload gives its prompt's
    # shared part, key i covering tokens up to (i + 1) * tokens per key; None: its prompt is its own
    # progress (materialised whenever the request is not running)
    generated: int = 0
    swapped: bool = False  # KV lives in host memory after a swap-mode preemption
    # timestamps (seconds)
    admitted: float = math.nan
    first_token: float = math.nan
    last_token: float = math.nan
    finished: float = math.nan
    # counters
    preemptions: int = 0
    recomputed_tokens: int = 0
    swapped_tokens: int = 0
    preempt_cause: str = ""  # why it was last preempted: "overflow" or "memory" (see Scheduler.by_cause)
    # the scheduler's own bookkeeping of this request while admitted (`Progress`); opaque to everything else
    progress: object = None

    @property
    def context(self) -> int:
        """KV slots the request occupies (prompt plus generated tokens); valid when not running."""
        return self.prompt_len + self.generated


def make_requests(prompt_len, output_len, arrivals, prefix=None) -> list[Request]:
    """Requests sorted by arrival (stable), with ids 0..n-1 in that order; `prefix`: each row's
    `Request.prefix` (None: no prompt is shared)."""
    import numpy as np

    order = np.argsort(np.asarray(arrivals), kind="stable")
    p, o, a = (np.asarray(x)[order] for x in (prompt_len, output_len, arrivals))
    reqs = [Request(i, int(pi), int(oi), float(ai)) for i, (pi, oi, ai) in enumerate(zip(p.tolist(), o.tolist(), a.tolist()))]
    if prefix is not None:
        for r, i in zip(reqs, order.tolist()):
            r.prefix = prefix[i]
    return reqs
