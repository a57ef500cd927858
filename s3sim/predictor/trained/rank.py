"""`python -m s3sim.predictor.trained.rank`: a head trained to *rank* output lengths on the shipped encoder,
beside the bucket classifier, scored by Kendall's tau-b on the held-out prompts.

Ordering a queue by predicted length (`policy.order=sjf`) needs the right order more than the right bucket,
which is what learning-to-rank schedulers train for (vllm-ltr: a pairwise loss). This tool takes the shipped
predictor's fine-tuned encoder as it is (frozen), pools each prompt as the classifier does, and fits on the
training prompts of its own split:
- `pairwise`: a linear score trained with a logistic (RankNet) loss on random pairs of training prompts, to
  put the one with the longer output higher;
- `regression`: a linear score fitted to log output length (least squares), the pointwise baseline;
then scores the held-out prompts with each, and with the classifier's expected length and its median
bucket's midpoint (what `s3predict evaluate` reports), and prompt length.

Writes `results/predictor/ranking.csv` (`score, kendall_tau, rows`) and prints it. The encoder's pooled
features of every prompt are computed once (about a minute here).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.commandline import Parser, exit_code, out_path

DATA = "sharegpt/sharegpt_v3_firstturn_pairs.jsonl"


def pooled(model, ids, batch_size: int = 64) -> np.ndarray:
    """The encoder's mean-pooled last hidden state of each prompt (as the classifier's heads see it, no dropout)."""
    import torch

    model.eval()
    out = np.zeros((len(ids), model.encoder.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(x) for x in ids], kind="stable")
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            sel = order[i:i + batch_size]
            x, m = model.collate([ids[j] for j in sel])
            h = model.encoder(input_ids=x, attention_mask=m).last_hidden_state
            w = m.unsqueeze(-1).to(h.dtype)
            out[sel] = ((h * w).sum(1) / w.sum(1).clamp(min=1)).numpy()
    return out


def standardise(train: np.ndarray, *others: np.ndarray):
    mu, sd = train.mean(0), train.std(0) + 1e-6
    return [(a - mu) / sd for a in (train, *others)]


def fit_pairwise(x: np.ndarray, length: np.ndarray, pairs: int = 200_000, epochs: int = 30, lr: float = 0.05,
                 l2: float = 1e-3, seed: int = 0) -> np.ndarray:
    """Weights of a linear score trained with the RankNet loss log(1 + exp(-(s_i - s_j))) on random pairs whose
    lengths differ (i the longer), full-batch gradient descent."""
    import torch

    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(x), pairs), rng.integers(0, len(x), pairs)
    keep = length[i] != length[j]
    i, j = i[keep], j[keep]
    swap = length[i] < length[j]
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    X = torch.tensor(x)
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    ii, jj = torch.tensor(i), torch.tensor(j)
    for _ in range(epochs * 10):
        opt.zero_grad()
        s = X @ w
        loss = torch.nn.functional.softplus(-(s[ii] - s[jj])).mean() + l2 * (w * w).sum()
        loss.backward()
        opt.step()
    return w.detach().numpy()


def fit_regression(x: np.ndarray, length: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """Ridge weights (with an intercept column) for log(1 + length)."""
    X = np.c_[x, np.ones(len(x))]
    y = np.log1p(length)
    return np.linalg.solve(X.T @ X + l2 * np.eye(X.shape[1]), X.T @ y)


def compare(data: Path, seed: int = 0) -> pd.DataFrame:
    import torch

    from s3sim.predictor.trained.data import labelled_rows
    from s3sim.predictor.trained.evaluate import expected_length, kendall_tau_b, median_bucket
    from s3sim.predictor.trained.model import LengthClassifier, model_folder, read_meta

    folder = model_folder(None)
    meta = read_meta(folder)
    s = meta["settings"]
    torch.set_num_threads(2)
    model = LengthClassifier.load(folder)
    rows = labelled_rows(data, s["tokenizer"], s["split_seed"], s["test_frac"], s["limit"])
    ids = model.encode(rows.prompt)
    feats = pooled(model, ids)
    train, test = ~rows.test.to_numpy(), rows.test.to_numpy()
    length = rows.output_tokens.to_numpy(dtype=np.float64)
    xtr, xte = standardise(feats[train], feats[test])
    truth = length[test]
    scores = {
        "pairwise ranking head (RankNet, linear)": xte @ fit_pairwise(xtr, length[train], seed=seed),
        "regression head (log length, linear)": np.c_[xte, np.ones(len(xte))] @ fit_regression(xtr, length[train]),
        "prompt length": np.array([len(x) for x in np.asarray(ids, dtype=object)[test]], dtype=np.float64),
    }
    probs = model.probabilities([ids[k] for k in np.flatnonzero(test)])
    for name, b in model.buckets.items():
        scores[f"bucket classifier {name}: expected length"] = expected_length(probs[name], b)
        scores[f"bucket classifier {name}: median bucket"] = b.midpoint(median_bucket(probs[name]))
    return pd.DataFrame([{"score": k, "kendall_tau": kendall_tau_b(v, truth), "rows": int(test.sum())}
                         for k, v in scores.items()])


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help=f"prompt/response pairs (default: {DATA} in the shared data)")
    ap.add_argument("--out", type=out_path, default="results/predictor")
    ap.add_argument("--seed", type=int, default=0)

    def work():
        from s3sim.inputs import SHARED_DATA_DIR
        from s3sim.writers import write_csv

        a = ap.parse_args(argv)
        table = compare(Path(a.data) if a.data else SHARED_DATA_DIR / DATA, a.seed)
        Path(a.out).mkdir(parents=True, exist_ok=True)
        write_csv(table.round(4), Path(a.out) / "ranking.csv")
        with pd.option_context("display.width", 160, "display.max_colwidth", 60):
            print(table.to_string(index=False))

    return exit_code("rank", work)


if __name__ == "__main__":
    sys.exit(main())
