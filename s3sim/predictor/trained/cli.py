"""`s3predict`: train, evaluate and tabulate the output-length predictor on any prompt/response file.

    s3predict train DATA [--scheme equal:10:2048 ...] [--base minilm] [--epochs 3] ...
    s3predict evaluate DATA [--model RUN_DIR] [--out DIR] [--test-frac F]
    s3predict table DATA [--model RUN_DIR] --out PREDICTIONS.csv.gz
    s3predict predict PROMPTS [--model RUN_DIR] [--out PREDICTIONS.csv]

Without --model, the shipped predictor (s3sim/predictor/shipped: LoRA adapters and heads over the offline
MiniLM encoder, trained on ShareGPT) is used.

DATA is JSON or JSONL in the ShareGPT, Alpaca or AlpacaEval format. Output lengths are counted with the
served model's tokenizer (SmolLM2's by default). Splits are by prompt and seeded; training uses the
`train` side. `evaluate` scores every row of a file the predictor never trained on (or a seeded --test-frac
share of it), and only the held-out side of its own training file (recognised by the content hash its
meta.json records; by path where it records none), and says which. Runs live in a cache folder outside the repository
(`--cache-dir`, or $S3_CACHE_DIR, or ~/.cache/s3/predictors) and resume where they stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from s3sim.commandline import Parser, given_path, out_path, terminable
from s3sim.core.errors import ConfigError
from s3sim.inputs import file_hash
from s3sim.spec import MAX_THREADS


def cache_dir(arg: str | None = None) -> Path:
    return Path(arg or os.environ.get("S3_CACHE_DIR") or Path.home() / ".cache" / "s3" / "predictors")


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1 (exclusive), got {text}")
    return v


def _fraction_or_all(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction above 0 and at most 1 (1: every row), got {text}")
    return v


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return v


def _rate(text: str) -> float:
    """A learning rate: a number above 0 (a negative one would train by gradient ascent) and at most 10 (1e300
    is no float32; far smaller ones already diverge), nonzero in float32."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (0 < v <= MAX_RATE and np.float32(v) > 0):  # the optimizer computes in float32: 1e-50 is 0 there
        raise argparse.ArgumentTypeError(f"must be a number above 0 and at most {MAX_RATE:g} (not below float32's "
                                         f"1e-45), got {text}")
    return v


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _whole(text: str, low: int, high: int, what: str) -> int:
    """A whole number in [low, high], else one line saying the range and why it is bounded."""
    try:
        v = int(text)
    except ValueError:
        v = low - 1
    if not low <= v <= high:
        raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high:,} ({what}), got {text}")
    return v


MAX_EPOCHS = 10_000
MAX_RATE = 10.0
SEED_MAX = 2**32 - 1        # torch.manual_seed(seed * 1_000_003 + step) must stay below 2**64
SPLIT_SEED_MAX = 2**63 - 1  # non-negative as the simulator's workload.split_seed; bounded, as argparse's int is not


def _threads(text: str) -> int:
    """torch CPU threads: a thread pool of 100,000 failed to allocate after the command had started."""
    return _whole(text, 1, MAX_THREADS, "torch CPU threads")


def _epochs(text: str) -> int:
    """Epochs: 2**63 ran forever instead of failing."""
    return _whole(text, 1, MAX_EPOCHS, "passes over the training rows")


def _seed(text: str) -> int:
    """A training seed that torch and numpy both accept (a negative or 10**23 was a ValueError mid-run)."""
    return _whole(text, 0, SEED_MAX, "torch's and numpy's seed range")


def _split_seed(text: str) -> int:
    """The seed of the split by prompt: non-negative, as the simulator's workload.split_seed must be, so every
    split s3predict makes can be asked of the simulator (a negative one could not)."""
    return _whole(text, 0, SPLIT_SEED_MAX, "as workload.split_seed")


def _run_name(text: str) -> str:
    """A run folder's name inside the cache folder: never empty (it fell back to the default name) and never a
    path (../../x wrote outside the cache folder)."""
    if not text.strip() or text in (".", "..") or "/" in text or "\\" in text or os.sep in text:
        raise argparse.ArgumentTypeError(f"must be a folder name inside the cache folder (no '/', not empty, "
                                         f"not '.' or '..'), got {text!r}")
    return text


def _csv_out(text: str) -> str:
    """--out of `predict` and `table`: a file, never empty (it fell back to the default) nor a folder; its
    extension is checked by `_check_csv_name` (CSV was written under a .parquet or .gz name)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path names no file; give a .csv or .csv.gz file name")
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name (.csv or .csv.gz)")
    return text


def _check_csv_name(out) -> None:
    """--out's extension names the format written (checked after the overwrite check, whose line says more)."""
    if out and not str(out).lower().endswith((".csv", ".csv.gz")):
        raise ConfigError(f"--out {out}: must end in .csv (plain CSV) or .csv.gz (gzip CSV), the format written")


def _gzipped(path) -> bool:
    return str(path).lower().endswith(".gz")


def parser() -> argparse.ArgumentParser:
    ap = Parser(prog="s3predict", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("data", help="JSON/JSONL prompt/response file")
    common.add_argument("--tokenizer", default="smollm2", help="served model's tokenizer: smollm2 or a folder")
    common.add_argument("--limit", type=_positive, default=None, help="use only the first N rows")
    common.add_argument("--threads", type=_threads, default=None, help="torch CPU threads (default: all cores)")
    common.add_argument("--no-progress", action="store_true")
    t = sub.add_parser("train", parents=[common], help="fine-tune a predictor (resumes a stopped run)")
    t.add_argument("--split-seed", type=_split_seed, default=0)
    t.add_argument("--test-frac", type=_fraction, default=0.2, help="share of prompts held out (default 0.2)")
    t.add_argument("--scheme", action="append", default=None,
                   help="bucket scheme kind:K:max_len (repeatable; default equal:10:2048)")
    t.add_argument("--base", default="minilm", help="encoder: minilm or a local Hugging Face folder")
    t.add_argument("--max-length", type=_positive, default=128, help="prompt tokens the encoder reads")
    t.add_argument("--lora", type=_non_negative, default=0,
                   help="LoRA rank: train adapters over the frozen encoder (a few MB) instead of the whole encoder")
    t.add_argument("--epochs", type=_epochs, default=3)
    t.add_argument("--batch-size", type=_positive, default=32)
    t.add_argument("--lr", type=_rate, default=5e-5)
    t.add_argument("--head-lr", type=_rate, default=1e-3)
    t.add_argument("--seed", type=_seed, default=0)
    t.add_argument("--save-every", type=_positive, default=100)
    t.add_argument("--cache-dir", type=given_path, default=None)
    t.add_argument("--name", type=_run_name, default=None, help="run folder name (default: from the data and settings)")
    t.add_argument("--fresh", action="store_true", help="discard an existing run of the same name")
    for name, extra in (("evaluate", "report metrics on rows the predictor never trained on"),
                        ("table", "predict every row")):
        p = sub.add_parser(name, parents=[common], help=extra)
        p.add_argument("--model", default=None, help="a run folder written by `s3predict train` (default: the "
                                                     "shipped predictor, s3sim/predictor/shipped)")
        p.add_argument("--out", type=out_path if name == "evaluate" else _csv_out, default=None,
                       help="a folder for metrics.csv and the confusion matrices" if name == "evaluate" else
                       "a .csv.gz (gzip) or .csv file, and its .json sidecar (default predictions.csv.gz)")
        p.add_argument("--batch-size", type=_positive, default=64)
        if name == "evaluate":  # default: every row of another file, the held-out split of its own
            p.add_argument("--split-seed", type=_split_seed, default=None,
                           help="seed of the --test-frac sample (its own training file: the seed it trained with)")
            p.add_argument("--test-frac", type=_fraction_or_all, default=None,
                           help="score a seeded share of a file it never trained on (default 1: every row); "
                                "its own training file: only the held-out share it trained with")
        else:
            p.add_argument("--split-seed", type=_split_seed, default=0)
            p.add_argument("--test-frac", type=_fraction, default=0.2)
    p = sub.add_parser("predict", help="predict the output-length bucket of every prompt of a file (no answers "
                                       "needed: JSON/JSONL rows with prompt text, or a .txt with one per line)")
    p.add_argument("data", help="prompt file")
    p.add_argument("--model", default=None, help="a run folder (default: the shipped predictor)")
    p.add_argument("--scheme", default=None, help="bucket scheme (default: the model's first, equal:10:2048)")
    p.add_argument("--out", type=_csv_out, default=None,
                   help="CSV (.csv, or gzip .csv.gz) of every prompt's bucket, reservation and probabilities")
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--threads", type=_threads, default=None)
    return ap


def _rows(a):
    return _labelled(a.data, a.tokenizer, a.split_seed, a.test_frac, a.limit)


def _labelled(*args):
    """`labelled_rows`, its notes on the rows (skipped conversations, empty prompts) said on stderr."""
    from s3sim.predictor.trained.data import labelled_rows

    notes = []
    rows = labelled_rows(*args, notes=notes)
    for line in notes:
        print(line, file=sys.stderr)
    return rows


def train(a) -> Path:
    from s3sim.predictor.trained.evaluate import baselines
    from s3sim.predictor.trained.model import LengthClassifier, base_path, recover
    from s3sim.predictor.trained.schemes import Scheme
    from s3sim.predictor.trained.train import TrainConfig, Trainer, set_threads

    schemes = [Scheme.parse(s) for s in (a.scheme or ["equal:10:2048"])]
    check_encoder_options(base_path(a.base), a.max_length, a.lora)  # fail early: a missing encoder, or a
    # --max-length / --lora it cannot take (such a run trained, then no command could load it)
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, head_lr=a.head_lr, seed=a.seed,
                      save_every=a.save_every)
    # the data's content hash too: a training file that grew or changed is another run, never a stale one
    settings = dict(data=str(Path(a.data).resolve()), data_sha256=file_hash(a.data), tokenizer=a.tokenizer,
                    split_seed=a.split_seed,
                    test_frac=a.test_frac, limit=a.limit, schemes=[s.name for s in schemes], base=a.base,
                    max_length=a.max_length, train=asdict(cfg), **({"lora": a.lora} if a.lora else {}))
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    root = cache_dir(a.cache_dir)
    _check_writable(root, "--cache-dir" if a.cache_dir else "the cache folder", root)
    folder = root / (a.name or f"{Path(a.data).name.split('.')[0]}-{digest}")
    recover(folder)
    if (folder / "meta.json").is_file() and not a.fresh:
        from s3sim.predictor.trained.model import read_meta

        meta = read_meta(folder)
        if meta.get("settings") != settings:
            raise ConfigError(f"{folder} holds a run with other settings; pass --fresh to replace it or --name")
        if meta.get("done"):
            print(f"already trained: {folder}")
            return folder
    set_threads(a.threads)
    rows = _rows(a)
    tr = rows[~rows["test"]]
    bks = {s.name: s.buckets(tr["output_tokens"].to_numpy()) for s in schemes}
    labels = {n: b.of(tr["output_tokens"].to_numpy()) for n, b in bks.items()}
    meta = dict(settings=settings, train_rows=len(tr), test_rows=int(rows["test"].sum()),
                train_median=float(np.median(tr["output_tokens"])),
                baselines={n: baselines(tr["output_tokens"].to_numpy(), b) for n, b in bks.items()})
    resume = (folder / "train_state.pt").is_file() and not a.fresh
    model = (LengthClassifier.load(folder, trainable=True, unfinished=True) if resume
             else LengthClassifier.from_base(a.base, bks, a.max_length, a.seed, lora=a.lora))
    ids = model.encode(tr["prompt"])
    trainer = Trainer(model, ids, {n: labels[n] for n in model.buckets}, cfg, folder, meta)
    if resume:
        trainer.restore()
        print(f"resuming {folder} at step {trainer.step}/{trainer.total}")
    t0 = time.perf_counter()
    losses = trainer.run(progress=not a.no_progress)
    trainer.save()
    k = max(1, len(losses) // 10)
    print(f"trained {len(tr)} prompts x {cfg.epochs} epochs in {time.perf_counter() - t0:.0f} s; "
          f"loss {np.mean(losses[:k]):.3f} -> {np.mean(losses[-k:]):.3f}; saved {folder}")
    return folder


def check_encoder_options(base: Path, max_length: int, lora: int) -> None:
    """--max-length within the encoder's positions (the check loading applies, so a run never saves a model no
    command can load) and --lora at most its hidden size (a rank above it adds nothing and can exhaust memory)."""
    from s3sim.predictor.trained.model import encoder_limits, max_length_problem

    hidden, positions = encoder_limits(base)
    problem = max_length_problem(max_length, positions)
    if problem:
        raise ConfigError(f"--max-length {max_length}: {problem}")
    if hidden and lora > hidden:
        raise ConfigError(f"--lora {lora}: a LoRA rank must be 0 (the whole encoder) to the encoder's hidden size "
                          f"{hidden}")


def _check_writable(folder, flag: str, value) -> None:
    """`folder`, or the nearest folder above it that exists (where it would be made), can take a new file: else
    one line naming the option now, not a traceback once the work is done."""
    import tempfile

    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        if p.is_symlink():  # a dangling link: mkdir would fail on it
            break
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"{flag} {value}: {p} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        raise ConfigError(f"{flag} {value}: cannot write in {p} ({e.strerror or type(e).__name__})") from None


def _model(a):
    from s3sim.predictor.trained.model import LengthClassifier, model_folder
    from s3sim.predictor.trained.train import set_threads

    set_threads(a.threads)
    return LengthClassifier.load(model_folder(a.model))


def _same_file(a, b) -> bool:
    """Whether two paths name one file (a link or another spelling included); a path not there yet is
    compared resolved."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _refuse_overwriting(data, out, also=()) -> None:
    """An output never replaces its input: one line naming both (`also`: files written beside --out)."""
    for path in [out, *also]:
        if _same_file(path, data):
            what = f"--out {out}" if path == out else f"--out {out}'s {Path(path).name}"
            raise ConfigError(f"{what} would overwrite the input file {data}; write the output to another path")


def predict(a):
    """Every prompt's bucket under one scheme, its reservation (the bucket's upper bound) and probabilities."""
    import pandas as pd

    from s3sim.workload.text import read_prompts

    if a.out:
        _refuse_overwriting(a.data, a.out)
        _check_csv_name(a.out)
    rows = read_prompts(a.data)
    model = _model(a)
    scheme = a.scheme or next(iter(model.buckets))
    if scheme not in model.buckets:
        raise ConfigError(f"--scheme {scheme}: the model predicts {', '.join(model.buckets)}")
    t0 = time.perf_counter()
    probs = model.probabilities(model.encode([p for _, p in rows]), a.batch_size)[scheme]
    ms = (time.perf_counter() - t0) / len(rows) * 1e3
    b = model.buckets[scheme]
    bucket = probs.argmax(1)
    df = pd.DataFrame({"key": [k for k, _ in rows], "bucket": bucket, "reserve_tokens": b.upper[bucket]})
    for j in range(b.num):
        df[f"p{j}"] = np.round(probs[:, j], 3)
    return df, scheme, ms


def evaluation_rows(a, model):
    """The rows `evaluate` scores (their `test` column) and one line saying which and why.

    A file the predictor never trained on: every row (or a seeded `--test-frac` share), less any row whose
    prompt is on the training side of the file it did train on, when that file is here to look in. Its own
    training file (the content hash its meta.json records; the recorded path where there is no hash, or
    where the file at that path changed since): only the held-out side of the split it trained with, so
    `--split-seed` and `--test-frac`, if given, must be that split's."""
    from s3sim.predictor.trained.model import training_file

    st = model.meta.get("settings") if isinstance(model.meta.get("settings"), dict) else {}
    path, sha = training_file(model.meta)
    same_path = path is not None and _same_file(a.data, path)
    if sha:
        own = file_hash(a.data) == sha
        how = "" if own else None
        if not own and same_path:
            own, how = True, (f"; {a.data} is the path of its training file, whose content changed since it "
                              f"trained (another content hash), so rows it trained on may be in it")
    elif same_path:
        own, how = True, "; recognised by path: its meta.json records no content hash of its training file"
    else:
        own, how = False, None
    if own:
        seed, frac = st.get("split_seed", 0), st.get("test_frac", 0.2)
        for flag, given, kept in (("--split-seed", a.split_seed, seed), ("--test-frac", a.test_frac, frac)):
            if given is not None and given != kept:
                raise ConfigError(f"{flag} {given}: the predictor trained on {a.data}, holding out test fraction "
                                  f"{frac} with split seed {seed}; only that held-out side can be scored (leave "
                                  f"{flag} out, or evaluate another file)")
        rows = _labelled(a.data, a.tokenizer, seed, frac, a.limit)
        n = int(rows["test"].sum())
        return rows, (f"scored the {n:,} held-out rows of its own training file (split seed {seed}, test fraction "
                      f"{frac}; the other {len(rows) - n:,} are on its training side){how}")
    seed = 0 if a.split_seed is None else a.split_seed
    if path is None:  # nothing recorded: the project's default split, unless every row is asked for
        frac = 0.2 if a.test_frac is None else a.test_frac
        rows = _labelled(a.data, a.tokenizer, seed, frac, a.limit)
        n = int(rows["test"].sum())
        if frac >= 1:
            return rows, (f"scored all {n:,} rows (--test-frac 1): the predictor's meta.json records no training "
                          f"file, so rows it trained on, if any, are among them")
        return rows, (f"scored {n:,} of {len(rows):,} rows (split seed {seed}, test fraction {frac}): the "
                      f"predictor's meta.json records no training file, so this is the held-out side of the "
                      f"default split; --test-frac 1 scores every row")
    frac = 1.0 if a.test_frac is None else a.test_frac
    rows = _labelled(a.data, a.tokenizer, seed, frac, a.limit)
    sample = "" if frac >= 1 else f" (split seed {seed}, test fraction {frac})"
    seen = _trained_prompts(path, sha, st)
    if seen is None:
        look = f"; its training file {path} is not here, so its prompts were not looked for"
    else:
        from s3sim.workload.text import prompt_hash

        trained = np.fromiter((prompt_hash(p) in seen for p in rows["prompt"]), bool, len(rows))
        k = int((trained & rows["test"].to_numpy()).sum())
        rows["test"] = rows["test"].to_numpy() & ~trained
        if not rows["test"].any():
            raise ConfigError(f"{a.data}: every row to score has a prompt the predictor trained on (in "
                              f"{path.name}); evaluate it on other rows")
        if k:
            n = int(rows["test"].sum())
            return rows, (f"scored {n:,} of {len(rows):,} rows{sample}: this is not the file the predictor trained "
                          f"on, but {k:,} of its rows have a prompt from that file's training side "
                          f"({path.name}) and are left out")
        look = ""
    n = int(rows["test"].sum())
    scored = f"all {n:,} rows" if n == len(rows) else f"{n:,} of {len(rows):,} rows"
    return rows, f"scored {scored}{sample}: the predictor never trained on this file{look}"


def _trained_prompts(path: Path, sha: str | None, st: dict) -> set | None:
    """The prompt hashes on the training side of the predictor's training file, or None when that file is
    not here as it was (missing, or another content than the hash it recorded)."""
    from s3sim.predictor.split import holdout_mask
    from s3sim.workload.text import prompt_hash, read_pairs

    if not path.is_file() or (sha and file_hash(path) != sha):
        return None
    pairs = read_pairs(path)
    if st.get("limit") is not None:
        pairs = pairs[:int(st["limit"])]
    hashes = [prompt_hash(p.prompt) for p in pairs]
    test = holdout_mask(hashes, st.get("split_seed", 0), st.get("test_frac", 0.2))
    return {h for h, t in zip(hashes, test) if not t}


def evaluate(a, model=None, rows=None, rank: bool = True):
    """Metrics of the model and both baselines on the rows to score (`rows`' test side; by default those of
    `evaluation_rows`), per scheme; returns (table, confusions). With `rank`, each row also carries Kendall's
    tau-b between its score and the true length on the same rows (`kendall_tau`, and `tau_score` naming the
    score), and each scheme a `prompt length` row: the prompt's token count as the score, no buckets."""
    import pandas as pd

    from s3sim.predictor.trained.evaluate import PROMPT, confusion, median_bucket, metrics, ranking, ranking_score

    model = model or _model(a)
    rows = evaluation_rows(a, model)[0] if rows is None else rows
    test = rows[rows["test"]]
    ids = model.encode(test["prompt"])
    t0 = time.perf_counter()
    probs = model.probabilities(ids, a.batch_size)
    per_req_ms = (time.perf_counter() - t0) / len(test) * 1e3
    true = test["output_tokens"].to_numpy()
    prompt_tau = {}
    if rank:
        from s3sim.workload.tokenizer import count_tokens, load_tokenizer

        tok = load_tokenizer(a.tokenizer) if isinstance(a.tokenizer, str) else a.tokenizer
        prompt_tau = ranking(count_tokens(tok, test["prompt"]), PROMPT, true)
    out, conf = [], {}
    base = model.meta.get("baselines", {})
    for n, b in model.buckets.items():
        pred = probs[n].argmax(1)
        med = median_bucket(probs[n])

        def tau(**score):  # its kendall_tau and tau_score columns
            return ranking(*ranking_score(b, **score), true) if rank else {}

        out.append({"scheme": n, "predictor": "trained", **metrics(pred, true, b), "ms_per_request": per_req_ms,
                    **tau(probs=probs[n])})
        out.append({"scheme": n, "predictor": "trained, median of p", **metrics(med, true, b),
                    "ms_per_request": per_req_ms, **tau(pred_bucket=med)})
        for bname, bucket in base.get(n, {}).items():
            out.append({"scheme": n, "predictor": bname, **metrics(np.full(len(true), bucket), true, b),
                        "ms_per_request": 0.0, **tau(pred_bucket=np.full(len(true), bucket))})
        if rank:
            out.append({"scheme": n, "predictor": "prompt length", "n": len(true), **prompt_tau})
        conf[n] = confusion(pred, true, b)
    return pd.DataFrame(out), conf


def table(a):
    """Every row's predicted bucket and probabilities, per scheme, with its split side."""
    out = Path(a.out or DEFAULT_TABLE)
    _refuse_overwriting(a.data, out, [_sidecar(out)])
    _check_csv_name(out)
    model = _model(a)
    rows = _rows(a)
    probs = model.probabilities(model.encode(rows["prompt"]), a.batch_size)
    return predictions_frame(rows, probs), model


DEFAULT_TABLE = "predictions.csv.gz"


def predictions_frame(rows, probs):
    import pandas as pd

    cols = {"key": rows["key"].to_numpy(), "split": np.where(rows["test"], "test", "train")}
    for n, p in probs.items():
        cols[f"{n}:bucket"] = p.argmax(1)
        for j in range(p.shape[1]):
            cols[f"{n}:p{j}"] = np.round(p[:, j], 3)
    return pd.DataFrame(cols)


@terminable
def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        if a.cmd == "train":
            train(a)
        elif a.cmd == "evaluate":
            if a.out:
                clear_evaluation(a.data, Path(a.out))
            model = _model(a)
            rows, note = evaluation_rows(a, model)
            res, conf = evaluate(a, model, rows)
            print(note)
            import pandas as pd
            with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
                print(res.to_string(index=False))
                print(ranking_note(res))
                for n, c in conf.items():
                    print(f"\nconfusion matrix, {n} (rows: true bucket, columns: predicted)\n{c.to_string()}")
            if a.out:
                from s3sim.writers import write_csv
                out = Path(a.out)
                out.mkdir(parents=True, exist_ok=True)
                for n, c in conf.items():  # the confusions first: metrics.csv is what says the evaluation finished
                    write_csv(c.reset_index(), out / f"confusion_{n.replace(':', '_')}.csv")
                write_csv(res, out / "metrics.csv")
        elif a.cmd == "predict":
            _check_out_folder(a.out)
            df, scheme, ms = predict(a)
            import pandas as pd
            with pd.option_context("display.width", 160, "display.max_columns", 20):
                print(df.head(20).to_string(index=False))
            more = " (first 20 shown)" if len(df) > 20 else ""
            print(f"{len(df)} prompts{more}, buckets {scheme}, {ms:.1f} ms per prompt")
            if a.out:
                write_csv_as_named(df, Path(a.out))
                print(f"-> {a.out}")
        else:
            _check_out_folder(a.out or DEFAULT_TABLE)
            df, model = table(a)
            out = Path(a.out or DEFAULT_TABLE)
            write_table(df, model, out)
            print(f"{len(df)} rows -> {out}")
    except ConfigError as e:
        print(f"s3predict: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write refused after the up-front checks (a full disk, a folder made read-only)
        where = f"{e.filename}: " if e.filename else ""
        print(f"s3predict: error: {where}{e.strerror or e} (could not read or write it)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback; a training run keeps its last checkpoint
        print("s3predict: interrupted" + ("; the same command resumes the run from its last checkpoint, if one was "
                                          "saved (every --save-every steps), else starts it again"
                                          if a.cmd == "train" else ""), file=sys.stderr)
        return 130
    return 0


def clear_evaluation(data, out: Path) -> None:
    """Before any work: --out must be a folder that can be written, and an earlier evaluation's results in it
    (metrics.csv, confusion_*.csv) are removed, so none outlives this run as if it were its result (a failed
    run, or one whose predictor has other schemes); the input file is never among them."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; evaluate writes metrics.csv and the confusion matrices into a "
                          f"folder")
    _check_writable(out, "--out", out)
    mine = [out / "metrics.csv", *sorted(out.glob("confusion_*.csv"))] if out.is_dir() else [out / "metrics.csv"]
    _refuse_overwriting(data, out, mine)
    for f in mine:
        f.unlink(missing_ok=True)


def _check_out_folder(out) -> None:
    """--out's folder must exist and take a new file before the work that fills it starts (not a traceback once
    it is done)."""
    if not out:
        return
    if not Path(out).resolve().parent.is_dir():
        raise ConfigError(f"--out {out}: its folder {Path(out).parent} does not exist")
    if Path(out).is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name")
    _check_writable(Path(out).resolve().parent, "--out", out)


def write_csv_as_named(df, path: Path) -> None:
    """A CSV written atomically, gzip-compressed when its name ends in .gz (byte-stable: no time in the header)."""
    from s3sim.writers import write_atomically, write_csv

    if not _gzipped(path):
        write_csv(df, path)
        return

    def gz(tmp):
        import gzip
        import io

        with open(tmp, "wb") as raw:
            with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9, mtime=0) as z:
                with io.TextIOWrapper(z, encoding="utf-8", newline="") as f:
                    df.to_csv(f, index=False)

    write_atomically(path, gz)


def ranking_note(res) -> str:
    """What the kendall_tau column measures, below the table, with the trained predictor's tau per scheme beside
    the prompt-length baseline's."""
    from s3sim.predictor.trained.evaluate import CONSTANT, EXPECTED, MIDPOINT, PROMPT

    by = res.set_index(["scheme", "predictor"])
    taus = "; ".join(f"{n}: trained {by.loc[(n, 'trained'), 'kendall_tau']:.3f}" for n in res["scheme"].unique())
    prompt = res.loc[res["predictor"] == "prompt length", "kendall_tau"].iloc[0]
    return (f"\nkendall_tau: Kendall's tau-b between each predictor's score (tau_score) and the true output length, "
            f"on the same {int(res['n'].iloc[0]):,} rows as accuracy (1: the same order, 0: unrelated, -1: reversed; "
            f"ties counted). Scores: trained, '{EXPECTED}' (its expected length: the probabilities times the "
            f"bucket midpoints); the median-of-p rule, '{MIDPOINT}' of its bucket; majority and median predict one "
            f"bucket for every row, '{CONSTANT}' (no order: NaN); '{PROMPT}', the prompt's length in the "
            f"tokenizer's tokens (no model).\nKendall's tau-b, {taus}; prompt length {prompt:.3f}")


def write_table(df, model, out: Path) -> None:
    """The predictions (gzip CSV, or plain where --out ends in .csv) and a JSON sidecar with each scheme's bucket
    edges, written atomically."""
    from s3sim.writers import write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv_as_named(df, out)
    side = {"buckets": {n: b.upper.tolist() for n, b in model.buckets.items()},
            "settings": model.meta.get("settings"), "baselines": model.meta.get("baselines"),
            "lora": model.lora, "compressed": model.meta.get("compressed")}
    write_text(json.dumps(side, indent=1), _sidecar(out))


def _sidecar(out: Path) -> Path:
    """The JSON beside a prediction table (predictions.csv.gz -> predictions.json)."""
    return Path(out).with_suffix("").with_suffix(".json")


if __name__ == "__main__":
    sys.exit(main())
