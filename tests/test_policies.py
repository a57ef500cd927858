"""Behaviour of each serving policy on tiny hand-built workloads with a small KV budget."""
import numpy as np
import pytest

from s3sim.core.kv_pool import KVPool
from s3sim.core.policies.orca import FasterTransformerScheduler, OrcaScheduler
from s3sim.core.policies.paged import PagedScheduler
from s3sim.core.policies.s3 import S3Scheduler
from s3sim.core.policies.supervisor import Supervisor
from s3sim.core.predictors import Buckets, OraclePredictor, SyntheticPredictor
from s3sim.core.request import make_requests
from s3sim.hardware.gpus import get_gpu
from s3sim.hardware.models import get_model
from s3sim.latency import RooflineLatency
from s3sim.simulator.engine import simulate

LAT = RooflineLatency(get_model("gpt-j-6b"), get_gpu("a100-80gb-pcie"))
REQUEST_FIELDS = ("admitted", "first_token", "last_token", "finished", "preemptions", "recomputed_tokens",
                  "swapped_tokens", "generated")


def reqs(prompts, outputs, arrivals=None):
    if arrivals is None:
        arrivals = [0.0] * len(prompts)
    return make_requests(prompts, outputs, arrivals)


def s3(cap, msl, predictor, grow="next", in_place=False, mode="recompute", max_batch=None):
    return S3Scheduler(KVPool(cap), msl, predictor, Supervisor(predictor, grow=grow, in_place=in_place),
                       preemption_mode=mode, max_batch_size=max_batch)


def max_concurrent(requests):
    """Largest number of requests holding a slot at once (admitted, not yet finished)."""
    events = sorted([(r.admitted, 1) for r in requests] + [(r.finished, -1) for r in requests],
                    key=lambda e: (e[0], e[1]))
    now = best = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best


def assert_all_done(res):
    for r in res.requests:
        assert r.generated == r.output_len
        assert r.arrival <= r.admitted <= r.first_token <= r.last_token <= r.finished
    assert res.scheduler.pool.used == 0
    assert not res.scheduler.pool.held


# ---- ORCA ---------------------------------------------------------------------------------------

def test_orca_reserves_prompt_plus_max_seq_len():
    msl = 100
    cap = 2 * (10 + msl)  # exactly two maximal reservations
    res = simulate(reqs([10] * 6, [50, 20, 80, 10, 30, 5]), OrcaScheduler(KVPool(cap), msl), LAT)
    assert_all_done(res)
    f = res.log.frame()
    assert f.batch_size.max() == 2
    assert max_concurrent(res.requests) == 2
    # reserved memory is always (running requests) x (prompt + max_seq_len), whatever their real length
    assert set(f.kv_reserved.unique()) <= {110, 220}
    assert (f.kv_reserved == 110 * f.batch_size).all()
    assert res.scheduler.preemptions == 0


def test_orca_admits_fcfs_as_slots_free_up():
    msl = 100
    res = simulate(reqs([10] * 6, [50, 20, 80, 10, 30, 5]), OrcaScheduler(KVPool(220), msl), LAT)
    r = sorted(res.requests, key=lambda q: q.id)
    admitted = [q.admitted for q in r]
    assert admitted == sorted(admitted)  # first-come first-served
    assert admitted[0] == admitted[1] == 0.0
    # each later request takes the slot of the first request to finish before it
    finishes = sorted(q.finished for q in r[:2])
    assert admitted[2] == finishes[0]
    for q in r[2:]:
        assert q.admitted in {p.finished for p in r if p.id < q.id}


def test_orca_head_of_line_blocking():
    msl = 100
    # 0 needs 110, 1 needs 200 (not together with 0 in 250), 2 needs 105 (would fit beside 0)
    res = simulate(reqs([10, 100, 5], [40, 10, 10]), OrcaScheduler(KVPool(250), msl), LAT)
    r0, r1, r2 = sorted(res.requests, key=lambda q: q.id)
    assert r0.admitted == 0.0
    assert r1.admitted == r0.finished
    assert r2.admitted >= r1.admitted  # waits behind 1 although it would fit
    assert r2.admitted > 0.0
    # S3 with exact predictions packs 0 and 2 together instead
    p = OraclePredictor(Buckets.equal(10, msl))
    res3 = simulate(reqs([10, 100, 5], [40, 10, 10]), s3(250, msl, p), LAT)
    q0, q1, q2 = sorted(res3.requests, key=lambda q: q.id)
    assert q0.admitted == q1.admitted == q2.admitted == 0.0


def test_orca_respects_max_batch_size():
    res = simulate(reqs([5] * 8, [7] * 8), OrcaScheduler(KVPool(10_000), 16, max_batch_size=3), LAT)
    assert res.log.frame().batch_size.max() == 3
    assert max_concurrent(res.requests) == 3
    assert_all_done(res)


def test_orca_later_arrival_joins_a_running_batch():
    # iteration-level batching: a request arriving mid-run is admitted at the next iteration boundary
    res = simulate(reqs([5, 5], [60, 3], [0.0, 0.05]), OrcaScheduler(KVPool(1000), 64), LAT)
    r0, r1 = sorted(res.requests, key=lambda q: q.id)
    assert r0.admitted == 0.0
    assert 0.05 <= r1.admitted < r0.finished
    assert r1.finished < r0.finished
    starts = res.log.frame().start.to_numpy()
    assert r1.admitted == pytest.approx(starts[starts >= 0.05].min(), abs=1e-12)


# ---- FasterTransformer ----------------------------------------------------------------------------

def test_ft_batches_finish_together():
    msl = 64
    cap = 3 * (8 + msl)
    outputs = [10, 40, 25, 64, 5, 30, 12]
    res = simulate(reqs([8] * 7, outputs), FasterTransformerScheduler(KVPool(cap), msl), LAT)
    assert_all_done(res)
    r = sorted(res.requests, key=lambda q: q.id)
    batches = [r[0:3], r[3:6], r[6:7]]
    for b in batches:
        assert len({q.admitted for q in b}) == 1
        end = max(q.last_token for q in b)
        longest = max(b, key=lambda q: q.output_len)
        assert longest.last_token == end
        for q in b:
            assert q.finished == end  # returned with the batch
            if q.output_len < longest.output_len:
                assert q.last_token < q.finished
    for earlier, later in zip(batches, batches[1:]):
        assert min(q.admitted for q in later) >= max(q.finished for q in earlier)
    assert res.log.frame().batch_size.max() == 3


def test_ft_does_not_admit_into_a_running_batch():
    msl = 64
    # plenty of memory, but the second request arrives while the first batch runs
    res = simulate(reqs([8, 8, 8], [50, 20, 3], [0.0, 0.0, 0.05]), FasterTransformerScheduler(KVPool(10_000), msl),
                   LAT)
    r0, r1, r2 = sorted(res.requests, key=lambda q: q.id)
    assert r1.finished == r0.finished == r0.last_token
    assert r1.last_token < r1.finished
    assert r2.admitted == r0.finished
    # ORCA admits it at once
    res2 = simulate(reqs([8, 8, 8], [50, 20, 3], [0.0, 0.0, 0.05]), OrcaScheduler(KVPool(10_000), msl), LAT)
    q2 = sorted(res2.requests, key=lambda q: q.id)[2]
    assert q2.admitted < r0.finished


def test_ft_padding_keeps_batch_size_and_itl_excludes_padding():
    res = simulate(reqs([4, 4], [3, 10]), FasterTransformerScheduler(KVPool(1000), 16), LAT)
    f = res.log.frame()
    assert (f.batch_size == 2).all()
    assert f.itl_tokens.tolist() == [0, 2, 2] + [1] * 7
    assert res.scheduler.padding_tokens == 7


# ---- S3 -----------------------------------------------------------------------------------------

def test_s3_reserves_prompt_plus_bucket_upper_bound():
    msl = 100
    b = Buckets.equal(10, msl)
    # outputs 23 -> bucket (20, 30], 95 -> (90, 100], 10 -> (0, 10]
    res = simulate(reqs([7, 3, 5], [23, 95, 10]), s3(10_000, msl, OraclePredictor(b)), LAT)
    f = res.log.frame()
    assert f.kv_reserved.iloc[0] == (7 + 30) + (3 + 100) + (5 + 10)
    assert f.kv_reserved.iloc[-1] == 3 + 100
    r = sorted(res.requests, key=lambda q: q.id)
    assert [q.reserved_out for q in r] == [30, 100, 10]
    assert [q.first_bucket for q in r] == [2, 9, 0]


def test_s3_packs_the_largest_waiting_request_that_fits():
    msl = 100
    b = Buckets.equal(10, msl)
    # reservations: 0 needs 10 + 100, 1 needs 10 + 50, 2 needs 10 + 20, 3 needs 10 + 30; capacity 150.
    # Largest first: 0 (110), then the largest of the rest that fits in the 40 left: 3 (filling it exactly)
    res = simulate(reqs([10, 10, 10, 10], [100, 50, 20, 30]), s3(150, msl, OraclePredictor(b)), LAT)
    r = sorted(res.requests, key=lambda q: q.id)
    assert r[0].admitted == 0.0 and r[3].admitted == 0.0
    assert r[1].admitted > 0.0 and r[2].admitted > 0.0
    assert res.log.frame().kv_reserved.iloc[0] == 150


def test_s3_under_prediction_preempts_and_still_finishes():
    msl = 100
    b = Buckets.equal(10, msl)
    pred = SyntheticPredictor(b, 0.0, "under", seed=1)
    res = simulate(reqs([10, 10], [95, 55]), s3(10_000, msl, pred), LAT)
    assert_all_done(res)
    r0, r1 = sorted(res.requests, key=lambda q: q.id)
    # predicted one bucket low: reservation runs out at 90 (resp. 50) tokens, then grows by one bucket
    assert r0.first_bucket == 8 and r0.bucket == 9 and r0.reserved_out == 100
    assert r1.first_bucket == 4 and r1.bucket == 5 and r1.reserved_out == 60
    assert r0.preemptions == 1 and r1.preemptions == 1
    assert r0.recomputed_tokens == 10 + 90 and r1.recomputed_tokens == 10 + 50
    assert r0.generated == 95 and r1.generated == 55
    sup = res.scheduler.supervisor
    assert sup.overflows == 2 and sup.under_predictions == 2 and sup.mispredictions == 2
    assert res.scheduler.preemptions == 2
    assert len(res.scheduler.stall_gaps) == 2


def _uniform_wrong_run(grow, in_place=False, cap=10_000, mode="recompute"):
    msl = 64
    b = Buckets.equal(8, msl)
    rng = np.random.default_rng(4)
    n = 40
    pred = SyntheticPredictor(b, 0.0, "uniform", seed=2)
    work = reqs(rng.integers(1, 16, n), rng.integers(1, msl + 1, n), np.sort(rng.uniform(0, 0.3, n)))
    return simulate(work, s3(cap, msl, pred, grow=grow, in_place=in_place, mode=mode), LAT)


def test_s3_grow_max_preempts_each_request_at_most_once():
    nxt = _uniform_wrong_run("next")
    assert max(r.preemptions for r in nxt.requests) >= 2  # growing bucket by bucket can overflow repeatedly
    mx = _uniform_wrong_run("max")
    assert_all_done(mx)
    assert max(r.preemptions for r in mx.requests) == 1
    assert all(r.reserved_out == 64 for r in mx.requests if r.preemptions)
    assert mx.scheduler.supervisor.overflows == mx.scheduler.preemptions


def test_s3_in_place_growth_with_plenty_of_memory_never_preempts():
    res = _uniform_wrong_run("next", in_place=True)
    assert_all_done(res)
    sup = res.scheduler.supervisor
    assert res.scheduler.preemptions == 0
    assert all(r.preemptions == 0 and r.recomputed_tokens == 0 for r in res.requests)
    assert sup.grown_in_place > 0
    assert sup.grown_in_place == sup.overflows
    # reservation grew in place bucket by bucket until the request fit
    b = res.scheduler.buckets
    for r in res.requests:
        assert r.reserved_out >= r.output_len
        if r.bucket != r.first_bucket:
            assert r.bucket == int(b.of(r.output_len))


def test_s3_in_place_growth_falls_back_to_preemption_when_memory_is_short():
    res = _uniform_wrong_run("next", in_place=True, cap=15 + 64)
    assert_all_done(res)
    sup = res.scheduler.supervisor
    assert res.scheduler.preemptions > 0
    assert sup.overflows == sup.grown_in_place + res.scheduler.preemptions


def test_preemptions_are_split_by_cause():
    """The paper's supervisor preempts an overflowing request even with memory free ("overflow"); growing in
    place, it preempts only when the memory is not there ("memory")."""
    literal = _uniform_wrong_run("next", in_place=False).scheduler
    assert literal.preemptions > 0
    assert literal.by_cause["overflow"]["preemptions"] == literal.preemptions
    assert literal.by_cause["memory"]["preemptions"] == 0
    assert literal.by_cause["overflow"]["recomputed_tokens"] > 0
    short = _uniform_wrong_run("next", in_place=True, cap=15 + 64).scheduler
    assert short.preemptions > 0 and short.by_cause["memory"]["preemptions"] == short.preemptions
    fields = short.cause_fields()
    assert fields["preemptions_memory"] == short.preemptions and fields["preemptions_overflow"] == 0


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_s3_preemption_modes_account_tokens(mode):
    res = _uniform_wrong_run("next", mode=mode, cap=200)
    assert_all_done(res)
    pre = [r for r in res.requests if r.preemptions]
    assert pre
    swapped = sum(r.swapped_tokens for r in res.requests)
    recomputed = sum(r.recomputed_tokens for r in res.requests)
    if mode == "swap":
        assert swapped > 0 and recomputed == 0
        assert all(r.swapped_tokens >= r.prompt_len + 1 for r in pre)
    else:
        assert recomputed > 0 and swapped == 0
        assert all(r.recomputed_tokens >= r.prompt_len + 1 for r in pre)
    assert len(res.scheduler.stall_gaps) == res.scheduler.preemptions


def test_swap_pays_transfer_time():
    msl = 100
    b = Buckets.equal(10, msl)
    runs = {}
    for mode in ("recompute", "swap"):
        pred = SyntheticPredictor(b, 0.0, "under", seed=1)
        runs[mode] = simulate(reqs([10], [95]), s3(10_000, msl, pred, mode=mode), LAT)
    sw, rc = runs["swap"].requests[0], runs["recompute"].requests[0]
    assert sw.swapped_tokens == 10 + 90 and sw.recomputed_tokens == 0
    assert rc.recomputed_tokens == 10 + 90 and rc.swapped_tokens == 0
    # the swap out and the swap in are each priced on the host link
    f = runs["swap"].log.frame()
    assert (f.prefill_tokens > 0).sum() == 1  # a single prefill: the swapped request resumed by decoding
    gap = runs["swap"].scheduler.stall_gaps[0]
    assert gap > 2 * LAT.swap_time(100)


def test_supervisor_counts_mispredictions_consistently_with_buckets():
    msl = 64
    b = Buckets.equal(8, msl)
    rng = np.random.default_rng(11)
    n = 60
    pred = SyntheticPredictor(b, 0.5, "uniform", seed=6)
    work = reqs(rng.integers(1, 16, n), rng.integers(1, msl + 1, n))
    res = simulate(work, s3(2_000, msl, pred), LAT)
    assert_all_done(res)
    sup = res.scheduler.supervisor
    true = {r.id: int(b.of(r.output_len)) for r in res.requests}
    under = sum(r.first_bucket < true[r.id] for r in res.requests)
    over = sum(r.first_bucket > true[r.id] for r in res.requests)
    assert 0 < under and 0 < over
    assert sup.under_predictions == under
    assert sup.over_predictions == over
    assert sup.mispredictions == under + over
    assert pred.observed == sup.mispredictions
    # only under-predictions run out of their reservation
    assert sup.overflows >= under
    assert all(r.preemptions == 0 for r in res.requests if r.first_bucket >= true[r.id])
    assert all(r.preemptions >= 1 for r in res.requests if r.first_bucket < true[r.id])


def test_s3_respects_max_batch_size():
    b = Buckets.equal(4, 16)
    res = simulate(reqs([3] * 9, [5] * 9), s3(10_000, 16, OraclePredictor(b), max_batch=2), LAT)
    assert res.log.frame().batch_size.max() == 2
    assert max_concurrent(res.requests) == 2


# ---- paged ----------------------------------------------------------------------------------------

def _paged(mode, blocks, bs=4, watermark=0.01, msl=64):
    return PagedScheduler(KVPool(blocks, unit_tokens=bs), msl, watermark=watermark, preemption_mode=mode)


@pytest.mark.parametrize("seed", [1, 4, 7])
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_paged_preempts_newest_first_under_a_tight_budget(mode, seed):
    msl, bs = 64, 4
    rng = np.random.default_rng(seed)
    n = 12
    prompts = rng.integers(4, 16, n)
    outputs = rng.integers(30, msl + 1, n)
    blocks = 2 * -(-(16 + msl) // bs)
    sched = _paged(mode, blocks, bs)
    victims = []
    orig = sched._preempt

    def spy(r, now):
        newest = max(sched.running.values(), key=sched.seq)
        victims.append((r.id, newest.id))
        orig(r, now)

    sched._preempt = spy
    res = simulate(reqs(prompts, outputs, np.sort(rng.uniform(0, 0.05, n))), sched, LAT)
    assert_all_done(res)
    assert victims
    assert all(v == newest for v, newest in victims)
    assert sched.preemptions == len(victims) == sum(r.preemptions for r in res.requests)
    assert sched.pool.used == 0
    assert (res.log.frame().kv_reserved <= blocks * bs).all()
    if mode == "swap":
        assert sum(r.swapped_tokens for r in res.requests) > 0
        assert sum(r.recomputed_tokens for r in res.requests) == 0
    else:
        assert sum(r.recomputed_tokens for r in res.requests) > 0
        assert sum(r.swapped_tokens for r in res.requests) == 0


def test_paged_allocates_blocks_on_demand():
    msl, bs = 64, 16
    res = simulate(reqs([10], [40]), _paged("recompute", 100, bs, watermark=0.0, msl=msl), LAT)
    f = res.log.frame()
    # context after each iteration is 11, 12, ..., 50 tokens; blocks cover it, rounded up to 16
    ctx = np.arange(11, 51)
    assert f.kv_used.tolist() == ctx.tolist()
    assert f.kv_reserved.tolist() == (-(-ctx // bs) * bs).tolist()
    assert res.scheduler.pool.peak == 4
    assert res.scheduler.pool.used == 0


def test_paged_needs_no_length_knowledge_and_packs_more_than_orca():
    msl = 64
    cap_tokens = 2 * (8 + msl)
    work = dict(prompts=[8] * 10, outputs=[6] * 10)
    paged = simulate(reqs(work["prompts"], work["outputs"]), _paged("recompute", cap_tokens // 4, 4, msl=msl), LAT)
    orca = simulate(reqs(work["prompts"], work["outputs"]), OrcaScheduler(KVPool(cap_tokens), msl), LAT)
    assert paged.log.frame().batch_size.max() > orca.log.frame().batch_size.max() == 2
    assert paged.end_time < orca.end_time


# ---- oracle vs perfect synthetic ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_oracle_equals_synthetic_with_perfect_accuracy(mode):
    msl = 64
    b = Buckets.equal(10, msl)
    rng = np.random.default_rng(5)
    n = 50
    p, o, a = rng.integers(1, 32, n), rng.integers(1, msl + 1, n), np.sort(rng.uniform(0, 0.5, n))
    a[5:10] = a[5]  # simultaneous arrivals
    oracle = simulate(reqs(p, o, a), s3(400, msl, OraclePredictor(b), mode=mode), LAT)
    synth = simulate(reqs(p, o, a), s3(400, msl, SyntheticPredictor(b, 1.0, "under", seed=7), mode=mode), LAT)
    for x, y in zip(oracle.requests, synth.requests):
        for name in REQUEST_FIELDS:
            assert getattr(x, name) == getattr(y, name), (x.id, name)
    fo, fs = oracle.log.frame(), synth.log.frame()
    assert fo.equals(fs)
    assert oracle.end_time == synth.end_time
    assert oracle.scheduler.preemptions == synth.scheduler.preemptions == 0


# ---- throughput ordering on a memory-tight config ------------------------------------------------------

def test_throughput_order_oracle_s3_orca_ft():
    msl = 512
    rng = np.random.default_rng(0)
    n = 300
    prompts = rng.integers(1, 64, n)
    outputs = np.minimum(rng.geometric(1 / 40, n), msl)  # Alpaca-like: mostly short answers
    assert (outputs < 0.15 * msl).mean() > 0.75
    cap = 4 * (64 + msl)
    b = Buckets.equal(10, msl)

    def throughput(sched):
        res = simulate(reqs(prompts, outputs), sched, LAT)
        assert_all_done(res)
        return n / res.end_time

    t_oracle = throughput(s3(cap, msl, OraclePredictor(b)))
    t_s3 = throughput(s3(cap, msl, SyntheticPredictor(b, 0.8, "uniform", seed=1)))
    t_orca = throughput(OrcaScheduler(KVPool(cap), msl))
    t_ft = throughput(FasterTransformerScheduler(KVPool(cap), msl))
    assert t_oracle >= t_s3 > t_orca >= t_ft
    assert t_s3 > 1.5 * t_orca  # prediction buys a large factor when memory binds


def test_each_policy_declares_the_model_limits_its_from_config_takes():
    """`model_limits` is what `build_scheduler` hands a policy of the served model: it must be what
    `from_config` accepts, no more and no less."""
    import inspect

    from s3sim.core.policies import POLICIES

    for name, cls in POLICIES.items():
        takes = tuple(k for k in ("context", "layers") if k in inspect.signature(cls.from_config).parameters)
        assert cls.model_limits == takes, name
