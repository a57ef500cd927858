"""Ranking quality of a length predictor: Kendall's tau-b between its score and the true output length
(perfect and reversed orders, ties, agreement with the pairwise definition and with scipy's tau-b), the score
a bucket classifier ranks by, and `s3predict evaluate` reporting it on the same rows as its accuracy."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from s3sim.core.predictors.buckets import Buckets
from s3sim.predictor.trained.evaluate import (CONSTANT, EXPECTED, MIDPOINT, PROMPT, expected_length,
                                              kendall_tau_b, ranking, ranking_score)


def pairwise_tau_b(x, y) -> float:
    """The definition, pair by pair: (concordant - discordant) / sqrt((n0 - x ties) (n0 - y ties))."""
    conc = disc = only_x = only_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            a, b = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if a == 0 and b == 0:
                continue
            if a == 0:
                only_x += 1
            elif b == 0:
                only_y += 1
            elif a == b:
                conc += 1
            else:
                disc += 1
    return (conc - disc) / math.sqrt((conc + disc + only_x) * (conc + disc + only_y))


def tied_data():
    """Deterministic, heavily tied on both sides (no random generator whose stream could change)."""
    x = [(i * 37 + (i * i) % 13) % 11 for i in range(300)]
    y = [((i * 7919) % 101) // 9 + (i % 5) for i in range(300)]
    return x, y


# ------------------------------------------------------------------------------------------ the statistic

def test_a_perfect_order_is_one_and_a_reversed_order_minus_one():
    true = np.array([3, 10, 57, 200, 201, 900, 1500])
    assert kendall_tau_b(true * 2 + 1, true) == pytest.approx(1.0)
    assert kendall_tau_b(-true, true) == pytest.approx(-1.0)
    assert kendall_tau_b(np.log(true), true) == pytest.approx(1.0)  # only the order counts
    # ties on both sides at the same places are still a perfect order (tau-b, not tau-a)
    assert kendall_tau_b([1, 1, 2, 3, 3], [5, 5, 7, 9, 9]) == pytest.approx(1.0)
    assert kendall_tau_b([3, 3, 2, 1, 1], [5, 5, 7, 9, 9]) == pytest.approx(-1.0)


def test_a_constant_score_or_too_few_rows_has_no_tau():
    assert math.isnan(kendall_tau_b([7, 7, 7, 7], [1, 2, 3, 4]))
    assert math.isnan(kendall_tau_b([1, 2, 3, 4], [5, 5, 5, 5]))
    assert math.isnan(kendall_tau_b([1], [2]))
    assert math.isnan(kendall_tau_b([], []))
    with pytest.raises(ValueError):
        kendall_tau_b([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        kendall_tau_b([1, float("nan")], [1, 2])


def test_tau_b_matches_the_pairwise_definition_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 70))
        x = rng.integers(0, int(rng.integers(1, 9)), n)
        y = rng.integers(0, int(rng.integers(1, 9)), n)
        got = kendall_tau_b(x, y)
        if len(set(x)) < 2 or len(set(y)) < 2:
            assert math.isnan(got)
        else:
            assert got == pytest.approx(pairwise_tau_b(x, y), abs=1e-12), (x, y)
    # float scores (a predictor's expected length) against integer lengths
    x, y = rng.normal(size=300), rng.integers(0, 40, 300)
    assert kendall_tau_b(x, y) == pytest.approx(pairwise_tau_b(x, y), abs=1e-12)


def test_tau_b_matches_scipys_value_on_tied_data():
    """scipy.stats.kendalltau(*tied_data()).statistic, computed with scipy 1.17.1 (tau-b, its default)."""
    assert kendall_tau_b(*tied_data()) == pytest.approx(-0.061342079215639375, abs=1e-12)


def test_tau_b_matches_scipy_on_random_data_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for n, kx, ky in ((50, 3, 4), (999, 10, 25), (5000, 6, 2048)):
        x = rng.integers(0, kx, n)
        y = rng.integers(0, ky, n) + x * (ky // kx)
        assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert kendall_tau_b(*tied_data()) == pytest.approx(stats.kendalltau(*tied_data()).statistic, abs=1e-12)


def test_large_inputs_take_n_log_n():
    rng = np.random.default_rng(2)
    x = rng.normal(size=100_000)
    y = np.round(x + rng.normal(size=100_000), 1)
    tau = kendall_tau_b(x, y)
    assert 0.4 < tau < 0.6


# ------------------------------------------------------------------------------------------ the score

def test_a_classifier_ranks_by_its_expected_length_else_by_its_buckets_midpoint():
    b = Buckets([100, 200, 400])  # midpoints 50, 150, 300
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.2, 0.8], [0.2, 0.3, 0.5]])
    score, what = ranking_score(b, probs=probs)
    assert what == EXPECTED
    np.testing.assert_allclose(score, [50, 100, 270, 205])
    np.testing.assert_allclose(expected_length(probs * 2, b), score)  # unnormalised rows are normalised
    score, what = ranking_score(b, pred_bucket=[2, 0, 1])
    assert what == MIDPOINT
    np.testing.assert_allclose(score, [300, 50, 150])
    with pytest.raises(ValueError):
        ranking_score(b)
    assert ranking([150, 150, 150], MIDPOINT, [1, 2, 3])["tau_score"] == CONSTANT
    assert math.isnan(ranking([150, 150, 150], MIDPOINT, [1, 2, 3])["kendall_tau"])
    assert ranking([1, 2, 3], PROMPT, [10, 30, 20]) == {"kendall_tau": pytest.approx(1 / 3), "tau_score": PROMPT}


# ------------------------------------------------------------------------------------------ s3predict evaluate

torch_missing = pytest.mark.skipif(__import__("importlib").util.find_spec("torch") is None, reason="needs torch")


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """Prompts the shipped predictor never saw, of varied length, with answers of varied length."""
    rng = np.random.default_rng(3)
    rows = [{"id": f"rk{i}", "prompt": f"rk question {i}: explain topic {rng.integers(10**6)}"
                                       + " in detail" * int(rng.integers(0, 20)),
             "response": "word " * int(rng.integers(1, 900))} for i in range(48)]
    path = tmp_path_factory.mktemp("rank") / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@torch_missing
def test_s3predict_evaluate_reports_kendall_tau_on_the_scored_rows(small_file, tmp_path, capsys):
    import torch

    from s3sim.predictor.trained import cli
    from s3sim.predictor.trained.data import labelled_rows
    from s3sim.predictor.trained.model import SHIPPED, LengthClassifier
    from s3sim.workload.tokenizer import count_tokens, load_tokenizer

    torch.set_num_threads(1)
    out = tmp_path / "ev"
    rc = cli.main(["evaluate", str(small_file), "--test-frac", "0.5", "--split-seed", "3", "--threads", "1",
                   "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Kendall's tau-b" in captured.out and "kendall_tau" in captured.out
    m = pd.read_csv(out / "metrics.csv")
    assert {"kendall_tau", "tau_score"} <= set(m.columns)

    # the same rows as the accuracy: the seeded half, scored again here by hand
    rows = labelled_rows(small_file, "smollm2", 3, 0.5)
    test = rows[rows["test"]]
    assert 0 < len(test) < len(rows) and (m["n"] == len(test)).all()
    model = LengthClassifier.load(SHIPPED)
    probs = model.probabilities(model.encode(test["prompt"]), 64)
    true = test["output_tokens"].to_numpy()
    prompt_tau = kendall_tau_b(count_tokens(load_tokenizer("smollm2"), test["prompt"]), true)
    for scheme, g in m.groupby("scheme"):
        g = g.set_index("predictor")
        b = model.buckets[scheme]
        assert g.loc["trained", "tau_score"] == EXPECTED
        assert g.loc["trained", "kendall_tau"] == pytest.approx(
            kendall_tau_b(expected_length(probs[scheme], b), true), abs=1e-9)
        assert g.loc["trained", "accuracy"] == pytest.approx(np.mean(probs[scheme].argmax(1) == b.of(true)))
        for constant in ("majority", "median"):  # one bucket for every row: no order
            assert g.loc[constant, "tau_score"] == CONSTANT and math.isnan(g.loc[constant, "kendall_tau"])
        assert g.loc["prompt length", "tau_score"] == PROMPT
        assert g.loc["prompt length", "kendall_tau"] == pytest.approx(prompt_tau, abs=1e-12)
        assert math.isnan(g.loc["prompt length", "accuracy"])  # no buckets: no bucket metrics

    # the predictor experiment's table keeps its columns (no ranking there)
    ev = cli.parser().parse_args(["evaluate", str(small_file), "--test-frac", "0.5", "--split-seed", "3"])
    plain, _ = cli.evaluate(ev, model, rows, rank=False)
    assert "kendall_tau" not in plain.columns and "prompt length" not in set(plain["predictor"])
    assert list(plain.columns) == [c for c in m.columns if c not in ("kendall_tau", "tau_score")]
