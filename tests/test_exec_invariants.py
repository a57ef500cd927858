"""The core's invariants hold on the executor too: every request finishes exactly once with its tokens, the
pool and the cache end empty, real KV never exceeds what the core reserved or the capacity, and the
tokens do not depend on the policy, the memory or preemptions (greedy decoding is deterministic)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exec_helpers import POLICIES, executor, requests, run, scheduler, workload
from s3sim.core.errors import InvariantViolation
from s3sim.core.request import Phase

PROMPTS, OUTPUTS = workload(10, seed=3)


def check_invariants(res, outputs):
    sched = res.scheduler
    ids = [r.id for r in sched.finished]
    assert sorted(ids) == list(range(len(outputs))) and len(set(ids)) == len(ids)
    assert sched.pool.used == 0 and not sched.pool.held
    assert res.peak_kv_blocks <= sched.pool.capacity
    f = res.log.frame()
    assert (f.kv_used <= f.kv_reserved).all()  # real KV within the core's reservations, every iteration
    assert (f.kv_reserved <= res.kv_capacity_tokens).all()
    for r in res.requests:
        assert r.phase is Phase.FINISHED
        assert r.generated == r.output_len == len(res.outputs[r.id]) == outputs[r.id]
        times = res.token_times[r.id]
        assert times == sorted(times) and times[0] == r.first_token and times[-1] == r.last_token
        assert r.arrival <= r.admitted <= r.first_token <= r.last_token <= r.finished


@pytest.fixture(scope="module")
def unconstrained():
    return run("orca", 10_000, PROMPTS, OUTPUTS).outputs


@pytest.mark.parametrize("policy", POLICIES)
def test_invariants_hold_under_pressure(policy, unconstrained):
    res = run(policy, 120, PROMPTS, OUTPUTS, accuracy=0.3, error_shape="uniform")
    check_invariants(res, OUTPUTS)
    assert res.outputs == unconstrained


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=st.sampled_from(POLICIES), cap=st.integers(80, 400), mode=st.sampled_from(["recompute", "swap"]),
       accuracy=st.sampled_from([0.0, 0.5, 1.0]), shape=st.sampled_from(["under", "over", "uniform"]),
       block=st.sampled_from([1, 4, 16]))
def test_tokens_do_not_depend_on_policy_memory_or_preemption(unconstrained, policy, cap, mode, accuracy, shape, block):
    res = run(policy, cap, PROMPTS, OUTPUTS, mode=mode, accuracy=accuracy, error_shape=shape, block_size=block)
    check_invariants(res, OUTPUTS)
    assert res.outputs == unconstrained


def test_static_batches_compute_padding_for_finished_members():
    res = run("ft", 10_000, PROMPTS, OUTPUTS)
    assert res.scheduler.padding_tokens > 0
    longest = max(OUTPUTS)
    for r in res.requests:  # returned with the batch, but its last token came when it was done
        assert r.finished == max(q.finished for q in res.requests)
        assert len(res.token_times[r.id]) == r.output_len
        assert (r.last_token < r.finished) == (r.output_len < longest)


def test_cache_and_pool_must_agree_on_capacity():
    sched = scheduler("orca", 500, OUTPUTS)
    ex = executor(scheduler("orca", 400, OUTPUTS))
    with pytest.raises(InvariantViolation, match="does not match the core pool"):
        type(ex)(ex.runner, sched)


def test_physical_memory_beyond_the_core_accounting_is_caught():
    sched = scheduler("orca", 500, OUTPUTS)
    ex = executor(sched)
    real_advance = sched.advance

    def leaky_advance(batch, k, now):  # the core forgets a request's reservation
        outcome = real_advance(batch, k, now)
        for rid, units in list(sched.pool.held.items())[:1]:
            sched.pool.used -= units
            sched.pool.held[rid] = 0
        return outcome

    sched.advance = leaky_advance
    with pytest.raises(InvariantViolation, match="accounts for only"):
        ex.run(requests(PROMPTS, OUTPUTS), PROMPTS)


def test_log_matches_the_simulator_schema():
    res = run("paged", 200, PROMPTS, OUTPUTS)
    f = res.log.frame()
    assert list(f.columns) == ["start", "duration", "batch_size", "decode_tokens", "itl_tokens", "prefill_tokens",
                               "kv_used", "kv_reserved", "waiting"]
    assert len(f) == res.engine_steps and (f.duration > 0).all()
    assert np.all(np.diff(f.start) > 0)
    assert f.prefill_tokens.sum() == sum(len(p) for p in PROMPTS) + sum(r.recomputed_tokens for r in res.requests)


def test_warm_up_runs_before_the_clock_and_leaves_nothing_behind():
    """The untimed warm-up prefills the first prompts that fit the pool, decodes them once and frees them:
    the run's tokens and its peak KV use are those of a run without it."""
    prompts, outputs = workload(8)
    runs = {}
    for warm in (False, True):
        sched = scheduler("orca", 200, outputs)
        ex = executor(sched)
        ex.warmup = warm
        calls = []
        step = ex.runner.step
        ex.runner.step = lambda d, p, step=step: calls.append((len(d), len(p))) or step(d, p)
        runs[warm] = (ex.run(requests(prompts, outputs), prompts), calls)
    (cold, cold_calls), (warm, warm_calls) = runs[False], runs[True]
    assert warm.outputs == cold.outputs and warm.peak_kv_blocks == cold.peak_kv_blocks
    k = warm_calls[0][1]
    assert k > 0 and warm_calls[:2] == [(0, k), (k, 0)] and warm_calls[2:] == cold_calls
    assert sum(-(-(len(p) + 1) // 4) for p in prompts[:k]) <= 200 // 4  # only what the pool holds


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_s3_making_room_on_the_real_model_keeps_the_tokens(unconstrained, mode):
    """Under-predicted requests in a tight pool: the supervisor grows them in place and preempts the newest
    requests to make room; the executor frees (or swaps) those victims' KV and the tokens do not change."""
    res = run("s3", 120, PROMPTS, OUTPUTS, mode=mode, accuracy=0.0, error_shape="under")
    check_invariants(res, OUTPUTS)
    assert res.outputs == unconstrained
    s = res.scheduler
    assert s.supervisor.grown_in_place > 0 and s.by_cause["memory"]["preemptions"] > 0
    assert s.by_cause["overflow"]["preemptions"] == 0
