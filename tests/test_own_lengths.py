"""SmolLM2's own lengths: the generation command resumes after a stop, its table is a text workload whose
prompts the executor and the predictor find, and generated rows carry their own token counts."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from s3exec.lab import own_lengths
from s3sim.core.errors import ConfigError
from s3sim.workload.lengths import OWN_LENGTHS, load_prompts, load_workload
from s3sim.workload.own_cache import read_cache
from s3sim.workload.text import read_pairs


class Stop(Exception):
    pass


@pytest.fixture
def fake_model(monkeypatch):
    """The real tokenizer (prompts are chat-templated as served), a stand-in for generation: each answer is
    `prompt tokens % 9 + 1` tokens, and `stop_after` chunks end the run as a stop would."""
    from s3sim.workload.tokenizer import load_tokenizer

    tok = load_tokenizer("smollm2")
    loaded = SimpleNamespace(tokenizer=tok, eos_ids=(2,))
    calls = {"chunks": [], "stop_after": None}
    monkeypatch.setattr(own_lengths, "load_served_model", lambda a: loaded)

    def generate(chunk, loaded, a):
        if calls["stop_after"] is not None and len(calls["chunks"]) >= calls["stop_after"]:
            raise Stop
        calls["chunks"].append([key for key, *_ in chunk])
        rows = [{"id": key, "source": src, "prompt_hash": "0" * 16, "prompt_tokens": len(ids),
                 "output_tokens": min(a.cap, len(ids) % 9 + 1), "hit_cap": len(ids) % 9 + 1 >= a.cap,
                 "prompt": text, "response": "x"} for key, src, text, ids in chunk]
        return rows, 1.0, sum(r["output_tokens"] for r in rows)

    monkeypatch.setattr(own_lengths, "generate", generate)
    return calls


def _args(tmp_path, *extra):
    return own_lengths.parser().parse_args(["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "t.csv"),
                                            "--chunk", "3", "--cap", "6", *extra])


def test_generation_resumes_after_a_stop(tmp_path, fake_model):
    fake_model["stop_after"] = 2
    with pytest.raises(Stop):
        own_lengths.run(_args(tmp_path, "--rows", "8"))
    cache = tmp_path / "cache" / "rows.jsonl"
    first = cache.read_text()
    assert len(first.splitlines()) == 6 and not (tmp_path / "t.csv").exists()  # no table claims success
    fake_model["stop_after"] = None
    meta = own_lengths.run(_args(tmp_path, "--rows", "8"))
    assert [len(c) for c in fake_model["chunks"]] == [3, 3, 2]  # only the last chunk ran again
    assert cache.read_text().startswith(first)
    table = (tmp_path / "t.csv").read_text().splitlines()
    assert len(table) == 9 and table[0] == "source,key,prompt_hash,prompt_tokens,output_tokens,hit_cap"
    assert meta["rows"] == 8 and meta["generation_seconds"] == 3.0
    # a larger --rows extends the same seeded order; the training file carries every row's own count
    own_lengths.run(_args(tmp_path, "--rows", "10"))
    assert [len(c) for c in fake_model["chunks"]] == [3, 3, 2, 2]
    pairs = read_pairs(tmp_path / "cache" / f"{OWN_LENGTHS}.jsonl")
    keys = [json.loads(x)["id"] for x in cache.read_text().splitlines()]
    assert [p.key for p in pairs] == keys and all(p.output_tokens >= 1 for p in pairs)


def test_other_settings_in_the_cache_are_refused(tmp_path, fake_model):
    own_lengths.run(_args(tmp_path, "--rows", "2"))
    with pytest.raises(ConfigError, match="other .or unrecorded. settings"):
        own_lengths.run(own_lengths.parser().parse_args(
            ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "t.csv"), "--rows", "2", "--cap", "7"]))
    assert own_lengths.main(["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "t.csv"),
                             "--rows", "2", "--cap", "7"]) == 2


def test_a_torn_last_line_is_dropped_and_a_damaged_one_refused(tmp_path):
    path = tmp_path / "rows.jsonl"
    for torn in ('{"id": "c", "pro', '{"id": "c"}'):  # cut mid-row, or before its newline (an append would join)
        path.write_text('{"id": "a"}\n{"id": "b"}\n' + torn)
        assert [r["id"] for r in read_cache(path)] == ["a", "b"]
        assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    for bad in ("not json", '["a list"]', '{"no": "id"}'):
        path.write_text('{"id": "a"}\n' + bad + '\n{"id": "b"}\n')
        with pytest.raises(ConfigError, match="line 2: not a cached answer"):
            read_cache(path)


def test_rows_may_give_their_own_token_counts(tmp_path):
    from s3sim.predictor.trained.data import labelled_rows
    from s3sim.workload.tokenizer import load_tokenizer

    path = tmp_path / "pairs.jsonl"
    rows = [{"id": f"r{i}", "prompt": f"prompt number {i}", "response": "one two three", "output_tokens": 40 + i}
            for i in range(30)]
    rows[0].pop("output_tokens")  # a row without a count is counted by the tokenizer
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = labelled_rows(path, load_tokenizer("smollm2"))
    assert df["output_tokens"].tolist()[1:] == [40 + i for i in range(1, 30)]
    assert df["output_tokens"].iloc[0] < 10
    path.write_text(json.dumps({"id": "x", "prompt": "p", "response": "r", "output_tokens": 0}) + "\n")
    with pytest.raises(ConfigError, match="line 1: output_tokens must be a positive integer"):
        read_pairs(path)


def test_no_prompt_that_fits_is_one_error(tmp_path, fake_model, capsys):
    argv = ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "t.csv"), "--max-prompt", "5"]
    assert own_lengths.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no prompt fits --max-prompt 5" in err[0]
    assert not (tmp_path / "t.csv").exists()
def test_committed_table_is_a_text_workload_with_prompts():
    wl = load_workload(OWN_LENGTHS, split="test", max_output=512)
    assert len(wl) > 100 and wl.keys is not None
    assert wl.output_len.max() <= 512 and wl.clipped == 0  # the generation's cap is the table's
    texts = load_prompts(OWN_LENGTHS, list(wl.keys[:5]))
    assert all(isinstance(t, str) and t.strip() for t in texts)
    whole = load_workload(OWN_LENGTHS)
    assert len(whole) > len(wl) and set(wl.keys) <= set(whole.keys)
    assert {k.split(":", 1)[0] for k in whole.keys} == {"alpaca_rows", "alpaca_eval"}


def test_executor_serves_the_table_in_natural_mode_with_its_prompts():
    """The executor builds requests for the own-lengths workload: chat-templated prompts of the table's
    lengths (the tokenizer only; no generation)."""
    from s3exec.prompts import text_prompts
    from s3sim.workload.tokenizer import load_tokenizer

    wl = load_workload(OWN_LENGTHS, split="test", max_output=512)
    idx = np.arange(6)
    from s3sim.spec import WorkloadSpec

    prompts = text_prompts(WorkloadSpec(OWN_LENGTHS), wl, idx, load_tokenizer("smollm2"))
    assert [len(p) for p in prompts] == wl.prompt_len[idx].tolist()


def test_a_replay_that_cuts_what_the_executor_served_is_refused():
    """The simulator's model must hold the executor's requests: tiny-llama's 512-token context cannot."""
    from s3exec.lab import natural
    from s3exec.lab.fidelity import replay_setup, sim_config

    a = natural.parser().parse_args(["--requests", "64"])
    root = Path(__file__).resolve().parents[1]
    cfg = sim_config(natural.exec_config("orca", a, 6144), 6144, str(root / "results/natural/smollm2-cpu-2t.csv"))
    assert replay_setup(cfg).context_clipped == 0  # SmolLM2's own shape, as the comparison names it
    cfg["model"] = {"name": "tiny-llama"}  # with a profile of it: a profile of another model is refused first
    cfg["latency"]["path"] = str(root / "results/profiles/tiny-llama-cpu.csv")
    with pytest.raises(ConfigError, match="cut .* outputs the executor served whole"):
        replay_setup(cfg)


def test_a_cached_natural_run_is_keyed_by_the_code_that_scheduled_it():
    """A changed scheduler or executor runs again rather than answering from a cache of the earlier code."""
    from s3exec.lab import natural

    names = {p.relative_to(p.parents[1]).as_posix() if p.parent.name != "policies" else "policies/" + p.name
             for p in natural.run_code()}
    assert {"policies/vllm.py", "policies/paged.py", "core/prefix_cache.py", "s3exec/engine.py",
            "s3exec/model_runner.py"} <= names


def test_a_trial_run_cannot_rewrite_the_committed_table(capsys):
    """Without --out the table goes to the committed smollm2_greedy.csv: settings other than those its sidecar
    records (a trial's --rows 4 --cap 32) are refused before any work, the settings it was made with pass."""
    from s3exec.lab.own_lengths import check_out, main, parser

    assert main(["--rows", "4", "--cap", "32"]) == 2
    err = capsys.readouterr().err
    assert "--rows 4, --cap 32 would rewrite the committed table" in err and "give --out for another table" in err
    check_out(parser().parse_args(["--rows", "2138"]))  # make own-lengths
    check_out(parser().parse_args([]))  # every prompt that fits, as it was made
    check_out(parser().parse_args(["--rows", "4", "--out", "/tmp/elsewhere.csv"]))


@pytest.mark.parametrize("sidecar", ['{"cap": 512, ', "[1, 2]"])
def test_a_committed_table_whose_sidecar_cannot_be_read_is_not_rewritten_blind(tmp_path, monkeypatch, sidecar):
    """What the table was made with is unknown: one line (a damaged sidecar was a traceback, a list let any
    settings through); a larger --rows extends the same order and passes where the sidecar is readable."""
    from s3exec.lab import own_lengths
    from s3sim.core.errors import ConfigError

    table = tmp_path / "t.csv"
    table.write_text("key\n")
    table.with_suffix(".json").write_text(sidecar)
    monkeypatch.setattr(own_lengths, "TABLE", table)
    with pytest.raises(ConfigError, match="cannot be read .* restore it \\(git checkout\\), or give --out"):
        own_lengths.check_out(own_lengths.parser().parse_args(["--out", str(table)]))
    table.with_suffix(".json").write_text('{"rows": 100, "cap": 512, "max_prompt": 512, "seed": 0}')
    own_lengths.check_out(own_lengths.parser().parse_args(["--out", str(table), "--rows", "300"]))
    with pytest.raises(ConfigError, match="--rows 50 would rewrite"):
        own_lengths.check_out(own_lengths.parser().parse_args(["--out", str(table), "--rows", "50"]))
