"""The trained predictor: text data, splits, schemes, metrics, a real (tiny) fine-tuning run, checkpoint
resume, online retraining, the committed tables, and one-line errors for bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from s3sim.core.errors import ConfigError
from s3sim.core.predictors.buckets import Buckets
from s3sim.core.request import Request
from s3sim.predictor.split import select, holdout_mask
from s3sim.predictor.trained.evaluate import baselines, compare, confusion, metrics
from s3sim.predictor.trained.schemes import Scheme
from s3sim.workload.text import prompt_hash, read_pairs

torch = pytest.importorskip("torch")


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))


def make_tiny_encoder(folder) -> str:
    """A 2-layer BERT with all-MiniLM's tokenizer, random-initialised: trains in seconds on a CPU."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from s3sim.predictor.trained.model import base_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base_path("minilm"), local_files_only=True)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def synthetic_pairs(n=240, seed=0):
    """A learnable task: 'briefly' prompts get short answers, 'essay' prompts long ones."""
    rng = np.random.default_rng(seed)
    topics = ["rivers", "stars", "bread", "chess", "trains", "music", "glass", "tides", "bees", "maps"]
    rows = []
    for i in range(n):
        topic = f"{topics[i % len(topics)]} {i}"
        if rng.random() < 0.5:
            rows.append({"id": f"r{i}", "prompt": f"answer briefly: what are {topic}?", "response": "ok " * 5})
        else:
            rows.append({"id": f"r{i}", "prompt": f"write a long detailed essay on {topic}", "response": "word " * 1500})
    return rows


@pytest.fixture(scope="module")
def synthetic_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "synthetic.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in synthetic_pairs()) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from s3sim.workload.tokenizer import load_tokenizer

    return load_tokenizer("smollm2")


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ text + tokens

def test_token_counts_use_the_real_tokenizer(tokenizer):
    from s3sim.workload.tokenizer import count_tokens

    texts = ["Hello world, how are you?", "", "antidisestablishmentarianism " * 3]
    counts = count_tokens(tokenizer, texts)
    assert counts == [len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    assert counts[1] == 0 and counts[0] < len(texts[0].split()) * 3
    assert counts[2] > 3  # a long rare word is several tokens, not one


def test_committed_token_table_matches_a_fresh_count(tokenizer):
    """The committed ShareGPT table is what the tokenizer says today (first rows re-counted)."""
    import pandas as pd

    from s3sim.workload.lengths import DEFAULT_DATA_DIR, TABLES
    from s3sim.workload.tokenizer import count_tokens

    table = pd.read_csv(TABLES / "sharegpt_pairs.csv", dtype={"key": str}, nrows=20)
    pairs = read_pairs(DEFAULT_DATA_DIR / "sharegpt/sharegpt_v3_firstturn_pairs.jsonl")[:20]
    assert table["key"].tolist() == [p.key for p in pairs]
    assert table["prompt_tokens"].tolist() == count_tokens(tokenizer, [p.prompt for p in pairs])
    assert table["output_tokens"].tolist() == count_tokens(tokenizer, [p.response for p in pairs])
    assert table["prompt_hash"].tolist() == [f"{prompt_hash(p.prompt):016x}" for p in pairs]


def test_read_pairs_recognises_each_format(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps([{"instruction": "Add", "input": "1+1", "output": "2"},
                             {"instruction": "Hi", "output": "Hello", "generator": "m"}]))
    assert [(p.prompt, p.response) for p in read_pairs(f)] == [("Add\n1+1", "2"), ("Hi", "Hello")]
    g = tmp_path / "b.jsonl"
    g.write_text(json.dumps({"id": "x", "conversations": [{"from": "human", "value": "Q"},
                                                          {"from": "gpt", "value": "A"}]}) + "\n"
                 + json.dumps({"id": "y", "prompt": "P\u2028Q", "response": "R"}) + "\n")
    assert [(p.key, p.prompt, p.response) for p in read_pairs(g)] == [("x", "Q", "A"), ("y", "P\u2028Q", "R")]


@pytest.mark.parametrize("content, message", [
    ('[{"question": "q", "answer": "a"}]', "no prompt/response fields"),
    ("", "is empty"),
    ("   \n", "is empty"),
    ('{"prompt": "p", "response": "r"}\n{"prompt": "p", "resp', "line 2: not valid JSON"),
    # a field that is not text was scored as the text "None" or "['a']": refused, naming the line and field
    ('{"prompt": "p", "response": "r"}\n{"prompt": null, "response": null}', "line 2: prompt must be text"),
    ('{"prompt": ["a"], "response": "r"}', r"line 1: prompt must be text \(a JSON string\), got \[\"a\"\]"),
    ('{"prompt": "p", "response": 5}', "line 1: response must be text"),
    ('{"instruction": null, "output": "o"}', "line 1: instruction must be text"),
    ('{"instruction": "i", "input": 3, "output": "o"}', "line 1: input must be text"),
    ('{"instruction": "i", "output": {"x": 1}}', "line 1: output must be text"),
    ('{"conversations": [{"from": "human", "value": 7}, {"from": "gpt", "value": "r"}]}',
     "line 1: the first human turn's value must be text"),
    ('{"conversations": [{"from": "human", "value": "p"}, {"from": "gpt", "value": 5}]}',
     "line 1: the first reply's value must be text"),
])
def test_bad_data_files_give_one_line_errors(tmp_path, content, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(ConfigError, match=message) as e:
        read_pairs(f)
    assert "\n" not in str(e.value)
    if "fields" in message:
        assert "'prompt' and 'response'" in str(e.value)


def test_missing_data_file():
    with pytest.raises(ConfigError, match="not found"):
        read_pairs("/nonexistent/data.jsonl")


# ------------------------------------------------------------------------------------------ split + schemes

def test_split_is_by_prompt_seeded_and_about_the_asked_share():
    hs = [prompt_hash(f"prompt {i}") for i in range(5000)]
    m = holdout_mask(hs, seed=0, test_frac=0.2)
    assert 0.18 < m.mean() < 0.22
    np.testing.assert_array_equal(m, holdout_mask(hs, seed=0, test_frac=0.2))
    assert not np.array_equal(m, holdout_mask(hs, seed=1, test_frac=0.2))
    assert holdout_mask([prompt_hash("same")] * 3, 5).tolist() in ([True] * 3, [False] * 3)
    assert prompt_hash(" same ") == prompt_hash("same")
    tr, te = select(m, "train"), select(m, "test")
    assert not (tr & te).any() and (tr | te).all() and select(m, "all").all()
    with pytest.raises(ConfigError, match="test_frac"):
        holdout_mask(hs, test_frac=1.0)
    with pytest.raises(ConfigError, match="workload.split"):
        select(m, "val")


def test_scheme_parsing_and_bucket_edges():
    s = Scheme.parse("equal:10:2048")
    b = s.buckets([])
    assert s.name == "equal:10:2048" and b.num == 10 and b.max_len == 2048
    # length 0 -> first bucket; exactly on an edge -> that bucket (upper bound inclusive); beyond max -> last
    assert b.of(0) == 0 and b.of(205) == 0 and b.of(206) == 1 and b.of(2048) == 9 and b.of(10**6) == 9
    q = Scheme.parse("quantile:4:1000").buckets(np.arange(1, 101))
    assert q.num == 4 and q.max_len == 1000 and q.of(0) == 0
    for bad, msg in [("equal:1:2048", "at least 2"), ("equal:x:2048", "must look like"),
                     ("cubic:10:2048", "kind"), ("equal:10:5", "at least the bucket count")]:
        with pytest.raises(ConfigError, match=msg):
            Scheme.parse(bad)


def test_metrics_against_hand_counts():
    b = Buckets([10, 20, 30])
    true = np.array([5, 15, 25, 25, 35])  # buckets 0, 1, 2, 2, 2 (35 is beyond max: last bucket)
    pred = np.array([0, 0, 2, 1, 2])
    m = metrics(pred, true, b)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["within_one"] == pytest.approx(1.0)
    assert m["under_rate"] == pytest.approx(2 / 5) and m["over_rate"] == 0
    # midpoints 5, 5, 25, 15, 25 vs true 5, 15, 25, 25, 30 (clipped at max)
    assert m["mae_tokens"] == pytest.approx((0 + 10 + 0 + 10 + 5) / 5)
    assert baselines([1, 2, 15, 25, 26, 27], b) == {"majority": 2, "median": 1}
    c = confusion(pred, true, b)
    assert c.to_numpy().sum() == 5 and c.iloc[2, 1] == 1 and c.iloc[1, 0] == 1
    table = compare(np.eye(3)[pred], true, [1, 2, 3], b)
    assert table.predictor.tolist() == ["trained", "majority", "median"]


# ------------------------------------------------------------------------------------------ training

def _train_args(data, encoder, tmp_path, *extra, epochs=4):
    from s3sim.predictor.trained import cli

    return cli.parser().parse_args(
        ["train", str(data), "--base", encoder, "--cache-dir", str(tmp_path), "--name", "run", "--epochs", str(epochs),
         "--batch-size", "16", "--lr", "2e-3", "--head-lr", "5e-3", "--threads", "1", "--no-progress",
         "--scheme", "equal:10:2048", "--scheme", "quantile:4:2048", *extra])


def test_training_loss_falls_and_beats_chance(synthetic_file, tiny_encoder, tmp_path):
    from s3sim.predictor.trained import cli

    folder = cli.train(_train_args(synthetic_file, tiny_encoder, tmp_path))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["done"] and meta["step"] == meta["total_steps"]
    losses = meta["losses"]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    ev = cli.parser().parse_args(["evaluate", str(synthetic_file), "--model", str(folder), "--threads", "1"])
    res, conf = cli.evaluate(ev)
    eq = res[res.scheme == "equal:10:2048"].set_index("predictor")
    assert eq.loc["trained", "accuracy"] >= 0.9 > eq.loc["majority", "accuracy"] + 0.2
    assert eq.loc["trained", "mae_tokens"] < 0.5 * eq.loc["median", "mae_tokens"]
    assert set(conf) == {"equal:10:2048", "quantile:4:2048"}
    # a finished run is not trained again
    assert cli.train(_train_args(synthetic_file, tiny_encoder, tmp_path)) == folder


def test_a_diverging_run_is_refused_and_never_saved_as_done(synthetic_file, tiny_encoder, tmp_path):
    """A head learning rate of 1e30 took the loss to NaN and the run was still saved with done: true, so every
    command then loaded a predictor of NaN probabilities. Now training stops at the first non-finite loss."""
    from s3sim.predictor.trained import cli

    a = _train_args(synthetic_file, tiny_encoder, tmp_path, epochs=1)
    a.head_lr = 1e30  # past what --head-lr accepts: the training loop's own guard is what is tested here
    with pytest.raises(ConfigError, match=r"training diverged \(loss nan at step \d+ is not finite\)") as e:
        cli.train(a)
    assert "--head-lr 1e+30" in str(e.value) and "\n" not in str(e.value)
    meta = tmp_path / "run" / "meta.json"
    assert not meta.is_file() or not json.loads(meta.read_text()).get("done")


def whole_and_resumed(data, encoder, tmp_path, monkeypatch, at: int, *extra):
    """Train one epoch unbroken (in tmp_path/a), and again stopped right after the checkpoint at step `at` and
    resumed (in tmp_path/b); returns both run folders."""
    from s3sim.predictor.trained import cli
    from s3sim.predictor.trained.train import Trainer

    args = lambda sub: _train_args(data, encoder, tmp_path / sub, "--save-every", str(at), *extra, epochs=1)
    whole = cli.train(args("a"))
    real_save = Trainer.save

    def crash_after_checkpoint(self):
        real_save(self)
        if self.step == at:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save", crash_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        cli.train(args("b"))
    monkeypatch.setattr(Trainer, "save", real_save)
    assert json.loads((tmp_path / "b" / "run" / "meta.json").read_text())["step"] == at
    return whole, cli.train(args("b"))


def test_checkpoint_resume_continues_exactly(synthetic_file, tiny_encoder, tmp_path, monkeypatch):
    """A run stopped mid-epoch resumes from its checkpoint and ends with the weights of an unbroken run."""
    from s3sim.predictor.trained import cli
    from s3sim.predictor.trained.model import LengthClassifier

    whole, resumed = whole_and_resumed(synthetic_file, tiny_encoder, tmp_path, monkeypatch, 5)
    a, b = LengthClassifier.load(whole), LengthClassifier.load(resumed)
    for (n, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(pa, pb, msg=n)
    # other settings under the same name are refused, not silently mixed
    with pytest.raises(ConfigError, match="other settings"):
        cli.train(_train_args(synthetic_file, tiny_encoder, tmp_path / "b", "--save-every", "7", epochs=1))


def test_online_retraining_moves_predictions_toward_observed_lengths(synthetic_file, tiny_encoder, tmp_path):
    """Serve prompts whose answers suddenly got long: after retraining on that feedback, the model puts
    more probability on the long bucket for held-out prompts of the same kind."""
    from s3sim.predictor.trained import cli
    from s3sim.predictor.trained.predictor import RetrainConfig, TrainedPredictor

    folder = cli.train(_train_args(synthetic_file, tiny_encoder, tmp_path))
    served = [f"answer briefly: what are {t}?" for t in ("owls", "kites", "ferns", "moths", "reeds", "figs")]
    held_out = ["answer briefly: what are clouds?", "answer briefly: what are lamps?"]
    rc = RetrainConfig(every=6, steps=10, batch_size=8, replay=0.0, lr=2e-3, head_lr=5e-3)
    p = TrainedPredictor.from_model(folder, "equal:10:2048", served + held_out, rc)
    reqs = [Request(i, 5, 1500, 0.0) for i in range(len(served) + 2)]
    before = p.probabilities(reqs[-2:])[:, 7].mean()
    assert (p.predict(reqs[-2:]) == 0).all()
    for _ in range(3):
        for r in reqs[:-2]:
            p.observe(r, 1500)
    assert p.retrain_rounds == 3 and p.observed == 18
    after = p.probabilities(reqs[-2:])[:, 7].mean()
    assert after > before + 0.3


def test_online_retraining_repeats_exactly_whatever_drew_from_torch_before(synthetic_file, tiny_encoder, tmp_path):
    """Dropout in a fine-tuning round draws from the round's own seed, not from torch's global generator (whose
    state depends on whatever ran before in the process): the same feedback gives the same model, and the
    global generator is left as it was."""
    from s3sim.predictor.trained import cli
    from s3sim.predictor.trained.predictor import RetrainConfig, TrainedPredictor

    folder = cli.train(_train_args(synthetic_file, tiny_encoder, tmp_path))
    prompts = [f"answer briefly: what are {t}?" for t in ("owls", "kites", "ferns", "moths")]
    rc = RetrainConfig(every=4, steps=3, batch_size=4, replay=0.0, lr=2e-3, head_lr=5e-3)

    def served(draws: int):
        p = TrainedPredictor.from_model(folder, "equal:10:2048", prompts, rc)
        torch.rand(draws)  # something else in the process used the global generator
        state = torch.get_rng_state()
        for _ in range(2):
            for i in range(len(prompts)):
                p.observe(Request(i, 5, 1500, 0.0), 1500)
        assert p.retrain_rounds == 2 and torch.equal(torch.get_rng_state(), state)
        return p.model.state_dict()

    a, b = served(1), served(7)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=0, msg=n)


# ------------------------------------------------------------------------------------------ CLI errors

def test_s3predict_one_line_errors(tmp_path, capsys, synthetic_file):
    from s3sim.predictor.trained.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text('[{"text": "no fields"}]')
    cases = [
        (["train", str(bad), "--cache-dir", str(tmp_path)], "expected 'prompt' and 'response'"),
        (["evaluate", str(synthetic_file), "--model", str(tmp_path / "nope")], "not found"),
        (["train", str(synthetic_file), "--scheme", "equal:1:100", "--cache-dir", str(tmp_path)], "at least 2"),
        (["train", str(synthetic_file), "--base", str(tmp_path / "missing"), "--cache-dir", str(tmp_path)],
         "neither 'minilm' nor a local model folder"),
    ]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases.append((["train", str(empty), "--cache-dir", str(tmp_path)], "is empty"))
    for argv, msg in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("s3predict: error:") and msg in err and "\n" not in err, (argv, err)


def test_median_decision_rule():
    from s3sim.predictor.trained.evaluate import median_bucket

    p = np.array([[0.6, 0.3, 0.1], [0.4, 0.0, 0.6], [0.3, 0.3, 0.4], [0.1, 0.2, 0.7]])
    assert median_bucket(p).tolist() == [0, 2, 1, 2]  # argmax would say 0, 2, 2, 2


def test_a_whole_encoder_run_compressed_to_lora_adapters(synthetic_file, tiny_encoder, tmp_path):
    """At full rank (the tiny encoder's 32) the adapters reproduce every linear layer's change exactly, and
    with the biases and LayerNorms copied the compressed run predicts as the whole run does with the base
    embeddings (the one part left out); a lower rank writes smaller adapters. It loads as any LoRA run."""
    from transformers import AutoModel

    from s3sim.predictor.trained import cli
    from s3sim.predictor.trained.compress import compress
    from s3sim.predictor.trained.model import LengthClassifier

    folder = cli.train(_train_args(synthetic_file, tiny_encoder, tmp_path / "run", epochs=1))
    whole = LengthClassifier.load(folder)
    base = AutoModel.from_pretrained(tiny_encoder, local_files_only=True).state_dict()
    with torch.no_grad():
        for k, v in whole.encoder.state_dict().items():
            if k.startswith("embeddings.") and "LayerNorm" not in k:
                v.copy_(base[k])
    ids = whole.encode([r["prompt"] for r in synthetic_pairs(40, seed=1)])
    full = LengthClassifier.load(compress(folder, 32, tmp_path / "full"))
    assert full.lora == 32 and full.meta["compressed"]["rank"] == 32 and full.meta["done"]
    p, q = whole.probabilities(ids), full.probabilities(ids)
    for n in p:
        np.testing.assert_allclose(q[n], p[n], atol=1e-5)
    low = compress(folder, 2, tmp_path / "low")
    size = lambda f: sum(x.stat().st_size for x in (f / "adapter").iterdir())  # noqa: E731
    assert size(low) < size(tmp_path / "full") / 4
    with pytest.raises(ConfigError, match="LoRA run already"):
        compress(low, 2, tmp_path / "again")
    with pytest.raises(ConfigError, match="exceeds"):
        compress(folder, 33, tmp_path / "too_high")
