"""A recorded vLLM run's folder, read and checked: `meta.json`, `requests.jsonl` and, where recorded,
`timeseries.csv` (the per-second series the plot draws), each file's format first, then the files against each
other (`s3sim.validation.checks`)."""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.core.errors import ConfigError
from s3sim.validation import checks
from s3sim.workload.text import json_lines


META, REQUESTS, TIMESERIES, PEER = "meta.json", "requests.jsonl", "timeseries.csv", "llmservingsim_summary.txt"
TIMES = ("queued_ts", "first_token_ts", "last_token_ts")
REQUEST_FIELDS = ("input_toks", "output_toks") + TIMES  # a row whose TIMES are all null: a request not served
# read when every row has them: the consistency checks, and TTFT's split at `scheduled_ts` (first scheduled)
OPTIONAL_FIELDS = ("request_id", "arrival_time", "scheduled_ts")
TIMESERIES_FIELDS = ("t", "running", "waiting", "kv_cache_pct")


# ---- reading a run ---------------------------------------------------------------------------------------
@dataclass
class Run:
    dir: Path  # the folder with meta.json, requests.jsonl and, if recorded, timeseries.csv
    meta: dict
    requests: pd.DataFrame  # REQUEST_FIELDS, in file order, with each row's `line` and OPTIONAL_FIELDS if present
    timeseries: pd.DataFrame  # TIMESERIES_FIELDS; no rows where the run has no timeseries.csv
    has_timeseries: bool = True  # False: the run folder holds no timeseries.csv (it feeds the plot alone)

    @property
    def name(self) -> str:
        return (self.dir.parent if self.dir.name == "run" else self.dir).name


def find_run_dir(path: str | Path) -> Path:
    """The folder holding the run's files: `path` itself, or `path/run`."""
    p = Path(path)
    if p.is_file():
        raise ConfigError(f"run folder {str(p)!r} is a file: give the folder that holds {META} and {REQUESTS} "
                          f"(and {TIMESERIES} where recorded)")
    if not p.is_dir():
        raise ConfigError(f"run folder {str(p)!r} does not exist")
    if not (p / META).exists() and (p / "run" / META).exists():
        p = p / "run"
    for name in (META, REQUESTS):
        if not (p / name).is_file():
            raise ConfigError(f"{str(p / name)!r}: no such file (a run folder holds {META}, {REQUESTS} and, where "
                              f"recorded, {TIMESERIES})")
    return p


def beside_run(run_dir: Path, name: str, folder: bool = False) -> Path | None:
    """`name` (a file, or a folder with `folder`) in the run folder, else beside it (next to the folder as given,
    else next to where a link to it points), where the shared runs keep `profile/`, `config.json` and the peer's
    summary next to `run/`; None where none has it. One in the run folder and another beside it is refused: which
    one the run belongs to is not for the replay to guess."""
    here = Path(run_dir).absolute()
    found = [p for p in dict.fromkeys((here / name, here.parent / name, here.resolve().parent / name))
             if (p.is_dir() if folder else p.is_file())]
    if len(found) > 1 and len({p.resolve() for p in found}) > 1:
        raise ConfigError(f"{str(found[0])!r} and {str(found[1])!r}: two {name} for one run; keep the run's own")
    return found[0] if found else None


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{str(path)!r}: cannot be read ({e})") from None


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{str(path)!r}: invalid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{str(path)!r}: expected a JSON object at the top level")
    for key in ("engine_kwargs", "kv_cache", "hardware"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise ConfigError(f"{str(path)!r}: {key} must be an object, got {meta[key]!r}")
    resolved = meta.get("resolved_config")
    if resolved is not None and not isinstance(resolved, dict):
        raise ConfigError(f"{str(path)!r}: resolved_config must be an object (vLLM's resolved settings by section), "
                          f"got {resolved!r:.60}")
    for section, conf in (resolved or {}).items():
        if section.endswith("_config") and conf is not None and not isinstance(conf, dict):
            raise ConfigError(f"{str(path)!r}: resolved_config.{section} must be an object or null, got {conf!r:.60}")
    if not isinstance(meta.get("engine_kwargs"), dict):
        raise ConfigError(f"{str(path)!r}: missing engine_kwargs (the engine's max_num_seqs, max_num_batched_tokens)")
    return meta


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


MAX_TOKENS = 2**31 - 1  # a request's prompt or output: beyond any model's context, and a sum that fits int64


def read_requests(path: Path) -> pd.DataFrame:
    """The served rows of requests.jsonl, checked; `attrs["unserved"]`: the lines of the rows whose three times are
    all null (a request the run recorded and did not serve: vLLM returned no metrics for it), left out of the
    replay and of both sides' metrics, as the peer leaves them out (`unserved_note`); `attrs["lacking"]`: how many
    rows lack each optional field."""
    rows, unserved = [], []
    for lineno, row in json_lines(read_text(path), repr(str(path))):
        where = f"{str(path)!r} line {lineno}"
        for f in REQUEST_FIELDS:
            if f not in row:
                raise ConfigError(f"{where}: missing field {f!r}")
        served = any(row[f] is not None for f in TIMES)  # else all null: not served (a few null is damage)
        for f in (REQUEST_FIELDS if served else REQUEST_FIELDS[:2]):
            if not is_number(row[f]):
                raise ConfigError(f"{where}: field {f!r} must be a number, got {row[f]!r}")
        for f in ("input_toks", "output_toks"):
            if row[f] != int(row[f]) or not 1 <= row[f] <= MAX_TOKENS:
                raise ConfigError(f"{where}: field {f!r} must be a positive integer of at most {MAX_TOKENS:,} tokens, "
                                  f"got {row[f]!r}")
        if not served:
            unserved.append(lineno)
            continue
        if not row["queued_ts"] <= row["first_token_ts"] <= row["last_token_ts"]:
            raise ConfigError(f"{where}: expected queued_ts <= first_token_ts <= last_token_ts, got "
                              f"{row['queued_ts']}, {row['first_token_ts']}, {row['last_token_ts']}")
        checks.check_request_row(row, where)
        if "scheduled_ts" in row and (not is_number(row["scheduled_ts"])
                                      or not row["queued_ts"] <= row["scheduled_ts"] <= row["first_token_ts"]):
            raise ConfigError(f"{where}: field 'scheduled_ts' must be a number within queued_ts..first_token_ts "
                              f"({row['queued_ts']}..{row['first_token_ts']}), got {row['scheduled_ts']!r}")
        if "arrival_time" in row and not is_number(row["arrival_time"]):
            raise ConfigError(f"{where}: field 'arrival_time' must be a number (epoch seconds), got "
                              f"{row['arrival_time']!r}")
        rows.append({"line": lineno, **{f: row[f] for f in REQUEST_FIELDS + OPTIONAL_FIELDS if f in row}})
    if not rows:
        raise ConfigError(f"{str(path)!r}: no requests" + (f" served (the {len(unserved)} rows' {', '.join(TIMES)} "
                                                            "are null)" if unserved else ""))
    optional = [f for f in OPTIONAL_FIELDS if all(f in r for r in rows)]
    df = pd.DataFrame(rows, columns=["line", *REQUEST_FIELDS, *optional])
    df.attrs["lacking"] = {f: sum(f not in r for r in rows) for f in OPTIONAL_FIELDS if f not in optional}
    df.attrs["unserved"] = unserved
    return df.astype({"input_toks": np.int64, "output_toks": np.int64})


def unserved_note(req: pd.DataFrame) -> str:
    """A note on the requests `read_requests` left out as not served ('' where there are none)."""
    unserved = req.attrs.get("unserved", [])
    if not unserved:
        return ""
    lines = ", ".join(map(str, unserved[:5])) + (", ..." if len(unserved) > 5 else "")
    many = len(unserved) > 1
    return (f"note: {len(unserved)} of the {len(req) + len(unserved)} requests of {REQUESTS} "
            f"{'were' if many else 'was'} not served (null times: line{'s' if many else ''} {lines}): left out of the "
            "replay and of both sides' metrics, as the peer leaves them out; the replay serves the others as they "
            "arrived, without any load the unserved ones put on the engine")


def read_timeseries(path: Path) -> pd.DataFrame:
    reader = csv.reader(read_text(path).splitlines())
    header = next(reader, None)
    if header is None:
        raise ConfigError(f"{str(path)!r}: empty file (expected a header {','.join(TIMESERIES_FIELDS)},...)")
    header = [h.strip() for h in header]
    missing = [f for f in TIMESERIES_FIELDS if f not in header]
    if missing:
        raise ConfigError(f"{str(path)!r}: missing column {missing[0]!r} (columns: {','.join(header)})")
    cols = [header.index(f) for f in TIMESERIES_FIELDS]
    rows = []
    for lineno, rec in enumerate(reader, 2):
        if not rec:
            continue
        row = []
        for f, i in zip(TIMESERIES_FIELDS, cols):
            cell = rec[i] if i < len(rec) else ""
            try:
                v = float(cell)
            except ValueError:
                raise ConfigError(f"{str(path)!r} line {lineno}: column {f!r} must be a number, got {cell!r}") from None
            if not math.isfinite(v):
                raise ConfigError(f"{str(path)!r} line {lineno}: column {f!r} must be finite, got {cell!r}")
            if f != "t" and not 0 <= v <= (100 if f == "kv_cache_pct" else math.inf):
                raise ConfigError(f"{str(path)!r} line {lineno}: column {f!r} must be "
                                  + ("a percentage, 0 to 100" if f == "kv_cache_pct" else "a count, >= 0")
                                  + f", got {cell!r}")
            row.append(v)
        if rows and not row[0] > rows[-1][0]:
            raise ConfigError(f"{str(path)!r} line {lineno}: t must grow from one row to the next, got {row[0]:g} "
                              f"after {rows[-1][0]:g}")
        rows.append(row)
    return pd.DataFrame(rows, columns=list(TIMESERIES_FIELDS), dtype=float)


def read_run(path: str | Path) -> Run:
    """The run's files, each read and checked, then checked against each other (`s3sim.validation.checks`)."""
    d = find_run_dir(path)
    recorded = os.path.lexists(d / TIMESERIES)  # a folder or a broken link there is read, and refused, as a file
    series = read_timeseries(d / TIMESERIES) if recorded else pd.DataFrame(columns=list(TIMESERIES_FIELDS), dtype=float)
    run = Run(d, read_meta(d / META), read_requests(d / REQUESTS), series, recorded)
    where = repr(str(d / META))
    checks.check_meta(run.meta, where)
    checks.check_requests(run.requests, run.meta, d / REQUESTS, where)
    checks.check_span_against_timeseries(run.requests, run.timeseries, d / REQUESTS, d / TIMESERIES,
                                         checks.recorded_duration(run.meta, where) is not None)
    return run
