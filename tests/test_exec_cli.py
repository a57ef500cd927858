"""The `s3exec` app: the simulator's config groups and output schema, and one clear line for bad input."""
import subprocess
import sys

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s3exec.config import build_exec, parse_bytes
from s3exec.models import resolve_source
from s3exec.runner import run_exec
from s3sim.cli import CONF_DIR
from s3sim.core.errors import ConfigError
from s3sim.hardware.models import MODEL_PRESETS
from s3sim.metrics.summary import request_records
from s3sim.runner import run_config

SMALL = ["num_requests=12", "max_seq_len=32", "executor.kv_memory=1MiB", "executor.threads=1"]


def exec_cfg(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose("exec", overrides=[*SMALL, *overrides]), resolve=True)


def sim_cfg(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


def test_natural_mode_counts_the_generations_that_reached_the_cap_as_clipped(tmp_path):
    """Natural mode serves the model's own lengths: clipped_outputs counts the generations that reached
    max_seq_len, not the workload's reference lengths (here every reference is 3 tokens, under the cap; the tiny
    random model rarely says end-of-sequence, so its generations run to the cap)."""
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{i}.0,12,3\n" for i in range(4)))
    row, result = run_exec(exec_cfg("policy=orca", "executor.mode=natural", "max_seq_len=16", "num_requests=4",
                                    "workload=trace", f"workload.path={trace}"))
    records = request_records(result.requests)
    assert row["clipped_outputs"] == int((records.generated >= 16).sum()) > 0


def test_run_writes_the_simulator_schema_with_real_timestamps(tmp_path):
    row, result = run_exec(exec_cfg("policy=paged"), tmp_path, write_iterations=True)
    sim = run_config(sim_cfg("model=tiny-llama", "num_requests=12", "max_seq_len=32", "policy=paged"))
    assert set(sim) - {"sim_wall_s", "sim_requests_per_s"} <= set(row)
    assert row["engine"] == "exec" and row["num_requests"] == 12 and row["policy"] == "paged"
    records = pd.read_parquet(tmp_path / "requests.parquet")
    assert list(records.columns) == list(request_records(result.requests).columns)
    assert (records.generated == records.output_len).all()
    tokens = pd.read_csv(tmp_path / "tokens.csv")
    assert len(tokens) == records.output_len.sum()
    last = tokens.groupby("id").time.max()
    assert (last.sort_index().to_numpy() == records.sort_values("id").last_token.to_numpy()).all()
    assert (tmp_path / "iterations.csv").is_file() and (tmp_path / "summary.csv").is_file()


def test_same_config_same_requests_as_the_simulator():
    setup = build_exec(exec_cfg("policy=orca"))
    from s3sim.config import build_workload
    prompt, output, arr, _ = build_workload(exec_cfg("policy=orca"))
    assert sorted(r.output_len for r in setup.requests) == sorted(output.tolist())
    assert sorted(r.prompt_len for r in setup.requests) == sorted(prompt.tolist())
    assert setup.capacity_tokens == 2**20 // setup.loaded.kv_bytes_per_token


@pytest.mark.parametrize("args, message", [
    (["executor.memory_limit=100000"], "does not fit: its weights take"),
    (["executor.kv_memory=4KiB"], "cannot hold one request of"),
    (["executor.memory_limit=1MiB", "executor.kv_memory=2MiB"], "are left after the weights"),
    (["workload=sharegpt", "executor.max_prompt_len=null"], "exceeds the context of"),
    (["max_seq_len=600"], "max_seq_len=600 leaves no room for a prompt in the context of 'tiny-llama'"),
    (["policy=vllm"], "policy.max_num_batched_tokens=2048 \\(vLLM's server default below 70 GiB\\) "
                      "policy.prefix_caching=false \\(the executor keeps no prefix cache either\\)"),
    (["executor.mode=greedy"], "executor.mode 'greedy' is unknown"),
    (["executor.kv_memory=lots"], "is not a size like"),
    (["executor.kv_memory=0"], "must be a whole number of bytes"),
    (["executor.dtype=int8"], "executor.dtype 'int8' is unknown"),
    (["executor.device=tpu"], "executor.device 'tpu' is unknown"),
    (["executor.model=gpt-5"], "is neither smollm2"),
    (["workload=alpaca_rows"], "need a model with a tokenizer"),
    (["policy.name=nope"], "policy.name 'nope' is unknown"),
    (["policy=vllm", "policy.max_batch_size=8", "policy.max_num_batched_tokens=64"], "the executor keeps no prefix cache"),
    (["policy=vllm", "policy.prefix_caching=false"], "this run has none \\(the executor\\); give numbers"),
])
def test_bad_input_is_a_config_error(args, message):
    with pytest.raises(ConfigError, match=message):
        build_exec(exec_cfg(*args))


def test_sizes():
    assert parse_bytes("256MiB", "f") == 256 * 2**20
    assert parse_bytes("2GB", "f") == 2 * 10**9
    assert parse_bytes(4096, "f") == 4096
    assert parse_bytes(0.5, "f") == 0.5
    assert parse_bytes(1e9, "f") == 10**9  # YAML's 1e9 is a float: a whole number of bytes still
    with pytest.raises(ConfigError, match=r"f must be a whole number of bytes \(> 1\) or a fraction in \(0, 1\], "
                                          r"got 1.5"):
        parse_bytes(1.5, "f")  # 150 %? 1.5 GiB? it used to become 1 byte
    with pytest.raises(ConfigError, match="whole number of bytes"):
        parse_bytes("1.5", "f")  # quoted, the same
    assert parse_bytes("0.5", "f") == 0.5 and parse_bytes("4096", "f") == 4096


def test_every_preset_runs_at_the_shape_the_simulator_reads():
    """Both engines read a preset from one file: the executor's config has the simulator's shape."""
    for name, spec in MODEL_PRESETS.items():
        kind, c = resolve_source(name)
        kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        assert kind == "random"
        assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, kv_heads, head_dim,
                c.max_position_embeddings, c.vocab_size) == (spec.n_layers, spec.hidden_size, spec.n_heads,
                                                             spec.n_kv_heads, spec.head_dim, spec.max_context,
                                                             spec.vocab_size)
    assert resolve_source("gpt-j-6b")[1].model_type == "gpt_neox"  # GPT-J's shape on GPT-NeoX's code


def test_a_sweep_goes_on_past_a_failing_point_and_names_it(tmp_path):
    """One process (the imports dominate): the second of three points cannot fit; the third still runs, the
    failure is recorded in its run directory and named at the end, and the exit code is 1."""
    small = [a for a in SMALL if not a.startswith("executor.kv_memory")]
    p = subprocess.run([sys.executable, "-c", "from s3exec.cli import main; main()", "-m", *small,
                        "executor.kv_memory=1MiB,4KiB,2MiB", f"hydra.sweep.dir={tmp_path}/mr"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.stdout.count("policy=s3") == 2
    assert len(list((tmp_path / "mr").glob("*/summary.csv"))) == 2
    failed = list((tmp_path / "mr").glob("*/failed.txt"))
    assert len(failed) == 1 and failed[0].read_text().startswith("ConfigError: KV capacity of")
    assert p.returncode == 1
    assert "3 runs: 2 finished, 1 failed, 0 invalid, 0 incomplete" in p.stderr and "Traceback" not in p.stderr


def test_a_single_run_fails_with_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-c", "from s3exec.cli import main; main()", *SMALL, "executor.kv_memory=4KiB",
                        f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert p.stderr.startswith("s3exec: error: KV capacity of")


def test_a_failed_rerun_leaves_no_earlier_summary_behind(tmp_path):
    """The first run succeeds into a directory; a second, failing one into the same directory removes the
    first run's summary before it starts, and records its failure."""
    small = [a for a in SMALL if not a.startswith("executor.kv_memory")]
    run = [sys.executable, "-c", "from s3exec.cli import main; main()", *small, f"hydra.run.dir={tmp_path}/run"]
    first = subprocess.run([*run, "executor.kv_memory=1MiB"], capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "run" / "summary.csv").is_file()
    second = subprocess.run([*run, "executor.kv_memory=4KiB"], capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 2
    assert not (tmp_path / "run" / "summary.csv").exists() and not (tmp_path / "run" / "requests.parquet").exists()
    assert (tmp_path / "run" / "failed.txt").read_text().startswith("ConfigError: KV capacity of")
    assert "kv_memory: 4KiB" in (tmp_path / "run" / "resolved_config.yaml").read_text()


def test_prompts_cut_to_max_prompt_len_are_counted_and_noted(tmp_path):
    """The cut keeps each prompt's last tokens; `s3exec` says how many it cut, and the summary counts them."""
    whole = build_exec(exec_cfg("executor.max_prompt_len=null")).prompts
    limit = sorted(map(len, whole))[len(whole) // 2]  # about half the prompts are longer
    longer = sum(len(p) > limit for p in whole)
    assert 0 < longer < len(whole)
    cut = build_exec(exec_cfg(f"executor.max_prompt_len={limit}"))
    assert cut.clipped_prompts == longer
    assert all(c == w[-limit:] for c, w in zip(cut.prompts, whole))
    p = subprocess.run([sys.executable, "-c", "from s3exec.cli import main; main()", *SMALL,
                        f"executor.max_prompt_len={limit}", f"hydra.run.dir={tmp_path}/run"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    notes = [line for line in p.stdout.splitlines() if "(clipped_prompts)" in line]
    assert len(notes) == 1 and f"{longer} prompts" in notes[0] and f"max_prompt_len={limit}" in notes[0]
    assert pd.read_csv(tmp_path / "run" / "summary.csv").clipped_prompts.item() == longer
    from s3exec.runner import exec_notes  # a run that cuts nothing says nothing about it
    row, _ = run_exec(exec_cfg("executor.max_prompt_len=null"))
    assert row["clipped_prompts"] == 0
    assert not any("clipped_prompts" in n for n in exec_notes(row, exec_cfg("executor.max_prompt_len=null")))


def test_a_memory_limit_above_the_host_memory_is_refused_before_loading(monkeypatch):
    import psutil

    from s3exec import models

    available = psutil.virtual_memory().available
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=r"^executor.memory_limit=\d+ asks for [0-9.]+ GiB but the available host "
                                          r"memory is [0-9.]+ GiB"):
        build_exec(exec_cfg(f"executor.memory_limit={available * 4}"))
    monkeypatch.undo()
    build_exec(exec_cfg(f"executor.memory_limit={min(available // 2, 2**30)}"))  # within it: accepted
