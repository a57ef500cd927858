"""The prefix cache of policy=vllm on hand-worked schedules: prompt blocks shared between requests are found
in the same iteration that computes them, held once, limited to the context's first context - 1 tokens, and
evicted when the free queue's head reaches them; and the workloads that say which blocks are shared."""
import json

import numpy as np
import pytest

from s3sim.cluster.build import build
from s3sim.core.errors import ConfigError
from s3sim.core.kv_pool import KVPool
from s3sim.core.policies.vllm import VllmScheduler
from s3sim.core.request import make_requests
from s3sim.simulator.engine import simulate
from test_vllm_policy import OneSecond

SYSTEM = (8, (("system", 0),))  # a shared prefix of 8 tokens: two blocks of 4


def vllm(blocks: int, budget: int = 64) -> VllmScheduler:
    return VllmScheduler(KVPool(blocks, unit_tokens=4), 16, max_num_batched_tokens=budget, max_batch_size=8,
                         prefix_caching=True)


def test_a_request_finds_the_shared_blocks_another_computes_in_the_same_iteration():
    """A registers its two shared blocks and computes them; B, admitted after it in the same iteration, finds
    both (the batch writes a layer's KV before its attention reads it) and prefills only its 2 own tokens.
    The pool holds the shared blocks once: 2 shared + 1 + 1 private = 4 blocks, not 6."""
    sched = vllm(16)
    sched.add(make_requests([10, 10], [3, 3], [0.0, 0.0], prefix=[SYSTEM, SYSTEM]))
    out = sched.schedule(0.0)
    assert [r.id for r in out.prefill] == [0, 1] and out.prefill_lens == [10, 2] and out.prefill_prefix == [0, 8]
    assert sched.cached_tokens == 8 and sched.pool.used == 4 and sched.shared_kv_tokens() == 8
    assert sched.counters()["shared_cached_tokens"] == 8
    sched.pool.check()
    sched.cache.check()


def test_the_whole_run_holds_shared_blocks_once_and_counts_the_kv_used_so():
    res = simulate(make_requests([10, 10], [3, 3], [0.0, 0.0], prefix=[SYSTEM, SYSTEM]), vllm(16), OneSecond())
    plain = simulate(make_requests([10, 10], [3, 3], [0.0, 0.0]), vllm(16), OneSecond())
    f = res.log.frame()
    assert plain.scheduler.pool.peak - res.scheduler.pool.peak == 2  # the two shared blocks, held once
    assert plain.end_time == res.end_time == 3.0
    assert f.kv_used.iloc[0] == 10 + 2 + 2 and (f.kv_used <= f.kv_reserved).all()  # 8 shared tokens once
    assert [r.recomputed_tokens for r in res.requests] == [0, 0]


def test_a_hit_never_covers_the_last_prompt_token():
    """Both prompts are exactly the 8 shared tokens: B may find only the block within its first 7 tokens,
    computes the other 4 itself, into a block of its own (the cached copy stays A's)."""
    sched = vllm(16)
    sched.add(make_requests([8, 8], [2, 2], [0.0, 0.0], prefix=[SYSTEM, SYSTEM]))
    out = sched.schedule(0.0)
    assert out.prefill_lens == [8, 4] and sched.cached_tokens == 4
    assert sched.pool.used == 3 + 2  # A: 2 shared + 1; B: 1 found, its own copy of block 1 and its next token's


def test_freed_shared_blocks_stay_cached_until_the_free_queue_reaches_them():
    """Six blocks. A (8 shared tokens) finishes at t=1: its private block joins the free run at the queue's
    tail, then its shared blocks, last first: [4 free, block 1, block 0]. C (16 tokens, no prefix) takes 5
    blocks from the head, evicting block 1. B then finds block 0 only: 4 tokens cached, 5 computed."""
    sched = vllm(6)
    reqs = make_requests([8, 16, 9], [1, 1, 1], [0.0, 1.5, 3.0], prefix=[SYSTEM, None, SYSTEM])
    fed = []
    schedule = sched.schedule

    def spy(now):
        out = schedule(now)
        fed.extend((r.id, n) for r, n in zip(out.prefill, out.prefill_lens))
        return out

    sched.schedule = spy
    res = simulate(reqs, sched, OneSecond())
    assert fed == [(0, 8), (1, 16), (2, 5)]
    assert sched.cache.evictions == 1 and sched.cached_tokens == 4
    assert res.end_time == 4.0


def test_a_victim_that_finds_a_shared_block_in_use_is_readmitted_as_soon_when_jumping():
    """Both prompts are the 8 shared tokens, so B holds its own copy of block 1 (a hit stops at the 7th token).
    Preempted, B frees that copy, and on readmission finds A's block 1 in use: it needs a block fewer than it
    freed, so it is admitted at the very next iteration, and the multi-iteration jump must not skip it."""
    def go(max_jump):
        sched = VllmScheduler(KVPool(12, unit_tokens=4), 32, max_num_batched_tokens=64, max_batch_size=8,
                              prefix_caching=True)
        res = simulate(make_requests([8, 8], [20, 20], [0.0, 0.0], prefix=[SYSTEM, SYSTEM]), sched, OneSecond(),
                       max_jump=max_jump)
        return [(r.admitted, r.finished, r.preemptions, r.recomputed_tokens) for r in res.requests], sched.cached_tokens

    stepped, jumped = go(1), go(None)
    assert stepped == jumped
    b = stepped[0][1]
    assert b[2] == 1 and b[0] == 0.0


def test_a_kept_lookup_is_never_stale(monkeypatch):
    """A lookup is kept until the cache changes (the waiting head is looked up every step): on a run with shared
    prompts and preemptions, every answer equals a fresh scan of the cache."""
    from s3sim.core.prefix_cache import PrefixCache

    asked = []
    kept = PrefixCache.lookup

    def checked(self, r):
        answer = kept(self, r)
        if answer[0]:
            asked.append(r.id)
            assert answer == self._lookup(r, self.shared_blocks(r), r.preemptions > 0)
        return answer

    monkeypatch.setattr(PrefixCache, "lookup", checked)
    rng = np.random.default_rng(1)
    n = 60
    reqs = make_requests(rng.integers(9, 30, n), rng.integers(5, 40, n), np.sort(rng.uniform(0, 20, n)),
                         prefix=[SYSTEM if i % 2 else None for i in range(n)])
    sched = VllmScheduler(KVPool(40, unit_tokens=4), 64, max_num_batched_tokens=64, max_batch_size=8,
                          prefix_caching=True)
    res = simulate(reqs, sched, OneSecond())
    assert sched.preemptions > 0 and sched.cached_tokens > 0 and len(asked) > 20
    assert all(r.finished > 0 for r in res.requests)


def test_a_preempted_requests_own_blocks_are_found_as_a_walk_over_the_cache_finds_them(monkeypatch):
    """A request outside any shared region finds its own blocks from how many it registered and the lowest one
    evicted since, without a walk: on a run with many preemptions and evictions, every answer equals the walk
    (its keys in order up to the first one the cache no longer holds, at most its first context - 1 tokens)."""
    from s3sim.core.prefix_cache import PrefixCache

    found = []
    fast = PrefixCache._lookup

    def walked(self, r, n_sh, own):
        answer = fast(self, r, n_sh, own)
        hits = []
        for j in range((r.context - 1) // self.bs):
            key = ("own", r.id, r.preemptions, j)
            if key not in self.entries:
                break
            hits.append(key)
        assert not n_sh and answer == (hits, sum(self.entries[k][0] == 0 for k in hits))
        found.append(len(hits))
        return answer

    monkeypatch.setattr(PrefixCache, "_lookup", walked)
    rng = np.random.default_rng(2)
    n = 80
    reqs = make_requests(rng.integers(9, 40, n), rng.integers(5, 60, n), np.sort(rng.uniform(0, 10, n)))
    sched = VllmScheduler(KVPool(40, unit_tokens=4), 64, max_num_batched_tokens=64, max_batch_size=8,
                          prefix_caching=True)
    res = simulate(reqs, sched, OneSecond())
    evicted = sched.cache.evictions
    assert sched.preemptions > 10 and evicted > 0 and len(found) > 20 and 0 in found and max(found) > 2
    assert all(r.finished > 0 for r in res.requests)


def test_without_caching_shared_prompts_are_computed_in_full():
    sched = VllmScheduler(KVPool(16, unit_tokens=4), 16, max_num_batched_tokens=64, max_batch_size=8)
    sched.add(make_requests([10, 10], [3, 3], [0.0, 0.0], prefix=[SYSTEM, SYSTEM]))
    out = sched.schedule(0.0)
    assert out.prefill_lens == [10, 10] and sched.pool.used == 6 and sched.cached_tokens == 0


def mooncake(tmp_path, rows, name="trace.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def trace_cfg(cfg, tmp_path):
    rows = [{"timestamp": 10 * i, "input_length": 1200, "output_length": 20, "hash_ids": [1, 2, 3 + i]}
            for i in range(6)]
    return cfg("workload=trace", f"workload.path={mooncake(tmp_path, rows)}", "workload.format=mooncake",
               "arrival=trace", "policy=vllm", "policy.prefix_caching=true", "num_requests=null",
               "model=llama-3.1-8b", "gpu=a100-80gb-sxm")


def test_a_mooncake_trace_shares_the_blocks_its_hash_ids_say(trace_cfg):
    """Six prompts of 1,200 tokens whose first two 512-token blocks hash alike: every request after the first
    finds 1,024 tokens (64 blocks of 16) computed."""
    setup = build(trace_cfg)
    assert setup.prefix_blocks == 6 and setup.prefix[0][0] == 512
    reqs = make_requests(setup.prompt_len, setup.output_len, setup.arrivals, setup.prefix)
    simulate(reqs, setup.scheduler, setup.latency)
    assert setup.scheduler.cached_tokens == 5 * 1024


def test_bad_hash_ids_and_conflicting_settings_are_one_line_errors(trace_cfg, tmp_path):
    for rows, message in (([{"timestamp": 0, "input_length": 100, "output_length": 5, "hash_ids": [1, 2]}],
                           "line 1: 2 hash_ids cover more than the prompt's 100 tokens"),
                          ([{"timestamp": 0, "input_length": 100, "output_length": 5, "hash_ids": "abc"}],
                           "line 1: hash_ids must be a list")):
        c = {**trace_cfg, "workload": {**trace_cfg["workload"], "path": str(mooncake(tmp_path, rows, "bad.jsonl"))}}
        with pytest.raises(ConfigError, match=message):
            build(c)
    with pytest.raises(ConfigError, match="hash_ids already say"):
        build({**trace_cfg, "shared_prefix": {"tokens": 100, "groups": 2}})
    with pytest.raises(ConfigError, match="hash_block_tokens must be a positive integer"):
        build({**trace_cfg, "workload": {**trace_cfg["workload"], "hash_block_tokens": 0}})


def test_shared_prefix_prepends_a_seeded_system_prompt(cfg):
    plain = build(cfg("num_requests=50"))
    c = cfg("num_requests=50", "shared_prefix.tokens=300", "shared_prefix.groups=3")
    shared = build(c)
    assert (shared.prompt_len == plain.prompt_len + 300).all()
    groups = {p[1] for p in shared.prefix}
    assert len(groups) == 3 and all(p[0] == 300 for p in shared.prefix)
    assert [p[1] for p in build(c).prefix] == [p[1] for p in shared.prefix]  # seeded
    for bad, message in ((("shared_prefix.tokens=-1",), "shared_prefix.tokens must be an integer >= 0"),
                         (("shared_prefix.tokens=10", "shared_prefix.groups=0"),
                          "shared_prefix.groups must be an integer >= 1")):
        with pytest.raises(ConfigError, match=message):
            build(cfg(*bad))
