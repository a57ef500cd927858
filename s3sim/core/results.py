"""What a finished run leaves behind, for both engines: the per-iteration log, the run's result, and the
end-of-run invariant checks (every request finished exactly once, no reservation outlived its request)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from s3sim.core.errors import InvariantViolation
from s3sim.core.output import SchedulerOutput
from s3sim.core.policies.base import Scheduler
from s3sim.core.request import Phase, Request


@dataclass(slots=True)
class Step:
    """What a backend did with one scheduler output: `k` identical iterations, each one's duration, the
    time the last one ended, and the KV tokens in use after the first one."""
    k: int
    durations: np.ndarray
    end: float
    used0: int
    ends: np.ndarray | None = None  # the simulator's end of each iteration (a cut jump keeps a prefix)


@dataclass
class IterationLog:
    """One row per engine step (k identical iterations), plus every iteration's duration."""
    start: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    batch: list = field(default_factory=list)
    decode: list = field(default_factory=list)
    itl_tokens: list = field(default_factory=list)
    prefill_tokens: list = field(default_factory=list)
    used0: list = field(default_factory=list)  # KV tokens in use after the step's first iteration
    waiting: list = field(default_factory=list)
    durations: list = field(default_factory=list)  # arrays
    reserved: list = field(default_factory=list)  # arrays (KV tokens reserved in each iteration)

    def record(self, start: float, out: SchedulerOutput, step: Step, sched: Scheduler) -> None:
        """One engine step that started at `start` and ran `out` `step.k` times (before `advance`)."""
        self.start.append(start)
        self.steps.append(step.k)
        self.batch.append(out.size)
        self.decode.append(out.decode_n)
        self.itl_tokens.append(out.itl_tokens)
        self.prefill_tokens.append(out.prefill_tokens)
        self.used0.append(step.used0)
        self.waiting.append(len(sched.waiting))
        self.durations.append(step.durations)
        self.reserved.append(sched.kv_reserved_profile(step.k))

    def frame(self):
        """Per-iteration table: start, duration, batch shape, KV used and reserved, queue length."""
        import pandas as pd
        steps = np.asarray(self.steps, dtype=np.int64)
        d = np.concatenate(self.durations) if self.durations else np.zeros(0)
        first = np.cumsum(steps) - steps  # index of each engine step's first iteration
        within = np.arange(len(d)) - np.repeat(first, steps)
        rep = lambda x: np.repeat(np.asarray(x), steps)  # noqa: E731
        start = rep(self.start).astype(np.float64)
        for j in np.flatnonzero(steps > 1):  # inside a jump: add the durations in the engine's order (exact)
            start[first[j]:first[j] + steps[j]] = np.cumsum(
                np.concatenate(([self.start[j]], self.durations[j][:-1])))
        return pd.DataFrame({
            "start": start,
            "duration": d,
            "batch_size": rep(self.batch),
            "decode_tokens": rep(self.decode),
            "itl_tokens": rep(self.itl_tokens),
            "prefill_tokens": rep(self.prefill_tokens),
            "kv_used": rep(self.used0) + within * rep(self.decode),
            "kv_reserved": np.concatenate(self.reserved) if self.reserved else np.zeros(0, np.int64),
            "waiting": rep(self.waiting),
        })


@dataclass
class RunResult:
    requests: list[Request]
    log: IterationLog
    scheduler: Scheduler
    end_time: float
    engine_steps: int
    kv_capacity_tokens: int


def stalled(sched: Scheduler, unfinished: int, t: float) -> InvariantViolation:
    """The error for a run where nothing can be scheduled and no arrival is left to change that."""
    stuck = sched.waiting[0] if sched.has_waiting() else None
    return InvariantViolation(
        f"t={t:.6f}s nothing can run but {unfinished} requests are unfinished"
        + (f" (request {stuck.id} waits for {stuck.prompt_len}+{stuck.reserved_out} tokens "
           f"of KV with {sched.pool.free} free units)" if stuck else ""))


def check_all_finished(requests: list[Request], sched: Scheduler, t: float) -> None:
    if len(sched.finished) != len(requests):
        raise InvariantViolation(f"t={t:.6f}s {len(sched.finished)} of {len(requests)} requests finished")
    seen = set()
    for r in sched.finished:
        if r.id in seen or r.phase is not Phase.FINISHED:
            raise InvariantViolation(f"t={t:.6f}s request {r.id} finished more than once")
        seen.add(r.id)
    sched.pool.check_empty()
