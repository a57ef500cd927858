"""Bad input to the three command lines (s3sim, s3exec, s3predict): exit code 2, one line naming the field or
line, no traceback, and no file left that claims success. Random traces and model configs (hypothesis)
either load or fail with the project's one-line error, never another exception."""
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3sim.core.errors import ConfigError
from s3sim.hardware.models import ModelSpec
from s3sim.workload.lengths import load_trace

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def cli(module_call, *args, cwd):
    return subprocess.run([sys.executable, "-c", module_call, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def assert_one_line_error(p, needle, run_dir=None):
    assert p.returncode == 2, (p.returncode, p.stderr[-500:])
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert needle in lines[0], lines[0]
    if run_dir is not None:
        assert not (run_dir / "summary.csv").exists()


TRACES = {  # file content -> what the one line names
    "header_only": (HEADER, "no requests after the header line"),
    "twenty_digits": (HEADER + "0.0,12345678901234567890,5\n", "line 2: ContextTokens '12345678901234567890' is more than"),
    "huge_field": (HEADER + "0.0,10,5\n1.0," + "7" * 200_000 + ",5\n", "line 3: field larger than field limit"),
    "not_utf8": (HEADER.encode() + b"0.0,1\xff0,5\n", "is not UTF-8 text"),
    "bad_header": ("time,prompt,output\n0,1,2\n", "line 1: header must start with TIMESTAMP"),
    "negative": (HEADER + "0.0,-3,5\n", "line 2: ContextTokens '-3' is not a non-negative integer"),
    "bad_time": (HEADER + "yesterday,3,5\n", "line 2: TIMESTAMP 'yesterday' is neither seconds"),
}


@pytest.mark.parametrize("case", sorted(TRACES))
def test_s3sim_bad_traces(tmp_path, case):
    content, needle = TRACES[case]
    path = tmp_path / "trace.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    p = cli("from s3sim.cli import main; main()", "workload=trace", f"workload.path={path}", "arrival=trace",
            "max_seq_len=64", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert_one_line_error(p, needle, tmp_path / "run")


@pytest.mark.parametrize("args, needle", [
    (["seed=abc"], "seed must be a non-negative integer, got 'abc'"),
    (["executor.dtype=int4"], "executor.dtype 'int4' is unknown"),
    (["executor.kv_memory=lots"], "executor.kv_memory 'lots' is not a size"),
    (["policy=nope"], "policy=nope: unknown; valid: ft, hf"),
    (["executor.devise=cpu"], "executor.devise: no such key; did you mean executor.device?"),
    (["model.dtype=float16"], "model.dtype is the simulator's"),
    (["+shared_prefix.tokens=64"], "shared_prefix is the simulator's"),
    (["policy=hf", "policy.sizing=actual", "executor.mode=natural"], "executor.mode=natural with policy.sizing=actual"),
    (["executor.memory_limit=1000000GB"], "executor.memory_limit=1000000GB asks for 931322.57 GiB but the available host"),
    (["executor.block_size=4096", "executor.kv_memory=1MiB"],
     "executor.block_size=4096 is larger than the KV capacity"),
    (["policy=paged", "policy.block_size=100000", "executor.kv_memory=1MiB"],
     "policy.block_size=100000 is larger than the KV capacity of 2,048 tokens"),
    (["max_seq_len=9223372036854775808"], "max_seq_len must be at most 2,147,483,647"),
    (["seed=18446744073709551616"], "seed must be below 2**63"),
    (["executor.threads=100000"], "executor.threads must be at most 1024"),
    (["predictor.latency_ms=1e300"], "predictor.latency_ms must be at most 1e+12"),
    (["~executor"], "executor must be the executor's settings"),
    (["~model"], "executor.model or model.name must name the model to run"),
    (["executor.model=''"], "executor.model must name a model"),
    # checked, though hf does not read it
    (["policy=hf", "executor.attention=flash"], "executor.attention='flash' is unknown"),
    (["policy=hf", "executor.cuda_graphs=maybe"], "executor.cuda_graphs must be auto, true or false"),
    (["executor.chat_template=maybe"], "executor.chat_template must be true or false"),
    (["+kv_capacity_tokens=100"], "kv_capacity_tokens is the simulator's"),
    (["executor.kv_memory='1'"], "executor.kv_memory must be a whole number of bytes (> 1) or a fraction"),
])
def test_s3exec_bad_input(tmp_path, args, needle):
    p = cli("from s3exec.cli import main; main()", "num_requests=4", "max_seq_len=16", *args,
            f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert_one_line_error(p, needle, tmp_path / "run")


def test_s3predict_bad_input(tmp_path):
    (tmp_path / "conv.jsonl").write_text('{"id": "a", "conversations": ["hello", "hi"]}\n')
    (tmp_path / "ok.jsonl").write_text('{"prompt": "hello there", "response": "hi"}\n')
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "meta.json").write_text("{not json")
    call = "import sys; from s3sim.predictor.trained.cli import main; sys.exit(main())"
    cases = [
        (["train", tmp_path / "ok.jsonl", "--test-frac", "1.5"], "--test-frac: must be a fraction between 0 and 1"),
        (["train", tmp_path / "conv.jsonl", "--no-progress"], "conv.jsonl line 1: conversations must be a list"),
        (["evaluate", tmp_path / "ok.jsonl", "--model", tmp_path / "model", "--no-progress"],
         "meta.json: not a trained predictor's metadata"),
        (["train", tmp_path / "missing.jsonl", "--no-progress"], "missing.jsonl"),
        (["bogus"], "invalid choice: 'bogus'"),
    ]
    for args, needle in cases:
        assert_one_line_error(cli(call, *args, cwd=tmp_path), needle)


# ---- generated input: the project's one-line error or a result, nothing else ----------------------

cells = st.one_of(st.integers(-5, 10**25).map(str), st.floats(allow_nan=True).map(str), st.text(max_size=12),
                  st.sampled_from(["", " ", "2024-01-01 00:00:00.5", "1e400", "nan", "0x10", "٣"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.lists(cells, min_size=0, max_size=4), max_size=6),
       header=st.sampled_from([HEADER, "", "TIMESTAMP,ContextTokens\n", HEADER.lower()]))
def test_any_trace_loads_or_is_one_config_error(tmp_path_factory, rows, header):
    path = tmp_path_factory.mktemp("t") / "trace.csv"
    body = "".join(",".join(c.replace(",", " ").replace("\n", " ").replace("\r", " ").replace('"', "")
                            for c in r) + "\n" for r in rows)
    path.write_text(header + body, encoding="utf-8", errors="surrogatepass")
    try:
        wl = load_trace(path, max_output=64)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    assert len(wl) >= 1 and (wl.prompt_len >= 1).all() and (wl.output_len >= 1).all()


@settings(max_examples=150, deadline=None)
@given(cfg=st.fixed_dictionaries({}, optional={
    k: st.one_of(st.integers(-3, 70000), st.floats(-1, 1e6), st.just(float("nan")), st.text(max_size=5), st.none(),
                 st.booleans())
    for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
              "max_position_embeddings", "intermediate_size", "head_dim", "torch_dtype", "num_experts",
              "num_experts_per_tok")}))
def test_any_model_config_reads_or_is_one_config_error(cfg):
    try:
        ModelSpec.from_hf_dict(cfg, "m", where="config.json")
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    except (ZeroDivisionError, OverflowError) as e:  # pragma: no cover - would be a bug
        raise AssertionError(f"{type(e).__name__} for {json.dumps(cfg, default=str)}") from e


@pytest.mark.parametrize("module", ["s3sim", "s3exec"])
def test_a_run_directory_that_cannot_be_written_is_one_line(tmp_path, module):
    (tmp_path / "afile").write_text("not a folder\n")
    p = cli(f"from {module}.cli import main; main()", "num_requests=4", f"hydra.run.dir={tmp_path}/afile/run",
            cwd=tmp_path)
    assert_one_line_error(p, f"hydra.run.dir={tmp_path}/afile/run: cannot write there")


def test_s3exec_refuses_a_checkpoint_whose_weights_are_not_its_model(tmp_path):
    """transformers fills a missing layer with random weights and says so in a log line the executor mutes;
    NaN weights make every token 0; a weight of another shape or a damaged file is its traceback: each is one
    line. A folder holding a config.json and no weights runs on random weights, said."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    good = tmp_path / "good"
    AutoModelForCausalLM.from_config(config).save_pretrained(good)
    weights = load_file(good / "model.safetensors")

    def variant(name, tensors=None, raw=None):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text((good / "config.json").read_text())
        if raw is not None:
            (folder / "model.safetensors").write_bytes(raw)
        elif tensors is not None:
            save_file(tensors, folder / "model.safetensors")
        return folder

    cases = {
        variant("partial", {k: v for k, v in weights.items() if ".layers.1." not in k}):
            "the checkpoint lacks model.layers.1.",
        variant("nan", {**weights, "model.norm.weight": torch.full_like(weights["model.norm.weight"], float("nan"))}):
            "the weight model.norm.weight holds NaN or inf",
        variant("shape", {**weights, "model.norm.weight": torch.ones(7)}): "a weight has another shape",
        variant("junk", raw=b"\x00" * 1000): "its weights cannot be loaded",
    }
    for folder, needle in cases.items():
        p = cli("from s3exec.cli import main; main()", "num_requests=2", "max_seq_len=16", "executor.kv_memory=1MiB",
                f"executor.model={folder}", "executor.progress=false", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
        assert_one_line_error(p, needle, tmp_path / "run")
    bare = variant("bare")
    p = cli("from s3exec.cli import main; main()", "num_requests=2", "max_seq_len=16", "executor.kv_memory=1MiB",
            f"executor.model={bare}", "executor.progress=false", f"hydra.run.dir={tmp_path}/run2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"note: executor.model '{bare}' holds a config.json and no weight file" in p.stdout


def test_s3exec_counts_and_says_trace_rows_of_zero_tokens_as_the_simulator_does(tmp_path):
    import pandas as pd

    (tmp_path / "t.csv").write_text(HEADER + "0.0,5,0\n0.5,6,3\n")
    p = cli("from s3exec.cli import main; main()", "num_requests=2", "max_seq_len=16", "executor.kv_memory=1MiB",
            "workload=trace", "arrival=trace", f"workload.path={tmp_path / 't.csv'}", "executor.progress=false",
            f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "note: 1 request came from trace rows with a 0-token prompt or output, served as 1 token" in p.stdout
    assert pd.read_csv(tmp_path / "run" / "summary.csv").zero_length_rows.tolist() == [1]


@pytest.mark.parametrize("name", ["/path/to/config.json", "missing/config.json", "config.json"])
def test_a_model_path_that_names_nothing_says_so(name):
    """A value meant as a path (it names a .json or a folder) and absent reads 'no such file or folder', where it
    read 'unknown model' beside the presets (as if the path were a misspelt preset)."""
    from s3sim.hardware.models import get_model

    with pytest.raises(ConfigError, match=f"model '{name}': no such file or folder"):
        get_model(name)
    with pytest.raises(ConfigError, match="unknown model 'llama-9'"):
        get_model("llama-9")
