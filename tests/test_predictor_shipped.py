"""The shipped predictor (LoRA adapters and heads over the offline MiniLM encoder, committed in
s3sim/predictor/shipped): small, loads on a fresh clone, reproduces its committed predictions, predicts any
prompt file; LoRA training resumes exactly; damaged or missing files and prompt files without text are
one-line errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from s3sim.predictor.trained.model import SHIPPED, LengthClassifier  # noqa: E402


def s3predict(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", "from s3sim.predictor.trained.cli import main; import sys; "
                           "sys.exit(main())", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def assert_one_line(p, needle):
    assert p.returncode == 2, (p.returncode, p.stderr[-800:])
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert needle in lines[0], lines[0]


def test_shipped_predictor_is_small_and_complete():
    files = [f for f in SHIPPED.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 10 * 2**20
    names = {f.relative_to(SHIPPED).as_posix() for f in files}
    assert {"meta.json", "heads.safetensors", "adapter/adapter_model.safetensors",
            "adapter/adapter_config.json"} <= names
    assert "train_state.pt" not in names  # the optimizer state is not shipped
    meta = json.loads((SHIPPED / "meta.json").read_text())
    assert meta["lora"] > 0 and meta["base"] == "minilm" and "equal:10:2048" in meta["buckets"]


def test_shipped_predictor_reproduces_its_committed_predictions():
    """A few held-out ShareGPT rows, predicted now, equal the committed table written by the same model."""
    from s3sim.predictor.trained.predictor import table_path
    from s3sim.workload.lengths import DEFAULT_DATA_DIR
    from s3sim.workload.text import read_pairs

    table = pd.read_csv(table_path("sharegpt_pairs"), dtype={"key": str})
    side = json.loads(table_path("sharegpt_pairs").with_suffix("").with_suffix(".json").read_text())
    shipped = json.loads((SHIPPED / "meta.json").read_text())
    assert [side[k] for k in ("settings", "lora", "compressed")] == [shipped[k] for k in ("settings", "lora", "compressed")]
    pairs = {p.key: p.prompt for p in read_pairs(DEFAULT_DATA_DIR / "sharegpt/sharegpt_v3_firstturn_pairs.jsonl")}
    rows = table[table.split == "test"].head(6)
    model = LengthClassifier.load(SHIPPED)
    torch.set_num_threads(1)
    probs = model.probabilities(model.encode([pairs[k] for k in rows.key]))
    for scheme, p in probs.items():
        assert (p.argmax(1) == rows[f"{scheme}:bucket"].to_numpy()).all(), scheme
        committed = rows[[f"{scheme}:p{j}" for j in range(p.shape[1])]].to_numpy()
        np.testing.assert_allclose(p, committed, atol=2e-3)


def test_s3predict_predict_any_prompt_file_with_the_shipped_model(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Write a haiku about the sea.\n\nExplain, step by step and in depth, how a compiler "
                       "turns source code into machine code, with examples for each stage.\n")
    out = tmp_path / "pred.csv"
    p = s3predict("predict", prompts, "--out", out, "--threads", "1")
    assert p.returncode == 0, p.stderr
    df = pd.read_csv(out)
    assert list(df.key) == [1, 3] and len(df) == 2
    pcols = [c for c in df if c.startswith("p")]
    np.testing.assert_allclose(df[pcols].sum(axis=1), 1.0, atol=0.01)
    assert (df.reserve_tokens > 0).all()
    assert "2 prompts, buckets equal:10:2048" in p.stdout


@pytest.mark.parametrize("content, needle", [
    ('{"id": "a", "prompt": "hello"}\n{"id": "b", "prompt": "   "}\n', "line 2: the prompt is empty"),
    ('{"id": "a", "answer": "no prompt here"}\n', "line 1: no prompt text; found ['answer', 'id']"),
    ("", "is empty"),
])
def test_a_prompt_file_without_text_is_one_line(tmp_path, content, needle):
    f = tmp_path / "prompts.jsonl"
    f.write_text(content)
    assert_one_line(s3predict("predict", f), needle)


@pytest.mark.parametrize("damage, needle", [
    ("truncate_heads", "not a loadable trained predictor"),
    ("drop_adapter", "no adapter/adapter_model.safetensors (the LoRA adapter): not a complete trained predictor"),
    ("bad_meta", "not a trained predictor's metadata"),
    ("no_meta", "is not a trained predictor (no meta.json)"),
    ("misnamed_adapter_tensor", "did not load the adapter's base_model.model.pooler.dense_x.lora_A.weight"),
    ("drop_adapter_tensor", "the adapter's file has no base_model.model.pooler.dense.lora_A.default.weight"),
])
def test_a_missing_or_corrupt_predictor_file_is_one_line(tmp_path, damage, needle):
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    if damage == "truncate_heads":
        data = (folder / "heads.safetensors").read_bytes()
        (folder / "heads.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "drop_adapter":
        (folder / "adapter" / "adapter_model.safetensors").unlink()
    elif damage in ("misnamed_adapter_tensor", "drop_adapter_tensor"):  # peft warns at most, in one warning
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / "adapter" / "adapter_model.safetensors")
        key = "base_model.model.pooler.dense.lora_A.weight"
        moved = tensors.pop(key)
        if damage == "misnamed_adapter_tensor":  # a tensor with no place in the encoder (its own left at random)
            tensors[key.replace("dense.", "dense_x.")] = moved
        save_file(tensors, folder / "adapter" / "adapter_model.safetensors")
    elif damage == "bad_meta":
        (folder / "meta.json").write_text("{not json")
    else:
        (folder / "meta.json").unlink()
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    assert_one_line(s3predict("predict", prompts, "--model", folder), needle)


def test_lora_training_saves_adapters_only_and_resumes_exactly(tmp_path, monkeypatch):
    """A LoRA run over a tiny encoder saves a few adapter weights (not the encoder) and, stopped mid-epoch,
    resumes to the weights of an unbroken run."""
    from test_predictor_trained import make_tiny_encoder, synthetic_pairs, whole_and_resumed

    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(p) for p in synthetic_pairs(96)))
    enc = make_tiny_encoder(tmp_path / "enc")
    whole, resumed = whole_and_resumed(data, enc, tmp_path, monkeypatch, 3, "--lora", "4")
    assert (whole / "adapter" / "adapter_model.safetensors").is_file() and not (whole / "encoder").exists()
    a, b = LengthClassifier.load(whole), LengthClassifier.load(resumed)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and any("lora" in k for k in sa)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)


def test_the_simulator_runs_the_shipped_model_live_without_a_model_path(cfg):
    """`predictor=trained predictor.source=model` needs no `predictor.model`: the shipped predictor predicts each
    arriving request's bucket, the same bucket the committed table holds for that row."""
    from s3sim.cluster.build import build
    from s3sim.core.request import make_requests

    c = cfg("policy=s3", "predictor=trained", "predictor.source=model", "workload=sharegpt_pairs",
            "workload.split=test", "num_requests=6")
    setup = build(c)
    live = setup.scheduler.predictor
    reqs = make_requests(setup.prompt_len, setup.output_len, setup.arrivals)
    table = build(cfg("policy=s3", "predictor=trained", "workload=sharegpt_pairs", "workload.split=test",
                      "num_requests=6")).scheduler.predictor
    assert live.model is not None and table.model is None
    assert (live.predict(reqs) == table.predict(reqs)).all()


def test_a_predictor_folder_left_aside_by_an_interrupted_save_is_recovered(tmp_path):
    """A save that stopped between its two renames leaves only `<folder>.old`: loading puts it back."""
    from s3sim.predictor.trained.model import model_folder

    shutil.copytree(SHIPPED, tmp_path / "model.old")
    folder = model_folder(tmp_path / "model")
    assert folder.is_dir() and not (tmp_path / "model.old").exists()
    assert LengthClassifier.load(folder).lora == json.loads((SHIPPED / "meta.json").read_text())["lora"]
