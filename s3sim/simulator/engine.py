"""The simulation: one SimPy environment, one arrival process, a router, and per replica the core's serving
loop over its own `SimBackend` (scheduler, KV pool, latency model). One engine is a cluster of one replica
(`simulate`): every feature is built once, on this path.

Each request is routed once, at its arrival (whichever comes first at that instant: the arrival process
or a replica reaching an iteration boundary), and stays on its replica: no migration. The router reads each
replica as it stands at that moment, as if it stepped one iteration at a time: a replica inside a
multi-iteration jump (`SimBackend`'s `max_jump`) shows the KV of the iterations that have ended by then, not
the KV at the jump's start, so routing does not depend on `max_jump` (a test checks every router and
policy). Every replica's loop checks that each request delivered to it finished exactly once; together with
the assignment (one replica per request) that is the cluster's invariant, and at the end every replica's
bookkeeping (outstanding requests, predicted footprint) is back to zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from s3sim.core.data_parallel import balancer_load
from s3sim.core.errors import ConfigError, InvariantViolation
from s3sim.core.policies.base import Scheduler
from s3sim.core.request import Request
from s3sim.core.results import IterationLog, RunResult
from s3sim.core.serving import serve
from s3sim.latency.base import LatencyModel
from s3sim.simulator import progress
from s3sim.simulator.backend import ArrivalSource, SimBackend, arrival_process


class ReplicaState:
    """What a router sees of one replica, as of the moment it decides: the requests routed there and not
    finished, its KV pool's reserved fraction, the predicted footprint of its outstanding requests."""

    def __init__(self, backend: SimBackend, capacity_tokens: int, track_footprints: bool = False):
        self.backend = backend
        self.sched = backend.sched
        self.capacity_tokens = capacity_tokens
        self.routed = 0  # requests routed here
        self._track = track_footprints
        self._predicted = 0  # footprints of the requests routed here and not finished (if tracked)
        self._footprint: dict[int, int] = {}  # each of those requests' footprint
        self._seen_finished = 0

    def take(self, request: Request, footprint: int) -> None:
        self.routed += 1
        if self._track:
            if request.id in self._footprint:
                raise InvariantViolation(f"request {request.id} was routed twice")
            self._predicted += footprint
            self._footprint[request.id] = footprint

    def _forget_finished(self) -> None:
        """Release the footprints of the requests that finished since the last look."""
        done = self.sched.finished
        if self._seen_finished < len(done):
            if self._track:
                for r in done[self._seen_finished:]:
                    self._predicted -= self._footprint.pop(r.id)
            self._seen_finished = len(done)

    @property
    def outstanding(self) -> int:
        """Requests routed here and not finished."""
        return self.routed - len(self.sched.finished)

    @property
    def dp_load(self) -> int:
        """vLLM's data-parallel load: 4 x waiting + running, where waiting holds what was routed here and not
        taken in yet, and running the requests in the batch (prefilling too)."""
        running = len(self.sched.running) + len(getattr(self.sched, "prefilling", ()))
        return balancer_load(self.outstanding - running, running)

    @property
    def predicted_tokens(self) -> int:
        """Predicted KV footprint of the outstanding requests (0 unless the router tracks footprints)."""
        self._forget_finished()
        return self._predicted

    @property
    def tracked_requests(self) -> int:
        """Requests whose footprint is held (the outstanding ones, if footprints are tracked)."""
        self._forget_finished()
        return len(self._footprint)

    @property
    def kv_load(self) -> float:
        """Fraction of the KV pool reserved now (see `SimBackend.kv_reserved_tokens`)."""
        return self.backend.kv_reserved_tokens() / self.capacity_tokens

    def check_drained(self, i: int, assigned: int) -> None:
        """At the end of a run: every request routed here was counted once, has finished and was released."""
        if self.routed != assigned:
            raise InvariantViolation(f"replica {i} counted {self.routed} requests routed to it, but {assigned} were")
        left = {"outstanding requests": self.outstanding, "predicted KV tokens": self.predicted_tokens,
                "footprints held": self.tracked_requests}
        for what, n in left.items():
            if n:
                raise InvariantViolation(f"replica {i} still shows {n} {what} after every request finished")


# beyond this (about 32 years) float64 seconds lose sub-microsecond resolution: a run's arrivals and its end
LATEST_TIME_S = 1e9


@dataclass
class ClusterResult:
    requests: list[Request]
    replicas: list[RunResult]
    assignment: np.ndarray  # replica of each request (by id)
    router: str
    end_time: float
    states: list | None = None  # what the router saw of each replica (`ReplicaState`), drained at the end


def simulate_cluster(requests: list[Request], replicas: list[tuple], router, max_jump: int | None = None,
                     async_scheduling: bool = False) -> ClusterResult:
    """Serve `requests` (sorted by arrival, ids 0..n-1) on `replicas`, each a (scheduler, latency model, KV
    capacity in tokens) as `build_engine` gives them, behind `router` (see `s3sim.cluster.routers`);
    `async_scheduling`: vLLM V1's, see `s3sim.core.serving`."""
    env = simpy.Environment()
    backends = [SimBackend(env, sched, latency, max_jump) for sched, latency, _ in replicas]
    states = [ReplicaState(b, b.sched.pool.capacity * b.sched.pool.unit_tokens, router.uses_predictor)
              for b in backends]
    assignment = np.full(len(requests), -1, dtype=np.int64)

    def route(due: list[Request]) -> None:
        per: dict[int, list[Request]] = {}
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
    procs = [env.process(serve(b.sched, b, b.inbox, log, async_scheduling)) for b, log in zip(backends, logs)]
    progress.run(env, progress.Progress(len(requests)), lambda: sum(len(b.sched.finished) for b in backends))
    if (assignment < 0).any():
        raise InvariantViolation(f"request {int(np.argmax(assignment < 0))} was never routed")
    results = []
    by_replica: list[list[Request]] = [[] for _ in backends]
    for r in requests:  # in arrival order on each replica too
        by_replica[assignment[r.id]].append(r)
    for i, (b, log, proc, state) in enumerate(zip(backends, logs, procs, states)):
        if not proc.triggered:
            raise InvariantViolation(f"replica {i} never finished serving")
        state.check_drained(i, len(by_replica[i]))
        end, steps = proc.value
        results.append(RunResult(by_replica[i], log, b.sched, end, steps, state.capacity_tokens))
    end = max((r.end_time for r in results), default=0.0)
    if not end <= LATEST_TIME_S:
        raise ConfigError(f"the run lasted {end:.3g} s of simulated time, beyond {LATEST_TIME_S:.0e} s, where float64 "
                          "seconds lose the microseconds an iteration takes (its latencies would come out rounded, "
                          "even to 0): check what prices its steps (latency.overhead_s, latency.launch_s, the "
                          "efficiencies, predictor.latency_ms)")
    return ClusterResult(requests, results, assignment, router.name, end, states)


def simulate(requests: list[Request], scheduler: Scheduler, latency: LatencyModel,
             max_jump: int | None = None, async_scheduling: bool = False) -> RunResult:
    """Run `requests` (sorted by arrival, ids 0..n-1 in that order) to completion on one engine: a cluster of
    one replica (`async_scheduling`: vLLM V1's, see `s3sim.core.serving`), whose router sends it everything."""
    from s3sim.cluster.routers import RoundRobin

    cap = scheduler.pool.capacity * scheduler.pool.unit_tokens
    return simulate_cluster(requests, [(scheduler, latency, cap)], RoundRobin(), max_jump, async_scheduling).replicas[0]
