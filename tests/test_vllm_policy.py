"""The vLLM V1 policy on hand-worked schedules: the token budget, chunked prefill, preemption of the newest
request and no admission in an iteration that preempted. Every iteration takes one second here, so a
timestamp is the number of the iteration that produced it."""
import numpy as np
import pytest

from s3sim.config import build_scheduler
from s3sim.core.errors import ConfigError
from s3sim.core.kv_pool import KVPool
from s3sim.core.policies.vllm import VllmScheduler
from s3sim.core.request import make_requests
from s3sim.latency.base import LatencyModel
from s3sim.simulator.engine import simulate


class OneSecond(LatencyModel):
    """Every non-empty iteration takes one second; moving or copying KV takes no time."""

    def __init__(self):
        pass

    def iteration_time(self, prefill_tokens, prefill_sq, decode_tokens, decode_ctx):
        busy = np.asarray(prefill_tokens) + np.asarray(decode_tokens) + 0 * np.asarray(decode_ctx) > 0
        out = np.where(busy, 1.0, 0.0)
        return float(out) if out.ndim == 0 else out

    def swap_time(self, n_tokens):
        return 0.0 * np.asarray(n_tokens, dtype=float)

    def copy_time(self, n_tokens):
        return 0.0 * np.asarray(n_tokens, dtype=float)


def run(sched, prompts, outputs, arrivals=None):
    arrivals = [0.0] * len(prompts) if arrivals is None else arrivals
    outs = []
    schedule = sched.schedule

    def spy(now):
        out = schedule(now)
        outs.append((now, [r.id for r in out.preempted], [r.id for r in out.prefill], list(out.prefill_lens)))
        return out

    sched.schedule = spy
    res = simulate(make_requests(prompts, outputs, arrivals), sched, OneSecond())
    return res, outs


def test_a_long_prompt_is_chunked_and_keeps_its_place():
    """Budget 8: A's 10-token prompt takes iterations 1 and 2; B (3 tokens) waits behind it, then shares
    iteration 2 with A's last chunk; both emit their first token at its end."""
    sched = VllmScheduler(KVPool(100, unit_tokens=4), 16, max_num_batched_tokens=8, max_batch_size=4)
    res, outs = run(sched, [10, 3], [3, 2])
    a, b = res.requests
    f = res.log.frame()
    assert f.prefill_tokens.tolist() == [8, 5, 0, 0]
    assert f.batch_size.tolist() == [1, 2, 2, 1]
    assert outs[0][2:] == ([0], [8]) and outs[1][2:] == ([0, 1], [2, 3])
    assert (a.first_token, b.first_token, b.finished, a.finished) == (2.0, 2.0, 3.0, 4.0)
    assert a.admitted == 0.0 and b.admitted == 1.0


def test_decodes_take_the_budget_first():
    """Three requests decode while X arrives: with a budget of 5, X's 6-token prompt gets 2 tokens per
    iteration and emits its first token after three chunks."""
    sched = VllmScheduler(KVPool(200, unit_tokens=4), 16, max_num_batched_tokens=5, max_batch_size=4)
    res, _ = run(sched, [1, 1, 1, 6], [10, 10, 10, 2], [0.0, 0.0, 0.0, 0.5])
    f = res.log.frame()
    assert f.prefill_tokens.tolist()[:5] == [3, 2, 2, 2, 0]
    x = res.requests[3]
    assert (x.admitted, x.first_token) == (1.0, 4.0)
    assert (f.decode_tokens + f.prefill_tokens <= 5).all()


def test_the_newest_is_preempted_and_nothing_is_admitted_in_that_iteration():
    """Eight one-token blocks: A and B (2-token prompts) fill them after two decodes; at t=2 they both need
    a block and none is free, so B, the newest, is preempted, and C, which arrived at 1.5 and would fit,
    is not admitted in that iteration."""
    sched = VllmScheduler(KVPool(8, unit_tokens=1), 16, max_num_batched_tokens=64, max_batch_size=8)
    res, outs = run(sched, [2, 2, 1], [5, 5, 1], [0.0, 0.0, 1.5])
    at2 = [o for o in outs if o[0] == 2.0][0]
    assert at2[1] == [1] and at2[2] == []  # B preempted, no prefill
    a, b, c = res.requests
    assert b.preemptions == 1 and a.preemptions == 0 and c.admitted > 2.0
    assert b.recomputed_tokens == 4  # its prompt and the two tokens it had, prefilled again
    res.scheduler.pool.check_empty()


def test_config_is_checked_and_built_by_name():
    cfg = {"max_seq_len": 64, "policy": {"name": "vllm", "max_batch_size": 4, "max_num_batched_tokens": 32,
                                         "block_size": 16}, "predictor": {}}
    sched = build_scheduler(cfg, 1024, np.array([10]))
    assert isinstance(sched, VllmScheduler) and sched.token_budget == 32 and sched.pool.unit_tokens == 16
    for bad, message in (({"preemption_mode": "swap"}, "only recomputes"),
                         ({"max_batch_size": 33}, "at most policy.max_num_batched_tokens"),
                         ({"max_num_batched_tokens": 0}, "max_num_batched_tokens must be a positive"),
                         ({"max_num_batched_tokens": "x"}, "policy.max_num_batched_tokens")):
        with pytest.raises(ConfigError, match=message):
            build_scheduler({**cfg, "policy": {**cfg["policy"], **bad}}, 1024, np.array([10]))


@pytest.mark.parametrize("caching", [False, True])
def test_a_preempted_request_finds_its_surviving_blocks_in_the_prefix_cache(caching):
    """One-token blocks, eight of them. At t=2 B is preempted with no block free before it: its context is 4
    tokens, 3 of them with KV computed (its last sampled token has none yet), so 3 full blocks go to vLLM's
    free queue, behind the block it held for its next token (allocated a step ahead of vLLM, which never
    took it). A's next block is that one, so at t=3 B finds all 3 cached and recomputes 1 token."""
    sched = VllmScheduler(KVPool(8, unit_tokens=1), 16, max_num_batched_tokens=64, max_batch_size=8,
                          prefix_caching=caching)
    res, outs = run(sched, [2, 2], [3, 5])
    b = res.requests[1]
    readmit = [o for o in outs if o[0] == 3.0][0]
    assert b.preemptions == 1 and readmit[2] == [1]
    if caching:
        assert sched.cached_tokens == 3 and b.recomputed_tokens == 1 and readmit[3] == [1]
    else:
        assert sched.cached_tokens == 0 and b.recomputed_tokens == 4 and readmit[3] == [4]
    assert b.finished == res.end_time


def test_any_iteration_level_policy_takes_the_token_budget():
    """S3 (and orca, oracle, paged) with `max_num_batched_tokens`: the same chunked schedule as vllm's first
    test, on S3's reservations; ft refuses a budget; a budget needs max_batch_size below it."""
    from s3sim.core.policies.s3 import S3Scheduler
    from s3sim.core.predictors import Buckets, OraclePredictor

    pred = OraclePredictor(Buckets.equal(4, 16))
    sched = S3Scheduler(KVPool(100), 16, pred, max_num_batched_tokens=8, max_batch_size=4)
    res, _ = run(sched, [10, 3], [3, 2])
    assert res.log.frame().prefill_tokens.tolist() == [8, 5, 0, 0]
    assert [r.first_token for r in res.requests] == [2.0, 2.0]
    cfg = {"max_seq_len": 64, "predictor": {"name": "oracle", "num_buckets": 4},
           "policy": {"name": "s3", "max_batch_size": 4, "max_num_batched_tokens": 32}}
    assert build_scheduler(cfg, 1024, np.array([10])).token_budget == 32
    with pytest.raises(ConfigError, match="must be set and below"):
        build_scheduler({**cfg, "policy": {"name": "s3", "max_num_batched_tokens": 32}}, 1024, np.array([10]))
    with pytest.raises(ConfigError, match="does not apply to ft"):
        build_scheduler({**cfg, "policy": {"name": "ft", "max_batch_size": 4, "max_num_batched_tokens": 32}}, 1024,
                        np.array([10]))


@pytest.mark.parametrize("allocate", ["chunk", "prompt"])
def test_blocks_are_taken_chunk_by_chunk_and_a_part_way_prefill_is_preempted_first(allocate):
    """Eleven one-token blocks, a budget of 4. A (1-token prompt, 6 outputs) decodes; X (7-token prompt) arrives
    at 0.5 and its whole prompt fits at t=1 (8 blocks of the 8 left after A's growth), so it is admitted with a
    3-token chunk. Chunk by chunk (vLLM V1), X holds 3 blocks, then 6 at t=2; at t=3 its last chunk needs 2 and
    A 1 with one free, so X, the newest, is preempted part-way: no token stalls, and its 6 computed tokens
    are computed again once A is done. Reserving the whole prompt at admission instead, X holds all 8 at t=1,
    and at t=2 A, the newest *decoding* request, finds no block and is preempted."""
    sched = VllmScheduler(KVPool(11, unit_tokens=1), 16, max_num_batched_tokens=4, max_batch_size=2,
                          allocate=allocate)
    res, outs = run(sched, [1, 7], [6, 1], [0.0, 0.5])
    a, x = res.requests
    preempted = {o[0]: o[1] for o in outs if o[1]}
    if allocate == "chunk":
        assert preempted == {3.0: [1]}
        assert (a.preemptions, x.preemptions, sched.prefill_preemptions) == (0, 1, 1)
        assert x.recomputed_tokens == 6 and sched.stall_gaps == []
        assert (a.finished, x.admitted, x.first_token) == (6.0, 1.0, 8.0)
        assert sched.summary_fields()["prefill_preemptions"] == 1
    else:
        assert preempted == {2.0: [0]}
        assert (a.preemptions, x.preemptions, sched.prefill_preemptions) == (1, 0, 0)
        assert "prefill_preemptions" not in sched.summary_fields()
    res.scheduler.pool.check_empty()
