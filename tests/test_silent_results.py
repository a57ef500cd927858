"""Answers that used to come out silently wrong: each is now an error naming what to change, or a
counted change recorded in the summary and noted by the command."""
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s3sim.cli import CONF_DIR
from s3sim.config import fit_context, run_notes
from s3sim.core.errors import ConfigError
from s3sim.runner import run_config


def cfg(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


def trace(tmp_path, rows):
    path = tmp_path / "trace.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{t},{p},{o}\n" for t, p, o in rows))
    return ["workload=trace", f"workload.path={path}", "arrival=trace"]


def test_max_seq_len_beyond_the_context_window_is_an_error():
    with pytest.raises(ConfigError, match=r"max_seq_len=4096 exceeds the context window of tiny-llama \(512 tokens\)"):
        run_config(cfg("model=tiny-llama", "max_seq_len=4096", "num_requests=10"))
    with pytest.raises(ConfigError, match=r"max_seq_len=100000 exceeds the context window of gpt-j-6b \(2,048"):
        run_config(cfg("max_seq_len=100000", "num_requests=10"))


def test_a_prompt_longer_than_the_context_is_an_error_naming_its_row_with_overlong_error(tmp_path):
    over = trace(tmp_path, [(0.0, 10, 5), (1.0, 100_000, 5), (2.0, 20, 5)])
    with pytest.raises(ConfigError, match=r"workload row 1: a prompt of 100,000 tokens leaves no room") as e:
        run_config(cfg(*over, "max_seq_len=64", "workload.overlong=error"))
    assert "workload.overlong=drop" in str(e.value) and "max_prompt" not in str(e.value)  # keys that exist


@pytest.mark.parametrize("name", ["trace", "alpaca", "sharegpt_pairs", "sharegpt", "alpaca_eval", "smollm2_greedy"])
def test_every_workload_states_its_overlong_rule_and_drop_is_the_default(name):
    assert cfg(f"workload={name}")["workload"]["overlong"] == "drop"


def test_a_prompt_longer_than_the_context_is_dropped_by_default_and_counted(tmp_path):
    """As a server rejects the one request and serves the rest: the others keep their arrival times."""
    over = trace(tmp_path, [(0.0, 10, 5), (1.0, 100_000, 5), (2.0, 20, 5), (3.0, 2048, 7)])
    row = run_config(cfg(*over, "max_seq_len=64", "policy=orca"))
    assert row["num_requests"] == 2 and row["dropped_requests"] == 2 and row["clipped_prompts"] == 0
    assert row["rows_used"] == "all"  # every row was read; two were refused
    assert "2 requests were dropped" in " ".join(run_notes(row))


def test_clip_keeps_room_for_the_whole_output_and_counts_the_prompts(tmp_path):
    from s3sim.cluster.build import build

    over = trace(tmp_path, [(0.0, 10, 5), (1.0, 100_000, 5), (2.0, 2048, 64)])
    setup = build(cfg(*over, "max_seq_len=64", "policy=orca", "workload.overlong=clip"))
    assert setup.prompt_len.tolist() == [10, 2048 - 5, 2048 - 64] and setup.output_len.tolist() == [5, 5, 64]
    assert setup.clipped_prompts == 2 and setup.dropped == 0 and setup.context_clipped == 0
    row = run_config(cfg(*over, "max_seq_len=64", "policy=orca", "workload.overlong=clip"))
    assert row["clipped_prompts"] == 2 and row["num_requests"] == 3
    assert "2 prompts kept only their last tokens" in " ".join(run_notes(row))


def test_overlong_takes_three_values_and_a_workload_of_only_overlong_prompts_is_an_error(tmp_path):
    over = trace(tmp_path, [(0.0, 100_000, 5)])
    with pytest.raises(ConfigError, match=r"workload.overlong 'cut' is unknown; valid: error, drop, clip"):
        run_config(cfg(*over, "workload.overlong=cut"))
    with pytest.raises(ConfigError, match=r"workload.overlong=drop: every one of the 1 requests"):
        run_config(cfg(*over))


def test_the_shipped_trace_replays_on_the_default_model(tmp_path):
    """The Azure trace holds prompts longer than GPT-J's 2,048-token context: they are dropped, counted."""
    row = run_config(cfg("workload=trace", "arrival=trace", "num_requests=40", "policy=orca"))
    assert row["dropped_requests"] >= 1 and row["num_requests"] + row["dropped_requests"] == 40
    assert row["rows_used"] == "first"


def test_an_output_running_past_the_context_stops_there_and_is_counted(tmp_path):
    rows = [(0.0, 2000, 500), (1.0, 10, 5), (2.0, 2040, 100), (3.0, 100, 100)]
    row = run_config(cfg(*trace(tmp_path, rows), "max_seq_len=2048", "policy=orca"))
    assert row["context_clipped"] == 2 and row["clipped_outputs"] == 0
    assert row["num_requests"] == 4
    # outputs stop at the window: 48 and 8 tokens instead of 500 and 100
    assert "2 requests stop where their output would run past the model's context window" in " ".join(run_notes(row))


def test_fit_context_keeps_what_fits():
    out, cut = fit_context(np.array([10, 20]), np.array([5, 6]), np.array([0, 1]), 64, 32, "m")
    assert out.tolist() == [5, 6] and cut == 0
    out, cut = fit_context(np.array([60, 20]), np.array([5, 6]), np.array([0, 1]), 64, 32, "m")
    assert out.tolist() == [4, 6] and cut == 1


def test_clipped_outputs_counts_the_requests_served_not_the_table(tmp_path):
    rows = [(float(i), 10, 500 if i < 3 else 5) for i in range(10)]  # 3 of 10 rows exceed max_seq_len=64
    whole = run_config(cfg(*trace(tmp_path, rows), "max_seq_len=64", "policy=orca"))
    assert whole["clipped_outputs"] == 3
    first = run_config(cfg(*trace(tmp_path, rows), "max_seq_len=64", "policy=orca", "num_requests=2"))
    assert first["clipped_outputs"] == 2  # the trace's first two rows
    later = [(float(i), 10, 500 if i >= 7 else 5) for i in range(10)]  # the long ones last
    last = run_config(cfg(*trace(tmp_path, later), "max_seq_len=64", "policy=orca", "num_requests=7"))
    assert last["clipped_outputs"] == 0
    assert "3 requests had their output cut to max_seq_len=64" in " ".join(run_notes(whole))


# ---- stale results ------------------------------------------------------------------------------

def small_trace_cfg(tmp_path, outputs):
    over = trace(tmp_path, [(float(i), 10, o) for i, o in enumerate(outputs)])
    return cfg(*over, "max_seq_len=64", "policy=orca")


def test_a_finished_run_is_not_reused_when_a_file_it_read_changed(tmp_path):
    from s3sim.runner import run_dir

    c = small_trace_cfg(tmp_path, [5, 6, 7])
    row, reused = run_dir(c, tmp_path / "run")
    assert not reused and row["num_requests"] == 3
    again, reused = run_dir(c, tmp_path / "run")
    assert reused and again["request_throughput"] == row["request_throughput"]
    small_trace_cfg(tmp_path, [5, 6, 7, 8, 9])  # the trace edited in place; the config text is the same
    edited, reused = run_dir(c, tmp_path / "run")
    assert not reused and edited["num_requests"] == 5
    inputs = (tmp_path / "run" / "inputs.json").read_text()
    assert str((tmp_path / "trace.csv").resolve()) in inputs and '"code"' in inputs


def test_a_finished_run_is_not_reused_after_the_code_changed(tmp_path, monkeypatch):
    from s3sim import inputs
    from s3sim.runner import run_dir

    c = small_trace_cfg(tmp_path, [5, 6, 7])
    run_dir(c, tmp_path / "run")
    monkeypatch.setattr(inputs, "code_version", lambda: "another version")
    _, reused = run_dir(c, tmp_path / "run")
    assert not reused


def test_a_relative_path_ties_a_run_to_the_directory_it_was_read_from(tmp_path, monkeypatch):
    """`workload.path=trace.csv` in two directories names two files: the second is not given the first's run."""
    from s3sim.runner import run_dir

    for d, outputs in (("a", [5, 6, 7]), ("b", [50, 60, 70, 80])):
        (tmp_path / d).mkdir()
        trace(tmp_path / d, [(float(i), 10, o) for i, o in enumerate(outputs)])
    c = cfg("workload=trace", "workload.path=trace.csv", "arrival=trace", "max_seq_len=128", "policy=orca")
    monkeypatch.chdir(tmp_path / "a")
    first, reused = run_dir(c, tmp_path / "run")
    assert not reused and first["num_requests"] == 3
    assert run_dir(c, tmp_path / "run")[1]  # the same directory: reused
    monkeypatch.chdir(tmp_path / "b")
    second, reused = run_dir(c, tmp_path / "run")
    assert not reused and second["num_requests"] == 4


@pytest.mark.parametrize("extra", [[], ["cluster.replicas=2"], ["repeats=2"]])
def test_a_run_whose_result_file_was_deleted_runs_again(tmp_path, extra):
    from s3sim.collect import collect
    from s3sim.runner import run_dir

    c = cfg(*trace(tmp_path, [(float(i), 10, 5 + i) for i in range(4)]), "max_seq_len=64", "policy=orca", *extra)
    run_dir(c, tmp_path / "run")
    files = {"cluster.replicas=2": "replicas.csv", "repeats=2": "repeats.csv"}
    for name in ["requests.parquet"] + [files[e] for e in extra]:
        assert run_dir(c, tmp_path / "run")[1]
        (tmp_path / "run" / name).unlink()
        assert collect(tmp_path / "run").status.tolist() == ["incomplete"]
        row, reused = run_dir(c, tmp_path / "run")
        assert not reused and (tmp_path / "run" / name).is_file() and row["num_requests"] == 4
        assert collect(tmp_path / "run").status.tolist() == ["finished"]
    (tmp_path / "run" / "inputs.json").write_text("{not json")  # what it wrote is unknown: not finished either
    table = collect(tmp_path / "run")
    assert table.status.tolist() == ["incomplete"] and "inputs.json cannot be read" in table.error.iloc[0]
    assert not run_dir(c, tmp_path / "run")[1]


@pytest.mark.parametrize("content", [b"\x00\xff\xfe random bytes \x81", b"", b"policy,num_requests,request_throughput\n",
                                     b"a,b\n1,2\n"])
def test_a_corrupt_summary_is_run_again_and_collected_as_invalid(tmp_path, content):
    from s3sim.collect import collect
    from s3sim.runner import run_dir

    c = small_trace_cfg(tmp_path, [5, 6, 7])
    run_dir(c, tmp_path / "run")
    (tmp_path / "run" / "summary.csv").write_bytes(content)
    table = collect(tmp_path / "run")
    assert table.status.tolist() == ["invalid"] and "summary.csv" in table.error.iloc[0]
    row, reused = run_dir(c, tmp_path / "run")  # the point runs again and recovers by itself
    assert not reused and row["num_requests"] == 3
    assert collect(tmp_path / "run").status.tolist() == ["finished"]


@pytest.mark.parametrize("edit, why", [
    (lambda text: text.replace("\n", ",999\n", 2).replace(",999", "", 1), "line 2 has"),  # a field too many
    (lambda text: text[:text.index("\n") + 1 + len(text.splitlines()[1]) // 2] + "\n", "line 2 has"),  # cut short
    (lambda text: _cell(text, "request_throughput", "nan"), "request_throughput is nan"),
    (lambda text: _cell(text, "request_throughput", "-5"), "request_throughput is -5"),
    (lambda text: _cell(text, "num_requests", "abc"), "num_requests is 'abc'"),
    (lambda text: _cell(text, "policy", ""), "policy is nan"),
    (lambda text: text.replace("ttft_p50", "ttft_p55", 1), "lacks the column 'ttft_p50'"),
])
def test_a_summary_edited_or_cut_short_is_invalid_not_shifted_or_nan(tmp_path, edit, why):
    """pandas reads a row of one field more by making the first column the index, shifting every value; one of
    fewer fields as NaN: both were collected as finished runs."""
    from s3sim.collect import collect
    from s3sim.runner import run_dir

    c = small_trace_cfg(tmp_path, [5, 6, 7])
    run_dir(c, tmp_path / "run")
    summary = tmp_path / "run" / "summary.csv"
    summary.write_text(edit(summary.read_text()))
    table = collect(tmp_path / "run")
    assert table.status.tolist() == ["invalid"] and why in table.error.iloc[0], table.error.iloc[0]
    row, reused = run_dir(c, tmp_path / "run")  # not reused: the run is simulated again
    assert not reused and row["num_requests"] == 3


def _cell(text: str, column: str, value: str) -> str:
    """A one-row CSV with `column`'s cell set to `value` (no cell of the row holds a quoted comma here)."""
    header, row = text.splitlines()[:2]
    names, cells = header.split(","), row.split(",")
    cells[names.index(column)] = value
    return header + "\n" + ",".join(cells) + "\n"


def collect_cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", "from s3sim.cli import collect_main; collect_main()", *map(str, args)],
                          capture_output=True, text=True)


def test_a_collected_table_keeps_this_machines_speed_beside_it_not_in_it(tmp_path):
    """A committed sweep table (make trace-sweep) must not change with the machine that simulated it."""
    from s3sim.runner import run_dir

    for name, outputs in (("a", [5, 6]), ("b", [7, 8, 9])):
        run_dir(small_trace_cfg(tmp_path, outputs), tmp_path / "runs" / name)
    p = collect_cli(tmp_path / "runs", tmp_path / "all.csv")
    assert p.returncode == 0, p.stderr
    table, wall = pd.read_csv(tmp_path / "all.csv"), pd.read_csv(tmp_path / "all.wall_clock.csv")
    assert not {"sim_wall_s", "sim_requests_per_s"} & set(table.columns)
    assert list(wall.columns) == ["run_dir", "policy", "rate", "sim_wall_s", "sim_requests_per_s"]
    assert sorted(wall.run_dir) == sorted(table.run_dir) == ["a", "b"] and (wall.sim_wall_s > 0).all()


def test_collect_reports_unreadable_configs_and_exits_nonzero_when_runs_did_not_finish(tmp_path):
    from s3sim.runner import run_dir

    run_dir(small_trace_cfg(tmp_path, [5, 6]), tmp_path / "runs" / "ok")
    p = collect_cli(tmp_path / "runs", tmp_path / "all.csv")
    assert p.returncode == 0, p.stderr
    assert "request_throughput" in p.stdout and "kv_capacity_tokens" not in p.stdout  # a short table
    bad = tmp_path / "runs" / "bad"
    bad.mkdir()
    (bad / "resolved_config.yaml").write_text("policy: [unclosed\n")
    p = collect_cli(tmp_path / "runs", tmp_path / "all.csv")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "incomplete: bad: resolved_config.yaml cannot be read" in p.stderr


def test_collect_to_a_path_it_cannot_write_is_one_line(tmp_path):
    from s3sim.runner import run_dir

    run_dir(small_trace_cfg(tmp_path, [5, 6]), tmp_path / "runs" / "ok")
    p = collect_cli(tmp_path / "runs", tmp_path / "no" / "such" / "dir" / "all.csv")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "cannot write" in p.stderr


# ---- what was assumed or switched is said ---------------------------------------------------------

def test_a_config_json_without_sizes_says_what_was_assumed_and_dtype_overrides(tmp_path):
    import json

    shape = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
             "vocab_size": 256, "max_position_embeddings": 512}
    (tmp_path / "config.json").write_text(json.dumps(shape))
    row = run_config(cfg(f"model.name={tmp_path / 'config.json'}", "num_requests=20", "max_seq_len=64"))
    assert row["model_assumed"] == "intermediate_size = 4 x hidden_size; torch_dtype = float16"
    assert any("assumed intermediate_size = 4 x hidden_size" in n for n in run_notes(row))
    full = dict(shape, intermediate_size=128, torch_dtype="float32")
    (tmp_path / "config.json").write_text(json.dumps(full))
    row32 = run_config(cfg(f"model.name={tmp_path / 'config.json'}", "num_requests=20", "max_seq_len=64"))
    assert row32["model_assumed"] == ""
    assert row32["model_dtype_bytes"] == 4
    row16 = run_config(cfg(f"model.name={tmp_path / 'config.json'}", "model.dtype=float16", "num_requests=20",
                           "max_seq_len=64"))
    assert row16["model_dtype_bytes"] == 2
    assert row16["kv_capacity_tokens"] > row32["kv_capacity_tokens"]  # half the bytes per token, smaller weights


def test_quantization_and_a_sliding_window_are_said_not_silently_ignored(tmp_path):
    import json

    shape = {"model_type": "mistral", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
             "intermediate_size": 128, "torch_dtype": "float16", "vocab_size": 256, "max_position_embeddings": 512,
             "sliding_window": 128, "quantization_config": {"quant_method": "awq", "bits": 4}}
    (tmp_path / "config.json").write_text(json.dumps(shape))
    row = run_config(cfg(f"model.name={tmp_path / 'config.json'}", "num_requests=20", "max_seq_len=64"))
    assert row["model_assumed"] == ("unquantized weights at 2 bytes (quantization_config: quant_method awq, bits 4, "
                                    "not modelled); full attention over the whole context (sliding_window 128, "
                                    "not modelled)")
    assert any("quantization_config" in n and "sliding_window" in n for n in run_notes(row))
    plain = {k: v for k, v in shape.items() if k != "quantization_config"}
    for window in (None, 512, 4096):  # absent, or no narrower than the context: nothing to say
        (tmp_path / "config.json").write_text(json.dumps(dict(plain, sliding_window=window)))
        row = run_config(cfg(f"model.name={tmp_path / 'config.json'}", "num_requests=20", "max_seq_len=64"))
        assert row["model_assumed"] == ""


def test_a_trace_served_without_its_timestamps_is_noted(tmp_path):
    over = trace(tmp_path, [(0.0, 10, 5), (1.0, 12, 6)])
    row = run_config(cfg(*over[:2], "max_seq_len=64"))  # workload=trace, arrival left offline
    assert row["arrival"] == "offline"
    assert any("the trace's timestamps are not replayed (arrival=offline)" in n for n in run_notes(row))
    assert not any("timestamps" in n for n in run_notes(run_config(cfg(*over, "max_seq_len=64"))))


def test_the_executor_refuses_the_simulators_dtype_override():
    from s3exec.config import build_exec

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        c = OmegaConf.to_container(compose("exec", overrides=["model.dtype=float16", "num_requests=4"]), resolve=True)
    with pytest.raises(ConfigError, match="model.dtype is the simulator's; the executor loads its model in executor.dtype"):
        build_exec(c)


# ---- repeats and plots -----------------------------------------------------------------------------

def test_repeats_give_means_and_confidence_intervals(tmp_path):
    from s3sim.runner import run_dir

    c = cfg("policy=s3", "num_requests=300", "repeats=4")
    row, _ = run_dir(c, tmp_path / "run")
    per_seed = pd.read_csv(tmp_path / "run" / "repeats.csv")
    assert per_seed.seed.tolist() == [0, 1, 2, 3] and row["repeats"] == 4 and row["seed"] == 0
    thr = per_seed.request_throughput
    assert row["request_throughput"] == pytest.approx(thr.mean())
    assert row["request_throughput_ci95"] == pytest.approx(3.182 * thr.std(ddof=1) / 2)
    assert row["num_requests"] == 300 and "num_requests_ci95" not in row
    written = pd.read_csv(tmp_path / "run" / "summary.csv").iloc[0]
    assert written.request_throughput == pytest.approx(row["request_throughput"])
    one = run_config(cfg("policy=s3", "num_requests=300", "seed=2"))
    assert one["request_throughput"] == pytest.approx(per_seed.request_throughput[2])
    with pytest.raises(ConfigError, match="repeats must be a positive integer"):
        run_config(cfg("policy=s3", "num_requests=30", "repeats=0"))


def test_s3sim_plot_draws_a_collected_sweep_with_error_bars(tmp_path):
    import subprocess
    import sys

    table = pd.DataFrame({"status": ["finished"] * 4 + ["failed"], "policy": ["a", "a", "b", "b", "b"],
                          "offered_rate": [1.0, 2.0, 1.0, 2.0, 3.0], "e2e_latency_p50": [1.0, 3.0, 2.0, 5.0, None],
                          "e2e_latency_p50_ci95": [0.1, 0.2, 0.1, 0.4, None]})
    table.to_csv(tmp_path / "all.csv", index=False)
    call = [sys.executable, "-c", "from s3sim.plot_cli import main; main()", str(tmp_path / "all.csv")]
    p = subprocess.run([*call, "--x", "offered_rate", "--y", "e2e_latency_p50", "--hue", "policy", "--logy"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "all.png").stat().st_size > 10_000
    bad = subprocess.run([*call, "--x", "rate", "--y", "e2e_latency_p50"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--x 'rate' is not a column of the table; similar: offered_rate" in bad.stderr


def test_review_fixes_of_reuse_and_intervals(tmp_path):
    from s3sim.inputs import note, recording
    from s3sim.runner import run_dir, t975

    assert t975(30) == 2.042 and abs(t975(31) - 2.040) < 2e-3 and abs(t975(120) - 1.980) < 2e-3
    # a data link pointed at another file is another input: the link's own path is what is recorded
    (tmp_path / "a.csv").write_text("x")
    (tmp_path / "link.csv").symlink_to(tmp_path / "a.csv")
    with recording() as files:
        note(tmp_path / "link.csv")
    assert files == {str((tmp_path / "link.csv").absolute())}
    # an earlier run's repeats.csv does not outlive it
    c = cfg("policy=s3", "num_requests=100", "repeats=2")
    run_dir(c, tmp_path / "run")
    assert (tmp_path / "run" / "repeats.csv").is_file()
    run_dir({**c, "repeats": 1}, tmp_path / "run")
    assert not (tmp_path / "run" / "repeats.csv").exists()


def test_precheck_leaves_flags_and_unlisted_sweeps_to_hydra(tmp_path):
    from s3sim.hydra_errors import precheck

    conf = str(__import__("s3sim.cli", fromlist=["CONF_DIR"]).CONF_DIR)
    precheck(conf, "config", ["-cn", "exec", "executor.mode=natural"], "s3sim")  # Hydra's to judge
    precheck(conf, "config", ["-m", "policy=glob(o*)", "num_requests=5"], "s3sim")
    with pytest.raises(SystemExit):
        precheck(conf, "config", ["-m", "policy=orca,nope"], "s3sim")


def _ray_cluster_running() -> bool:
    try:
        from ray._private.services import get_ray_address_from_environment
        return get_ray_address_from_environment("auto", None) is not None
    except Exception:  # noqa: BLE001 (none found, or a Ray without this function)
        return False


@pytest.mark.skipif(__import__("shutil").which("sbatch") is not None or _ray_cluster_running(),
                    reason="this machine can reach SLURM or a running Ray cluster")
@pytest.mark.parametrize("args, words", [
    (["hydra/launcher=slurm", "hydra.launcher.partition=cpu"], "hydra/launcher=slurm submits with SLURM's sbatch, "
                                                                "which this machine lacks"),
    (["hydra/launcher=ray", "hydra.launcher.ray.init.address=auto"], "joins a running Ray cluster, and none runs here")])
def test_a_sweep_sent_to_a_launcher_out_of_reach_is_one_line_and_writes_nothing(tmp_path, capsys, args, words):
    """It was the launcher's traceback (exit 1) after Hydra had written the sweep's multirun.yaml, which
    s3sim-collect then read as a sweep of points that never started."""
    from s3sim.hydra_errors import precheck

    conf = str(__import__("s3sim.cli", fromlist=["CONF_DIR"]).CONF_DIR)
    with pytest.raises(SystemExit) as stop:
        precheck(conf, "config", ["-m", "policy=orca,s3", *args, f"hydra.sweep.dir={tmp_path}/sweep"], "s3sim")
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("override, said", [("gpu=h100-sxm", "gpu=h100-sxm"), ("latency=roofline", "latency=roofline"),
                                            ("cluster.replicas=2", "cluster.replicas"), ("+gpu.count=2", "gpu.count"),
                                            ("experiment=accuracy", "experiment=accuracy"), ("~cluster", "cluster")])
def test_s3exec_names_the_groups_it_does_not_compose(capsys, override, said):
    """s3exec composes the model, workload, arrival, policy and predictor groups; a group of the simulator's only
    (which Hydra's --help lists for both) is one line saying so, where it was a contradiction ('gpu=h100-sxm:
    unknown; valid: ..., h100-sxm, ...') or a suggestion that failed in turn ('cluster=default: unknown')."""
    from s3sim.hydra_errors import precheck

    conf = str(__import__("s3sim.cli", fromlist=["CONF_DIR"]).CONF_DIR)
    with pytest.raises(SystemExit) as stop:
        precheck(conf, "exec", [override], "s3exec")
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"s3exec: error: {said}: s3exec has no {said.partition('=')[0].partition('.')[0]} group (it "
                   "composes model, workload, arrival, policy, predictor); "
                   f"{said.partition('=')[0].partition('.')[0]} is the simulator's (s3sim)")



@pytest.mark.parametrize("cap", [20_000, 3_500])
def test_prefix_hits_are_a_share_of_what_admissions_asked_for_even_under_heavy_preemption(cap):
    """Counters are divided by totals of their own kind: a readmitted victim asks for its prompt (and what it
    generated) again and may find it cached again, so hits are bounded by prefill_context_tokens, not by
    prompt_tokens (which they used to exceed: 'found cached' read over 100 %)."""
    row = run_config(cfg("policy=vllm", "policy.prefix_caching=true", "num_requests=300", "shared_prefix.tokens=1024",
                         f"+kv_capacity_tokens={cap}", "model=llama-3.1-8b", "max_seq_len=1024"))
    assert row["prefix_shared_tokens"] <= row["prefix_cached_tokens"] <= row["prefill_context_tokens"]
    if row["preemptions"] == 0:
        assert row["prefill_context_tokens"] == row["prompt_tokens"]
    else:  # each readmission asks for at least its prompt again
        assert row["prefill_context_tokens"] > row["prompt_tokens"] + row["recomputed_tokens"]
        assert row["prefix_cached_tokens"] > row["prompt_tokens"]  # the case that read over 100 %


def test_the_executors_served_time_goes_beside_a_committed_table_not_into_it(tmp_path):
    """make natural's table (executor and simulator rows of each policy) keeps no wall-clock column: wall_s,
    how long the executor served on this machine, goes to the ignored natural.wall_clock.csv, keyed by engine
    and policy."""
    from s3sim.writers import write_table
    df = pd.DataFrame({"engine": ["exec", "sim"], "policy": ["vllm", "vllm"], "request_throughput": [0.4, 0.5],
                       "wall_s": [318.9, None]})
    write_table(df, tmp_path / "natural.csv")
    table, wall = pd.read_csv(tmp_path / "natural.csv"), pd.read_csv(tmp_path / "natural.wall_clock.csv")
    assert list(table.columns) == ["engine", "policy", "request_throughput"]
    assert list(wall.columns) == ["engine", "policy", "wall_s"] and wall.wall_s[0] == 318.9


def test_an_always_busy_engine_is_busy_one_and_a_longer_busy_time_is_an_invariant():
    """Durations summed in another order than the clock added them overshoot by a rounding: a busy fraction
    of exactly 1, never 1.0000000000000002; beyond rounding the run's bookkeeping is broken and says so."""
    from s3sim.core.errors import InvariantViolation
    from s3sim.metrics.summary import busy_fraction

    durations = [0.1] * 10
    end = 0.0
    for d in durations:  # as the clock adds them
        end += d
    assert busy_fraction(float(np.sum(durations)) + 2e-16, end) == 1.0
    assert busy_fraction(0.5, 1.0) == 0.5 and busy_fraction(3.0, 2.0, engines=2) == 0.75
    with pytest.raises(InvariantViolation, match="iterations took"):
        busy_fraction(1.01, 1.0)
