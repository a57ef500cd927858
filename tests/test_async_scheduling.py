"""vLLM V1's asynchronous scheduling in the serving loop: step N+1 is scheduled while step N runs, so an arrival
during step N joins step N+2 (an idle engine schedules it at once) and its admission is recorded when its step
was scheduled; the multi-iteration jump stays exact."""
import numpy as np
import pytest

from s3sim.core.kv_pool import KVPool
from s3sim.core.policies.vllm import VllmScheduler
from s3sim.core.request import make_requests
from s3sim.hardware.gpus import get_gpu
from s3sim.hardware.models import get_model
from s3sim.latency import RooflineLatency
from s3sim.simulator.engine import simulate

LAT = RooflineLatency(get_model("gpt-j-6b"), get_gpu("a100-80gb-pcie"))
FIELDS = ("admitted", "first_token", "last_token", "finished", "preemptions", "recomputed_tokens")


def vllm(blocks=400, budget=64, seqs=16, caching=False):
    return VllmScheduler(KVPool(blocks, unit_tokens=16), 64, max_num_batched_tokens=budget, max_batch_size=seqs,
                         prefix_caching=caching)


def test_an_arrival_during_a_step_joins_the_step_after_next_and_an_idle_engine_takes_it_at_once():
    # request 0 decodes alone for a while; request 1 arrives in the middle of its third step
    first = simulate(make_requests([8], [40], [0.0]), vllm(), LAT)
    starts = first.log.frame().start.to_numpy()
    mid = float(starts[3] + starts[2]) / 2  # inside the third step (after a prefill step and two decodes)
    for asynchronous, joins in ((False, 3), (True, 4)):
        res = simulate(make_requests([8, 8], [40, 4], [0.0, mid]), vllm(), LAT, max_jump=1,
                       async_scheduling=asynchronous)
        r0, r1 = sorted(res.requests, key=lambda r: r.id)
        start = res.log.frame().start.to_numpy()
        assert r1.first_token > start[joins] and r1.first_token <= start[joins + 1] + 1e-12
        # the admission is recorded when the step that ran it was scheduled: the start of the step before
        assert r1.admitted == pytest.approx(start[joins - 1] if asynchronous else start[joins])
        assert r0.admitted == 0.0  # the engine was idle: scheduled at once
    assert simulate(make_requests([8], [40], [0.0]), vllm(), LAT, async_scheduling=True).requests[0].first_token \
        == first.requests[0].first_token


def test_a_request_is_taken_in_at_the_first_iteration_boundary_after_it_arrives_even_inside_a_jump():
    """vLLM stamps `queued_ts` when its engine takes a request in, between two steps: the loop records the same
    (`queued`), at the first iteration end from the arrival, also where a decode-only jump ran on past it (a
    request that cannot be admitted does not cut the jump), and at once where the engine was idle."""
    for asynchronous in (False, True):
        # one slot: request 0 decodes alone in a long jump, request 1 waits for the slot
        res = simulate(make_requests([8, 8], [40, 4], [0.0, 0.0301]), vllm(seqs=1), LAT,
                       async_scheduling=asynchronous)
        r0, r1 = sorted(res.requests, key=lambda r: r.id)
        assert r0.queued == 0.0
        boundaries = np.sort(np.concatenate([[0.0], np.cumsum(np.concatenate(res.log.durations))]))
        first = boundaries[np.searchsorted(boundaries, r1.arrival)]
        assert r1.queued == pytest.approx(first) and r1.queued < r0.finished  # not at the jump's end
        assert r1.arrival <= r1.queued <= r1.admitted


@pytest.mark.parametrize("seed", range(12))
def test_with_async_scheduling_the_jump_equals_stepping_and_every_request_finishes_once(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    prompts = rng.integers(1, 120, n)
    outputs = rng.integers(1, 64, n)
    arrivals = np.sort(rng.uniform(0, 0.5, n)) if seed % 3 else np.round(np.sort(rng.uniform(0, 0.5, n)), 2)
    blocks = int(rng.integers(12, 60))  # tight: preemptions happen
    caching = bool(seed % 2)
    runs = [simulate(make_requests(prompts, outputs, arrivals), vllm(blocks, 64, 8, caching), LAT, max_jump=j,
                     async_scheduling=True) for j in (None, 1)]
    for res in runs:
        assert sorted(r.id for r in res.scheduler.finished) == list(range(n))
        for r in res.requests:
            assert r.arrival <= r.admitted <= r.first_token <= r.last_token <= r.finished
            assert r.generated == r.output_len
    jump, step = (sorted(res.requests, key=lambda r: r.id) for res in runs)
    for a, b in zip(jump, step):
        for f in FIELDS:
            assert getattr(a, f) == pytest.approx(getattr(b, f), rel=1e-12, abs=1e-12), (a.id, f)
