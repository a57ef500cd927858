"""The `hf` policy (transformers' generate: static, left-padded batches whose KV cache grows by copying), in
the simulator on hand-worked batches and in the executor, where its batches are `generate`'s own."""
import numpy as np
import pytest
import torch

from exec_helpers import reference, tiny, workload
from s3exec.generate import GenerateExecutor
from s3exec.runner import run_exec
from s3sim.config import build_scheduler, structured
from s3sim.core.errors import ConfigError
from s3sim.core.kv_pool import KVPool
from s3sim.core.kv_reservations import peak_tokens
from s3sim.core.policies.hf import HfConfig, HfScheduler
from s3sim.core.request import make_requests
from s3sim.hardware.gpus import get_gpu
from s3sim.hardware.models import get_model
from s3sim.latency import RooflineLatency
from s3sim.metrics.summary import summarize
from s3sim.simulator.engine import simulate

LAT = RooflineLatency(get_model("gpt-j-6b"), get_gpu("a100-80gb-pcie"))


def reqs(prompts, outputs, arrivals=None):
    return make_requests(prompts, outputs, arrivals if arrivals is not None else [0.0] * len(prompts))


def test_a_hand_worked_batch_pads_grows_copies_and_returns_together():
    """Prompts 4, 6, 5 and outputs 2, 5, 3: one batch padded to 6; 4 decode steps after the prefill."""
    sched = HfScheduler(KVPool(1000), 8)
    res = simulate(reqs([4, 6, 5], [2, 5, 3]), sched, LAT)
    f = res.log.frame()
    assert f.batch_size.tolist() == [3] * 5
    assert f.prefill_tokens.tolist() == [18, 0, 0, 0, 0]  # 3 rows x the longest prompt
    assert f.itl_tokens.tolist() == [0, 3, 2, 1, 1]  # padding rows produce no token
    # every row's KV: padded prompt + the tokens fed so far + the one just produced
    assert f.kv_used.tolist() == [21, 24, 27, 30, 33]
    assert (f.kv_used <= f.kv_reserved).all()
    # decode step j copies the 3 x (6 + j - 1) cached tokens into a buffer one token longer, and pays for it
    ctx = np.array([21, 24, 27, 30], dtype=float)
    expected = [LAT.iteration_time(0, 0, 3, c) + LAT.copy_time(c - 3) for c in ctx]
    assert f.duration.tolist()[1:] == pytest.approx(expected, rel=1e-12)
    assert LAT.copy_time(18) == pytest.approx(2 * 18 * LAT.model.kv_bytes_per_token / LAT._bytes_rate)
    assert sched.copied_tokens == 18 + 21 + 24 + 27
    # padding: 3 prompt tokens (6-4, 6-5) and 5 decode rows (request 0 for 3 steps, request 2 for 2)
    assert sched.padding_tokens == 3 + 5
    # peak: both copies at the last step, 2 x 3 x (6 + 5 - 1)
    assert sched.pool.peak == peak_tokens(3, 6, 5) == 60
    r = sorted(res.requests, key=lambda q: q.id)
    end = res.end_time
    assert all(q.finished == end for q in r)  # returned with the batch
    ends = (f.start + f.duration).tolist()
    assert [q.last_token for q in r] == [ends[1], ends[4], ends[2]]
    assert all(q.first_token == ends[0] for q in r)
    row = summarize(res)
    assert row["batch_sizing"] == "max_len" and row["static_batches"] == 1 and row["mean_static_batch"] == 3
    assert row["padding_tokens"] == 8 and row["copied_tokens"] == 90


@pytest.mark.parametrize("sizing, first_batch", [("max_len", 3), ("actual", 5)])
def test_sizing_by_max_len_or_by_the_actual_longest_output(sizing, first_batch):
    cap = peak_tokens(3, 10, 20)  # three rows at prompt 10 + max_seq_len 20
    sched = HfScheduler(KVPool(cap), 20, sizing=sizing)
    res = simulate(reqs([10] * 5, [3] * 5), sched, LAT)
    assert res.log.frame().batch_size.iloc[0] == first_batch
    assert sched.pool.peak <= cap
    assert summarize(res)["batch_sizing"] == sizing


def test_max_batch_size_caps_a_batch():
    sched = HfScheduler(KVPool(10_000), 20, max_batch_size=2)
    res = simulate(reqs([10] * 5, [3] * 5), sched, LAT)
    assert res.log.frame().batch_size.max() == 2 and sched.batches == 3


def test_a_request_whose_peak_alone_cannot_fit_is_a_config_error():
    with pytest.raises(ConfigError, match=r"request 0: policy=hf .* needs 58 KV tokens .* capacity of 50"):
        simulate(reqs([10], [3]), HfScheduler(KVPool(50), 20), LAT)
    simulate(reqs([10], [3]), HfScheduler(KVPool(50), 20, sizing="actual"), LAT)  # 2 x (10 + 2) fits


@pytest.mark.parametrize("field, value, message", [
    ("sizing", "oracle", "policy.sizing 'oracle' is unknown; valid: max_len, actual"),
    ("max_num_batched_tokens", 64, "does not apply to hf"),
    ("preemption_mode", "swap", "generate never preempts"),
])
def test_bad_policy_fields_are_one_line_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        structured(HfConfig, {"name": "hf", field: value}, "policy")


def test_the_copy_moves_each_gpus_share_at_the_measured_streaming_bandwidth():
    """The datasheet model copies the cache at the GPU's measured streaming fraction of its bandwidth (not the
    datasheet's), each of the tensor-parallel GPUs its share of the heads at once; a GPU with no measured
    fraction refuses to price it."""
    from dataclasses import replace
    from s3sim.latency import DatasheetLatency
    m, g = get_model("llama-2-13b"), get_gpu("a100-80gb-sxm")
    one = DatasheetLatency(m, g)
    assert one.copy_time(1000) == pytest.approx(2 * 1000 * m.kv_bytes_per_token / (g.mem_bandwidth * g.copy_efficiency))
    assert one.copy_time(1000) > 2 * 1000 * m.kv_bytes_per_token / g.mem_bandwidth  # slower than the datasheet
    two = DatasheetLatency(m, g, num_gpus=2)
    assert two.copy_time(1000) == pytest.approx(one.copy_time(1000) / 2)
    with pytest.raises(ConfigError, match="no measured copy_efficiency"):
        DatasheetLatency(m, replace(g, copy_efficiency=0.0)).copy_time(10)


def test_a_profile_without_a_measured_copy_time_refuses_hf(tmp_path):
    from s3sim.latency.profiled import ProfiledLatency

    lat = ProfiledLatency.__new__(ProfiledLatency)
    lat.copy_s_per_token, lat.path = None, "p.csv"
    with pytest.raises(ConfigError, match="no measured KV copy time"):
        lat.copy_time(10)
    lat.copy_s_per_token = 2e-9
    assert lat.copy_time(np.array([0, 10])).tolist() == [0.0, 2e-8]


# ---- the executor: generate itself ---------------------------------------------------------------

def run_generate(prompts, outputs, cap, sizing="max_len", msl=48, arrivals=None):
    cfg = {"max_seq_len": msl, "seed": 0, "policy": {"name": "hf", "sizing": sizing},
           "predictor": {"name": "synthetic", "num_buckets": 4, "bucketing": "equal", "accuracy": 1.0,
                         "error_shape": "adjacent"}}
    sched = build_scheduler(cfg, cap, np.asarray(outputs))
    ex = GenerateExecutor(tiny(), sched)
    return ex, ex.run(make_requests([len(p) for p in prompts], outputs, arrivals or [0.0] * len(prompts)), prompts)


@torch.inference_mode()
def batch_generate(prompts, new_tokens):
    """`model.generate` on the left-padded batch, greedy, end-of-sequence ignored."""
    from transformers import GenerationConfig

    model = tiny().model
    model.set_attn_implementation("sdpa")
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    gc = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, eos_token_id=-1, pad_token_id=0)
    return model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)[:, width:].tolist()


def test_executor_tokens_are_generates_batch_by_batch():
    prompts, outputs = workload(n=7, seed=3, max_output=20)
    cap = peak_tokens(3, 24, 48)  # three rows of the longest prompt at max_seq_len: batches of 3, 3, 1
    ex, res = run_generate(prompts, outputs, cap)
    assert [b["rows"] for b in ex.batches] == [3, 3, 1]
    start = 0
    for b in ex.batches:
        ids = list(range(start, start + b["rows"]))
        want = batch_generate([prompts[i] for i in ids], max(outputs[i] for i in ids))
        for i, toks in zip(ids, want):
            assert res.outputs[i] == toks[:outputs[i]]
        start += b["rows"]
    # left padding leaves the tiny model's greedy tokens as generate gives them for each prompt alone
    assert [res.outputs[i] for i in range(7)] == reference(prompts, outputs)
    for r in res.requests:  # one time per token, rising; the batch returns together
        times = res.token_times[r.id]
        assert len(times) == r.output_len and times == sorted(times)
        assert r.first_token == times[0] and r.last_token == times[-1] <= r.finished
    assert res.scheduler.pool.peak <= cap and not res.scheduler.pool.held


def test_executor_serves_arrivals_batch_after_batch():
    prompts, outputs = workload(n=5, seed=4, max_output=12)
    ex, res = run_generate(prompts, outputs, 10_000, arrivals=[0.0, 0.0, 0.05, 0.05, 0.3])
    r = sorted(res.requests, key=lambda q: q.id)
    assert r[0].finished == r[1].finished
    assert all(q.admitted >= q.arrival for q in r)
    assert r[2].admitted >= r[0].finished  # no admission into a running batch


def test_exec_run_writes_hf_summary(tmp_path):
    from test_exec_cli import exec_cfg

    row, result = run_exec(exec_cfg("policy=hf", "policy.sizing=actual"), tmp_path)
    assert row["policy"] == "hf" and row["batch_sizing"] == "actual" and row["static_batches"] >= 1
    assert (tmp_path / "summary.csv").is_file()
    with pytest.raises(ConfigError, match="executor.mode=natural with policy.sizing=actual"):
        run_exec(exec_cfg("policy=hf", "policy.sizing=actual", "executor.mode=natural"))


def test_natural_mode_is_generate_as_shipped():
    """Natural mode: each row ends at its first end-of-sequence token (a token the tiny model does produce is
    made the end-of-sequence here), the batch when every row has; lengths come from generate, not the
    workload, and the tokens up to each end are the fixed-length run's."""
    prompts, outputs = workload(n=4, seed=5, max_output=12)
    _, fixed = run_generate(prompts, [12] * 4, 10_000)
    eos = fixed.outputs[0][2]  # request 0's third token
    cfg = {"max_seq_len": 12, "seed": 0, "policy": {"name": "hf"},
           "predictor": {"name": "synthetic", "num_buckets": 4, "bucketing": "equal", "accuracy": 1.0,
                         "error_shape": "adjacent"}}
    sched = build_scheduler(cfg, 10_000, np.asarray(outputs))
    ex = GenerateExecutor(tiny(), sched, mode="natural", eos_ids=(eos,))
    reqs = make_requests([len(p) for p in prompts], outputs, [0.0] * 4)
    res = ex.run(reqs, prompts, caps=[12] * 4)
    for r in res.requests:
        full = fixed.outputs[r.id]
        end = full.index(eos) + 1 if eos in full else 12
        assert r.output_len == end and res.outputs[r.id] == full[:end]
    assert res.requests[0].output_len <= 3
    assert ex.batches[0]["steps"] == max(r.output_len for r in res.requests)


def test_the_simulator_runs_hf_from_its_config_and_a_profile_without_copy_times_refuses_it(tmp_path):
    from test_silent_results import cfg

    from s3sim.runner import run_config

    row = run_config(cfg("policy=hf", "num_requests=300", "policy.sizing=actual"))
    assert row["policy"] == "hf" and row["batch_sizing"] == "actual" and row["copied_tokens"] > 0
    assert row["preemptions"] == 0 and row["padding_tokens"] > 0
    # the profiled latency model of a profile that never measured a KV copy cannot price hf: refused up front
    import shutil
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "results" / "profiles" / "tiny-llama-cpu.csv"  # make profile's
    shutil.copy(src, tmp_path / "p.csv")
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(ConfigError, match="no measured KV copy time"):
        run_config(cfg("policy=hf", "model=tiny-llama", "num_requests=20", "max_seq_len=64", "latency=profiled",
                       f"latency.path={tmp_path / 'p.csv'}"))


def test_generate_ignores_the_models_own_generation_settings():
    """A model whose generation_config asks for sampling and a repetition penalty is still decoded greedily and
    plainly, as the paged executor decodes it."""
    prompts, outputs = workload(n=3, seed=6, max_output=10)
    model = tiny().model
    saved = model.generation_config
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(do_sample=True, repetition_penalty=5.0, temperature=0.7)
    try:
        _, res = run_generate(prompts, outputs, 10_000)
    finally:
        model.generation_config = saved
    assert [res.outputs[i] for i in range(3)] == reference(prompts, outputs)
