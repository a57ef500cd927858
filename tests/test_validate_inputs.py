"""`s3sim-validate` refuses inputs that disagree with each other or with physics, before any replay: meta.json
against itself and against the device memory it records, requests.jsonl against meta.json (the count, each
request once, seconds, tokens over time, max_model_len), --gpu / --model against the run and its profile, and an
--out that cannot be a folder. The output folder holds only what the last run wrote, and a failed run leaves no
validation.csv. vLLM's own budget rule (max_num_batched_tokens >= max_num_seqs) is the vllm policy's."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_validate import (LLAMA31_KV_PER_TOKEN, LLAMA31_WEIGHTS, R4090, R6000, RUNS, edit_meta,  # noqa: F401
                           pytestmark, trim)

from s3sim.config import build_scheduler
from s3sim.core.errors import ConfigError, InvariantViolation
from s3sim.validation.cli import main
from s3sim.validation.outputs import OUTPUTS
from s3sim.validation.run_files import read_run

GPU_4090_BYTES = 25_250_627_584  # the RTX 4090 run's hardware.device_total_memory_bytes


def full_copy(src: Path, dst: Path) -> Path:
    """The whole run (300 requests) in `dst/run`, with its profile linked beside it."""
    shutil.copytree(src / "run", dst / "run")
    (dst / "profile").symlink_to(src / "profile")
    return dst / "run"


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "requests.jsonl").read_text().splitlines() if line.strip()]


def write_rows(run: Path, rs: list[dict]) -> None:
    (run / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))


def refused(capsys, run, out, *args) -> str:
    """The one line of a refusal (exit 2), with nothing replayed and nothing written."""
    assert main([str(run), "--out", str(out), *map(str, args)]) == 2
    cap = capsys.readouterr()
    err = cap.err
    assert len(err.strip().splitlines()) == 1 and err.startswith("s3sim-validate: error: "), err
    assert "Traceback" not in err
    assert "replay:" not in cap.out and "run:" not in cap.out  # refused before the replay began
    assert not (Path(out) / "validation.csv").exists()
    return err


def ok(capsys, run, out, *args) -> str:
    rc = main([str(run), "--out", str(out), *map(str, args)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return cap.out


def test_the_recorded_runs_pass_every_check():
    """Every shared run, whole, is consistent: the checks below are not tuned to refuse real data."""
    for run in sorted(RUNS.glob("*/run")):
        r = read_run(run)
        assert len(r.requests) == r.meta["num_requests"]
        assert (r.requests.first_token_ts > r.requests.queued_ts).all()


# ---- meta.json against itself and against physics --------------------------------------------------------
def test_more_kv_blocks_than_the_device_memory_holds(tmp_path, capsys):
    run = trim(R4090, tmp_path / "r")
    most = (int(0.9 * GPU_4090_BYTES) - LLAMA31_WEIGHTS) // (16 * LLAMA31_KV_PER_TOKEN)
    assert 2588 <= most < 10 * 2588  # the recorded blocks fit; ten times as many do not

    def tenfold(m):
        for section in (m["kv_cache"], m["resolved_config"]["cache_config"]):
            section["num_gpu_blocks"] *= 10
        m["kv_cache"]["num_kv_tokens"] *= 10
    edit_meta(run, tenfold)
    err = refused(capsys, run, tmp_path / "out")
    for w in ("meta.json", "kv_cache.num_gpu_blocks=25,880", "hardware.device_total_memory_bytes",
              f"at most {most:,} blocks fit"):
        assert w in err, err


def test_kv_cache_memory_bytes_bounds_the_blocks(tmp_path, capsys):
    run = trim(R4090, tmp_path / "r")
    edit_meta(run, lambda m: m["kv_cache"].update(kv_cache_memory_bytes=2588 * 16 * LLAMA31_KV_PER_TOKEN - 1))
    err = refused(capsys, run, tmp_path / "out")
    assert "kv_cache.kv_cache_memory_bytes" in err and "at most 2,587 blocks fit" in err


@pytest.mark.parametrize("change, words", [
    (lambda m: m["kv_cache"].update(block_size=32), ["kv_cache.num_kv_tokens=41408", "2588 x 32 = 82816"]),
    (lambda m: m["kv_cache"].update(num_kv_tokens=41409), ["kv_cache.num_kv_tokens=41409", "2588 x 16 = 41408"]),
    (lambda m: m["resolved_config"]["cache_config"].update(num_gpu_blocks=2000),
     ["kv_cache.num_gpu_blocks=2588", "resolved_config.cache_config.num_gpu_blocks=2000"]),
    (lambda m: m["engine_kwargs"].update(max_num_seqs=128),
     ["engine_kwargs.max_num_seqs=128", "resolved_config.scheduler_config.max_num_seqs=256"]),
    (lambda m: m.update(finished_at="2026-08-20T23:00:00Z"), ["finished_at", "after started_at"]),
    (lambda m: m.update(started_at="yesterday"), ["started_at", "ISO 8601"]),
    (lambda m: m.update(num_requests=0), ["num_requests", "positive integer"]),
    (lambda m: (m["engine_kwargs"].update(tensor_parallel_size=2),
                m["resolved_config"]["parallel_config"].update(tensor_parallel_size=2)),
     ["tensor_parallel_size=2", "hardware.device_count=1"]),
    (lambda m: (m["engine_kwargs"].pop("tensor_parallel_size", None),
                m["resolved_config"]["parallel_config"].update(tensor_parallel_size=2)),
     ["resolved_config.parallel_config.tensor_parallel_size=2", "hardware.device_count=1"]),
    (lambda m: (m["engine_kwargs"].update(max_num_batched_tokens=128),
                m["resolved_config"]["scheduler_config"].update(max_num_batched_tokens=128)),
     ["engine_kwargs.max_num_batched_tokens=128", "at least engine_kwargs.max_num_seqs=256"]),
])
def test_meta_json_disagreeing_with_itself(tmp_path, capsys, change, words):
    run = trim(R4090, tmp_path / "r")
    edit_meta(run, change)
    err = refused(capsys, run, tmp_path / "out")
    assert "meta.json" in err and "policy." not in err
    for w in words:
        assert w in err, err


# ---- requests.jsonl against meta.json ---------------------------------------------------------------------
def test_a_cut_requests_file(tmp_path, capsys):
    run = full_copy(R4090, tmp_path / "r")
    write_rows(run, rows(run)[:150])
    err = refused(capsys, run, tmp_path / "out")
    assert "requests.jsonl" in err and "150 requests" in err and "num_requests=300" in err


def test_a_padded_requests_file(tmp_path, capsys):
    run = full_copy(R4090, tmp_path / "r")
    rs = rows(run)
    write_rows(run, rs + rs[:5])
    err = refused(capsys, run, tmp_path / "out")
    assert "line 301" in err and "request_id 'bench-0' repeats line 1" in err


def test_one_id_on_every_row(tmp_path, capsys):
    run = full_copy(R4090, tmp_path / "r")
    write_rows(run, [dict(r, request_id="bench-0") for r in rows(run)])
    err = refused(capsys, run, tmp_path / "out")
    assert "line 2: request_id 'bench-0' repeats line 1" in err and "300 rows share an id" in err


def test_a_repeated_row_without_ids(tmp_path, capsys):
    run = full_copy(R4090, tmp_path / "r")
    rs = [{k: v for k, v in r.items() if k != "request_id"} for r in rows(run)]
    write_rows(run, rs[:299] + [rs[7]])
    err = refused(capsys, run, tmp_path / "out")
    assert "line 300: the same request as line 8" in err


def _in_ms(r: dict, keys=("queued_ts", "scheduled_ts", "first_token_ts", "last_token_ts")) -> dict:
    return dict(r, **{k: r[k] * 1000 for k in keys})


def test_timestamps_in_milliseconds_against_the_recorded_duration(tmp_path, capsys):
    run = trim(R4090, tmp_path / "r")
    write_rows(run, [_in_ms(r) for r in rows(run)])
    err = refused(capsys, run, tmp_path / "out")
    assert "requests.jsonl" in err and "started_at..finished_at: 184.1 s" in err and "seconds" in err


def test_arrival_times_in_milliseconds(tmp_path, capsys):
    run = trim(R4090, tmp_path / "r")
    write_rows(run, [_in_ms(r, ("arrival_time",)) for r in rows(run)])
    err = refused(capsys, run, tmp_path / "out")
    assert "line 1: arrival_time" in err and "epoch seconds" in err


def test_milliseconds_without_a_recorded_duration(tmp_path, capsys):
    """No started_at/finished_at: arrival_time (seconds) and queued_ts (ms) space the requests unlike."""
    run = trim(R4090, tmp_path / "r")
    edit_meta(run, lambda m: (m.pop("started_at"), m.pop("finished_at")))
    write_rows(run, [_in_ms(r) for r in rows(run)])
    err = refused(capsys, run, tmp_path / "out")
    assert "by arrival_time" in err and "by queued_ts" in err


def test_milliseconds_with_nothing_but_the_timeseries(tmp_path, capsys):
    run = trim(R4090, tmp_path / "r")
    edit_meta(run, lambda m: (m.pop("started_at"), m.pop("finished_at")))
    write_rows(run, [{k: v for k, v in _in_ms(r).items() if k != "arrival_time"} for r in rows(run)])
    err = refused(capsys, run, tmp_path / "out")
    assert "timeseries.csv" in err and "seconds" in err


def test_every_token_at_one_instant(tmp_path, capsys):
    """Latencies of zero would give a table of +nan% errors: refused at the first such row."""
    run = trim(R4090, tmp_path / "r")
    t = rows(run)[0]["queued_ts"]
    write_rows(run, [dict(r, queued_ts=t, scheduled_ts=t, first_token_ts=t, last_token_ts=t) for r in rows(run)])
    err = refused(capsys, run, tmp_path / "out")
    assert "line 1" in err and "first_token_ts" in err and "later than queued_ts" in err
    run2 = trim(R4090, tmp_path / "r2")
    write_rows(run2, [dict(r, last_token_ts=r["first_token_ts"]) for r in rows(run2)])
    err = refused(capsys, run2, tmp_path / "out")
    assert "line 1" in err and "output tokens at one instant" in err and "last_token_ts must be later" in err


def test_requests_longer_than_max_model_len(tmp_path, capsys):
    run = trim(R4090, tmp_path / "r")
    rs = rows(run)
    longest = max(r["input_toks"] + r["output_toks"] for r in rs)
    limit = longest - 1
    k = next(i for i, r in enumerate(rs) if r["input_toks"] + r["output_toks"] == longest)
    edit_meta(run, lambda m: (m["engine_kwargs"].update(max_model_len=limit),
                              m["resolved_config"]["model_config"].update(max_model_len=limit)))
    err = refused(capsys, run, tmp_path / "out")
    assert f"line {k + 1}:" in err and f"engine_kwargs.max_model_len={limit:,}" in err


def test_without_max_model_len_the_models_context_bounds_requests(tmp_path, capsys):
    run = trim(R6000, tmp_path / "r", profile=False)  # its meta.json records max_model_len null
    rs = rows(run)
    rs[4]["input_toks"] = 200_000
    write_rows(run, rs)
    err = refused(capsys, run, tmp_path / "out", "--gpu", "rtx-pro-6000")
    assert "line 5:" in err and "the model's context (llama-3.1-8b: max_context" in err and "131,072" in err


def test_a_run_alone_without_a_gpu_or_a_profile_is_told_of_both(tmp_path, capsys):
    """A run folder with no profile beside it and no GPU in its meta.json: the one line names --profile as well as
    --gpu, since the datasheet model it fell back to is not what a user who forgot the profile meant."""
    run = tmp_path / "vllm"
    shutil.copytree(R6000 / "run", run)
    edit_meta(run, lambda m: (m.pop("hardware", None), m.pop("resolved_config", None)))
    err = refused(capsys, run, tmp_path / "out")
    assert "no profile/ in or beside the run folder: --profile DIR names one" in err and "give --gpu" in err


@pytest.mark.parametrize("row, words", [
    ("{t},-1,0,5.0", "column 'running' must be a count, >= 0, got '-1'"),
    ("{t},1,-2,5.0", "column 'waiting' must be a count, >= 0, got '-2'"),
    ("{t},1,0,500", "column 'kv_cache_pct' must be a percentage, 0 to 100, got '500'"),
    ("0,1,0,5.0", "t must grow from one row to the next"),
])
def test_a_timeseries_row_that_cannot_be_is_refused(tmp_path, capsys, row, words):
    """The timeline is drawn from timeseries.csv: negative counts, a KV use past 100 % and a clock that does not
    advance were drawn as they came."""
    run = trim(R4090, tmp_path / "r")
    lines = (run / "timeseries.csv").read_text().splitlines()
    header = lines[0].split(",")
    last_t = float(lines[-1].split(",")[header.index("t")])
    values = dict(zip(("t", "running", "waiting", "kv_cache_pct"), row.format(t=last_t + 1).split(",")))
    lines.append(",".join(values.get(h, "0") for h in header))
    (run / "timeseries.csv").write_text("\n".join(lines) + "\n")
    err = refused(capsys, run, tmp_path / "out")
    assert f"line {len(lines)}:" in err and words in err


@pytest.mark.parametrize("field, value", [("block_size", "16"), ("num_gpu_blocks", "2588"), ("num_gpu_blocks", 2588.5),
                                          ("num_kv_tokens", True)])
def test_kv_cache_counts_are_integers_before_they_are_multiplied(tmp_path, capsys, field, value):
    """A count written as a string was multiplied as one ('16' x 2588 printed as a string repeated)."""
    run = trim(R4090, tmp_path / "r")
    edit_meta(run, lambda m: m["kv_cache"].update({field: value}))
    assert f"kv_cache.{field} must be a positive integer or null, got {value!r}" in refused(capsys, run, tmp_path / "o")


@pytest.mark.parametrize("change, words", [
    (lambda m: m.update(resolved_config=[1]), "resolved_config must be an object"),
    (lambda m: m["resolved_config"].update(model_config="x"), "resolved_config.model_config must be an object or null"),
    (lambda m: m["resolved_config"].update(cache_config=[1]), "resolved_config.cache_config must be an object or null"),
])
def test_a_resolved_config_of_another_shape_is_one_line(tmp_path, capsys, change, words):
    """vLLM writes resolved_config as sections of settings: anything else is refused, not a traceback."""
    run = trim(R4090, tmp_path / "r")
    edit_meta(run, change)
    assert words in refused(capsys, run, tmp_path / "out")


@pytest.mark.parametrize("value", [10**30, 1e20, 1e308])
@pytest.mark.parametrize("field", ["input_toks", "output_toks"])
def test_token_counts_past_any_context_are_refused_before_they_overflow(tmp_path, capsys, field, value):
    """A count of 10^20 wrapped around in int64 and slipped past the max_model_len check (an invariant violation,
    exit 3, or a traceback): it is refused on its line."""
    run = trim(R4090, tmp_path / "r")
    rs = rows(run)
    rs[5][field] = value
    write_rows(run, rs)
    err = refused(capsys, run, tmp_path / "out")
    assert "line 6:" in err and f"field {field!r} must be a positive integer of at most 2,147,483,647 tokens" in err


@pytest.mark.parametrize("text, words", [
    ("just a string\n", "meta.yaml: expected a mapping"),
    ("- 1\n- 2\n", "meta.yaml: expected a mapping"),
    ("skew_fit: [1]\n", "skew_fit must be a mapping"),
    ("skew_fit: {enabled: true, per_tp: [1, 2]}\n", "skew_fit.per_tp must map each TP degree to its fit"),
])
def test_a_profile_meta_yaml_of_another_shape_is_one_line(tmp_path, capsys, text, words):
    """A profile's meta.yaml that parses to something other than a mapping (or a skew fit that is not one) is
    refused, where a scalar passed unread and a list of TP degrees was a traceback."""
    run = trim(R4090, tmp_path / "r", profile=False)
    prof = tmp_path / "r" / "profile"
    shutil.copytree(R4090 / "profile", prof)
    (prof / "meta.yaml").write_text(text)
    assert words in refused(capsys, run, tmp_path / "out")


def test_a_replay_that_runs_for_ages_is_refused_before_its_timeline():
    """A replay lasting 10^7 ticks past its run (a pricing input off by orders of magnitude) is one line, not an
    allocation of terabytes."""
    from s3sim.validation.timeline import timeline

    real = pd.DataFrame({"t": [0.0, 1.0, 2.0], "running": 1, "waiting": 0, "kv_cache_pct": 1.0})
    assert len(timeline(real, [], 100, 5.0)) > 3
    with pytest.raises(ConfigError, match="the replay ran 1e"):
        timeline(real, [], 100, 1e30)


def test_an_empty_profile_is_no_folder(tmp_path, capsys):
    """--profile '' named the current folder (and then found --out inside it)."""
    run = trim(R4090, tmp_path / "r")
    assert "--profile '': no such folder" in refused(capsys, run, tmp_path / "out", "--profile", "")


def test_a_max_model_len_beyond_the_models_context_is_said(tmp_path, capsys):
    """vLLM refuses a max_model_len past the model's context unless told to allow it: a run that records one
    is replayed with it, and the replay says so."""
    run = trim(R4090, tmp_path / "r")
    assert "longer than the model's context" not in ok(capsys, run, tmp_path / "out")
    edit_meta(run, lambda m: (m["engine_kwargs"].update(max_model_len=200_000),
                              m["resolved_config"]["model_config"].update(max_model_len=200_000)))
    stdout = ok(capsys, run, tmp_path / "out2")
    assert ("note: meta.json's engine_kwargs.max_model_len, 200,000 tokens, is longer than the model's context "
            "(llama-3.1-8b: max_context 131,072)") in stdout


# ---- --gpu and --model against the run and its profile ----------------------------------------------------
@pytest.mark.parametrize("args", [["--gpu", "h100-sxm"], ["--gpu", "h100-sxm", "--profile", "none"]])
def test_a_gpu_that_is_not_the_runs(tmp_path, capsys, args):
    run = trim(R4090, tmp_path / "r")
    err = refused(capsys, run, tmp_path / "out", *args)
    assert "--gpu h100-sxm" in err and "'NVIDIA GeForce RTX 4090' (preset rtx-4090)" in err
    assert "--fit-from h100-sxm" in err


def test_a_device_the_run_names_is_never_swapped_for_the_profiles(tmp_path, capsys):
    """meta.json says an L40S (no preset): the RTX 4090 profile beside it was not measured on it, so it is
    refused; with --profile none that profile is not asked what the GPU is: --gpu is."""
    run = trim(R4090, tmp_path / "r")
    edit_meta(run, lambda m: m["hardware"].update(device_name="NVIDIA L40S"))
    err = refused(capsys, run, tmp_path / "out")
    assert "'NVIDIA L40S'" in err and "'NVIDIA GeForce RTX 4090'" in err and "--profile none" in err
    err = refused(capsys, run, tmp_path / "out", "--profile", "none")
    assert "device 'NVIDIA L40S' names no preset: give --gpu" in err
    edit_meta(run, lambda m: m["hardware"].update(device_name="NVIDIA H100 80GB HBM3"))
    stdout = ok(capsys, run, tmp_path / "out", "--profile", "none")  # priced as the run says, not the profile
    assert "gpu h100-sxm ('NVIDIA H100 80GB HBM3' in meta.json)" in stdout


def test_a_device_that_disagrees_with_the_profile_is_the_first_error_not_the_missing_gpu(tmp_path, capsys):
    """The RTX PRO 6000 run records neither its KV blocks nor its memory, so its KV capacity needs a GPU preset; with
    meta.json naming an L40S (no preset) beside the PRO 6000 profile, the one line names the disagreement (giving
    --gpu, as a missing preset would ask, could not mend it)."""
    run = trim(R6000, tmp_path / "r")
    edit_meta(run, lambda m: m.update(hardware={"device_name": "NVIDIA L40S"}))
    err = refused(capsys, run, tmp_path / "out")
    assert "'NVIDIA L40S'" in err and "RTX PRO 6000" in err and "give --gpu" not in err


def test_a_gpu_standing_in_for_a_device_with_no_preset_says_what_it_lends(tmp_path, capsys):
    """--gpu for a run whose device has no preset replays, and the run line says whose memory and link it prices."""
    run = trim(R4090, tmp_path / "r")
    edit_meta(run, lambda m: m["hardware"].update(device_name="NVIDIA L40S"))
    stdout = ok(capsys, run, tmp_path / "out", "--profile", "none", "--gpu", "rtx-4090")
    assert "gpu rtx-4090 (--gpu), standing in for 'NVIDIA L40S', which has no preset" in stdout
    assert "its memory" not in stdout  # the run records its KV blocks: the preset's memory sizes nothing
    edit_meta(run, lambda m: (m["kv_cache"].pop("num_gpu_blocks"), m["kv_cache"].pop("num_kv_tokens", None),
                              m["resolved_config"]["cache_config"].update(num_gpu_blocks=None),
                              m["hardware"].pop("device_total_memory_bytes", None)))
    stdout = ok(capsys, run, tmp_path / "out2", "--profile", "none", "--gpu", "rtx-4090")
    assert "its memory (25 GB: meta.json records neither" in stdout


def test_a_run_folder_given_as_dot_finds_what_is_beside_it(tmp_path, capsys, monkeypatch):
    """`s3sim-validate .` from inside run/ looks beside the folder itself, not beside '.'."""
    run = trim(R4090, tmp_path / "r")
    monkeypatch.chdir(run)
    stdout = ok(capsys, ".", tmp_path / "out")
    assert f"latency: operator profile {tmp_path / 'r' / 'profile'}" in stdout


def test_two_profiles_for_one_run_are_refused(tmp_path, capsys):
    """A profile/ inside the run folder and another beside it: which one the run belongs to is not guessed."""
    run = trim(R4090, tmp_path / "r")
    (run / "profile").symlink_to(R6000 / "profile")
    err = refused(capsys, run, tmp_path / "out")
    assert "two profile for one run" in err


@pytest.mark.parametrize("change, words", [
    (lambda m: m["resolved_config"].update(offload_config={"uva": "UVAOffloadConfig(cpu_offload_gb=4.0, x=set())"}),
     "offload_config.uva: cpu_offload_gb=4.0 is not modelled"),
    (lambda m: m["resolved_config"]["cache_config"].update(kv_offloading_size=8.0), "kv_offloading_size=8.0"),
    (lambda m: m["engine_kwargs"].update(kv_offloading_size=8), "a KV cache held on the GPU alone")])
def test_offloading_recorded_as_vllm_0_19_records_it_is_refused(tmp_path, capsys, change, words):
    run = trim(R4090, tmp_path / "r")
    edit_meta(run, change)
    assert words in refused(capsys, run, tmp_path / "out")


def test_the_runs_own_gpu_named_is_accepted(tmp_path, capsys):
    stdout = ok(capsys, trim(R4090, tmp_path / "r"), tmp_path / "out", "--gpu", "rtx-4090")
    assert "gpu rtx-4090 (--gpu)" in stdout


def test_a_profile_of_another_gpu(tmp_path, capsys):
    run = trim(R4090, tmp_path / "r")
    err = refused(capsys, run, tmp_path / "out", "--profile", R6000 / "profile")
    assert "'NVIDIA GeForce RTX 4090' (rtx-4090)" in err and "(rtx-pro-6000)" in err


def test_a_model_that_is_not_the_runs(tmp_path, capsys):
    run = trim(R4090, tmp_path / "r")
    err = refused(capsys, run, tmp_path / "out", "--model", "llama-2-7b")
    assert "--model llama-2-7b" in err and "'meta-llama/Llama-3.1-8B'" in err and "n_kv_heads 32 vs 8" in err


def test_a_borrowed_fit_is_said_to_be_one(tmp_path, capsys):
    stdout = ok(capsys, trim(R4090, tmp_path / "r"), tmp_path / "out", "--profile", "none", "--fit-from",
                "a100-80gb-sxm")
    assert "note: cross-GPU pricing: the run's rtx-4090 datasheet with a100-80gb-sxm's fitted efficiencies" in stdout


# ---- --out ------------------------------------------------------------------------------------------------
def test_out_naming_a_file(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    err = refused(capsys, trim(R4090, tmp_path / "r"), target)
    assert "is a file, not a folder" in err and target.read_text() == "keep me\n"
    err = refused(capsys, trim(R4090, tmp_path / "r2"), target / "sub")
    assert "is a file" in err


def test_out_empty(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = trim(R4090, tmp_path / "r")
    before = sorted(p.name for p in tmp_path.iterdir())
    err = refused(capsys, run, "")
    assert "--out is empty" in err and sorted(p.name for p in tmp_path.iterdir()) == before


# ---- the output folder ------------------------------------------------------------------------------------
def test_a_rerun_leaves_only_what_it_wrote(tmp_path, capsys):
    out = tmp_path / "out"
    ok(capsys, trim(R4090, tmp_path / "with"), out, "--profile", "none")
    assert {p.name for p in out.iterdir()} == set(OUTPUTS)
    (out / "notes.txt").write_text("mine\n")
    ok(capsys, trim(R4090, tmp_path / "without", peer=False), out, "--profile", "none")
    assert {p.name for p in out.iterdir()} == set(OUTPUTS) - {"peer.csv"} | {"notes.txt"}  # no stale peer.csv
    assert (out / "notes.txt").read_text() == "mine\n"


def test_a_failed_replay_leaves_no_result(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    ok(capsys, trim(R4090, tmp_path / "r"), out, "--profile", "none")
    import s3sim.simulator.engine as engine

    def broken(*a, **k):
        raise InvariantViolation("a request finished twice")
    monkeypatch.setattr(engine, "simulate", broken)
    assert main([str(tmp_path / "r" / "run"), "--out", str(out), "--profile", "none"]) == 3
    assert "invariant violated" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # the earlier results went before the replay; nothing new came


def test_a_failed_write_leaves_no_result(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    import s3sim.writers as writers
    write_csv = writers.write_csv

    def failing(df, path):
        if Path(path).name == "validation.csv":
            raise OSError("disk full")
        write_csv(df, path)
    monkeypatch.setattr(writers, "write_csv", failing)
    from s3sim.validation.replay import validate
    with pytest.raises(OSError):
        validate(trim(R4090, tmp_path / "r"), out, profile="none", echo=lambda *a: None)
    assert list(out.iterdir()) == []  # the timeline and peer.csv written beside it did not move in


def test_bad_input_leaves_earlier_results_as_they_were(tmp_path, capsys):
    out = tmp_path / "out"
    ok(capsys, trim(R4090, tmp_path / "r"), out, "--profile", "none")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([str(tmp_path / "r" / "run"), "--out", str(out), "--gpu", "h100-sxm"]) == 2
    capsys.readouterr()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ---- vLLM's budget rule -----------------------------------------------------------------------------------
def test_max_num_seqs_equal_to_the_budget_replays(tmp_path, capsys):
    """vLLM accepts max_num_batched_tokens == max_num_seqs: so does the replay (every running request decodes
    within the budget, none is left for prefill when all 256 run)."""
    run = trim(R4090, tmp_path / "r")
    edit_meta(run, lambda m: (m["engine_kwargs"].update(max_num_batched_tokens=256),
                              m["resolved_config"]["scheduler_config"].update(max_num_batched_tokens=256)))
    ok(capsys, run, tmp_path / "out", "--profile", "none")
    table = pd.read_csv(tmp_path / "out" / "validation.csv")
    assert np.isfinite(table.simulated).all() and (table.simulated > 0).all()


def test_the_vllm_policy_takes_vllms_rule():
    cfg = {"max_seq_len": 64, "policy": {"name": "vllm", "max_batch_size": 32, "max_num_batched_tokens": 32}}
    sched = build_scheduler(cfg, 1024, np.array([10]))
    assert sched.token_budget == 32 and sched.max_batch == 32
    with pytest.raises(ConfigError, match=r"max_batch_size \(vLLM's max_num_seqs\) must be a positive integer of at "
                                          r"most policy.max_num_batched_tokens=32"):
        build_scheduler({**cfg, "policy": {**cfg["policy"], "max_batch_size": 33}}, 1024, np.array([10]))
    with pytest.raises(ConfigError, match="below policy.max_num_batched_tokens"):  # other policies keep theirs
        build_scheduler({**cfg, "predictor": {"name": "oracle", "num_buckets": 4},
                         "policy": {"name": "s3", "max_batch_size": 32, "max_num_batched_tokens": 32}}, 1024,
                        np.array([10]))


def test_a_batch_as_large_as_the_budget_schedules_within_it():
    """max_batch_size == max_num_batched_tokens == 8 on short prompts with long answers, which fill both: every
    iteration within the budget and the batch, some spend the whole budget on decodes while requests wait, and
    the jump (which merges iterations) equals stepping one at a time."""
    from test_invariants_property import check_invariants, check_jump_exact
    from test_invariants_property import run as run_scenario
    rng = np.random.default_rng(0)
    n, msl = 30, 64
    s = dict(policy="vllm", msl=msl, prompts=rng.integers(1, 64, n).tolist(),
             outputs=rng.integers(1, msl + 1, n).tolist(), arrivals=np.round(rng.uniform(0, 0.5, n), 2).tolist(),
             cap=4 * (64 + msl), max_batch=8, mode="recompute", latency="a100", block=4, watermark=0.0, budget=8)
    s["prompts"] = [p % 4 + 1 for p in s["prompts"]]
    jumped, stepped = run_scenario(s, None), run_scenario(s, 1)
    check_invariants(s, jumped)
    check_invariants(s, stepped)
    check_jump_exact(jumped, stepped)
    f = stepped.log.frame()
    assert (f.decode_tokens + f.prefill_tokens <= 8).all() and (f.batch_size <= 8).all()
    assert ((f.decode_tokens == 8) & (f.prefill_tokens == 0) & (f.waiting > 0)).any()
    assert jumped.engine_steps < stepped.engine_steps


def test_a_tensor_parallel_degree_that_does_not_divide_the_heads_names_the_engine_setting(tmp_path, capsys):
    run = trim(R4090, tmp_path / "r")
    def change(m):
        m["engine_kwargs"]["tensor_parallel_size"] = 3
        m["resolved_config"]["parallel_config"].update(tensor_parallel_size=3, world_size=3)
        m["hardware"]["device_count"] = 4
    edit_meta(run, change)
    err = refused(capsys, run, tmp_path / "out", "--profile", "none")
    assert "engine_kwargs.tensor_parallel_size=3 does not divide llama-3.1-8b's 32 attention heads" in err


def test_a_file_given_as_the_run_folder_says_so(tmp_path, capsys):
    run = trim(R4090, tmp_path / "r")
    err = refused(capsys, run / "meta.json", tmp_path / "out")
    assert "is a file: give the folder that holds meta.json" in err


def test_a_timeseries_in_milliseconds_is_refused(tmp_path, capsys):
    """meta.json records the run's duration, yet a per-second series whose t counts milliseconds would be
    plotted against an idle replay: its span against the requests' says so."""
    run = trim(R4090, tmp_path / "r")
    ts = pd.read_csv(run / "timeseries.csv")
    ts.assign(t=ts.t * 1000).to_csv(run / "timeseries.csv", index=False)
    err = refused(capsys, run, tmp_path / "out")
    assert "timeseries.csv" in err and "t must be seconds" in err


def test_a_kv_cache_smaller_than_one_longest_request_is_said(tmp_path, capsys):
    """vLLM will not start a cache that cannot hold one request of max_model_len: a replay whose capacity says
    otherwise names the contradiction (a recorded one here: meta.json's blocks against its own max_model_len)."""
    run = trim(R4090, tmp_path / "r")
    stdout = ok(capsys, run, tmp_path / "out")
    assert "holds less than one request" not in stdout
    edit_meta(run, lambda m: (m["engine_kwargs"].update(max_model_len=65536),
                              m["resolved_config"]["model_config"].update(max_model_len=65536)))
    stdout = ok(capsys, run, tmp_path / "out2")
    assert ("note: the KV capacity (41,408 tokens, recorded) holds less than one request of meta.json's "
            "engine_kwargs.max_model_len, 65,536 tokens, which vLLM refuses at start: meta.json does not agree "
            "with itself") in stdout
