"""Gather every run under a directory (a Hydra multirun, or several) into one table.

A run is a directory holding `resolved_config.yaml`, `summary.csv` or `failed.txt`. Each becomes one
row: its status (`finished`; `failed`; `invalid` for a summary that cannot be read, is not one row, or
lacks the summary's columns; or `incomplete` for a run still going or killed before it could say), the
error line of a failed or invalid one, the summary's numbers, and every field of the resolved config as
a dotted column (`predictor.accuracy`). Files are written atomically, so a sweep still running (or one
that crashed) yields a table of what is there, never a half-read row.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import yaml

from s3sim.core.errors import ConfigError
from s3sim.runner import CONFIG, FAILED, SUMMARY

STATUSES = ("finished", "failed", "invalid", "incomplete")
REQUIRED = ("policy", "num_requests", "request_throughput")  # a summary without them is not one
KEY_COLUMNS = ("policy", "num_requests", "request_throughput", "ttft_p50", "tpot_p50", "e2e_latency_p99",
               "goodput")  # what the command prints, beside the config fields that differ between runs


def flatten(node, prefix: str = "") -> dict:
    """Nested mappings to dotted keys; lists become their text."""
    out = {}
    for k, v in (node or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v) if isinstance(v, list) else v
    return out


def run_dirs(root: Path) -> list[Path]:
    """Every run directory under `root`, in natural order (a sweep's 2_... before 10_...)."""
    found = {p.parent for name in (CONFIG, SUMMARY, FAILED) for p in root.rglob(name)}
    return sorted(found, key=lambda d: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(d))])


def read_summary(path: Path) -> tuple[dict | None, str | None]:
    """A summary's one row, or None and why it is not a summary."""
    try:
        table = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        return None, f"{SUMMARY} cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if len(table) != 1:
        return None, f"{SUMMARY} has {len(table)} rows, not one"
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        return None, f"{SUMMARY} lacks the column {missing[0]!r}: not a run's summary"
    return table.iloc[0].to_dict(), None


def read_run(d: Path, root: Path) -> dict:
    row = {"run_dir": str(d.relative_to(root)) or ".", "status": "incomplete", "error": None}
    if (d / SUMMARY).is_file():
        summary, why = read_summary(d / SUMMARY)
        if summary is None:
            row.update(status="invalid", error=why)
        else:
            row["status"] = "finished"
            row.update(summary)
    elif (d / FAILED).is_file():
        row["status"] = "failed"
        try:
            lines = (d / FAILED).read_text(errors="replace").splitlines()
        except OSError as e:
            lines = [f"{FAILED} cannot be read ({e.strerror})"]
        row["error"] = lines[0] if lines else "failed"
    if (d / CONFIG).is_file():
        try:
            config = yaml.safe_load((d / CONFIG).read_text())
            if not isinstance(config, dict):
                raise ValueError("not a mapping")
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            row.update(status="invalid" if row["status"] == "finished" else row["status"],
                       error=row["error"] or f"{CONFIG} cannot be read ({first})")
            return row
        for k, v in flatten(config).items():
            row.setdefault(k, v)
    return row


def collect(root) -> pd.DataFrame:
    """One row per run under `root`, finished or not (see the module doc)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"no such results directory: {root}")
    dirs = run_dirs(root)
    if not dirs:
        raise ConfigError(f"no runs under {root}: no {SUMMARY}, {FAILED} or {CONFIG} there")
    return pd.DataFrame([read_run(d, root) for d in dirs])


def short_table(table: pd.DataFrame) -> pd.DataFrame:
    """What a person reads: the run, its status, the key metrics and the config fields that differ between
    runs (what the sweep varied); the written table keeps every column."""
    config = [c for c in table.columns if "." in c or c in ("seed", "max_seq_len", "num_requests")]
    varied = [c for c in config if c not in KEY_COLUMNS and c != "policy.name" and table[c].astype(str).nunique() > 1]
    keys = [c for c in KEY_COLUMNS if c in table.columns]
    return table[["run_dir", "status", *varied, *keys]]


def status_line(table: pd.DataFrame) -> str:
    """`N runs: a finished, b failed, c invalid, d incomplete`, then one line per run that did not finish."""
    counts = table.status.value_counts()
    lines = [f"{len(table)} runs: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)]
    for _, r in table[table.status != "finished"].iterrows():
        lines.append(f"  {r.status}: {r.run_dir}" + (f": {r.error}" if isinstance(r.error, str) else ""))
    return "\n".join(lines)
