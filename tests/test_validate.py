"""`s3sim-validate` on a trimmed copy of a real vLLM run: the table's shape and numbers, the timeline and peer
files, the KV capacity it derives, and one-line errors for bad input."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s3sim.validation.cli import main

DATA = Path(__file__).parents[2] / "shared" / "data"
RUNS = DATA / "vllm_runs"
R4090, R6000 = RUNS / "rtx4090-llama-3.1-8b", RUNS / "rtxpro6000-llama-3.1-8b"
pytestmark = pytest.mark.skipif(not (R4090 / "run").is_dir() or not (R6000 / "run").is_dir(),
                                reason=f"the shared vLLM runs are not at {RUNS} (see ../shared/data/MANIFEST.md)")

N = 40  # requests kept: the first ones of the run
STATS = ("mean", "p50", "p90", "p95", "p99")
METRICS = [f"{lat}_{s}_ms" for lat in ("ttft", "tpot", "e2e_latency") for s in STATS] \
    + ["request_throughput", "output_throughput"] + [f"{part}_{s}_ms" for part in ("queue", "prefill") for s in STATS]
LLAMA31_WEIGHTS, LLAMA31_KV_PER_TOKEN = 8_030_261_248 * 2, 2 * 32 * 8 * 128 * 2


def trim(src: Path, dst: Path, profile: bool = True, peer: bool = True) -> Path:
    """The first N requests of the run in `src` (and its first seconds of timeseries) as a run folder in
    `dst`, with the run's profile linked beside it and a peer table of these N requests (`peer_table`);
    meta.json says N requests. Returns the run folder (`dst/run`)."""
    run = dst / "run"
    run.mkdir(parents=True)
    shutil.copy(src / "run" / "meta.json", run / "meta.json")
    edit_meta(run, lambda m: m.update(num_requests=N))
    lines = (src / "run" / "requests.jsonl").read_text().splitlines()[:N]
    (run / "requests.jsonl").write_text("\n".join(lines) + "\n")
    ts = (src / "run" / "timeseries.csv").read_text().splitlines()[:16]
    (run / "timeseries.csv").write_text("\n".join(ts) + "\n")
    if profile:
        (dst / "profile").symlink_to(src / "profile")
    if peer:
        (dst / "llmservingsim_summary.txt").write_text(peer_table(real_metrics(run / "requests.jsonl")))
    return run


def peer_table(real: dict, off: float = 0.01) -> str:
    """A peer summary in the shared runs' format: `real` rounded as the peer rounds it, its simulation `off`."""
    lines = [f"{'Metric':<24}{'vLLM':>13}{'Sim':>12}{'Diff%':>10}", "-" * 59]
    for lat, name in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e_latency", "Latency")):
        for stat, label in (("mean", "Mean"), ("p50", "Median"), ("p90", "P90"), ("p95", "P95"), ("p99", "P99")):
            v = round(real[f"{lat}_{stat}_ms"], 1)
            lines.append(f"{name + ' ' + label:<24}{v:>13.1f}{v * (1 + off):>12.1f}{100 * off:>+9.1f}%")
    return "\n".join(lines) + "\n"


def edit_meta(run: Path, change) -> None:
    meta = json.loads((run / "meta.json").read_text())
    change(meta)
    (run / "meta.json").write_text(json.dumps(meta))


def real_metrics(path: Path) -> dict:
    """The run's metrics from requests.jsonl, by the definitions the peer's vLLM column reproduces (ms)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    q, f, last, out, sched = (np.array([r[k] for r in rows], dtype=float)
                              for k in ("queued_ts", "first_token_ts", "last_token_ts", "output_toks", "scheduled_ts"))
    many = out > 1
    values = {"ttft": (f - q) * 1e3, "tpot": (last - f)[many] / (out[many] - 1) * 1e3, "e2e_latency": (last - q) * 1e3,
              "queue": (sched - q) * 1e3, "prefill": (f - sched) * 1e3}
    m = {}
    for name, v in values.items():
        m[f"{name}_mean_ms"] = v.mean()
        for p in (50, 90, 95, 99):
            m[f"{name}_p{p}_ms"] = np.percentile(v, p)
    span = last.max() - q.min()
    m["request_throughput"], m["output_throughput"] = len(rows) / span, out.sum() / span
    return {k: m[k] for k in METRICS}


def run_ok(capsys, *args):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return cap.out


def kv_line(stdout: str) -> int:
    m = re.search(r"^KV capacity: ([\d,]+) tokens", stdout, re.M)
    assert m, stdout
    return int(m[1].replace(",", ""))


@pytest.mark.parametrize("latency", ["profile", "datasheet", "borrowed fit"])
def test_validation_table(tmp_path, capsys, latency):
    run = trim(R4090, tmp_path / "rtx4090")
    out = tmp_path / "out"
    extra = {"profile": [], "datasheet": ["--profile", "none"],
             "borrowed fit": ["--profile", "none", "--fit-from", "a100-80gb-sxm"]}[latency]
    stdout = run_ok(capsys, run, "--out", out, *extra)
    assert ("latency: operator profile" if latency == "profile" else "latency: operators on the rtx-4090 datasheet") in stdout
    assert ("efficiencies borrowed from a100-80gb-sxm 0.671" in stdout) == (latency == "borrowed fit")
    assert "prefix caching: on, as recorded; modelled for preempted requests" in stdout
    assert kv_line(stdout) == 2588 * 16
    assert re.search(r"^replay: [\d.]+ s wall, [\d,]+ simulated iterations", stdout, re.M)

    table = pd.read_csv(out / "validation.csv")
    assert list(table.columns) == ["metric", "real", "simulated", "error_pct", "sensitivity", "kv_capacity_source",
                                   "unserved_requests"]
    assert set(table.unserved_requests) == {0}
    assert set(table.kv_capacity_source) == {"recorded"}  # meta.json gives the RTX 4090 run's blocks
    assert list(table.metric) == METRICS
    assert np.isfinite(table[["real", "simulated", "error_pct"]].to_numpy()).all()
    assert (table.simulated > 0).all()
    np.testing.assert_allclose(table.error_pct, 100 * (table.simulated - table.real) / table.real, rtol=1e-12)
    expected = real_metrics(run / "requests.jsonl")
    np.testing.assert_allclose(table.real, [expected[m] for m in METRICS], rtol=1e-9)

    assert (out / "timeline.png").stat().st_size > 0
    data = pd.read_csv(out / "timeline_data.csv")
    assert list(data.columns) == ["t", "real_running", "sim_running", "real_waiting", "sim_waiting", "real_kv_pct",
                                  "sim_kv_pct"]
    ts = pd.read_csv(run / "timeseries.csv")
    np.testing.assert_array_equal(data.t[:len(ts)], ts.t)
    np.testing.assert_array_equal(data.real_running[:len(ts)], ts.running)
    np.testing.assert_array_equal(data.real_kv_pct[:len(ts)], ts.kv_cache_pct)
    assert data.sim_running.max() > 0 and 0 <= data.sim_kv_pct.min() and data.sim_kv_pct.max() <= 100

    peer = pd.read_csv(out / "peer.csv")
    assert list(peer.columns) == ["metric", "real", "peer_simulated", "peer_error_pct"]
    assert list(peer.metric) == METRICS[:15]
    first = round(expected["ttft_mean_ms"], 1)
    assert peer.set_index("metric").loc["ttft_mean_ms"].tolist() == [first, round(first * 1.01, 1), 1.0]


def test_a_peer_table_about_another_run_is_left_out_and_said_so(tmp_path, capsys):
    """The whole 4090 run's peer table beside a copy of its first 40 requests: its real TTFT is not this run's,
    so peer.csv is not written and a note says why; the replay goes on."""
    run = trim(R4090, tmp_path / "rtx4090", peer=False)
    shutil.copy(R4090 / "llmservingsim_summary.txt", tmp_path / "rtx4090" / "llmservingsim_summary.txt")
    stdout = run_ok(capsys, run, "--out", tmp_path / "out", "--profile", "none")
    assert "is not about this run (its real ttft_mean_ms is 65,456.6 where this run's requests.jsonl gives" in stdout
    assert "peer.csv is not written" in stdout and "peer: no peer table" not in stdout
    assert not (tmp_path / "out" / "peer.csv").exists() and (tmp_path / "out" / "validation.csv").is_file()


def test_no_peer_table_is_said(tmp_path, capsys):
    run = trim(R4090, tmp_path / "rtx4090", peer=False)
    stdout = run_ok(capsys, run.parent, "--out", tmp_path / "out", "--profile", "none")  # the folder above run/
    assert "peer: no peer table" in stdout
    assert not (tmp_path / "out" / "peer.csv").exists()
    assert (tmp_path / "out" / "validation.csv").is_file()


def reserve_bytes() -> int:
    """vLLM's non-KV memory, calibrated on the RTX 4090 run (everything known there)."""
    return int(0.9 * 25_250_627_584) - LLAMA31_WEIGHTS - 2588 * 16 * LLAMA31_KV_PER_TOKEN


def test_derived_kv_reproduces_the_calibration_run(tmp_path, capsys):
    """Without kv_cache (nor resolved_config's cache_config, where vLLM records the same) the RTX 4090 run's
    memory gives back the block count it was calibrated on."""
    run = trim(R4090, tmp_path / "rtx4090")
    edit_meta(run, lambda m: (m.pop("kv_cache"), m["resolved_config"].pop("cache_config")))
    stdout = run_ok(capsys, run, "--out", tmp_path / "out")
    assert kv_line(stdout) == 41_408
    assert "derived from vLLM's memory accounting" in stdout and "calibrated on the RTX 4090 run" in stdout
    assert set(pd.read_csv(tmp_path / "out" / "validation.csv").kv_capacity_source) == {"derived"}
    assert "prefix caching: on, vLLM V1's default (the run does not record it)" in stdout


def test_what_kv_cache_leaves_out_is_read_from_resolved_config(tmp_path, capsys):
    """vLLM records the cache in resolved_config.cache_config too: a meta.json without kv_cache keeps its block
    count, block size and prefix caching from there, and says where the blocks came from."""
    run = trim(R4090, tmp_path / "rtx4090")
    def change(m):
        m.pop("kv_cache")
        m["resolved_config"]["cache_config"].update(block_size=32, num_gpu_blocks=1294, enable_prefix_caching=False)
    edit_meta(run, change)
    stdout = run_ok(capsys, run, "--out", tmp_path / "out")
    assert "1,294 blocks x 32), from meta.json (resolved_config.cache_config.num_gpu_blocks=1294)" in stdout
    assert "prefix caching: off, as recorded" in stdout


@pytest.mark.parametrize("where, field, value, words", [
    ("engine_kwargs", "pipeline_parallel_size", 2, "one pipeline stage"),
    ("parallel_config", "pipeline_parallel_size", 2, "one pipeline stage"),
    ("engine_kwargs", "quantization", "awq", "unquantized 16-bit weights"),
    ("model_config", "quantization", "fp8", "unquantized 16-bit weights"),
    ("scheduler_config", "enable_chunked_prefill", False, "chunked prefill"),
    ("engine_kwargs", "scheduling_policy", "priority", "first-come first-served"),
    ("resolved_config", "speculative_config", {"method": "ngram"}, "speculative decoding"),
    ("engine_kwargs", "long_prefill_token_threshold", 512, "token budget alone"),
    ("scheduler_config", "long_prefill_token_threshold", 512, "token budget alone"),
    ("engine_kwargs", "max_num_partial_prefills", 2, "one partial prefill"),
    ("engine_kwargs", "enable_lora", True, "LoRA"),
    ("resolved_config", "lora_config", {"max_lora_rank": 16}, "LoRA"),
    ("engine_kwargs", "cpu_offload_gb", 4, "every weight held on the GPU"),
    ("engine_kwargs", "num_scheduler_steps", 8, "one step per scheduling"),
    ("engine_kwargs", "preemption_mode", "swap", "recomputation"),
])
def test_an_engine_setting_the_replay_would_ignore_is_refused_in_one_line(tmp_path, capsys, where, field, value, words):
    run = trim(R4090, tmp_path / "rtx4090")
    def change(m):
        target = m[where] if where in ("engine_kwargs", "resolved_config") else m["resolved_config"][where]
        target[field] = value
    edit_meta(run, change)
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and field in err and words in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, kv, engine", [("block_size", 16, 32), ("gpu_memory_utilization", 0.9, 0.8),
                                                ("enable_prefix_caching", True, False)])
def test_a_cache_setting_said_twice_must_agree(tmp_path, capsys, field, kv, engine):
    """vLLM's engine arguments of the kv_cache section's names say the same thing: a run that says two things
    is refused in one line naming both."""
    run = trim(R4090, tmp_path / "rtx4090")
    edit_meta(run, lambda m: (m["kv_cache"].update({field: kv}), m["engine_kwargs"].update({field: engine})))
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"kv_cache.{field}={kv!r} but engine_kwargs.{field}={engine!r}" in err


def test_a_cache_setting_is_named_where_it_was_read(tmp_path, capsys):
    """A bad value read from an engine argument is named as that argument; an engine argument that disagrees
    with what vLLM resolved is refused though the kv_cache section says nothing."""
    run = trim(R6000, tmp_path / "a")
    edit_meta(run, lambda m: m["engine_kwargs"].update(gpu_memory_utilization=1.5))
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    assert "engine_kwargs.gpu_memory_utilization must be in (0, 1], got 1.5" in capsys.readouterr().err
    run = trim(R4090, tmp_path / "b")
    edit_meta(run, lambda m: (m.pop("kv_cache"), m["engine_kwargs"].update(block_size=32)))
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "resolved_config.cache_config.block_size=16 but engine_kwargs.block_size=32" in err
    run = trim(R4090, tmp_path / "c")  # the same NaN twice agrees with itself, and is refused as what it is not
    edit_meta(run, lambda m: (m["engine_kwargs"].update(max_num_seqs=float("nan")),
                              m["resolved_config"]["scheduler_config"].update(max_num_seqs=float("nan"))))
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    assert "engine_kwargs.max_num_seqs must be a positive integer, got nan" in capsys.readouterr().err


@pytest.mark.parametrize("field, section", [("async_scheduling", "scheduler_config"),
                                            ("enforce_eager", "model_config")])
def test_an_engine_argument_and_what_vllm_resolved_it_to_must_agree(tmp_path, capsys, field, section):
    run = trim(R4090, tmp_path / "rtx4090")
    value = not json.loads((run / "meta.json").read_text())["resolved_config"][section][field]
    edit_meta(run, lambda m: m["engine_kwargs"].update({field: value}))
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"engine_kwargs.{field}={value!r}" in err and "must agree" in err


def test_the_engine_arguments_size_the_cache_where_meta_json_records_nothing_else(tmp_path, capsys):
    """The PRO 6000 run records no kv_cache and no resolved_config: vLLM's engine arguments of the same names
    (gpu_memory_utilization, block_size, enable_prefix_caching, num_gpu_blocks_override) are read, not
    replaced by vLLM's defaults."""
    run = trim(R6000, tmp_path / "a")
    base = kv_line(run_ok(capsys, run, "--out", tmp_path / "o1"))
    edit_meta(run, lambda m: m["engine_kwargs"].update(gpu_memory_utilization=0.45, block_size=32,
                                                       enable_prefix_caching=False))
    stdout = run_ok(capsys, run, "--out", tmp_path / "o2")
    assert "0.45 x " in stdout and "blocks x 32)" in stdout and "prefix caching: off, as recorded" in stdout
    assert kv_line(stdout) < base / 2
    edit_meta(run, lambda m: m["engine_kwargs"].update(num_gpu_blocks_override=3000))
    stdout = run_ok(capsys, run, "--out", tmp_path / "o3")
    assert "96,000 tokens (3,000 blocks x 32), from meta.json (engine_kwargs.num_gpu_blocks_override=3000)" in stdout


@pytest.mark.parametrize("section, field, value, words", [
    ("parallel_config", "enable_expert_parallel", True, "resolved_config.parallel_config.enable_expert_parallel"),
    ("cache_config", "cache_dtype", "fp8", "resolved_config.cache_config.cache_dtype='fp8' is not modelled"),
    ("model_config", "dtype", "float32", "resolved_config.model_config.dtype='float32' is not modelled"),
])
def test_a_setting_recorded_only_in_resolved_config_is_read_there(tmp_path, capsys, section, field, value, words):
    run = trim(R4090, tmp_path / "rtx4090")
    def change(m):
        m["engine_kwargs"].pop({"cache_dtype": "kv_cache_dtype"}.get(field, field), None)
        m["resolved_config"][section][field] = value
    edit_meta(run, change)
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and words in err, err


def test_an_eager_run_is_priced_eagerly_by_a_step_calibration_too(tmp_path, capsys):
    """The step table's graph modes cover its own batches; a run that had no CUDA graphs (or captured none,
    max_cudagraph_capture_size=0) gets every step in the table's eager mode."""
    table = R6000 / "profile" / "tp1" / "step.csv"
    run = trim(R4090, tmp_path / "a")
    out = run_ok(capsys, run, "--out", tmp_path / "o1", "--step-calibration", table)
    assert "graph modes up to 512 tokens, as the run had them" in out  # the 4090 run records its capture size
    edit_meta(run, lambda m: m["resolved_config"]["compilation_config"].update(max_cudagraph_capture_size=0))
    out = run_ok(capsys, run, "--out", tmp_path / "o2", "--step-calibration", table)
    assert "graph modes up to 0 tokens, as the run had them" in out
    assert "note: the run ran without CUDA graphs (resolved_config.compilation_config.max_cudagraph_capture_size)" in out


def test_an_engine_argument_the_replay_does_not_read_is_named_in_a_note(tmp_path, capsys):
    run = trim(R6000, tmp_path / "a")
    stdout = run_ok(capsys, run, "--out", tmp_path / "o1")
    assert "does not model" not in stdout and "without CUDA graphs" not in stdout
    edit_meta(run, lambda m: m["engine_kwargs"].update(disable_custom_all_reduce=True, enforce_eager=True,
                                                       trust_remote_code=True, max_logprobs=None))
    stdout = run_ok(capsys, run, "--out", tmp_path / "o2")
    assert ("note: meta.json's engine_kwargs sets disable_custom_all_reduce=True, which the replay does not model"
            in stdout)
    assert "note: the run ran without CUDA graphs (engine_kwargs.enforce_eager)" in stdout
    assert "trust_remote_code" not in stdout and "max_logprobs" not in stdout
    assert "schema_version" not in stdout  # the shared runs record schema 1
    edit_meta(run, lambda m: m.update(schema_version=2))
    stdout = run_ok(capsys, run, "--out", tmp_path / "o3")
    assert "note: meta.json's schema_version is 2; the replay reads schema 1's fields" in stdout


def test_the_kv_cache_memory_a_run_sets_sizes_its_cache(tmp_path, capsys):
    run = trim(R4090, tmp_path / "rtx4090")
    def change(m):
        m["kv_cache"].update(num_gpu_blocks=None, kv_cache_memory_bytes=10**10)
        m["resolved_config"]["cache_config"].update(num_gpu_blocks=None, kv_cache_memory_bytes=10**10)
    edit_meta(run, change)
    stdout = run_ok(capsys, run, "--out", tmp_path / "out")
    assert kv_line(stdout) == 10**10 // (16 * LLAMA31_KV_PER_TOKEN) * 16
    assert "from meta.json's kv_cache_memory_bytes (10,000,000,000 bytes per GPU)" in stdout


def test_derived_kv_from_the_gpu_preset(tmp_path, capsys):
    """The RTX PRO 6000 run's meta has no kv_cache and no hardware: the preset's 96 GiB decide."""
    run = trim(R6000, tmp_path / "rtxpro6000", profile=False)
    stdout = run_ok(capsys, run, "--out", tmp_path / "out", "--gpu", "rtx-pro-6000")
    blocks = (int(0.9 * 96 * 2**30) - LLAMA31_WEIGHTS - reserve_bytes()) // (16 * LLAMA31_KV_PER_TOKEN)
    assert blocks == 35_988
    assert kv_line(stdout) == blocks * 16
    assert "latency: operators on the rtx-pro-6000 datasheet" in stdout


def _drop(field, line):
    def change(run):
        lines = (run / "requests.jsonl").read_text().splitlines()
        row = json.loads(lines[line - 1])
        del row[field]
        lines[line - 1] = json.dumps(row)
        (run / "requests.jsonl").write_text("\n".join(lines) + "\n")
    return change


def _set(field, line, value):
    def change(run):
        lines = (run / "requests.jsonl").read_text().splitlines()
        lines[line - 1] = json.dumps(dict(json.loads(lines[line - 1]), **{field: value}))
        (run / "requests.jsonl").write_text("\n".join(lines) + "\n")
    return change


def _engine(**kw):
    return lambda run: edit_meta(run, lambda m: m["engine_kwargs"].update(kw))


def _tp2(meta):
    """Two GPUs in tensor parallel, said alike everywhere meta.json says it."""
    meta["engine_kwargs"]["tensor_parallel_size"] = meta["hardware"]["device_count"] = 2
    meta["resolved_config"]["parallel_config"]["tensor_parallel_size"] = 2


@pytest.mark.parametrize("change, args, words", [
    (lambda run: (run / "requests.jsonl").unlink(), [], ["requests.jsonl", "no such file"]),
    (lambda run: (run / "meta.json").unlink(), [], ["meta.json", "no such file"]),
    (lambda run: ((run / "timeseries.csv").unlink(), (run / "timeseries.csv").symlink_to(run / "gone.csv")), [],
     ["timeseries.csv", "cannot be read"]),
    (_drop("output_toks", 3), [], ["requests.jsonl", "line 3", "'output_toks'", "missing"]),
    (_set("input_toks", 5, "1200"), [], ["requests.jsonl", "line 5", "'input_toks'", "number"]),
    (_set("first_token_ts", 2, "soon"), [], ["line 2", "'first_token_ts'", "must be a number"]),
    (_set("first_token_ts", 2, None), [], ["line 2", "'first_token_ts'", "must be a number"]),  # one null: damage
    (_set("arrival_time", 2, None), [], ["line 2", "'arrival_time'", "must be a number"]),
    (lambda run: (run / "meta.json").write_text("{not json"), [], ["meta.json", "invalid JSON"]),
    (lambda run: (run / "timeseries.csv").write_text("t,running,waiting,kv_cache_pct\n1.0,5,x,1.0\n"), [],
     ["timeseries.csv", "line 2", "'waiting'"]),
    (None, ["--profile", "none", "--gpu", "rtx-9090"], ["unknown gpu 'rtx-9090'"]),
    (None, ["--model", "llama-9"], ["unknown model 'llama-9'"]),
    (lambda run: edit_meta(run, lambda m: m.update(model="org/mystery-7b")), [], ["org/mystery-7b", "--model"]),
    (_engine(data_parallel_size=2), [], ["data_parallel_size"]),
    (_engine(enable_expert_parallel=True), [], ["enable_expert_parallel"]),
    (lambda run: edit_meta(run, _tp2), [], ["tp2"]),  # the RTX 4090 profile has tp1 only
    (None, ["--profile", "nowhere"], ["--profile", "nowhere"]),
    (None, ["--fit-from", "a100-80gb-sxm"], ["--fit-from", "--profile none"]),
    (None, ["--profile", "none", "--fit-from", "h900"], ["--fit-from 'h900': unknown gpu 'h900'", "or others"]),
    (_set("scheduled_ts", 4, 0.0), [], ["line 4", "'scheduled_ts'", "within queued_ts..first_token_ts"]),
    (lambda run: edit_meta(run, lambda m: m["resolved_config"]["scheduler_config"].update(async_scheduling="yes")),
     [], ["async_scheduling must be true or false"]),
    (None, ["--async-scheduling", "maybe"], ["--async-scheduling", "invalid choice"]),
    # read on a run without tensor parallelism too, where no collective would use it
    (None, ["--all-reduce", "bogus"], ["--all-reduce 'bogus'", "no such file", "link:<GB/s>:<us>"]),
    (None, ["--all-reduce", "link:16"], ["--all-reduce 'link:16'", "e.g. link:16:20"]),
    (None, ["--all-reduce", "engine:0"], ["--all-reduce 'engine:0'", "factor must be a number > 0 and at most 100"]),
])
def test_bad_input_is_one_line(tmp_path, capsys, change, args, words):
    run = trim(R4090, tmp_path / "rtx4090")
    if change is not None:
        change(run)
    out = tmp_path / "out"
    assert main([str(run), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("s3sim-validate: error: ") and "Traceback" not in err
    for w in words:
        assert w in err, err
    assert not (out / "validation.csv").exists()


def test_a_run_without_a_gpu_needs_one(tmp_path, capsys):
    run = trim(R6000, tmp_path / "rtxpro6000", profile=False)
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--gpu" in err
    assert not (tmp_path / "out").exists()


def _unrecorded_limits(meta):
    """meta.json as a recorder that keeps neither the engine's limits nor what vLLM resolved them to."""
    for f in ("max_num_seqs", "max_num_batched_tokens"):
        del meta["engine_kwargs"][f]
        del meta["resolved_config"]["scheduler_config"][f]


def test_unrecorded_limits_are_asked_for_and_filled_with_vllms_defaults_for_the_gpu(tmp_path, capsys):
    """The RTX 4090 run set 256 sequences and 2,048 tokens, which is what vLLM's server picks on a GPU below 70
    GiB: with them unrecorded, the replay refuses to guess how vLLM was started, names what each entry point
    would give, and with --vllm-entry server replays exactly as the recorded run does; offline gives 8,192."""
    run = trim(R4090, tmp_path / "rtx4090")
    run_ok(capsys, run, "--out", tmp_path / "recorded")
    edit_meta(run, _unrecorded_limits)
    assert main([str(run), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--vllm-entry" in err and "no max_num_seqs" in err
    assert "offline: 256 and 8,192; server: 256 and 2,048" in err and not (tmp_path / "refused").exists()
    stdout = run_ok(capsys, run, "--out", tmp_path / "server", "--vllm-entry", "server")
    assert "engine limits: max_num_seqs=256, max_num_batched_tokens=2,048 not recorded: vLLM V1's default for " \
           "the server" in stdout
    same = [pd.read_csv(tmp_path / d / "validation.csv") for d in ("recorded", "server")]
    pd.testing.assert_frame_equal(*same)
    stdout = run_ok(capsys, run, "--out", tmp_path / "offline", "--vllm-entry", "offline")
    assert "max_num_batched_tokens=8,192" in stdout and "the offline LLM class" in stdout


def test_results_never_go_into_the_run_or_its_profile(tmp_path, capsys):
    run = trim(R4090, tmp_path / "rtx4090")
    for out in (run, run / "results", tmp_path / "rtx4090" / "profile" / "x"):
        assert main([str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--out" in err and "inside the" in err
        assert not (run / "results").exists() and not (run / "validation.csv").exists()


def test_vllm_entry_on_a_run_that_records_its_limits_is_refused(tmp_path, capsys):
    run = trim(R4090, tmp_path / "rtx4090")
    assert main([str(run), "--out", str(tmp_path / "out"), "--vllm-entry", "offline"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "leave the flag out" in err


def test_usage_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2  # no --out
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--out" in err
    assert main([str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


QWEN = RUNS / "rtxpro6000-qwen3-32b"


@pytest.mark.skipif(not (QWEN / "run").is_dir(), reason="the Qwen3-32B TP2 run is not in the shared data")
def test_a_tensor_parallel_run_is_found_by_its_model_id_and_priced_with_the_collectives_as_run(tmp_path, capsys):
    """meta.json names Qwen/Qwen3-32B (a preset's hf_names) at tensor_parallel_size 2 on the RTX PRO 6000 pair:
    its all-reduces are the pair's measured table as the engine ran it (the preset's step table fits how much
    slower) unless --all-reduce says otherwise, and the line says so; the measured table alone is faster, and a
    ring faster still."""
    run = trim(QWEN, tmp_path / "qwen")
    stdout = run_ok(capsys, run, "--out", tmp_path / "out")
    assert "model qwen3-32b" in stdout and "tp2" in stdout
    assert ("all-reduces: measured between rtx-pro-6000 GPUs (gpu_profiles/network/rtxpro6000_pcie_2gpu/collectives.csv"
            " in the shared data), as the engine ran it: its floor plus the bytes at 1/2.31 of its measured bandwidth "
            "(fitted to vllm_runs/rtxpro6000-qwen3-32b/profile/tp2/step.csv)") in stdout
    auto = pd.read_csv(tmp_path / "out" / "validation.csv").set_index("metric").simulated
    stdout = run_ok(capsys, run, "--out", tmp_path / "measured", "--all-reduce", "measured")
    assert "all-reduces: measured between rtx-pro-6000 GPUs (gpu_profiles/network/rtxpro6000_pcie_2gpu" in stdout
    measured = pd.read_csv(tmp_path / "measured" / "validation.csv").set_index("metric").simulated
    stdout = run_ok(capsys, run, "--out", tmp_path / "ring", "--all-reduce", "ring")
    assert "all-reduces: ring over rtx-pro-6000's interconnect" in stdout
    ring = pd.read_csv(tmp_path / "ring" / "validation.csv").set_index("metric").simulated
    # the measured floor (13 us) is above the ring's 2 x 5 us, and the engine's bandwidth below NCCL's alone
    assert ring["tpot_mean_ms"] < measured["tpot_mean_ms"] < auto["tpot_mean_ms"]


def test_step_calibration_prices_whole_steps_only_when_asked(tmp_path, capsys):
    """--step-calibration own fits the profile's tp1/step.csv and says so; every step then costs more than the
    operator sum alone (the table's steps are above it); without a profile it is refused in one line."""
    run = trim(R6000, tmp_path / "pro6000")
    plain = run_ok(capsys, run, "--out", tmp_path / "plain")
    assert "whole steps" not in plain
    calibrated = run_ok(capsys, run, "--out", tmp_path / "steps", "--step-calibration", "own")
    assert "whole steps fitted to" in calibrated and "step.csv (full" in calibrated
    a = pd.read_csv(tmp_path / "plain" / "validation.csv").set_index("metric").simulated
    b = pd.read_csv(tmp_path / "steps" / "validation.csv").set_index("metric").simulated
    assert b["tpot_mean_ms"] > a["tpot_mean_ms"]
    rc = main([str(run), "--out", str(tmp_path / "x"), "--profile", "none", "--step-calibration", "own"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs a profile" in err and len(err.strip().splitlines()) == 1


def test_a_run_without_scheduled_ts_is_not_split_and_says_so(tmp_path, capsys):
    run = trim(R4090, tmp_path / "rtx4090")
    rows = [json.loads(line) for line in (run / "requests.jsonl").read_text().splitlines()]
    (run / "requests.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "scheduled_ts"}) + "\n"
                                                for r in rows))
    stdout = run_ok(capsys, run, "--out", tmp_path / "out", "--async-scheduling", "off")
    assert "no row of requests.jsonl records scheduled_ts" in stdout and "asynchronous scheduling: off, --async-scheduling" in stdout
    table = pd.read_csv(tmp_path / "out" / "validation.csv")
    assert list(table.metric) == METRICS[:17]


def test_an_assumed_default_of_another_vllm_version_is_said_loudly(tmp_path, capsys):
    """A run that does not record async_scheduling gets vLLM 0.19's default; where it ran another version the
    line says that version's default may differ and names the flag that sets it."""
    run = trim(R4090, tmp_path / "rtx4090")

    def older(m):
        m["resolved_config"]["scheduler_config"].pop("async_scheduling")
        m["vllm_version"] = "0.10.1"
    edit_meta(run, older)
    stdout = run_ok(capsys, run, "--out", tmp_path / "out")
    assert "asynchronous scheduling: on, vLLM V1's default" in stdout and "vLLM 0.10.1" in stdout
    assert "--async-scheduling on or off" in stdout
    # the prefix cache's default is said to be 0.19's too (its recorded run's own, without resolved_config)
    edit_meta(run, lambda m: [m[k].pop("enable_prefix_caching", None) for k in ("kv_cache", "engine_kwargs")]
              + [m["resolved_config"]["cache_config"].pop("enable_prefix_caching", None)])
    stdout = run_ok(capsys, run, "--out", tmp_path / "out3")
    assert "prefix caching: on, vLLM V1's default (the run does not record it); read from vLLM 0.19, and this run " \
           "ran vLLM 0.10.1, whose default may differ: engine_kwargs.enable_prefix_caching" in stdout
    for old in ("0.7.3", "v0.5.4"):  # the V0 engine: refused, not replayed as V1
        edit_meta(run, lambda m: m.update(vllm_version=old))
        assert main([str(run), "--out", str(tmp_path / "out4")]) == 2
        err = capsys.readouterr().err
        assert f"vllm_version={old!r} ran vLLM's V0 engine" in err and "0.8.0" in err
    for same in ("0.19.1", "v0.19.0"):
        edit_meta(run, lambda m: m.update(vllm_version=same))
        assert "whose default may differ" not in run_ok(capsys, run, "--out", tmp_path / "out2")


def test_a_model_id_with_no_preset_is_read_from_the_config_json_beside_the_run_and_said_so(tmp_path, capsys):
    """The shared runs keep the model's Hugging Face config beside `run/`: a run naming a model no preset knows is
    priced from that file (the line names it); without the file it stays a one-line refusal naming --model."""
    run = trim(R6000, tmp_path / "r")
    edit_meta(run, lambda m: m.update(model="org/mystery-8b"))
    config = tmp_path / "r" / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
                                  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                  "vocab_size": 128256, "max_position_embeddings": 131072}))
    stdout = run_ok(capsys, run, "--out", tmp_path / "out")
    assert f"read from {config}: meta.json's 'org/mystery-8b' has no preset" in stdout
    config.unlink()
    assert main([str(run), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "no config.json is in or beside the run folder" in err and f"{str(run / 'config.json')!r}" in err


@pytest.mark.parametrize("change", [{"vocab_size": 32768}, {"intermediate_size": 28672}])
def test_a_config_json_of_another_vocabulary_or_mlp_than_the_profiles_model_is_refused(tmp_path, capsys, change):
    """Mistral 7B v0.3 has Llama 3.1 8B's attention shape but a 32,768-token vocabulary: the Llama profile's LM head
    (and, with another MLP width, its MLP) does not price it, so the replay refuses it naming the field, where it
    used to replay it on the Llama profile and call the targets met."""
    run = trim(R6000, tmp_path / "r")
    edit_meta(run, lambda m: m.update(model="mistralai/Mistral-7B-Instruct-v0.3"))
    config = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
              "max_position_embeddings": 131072}
    (tmp_path / "r" / "config.json").write_text(json.dumps({**config, **change}))
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    (field, value), = change.items()
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{field} {value} vs" in err
    assert "give a profile measured on it, or --profile none" in err  # its config.json was read already


def test_a_flat_run_folder_holding_its_profile_config_and_peer_table_is_read_as_the_shared_layout(tmp_path, capsys):
    """A run handed over as one folder (meta.json and requests.jsonl beside `profile/`, `config.json` and the peer's
    summary) replays exactly as the shared layout (those next to `run/`) does; it used to lose its profile
    (priced from the datasheet with a note) and its config."""
    run = trim(R6000, tmp_path / "shared")
    edit_meta(run, lambda m: m.update(model="org/mystery-8b"))
    config = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
              "max_position_embeddings": 131072}
    (tmp_path / "shared" / "config.json").write_text(json.dumps(config))
    flat = tmp_path / "flat"
    shutil.copytree(run, flat)
    (flat / "profile").symlink_to(R6000 / "profile")
    shutil.copy(tmp_path / "shared" / "config.json", flat / "config.json")
    shutil.copy(tmp_path / "shared" / "llmservingsim_summary.txt", flat / "llmservingsim_summary.txt")
    shared_out = run_ok(capsys, run, "--out", tmp_path / "o1")
    flat_out = run_ok(capsys, flat, "--out", tmp_path / "o2")
    assert f"latency: operator profile {flat / 'profile'}" in flat_out and "org/mystery-8b" in flat_out
    assert "peer: 15 rows" in flat_out
    table = [ln for ln in shared_out.splitlines() if ln.startswith(("ttft", "tpot", "e2e", "request"))]
    assert table and table == [ln for ln in flat_out.splitlines() if ln.startswith(("ttft", "tpot", "e2e", "request"))]


def test_limits_beyond_what_the_profile_measured_are_said_to_be_extrapolated(tmp_path, capsys):
    run = trim(R4090, tmp_path / "r")
    def change(m):
        m["engine_kwargs"]["max_num_batched_tokens"] = 8192
        m["resolved_config"]["scheduler_config"]["max_num_batched_tokens"] = 8192
    edit_meta(run, change)
    stdout = run_ok(capsys, run, "--out", tmp_path / "out")
    assert "note: max_num_batched_tokens=8192 is beyond the 2,048 tokens its dense operators were timed at" in stdout
    assert "(extrapolated: the dense operators at the rate of their top octave" in stdout
    assert "extrapolated" not in run_ok(capsys, trim(R4090, tmp_path / "ok"), "--out", tmp_path / "out2")


def test_a_time_under_a_millisecond_has_its_percentage_called_meaningless():
    """queue_p50 of 0.004 ms against 0 reads as -100 %: the line under the table says such a percentage says
    little; a table whose times are all large gets no such line."""
    from s3sim.validation.verdict import small_times_note
    table = pd.DataFrame({"metric": ["ttft_mean_ms", "queue_p50_ms", "request_throughput"],
                          "real": [1086.0, 0.004, 0.5], "simulated": [1100.0, 0.0, 0.51],
                          "error_pct": [1.3, -100.0, 2.0]})
    note = small_times_note(table)
    assert note.startswith("note: queue_p50_ms (0.004 real, 0.000 simulated)") and "say little" in note
    assert "ttft" not in note and "throughput" not in note
    assert small_times_note(table.iloc[[0, 2]]) == ""


def test_a_timeseries_with_no_rows_replays_and_says_the_real_curves_are_blank(tmp_path, capsys):
    run = trim(R4090, tmp_path / "rtx4090")
    header = (run / "timeseries.csv").read_text().splitlines()[0]
    (run / "timeseries.csv").write_text(header + "\n")
    stdout = run_ok(capsys, run, "--out", tmp_path / "out")
    assert "note: timeseries.csv holds no rows" in stdout and (tmp_path / "out" / "validation.csv").is_file()


def test_a_run_without_a_timeseries_replays_and_says_so(tmp_path, capsys):
    """The per-second series feeds the plot alone: a recorder that keeps none still gets its replay."""
    run = trim(R4090, tmp_path / "rtx4090")
    (run / "timeseries.csv").unlink()
    stdout = run_ok(capsys, run, "--out", tmp_path / "out")
    assert "note: the run has no timeseries.csv: the real curves of timeline.png stay blank" in stdout
    assert (tmp_path / "out" / "validation.csv").is_file() and (tmp_path / "out" / "timeline.png").is_file()


def test_the_sensitivity_column_is_how_far_each_error_moves_with_steps_one_percent_slower(tmp_path, capsys):
    """A second replay with every step priced 1 % higher: TPOT moves by about one point, throughput falls, and
    the column is exactly the second replay's error less the first's (`ScaledLatency` over the same model)."""
    from s3sim.latency.scaled import ScaledLatency
    run = trim(R4090, tmp_path / "rtx4090")
    stdout = run_ok(capsys, run, "--out", tmp_path / "out")
    assert "error if steps +1 %" in stdout
    t = pd.read_csv(tmp_path / "out" / "validation.csv").set_index("metric")
    assert list(t.columns) == ["real", "simulated", "error_pct", "sensitivity", "kv_capacity_source",
                               "unserved_requests"]
    assert 0.8 < t.sensitivity["tpot_mean_ms"] < 1.2 and t.sensitivity["request_throughput"] < 0

    class Fixed:
        skew_alpha = 0.0

        def batch_time(self, out, **kw):
            return 2.0

        def decode_run(self, n, ctx, k, **kw):
            return np.full(k, 3.0)
    scaled = ScaledLatency(Fixed(), 1.01)
    assert scaled.batch_time(None) == pytest.approx(2.02) and scaled.decode_run(1, 1, 2) == pytest.approx([3.03, 3.03])
    assert scaled.skew_alpha == 0.0  # everything else is the inner model's


def test_a_replay_without_a_profile_says_which_error_band_to_read(tmp_path, capsys):
    run = trim(R4090, tmp_path / "rtx4090")
    stdout = run_ok(capsys, run, "--out", tmp_path / "out", "--profile", "none")
    assert "note: no operator profile" in stdout and "How well it generalises" in stdout
    assert "not targeted): not applied (no operator profile" in stdout and "): met" not in stdout
    own = run_ok(capsys, run, "--out", tmp_path / "own")
    assert "note: no operator profile" not in own and "not applied" not in own


UNSERVED = {"arrival_time": None, "queued_ts": None, "scheduled_ts": None, "first_token_ts": None,
            "last_token_ts": None}  # a request the run did not serve, as the recorder writes it (no metrics)


def test_a_request_the_run_did_not_serve_is_left_out_of_both_sides_and_said(tmp_path, capsys):
    """Rows whose times are null (vLLM returned no metrics) are left out of the replay and of the real metrics, as
    the peer leaves them out: the replay is the one of the served rows alone, to the bit, and the note and
    validation.csv's unserved_requests say how many (such a run was refused whole)."""
    run = trim(R4090, tmp_path / "rtx4090")
    rows = [json.loads(line) for line in (run / "requests.jsonl").read_text().splitlines()]
    served = trim(R4090, tmp_path / "served")
    (served / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if i not in (2, 6)))
    edit_meta(served, lambda m: m.update(num_requests=N - 2))
    peer = peer_table(real_metrics(served / "requests.jsonl"))
    for folder in (run.parent, served.parent):
        (folder / "llmservingsim_summary.txt").write_text(peer)
    for i in (2, 6):
        rows[i].update(UNSERVED)
    (run / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stdout = run_ok(capsys, run, "--out", tmp_path / "out")
    assert f"note: 2 of the {N} requests of requests.jsonl were not served (null times: lines 3, 7)" in stdout
    assert "is not about this run" not in stdout  # the real metrics are the served rows', as the peer's
    run_ok(capsys, served, "--out", tmp_path / "out_served")
    got, want = (pd.read_csv(tmp_path / d / "validation.csv") for d in ("out", "out_served"))
    assert set(got.unserved_requests) == {2} and set(want.unserved_requests) == {0}
    pd.testing.assert_frame_equal(got.drop(columns="unserved_requests"), want.drop(columns="unserved_requests"))


@pytest.mark.parametrize("change, words", [
    ({"queued_ts": "abc", "first_token_ts": None}, "field 'queued_ts' must be a number, got 'abc'"),
    ({"last_token_ts": None}, "field 'last_token_ts' must be a number, got None"),  # not all null: not unserved
    ({"input_toks": None, **UNSERVED}, "field 'input_toks' must be a number, got None"),
    ({**UNSERVED, "output_toks": 0}, "field 'output_toks' must be a positive integer")])
def test_an_unserved_row_still_holds_what_it_records_well_formed(tmp_path, capsys, change, words):
    run = trim(R4090, tmp_path / "rtx4090")
    rows = [json.loads(line) for line in (run / "requests.jsonl").read_text().splitlines()]
    rows[4].update(change)
    (run / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "line 5" in err and words in err, err


def test_a_run_that_served_no_request_is_refused(tmp_path, capsys):
    run = trim(R4090, tmp_path / "rtx4090")
    rows = [{**json.loads(line), **UNSERVED} for line in (run / "requests.jsonl").read_text().splitlines()]
    (run / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"no requests served (the {N} rows' queued_ts, first_token_ts, last_token_ts are null)" in err
    assert not (tmp_path / "out").exists()


def test_make_modern_says_it_replays_the_served_requests_and_make_steps_refuses_the_run(tmp_path, capsys):
    """read_run leaves unserved rows out: the modern comparison replays the others and says so (as s3sim-validate
    does); the step check, which rebuilds each moment's batch from every request's times, refuses such a run."""
    from s3sim.core.errors import ConfigError
    from s3sim.experiments.modern import compare
    from s3sim.lab.step_check import RunTimeline

    run = trim(R4090, tmp_path / "rtx4090-llama-3.1-8b")
    rows = [json.loads(line) for line in (run / "requests.jsonl").read_text().splitlines()]
    rows[3].update(UNSERVED)
    (run / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    compare(run)
    assert f"note: 1 of the {N} requests of requests.jsonl was not served (null times: line 4)" \
        in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"not served \(null times, 1 of them, line 4 the first\): the steps"):
        RunTimeline(run.parent)


@pytest.mark.skipif(not (QWEN / "run").is_dir(), reason="the Qwen3-32B TP2 run is not in the shared data")
def test_a_config_of_float32_is_priced_as_the_run_served_it_in_16_bits(tmp_path, capsys):
    """A Hugging Face config.json often says torch_dtype float32 for a model served in bf16: the run served 16-bit
    weights (meta.json allows no other; vLLM's auto casts float32 down), so the replay prices them and says so;
    it priced 4-byte weights and KV (TTFT +112 % on the full run, exit 0, no word)."""
    run = trim(QWEN, tmp_path / "qwen")
    config = json.loads((QWEN / "config.json").read_text())
    for dtype, name in (("bfloat16", "bf16.json"), ("float32", "f32.json")):
        (tmp_path / name).write_text(json.dumps({**config, "torch_dtype": dtype}))
    quiet = run_ok(capsys, run, "--out", tmp_path / "a", "--model", tmp_path / "bf16.json")
    said = run_ok(capsys, run, "--out", tmp_path / "b", "--model", tmp_path / "f32.json")
    assert "torch_dtype of 4 bytes a value; the run served it in 16 bits" in said and "torch_dtype" not in quiet
    assert kv_line(said) == kv_line(quiet)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "validation.csv"),
                                  pd.read_csv(tmp_path / "b" / "validation.csv"))
