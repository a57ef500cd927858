"""Request logs in other formats than Azure's: BurstGPT, Mooncake-style JSONL, and any CSV or JSONL whose
columns are named (`workload.format=columns`), so a user's own log replays without editing.

* ``burstgpt``: CSV with `Timestamp` (seconds), `Request tokens`, `Response tokens` (and `Model`, `Total
  tokens`, `Log Type`, which are not needed).
* ``mooncake``: JSONL rows with `timestamp` (milliseconds), `input_length`, `output_length` and `hash_ids`
  (the prompt's block hashes, one per `workload.hash_block_tokens` tokens: 512 in Mooncake's traces). They say
  which prompt blocks requests share (`s3sim.workload.prefix`), which `policy=vllm` with
  `policy.prefix_caching=true` reuses; rows that carry them are counted in the summary's `prefix_blocks`.
* ``columns``: `workload.columns` names the timestamp, prompt-token and output-token fields, and
  `workload.time_unit` says whether timestamps are seconds or milliseconds.

Rows are sorted stably by time, timestamps become seconds from the earliest row times `time_scale`, and a
token count of 0 becomes 1, as for the Azure format. Every bad row is one line naming its file and line.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.workload.files import csv_rows, require_file
from s3sim.workload.prefix import check_hash_ids
from s3sim.workload.text import json_lines

FORMATS = ("azure", "burstgpt", "mooncake", "columns")
TIME_UNITS = {"s": 1.0, "ms": 1e-3}
PRESETS = {  # format -> (timestamp, prompt tokens, output tokens, time unit)
    "burstgpt": ("Timestamp", "Request tokens", "Response tokens", "s"),
    "mooncake": ("timestamp", "input_length", "output_length", "ms"),
}


def _rows(path: Path):
    """(line number, dict) of a CSV file with a header, or of a JSONL file (chosen by the first character)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: byte at offset {e.start} is not UTF-8 text") from None
    if text.lstrip().startswith("{"):
        yield from json_lines(text, path.name)
        return
    if text.lstrip().startswith("["):  # one JSON array of request objects (as some tools export a log)
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: a JSON array that does not parse (line {e.lineno}: {e.msg})") from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ConfigError(f"{path.name} item {i + 1}: expected a JSON object per request, got "
                                  f"{type(row).__name__}")
            yield i + 1, row
        return
    reader = csv.DictReader(text.splitlines())
    for row in csv_rows(path, reader):
        yield reader.line_num, row


def _number(value, where: str, field: str, integer: bool) -> float:
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{where}: {field} is missing or not a number ({value!r})")
    try:
        v = float(value)
        if integer:  # "12" or 12.0 (logs exported from pandas write floats), not 12.5; exact below 2^53
            if not (math.isfinite(v) and v == int(v)):
                raise ValueError
            v = int(v)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}: {field} {str(value)[:40]!r} is not "
                          f"{'a non-negative integer' if integer else 'a number'}") from None
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"{where}: {field} {str(value)[:40]!r} must be finite and >= 0")
    if integer and v > 10**9:
        raise ConfigError(f"{where}: {field} {str(value)[:40]!r} is more than 1,000,000,000 tokens")
    return v


def read_log(path, fmt: str, columns: dict | None = None, time_unit: str | None = None,
             hash_block_tokens: int = 512):
    """(seconds, prompt tokens, output tokens, each row's `hash_ids` or None) of a log, sorted by time."""

    if fmt not in PRESETS and fmt != "columns":
        raise ConfigError(f"workload.format '{fmt}' is unknown; valid: {', '.join(FORMATS)}")
    if fmt == "columns":
        columns = dict(columns or {})
        missing = [k for k in ("timestamp", "prompt", "output") if not columns.get(k)]
        if missing:
            raise ConfigError(f"workload.format=columns needs workload.columns.{missing[0]} (the name of that field "
                              f"in the file); give timestamp, prompt and output")
        ts_col, p_col, o_col = columns["timestamp"], columns["prompt"], columns["output"]
        unit = time_unit or "s"
    else:
        if columns:
            raise ConfigError(f"workload.columns applies to workload.format=columns, not {fmt}")
        ts_col, p_col, o_col, unit = PRESETS[fmt]
        unit = time_unit or unit
    if unit not in TIME_UNITS:
        raise ConfigError(f"workload.time_unit '{unit}' is unknown; valid: {', '.join(TIME_UNITS)}")
    path = require_file(Path(path))
    times, prompt, output, hashes = [], [], [], []
    for n, row in _rows(path):
        where = f"{path.name} line {n}"
        missing = [c for c in (ts_col, p_col, o_col) if c not in row]
        if missing:
            raise ConfigError(f"{where}: no field {missing[0]!r}; it has {', '.join(map(str, list(row)[:8]))}")
        times.append(_number(row[ts_col], where, ts_col, integer=False) * TIME_UNITS[unit])
        prompt.append(int(_number(row[p_col], where, p_col, integer=True)))  # 0 is served as 1 (`load_trace`)
        output.append(int(_number(row[o_col], where, o_col, integer=True)))
        h = row.get("hash_ids") if fmt == "mooncake" else None  # only Mooncake's logs say what they hash
        hashes.append(None if h is None else check_hash_ids(h, max(1, prompt[-1]), hash_block_tokens, where))
    if not times:
        raise ConfigError(f"{path}: no requests in it")
    t = np.array(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    return (t[order] - t[order][0], np.array(prompt)[order], np.array(output)[order],
            [hashes[i] for i in order.tolist()])
