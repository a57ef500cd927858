"""Text workloads and `predictor=trained` from a prediction table: no torch, no model, real predictions."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from s3sim.cluster.build import build
from s3sim.core.errors import ConfigError
from s3sim.core.policies.supervisor import Supervisor
from s3sim.core.predictors.buckets import Buckets
from s3sim.core.request import Request
from s3sim.predictor.trained.predictor import TABLES, TrainedPredictor
from s3sim.runner import run_config
from s3sim.workload.lengths import load_prompts, load_workload


def test_text_workloads_have_keys_and_disjoint_splits():
    full = load_workload("sharegpt_pairs")
    tr, te = load_workload("sharegpt_pairs", split="train"), load_workload("sharegpt_pairs", split="test")
    assert len(full) == 11135 == len(tr) + len(te) and 0.17 < len(te) / len(full) < 0.23
    assert not set(tr.keys) & set(te.keys) and len(set(full.keys)) == len(full)
    assert "SmolLM2 tokenizer" in full.source
    capped = load_workload("sharegpt_pairs", max_prompt=2048)
    assert capped.prompt_len.max() <= 2048 < full.prompt_len.max()
    ev = load_workload("alpaca_eval", generator="alpaca-7b")
    llama = load_workload("alpaca_eval", generator="Meta-Llama-3-8B-Instruct")
    assert len(ev) == 805 and list(ev.keys) == list(llama.keys)
    assert np.median(llama.output_len) > 2 * np.median(ev.output_len)  # the shift the retraining demo uses
    np.testing.assert_array_equal(ev.prompt_len, llama.prompt_len)  # same prompts
    rows = load_workload("alpaca_rows")
    assert len(rows) == 1334 and rows.keys[0] == "alpaca_data_first_rows:0"
    prompts = load_prompts("alpaca_rows", rows.keys[:2])
    assert all(isinstance(p, str) and p for p in prompts)


@pytest.mark.parametrize("kw, msg", [
    ({"name": "alpaca_eval", "generator": "gpt5"}, "workload.generator must be one of"),
    ({"name": "sharegpt_pairs", "generator": "gpt4"}, "only applies to alpaca_eval"),
    ({"name": "sharegpt_pairs", "split": "val"}, "workload.split must be one of all, train, test"),
    ({"name": "sharegpt_pairs", "max_prompt": 0}, "max_prompt"),
    ({"name": "alpaca_eval", "split_seed": 1.5}, "workload.split_seed must be a non-negative integer"),
    ({"name": "alpaca_eval", "split_seed": True}, "workload.split_seed must be a non-negative integer"),
    ({"name": "alpaca_eval", "test_frac": "abc"}, "workload.test_frac must be a number between 0 and 1"),
    ({"name": "alpaca_eval", "test_frac": float("nan")}, "workload.test_frac must be a number between 0 and 1"),
])
def test_text_workload_errors(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        load_workload(**kw)


@pytest.fixture
def table(tmp_path):
    """A hand-made table: keys a..d, a in the training split, buckets 0..3 of equal:4:100."""
    df = pd.DataFrame({"key": list("abcd"), "split": ["train", "test", "test", "test"],
                       "equal:4:100:bucket": [0, 1, 2, 3]})
    path = tmp_path / "t.csv.gz"
    df.to_csv(path, index=False)
    (tmp_path / "t.json").write_text(json.dumps({"buckets": {"equal:4:100": [25, 50, 75, 100]}}))
    return path


def test_table_predictor_looks_up_each_request_by_its_row(table):
    p = TrainedPredictor.from_table(table, "equal:4:100", ["d", "b", "c", "b"])
    reqs = [Request(i, 1, 1, 0.0) for i in range(4)]
    assert p.predict(reqs).tolist() == [3, 1, 2, 1]
    assert p.predict(reqs[2:3]).tolist() == [2] and p.buckets.upper.tolist() == [25, 50, 75, 100]


def test_table_predictor_refuses_training_rows_and_unknown_schemes(table, tmp_path):
    with pytest.raises(ConfigError, match="training split"):
        TrainedPredictor.from_table(table, "equal:4:100", ["a", "b"])
    assert TrainedPredictor.from_table(table, "equal:4:100", ["a"], allow_in_sample=True).predict(
        [Request(0, 1, 1, 0.0)]).tolist() == [0]
    with pytest.raises(ConfigError, match="has no predictions for buckets equal:10:2048"):
        TrainedPredictor.from_table(table, "equal:10:2048", ["b"])
    with pytest.raises(ConfigError, match="no prediction for row 'zz'"):
        TrainedPredictor.from_table(table, "equal:4:100", ["zz"])
    with pytest.raises(ConfigError, match="not found"):
        TrainedPredictor.from_table(tmp_path / "none.csv.gz", "equal:4:100", ["b"])


def test_supervisor_feedback_modes():
    class Counting(TrainedPredictor):
        def __init__(self):
            super().__init__(Buckets([10, 20]), "equal:2:20")

    for mode, expected in (("mispredicted", 1), ("all", 2)):
        p = Counting()
        sup = Supervisor(p, feedback=mode)
        right, wrong = Request(0, 1, 5, 0.0), Request(1, 1, 15, 0.0)
        right.first_bucket, wrong.first_bucket = 0, 0
        sup.on_finish(right)
        sup.on_finish(wrong)
        assert p.observed == expected and sup.mispredictions == 1
    with pytest.raises(ConfigError, match="predictor.feedback"):
        Supervisor(Counting(), feedback="some")


committed = pytest.mark.skipif(not (TABLES / "alpaca_eval-alpaca-7b.csv.gz").is_file(),
                               reason="prediction tables not built (make predictor)")


@committed
def test_trained_predictor_in_the_simulator(cfg):
    """`predictor=trained` runs S3 on held-out rows with the committed predictions, and its buckets are
    the model's, whatever this run's lengths."""
    c = cfg("policy=s3", "predictor=trained", "workload=alpaca_eval", "workload.generator=alpaca-7b",
            "workload.split=test", "num_requests=null")
    setup = build(c)
    p = setup.scheduler.predictor
    assert isinstance(p, TrainedPredictor) and p.buckets.upper.tolist() == Buckets.equal(10, 2048).upper.tolist()
    row = run_config(c)
    assert row["request_throughput"] > 0 and row["predictor"] == "trained"
    with pytest.raises(ConfigError, match="training split"):
        build(cfg("policy=s3", "predictor=trained", "workload=alpaca_eval", "workload.generator=alpaca-7b"))


def test_trained_predictor_needs_a_text_workload(cfg):
    with pytest.raises(ConfigError, match="needs a text workload"):
        build(cfg("policy=s3", "predictor=trained", "workload=alpaca", "num_requests=100"))


def _damage(table, tmp_path, csv=None, side=None):
    """The hand-made table with its CSV text and/or sidecar text replaced."""
    if csv is not None:
        if isinstance(csv, bytes):
            table.write_bytes(csv)
        else:
            import gzip
            with gzip.open(table, "wt") as f:
                f.write(csv)
    if side is not None:
        (tmp_path / "t.json").write_text(side)
    return table


HEAD = "key,split,equal:4:100:bucket"


@pytest.mark.parametrize("csv, side, needle", [
    (f"{HEAD}\nb,test,4\n", None, "bucket must be a whole number from 0 to 3"),
    (f"{HEAD}\nb,test,-1\n", None, "is -1; a bucket must be a whole number from 0 to 3"),  # not the last bucket
    (f"{HEAD}\nb,test,\n", None, "is nan; a bucket must be"),
    (f"{HEAD}\nb,test,1.5\n", None, "a bucket must be a whole number"),
    ("key,equal:4:100:bucket\nb,1\n", None, "no column 'split'"),
    ("key,split\nb,test\n", None, "no column 'equal:4:100:bucket'"),
    ("", None, "not a readable prediction table"),
    (b"not gzip at all", None, "not a readable prediction table"),
    (bytes(b ^ (0x5a if 200 <= i < 220 else 0) for i, b in enumerate(__import__("gzip").compress(
        (HEAD + "\n" + "".join(f"k{i},test,{i % 4}\n" for i in range(3000))).encode(), mtime=0))), None,
     "not a readable prediction table"),  # the stream damaged inside: a zlib.error
    (f"{HEAD}\nb,test,1\nb,test,2\n", None, "key 'b' is missing or repeated"),
    (f"{HEAD},equal:4:100:p0,equal:4:100:p1,equal:4:100:p2,equal:4:100:p3\nb,test,1,,0.5,0.5,0\n", None,
     "probabilities equal:4:100:p0..p3 of row 'b' are not finite numbers in [0, 1] summing to 1"),
    (f"{HEAD},equal:4:100:p0,equal:4:100:p1,equal:4:100:p2,equal:4:100:p3\nb,test,1,5,0.5,0.5,0\n", None,
     "probabilities equal:4:100:p0..p3 of row 'b' are not finite"),
    (None, '{"buckets": ', "t.json: not a prediction table's sidecar"),
    (None, '{"x": 1}', "t.json: not a prediction table's sidecar: expected an object whose 'buckets'"),
    (None, '[1, 2]', "t.json: not a prediction table's sidecar"),
])
def test_a_damaged_prediction_table_is_one_line_naming_the_file(table, tmp_path, csv, side, needle):
    """Every damage is refused before a prediction is made: none may index another bucket (-1 was read as the
    last) or carry NaN into the simulation."""
    _damage(table, tmp_path, csv, side)
    with pytest.raises(ConfigError) as e:
        TrainedPredictor.from_table(table, "equal:4:100", ["b"])
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and str(tmp_path) in msg, msg


def test_a_table_with_valid_probabilities_is_read_as_written(table, tmp_path):
    cols = ",".join(f"equal:4:100:p{j}" for j in range(4))
    _damage(table, tmp_path, f"{HEAD},{cols}\nb,test,2,0.1,0.2,0.6,0.1\n")
    p = TrainedPredictor.from_table(table, "equal:4:100", ["b"])
    reqs = [Request(0, 1, 1, 0.0)]
    assert p.predict(reqs).tolist() == [2]
    np.testing.assert_allclose(p.probabilities(reqs), [[0.1, 0.2, 0.6, 0.1]], rtol=1e-6)
