"""The cluster simulation: one SimPy environment, one arrival process, a router, and per replica the core's
serving loop over its own `SimBackend` (scheduler, KV pool, latency model).

Each request is routed once, at its arrival (whichever comes first at that instant: the arrival process
or a replica reaching an iteration boundary), and stays on its replica: no migration. Every replica's loop
checks that each request delivered to it finished exactly once; together with the assignment (one replica
per request) that is the cluster's invariant. With one replica this is the single engine event for event
(`simulate`), which a test checks to the last bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from s3sim.core.errors import InvariantViolation
from s3sim.core.request import Request
from s3sim.core.results import IterationLog, RunResult
from s3sim.core.serving import serve
from s3sim.simulator.engine import ArrivalSource, SimBackend, arrival_process


class ReplicaState:
    """What a router sees of one replica: its requests in flight, its KV pool, its predicted load."""

    def __init__(self, sched, capacity_tokens: int, track_footprints: bool = False):
        self.sched = sched
        self.capacity_tokens = capacity_tokens
        self.routed = 0
        self.predicted_tokens = 0  # footprints of the requests routed here and not finished (if tracked)
        self._track = track_footprints
        self._footprint: dict[int, int] = {}
        self._seen_finished = 0

    def take(self, request: Request, footprint: int) -> None:
        self.routed += 1
        if self._track:
            self.predicted_tokens += footprint
            self._footprint[request.id] = footprint

    def refresh(self) -> None:
        """Forget the footprints of the requests that finished since the last look."""
        done = self.sched.finished
        for r in done[self._seen_finished:]:
            self.predicted_tokens -= self._footprint.pop(r.id)
        self._seen_finished = len(done)

    @property
    def outstanding(self) -> int:
        return self.routed - len(self.sched.finished)

    @property
    def kv_load(self) -> float:
        pool = self.sched.pool
        return pool.used * pool.unit_tokens / self.capacity_tokens


@dataclass
class ClusterResult:
    requests: list[Request]
    replicas: list[RunResult]
    assignment: np.ndarray  # replica of each request (by id)
    router: str
    end_time: float


def simulate_cluster(requests: list[Request], replicas: list[tuple], router, max_jump: int | None = None
                     ) -> ClusterResult:
    """Serve `requests` (sorted by arrival, ids 0..n-1) on `replicas`, each a (scheduler, latency model, KV
    capacity in tokens) as `build_engine` gives them, behind `router` (see `s3sim.cluster.routers`)."""
    env = simpy.Environment()
    backends = [SimBackend(env, sched, latency, max_jump) for sched, latency, _ in replicas]
    states = [ReplicaState(b.sched, b.sched.pool.capacity * b.sched.pool.unit_tokens, router.uses_predictor)
              for b in backends]
    assignment = np.full(len(requests), -1, dtype=np.int64)

    def route(due: list[Request]) -> None:
        per: dict[int, list[Request]] = {}
        if router.uses_predictor:  # only the predicted load needs finished requests forgotten
            for s in states:
                s.refresh()
        for r in due:
            f = router.footprint(r)
            i = router.place(r, states, f)
            states[i].take(r, f)
            assignment[r.id] = i
            per.setdefault(i, []).append(r)
        for i, rs in per.items():
            backends[i].deliver(rs)
        if not source.pending:  # the last arrival: replicas idle for good may stop
            for b in backends:
                b.close()

    source = ArrivalSource(requests, route)
    logs = [IterationLog() for _ in backends]
    for b in backends:
        b.inbox.source = source
    env.process(arrival_process(env, source))
    procs = [env.process(serve(b.sched, b, b.inbox, log)) for b, log in zip(backends, logs)]
    env.run()
    if (assignment < 0).any():
        raise InvariantViolation(f"request {int(np.argmax(assignment < 0))} was never routed")
    results = []
    by_replica: list[list[Request]] = [[] for _ in backends]
    for r in requests:  # in arrival order on each replica too
        by_replica[assignment[r.id]].append(r)
    for i, (b, log, proc, state) in enumerate(zip(backends, logs, procs, states)):
        if not proc.triggered:
            raise InvariantViolation(f"replica {i} never finished serving")
        end, steps = proc.value
        results.append(RunResult(by_replica[i], log, b.sched, end, steps, state.capacity_tokens))
    end = max((r.end_time for r in results), default=0.0)
    return ClusterResult(requests, results, assignment, router.name, end)
