"""paged_spf keeps every serving invariant, jumps exactly, and admits shortest-predicted-first."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_invariants_property import (LAT, LAT_ALT, SETTINGS, check_invariants, check_jump_exact,
                                     check_pool_every_step, scenarios)

from s3sim.core.kv_pool import KVPool
from s3sim.core.policies.paged_spf import PagedSpfScheduler
from s3sim.core.predictors import ERROR_SHAPES, Buckets, SyntheticPredictor
from s3sim.core.request import make_requests
from s3sim.simulator.engine import simulate


@st.composite
def spf_scenarios(draw):
    s = draw(scenarios(draw(st.sampled_from(["paged", "paged-2023"]))))  # mixed or prompt-only iterations
    s.update(policy="paged_spf", buckets=draw(st.integers(2, 10)), accuracy=draw(st.floats(0.0, 1.0)),
             shape=draw(st.sampled_from(ERROR_SHAPES)), seed=draw(st.integers(0, 5)))
    return s


def run(s, max_jump):
    bs, msl = s["block"], s["msl"]
    blocks = max(s["cap"] // bs, -(-(max(s["prompts"]) + msl) // bs))
    pred = SyntheticPredictor(Buckets.equal(min(s["buckets"], msl), msl), s["accuracy"], s["shape"], seed=s["seed"])
    sched = PagedSpfScheduler(KVPool(blocks, unit_tokens=bs), msl, pred, watermark=s["watermark"],
                              preemption_mode=s["mode"], max_batch_size=s["max_batch"],
                              iterations=s.get("iterations", "mixed"), prompt_tokens=s.get("prompt_tokens"))
    check_pool_every_step(sched)
    lat = LAT if s["latency"] == "a100" else LAT_ALT
    return simulate(make_requests(s["prompts"], s["outputs"], s["arrivals"]), sched, lat, max_jump=max_jump)


def check_shortest_predicted_first(res):
    """A request admitted (for the first time) while another, never preempted, waited with a smaller
    (bucket, arrival) key would break the order."""
    fresh = [r for r in res.requests if r.preemptions == 0]
    for b in fresh:
        for a in fresh:
            if a.arrival <= b.admitted < a.admitted:
                assert (b.first_bucket, b.id) < (a.first_bucket, a.id), (a, b)


@SETTINGS
@given(data=st.data())
def test_invariants_order_and_exact_jump(data):
    s = data.draw(spf_scenarios())
    jumped, stepped = run(s, None), run(s, 1)
    for res in (jumped, stepped):
        check_invariants(s, res)
        check_shortest_predicted_first(res)
    check_jump_exact(jumped, stepped)


def test_short_requests_overtake_a_long_queue():
    """With an exact predictor, a short request arriving behind long ones is admitted before them."""
    n, msl = 30, 64
    s = dict(block=4, msl=msl, cap=2 * (8 + msl), prompts=[8] * n, outputs=[60] * (n - 1) + [2],
             arrivals=[0.0] * (n - 1) + [0.001], buckets=8, accuracy=1.0, shape="uniform", seed=0,
             watermark=0.0, mode="recompute", max_batch=None, latency="a100")
    res = run(s, None)
    short = res.requests[-1]
    longs = [r for r in res.requests[:-1] if r.admitted > short.arrival]
    assert longs and all(short.admitted <= r.admitted for r in longs)
    assert np.isfinite(short.finished)


@pytest.mark.parametrize("policy", ["paged", "paged_spf"])
def test_config_builds_it(cfg, policy):
    from s3sim.runner import run_config
    row = run_config(cfg(f"policy={policy}", "num_requests=300", "max_seq_len=512"))
    assert row["policy"] == policy and row["num_requests"] == 300
    assert (row["predictor"] == "synthetic") == (policy == "paged_spf")
