"""`python -m s3exec.lab.reprediction` (`make reprediction`): re-predicting the remaining length from the served
model's own hidden states as it generates (TRAIL's idea), measured on SmolLM2.

SmolLM2 answers prompts of `smollm2_greedy` greedily on this CPU (`transformers`' generate, each answer ending
at end-of-sequence or `--cap` tokens, as in natural mode), `--train` of them from the predictor's train side
and `--test` from its test side. One more forward pass over each prompt and answer reads the last layer's
hidden state after g generated tokens, for g on a grid of checkpoints (the state that samples token g + 1:
what a serving engine holds at that step). A ridge regression of log(remaining tokens) on that state and
log(1 + g), fitted on the train rows (the state's weights penalised, by a penalty chosen by 4-fold
cross-validation over train requests, the weight of log(1 + g) and the constant not), predicts
the remaining length of each held-out request still running at each checkpoint.

Writes, each atomically, the last marking a finished run:
- `results/predictor/reprediction.csv`: per checkpoint, the held-out requests still running, the spread
  (standard deviation) and bias of log(predicted / true remaining), the median relative error, and Kendall's
  tau of predicted against true remaining, beside the same for the estimate made at g = 0 and carried
  forward (predicted remaining at 0 less g): what re-prediction adds; and how a request's re-predicted error
  correlates with its own at the checkpoint before;
- `s3sim/predictor/tables/reprediction.csv`: the checkpoints with their measured spread, bias and correlation, the error
  model `predictor.repredict=measured` draws from in the simulator (`s3sim.core.predictors.reprediction`);
- `s3sim/predictor/tables/reprediction_probe.npz`: the fitted probe (feature means, scales, weights and the
  checkpoints), which `predictor.repredict=hidden` applies live in the executor on SmolLM2;
- `results/predictor/reprediction.json`: settings, counts, the chosen penalty and the command.
Generated answers and hidden states are cached (`--cache`), so a re-run refits without generating again.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from s3sim.commandline import Parser, exit_code, out_path
from s3sim.core.errors import ConfigError

CHECKPOINTS = (0, 8, 16, 32, 64, 96, 128, 192, 256, 320, 384, 448)
PENALTIES = (100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0)
SOURCE_KEY = "smollm2"


def rows_of(split: str, n: int, seed: int):
    """(key, text) of `n` rows of one side of the predictor's split, in a seeded order."""
    from s3sim.workload.lengths import OWN_LENGTHS, load_text, texts_by_key

    wl = load_text(OWN_LENGTHS, split=split)
    texts = texts_by_key(OWN_LENGTHS)
    order = np.random.default_rng([int(seed), 0x7A1]).permutation(len(wl.keys))[:n]
    return [(str(wl.keys[i]), texts[str(wl.keys[i])]) for i in order]


def generate(loaded, prompts: list[list[int]], cap: int, batch: int, echo) -> list[list[int]]:
    """Greedy answers (end-of-sequence included, at most `cap` tokens), batches left-padded."""
    import torch

    model, eos = loaded.model, set(loaded.eos_ids)
    model.set_attn_implementation("sdpa")
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else loaded.eos_ids[0]
    out = []
    for s in range(0, len(prompts), batch):
        chunk, t0 = prompts[s:s + batch], time.perf_counter()
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=cap, do_sample=False,
                                 eos_token_id=list(eos), pad_token_id=pad)
        for row in gen[:, width:].tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in eos), min(len(row), cap))
            out.append(row[:end])
        echo(f"generated {len(out)}/{len(prompts)} answers ({time.perf_counter() - t0:.0f} s for this batch)")
    return out


def hidden_states(loaded, prompt: list[int], answer: list[int]) -> np.ndarray:
    """The last layer's state after g generated tokens, for every checkpoint g below the answer's length."""
    import torch

    gs = [g for g in CHECKPOINTS if g < len(answer)]
    seq = torch.tensor([prompt + answer[:-1]])
    with torch.inference_mode():
        h = loaded.model(input_ids=seq, output_hidden_states=True).hidden_states[-1][0]
    return h[[len(prompt) - 1 + g for g in gs]].float().numpy()


def collect(a, echo) -> dict:
    """Prompts, answers and hidden states of both sides, from the cache when it holds them."""
    from s3exec.lab.own_lengths import load_served_model
    from s3exec.prompts import encode

    key = hashlib.sha256(json.dumps([a.train, a.test, a.cap, a.seed, CHECKPOINTS]).encode()).hexdigest()[:12]
    path = Path(a.cache) / f"reprediction-{key}.npz"
    if path.is_file() and not a.fresh:
        echo(f"hidden states from {path}")
        with np.load(path, allow_pickle=False) as z:
            return {**{k: z[k] for k in z.files}, "from_cache": True}
    t0 = time.perf_counter()
    loaded = load_served_model(a)
    feats, g_of, length, side, rid, lengths_seen, keys = [], [], [], [], [], [], []
    for name, n in (("train", a.train), ("test", a.test)):
        rows = rows_of(name, n, a.seed)
        keys += [k for k, _ in rows]
        prompts = [encode(loaded.tokenizer, t, True) for _, t in rows]
        answers = generate(loaded, prompts, a.cap, a.batch, echo)
        for i, (p, ans) in enumerate(zip(prompts, answers)):
            h = hidden_states(loaded, p, ans)
            feats.append(h)
            g_of += CHECKPOINTS[:len(h)]
            length += [len(ans)] * len(h)
            side += [name == "test"] * len(h)
            rid += [len(lengths_seen)] * len(h)
            lengths_seen.append(len(ans))
        echo(f"{name}: {n} answers, mean {np.mean([len(x) for x in answers]):.0f} tokens")
    data = {"seconds": np.array(time.perf_counter() - t0), "h": np.concatenate(feats).astype(np.float32), "g": np.array(g_of, np.int64),
            "length": np.array(length, np.int64), "test": np.array(side, bool), "request": np.array(rid, np.int64),
            "keys": np.array(keys, dtype=str), "answer_tokens": np.array(lengths_seen, np.int64)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(path)
    return {**data, "from_cache": False}


def same_length_as_table(data: dict) -> float:
    """Share of the answers whose length equals `smollm2_greedy`'s (the executor's own generation run): batched,
    left-padded generation may part from it where two tokens are nearly tied."""
    import pandas as pd

    from s3sim.workload.lengths import OWN_LENGTHS, TABLES

    t = pd.read_csv(TABLES / f"{OWN_LENGTHS}.csv", dtype={"key": str})
    table = dict(zip(t["source"] + ":" + t["key"], t["output_tokens"]))
    return round(float(np.mean([table.get(str(k)) == int(n) for k, n in zip(data["keys"], data["answer_tokens"])])), 4)


def design(h: np.ndarray, g: np.ndarray) -> np.ndarray:
    return np.hstack([h, np.log1p(g)[:, None], np.ones((len(g), 1), np.float32)])


class Probe:
    """A ridge regression on standardised features (log(1 + g) and the constant left unpenalised): what
    `predictor.repredict=hidden` applies in the executor (`HiddenStateRePrediction`)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, penalty: float):
        x = x.astype(np.float64)
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-6
        self.mean[-1], self.scale[-1] = 0.0, 1.0
        z = (x - self.mean) / self.scale
        reg = np.full(z.shape[1], float(penalty))
        reg[-2:] = 0.0
        self.weights = np.linalg.solve(z.T @ z + np.diag(reg), z.T @ y)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.weights



def fit(data: dict, echo) -> tuple[Probe, dict]:
    """The regression fitted on the train rows, with its penalty chosen by 4-fold CV over train requests; and
    the CV errors beside those of log(1 + g) alone (what the state adds) and of the mean (the target's variance)."""
    tr = ~data["test"]
    x, y = design(data["h"][tr], data["g"][tr]), np.log(data["length"][tr] - data["g"][tr])
    f = data["request"][tr] % 4  # folds by request: a request's checkpoints stay together

    def cv(features, penalty) -> float:
        return float(np.mean([np.mean((Probe(features[f != k], y[f != k], penalty)(features[f == k]) - y[f == k]) ** 2)
                              for k in range(4)]))

    best = None
    for p in PENALTIES:
        err = cv(x, p)
        echo(f"penalty {p:g}: CV mean squared log error {err:.3f}")
        if best is None or err < best[1]:
            best = (p, err)
    g_only = cv(x[:, -2:], 0.0)
    echo(f"log(1 + g) alone: {g_only:.3f}; the target's variance: {y.var():.3f}")
    return Probe(x, y, best[0]), {"penalty": best[0], "cv_mse": round(best[1], 4), "cv_mse_g_only": round(g_only, 4),
                                  "target_variance": round(float(y.var()), 4)}


def evaluate(data: dict, model):
    import pandas as pd

    from s3sim.predictor.trained.evaluate import kendall_tau_b

    te = data["test"]
    h, g, length, req = data["h"][te], data["g"][te], data["length"][te], data["request"][te]
    pred = np.exp(model(design(h, g)))
    first = {r: p for r, p, gg in zip(req, pred, g) if gg == 0}
    carried = np.array([max(first[r] - gg, 1.0) for r, gg in zip(req, g)])
    error = dict(zip(zip(req.tolist(), g.tolist()), np.log(pred / (length - g)).tolist()))
    rows, prev = [], None
    for c in CHECKPOINTS:
        m = g == c
        if m.sum() < 8:
            continue
        true = (length[m] - c).astype(float)
        row = {"generated": c, "running": int(m.sum())}
        for name, p in (("repredicted", pred[m]), ("carried", carried[m])):
            e = np.log(p / true)
            row |= {f"{name}_log_sd": round(float(e.std()), 4), f"{name}_log_bias": round(float(e.mean()), 4),
                    f"{name}_median_rel_error": round(float(np.median(np.abs(p - true) / true)), 4),
                    f"{name}_kendall_tau": round(float(kendall_tau_b(p, true)), 4)}
        # a request's re-predicted error against its own at the checkpoint before (0 at the first)
        both = [(error[(r, prev)], error[(r, c)]) for r in req[m].tolist() if (r, prev) in error] if prev is not None else []
        row["repredicted_log_corr"] = round(float(np.corrcoef(np.array(both).T)[0, 1]), 4) if len(both) >= 8 else 0.0
        rows.append(row)
        prev = c
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=256, help="answers from the predictor's train side")
    ap.add_argument("--test", type=int, default=128, help="answers from its test side")
    ap.add_argument("--cap", type=int, default=512, help="most tokens an answer may have (natural mode's max_seq_len)")
    ap.add_argument("--batch", type=int, default=64, help="prompts generated at once")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "s3" / "reprediction"))
    ap.add_argument("--fresh", action="store_true", help="generate again even if the cache holds this run")
    ap.add_argument("--out", type=out_path, default="results/predictor")
    ap.add_argument("--table", type=out_path, default="s3sim/predictor/tables/reprediction.csv")

    def work():
        from s3sim.writers import write_csv, write_text

        a = ap.parse_args(argv)
        for k in ("train", "test", "cap", "batch", "threads"):
            if getattr(a, k) < 1:
                raise ConfigError(f"--{k} must be a positive integer, got {getattr(a, k)}")
        t0 = time.perf_counter()
        data = collect(a, lambda m: print(m, flush=True))
        model, fitted = fit(data, print)
        table = evaluate(data, model)
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(table, out / "reprediction.csv")
        model_table = table[["generated", "running", "repredicted_log_sd", "repredicted_log_bias",
                             "repredicted_log_corr"]].rename(columns={"repredicted_log_sd": "log_sd",
                                                                      "repredicted_log_bias": "log_bias",
                                                                      "repredicted_log_corr": "log_corr"})
        write_csv(model_table, Path(a.table))
        probe_path = Path(a.table).with_name("reprediction_probe.npz")
        tmp = probe_path.with_suffix(".tmp.npz")
        np.savez(tmp, mean=model.mean, scale=model.scale, weights=model.weights,
                 checkpoints=np.array(CHECKPOINTS, np.int64))
        tmp.replace(probe_path)
        meta = {"model": SOURCE_KEY, "dtype": "float32", "train": a.train, "test": a.test, "cap": a.cap,
                "seed": a.seed, "checkpoints": list(CHECKPOINTS), **fitted,
                "train_states": int((~data["test"]).sum()), "test_states": int(data["test"].sum()),
                "same_length_as_table": same_length_as_table(data),
                "generation_seconds": round(float(data["seconds"]), 1) if "seconds" in data else None,
                "states_from_cache": bool(data["from_cache"]), "seconds": round(time.perf_counter() - t0, 1),
                "command": f"python -m s3exec.lab.reprediction --train {a.train} --test {a.test} --cap {a.cap} "
                           f"--seed {a.seed}"}
        write_text(json.dumps(meta, indent=1) + "\n", out / "reprediction.json")
        print(table.to_string(index=False))
        print(f"results: {out / 'reprediction.csv'}, {a.table}")

    return exit_code("reprediction", work)


if __name__ == "__main__":
    sys.exit(main())
