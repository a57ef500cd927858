"""Request logs in the BurstGPT, Mooncake and named-column formats replay like the Azure trace."""
import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s3sim.cli import CONF_DIR
from s3sim.config import run_notes
from s3sim.core.errors import ConfigError
from s3sim.runner import run_config
from s3sim.workload.lengths import load_trace


def burstgpt(tmp_path):
    path = tmp_path / "burst.csv"
    path.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                    "5.5,ChatGPT,120,30,150,Conversation log\n"
                    "2.0,GPT-4,40,0,40,Conversation log\n"
                    "9.0,ChatGPT,300,80,380,API log\n")
    return path


def mooncake(tmp_path):
    path = tmp_path / "mooncake.jsonl"
    rows = [{"timestamp": 0, "input_length": 6000, "output_length": 12, "hash_ids": [0, 1, 2]},
            {"timestamp": 1500, "input_length": 900, "output_length": 40, "hash_ids": [0, 7]},
            {"timestamp": 2500, "input_length": 50, "output_length": 3, "hash_ids": []}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_burstgpt_rows_in_time_order_with_seconds(tmp_path):
    wl = load_trace(burstgpt(tmp_path), format="burstgpt")
    assert wl.timestamps.tolist() == [0.0, 3.5, 7.0]
    assert wl.prompt_len.tolist() == [40, 120, 300] and wl.output_len.tolist() == [1, 30, 80]  # 0 -> 1
    assert wl.raised_rows.tolist() == [True, False, False]  # counted, in the trace's time order


def test_a_row_with_zero_tokens_is_served_as_one_and_said(tmp_path):
    """BurstGPT logs a failed request with 0 response tokens: it is served as 1 token (vLLM generates one
    before it can stop), and the run counts and says it; an Azure-format trace the same."""
    azure = tmp_path / "azure.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0.0,10,5\n1.0,12,0\n2.0,0,3\n")
    for overrides in ([f"workload.path={burstgpt(tmp_path)}", "workload.format=burstgpt"],
                      [f"workload.path={azure}"]):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = OmegaConf.to_container(compose("config", overrides=["workload=trace", "arrival=trace",
                                                                      "max_seq_len=64", *overrides]), resolve=True)
        row = run_config(cfg)
        zeros = 1 if "burstgpt" in overrides[-1] else 2
        assert row["zero_length_rows"] == zeros
        said = "1 request" if zeros == 1 else f"{zeros} requests"
        assert any(n.startswith(f"note: {said} came from trace rows with a 0-token prompt or output, "
                                "served as 1 token")
                   for n in run_notes(row))
    row = run_config(cfg | {"num_requests": 1})  # the trace's first row alone has no zero
    assert "zero_length_rows" not in row


def test_mooncake_milliseconds_and_block_hashes_are_counted(tmp_path):
    wl = load_trace(mooncake(tmp_path), format="mooncake", time_scale=2.0)
    assert wl.timestamps.tolist() == [0.0, 3.0, 5.0]
    assert wl.prompt_len.tolist() == [6000, 900, 50] and wl.prefix_blocks == 2


def test_named_columns_of_any_log(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("when_ms,in,out,user\n1000,10,5,a\n1250,20,7,b\n")
    wl = load_trace(path, format="columns", columns={"timestamp": "when_ms", "prompt": "in", "output": "out"},
                    time_unit="ms")
    assert wl.timestamps.tolist() == [0.0, 0.25] and wl.output_len.tolist() == [5, 7]
    with pytest.raises(ConfigError, match="workload.format=columns needs workload.columns.output"):
        load_trace(path, format="columns", columns={"timestamp": "when_ms", "prompt": "in"})
    with pytest.raises(ConfigError, match=r"mine.csv line 2: no field 'output'"):
        load_trace(path, format="columns", columns={"timestamp": "when_ms", "prompt": "in", "output": "output"})
    with pytest.raises(ConfigError, match="workload.format 'csv' is unknown; valid: azure, burstgpt, mooncake, columns"):
        load_trace(path, format="csv")
    path.write_text("when_ms,in,out\n1000,ten,5\n")
    with pytest.raises(ConfigError, match=r"mine.csv line 2: in 'ten' is not a non-negative integer"):
        load_trace(path, format="columns", columns={"timestamp": "when_ms", "prompt": "in", "output": "out"})


@pytest.mark.parametrize("caching", [False, True])
def test_a_mooncake_replay_shares_its_hashed_blocks_only_under_a_prefix_cache(tmp_path, caching):
    """Rows 0 and 1 share their first 512-token block (hash 0): with vLLM's prefix cache, row 1 finds it
    (row 0 finished before it arrived and nothing has reused its blocks since); without it, a note says no
    KV is shared."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=[
            "workload=trace", f"workload.path={mooncake(tmp_path)}", "workload.format=mooncake", "arrival=trace",
            "model=llama-3.1-8b", "max_seq_len=64", "policy=vllm", f"policy.prefix_caching={caching}"]),
            resolve=True)
    row = run_config(cfg)
    assert row["num_requests"] == 3 and row["prefix_blocks"] == 2
    assert row["prefix_cached_tokens"] == (512 if caching else 0)
    said = "prefix cache reuses their KV blocks" if caching else "no KV is shared between requests"
    assert any("prefix block hashes (hash_ids)" in n and said in n for n in run_notes(row))


def test_a_log_that_is_one_json_array_reads_like_its_jsonl(tmp_path):
    lines = mooncake(tmp_path)
    array = tmp_path / "mooncake.json"
    array.write_text(json.dumps([json.loads(line) for line in lines.read_text().splitlines()], indent=1))
    a, b = (load_trace(p, format="mooncake") for p in (lines, array))
    assert a.prompt_len.tolist() == b.prompt_len.tolist() and a.timestamps.tolist() == b.timestamps.tolist()
    array.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"mooncake.json item 1: expected a JSON object per request, got int"):
        load_trace(array, format="mooncake")
    array.write_text("[{\"timestamp\": 0,")
    with pytest.raises(ConfigError, match="a JSON array that does not parse"):
        load_trace(array, format="mooncake")
