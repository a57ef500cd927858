"""Gather every run under a directory (a Hydra multirun, or several) into one table.

A run is a directory holding `resolved_config.yaml`, `summary.csv` or `failed.txt`. Each becomes one
row: its status (`finished`, `failed`, or `incomplete` for a run still going or killed before it could
say), the error line of a failed one, the summary's numbers, and every field of the resolved config as
a dotted column (`predictor.accuracy`). Files are written atomically, so a sweep still running (or one
that crashed) yields a table of what is there, never a half-read row.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from s3sim.core.errors import ConfigError
from s3sim.runner import CONFIG, FAILED, SUMMARY

STATUSES = ("finished", "failed", "incomplete")


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
    found = {p.parent for name in (CONFIG, SUMMARY, FAILED) for p in root.rglob(name)}
    return sorted(found)


def read_run(d: Path, root: Path) -> dict:
    row = {"run_dir": str(d.relative_to(root)) or ".", "status": "incomplete", "error": None}
    if (d / SUMMARY).is_file():
        row["status"] = "finished"
        row.update(pd.read_csv(d / SUMMARY).iloc[0].to_dict())
    elif (d / FAILED).is_file():
        row["status"] = "failed"
        row["error"] = (d / FAILED).read_text().splitlines()[0] if (d / FAILED).stat().st_size else "failed"
    if (d / CONFIG).is_file():
        for k, v in flatten(yaml.safe_load((d / CONFIG).read_text())).items():
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


def status_line(table: pd.DataFrame) -> str:
    """`N runs: a finished, b failed, c incomplete`, then one line per run that did not finish."""
    counts = table.status.value_counts()
    lines = [f"{len(table)} runs: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)]
    for _, r in table[table.status != "finished"].iterrows():
        lines.append(f"  {r.status}: {r.run_dir}" + (f": {r.error}" if isinstance(r.error, str) else ""))
    return "\n".join(lines)
