"""The one serving loop both engines run: arrivals -> schedule -> run -> advance.

    while work is left:
        hand the scheduler every request that has arrived by t
        out = scheduler.schedule(t)              nothing to run: idle until the next arrival
        step = backend.execute(out, t)           price it (simulator) or run a forward pass (executor)
        step = yield backend.wait(step)          let time pass; the simulator may cut a jump short
        outcome = scheduler.advance(out, step.k, step.end)
        backend.settle(out, outcome)             free or swap the KV of what finished or was preempted

With `async_scheduling` (vLLM V1's, on by default in its recent versions) step N+1 is scheduled while step N
runs: a request that arrives during step N is first seen when N+2 is scheduled (an engine that was idle
schedules it at once), and its admission is recorded when its step was scheduled, at the start of the step
before (vLLM's `scheduled_ts`). Each request's `queued` is the iteration boundary at which the loop took it
in (vLLM stamps `queued_ts` there too, as its engine takes new requests in between steps). A request that stops
at its length limit frees its slot on time, as vLLM knows it will stop; stops the engine cannot foresee (end of
sequence) are not delayed here, which replays of recorded runs (fixed output lengths) do not need.

The loop is a generator that yields whatever its backend's `wait` and `idle` return and expects the
answer sent back: the simulator's are SimPy events (so the loop is a SimPy process as it stands), the
executor's are plain values it has already waited for (`drive` runs such a loop). Nothing here imports
simpy or torch.
"""
from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from typing import Any, Protocol

import numpy as np

from s3sim.core.output import SchedulerOutput, StepOutcome
from s3sim.core.policies.base import Scheduler
from s3sim.core.request import Request
from s3sim.core.results import IterationLog, Step, check_all_finished, stalled


class Backend(Protocol):
    def execute(self, out: SchedulerOutput, t: float) -> Step:
        """Carry out `out` starting at `t` (once, or k times for a decode-only output)."""

    def wait(self, step: Step) -> Any:
        """Something to yield until `step` is over; the step actually run is sent back."""

    def idle(self, t: float) -> Any:
        """Something to yield until a request arrives after `t`; the time it arrived is sent back."""

    def settle(self, out: SchedulerOutput, outcome: StepOutcome) -> None:
        """Act on what `advance` changed (the executor frees or swaps KV; the simulator has nothing to do)."""


class Inbox:
    """Requests delivered to one engine and not yet handed to its scheduler, in arrival order. `source`,
    if given, is asked to deliver everything due by a time before the engine takes from the inbox (so an
    engine at an iteration boundary sees exactly the requests that arrived by then, whatever order a
    simulation processes simultaneous events in).

    With `predict_s > 0` each request first passes the length predictor, one request at a time in arrival
    order, `predict_s` seconds each: it is handed out when its prediction is ready (`Request.ready`), so
    prediction costs its time before admission, and its queue when requests come faster than it predicts."""

    def __init__(self, requests: list[Request] = (), source=None, predict_s: float = 0.0):
        self.received: list[Request] = []
        self._times: list[float] = []
        self._next = 0
        self.source = source
        self.predict_s = float(predict_s)
        self.put(list(requests))

    def put(self, requests: list[Request]) -> None:
        """Deliver requests (in arrival order, after those already here)."""
        times = [r.arrival for r in requests]
        if times and ((self.received and times[0] < self.received[-1].arrival)
                      or any(b < a for a, b in zip(times, times[1:]))):
            raise ValueError("requests were delivered out of arrival order")
        if self.predict_s > 0:
            free = self._times[-1] if self._times else -math.inf  # when the predictor is next free
            for r in requests:
                free = r.ready = max(r.arrival, free) + self.predict_s
        else:
            for r in requests:
                r.ready = r.arrival
        self.received.extend(requests)
        self._times.extend(r.ready for r in requests)

    def due(self, t: float) -> list[Request]:
        """Take every request that arrived (and was predicted) by `t`."""
        if self.source is not None:
            self.source.deliver_due(t)
        i = self._next
        if i == len(self._times) or self._times[i] > t:
            return []
        upto = bisect_right(self._times, t, lo=i)
        self._next = upto
        return self.received[i:upto]

    def waiting_before(self, t: float) -> list[Request]:
        """Requests already delivered but not yet handed out (still being predicted) that are due before `t`."""
        return self.received[self._next:bisect_left(self._times, t, lo=self._next)]

    @property
    def queued(self) -> bool:
        return self._next < len(self.received)

    @property
    def next_arrival(self) -> float:
        return self._times[self._next]

    @property
    def exhausted(self) -> bool:
        """Nothing queued here and nothing more will be delivered."""
        return not self.queued and (self.source is None or not self.source.pending)


def serve(sched: Scheduler, backend: Backend, inbox: Inbox, log: IterationLog, async_scheduling: bool = False):
    """Serve until every delivered request has finished; returns (end time, engine steps). A generator: see
    the module's docstring."""
    t, steps = 0.0, 0
    seen = 0.0  # asynchronous scheduling: what arrived by then is what the scheduler of the next step has seen
    last = (0.0, None)  # the last step run and its start (None: the engine was idle until then)
    while True:
        arrived = inbox.due(seen if async_scheduling else t)
        if arrived:
            bounds = _boundaries(*last)
            for r in arrived:  # taken in at the first iteration boundary from when it was ready
                i = bisect_left(bounds, r.ready)
                r.queued = bounds[i] if i < len(bounds) else t
            sched.add(arrived)
        if inbox.exhausted and sched.is_idle():
            break
        out = sched.schedule(t)
        if out.is_empty:
            if inbox.exhausted:
                raise stalled(sched, len(inbox.received) - len(sched.finished), t)
            t = seen = yield backend.idle(t)
            last = (t, None)  # an idle engine takes a request in as it arrives
            continue
        if async_scheduling and seen < t:  # scheduled while the step before ran
            for r in out.prefill:
                if r.admitted == t:
                    r.admitted = seen
        step = yield backend.wait(backend.execute(out, t))
        log.record(t, out, step, sched)
        outcome = sched.advance(out, step.k, step.end)
        backend.settle(out, outcome)
        steps += 1
        seen = t if step.k == 1 or step.ends is None else float(step.ends[step.k - 2])  # the start of the last iteration run
        last = (t, step)
        t = step.end
    check_all_finished(inbox.received, sched, t)
    return t, steps


def _boundaries(start: float, step) -> list:
    """The iteration boundaries of a step that began at `start`: its start and each iteration's end (just the
    start where the engine was idle until then)."""
    if step is None:
        return [start]
    if step.k == 1:
        return [start, step.end]
    ends = step.ends[:step.k] if step.ends is not None else start + np.cumsum(step.durations[:step.k])
    return [start, *ends.tolist()[:-1], step.end]


def drive(loop):
    """Run a serving loop whose backend has already waited for what it yields; returns the loop's value."""
    try:
        answer = next(loop)
        while True:
            answer = loop.send(answer)
    except StopIteration as done:
        return done.value
