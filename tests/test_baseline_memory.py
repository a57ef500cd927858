"""The baselines hold KV memory as the real systems did, on hand-worked schedules: orca, ft and hf reserve no
more than the model's context, hf's copy holds one layer twice (not the whole cache), and paged runs vLLM's
2023 iterations (prompts alone, decodes paused). Every iteration takes one second here, so a timestamp is
the number of iterations that ended by then."""
import pytest
import yaml

from s3sim.config import CONF_DIR, build_scheduler, structured
from s3sim.core.errors import ConfigError
from s3sim.core.kv_pool import KVPool
from s3sim.core.policies import POLICIES
from s3sim.core.kv_reservations import peak_tokens
from s3sim.core.policies.hf import HfScheduler
from s3sim.core.policies.orca import FasterTransformerScheduler, OrcaScheduler
from s3sim.core.policies.paged import PagedScheduler
from s3sim.core.request import make_requests
from s3sim.metrics.summary import summarize
from s3sim.simulator.engine import simulate
from test_vllm_policy import OneSecond  # every iteration one second, KV moves free


def run(sched, prompts, outputs, arrivals=None, max_jump=None):
    arrivals = [0.0] * len(prompts) if arrivals is None else arrivals
    return simulate(make_requests(prompts, outputs, arrivals), sched, OneSecond(), max_jump=max_jump)


def times(res, field):
    return [getattr(r, field) for r in sorted(res.requests, key=lambda r: r.id)]


# ---- orca and ft: a reservation never runs past the model's context ---------------------------------

@pytest.mark.parametrize("context, admitted, finished", [
    (12, [0.0, 0.0], [3.0, 3.0]),  # 4 + min(10, 12 - 4) = 12 tokens each: both fit in 24
    (None, [0.0, 3.0], [3.0, 6.0]),  # 4 + 10 = 14 each: one at a time
])
def test_orca_reserves_at_most_the_models_context(context, admitted, finished):
    sched = OrcaScheduler(KVPool(24), 10, context=context)
    res = run(sched, [4, 4], [3, 3])
    assert times(res, "admitted") == admitted and times(res, "finished") == finished
    assert sched.pool.peak == (24 if context else 14)


def test_orca_reserves_what_the_context_leaves_after_a_long_prompt():
    sched = OrcaScheduler(KVPool(100), 10, context=12)
    sched.add(make_requests([8, 1], [4, 10], [0.0, 0.0]))
    sched.schedule(0.0)
    assert sched.pool.held == {0: 12, 1: 11}  # 8 + min(10, 4) and 1 + min(10, 11)
    with pytest.raises(ConfigError, match="request 0: a prompt of 12 tokens leaves no room"):
        OrcaScheduler(KVPool(100), 10, context=12).add(make_requests([12], [1], [0.0]))


@pytest.mark.parametrize("cap, admitted, finished", [
    (30, [0.0, 0.0], [10.0, 10.0]),  # one batch: rows of 8 + 10 and 2 + 10 tokens
    (29, [0.0, 4.0], [4.0, 14.0]),  # A alone (8 + 4 = 12 tokens), then B (2 + 10)
])
def test_ft_rows_hold_what_the_batch_may_run_within_the_context(cap, admitted, finished):
    """Context 12, max_seq_len 10: A (prompt 8) may generate 4 tokens, B (prompt 2) 10. A batch runs as long as
    its longest member may, so with B in it A's row holds 8 + 10 tokens (its padding decodes to the end)."""
    sched = FasterTransformerScheduler(KVPool(cap), 10, context=12)
    res = run(sched, [8, 2], [4, 10])
    assert times(res, "admitted") == admitted and times(res, "finished") == finished
    assert times(res, "last_token") == [4.0, finished[1]]
    f = res.log.frame()
    assert (f.kv_used <= f.kv_reserved).all() and f.kv_reserved.max() == (30 if cap == 30 else 12)


# ---- hf: the copy holds one layer's keys or values twice ---------------------------------------------

def test_hf_peak_is_the_cache_plus_one_layers_copy():
    """Two rows of prompt 6 that generate 5 tokens on a 2-layer model: the last step grows each row from 9
    cached tokens to 10 and counts 11 (the token just produced); one of the 2 x 2 tensors of the old cache (18
    tokens) is held twice while it is copied: 22 + ceil(18 / 4) = 27, where two whole caches made 40."""
    assert peak_tokens(2, 6, 5, layers=2) == 27 and peak_tokens(2, 6, 5) == 40
    sched = HfScheduler(KVPool(27), 8, sizing="actual", layers=2)
    res = run(sched, [6, 6], [5, 5])
    assert sched.pool.peak == 27
    assert times(res, "admitted") == [0.0, 0.0] and times(res, "finished") == [5.0, 5.0]
    sched = HfScheduler(KVPool(26), 8, sizing="actual", layers=2)  # one row at a time: 11 + ceil(9 / 4) = 14
    res = run(sched, [6, 6], [5, 5])
    assert times(res, "admitted") == [0.0, 5.0] and sched.pool.peak == 14


def test_hf_sizes_a_row_by_what_the_context_leaves():
    """max_len sizing, max_seq_len 8, context 10: a prompt of 6 may generate 4 tokens, so its peak alone is
    10 + ceil(8 / 4) = 12 on 2 layers, not 14 + ceil(12 / 4) = 17."""
    sched = HfScheduler(KVPool(12), 8, context=10, layers=2)
    sched.check_fits(0, 6, 3)
    with pytest.raises(ConfigError, match=r"needs 12 KV tokens .* one of 2 layers' keys or values held twice"):
        HfScheduler(KVPool(11), 8, context=10, layers=2).check_fits(0, 6, 3)
    res = run(sched, [6], [4])
    assert sched.pool.peak == 12 and res.requests[0].finished == 4.0


# ---- paged as vLLM ran in 2023: prompt-only iterations ------------------------------------------------

def paged(blocks, bs=4, watermark=0.0, iterations="prompt_only", **kw):
    return PagedScheduler(KVPool(blocks, unit_tokens=bs), 16, watermark=watermark, iterations=iterations, **kw)


def test_a_prompt_iteration_pauses_the_running_decodes():
    """A (prompt 4, 3 tokens) runs from 0; B (prompt 4, 2 tokens) arrives at 0.5. Prompt-only: iteration 1-2
    prefills B alone, A waits; A's second token comes at 3, two seconds after its first. Mixed: B's prefill
    shares iteration 1-2 with A's decode."""
    res = run(paged(100), [4, 4], [3, 2], [0.0, 0.5])
    sched = res.scheduler
    f = res.log.frame()
    assert f.prefill_tokens.tolist() == [4, 4, 0, 0] and f.decode_tokens.tolist() == [0, 0, 2, 1]
    assert f.itl_tokens.tolist() == [0, 0, 1, 1]  # A's token at 3 closes a 2 s gap: a sample of its own
    assert times(res, "first_token") == [1.0, 2.0] and times(res, "finished") == [4.0, 3.0]
    assert sched.stall_gaps == [2.0] and sched.pause_gaps == 1
    # B's prompt iteration holds B's 4 prompt tokens and its first token, and A's paused context (5 tokens)
    assert f.kv_used.tolist()[1] == 5 + 5
    assert summarize(res)["itl_mean"] == pytest.approx((1 + 1 + 2) / 3)  # B's 1 s, A's 1 s and 2 s gaps
    mixed = run(paged(100, iterations="mixed"), [4, 4], [3, 2], [0.0, 0.5])
    assert mixed.log.frame().prefill_tokens.tolist() == [4, 4, 0]
    assert times(mixed, "finished") == [3.0, 3.0] and mixed.scheduler.stall_gaps == []


def test_a_prompt_iteration_holds_at_most_prompt_tokens():
    """prompt_tokens=10: of three 4-token prompts, two fit the first prompt iteration (8), the third runs in
    the next; a 12-token prompt, longer than the limit, is prefilled alone."""
    res = run(paged(100, prompt_tokens=10), [4, 4, 4], [2, 2, 2])
    assert res.log.frame().prefill_tokens.tolist() == [8, 4, 0]
    assert times(res, "first_token") == [1.0, 1.0, 2.0] and times(res, "finished") == [3.0, 3.0, 3.0]
    res = run(paged(100, prompt_tokens=10), [12, 4], [1, 1])
    assert res.log.frame().prefill_tokens.tolist() == [12, 4]


def test_max_batch_size_counts_the_paused_requests():
    res = run(paged(100, max_batch_size=2), [4, 4, 4], [3, 3, 1])
    assert times(res, "admitted") == [0.0, 0.0, 3.0] and times(res, "finished") == [3.0, 3.0, 4.0]


def test_a_prompt_iteration_leaves_room_for_no_growth():
    """Blocks of 4, 5 of them, watermark 1 block. A (prompt 3) holds 1 block and its next decode needs a
    second; B (prompt 11) needs 3. At 1, 4 are free: prompt-only admits B (4 - 3 >= 1: A does not grow in that
    iteration); mixed does not (4 - 1 - 3 < 1) until A finishes at 6."""
    one = run(paged(5, watermark=0.2), [3, 11], [6, 1], [0.0, 0.5])
    assert times(one, "admitted") == [0.0, 1.0] and times(one, "finished") == [7.0, 2.0]
    mixed = run(paged(5, watermark=0.2, iterations="mixed"), [3, 11], [6, 1], [0.0, 0.5])
    assert times(mixed, "admitted") == [0.0, 6.0] and times(mixed, "finished") == [6.0, 7.0]


@pytest.mark.parametrize("max_jump", [None, 1])
def test_a_decode_iteration_preempts_the_newest_and_readmits_it_as_a_prompt(max_jump):
    """Blocks of 2, 4 of them. A and B (prompt 2, 4 tokens) take 2 blocks each. At 2 both hold 4 tokens and
    need a third block: B, the newest, is preempted (recompute), A decodes alone to its end at 4; then B
    recomputes its 4 tokens in a prompt iteration (4-5) and decodes its last token at 6."""
    res = run(paged(4, bs=2), [2, 2], [4, 4], max_jump=max_jump)
    a, b = sorted(res.requests, key=lambda r: r.id)
    assert res.log.frame().prefill_tokens.tolist() == [4, 0, 0, 0, 4, 0]
    assert (a.finished, b.admitted, b.finished) == (4.0, 0.0, 6.0)
    assert (b.preemptions, b.recomputed_tokens) == (1, 4)
    assert res.scheduler.stall_gaps == [3.0]  # B's tokens at 2 and 5


def test_a_swapped_request_comes_back_in_a_decode_iteration_before_any_prompt():
    """As above with swap; C (prompt 1, 1 token) arrives at 2.5 and would fit at 3, but no prompt runs while B
    is swapped out. B is swapped back in by the decode iteration 4-5 (its token at 5), C's prompt runs alone
    5-6 and B's last token comes at 7. Mixed admits C beside B's swap-in (4-5)."""
    args = ([2, 2, 1], [4, 4, 1], [0.0, 0.0, 2.5])
    res = run(paged(4, bs=2, preemption_mode="swap"), *args)
    sched = res.scheduler
    assert times(res, "admitted") == [0.0, 0.0, 5.0] and times(res, "finished") == [4.0, 7.0, 6.0]
    assert res.requests[1].swapped_tokens == 4 and sched.stall_gaps == [3.0, 2.0] and sched.pause_gaps == 1
    mixed = run(paged(4, bs=2, preemption_mode="swap", iterations="mixed"), *args)
    assert times(mixed, "admitted") == [0.0, 0.0, 4.0] and times(mixed, "finished") == [4.0, 6.0, 5.0]


# ---- the config: defaults, the served model, and every knob checked -----------------------------------

@pytest.mark.parametrize("name", ["orca", "ft", "hf", "paged", "paged_spf"])
def test_each_knobs_default_is_the_same_in_the_yaml_and_the_structured_config(name):
    stated = yaml.safe_load(open(f"{CONF_DIR}/policy/{name}.yaml"))
    conf = POLICIES[name].Config()
    for key, value in stated.items():
        if key != "name":
            assert getattr(conf, key) == value, key


def cfg(policy: dict, model: str | None = "gpt-j-6b") -> dict:
    out = {"max_seq_len": 2048, "seed": 0, "policy": policy,
           "predictor": {"name": "synthetic", "num_buckets": 4, "accuracy": 0.8}}
    return {**out, "model": {"name": model}} if model else out


def test_the_config_gives_each_baseline_the_served_models_context_and_layers():
    """GPT-J 6B: a 2,048-token context, 28 layers; Llama 3.1 8B: 131,072 tokens."""
    orca = build_scheduler(cfg({"name": "orca"}), 100_000, [10])
    assert orca.context == 2048 and orca.reserved_out(100) == 1948  # 100 + 1948: the whole context
    assert build_scheduler(cfg({"name": "ft"}), 100_000, [10]).context == 2048
    hf = build_scheduler(cfg({"name": "hf"}), 100_000, [10])
    assert (hf.context, hf.layers) == (2048, 28)
    for name in ("paged", "paged_spf"):
        p = build_scheduler(cfg({"name": name}), 100_000, [10])
        assert p.prompt_only and p.prompt_tokens == 2560 and p.max_batch == 256
        assert build_scheduler(cfg({"name": name}, "llama-3.1-8b"), 100_000, [10]).prompt_tokens == 131072
    assert build_scheduler(cfg({"name": "paged"}), 100_000, [10], context=4096).prompt_tokens == 4096
    mixed = build_scheduler(cfg({"name": "paged", "iterations": "mixed", "max_batch_size": None}), 100_000, [10])
    assert not mixed.prompt_only and mixed.max_batch == float("inf")
    vllm = build_scheduler(cfg({"name": "vllm"}), 100_000, [10])  # vLLM V1 mixes prompts and decodes
    assert not vllm.prompt_only
    assert build_scheduler(cfg({"name": "orca"}, model=None), 100_000, [10]).context is None  # no model named


@pytest.mark.parametrize("policy, message", [
    ({"iterations": "both"}, "policy.iterations 'both' is unknown; valid: prompt_only, mixed"),
    ({"prompt_tokens": 0}, "policy.prompt_tokens must be auto or a positive integer, got 0"),
    ({"prompt_tokens": "lots"}, "policy.prompt_tokens must be auto or a positive integer, got 'lots'"),
    ({"prompt_tokens": 1.5}, "policy.prompt_tokens"),
    ({"iterations": "mixed", "prompt_tokens": 4096}, "policy.prompt_tokens=4096 applies to policy.iterations="
                                                     "prompt_only only; valid with iterations=mixed: auto"),
    ({"max_num_batched_tokens": 512, "max_batch_size": 64}, "policy.max_num_batched_tokens=512 .* applies to "
                                                            "policy.iterations=mixed only; valid with "
                                                            "iterations=prompt_only: null"),
    ({"prompt_tokens": 1000}, "policy.prompt_tokens=1000 is below the model's context of 2048 tokens.*valid: "
                              "auto or an integer of at least 2048"),
])
@pytest.mark.parametrize("name", ["paged", "paged_spf"])
def test_a_bad_paged_knob_is_one_line_naming_it(name, policy, message):
    with pytest.raises(ConfigError, match=message) as e:
        build_scheduler(cfg({"name": name, **policy}), 100_000, [10])
    assert "\n" not in str(e.value)


def test_a_bad_knob_built_by_hand_is_refused_too():
    with pytest.raises(ConfigError, match="policy.iterations 'both' is unknown"):
        paged(10, iterations="both")
    with pytest.raises(ConfigError, match="policy.max_num_batched_tokens=32"):
        paged(10, max_num_batched_tokens=32, max_batch_size=4)
    structured(POLICIES["paged"].Config, {"name": "paged", "iterations": "mixed", "max_num_batched_tokens": 512},
               "policy")  # chunked prefill goes with mixed iterations
