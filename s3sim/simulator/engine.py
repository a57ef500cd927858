"""The discrete-event simulator: the shared scheduler driven by a latency model instead of a GPU.

SimPy orders time; all serving logic lives in the scheduler objects the executor uses too. The GPU
loop is one SimPy process that, at each iteration boundary, takes in the requests that have arrived,
asks the scheduler for a batch and the latency model for its duration. A decode-only batch is repeated
for as many iterations as nothing can change (`Scheduler.horizon`, cut at the first boundary after an
arrival that might be admitted), so one event may stand for hundreds of iterations. Durations are
accumulated in the same order as step by step, so the result is the same to the last bit
(`max_jump=1` forces step-by-step; tests compare both).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import simpy

from s3sim.core.errors import InvariantViolation
from s3sim.latency.base import LatencyModel
from s3sim.core.request import Phase, Request
from s3sim.core.policies.base import Scheduler


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
class SimResult:
    requests: list[Request]
    log: IterationLog
    scheduler: Scheduler
    end_time: float
    engine_steps: int
    kv_capacity_tokens: int


def make_requests(prompt_len, output_len, arrivals) -> list[Request]:
    order = np.argsort(np.asarray(arrivals), kind="stable")
    p, o, a = (np.asarray(x)[order] for x in (prompt_len, output_len, arrivals))
    return [Request(i, int(pi), int(oi), float(ai)) for i, (pi, oi, ai) in enumerate(zip(p.tolist(), o.tolist(), a.tolist()))]


def simulate(requests: list[Request], scheduler: Scheduler, latency: LatencyModel,
             max_jump: int | None = None) -> SimResult:
    """Run `requests` (sorted by arrival, ids 0..n-1 in that order) to completion."""
    env = simpy.Environment()
    log = IterationLog()
    arrivals = np.fromiter((r.arrival for r in requests), float, len(requests))
    state = {"steps": 0, "t": 0.0}
    env.process(_gpu_loop(env, requests, arrivals, scheduler, latency, log, max_jump, state))
    env.run()
    check_all_finished(requests, scheduler, state["t"])
    return SimResult(requests, log, scheduler, state["t"], state["steps"],
                     scheduler.pool.capacity * scheduler.pool.unit_tokens)


def stalled(sched: Scheduler, n: int, t: float) -> InvariantViolation:
    """The error for a run where nothing can be scheduled and no arrival is left to change that (both
    engines raise it)."""
    stuck = sched.waiting[0] if sched.has_waiting() else None
    return InvariantViolation(
        f"t={t:.6f}s nothing can run but {n - len(sched.finished)} requests are unfinished"
        + (f" (request {stuck.id} waits for {stuck.prompt_len}+{stuck.reserved_out} tokens "
           f"of KV with {sched.pool.free} free units)" if stuck else ""))


def _gpu_loop(env, requests, arrivals, sched: Scheduler, latency: LatencyModel, log, max_jump, state):
    n = len(requests)
    nxt = 0  # next request not yet handed to the scheduler
    t = 0.0
    while len(sched.finished) < n:
        upto = int(np.searchsorted(arrivals, t, side="right"))
        if upto > nxt:
            sched.add(requests[nxt:upto])
            nxt = upto
        batch = sched.schedule(t)
        if batch.is_empty:
            if nxt >= n:
                raise stalled(sched, n, t)
            t = max(t, float(arrivals[nxt]))
            yield env.timeout(max(0.0, t - env.now))
            continue
        decode_n, ctx = batch.decode_n, batch.decode_ctx
        if batch.is_decode_only:
            k = sched.horizon()
            if max_jump:
                k = min(k, max_jump)
            durations = latency.decode_run(decode_n, ctx, k)
        else:
            k = 1
            d = latency.iteration_time(batch.prefill_tokens, batch.prefill_sq, decode_n, ctx)
            if batch.transfer_tokens:
                d = d + latency.swap_time(batch.transfer_tokens)
            durations = np.array([d], dtype=float)
        ends = np.cumsum(np.concatenate(([t], durations)))[1:]
        if k > 1 and nxt < n and arrivals[nxt] < ends[-1]:
            k = _cut_at_admissible_arrival(sched, requests, arrivals, nxt, ends, k)
            durations, ends = durations[:k], ends[:k]
        log.start.append(t)
        log.steps.append(k)
        log.batch.append(batch.size)
        log.decode.append(decode_n)
        log.itl_tokens.append(batch.itl_tokens)
        log.prefill_tokens.append(batch.prefill_tokens)
        log.used0.append(ctx + decode_n + batch.prefill_tokens + len(batch.prefill))
        log.waiting.append(len(sched.waiting))
        log.durations.append(durations)
        log.reserved.append(sched.kv_reserved_profile(k))
        t = float(ends[-1])
        yield env.timeout(max(0.0, t - env.now))
        sched.advance(batch, k, t)
        state["steps"] += 1
        state["t"] = t


def _cut_at_admissible_arrival(sched, requests, arrivals, nxt, ends, k) -> int:
    """Shorten a jump to end at the first boundary at or after an arrival that might be admitted."""
    stop = int(np.searchsorted(arrivals, ends[-1], side="left"))
    for j in range(nxt, stop):
        if sched.could_admit(requests[j]):
            return int(np.searchsorted(ends, arrivals[j], side="left")) + 1
    return k


def check_all_finished(requests, sched: Scheduler, t: float) -> None:
    if len(sched.finished) != len(requests):
        raise InvariantViolation(f"t={t:.6f}s {len(sched.finished)} of {len(requests)} requests finished")
    seen = set()
    for r in sched.finished:
        if r.id in seen or r.phase is not Phase.FINISHED:
            raise InvariantViolation(f"t={t:.6f}s request {r.id} finished more than once")
        seen.add(r.id)
    sched.pool.check_empty()
