"""Request length tables: (prompt tokens, output tokens[, arrival time]) per request, read from the shared data.

Only token counts matter to the simulator, so every loader returns the same small `Workload` table. Loaders
never copy data; they read it from the shared data folder (default `../shared/data` next to the repository).
"""

from __future__ import annotations

import csv
import inspect
import json
import math
from dataclasses import dataclass
from datetime import datetime
from numbers import Real
from pathlib import Path

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.inputs import SHARED_DATA_DIR, note
from s3sim.workload.files import csv_rows, require_file
from s3sim.workload.prefix import HashChains
from s3sim.workload.trace_formats import read_log

DEFAULT_DATA_DIR = SHARED_DATA_DIR

ALPACA_FIELDS = ("L_gt", "L_t0.0", "L_t0.3", "L_t0.5", "L_t0.7")
ALPACA_SPLITS = ("train", "val")
ALPACA_TEXT_FILES = ("alpaca/alpaca_data_first_rows.json", "alpaca/llamafactory_alpaca_en_demo.json")
SHAREGPT_FILE = "sharegpt/sharegpt_8k_lengths_llama2_tokenizer.csv"
AZURE_TRACE_FILE = "traces/azure_conv_2023.csv"
TRACE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass
class Workload:
    """One row per request. `timestamps` (seconds from the first request) is set only for traces;
    `clipped` counts outputs cut down to `max_output`; `source` says where the numbers came from."""

    name: str
    prompt_len: np.ndarray
    output_len: np.ndarray
    timestamps: np.ndarray | None = None
    clipped: int = 0
    source: str = ""
    keys: np.ndarray | None = None  # row keys of text workloads: how a trained predictor finds its prompt
    clipped_rows: np.ndarray | None = None  # which rows' outputs were cut to max_output (None: none were)
    raised_rows: np.ndarray | None = None  # trace rows whose 0-token prompt or output is served as 1 (None: none)
    prefix_blocks: int = 0  # rows that carry shared-prefix block hashes (Mooncake's hash_ids)
    prefix: list | None = None  # each row's `Request.prefix` (the blocks it shares), None where none are

    def __post_init__(self):
        self.prompt_len = np.asarray(self.prompt_len, dtype=np.int64)
        self.output_len = np.asarray(self.output_len, dtype=np.int64)
        n = len(self.prompt_len)
        if self.prompt_len.ndim != 1 or self.output_len.shape != (n,):
            raise ConfigError(f"workload {self.name!r}: prompt_len ({self.prompt_len.shape}) and output_len "
                              f"({self.output_len.shape}) must be 1-D arrays of equal length")
        if n and self.prompt_len.min() < 1:
            raise ConfigError(f"workload {self.name!r}: every prompt_len must be >= 1, got {self.prompt_len.min()}")
        if n and self.output_len.min() < 1:
            raise ConfigError(f"workload {self.name!r}: every output_len must be >= 1, got {self.output_len.min()}")
        if self.timestamps is not None:
            self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
            if self.timestamps.shape != (n,):
                raise ConfigError(f"workload {self.name!r}: timestamps has shape {self.timestamps.shape}, "
                                  f"expected ({n},) like prompt_len")
            if n and not (np.isfinite(self.timestamps).all() and self.timestamps[0] >= 0
                          and (np.diff(self.timestamps) >= 0).all()):
                raise ConfigError(f"workload {self.name!r}: timestamps must be finite, >= 0 and non-decreasing")
        if self.keys is not None:
            self.keys = np.asarray(self.keys, dtype=object)
            if self.keys.shape != (n,):
                raise ConfigError(f"workload {self.name!r}: keys has shape {self.keys.shape}, expected ({n},)")
        if self.clipped < 0:
            raise ConfigError(f"workload {self.name!r}: clipped must be >= 0, got {self.clipped}")

    def __len__(self) -> int:
        return len(self.prompt_len)


# ---------------------------------------------------------------------------------------------- helpers

def _data_dir(data_dir) -> Path:
    return Path(DEFAULT_DATA_DIR if data_dir is None else data_dir).resolve()


def _check_options(max_output, limit) -> None:
    if max_output is not None and (isinstance(max_output, bool) or not isinstance(max_output, (int, np.integer))
                                   or max_output < 1):
        raise ConfigError(f"workload.max_output must be a positive integer or null, got {max_output!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
        raise ConfigError(f"workload.limit must be a non-negative integer or null, got {limit!r}")


def _finish(name, prompt, output, timestamps, max_output, limit, source, keys=None, raised=None) -> Workload:
    """Apply `limit` (first N rows) then clip outputs to `max_output`, counting what was clipped (`raised`: the
    rows whose 0 tokens were raised to 1, `at_least_one`)."""
    if limit is not None:
        prompt, output = prompt[:limit], output[:limit]
        timestamps = None if timestamps is None else timestamps[:limit]
        keys = None if keys is None else keys[:limit]
        raised = None if raised is None else raised[:limit]
    clipped, rows = 0, None
    if max_output is not None:
        rows = np.asarray(output) > max_output
        clipped = int(rows.sum())
        output = np.minimum(output, max_output)
    return Workload(name, prompt, output, timestamps, clipped, source, keys, rows,
                    raised_rows=raised if raised is not None and raised.any() else None)


def at_least_one(prompt: np.ndarray, output: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A trace's token counts with 0 raised to 1 (a request has a prompt and yields at least one token, as vLLM
    generates one before it can stop), and which rows were raised (counted in the run: `zero_length_rows`)."""
    raised = (prompt < 1) | (output < 1)
    return np.maximum(prompt, 1), np.maximum(output, 1), raised


def _read_json(path: Path):
    try:
        with open(require_file(path), encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} line {e.lineno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: byte at offset {e.start} is not UTF-8 text") from None


MAX_TOKENS = 10**9  # no prompt or output is this long; a count beyond it is a corrupt row, not a request


def _nonneg_int(text: str, where: str, field: str) -> int:
    try:
        v = int(text)
    except (TypeError, ValueError):
        v = -1
    if v < 0:
        raise ConfigError(f"{where}: {field} {_short(text)} is not a non-negative integer")
    if v > MAX_TOKENS:
        raise ConfigError(f"{where}: {field} {_short(text)} is more than {MAX_TOKENS:,} tokens")
    return v


def _short(text, limit: int = 40) -> str:
    """A field as an error line quotes it: its repr, cut to `limit` characters."""
    r = repr(text)
    return r if len(r) <= limit else r[:limit] + f"... ({len(str(text)):,} characters)"


# ---------------------------------------------------------------------------------------------- alpaca

def alpaca_prompt_lengths() -> np.ndarray:
    """SmolLM2-tokenizer counts of the real Alpaca prompts that have text (instruction, plus a newline and
    the input when there is one), from the committed table `tables/alpaca_rows.csv`."""
    return _text_table("alpaca_rows")["prompt_tokens"].to_numpy(np.int64).clip(1)


def load_alpaca(data_dir=None, split: str = "train", length_field: str = "L_gt", max_output: int | None = None,
                limit: int | None = None, seed: int = 0) -> Workload:
    """Alpaca output lengths (Llama tokens) from `alpaca/alpaca_{split}_10k_lengths.json`: `L_gt` is the
    reference answer, `L_t0.0`...`L_t0.7` what Vicuna-7B generated at that temperature. Lengths of 0 become 1.

    These files carry no prompt lengths (and the rows' text is not in the shared data), so each request's
    prompt length is drawn (seeded by `seed`) from the tokenizer counts of the 1,334 Alpaca prompts that
    are (`alpaca_prompt_lengths`): the right distribution, not the row's own prompt.
    """
    _check_options(max_output, limit)
    if split not in ALPACA_SPLITS:
        raise ConfigError(f"workload.split must be one of {', '.join(ALPACA_SPLITS)}; got {split!r}")
    if length_field not in ALPACA_FIELDS:
        raise ConfigError(f"workload.length_field must be one of {', '.join(ALPACA_FIELDS)}; got {length_field!r}")
    d = _data_dir(data_dir)
    path = d / f"alpaca/alpaca_{split}_10k_lengths.json"
    rows = _read_json(path)
    output = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        v = row.get(length_field) if isinstance(row, dict) else None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{path} item {i}: {length_field} {v!r} is not a non-negative integer")
        output[i] = max(v, 1)
    pool = alpaca_prompt_lengths()
    prompt = np.random.default_rng(seed).choice(pool, size=len(output), replace=True)
    source = (f"{path} field {length_field}; prompt lengths sampled (seed {seed}) from SmolLM2-tokenizer "
              f"counts of {len(pool)} Alpaca prompts")
    return _finish("alpaca", prompt, output, None, max_output, limit, source)


def _prompt_mask(prompt_tokens, max_prompt) -> np.ndarray:
    """Rows whose prompt is at most `workload.max_prompt` tokens (every row when it is null), checked."""
    prompt_tokens = np.asarray(prompt_tokens)
    if max_prompt is None:
        return np.ones(len(prompt_tokens), dtype=bool)
    if isinstance(max_prompt, bool) or not isinstance(max_prompt, (int, np.integer)) or max_prompt < 1:
        raise ConfigError(f"workload.max_prompt must be a positive integer or null, got {max_prompt!r}")
    return prompt_tokens <= int(max_prompt)


# ---------------------------------------------------------------------------------------------- sharegpt

def load_sharegpt(data_dir=None, max_output: int | None = None, limit: int | None = None,
                  max_prompt: int | None = None) -> Workload:
    """ShareGPT prompt/output token counts (Llama-2 tokenizer). Zero counts become 1. `max_prompt` drops rows
    with longer prompts (as serving benchmarks filter ShareGPT, and as a model's context window demands)."""
    _check_options(max_output, limit)
    path = require_file(_data_dir(data_dir) / SHAREGPT_FILE)
    cols = ("num_prefill_tokens", "num_decode_tokens")
    prompt, output = [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not set(cols) <= set(reader.fieldnames):
            raise ConfigError(f"{path} line 1: header must include columns {', '.join(cols)}; "
                              f"got {reader.fieldnames}")
        for row in csv_rows(path, reader):
            where = f"{path.name} line {reader.line_num}"
            prompt.append(max(1, _nonneg_int(row[cols[0]], where, cols[0])))
            output.append(max(1, _nonneg_int(row[cols[1]], where, cols[1])))
    prompt, output = np.array(prompt, dtype=np.int64), np.array(output, dtype=np.int64)
    keep = _prompt_mask(prompt, max_prompt)
    if not keep.any():
        raise ConfigError(f"workload.max_prompt={max_prompt} keeps none of {path.name}'s rows")
    prompt, output = prompt[keep], output[keep]
    return _finish("sharegpt", prompt, output, None, max_output, limit, f"{path} (Llama-2 tokenizer counts)")


# ---------------------------------------------------------------------------------------------- text tables

TABLES = Path(__file__).resolve().parent / "tables"
OWN_LENGTHS = "smollm2_greedy"  # SmolLM2's own greedy answer lengths (s3exec.lab.own_lengths writes the table)
OWN_SOURCES = ("alpaca_rows", "alpaca_eval")  # its prompts: Alpaca's and AlpacaEval's instructions
OWN_EVAL_GENERATOR = "Meta-Llama-3-8B-Instruct"  # any AlpacaEval file: all hold the same 805 instructions
TEXT_SOURCES = {
    "sharegpt_pairs": "sharegpt/sharegpt_v3_firstturn_pairs.jsonl",
    "alpaca_eval": "alpaca_eval/<generator>.model_outputs.json",
    "alpaca_rows": " and ".join(ALPACA_TEXT_FILES),
    OWN_LENGTHS: "SmolLM2-135M-Instruct's greedy answers to Alpaca and AlpacaEval prompts (s3exec.lab.own_lengths)",
}


def _text_table(name: str):
    import pandas as pd

    path = TABLES / f"{name}.csv"
    if not path.is_file():
        how = "python -m s3exec.lab.own_lengths" if name == OWN_LENGTHS else "python -m s3sim.lab.token_counts"
        raise ConfigError(f"token-count table {path} is missing: rebuild it with `{how}`")
    note(path)
    return pd.read_csv(path, dtype={"key": str, "prompt_hash": str})


def load_text(name: str, generator: str | None = None, split: str = "all", split_seed: int = 0,
              test_frac: float = 0.2, max_prompt: int | None = None, max_output: int | None = None,
              limit: int | None = None) -> Workload:
    """A text data set's prompt/response token counts (SmolLM2 tokenizer; see `s3sim/lab/token_counts.py`), keyed by
    row so that the trained predictor can find each prompt. `split` keeps the rows on one side of the
    predictor's seeded split by prompt (`train`, `test`, or `all`); `generator` picks the AlpacaEval model;
    `max_prompt` drops rows with longer prompts (as serving benchmarks filter ShareGPT)."""
    from s3sim.predictor.split import check_split, holdout_mask, select

    _check_options(max_output, limit)
    check_split(split_seed, test_frac, prefix="workload.")  # before the table is read
    df = _text_table(name)
    if name == "alpaca_eval":
        names = sorted(df["generator"].unique())
        if generator not in names:
            raise ConfigError(f"workload.generator must be one of {', '.join(names)}; got {generator!r}")
        df = df[df["generator"] == generator]
        keys = df["key"].to_numpy(object)
    elif generator is not None:
        raise ConfigError(f"workload.generator only applies to alpaca_eval, not {name!r}")
    else:
        keys = (df["source"] + ":" + df["key"] if "source" in df else df["key"]).to_numpy(object)
    keep = select(holdout_mask(df["prompt_hash"], split_seed, test_frac), split)
    keep &= _prompt_mask(df["prompt_tokens"].to_numpy(), max_prompt)
    df, keys = df[keep], keys[keep]
    src = TEXT_SOURCES[name].replace("<generator>", str(generator))
    return _finish(name if generator is None else f"{name}:{generator}",
                   df["prompt_tokens"].to_numpy(np.int64).clip(1), df["output_tokens"].to_numpy(np.int64).clip(1),
                   None, max_output, limit, f"{src} (SmolLM2 tokenizer counts, split {split})", keys)


def texts_by_key(name: str, generator: str | None = None, data_dir=None) -> dict[str, str]:
    """Every prompt text of a text workload, by the row key its table uses (`smollm2_greedy` keys are
    `<data set>:<row key>` of the data sets its prompts were drawn from)."""
    from s3sim.workload.text import read_pairs

    if name not in TEXT_SOURCES:
        raise ConfigError(f"workload {name!r} has no prompt text; text workloads: {', '.join(TEXT_SOURCES)}")
    d = _data_dir(data_dir)
    if name == OWN_LENGTHS:
        return {f"{src}:{k}": t for src in OWN_SOURCES
                for k, t in texts_by_key(src, OWN_EVAL_GENERATOR if src == "alpaca_eval" else None, d).items()}
    if name == "alpaca_rows":
        return {f"{Path(rel).stem}:{p.key}": p.prompt for rel in ALPACA_TEXT_FILES for p in read_pairs(d / rel)}
    rel = TEXT_SOURCES[name].replace("<generator>", str(generator))
    return {p.key: p.prompt for p in read_pairs(d / rel)}


def load_prompts(name: str, keys, generator: str | None = None, data_dir=None) -> list[str]:
    """The prompt text of each key of a text workload (what a live predictor or the executor reads)."""
    text = texts_by_key(name, generator, data_dir)
    missing = [k for k in keys if k not in text]
    if missing:
        raise ConfigError(f"{name}: no prompt for row {missing[0]!r} in the data ({len(missing)} missing)")
    return [text[k] for k in keys]


# ---------------------------------------------------------------------------------------------- traces

_EPOCH = datetime(1970, 1, 1)


def _parse_time(text: str) -> tuple[int, float] | None:
    """(whole seconds, fraction) for a float string or a 'YYYY-MM-DD HH:MM:SS[.fraction]' stamp (any number of
    fraction digits; Azure writes 7, which older `datetime` parsers reject). Kept apart so that epoch-sized
    seconds do not swallow the sub-microsecond digits. None when the text is neither."""
    try:
        v = float(text)
        return (0, v) if math.isfinite(v) else None
    except ValueError:
        pass
    whole, _, frac = text.strip().partition(".")
    if frac and not frac.isdigit():
        return None
    try:
        delta = datetime.fromisoformat(whole) - _EPOCH  # naive: no time-zone or DST shifts
    except (ValueError, TypeError):
        return None
    return delta.days * 86400 + delta.seconds, (int(frac) / 10 ** len(frac) if frac else 0.0)


def load_trace(path=None, time_scale: float = 1.0, max_output: int | None = None, limit: int | None = None,
               data_dir=None, format: str = "azure", columns: dict | None = None,
               time_unit: str | None = None, hash_block_tokens: int | None = None) -> Workload:
    """A request trace in the Azure LLM inference format (header `TIMESTAMP,ContextTokens,GeneratedTokens`;
    TIMESTAMP is a date-time stamp or plain seconds). Defaults to the Azure conversation trace.

    Timestamps become seconds since the earliest row, times `time_scale` (0.5 replays twice as fast). Rows
    out of time order are stably sorted by time (and `limit` keeps the first N after sorting). Token counts of
    0 become 1 (`at_least_one`), and the rows that had one are counted.
    """
    _check_options(max_output, limit)
    if isinstance(time_scale, bool) or not isinstance(time_scale, Real) or not (
            math.isfinite(time_scale) and time_scale > 0):
        raise ConfigError(f"workload.time_scale must be a positive finite number, got {time_scale!r}")
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"workload.path: no trace file {str(path)!r}")
    if format != "mooncake" and hash_block_tokens is not None:
        raise ConfigError(f"workload.hash_block_tokens applies to workload.format=mooncake (its hash_ids), not {format}")
    if format == "azure" and (columns or time_unit):
        raise ConfigError("workload.columns and workload.time_unit apply to workload.format=columns (or burstgpt, "
                          "mooncake), not azure, whose columns and times are fixed")
    if format != "azure":  # BurstGPT, Mooncake or named columns
        if path is None:
            raise ConfigError(f"workload.format={format} needs workload.path (the log file)")
        unit = 512 if hash_block_tokens is None else hash_block_tokens
        if isinstance(unit, bool) or not isinstance(unit, int) or unit < 1:
            raise ConfigError(f"workload.hash_block_tokens must be a positive integer, got {unit!r}")
        t, p, o, hashes = read_log(path, format, columns, time_unit, unit)
        p, o, raised = at_least_one(np.asarray(p, dtype=np.int64), np.asarray(o, dtype=np.int64))
        w = _finish("trace", p, o, t * time_scale, max_output, limit, f"{path} ({format}, time_scale {time_scale})",
                    raised=raised)
        hashes = hashes[:len(w.prompt_len)]
        w.prefix_blocks = sum(bool(h) for h in hashes)
        if w.prefix_blocks:
            chains = HashChains()
            w.prefix = [(unit, chains.chain(h)) if h else None for h in hashes]
        return w
    path = require_file(Path(path) if path is not None else _data_dir(data_dir) / AZURE_TRACE_FILE)
    whole, frac, prompt, output = [], [], [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(csv_rows(path, reader), [])]
        if tuple(header[:3]) != TRACE_COLUMNS:
            raise ConfigError(f"{path} line 1: header must start with {','.join(TRACE_COLUMNS)}; "
                              f"got {','.join(header) or 'an empty file'}")
        for row in csv_rows(path, reader):
            if not row:
                continue
            where = f"{path.name} line {reader.line_num}"
            if len(row) < 3:
                raise ConfigError(f"{where}: expected 3 fields {','.join(TRACE_COLUMNS)}, got {len(row)}")
            t = _parse_time(row[0])
            if t is None:
                raise ConfigError(f"{where}: TIMESTAMP {_short(row[0])} is neither seconds nor 'YYYY-MM-DD HH:MM:SS.f'")
            if whole and (t[0] == 0) != (whole[0] == 0):
                raise ConfigError(f"{where}: TIMESTAMP {_short(row[0])} mixes plain seconds and date-time stamps")
            whole.append(t[0])
            frac.append(t[1])
            prompt.append(_nonneg_int(row[1], where, "ContextTokens"))  # 0 is served as 1 (`at_least_one`)
            output.append(_nonneg_int(row[2], where, "GeneratedTokens"))
    if not whole:
        raise ConfigError(f"{path}: no requests after the header line")
    w, fr = np.array(whole, dtype=np.int64), np.array(frac, dtype=np.float64)
    order = np.lexsort((fr, w))  # stable: equal times keep file order
    w, fr = w[order], fr[order]
    t = ((w - w[0]) + (fr - fr[0])) * time_scale if len(w) else fr
    p, o, raised = at_least_one(np.array(prompt, dtype=np.int64)[order], np.array(output, dtype=np.int64)[order])
    return _finish("trace", p, o, t, max_output, limit, f"{path} (time_scale {time_scale})", raised=raised)


# ---------------------------------------------------------------------------------------------- dispatch

LOADERS = {"alpaca": load_alpaca, "sharegpt": load_sharegpt, "trace": load_trace,
           **{name: load_text for name in TEXT_SOURCES}}


def load_workload(name: str, data_dir=None, path=None, **kw) -> Workload:
    """Load a workload by name: `alpaca`, `sharegpt`, `trace` (`path` picks the trace file; default the
    Azure conversation trace), or a text data set's token counts (`sharegpt_pairs`, `alpaca_eval`,
    `alpaca_rows`). Extra keywords go to the loader."""
    if name not in LOADERS:
        raise ConfigError(f"workload.name must be one of {', '.join(LOADERS)}; got {name!r}")
    loader = LOADERS[name]
    allowed = [p for p in inspect.signature(loader).parameters if p not in ("data_dir", "path", "name")]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ConfigError(f"workload option {unknown[0]!r} does not apply to {name!r}; "
                          f"valid options: {', '.join(allowed)}")
    if name == "trace":
        return load_trace(path, data_dir=data_dir, **kw)
    if path is not None:
        raise ConfigError(f"workload.path is only used by the trace workload, not {name!r}")
    if loader is load_text:
        return load_text(name, **kw)
    return loader(data_dir, **kw)
