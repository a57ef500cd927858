"""Gather every run's summary.csv under a directory (a Hydra multirun) into one table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from s3sim.errors import ConfigError


def collect(root) -> pd.DataFrame:
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"no such results directory: {root}")
    rows = []
    for summary in sorted(root.rglob("summary.csv")):
        df = pd.read_csv(summary)
        df.insert(0, "run_dir", str(summary.parent.relative_to(root)))
        rows.append(df)
    if not rows:
        raise ConfigError(f"no summary.csv under {root}: nothing has finished there")
    return pd.concat(rows, ignore_index=True)
