"""How good is a length predictor? Always measured beside two baselines that need no model:
`majority` (the most common training bucket) and `median` (the bucket of the training median length).

The model's bucket is its most probable one; `median_bucket` is the alternative rule that aims at the
absolute error instead. Metrics per scheme: accuracy, within-one-bucket accuracy, mean absolute error in tokens (a prediction
stands for its bucket's midpoint), under-prediction rate (predicted bucket below the true one: the costly
error for S3, it causes preemption), over-prediction rate, and the confusion matrix (rows true, columns
predicted). Pure numpy: the model's probabilities come in as arrays.

Ranking (a scheduler that serves the shortest predicted request first needs the order, not the bucket):
Kendall's tau-b between a predictor's score and the true output length (`kendall_tau_b`, ties counted,
O(n log n)). A bucket classifier's score is its expected length under the predicted distribution
(probabilities x bucket midpoints) when it has probabilities, else its bucket's midpoint (`ranking_score`);
a constant score has no order, so its tau is undefined (NaN).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from s3sim.core.predictors.buckets import Buckets


def metrics(pred_bucket, true_len, buckets: Buckets) -> dict:
    pred = np.asarray(pred_bucket, dtype=np.int64)
    true_len = np.asarray(true_len, dtype=np.int64)
    true = buckets.of(true_len)
    return {
        "n": len(true),
        "accuracy": float(np.mean(pred == true)),
        "within_one": float(np.mean(np.abs(pred - true) <= 1)),
        "mae_tokens": float(np.mean(np.abs(buckets.midpoint(pred) - np.minimum(true_len, buckets.max_len)))),
        "under_rate": float(np.mean(pred < true)),
        "over_rate": float(np.mean(pred > true)),
    }


def median_bucket(probs) -> np.ndarray:
    """The bucket at the median of each predicted distribution: another decision rule over the same
    probabilities, which trades some accuracy (the argmax's goal) for a lower absolute error."""
    return (np.cumsum(np.asarray(probs), axis=1) < 0.5).sum(axis=1)


def baselines(train_len, buckets: Buckets) -> dict[str, int]:
    train_b = buckets.of(np.asarray(train_len))
    return {"majority": int(np.bincount(train_b, minlength=buckets.num).argmax()),
            "median": int(buckets.of(int(np.median(train_len))))}


def compare(probs: np.ndarray, true_len, train_len, buckets: Buckets) -> pd.DataFrame:
    """One row per predictor (trained, majority, median) on the same test rows."""
    rows = [{"predictor": "trained", **metrics(probs.argmax(1), true_len, buckets)}]
    for name, b in baselines(train_len, buckets).items():
        rows.append({"predictor": name, **metrics(np.full(len(true_len), b), true_len, buckets)})
    return pd.DataFrame(rows)


def confusion(pred_bucket, true_len, buckets: Buckets) -> pd.DataFrame:
    true = buckets.of(np.asarray(true_len))
    m = np.zeros((buckets.num, buckets.num), dtype=np.int64)
    np.add.at(m, (true, np.asarray(pred_bucket)), 1)
    labels = [f"<={u}" for u in buckets.upper]
    return pd.DataFrame(m, index=pd.Index(labels, name="true"), columns=pd.Index(labels, name="predicted"))


# what `ranking_score` ranked by (the `tau_score` column)
EXPECTED = "expected length (p x midpoints)"
MIDPOINT = "bucket midpoint"
CONSTANT = "constant: undefined"
PROMPT = "prompt tokens"


def kendall_tau_b(x, y) -> float:
    """Kendall's tau-b of two equally long sequences: (concordant - discordant pairs) / sqrt((pairs - pairs
    tied in x) * (pairs - pairs tied in y)), as scipy.stats.kendalltau computes it. 1: the same order, -1:
    reversed, 0: no association; NaN when either side is constant (no order to compare) or has under two
    values. O(n log n): discordant pairs are the inversions of y once the pairs are sorted by x (ties in x by
    y), counted by a bottom-up merge sort vectorised over its blocks."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"kendall_tau_b: {len(x)} scores against {len(y)} lengths")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("kendall_tau_b: NaN in the input")
    n = len(x)
    if n < 2:
        return float("nan")
    order = np.lexsort((y, x))
    xs, ys = x[order], y[order]
    pairs = n * (n - 1) // 2
    x_ties = _tied_pairs(np.diff(xs) != 0)
    both_ties = _tied_pairs((np.diff(xs) != 0) | (np.diff(ys) != 0))
    y_ties = _tied_pairs(np.diff(np.sort(y)) != 0)
    if x_ties == pairs or y_ties == pairs:
        return float("nan")
    discordant = _inversions(np.unique(ys, return_inverse=True)[1].ravel())
    num = pairs - x_ties - y_ties + both_ties - 2 * discordant
    return float(num / np.sqrt(float(pairs - x_ties) * float(pairs - y_ties)))


def _tied_pairs(change) -> int:
    """Pairs within runs of equal sorted values; `change` marks where a sorted sequence changes value."""
    edges = np.flatnonzero(np.concatenate([[True], change, [True]]))
    runs = np.diff(edges).astype(np.int64)
    return int((runs * (runs - 1) // 2).sum())


def _inversions(ranks) -> int:
    """Pairs i < j with ranks[i] > ranks[j] (ranks: integers 0..m-1)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    n = len(ranks)
    top = int(ranks.max()) + 1 if n else 1
    size = 1 << max(0, (n - 1).bit_length())
    a = np.full(size, top, dtype=np.int64)  # padded at the end with a value above all: no inversion with it
    a[:n] = ranks
    count, w = 0, 1
    while w < size:
        blocks = a.reshape(-1, 2 * w)  # each half already sorted
        k = blocks.shape[0]
        off = (np.arange(k, dtype=np.int64) * (top + 1))[:, None]  # rows apart: one sorted search for all
        left = (blocks[:, :w] + off).ravel()
        pos = np.searchsorted(left, (blocks[:, w:] + off).ravel(), side="right")
        count += int((np.repeat((np.arange(k, dtype=np.int64) + 1) * w, w) - pos).sum())
        a = np.sort(blocks, axis=1).ravel()
        w *= 2
    return count


def expected_length(probs, buckets: Buckets) -> np.ndarray:
    """Each row's mean length under its predicted bucket distribution, a bucket standing for its midpoint."""
    p = np.asarray(probs, dtype=np.float64)
    return (p @ buckets.midpoint(np.arange(buckets.num))) / p.sum(axis=1)


def ranking_score(buckets: Buckets, probs=None, pred_bucket=None) -> tuple[np.ndarray, str]:
    """The score a bucket classifier orders requests by, and what it is: the expected length when it has
    probabilities, else its predicted bucket's midpoint."""
    if probs is not None:
        return expected_length(probs, buckets), EXPECTED
    if pred_bucket is None:
        raise ValueError("ranking_score needs the probabilities or the predicted buckets")
    return buckets.midpoint(np.asarray(pred_bucket, dtype=np.int64)), MIDPOINT


def ranking(score, what: str, true_len) -> dict:
    """The `kendall_tau` and `tau_score` columns for one predictor's score on the scored rows."""
    score = np.asarray(score, dtype=np.float64)
    constant = len(score) > 0 and bool(np.all(score == score[0]))
    return {"kendall_tau": kendall_tau_b(score, true_len), "tau_score": CONSTANT if constant else what}
