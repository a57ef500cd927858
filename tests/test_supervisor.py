"""The S3 supervisor beyond the paper: growing in place, growing from the predicted distribution,
reserving at a quantile of it, and making room by preempting the cheapest requests (hand-worked cases)."""
import numpy as np
import pytest

from s3sim.core.errors import ConfigError
from s3sim.core.kv_pool import KVPool
from s3sim.core.policies.s3 import S3Config, S3Scheduler
from s3sim.core.policies.supervisor import Supervisor, check_quantile, quantile_bucket
from s3sim.core.predictors import Buckets
from s3sim.core.predictors.base import Predictor
from s3sim.core.request import make_requests
from s3sim.hardware.gpus import get_gpu
from s3sim.hardware.models import get_model
from s3sim.latency import RooflineLatency
from s3sim.simulator.engine import simulate

LAT = RooflineLatency(get_model("gpt-j-6b"), get_gpu("a100-80gb-pcie"))
B = Buckets.equal(10, 100)  # buckets of 10 tokens up to 100


class FixedDistribution(Predictor):
    """Every request gets the same predicted distribution (or its row in `rows`, by request id)."""
    name = "fixed"

    def __init__(self, buckets, dist=None, rows=None):
        super().__init__(buckets)
        self.dist, self.rows = dist, rows

    def probabilities(self, requests):
        return np.array([self.rows[r.id] if self.rows is not None else self.dist for r in requests], np.float32)

    def predict(self, requests):
        return self.probabilities(requests).argmax(1)


def s3(cap, pred, **kw):
    sup_kw = {k: kw.pop(k) for k in ("grow", "in_place", "quantile") if k in kw}
    return S3Scheduler(KVPool(cap), 100, pred, Supervisor(pred, **sup_kw), **kw)


def reqs(prompts, outputs):
    return make_requests(prompts, outputs, [0.0] * len(prompts))


def test_quantile_bucket_reads_the_renormalised_tail():
    d = np.array([0.5, 0.1, 0.0, 0.3, 0.1])
    assert quantile_bucket(d, 0.5) == 0          # cdf 0.5 at bucket 0
    assert quantile_bucket(d, 0.55) == 1
    assert quantile_bucket(d, 0.9) == 3
    # above bucket 0: (0.1, 0, 0.3, 0.1) / 0.5 -> cdf 0.2, 0.2, 0.8, 1.0
    assert quantile_bucket(d, 0.5, above=0) == 3
    assert quantile_bucket(d, 0.1, above=0) == 1
    assert quantile_bucket(d, 0.5, above=4) == -1  # no mass above the last bucket
    assert quantile_bucket(np.array([1.0, 0, 0]), 0.5, above=0) == -1


@pytest.mark.parametrize("q", [0, 1, -0.1, 1.5, "half", None])
def test_a_quantile_outside_the_open_interval_is_refused(q):
    with pytest.raises(ConfigError, match="policy.quantile must be a fraction strictly between 0 and 1"):
        check_quantile(q)
    with pytest.raises(ConfigError, match="policy.quantile"):
        S3Config(name="s3", quantile=q)


def test_reserve_at_a_quantile_of_the_distribution():
    dist = [0.4, 0.2, 0.0, 0.3, 0.1, 0, 0, 0, 0, 0]
    for q, bucket in [(0.3, 0), (0.5, 1), (0.7, 3), (0.95, 4)]:
        res = simulate(reqs([5], [8]), s3(10_000, FixedDistribution(B, dist), reserve="quantile", quantile=q), LAT)
        r = res.requests[0]
        assert r.first_bucket == bucket and r.reserved_out == B.upper_of(bucket)
    # the most likely bucket (the paper) whatever the quantile
    res = simulate(reqs([5], [8]), s3(10_000, FixedDistribution(B, dist), reserve="mode", quantile=0.95), LAT)
    assert res.requests[0].first_bucket == 0


def test_conditional_growth_skips_buckets_the_distribution_rules_out():
    """Predicted: 60 % at most 10 tokens, else 61-70 tokens. A 65-token answer overflows bucket 0 once and grows
    straight to bucket 6 (grow=next walks up one bucket per overflow: six overflows)."""
    dist = [0.6, 0, 0, 0, 0, 0, 0.4, 0, 0, 0]
    cond = simulate(reqs([5], [65]), s3(10_000, FixedDistribution(B, dist), grow="conditional"), LAT)
    r = cond.requests[0]
    assert cond.scheduler.supervisor.overflows == 1 and r.bucket == 6 and r.reserved_out == 70
    nxt = simulate(reqs([5], [65]), s3(10_000, FixedDistribution(B, dist), grow="next"), LAT)
    assert nxt.scheduler.supervisor.overflows == 6 and nxt.requests[0].bucket == 6
    # past every bucket the distribution names (72 > 70), it falls back to the next bucket
    past = simulate(reqs([5], [72]), s3(10_000, FixedDistribution(B, dist), grow="conditional"), LAT)
    assert past.requests[0].bucket == 7 and past.scheduler.supervisor.overflows == 2
    for res in (cond, nxt, past):
        assert res.scheduler.preemptions == 0 and res.requests[0].generated == res.requests[0].output_len


def test_in_place_is_the_default_and_the_paper_supervisor_is_an_option():
    assert S3Config(name="s3").in_place is True
    dist = [1.0] + [0] * 9
    grown = simulate(reqs([5], [15]), s3(10_000, FixedDistribution(B, dist)), LAT).scheduler
    assert grown.preemptions == 0 and grown.supervisor.grown_in_place == 1
    paper = simulate(reqs([5], [15]), s3(10_000, FixedDistribution(B, dist), in_place=False), LAT).scheduler
    assert paper.preemptions == 1 and paper.by_cause["overflow"]["preemptions"] == 1


def test_make_room_versus_preempting_the_overflowing_request():
    """Three requests: 0 overflows late (at 30 tokens, prompt 20) while 1 and 2 (prompt 2) have just started.
    Without make_room request 0 is preempted and recomputes 20 + 30 tokens; with it, the newest small request
    is preempted instead (it recomputes its 2-token prompt and the few tokens it had) and request 0 grows."""
    dist0 = [0, 0, 1.0] + [0] * 7          # predicted 21-30, really 45
    dist_small = [0, 0, 0, 0, 1.0] + [0] * 5  # predicted 41-50, really 50
    pred = FixedDistribution(B, rows={0: dist0, 1: dist_small, 2: dist_small})
    cap = (20 + 30) + 2 * (2 + 50)  # exactly the three reservations
    work = lambda: make_requests([20, 2, 2], [45, 50, 50], [0.0, 0.0, 0.0])
    plain = simulate(work(), s3(cap, pred), LAT)
    roomy = simulate(work(), s3(cap, pred, make_room=True), LAT)
    for res in (plain, roomy):
        assert all(r.generated == r.output_len for r in res.requests)
        assert res.scheduler.pool.used == 0
        s = res.scheduler
        assert sum(c["preemptions"] for c in s.by_cause.values()) == s.preemptions
        assert sum(c["recomputed_tokens"] for c in s.by_cause.values()) == sum(r.recomputed_tokens for r in res.requests)
    r0 = {r.id: r for r in plain.requests}[0]
    assert r0.preemptions == 1 and r0.recomputed_tokens == 20 + 30
    rr = {r.id: r for r in roomy.requests}
    assert rr[0].preemptions == 0 and roomy.scheduler.supervisor.grown_in_place == 2  # 30 -> 40 -> 50 tokens
    victims = [r for r in roomy.requests if r.preemptions]
    assert len(victims) == 1 and victims[0].id in (1, 2)
    assert victims[0].recomputed_tokens == 2 + 30 < 20 + 30
    assert roomy.scheduler.by_cause["memory"]["preemptions"] == 1


def test_make_room_keeps_the_overflowing_request_preempted_when_it_is_the_cheaper():
    """Request 0 overflows at 10 tokens (prompt 2); the only other request has run 10 tokens of a 40-token
    prompt: preempting it would recompute 50 tokens, preempting request 0 only 12."""
    pred = FixedDistribution(B, rows={0: [1.0] + [0] * 9, 1: [0, 1.0] + [0] * 8})
    cap = (2 + 10) + (40 + 20)
    res = simulate(make_requests([2, 40], [15, 20], [0.0, 0.0]), s3(cap, pred, make_room=True), LAT)
    r = {q.id: q for q in res.requests}
    assert r[0].preemptions == 1 and r[1].preemptions == 0
    assert r[0].recomputed_tokens == 2 + 10


def _overload(max_wait):
    """A stream of small requests (prompt 5, 5 tokens: 15 reserved, in the smallest bucket) arriving every
    10 ms keeps a 120-token pool partly busy; one large request (prompt 10, 95 tokens: 110 reserved) arrives
    at 50 ms. Decreasing first-fit admits the large one only when 110 tokens are free at once."""
    n = 400
    arrivals = [0.01 * i for i in range(n)] + [0.05]
    prompts, outputs = [5] * n + [10], [5] * n + [95]
    dist = {i: [0, 1.0] + [0] * 8 for i in range(n)}
    dist[n] = [0] * 9 + [1.0]
    pred = FixedDistribution(B, rows=None)
    reqs_ = make_requests(prompts, outputs, arrivals)
    big = next(r for r in reqs_ if r.output_len == 95)
    pred.rows = {r.id: (dist[n] if r is big else dist[0]) for r in reqs_}
    res = simulate(reqs_, s3(120, pred, max_wait=max_wait), LAT)
    return res, big


def test_aging_bounds_a_large_requests_wait():
    starved, big = _overload(None)
    last_small = max(r.arrival for r in starved.requests if r is not big)
    wait_free = big.admitted - big.arrival
    assert wait_free > 0.5 * last_small  # it waits behind the stream, most of the run
    aged, big_aged = _overload(0.2)
    wait_aged = big_aged.admitted - big_aged.arrival
    # admitted within max_wait plus the time the small requests in flight need to drain (a few iterations)
    assert wait_aged < 0.2 + 0.1 and wait_aged < wait_free / 5
    assert aged.scheduler.aged_admissions >= 1
    for res in (starved, aged):
        assert all(r.generated == r.output_len for r in res.requests) and res.scheduler.pool.used == 0


def test_max_wait_must_be_a_non_negative_number():
    with pytest.raises(ConfigError, match="policy.max_wait must be a non-negative number"):
        S3Config(name="s3", max_wait=-1.0)


def test_prediction_latency_is_charged_before_admission_one_request_at_a_time():
    """Three requests at t=0 and one at t=1 s through a predictor taking 0.1 s each: ready at 0.1, 0.2, 0.3 and
    1.1 s; none is admitted before its prediction, and TTFT (from arrival) includes the wait."""
    dist = [1.0] + [0] * 9
    work = make_requests([5, 5, 5, 5], [3, 3, 3, 3], [0.0, 0.0, 0.0, 1.0])
    sched = s3(10_000, FixedDistribution(B, dist))
    sched.predict_s = 0.1
    res = simulate(work, sched, LAT)
    got = sorted(res.requests, key=lambda r: r.id)
    assert [round(r.ready, 9) for r in got] == [0.1, 0.2, 0.3, 1.1]
    for r in got:
        assert r.admitted >= r.ready and r.first_token - r.arrival > r.ready - r.arrival
    free = simulate(make_requests([5, 5, 5, 5], [3, 3, 3, 3], [0.0, 0.0, 0.0, 1.0]),
                    s3(10_000, FixedDistribution(B, dist)), LAT)
    assert all(r.admitted == r.arrival for r in free.requests)


def test_predictor_latency_config_is_checked(tmp_path):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", "from s3sim.cli import main; main()", "predictor.latency_ms=-3",
                        "num_requests=5", f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "predictor.latency_ms must be a non-negative number of milliseconds, got -3" in p.stderr
    q = subprocess.run([sys.executable, "-c", "from s3sim.cli import main; main()", "policy.quantile=1.5",
                        "num_requests=5", f"hydra.run.dir={tmp_path}/run2"], capture_output=True, text=True, cwd=tmp_path)
    assert q.returncode == 2 and len(q.stderr.strip().splitlines()) == 1
    assert "policy.quantile must be a fraction strictly between 0 and 1, got 1.5" in q.stderr


def test_reserve_by_cost_trades_memory_against_the_expected_recompute():
    """Prompt 10; 50 % <= 10 tokens, 50 % in 41-50. Reserving bucket 0 costs (10 + 10) * (1 + w * 0.5), bucket 4
    costs 10 + 50 = 60: bucket 0 for w < 4, bucket 4 above."""
    dist = [0.5, 0, 0, 0, 0.5, 0, 0, 0, 0, 0]
    for w, bucket in [(0.0, 0), (1.0, 0), (3.9, 0), (4.1, 4), (10.0, 4)]:
        res = simulate(reqs([10], [8]), s3(10_000, FixedDistribution(B, dist), reserve="cost", overflow_cost=w), LAT)
        assert res.requests[0].first_bucket == bucket, w
    with pytest.raises(ConfigError, match="policy.overflow_cost must be a non-negative number"):
        S3Config(name="s3", overflow_cost=-1.0)


def test_s3_over_paged_blocks_reserves_whole_blocks_with_the_same_order_and_supervisor():
    """policy.block_size: reservations round up to whole blocks of a paged pool; 1 is tokens (the default)."""
    assert S3Config(name="s3").block_size == 1
    for bad in (0, -16, 2.5, True):
        with pytest.raises(ConfigError, match="policy.block_size must be a positive integer"):
            S3Config(name="s3", block_size=bad)
    dist = [0, 1.0] + [0] * 8  # every request reserves 20 output tokens
    seen = []

    class Watch(S3Scheduler):
        def _admit(self, r, batch, now):
            seen.append(self.pool.held[r.id])
            super()._admit(r, batch, now)

    pred = FixedDistribution(B, dist)
    blocks = Watch(KVPool(100 // 16, unit_tokens=16), 100, pred, Supervisor(pred))
    res = simulate(reqs([5, 30, 13], [15, 25, 40]), blocks, LAT)
    # ceil((30 + 20) / 16) = 4 blocks first (largest first), then the largest that fits the 2 left,
    # ceil((5 + 20) / 16) = 2; ceil((13 + 20) / 16) = 3 when blocks come back
    assert seen[:3] == [4, 2, 3]
    assert sorted(r.id for r in res.scheduler.finished) == [0, 1, 2]
    assert res.scheduler.supervisor.mispredictions >= 2  # 25 and 40 outgrow 20: grown, in blocks
    res.scheduler.pool.check_empty()
    assert res.kv_capacity_tokens == 96  # 6 whole blocks of the 100 tokens
