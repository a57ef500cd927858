"""The executor's tokens are `model.generate`'s greedy tokens, for every policy, with ample memory and with
memory so tight that requests are preempted (recomputed or swapped) and resumed, in fixed and natural mode."""
import json
from collections import Counter

import pytest
import torch

from exec_helpers import MSL, POLICIES, reference, requests, run, scheduler, tiny, workload
from s3exec.engine import Executor
from s3exec.kv_cache import KVCache
from s3exec.model_runner import ModelRunner
from s3exec.models import load_model

PROMPTS, OUTPUTS = workload(8)


@pytest.fixture(scope="module")
def ref():
    return reference(PROMPTS, OUTPUTS)


@pytest.fixture(scope="module")
def natural():
    """An end-of-sequence id that the model really produces early in several answers, and the answers
    `generate` gives when it stops there (or at max_seq_len)."""
    fixed = reference(PROMPTS, [MSL] * len(PROMPTS))
    eos = Counter(t for seq in fixed for t in set(seq[1:MSL // 2])).most_common(1)[0][0]
    return eos, reference(PROMPTS, [MSL] * len(PROMPTS), eos=eos)


def check_equal(res, expected):
    for i, want in enumerate(expected):
        assert res.outputs[i] == want, f"request {i}"


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_matches_generate_with_ample_memory(policy, ref):
    res = run(policy, 4000, PROMPTS, OUTPUTS, accuracy=1.0)
    check_equal(res, ref)
    assert res.scheduler.preemptions == 0
    assert max(res.log.batch) == len(PROMPTS)  # everything fits: one batch


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_tight_memory_preempts_and_resumes_to_the_same_tokens(policy, mode, ref):
    # 150 tokens hold two maximal ft/orca reservations (prompt + 48) at most; s3 mispredicts every length
    # (always one bucket too low), so its supervisor preempts; paged runs out of blocks
    res = run(policy, 150, PROMPTS, OUTPUTS, mode=mode, accuracy=0.0, error_shape="under")
    check_equal(res, ref)
    if policy in ("s3", "paged"):
        assert res.scheduler.preemptions > 0
        moved = sum(r.swapped_tokens if mode == "swap" else r.recomputed_tokens for r in res.requests)
        assert moved > 0
    if policy in ("ft", "orca"):
        assert max(res.log.batch) <= 2


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_s3_reserving_paged_blocks_preempts_and_resumes_to_the_same_tokens(mode, ref):
    """policy.block_size=4: S3's reservations in whole blocks of a paged pool, the same admission order and
    supervisor; every reservation a whole number of blocks, and generate's tokens under preemption."""
    res = run("s3", 150, PROMPTS, OUTPUTS, mode=mode, accuracy=0.0, error_shape="under", s3_block_size=4)
    check_equal(res, ref)
    pool = res.scheduler.pool
    assert pool.unit_tokens == 4 and pool.capacity == 150 // 4 and res.scheduler.preemptions > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_natural_mode_stops_at_end_of_sequence_like_generate(policy, natural):
    eos, expected = natural
    assert any(len(e) < MSL for e in expected) and any(e[-1] != eos for e in expected)
    cap = 4000 if policy in ("ft", "orca") else 200
    res = run(policy, cap, PROMPTS, OUTPUTS, exec_mode="natural", eos_ids=(eos,), caps=[MSL] * len(PROMPTS),
              accuracy=0.0, error_shape="under")
    check_equal(res, expected)
    for r in res.requests:
        assert r.output_len == r.generated == len(expected[r.id])


def test_natural_mode_under_preemption_by_swap(natural):
    eos, expected = natural
    res = run("paged", 120, PROMPTS, OUTPUTS, exec_mode="natural", eos_ids=(eos,), caps=[MSL] * len(PROMPTS),
              mode="swap")
    check_equal(res, expected)
    assert res.scheduler.preemptions > 0


def test_online_arrivals_by_the_wall_clock(ref):
    arrivals = [0.01 * i for i in range(len(PROMPTS))]
    res = run("s3", 4000, PROMPTS, OUTPUTS, arrivals=arrivals)
    check_equal(res, ref)
    for r in res.requests:
        assert r.arrival <= r.admitted <= r.first_token


@pytest.mark.parametrize("config", [
    {"model_type": "gpt_neox", "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2,
     "num_attention_heads": 4, "intermediate_size": 128, "rotary_pct": 0.25, "max_position_embeddings": 256},
    {"model_type": "opt", "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
     "ffn_dim": 128, "word_embed_proj_dim": 64, "max_position_embeddings": 256},
    {"model_type": "qwen2", "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
     "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256},
], ids=lambda c: c["model_type"])
def test_other_architectures_from_a_config_json(tmp_path, config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    m = load_model(str(tmp_path / "config.json"), seed=0)
    prompts, outputs = PROMPTS[:3], [12, 5, 9]
    m.model.generation_config.eos_token_id = None
    with torch.inference_mode():
        want = [m.model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, pad_token_id=0)[0, len(p):]
                .tolist() for p, n in zip(prompts, outputs)]
    sched = scheduler("paged", 64, outputs, block_size=4)
    cache = KVCache(m.num_layers, m.kv_heads, m.head_dim, sched.pool.capacity, sched.pool.unit_tokens, 64)
    res = Executor(ModelRunner(m.model, cache), sched).run(requests(prompts, outputs), prompts)
    check_equal(res, want)
    assert tiny().model is not m.model


def test_a_local_checkpoint_folder_loads_with_its_weights(tmp_path, ref):
    tiny().model.save_pretrained(tmp_path / "ckpt")
    m = load_model(str(tmp_path / "ckpt"))
    assert m.model is not tiny().model and m.weight_bytes == tiny().weight_bytes
    sched = scheduler("orca", 4000, OUTPUTS)
    cache = KVCache(m.num_layers, m.kv_heads, m.head_dim, sched.pool.capacity, sched.pool.unit_tokens, 200)
    res = Executor(ModelRunner(m.model, cache), sched).run(requests(PROMPTS, OUTPUTS), PROMPTS)
    check_equal(res, ref)  # the same weights give the same tokens


def test_prefills_split_over_forward_passes_give_the_same_tokens(ref):
    sched = scheduler("s3", 4000, OUTPUTS, accuracy=1.0)
    m = tiny()
    cache = KVCache(m.num_layers, m.kv_heads, m.head_dim, sched.pool.capacity, sched.pool.unit_tokens, 200)
    runner = ModelRunner(m.model, cache, max_batch_tokens=16)  # at most one or two prompts per pass
    res = Executor(runner, sched).run(requests(PROMPTS, OUTPUTS), PROMPTS)
    check_equal(res, ref)
    assert res.log.frame().batch_size.iloc[0] == len(PROMPTS)  # still one iteration for the core


def test_transformers_continuous_batching_agrees(ref):
    """The bench's baseline serves the same tokens (so its speed is compared on equal work)."""
    from s3exec.lab.bench import hf_continuous_batching
    m = tiny()
    wall, out = hf_continuous_batching(m.model, PROMPTS, OUTPUTS, 2**20, m.kv_bytes_per_token)
    assert out == ref and wall > 0


@pytest.mark.parametrize("policy, budget", [("vllm", 12), ("vllm", 40), ("s3", 12), ("orca", 20)])
def test_chunked_prefill_gives_the_same_tokens(policy, budget, ref):
    """Under a token budget prompts are prefilled in chunks that attend to their cached prefix; the tokens
    are still `generate`'s, with and without preemption (vllm at 150 tokens of KV)."""
    for cap in (4000, 150):
        res = run(policy, cap, PROMPTS, OUTPUTS, accuracy=1.0, max_num_batched_tokens=budget,
                  max_batch_size=min(budget - 1, 8))
        check_equal(res, ref)
        f = res.log.frame()
        assert (f.prefill_tokens + f.decode_tokens <= budget).all()
        assert res.scheduler.prefilling == {}
    assert max(len(p) for p in PROMPTS) > 12  # some prompt needed several chunks at budget 12


@pytest.mark.parametrize("ordering", [dict(order="sjf"), dict(order="srpt", max_wait_s=0.0),
                                      dict(order="srpt", victim="longest_remaining"),
                                      dict(order="srpt", victim="longest_remaining", repredict="measured")],
                         ids=["sjf", "srpt-aged", "srpt-longest-victim", "srpt-repredicted"])
def test_vllm_ordered_by_predicted_length_gives_the_same_tokens(ordering, ref):
    """policy=vllm ordering its queue (and choosing its victims) by a synthetic predictor's lengths, in the
    executor: the order changes, the tokens do not, with ample memory and with preemptions."""
    for cap in (4000, 150):
        res = run("vllm", cap, PROMPTS, OUTPUTS, accuracy=0.5, error_shape="adjacent", max_num_batched_tokens=40,
                  max_batch_size=8, **ordering)
        check_equal(res, ref)
        assert sorted(r.id for r in res.scheduler.finished) == list(range(len(PROMPTS)))
    assert res.scheduler.preemptions > 0  # the tight pool preempted and resumed


def test_vllm_re_predicting_from_the_served_models_hidden_states_gives_the_same_tokens(ref):
    """predictor.repredict=hidden's path on the tiny model: the executor hands the final norm's state of each
    request at each checkpoint to a probe (random weights of the tiny model's width), whose estimates rank srpt
    and pick the victims; the order changes, the tokens do not, and every request reaching a checkpoint was seen."""
    import numpy as np

    from exec_helpers import MSL, executor, requests
    from s3sim.core.predictors.reprediction import HiddenStateRePrediction

    sched = scheduler("vllm", 150, OUTPUTS, accuracy=0.5, error_shape="adjacent", max_num_batched_tokens=40,
                      max_batch_size=8, order="srpt", victim="longest_remaining")
    width = tiny().model.config.hidden_size
    weights = np.random.default_rng(0).normal(0.0, 0.2, width + 2)
    probe = HiddenStateRePrediction(np.zeros(width + 2), np.ones(width + 2), weights, [0, 2, 5], MSL)
    sched.predictor.reprediction = probe
    res = executor(sched).run(requests(PROMPTS, OUTPUTS), PROMPTS)
    check_equal(res, ref)
    assert res.scheduler.preemptions > 0
    assert set(probe._latest) == {i for i, n in enumerate(OUTPUTS) if n > 2}
    assert {c for c, _ in probe._latest.values()} <= {2, 5}
