"""What a router sees of each replica: the same whether replicas jump over many iterations at once or step
one at a time (every router, every policy, to the last bit), and bookkeeping that follows the requests in
flight (counted when routed, released when finished, zero at the end)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from s3sim.cluster.build import build
from s3sim.simulator.engine import simulate_cluster
from s3sim.cluster.routers import ROUTERS
from s3sim.cluster.summary import cluster_summary
from s3sim.core.request import make_requests
from s3sim.metrics.summary import request_records

BURSTY = ("num_requests=240", "arrival=gamma", "arrival.rate=40", "arrival.burstiness=0.2", "max_seq_len=512",
          "model=llama-2-7b", "cluster.replicas=3")
TIGHT = ("+kv_capacity_tokens=1500", "arrival.rate=100")  # little KV per replica: preemptions
GROWS = {"hf", "paged", "vllm"}  # policies whose reserved KV grows while they decode (inside a jump)


def spy_on(router):
    """Record, at every routing decision, what the router saw of each replica, and each request's footprint:
    (request id, ((outstanding, predicted tokens, KV load, KV reserved at the replica's last advance), ...))."""
    views, footprints = [], {}
    place = router.place

    def spy(request, replicas, footprint):
        views.append((request.id, tuple((s.outstanding, s.predicted_tokens, s.kv_load,
                                         s.sched.kv_reserved_tokens() / s.capacity_tokens) for s in replicas)))
        footprints[request.id] = footprint
        return place(request, replicas, footprint)

    router.place = spy
    return views, footprints


def run(cfg, overrides, max_jump=None, requests=None):
    s = build(cfg(*overrides))
    reqs = requests() if requests else make_requests(s.prompt_len, s.output_len, s.arrivals, s.prefix)
    views, footprints = spy_on(s.router)
    res = simulate_cluster(reqs, s.replicas, s.router, max_jump=max_jump)
    records = request_records(res.requests)
    row, rows = cluster_summary(res, s.slo, records)
    return res, views, footprints, records, row, rows


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows).drop(columns=["engine_steps"], errors="ignore")  # the one thing a jump changes


# ---- routing does not depend on max_jump ------------------------------------------------------------
@pytest.mark.parametrize("router", sorted(ROUTERS))
@pytest.mark.parametrize("policy, extra", [
    ("hf", ()), ("paged", ()), ("vllm", ()), ("s3", ()), ("orca", ()),
    ("paged", TIGHT + ("policy.preemption_mode=swap",)), ("vllm", TIGHT), ("s3", TIGHT),
    ("vllm", TIGHT + ("policy.prefix_caching=true", "shared_prefix.tokens=128", "shared_prefix.groups=3")),
])
def test_routing_is_the_same_jumping_or_stepping(cfg, router, policy, extra):
    over = BURSTY + (f"policy={policy}", f"cluster.router={router}") + extra
    jumped, v_jump, _, rec_jump, row_jump, rows_jump = run(cfg, over)
    stepped, v_step, _, rec_step, row_step, rows_step = run(cfg, over, max_jump=1)
    # the runs differ in how they move time: jumps happened, and in every decision of the stepped run the
    # scheduler's pool was the replica's state
    assert sum(r.engine_steps for r in jumped.replicas) < sum(r.engine_steps for r in stepped.replicas)
    assert all(v[2] == v[3] for _, view in v_step for v in view)
    if policy in GROWS:  # the router decided inside jumps whose KV had grown since the scheduler last advanced
        assert any(v[2] != v[3] for _, view in v_jump for v in view)
    if extra:
        assert row_jump["preemptions"] > 0  # the tight pool did preempt
    # what the router saw, decision by decision (outstanding, predicted footprint, KV load), and so where
    # every request went, and everything after
    assert [(i, tuple(v[:3] for v in view)) for i, view in v_jump] == \
           [(i, tuple(v[:3] for v in view)) for i, view in v_step]
    assert (jumped.assignment == stepped.assignment).all()
    pd.testing.assert_frame_equal(rec_jump, rec_step)
    pd.testing.assert_frame_equal(_frame([row_jump]), _frame([row_step]))
    pd.testing.assert_frame_equal(_frame(rows_jump), _frame(rows_step))


# ---- bookkeeping ----------------------------------------------------------------------------------------
def test_bookkeeping_follows_the_requests_in_flight(cfg):
    """At every decision, a replica's outstanding requests are those routed to it earlier that finish after
    now, and its predicted footprint is theirs summed; at the end everything is zero."""
    over = BURSTY + ("policy=vllm", "cluster.router=predicted", "arrival.rate=60")
    res, views, footprints, records, _, _ = run(cfg, over)
    fin = records.set_index("id").finished
    arrival = records.set_index("id").arrival
    routed: list[list[int]] = [[] for _ in res.states]
    crowded = released = 0
    for rid, view in views:
        now = arrival[rid]
        for i, (outstanding, predicted, _, _) in enumerate(view):
            live = [q for q in routed[i] if fin[q] > now]
            maybe = [q for q in routed[i] if fin[q] == now]  # finishing at this very instant: either way
            assert len(live) <= outstanding <= len(live) + len(maybe)
            if not maybe:
                assert predicted == sum(footprints[q] for q in live)
            crowded += len(live) >= 2
            released += bool(live) and len(live) < len(routed[i])
        routed[int(res.assignment[rid])].append(rid)
    assert crowded and released  # decisions with several requests in flight, beside finished ones
    _assert_drained(res)


@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_every_replica_is_drained_at_the_end(cfg, router):
    res, views, footprints, _, _, _ = run(cfg, BURSTY + ("policy=s3", f"cluster.router={router}"))
    assert len(views) == len(res.requests) and len(footprints) == len(res.requests)  # each routed once
    _assert_drained(res)


def _assert_drained(res):
    counts = np.bincount(res.assignment, minlength=len(res.states))
    for state, n in zip(res.states, counts):
        assert state.routed == n
        assert state.outstanding == 0 and state.predicted_tokens == 0 and state.tracked_requests == 0
        assert state.kv_load == 0.0


def _scenario():
    """r0 long and r1 short at t=0; r2 once r1 has finished and r0 has not; r3 when everything is done."""
    return make_requests(np.array([10, 10, 10, 10]), np.array([400, 2, 2, 2]), np.array([0.0, 0.0, 2.0, 100.0]))


@pytest.mark.parametrize("router", ["least_outstanding", "predicted"])
@pytest.mark.parametrize("max_jump", [None, 1])
def test_a_hand_worked_scenario(cfg, router, max_jump):
    over = ("model=llama-2-7b", "max_seq_len=512", "policy=orca", "predictor=oracle", "cluster.replicas=2",
            f"cluster.router={router}")
    res, views, f, records, _, _ = run(cfg, over, max_jump=max_jump, requests=_scenario)
    fin = records.set_index("id").finished
    assert fin[1] < 2.0 < fin[0] < 100.0 and fin[2] < 100.0  # the scenario's premise
    tracked = router == "predicted"
    if tracked:
        assert f[0] > f[1] > 10  # prompt plus the predicted output (the middle of its bucket)
    p = (lambda *x: x) if tracked else (lambda *x: (0,) * len(x))
    seen = [(rid, tuple(v[0] for v in view), tuple(v[1] for v in view)) for rid, view in views]
    assert seen == [
        (0, (0, 0), p(0, 0)),  # nothing routed yet: r0 -> replica 0
        (1, (1, 0), p(f[0], 0)),  # r0 counted, its footprint held: r1 -> replica 1
        (2, (1, 0), p(f[0], 0)),  # r1 finished and released, r0 still running: r2 -> replica 1
        (3, (0, 0), p(0, 0)),  # all finished and released: r3 -> replica 0
    ]
    assert list(res.assignment) == [0, 1, 1, 0]
    _assert_drained(res)
