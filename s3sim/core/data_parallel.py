"""Data-parallel ranks of a mixture-of-experts model that step together, as vLLM V1 deploys one
(`data_parallel_size` > 1, usually with `enable_expert_parallel`).

Each rank is a whole scheduler with its own KV cache, sequence limit and token budget; the front end hands
each request to the rank with the lowest `4 x waiting + running` (vLLM's data-parallel load balancer; the
lowest index on a tie). The ranks of an MoE model run their forward passes in lockstep, because every MoE
layer exchanges tokens between them: each step, every rank schedules its own batch, a rank with nothing to do
runs a dummy batch, and the step lasts as long as the slowest rank (`s3sim.latency.data_parallel` prices it).

`DataParallelScheduler` looks like one scheduler to the serving loop: its output is every rank's output
merged (for the log and the metrics) with the parts kept (`RanksOutput.parts`, for pricing), and it never jumps
several iterations at once (a horizon of one step).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from s3sim.core.errors import InvariantViolation
from s3sim.core.output import SchedulerOutput, StepOutcome
from s3sim.core.request import Request


@dataclass(slots=True)
class RanksOutput(SchedulerOutput):
    parts: list = field(default_factory=list)  # each rank's own output, by rank

    @property
    def is_decode_only(self) -> bool:
        return False  # priced step by step: the ranks' decode-only stretches do not line up


# SchedulerOutput's fields that hold each rank's requests (concatenated) and its counts (summed)
_LISTS = ("prefill", "prefill_lens", "prefill_prefix", "partial", "resumed", "padding", "preempted")
_COUNTS = ("decode_n", "decode_ctx", "prefill_tokens", "prefill_sq", "transfer_tokens", "itl_tokens")


def merged(parts: list[SchedulerOutput]) -> RanksOutput:
    out = RanksOutput(parts=parts)
    for p in parts:
        for f in _LISTS:
            getattr(out, f).extend(getattr(p, f))
        for f in _COUNTS:
            setattr(out, f, getattr(out, f) + getattr(p, f))
    out.decode = [r for p in parts for r in p.decode]
    return out


class Pools:
    """The ranks' KV pools seen as one, for the end-of-run checks and the run's capacity."""

    def __init__(self, pools):
        self.pools = pools
        self.capacity = sum(p.capacity for p in pools)
        self.peak = 0  # the most units the ranks held together at a step's start (`note`)
        units = {p.unit_tokens for p in pools}
        if len(units) != 1:
            raise InvariantViolation("data-parallel ranks must share one KV block size")
        self.unit_tokens = units.pop()

    @property
    def used(self) -> int:
        return sum(p.used for p in self.pools)

    @property
    def free(self) -> int:
        return sum(p.free for p in self.pools)

    def note(self) -> None:
        """Count what the ranks hold now in the peak (called once a step is scheduled: all of it allocated)."""
        self.peak = max(self.peak, self.used)

    def check_empty(self) -> None:
        for p in self.pools:
            p.check_empty()


def summed_fields(dicts: list[dict]) -> dict:
    """Summary fields of several schedulers as one: numbers added, anything else the first one's."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
            else:
                out.setdefault(k, v)
    return out


def balancer_load(waiting: int, running: int) -> int:
    """vLLM's data-parallel load of one rank: 4 x its waiting requests + its running ones (the front end sends a
    request to the rank where this is lowest)."""
    return 4 * waiting + running


class DataParallelScheduler:
    """Several ranks' schedulers behind vLLM's data-parallel load balancer, stepping together."""

    copies_kv = False

    def __init__(self, ranks: list):
        if len(ranks) < 2:
            raise ValueError("data parallelism needs two ranks or more")
        self.ranks = ranks
        self.name = ranks[0].name  # every rank runs the run's policy
        self.pool = Pools([r.pool for r in ranks])
        self.predict_s = max(r.predict_s for r in ranks)
        self.rank_of: dict[int, int] = {}
        self._finished: list[Request] = []  # every rank's, in the order they finished (as one scheduler's list)

    # ---- the front end --------------------------------------------------------------------------
    def load(self, i: int) -> int:
        r = self.ranks[i]
        return balancer_load(len(r.waiting), len(r.running) + len(r.prefilling))

    def add(self, requests: list[Request]) -> None:
        for req in requests:
            i = min(range(len(self.ranks)), key=lambda k: (self.load(k), k))
            self.rank_of[req.id] = i
            self.ranks[i].add([req])

    # ---- the scheduler's verbs ----------------------------------------------------------------------
    def schedule(self, now: float) -> RanksOutput:
        out = merged([r.schedule(now) for r in self.ranks])
        self.pool.note()
        return out

    def advance(self, out: RanksOutput, k: int, now: float) -> StepOutcome:
        if k != 1:
            raise InvariantViolation(f"data-parallel ranks advance one step at a time, got {k}")
        outcome = StepOutcome()
        for rank, part in zip(self.ranks, out.parts):
            o = rank.advance(part, 1, now)
            outcome.finished += o.finished
            outcome.preempted += o.preempted
        self._finished += outcome.finished
        return outcome

    def horizon(self) -> int:
        return 1 if not self.is_idle() else 0

    def could_admit(self, request: Request) -> bool:
        return True

    def has_waiting(self) -> bool:
        return any(r.has_waiting() for r in self.ranks)

    def is_idle(self) -> bool:
        return all(r.is_idle() for r in self.ranks)

    @property
    def waiting(self) -> list:
        return [q for r in self.ranks for q in r.waiting]

    @property
    def finished(self) -> list:
        """Every finished request, in the order the steps finished them (a router reads what is new since it last
        looked by count, as of one scheduler)."""
        return self._finished

    @property
    def running(self) -> list:
        """Every rank's running requests (the engine counts them against a step's decodes: a paged rank's
        prompt-only iteration pauses its decodes, whose KV stays in use)."""
        return [q for r in self.ranks for q in r.running.values()]

    def ctx_sum(self) -> int:
        return sum(r.ctx_sum() for r in self.ranks)

    def max_context(self) -> tuple:
        """Each rank's longest running context: a rank's uneven decode contexts cost what its own longest adds."""
        return tuple(r.max_context() for r in self.ranks)

    def shared_kv_tokens(self) -> int:
        return sum(r.shared_kv_tokens() for r in self.ranks)

    def kv_reserved_profile(self, k: int) -> np.ndarray:
        return sum(r.kv_reserved_profile(k) for r in self.ranks)

    def counters(self) -> dict:
        return summed_fields([r.counters() for r in self.ranks])

    # ---- what a run's summary reads -----------------------------------------------------------------
    @property
    def stall_gaps(self) -> list:
        return [g for r in self.ranks for g in r.stall_gaps]

    def cause_fields(self) -> dict:
        return summed_fields([r.cause_fields() for r in self.ranks])

    def summary_fields(self) -> dict:
        return summed_fields([r.summary_fields() for r in self.ranks])

    def kv_reserved_tokens(self) -> int:
        return sum(r.kv_reserved_tokens() for r in self.ranks)
