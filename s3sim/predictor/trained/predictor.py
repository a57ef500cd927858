"""`TrainedPredictor`: real predictions behind the same interface as `oracle` and `synthetic`.

Two sources:
- `table`: the committed predictions of a fine-tuned classifier for every row of a text workload
  (`s3sim/predictor/tables/`), so a simulation needs no model, no torch and no training run;
- `model`: the classifier itself, run on each arriving request's prompt (batched per arrival group).
  Only this source can learn online: `observe` buffers the supervisor's feedback, and every `every`
  observations the model takes `steps` real fine-tuning steps on the buffer plus a replay sample of its
  training data, so that later arrivals are predicted by the retrained model.
Requests map to prompts through their row key in the workload (`request.id` indexes `keys`).
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.core.predictors.base import Predictor
from s3sim.core.predictors.buckets import Buckets
from s3sim.inputs import note

TABLES = Path(__file__).resolve().parents[1] / "tables"


@dataclass
class RetrainConfig:
    every: int = 0          # observations between retraining rounds; 0 never retrains
    steps: int = 8          # optimizer steps per round
    batch_size: int = 16
    replay: float = 0.25    # share of each batch drawn from the original training data
    window: int = 512       # most recent observations kept in the buffer
    lr: float = 5e-5
    head_lr: float = 1e-3
    seed: int = 0


def table_path(workload_name: str) -> Path:
    return TABLES / f"{workload_name.replace(':', '-')}.csv.gz"


class TrainedPredictor(Predictor):
    name = "trained"

    def __init__(self, buckets: Buckets, scheme: str):
        super().__init__(buckets)
        self.scheme = scheme
        self.retrain_rounds = 0
        self._by_id: np.ndarray | None = None  # table source: the bucket of each request id
        self._probs_by_id: np.ndarray | None = None  # ... and its probabilities, where the table has them
        self.model = None                      # model source: the classifier

    # ------------------------------------------------------------------ table source
    @classmethod
    def from_table(cls, path, scheme: str, keys, allow_in_sample: bool = False) -> "TrainedPredictor":
        path = Path(path)
        side = path.with_suffix("").with_suffix(".json")
        if not path.is_file() or not side.is_file():
            raise ConfigError(f"prediction table {path} (and its .json) not found; write one with "
                              f"`s3predict table` or use predictor.source=model")
        note(path)
        note(side)
        buckets = _table_buckets(side, scheme, path.name)
        df, pcols = _read_table(path, scheme, buckets.num)
        row = {k: i for i, k in enumerate(df["key"])}
        keys = np.asarray(keys, dtype=object)
        missing = [k for k in keys if k not in row]
        if missing:
            raise ConfigError(f"{path.name} has no prediction for row {missing[0]!r} ({len(missing)} missing)")
        idx = np.fromiter((row[k] for k in keys), np.int64, len(keys))
        split = df["split"].to_numpy()[idx]
        if (split != "test").any() and not allow_in_sample:
            seen = sorted({k for k, s in zip(keys, split) if s != "test"})
            raise ConfigError(f"{len(seen)} requested rows were in the predictor's training split (e.g. "
                              f"{seen[0]!r}): use workload.split=test, or predictor.allow_in_sample=true")
        p = cls(buckets, scheme)
        p._by_id = df[f"{scheme}:bucket"].to_numpy(np.int64)[idx]
        p._probs_by_id = df[pcols].to_numpy(np.float32)[idx] if pcols else None
        return p

    # ------------------------------------------------------------------ model source
    @classmethod
    def from_model(cls, folder, scheme: str, prompts, retrain: RetrainConfig | None = None,
                   replay_prompts=None, replay_lengths=None, threads: int | None = 1) -> "TrainedPredictor":
        from s3sim.predictor.trained.model import LengthClassifier, model_folder
        from s3sim.predictor.trained.train import set_threads

        set_threads(threads)
        model = LengthClassifier.load(model_folder(folder), trainable=bool(retrain and retrain.every))
        if scheme not in model.buckets:
            raise ConfigError(f"model {folder} was not trained for buckets {scheme}; it has "
                              f"{', '.join(model.buckets)}")
        p = cls(model.buckets[scheme], scheme)
        p.model = model
        p.prompts = list(prompts)
        p._ids: dict[int, list] = {}
        p.retrain = retrain or RetrainConfig()
        p._buffer: list[tuple[list, int]] = []
        p._since = 0
        p._rng = np.random.default_rng(p.retrain.seed)
        p._opt = None
        if replay_prompts is not None and p.retrain.every:
            p._replay_ids = model.encode(replay_prompts)
            p._replay_len = np.asarray(replay_lengths, dtype=np.int64)
        else:
            p._replay_ids, p._replay_len = [], np.zeros(0, np.int64)
        return p

    def _encoded(self, rid: int):
        ids = self._ids.get(rid)
        if ids is None:
            ids = self._ids[rid] = self.model.encode([self.prompts[rid]])[0]
        return ids

    def probabilities(self, requests) -> np.ndarray:
        if self._by_id is not None:
            if self._probs_by_id is None:
                return super().probabilities(requests)
            return self._probs_by_id[np.fromiter((r.id for r in requests), np.int64, len(requests))]
        ids = [self._encoded(r.id) for r in requests]
        return self.model.probabilities(ids)[self.scheme]

    def predict(self, requests) -> np.ndarray:
        if self._by_id is not None:
            return self._by_id[np.fromiter((r.id for r in requests), np.int64, len(requests))]
        return self.probabilities(requests).argmax(1)

    def observe(self, request, true_length: int) -> None:
        super().observe(request, true_length)
        if self.model is None or not self.retrain.every:
            return
        self._buffer.append((self._encoded(request.id), int(true_length)))
        del self._buffer[:-self.retrain.window]
        self._since += 1
        if self._since >= self.retrain.every:
            self._since = 0
            self.fine_tune()

    def fine_tune(self) -> None:
        """`steps` optimizer steps on batches mixing the feedback buffer with replayed training rows."""
        import torch

        from s3sim.predictor.trained.train import TrainConfig, loss_on, make_optimizer

        rc = self.retrain
        if self._opt is None:
            self._opt = make_optimizer(self.model, TrainConfig(lr=rc.lr, head_lr=rc.head_lr))
        n_replay = int(round(rc.batch_size * rc.replay)) if len(self._replay_ids) else 0
        n_new = rc.batch_size - n_replay
        self.model.train()
        with torch.random.fork_rng(devices=[]):  # dropout's draws from the round's own seed: a re-run repeats them
            torch.manual_seed(rc.seed * 1_000_003 + self.retrain_rounds)
            for _ in range(rc.steps):
                pick = self._rng.integers(0, len(self._buffer), n_new)
                ids = [self._buffer[i][0] for i in pick]
                lens = [self._buffer[i][1] for i in pick]
                if n_replay:
                    rp = self._rng.integers(0, len(self._replay_ids), n_replay)
                    ids += [self._replay_ids[i] for i in rp]
                    lens += self._replay_len[rp].tolist()
                labels = {n: b.of(np.asarray(lens)) for n, b in self.model.buckets.items()}
                loss = loss_on(self.model, ids, labels, np.arange(len(ids)))
                self._opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
                self._opt.step()
        self.model.eval()
        self.retrain_rounds += 1



def _table_buckets(side: Path, scheme: str, table: str) -> Buckets:
    """The bucket edges of `scheme` from a prediction table's JSON sidecar, checked: one line naming the file
    and what is wrong (not a JSONDecodeError or a KeyError from deep in the simulator)."""
    from s3sim.predictor.trained.schemes import edges_problem

    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{side}: not a prediction table's sidecar ({str(e).splitlines()[0]}); write it again "
                          f"with `s3predict table`") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("buckets"), dict) or not meta["buckets"]:
        raise ConfigError(f"{side}: not a prediction table's sidecar: expected an object whose 'buckets' maps each "
                          f"scheme (e.g. equal:10:2048) to its edges; write it again with `s3predict table`")
    if scheme not in meta["buckets"]:
        raise ConfigError(f"{table} has no predictions for buckets {scheme}; it has "
                          f"{', '.join(meta['buckets'])} (set predictor.bucketing/num_buckets/max_seq_len)")
    problem = edges_problem(scheme, meta["buckets"][scheme])
    if problem:
        raise ConfigError(f"{side}: buckets {scheme}: {problem}; a prediction table's edges must be those its "
                          f"scheme names (write it again with `s3predict table`)")
    return Buckets(meta["buckets"][scheme])


def _read_table(path: Path, scheme: str, num: int):
    """A prediction table's key, split, bucket and (where present) probability columns of `scheme`, checked:
    every bucket a whole number 0..num-1 (a -1 would silently index the last bucket), every probability
    finite in [0, 1] with each row summing to 1 (to the table's 3 decimals), keys unique. Else one line
    naming the file, the column and what would be valid."""
    import pandas as pd

    bucket = f"{scheme}:bucket"
    again = "write it again with `s3predict table`"
    try:
        header = pd.read_csv(path, nrows=0).columns
        pcols = [f"{scheme}:p{j}" for j in range(num)]
        pcols = pcols if all(c in header for c in pcols) else []  # a table of buckets only: one-hot
        need = [c for c in ("key", "split", bucket) if c not in header]
        if need:
            raise ConfigError(f"{path}: no column {need[0]!r}; a prediction table needs key, split and {bucket} "
                              f"columns ({again})")
        df = pd.read_csv(path, dtype={"key": str, "split": str}, usecols=["key", "split", bucket, *pcols])
    except ConfigError:
        raise
    except (OSError, EOFError, UnicodeDecodeError, ValueError, zlib.error, pd.errors.ParserError) as e:
        # BadGzipFile, a truncated gzip, EmptyDataError (no columns), rows of another width
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path}: not a readable prediction table, a gzip CSV ({detail}); {again}") from None
    if df.empty:
        raise ConfigError(f"{path}: the prediction table has no rows; {again}")
    if df["key"].isna().any() or df["key"].duplicated().any():
        bad = df["key"][df["key"].isna() | df["key"].duplicated()].iloc[0]
        raise ConfigError(f"{path}: key {bad!r} is missing or repeated; every row needs its own key ({again})")
    if not df["split"].isin(["train", "test"]).all():
        bad = df["split"][~df["split"].isin(["train", "test"])].iloc[0]
        raise ConfigError(f"{path}: split must be train or test, got {bad!r} ({again})")
    b = pd.to_numeric(df[bucket], errors="coerce").to_numpy(np.float64)
    ok = np.isfinite(b) & (b == np.round(b)) & (b >= 0) & (b < num)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise ConfigError(f"{path}: column {bucket} of row {df['key'].iloc[i]!r} is {df[bucket].iloc[i]}; a "
                          f"bucket must be a whole number from 0 to {num - 1} ({again})")
    df[bucket] = b.astype(np.int64)
    if pcols:
        p = df[pcols].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        ok = np.isfinite(p).all(1) & (p >= 0).all(1) & (p <= 1).all(1)
        ok &= np.abs(np.where(np.isfinite(p), p, 0).sum(1) - 1) <= 0.0005 * num + 1e-6
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise ConfigError(f"{path}: the probabilities {scheme}:p0..p{num - 1} of row {df['key'].iloc[i]!r} are "
                              f"not finite numbers in [0, 1] summing to 1 ({again})")
        df[pcols] = p
    return df, pcols


def from_config(cfg, bucketing: str, num_buckets: int, max_seq_len: int, keys, spec=None) -> TrainedPredictor:
    """`predictor=trained` in a run's config (`spec`: its structured config, `s3sim.core.predictors.spec`)."""
    from s3sim.core.predictors.spec import TrainedSpec
    from s3sim.predictor.trained.schemes import scheme_name
    from s3sim.spec import WorkloadSpec
    from s3sim.workload.lengths import TEXT_SOURCES

    w = WorkloadSpec.read(cfg["workload"])
    spec = spec if spec is not None else TrainedSpec(**{k: v for k, v in cfg["predictor"].items() if k != "retrain"})
    scheme = scheme_name(bucketing, num_buckets, max_seq_len)
    if keys is None:
        raise ConfigError(f"predictor=trained needs a text workload whose rows have prompts "
                          f"({', '.join(TEXT_SOURCES)}), not workload={w.name}")
    label = w.label
    if spec.source == "table":
        return TrainedPredictor.from_table(spec.table or table_path(label), scheme, keys, spec.allow_in_sample)
    from s3sim.workload.lengths import load_prompts

    prompts = load_prompts(w.name, keys, w.option("generator"), w.data_dir)
    r = spec.retrain
    rc = RetrainConfig(every=r.every, steps=r.steps, batch_size=r.batch_size, replay=r.replay, window=r.window,
                       lr=r.lr, head_lr=r.head_lr, seed=r.seed)
    replay = (None, None)
    if rc.every and rc.replay > 0:
        from s3sim.predictor.trained.model import model_folder

        replay = _training_rows(model_folder(spec.model))
    return TrainedPredictor.from_model(spec.model, scheme, prompts, rc, *replay, threads=spec.threads)


def _training_rows(folder: Path):
    """The prompts and output lengths the model was trained on (its run's data file, train side)."""
    from s3sim.predictor.trained.data import labelled_rows

    from s3sim.predictor.trained.model import read_meta

    meta = read_meta(folder) if (folder / "meta.json").is_file() else {}
    st = meta.get("settings")
    if not st:
        raise ConfigError(f"{folder} does not record its training data; set predictor.retrain.replay=0")
    from s3sim.predictor.trained.model import training_file

    data = training_file(meta)[0]  # a shipped predictor records its data relative to the data folder
    rows = labelled_rows(data, st["tokenizer"], st["split_seed"], st["test_frac"], st["limit"])
    tr = rows[~rows["test"]]
    return tr["prompt"].tolist(), tr["output_tokens"].to_numpy()
