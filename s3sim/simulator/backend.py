"""A simulated engine: the core's serving loop over a latency model instead of a GPU (`SimBackend`), and the
arrivals that feed it (`ArrivalSource`, `arrival_process`).

SimPy orders time and nothing else; all serving logic lives in the core objects the executor uses too.
A decode-only batch is repeated for as many iterations as nothing can change (`Scheduler.horizon`), so
one event may stand for hundreds of iterations; an arrival that the scheduler might admit interrupts the
jump, which then ends at the first iteration boundary after that arrival. Durations are accumulated in
the same order as step by step, so the result is the same to the last bit (`max_jump=1` forces
step-by-step; tests compare both). A router reads the engine between two iterations of a jump as
stepping one at a time would show it (`kv_reserved_tokens`).
"""
from __future__ import annotations

from bisect import bisect_right

import numpy as np
import simpy

from s3sim.core.output import SchedulerOutput, StepOutcome
from s3sim.core.policies.base import Scheduler
from s3sim.core.request import Request
from s3sim.core.results import Step
from s3sim.core.serving import Inbox
from s3sim.latency.base import LatencyModel


class ArrivalSource:
    """Every request of a run in arrival order, handed out when due to `route` (one engine's `deliver`;
    a router across replicas would choose among several)."""

    def __init__(self, requests: list[Request], route):
        self._queue = Inbox(requests)
        self.route = route

    @property
    def pending(self) -> bool:
        return self._queue.queued

    @property
    def next_time(self) -> float:
        return self._queue.next_arrival

    def deliver_due(self, t: float) -> None:
        """Hand out every request that arrived by `t` (all of one instant together)."""
        due = self._queue.due(t)
        if due:
            self.route(due)


def arrival_process(env: simpy.Environment, source: ArrivalSource):
    while source.pending:
        a = source.next_time
        if a > env.now:
            yield env.timeout(a - env.now)
        source.deliver_due(a)


def steps_until(ends: np.ndarray, t: float) -> int:
    """Iterations of a jump (ending at `ends`) up to the first boundary at or after `t`."""
    return min(len(ends), int(np.searchsorted(ends, t, side="left")) + 1)


class SimBackend:
    """Prices each scheduler output with a latency model and lets SimPy's clock pass over it."""

    def __init__(self, env: simpy.Environment, sched: Scheduler, latency: LatencyModel, max_jump: int | None = None):
        self.env, self.sched, self.latency, self.max_jump = env, sched, latency, max_jump
        self.inbox = Inbox(predict_s=sched.predict_s)
        self._wake = None  # the event an idle engine waits on
        self._idle_from = 0.0
        self._jump = None  # (process, step) while a multi-iteration step may still be cut
        # the reserved KV of a jump's iterations differs from its start only where a policy's profile says so
        # (paged blocks, hf's copies); elsewhere the scheduler's pool is the answer inside a jump too
        self._grows = type(sched).kv_reserved_profile is not Scheduler.kv_reserved_profile
        self._in_flight = None  # [step, scheduler iteration at its start, reserved-KV profile or None]

    # ---- arrivals -----------------------------------------------------------------------------
    def deliver(self, requests: list[Request]) -> None:
        self.inbox.put(requests)
        if self._wake is not None:
            wake, self._wake = self._wake, None
            wake.succeed(max(self._idle_from, self.inbox.next_arrival))
        elif self._jump is not None:
            proc, step = self._jump
            for r in requests:
                if r.ready < step.end and self.sched.could_admit(r):
                    self._jump = None
                    proc.interrupt(r.ready)
                    break

    def close(self) -> None:
        """No request will be delivered any more: an engine idling for one wakes up and ends its loop."""
        if self._wake is not None and not self.inbox.queued:
            wake, self._wake = self._wake, None
            wake.succeed(self._idle_from)

    # ---- the backend verbs ---------------------------------------------------------------------
    def execute(self, out: SchedulerOutput, t: float) -> Step:
        lat, decode_n, ctx = self.latency, out.decode_n, out.decode_ctx
        # a model that prices uneven decode contexts is given the longest one (a scan, only for it)
        skew = {"max_ctx": self.sched.max_context()} if getattr(lat, "skew_alpha", 0.0) else {}
        if out.is_decode_only:
            k = self.sched.horizon()
            if self.max_jump:
                k = min(k, self.max_jump)
            durations = lat.decode_run(decode_n, ctx, k, **skew)
            if out.copies_kv:  # each step copies the cache it starts with into a buffer one token longer
                durations = durations + lat.copy_time(ctx - decode_n + np.arange(k, dtype=np.float64) * decode_n)
            ends = np.cumsum(np.concatenate(([t], durations)))[1:]  # the same additions as step by step
            # a request already delivered but still being predicted may become admissible within the jump: end
            # it at the first boundary at or after that (as an arrival's interrupt would)
            for r in self.inbox.waiting_before(float(ends[-1])):
                if self.sched.could_admit(r):
                    k = steps_until(ends, r.ready)
                    durations, ends = durations[:k], ends[:k]
                    break
            end = float(ends[-1])
        else:
            k, ends = 1, None
            d = lat.batch_time(out, **skew)
            if out.copies_kv:
                d = d + lat.copy_time(float(ctx - decode_n))
            durations = np.array([d], dtype=float)
            end = t + float(durations[0])
        # KV in use after the first iteration: contexts, each decode's new token, each prefill's prefix and chunk,
        # and the first output token of every prefill that finishes its prompt
        used0 = ctx + decode_n + out.prefill_tokens + len(out.prefill)
        running = getattr(self.sched, "running", None)  # (a data-parallel group of ranks keeps no list of its own)
        if running is not None and decode_n < len(running):  # requests paused by a prompt-only iteration (paged, 2023)
            used0 += self.sched.ctx_sum() - ctx
        if out.partial or out.prefill_prefix and any(out.prefill_prefix):
            used0 += sum(out.prefill_prefix) - len(out.partial)
        used0 -= self.sched.shared_kv_tokens()  # shared prompt blocks are held once
        return Step(k, durations, end, used0, ends)

    def wait(self, step: Step):
        if step.k == 1:
            return self.env.timeout(max(0.0, step.end - self.env.now), value=step)
        if self._grows:
            self._in_flight = [step, self.sched.iter, None]
        proc = self.env.process(self._run_jump(step))
        self._jump = (proc, step)
        return proc

    def idle(self, t: float):
        if self.inbox.queued:  # delivered a hair early (float rounding of SimPy's clock)
            t = max(t, self.inbox.next_arrival)
            return self.env.timeout(max(0.0, t - self.env.now), value=t)
        self._wake, self._idle_from = self.env.event(), t
        return self._wake

    def settle(self, out: SchedulerOutput, outcome: StepOutcome) -> None:
        """A simulated GPU holds no KV of its own: the core's pool is all there is."""

    def kv_reserved_tokens(self) -> int:
        """KV tokens reserved now, as a router sees them. Inside a jump the scheduler still holds the state of
        the jump's start (it advances once, at the end); the iterations that have ended by now are read off the
        scheduler's reserved-KV profile (`Scheduler.kv_reserved_profile`: after i iterations its i-th entry,
        which is what `advance` leaves in the pool, one iteration at a time or i at once)."""
        jump, sched = self._in_flight, self.sched
        if jump is not None and jump[1] == sched.iter:  # no `advance` since the jump began: it is in flight
            step = jump[0]
            now = self.env.now
            if now >= step.ends[0]:
                if jump[2] is None:
                    jump[2] = sched.kv_reserved_profile(step.k)
                return int(jump[2][bisect_right(step.ends, now) - 1])
        return sched.kv_reserved_tokens()

    def _run_jump(self, step: Step):
        try:
            yield self.env.timeout(max(0.0, step.end - self.env.now))
            self._jump = None
            return step
        except simpy.Interrupt as stop:  # an admissible arrival: end at the first boundary at or after it
            k = min(step.k, steps_until(step.ends, stop.cause))
            cut = Step(k, step.durations[:k], float(step.ends[k - 1]), step.used0, step.ends[:k])
            yield self.env.timeout(max(0.0, cut.end - self.env.now))
            return cut
