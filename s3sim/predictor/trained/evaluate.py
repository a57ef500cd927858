"""How good is a length predictor? Always measured beside two baselines that need no model:
`majority` (the most common training bucket) and `median` (the bucket of the training median length).

The model's bucket is its most probable one; `median_bucket` is the alternative rule that aims at the
absolute error instead. Metrics per scheme: accuracy, within-one-bucket accuracy, mean absolute error in tokens (a prediction
stands for its bucket's midpoint), under-prediction rate (predicted bucket below the true one: the costly
error for S3, it causes preemption), over-prediction rate, and the confusion matrix (rows true, columns
predicted). Pure numpy: the model's probabilities come in as arrays.
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
