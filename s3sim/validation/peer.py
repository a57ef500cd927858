"""Another simulator's summary beside a run (`llmservingsim_summary.txt`), read under validation.csv's metric
names, and left out where its real values are not this run's."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from s3sim.core.errors import ConfigError
from s3sim.validation.metrics import metric_name
from s3sim.validation.run_files import read_text


_PEER_ROW = re.compile(r"^\s*(TTFT|TPOT|Latency)\s+(Mean|Median|P\d+)\s+(\S+)\s+(\S+)\s+([-+]?[\d.]+)%\s*$", re.I)
_PEER_LAT = {"ttft": "ttft", "tpot": "tpot", "latency": "e2e_latency"}


def read_peer(path: Path) -> pd.DataFrame:
    """`llmservingsim_summary.txt` (rows like `TTFT Mean  65456.6  65820.2  +0.6%`) as
    `metric, real, peer_simulated, peer_error_pct`, with validation.csv's metric names."""
    rows = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        m = _PEER_ROW.match(line)
        if not m:
            continue
        lat, stat = _PEER_LAT[m[1].lower()], m[2].lower()
        stat = "p50" if stat == "median" else stat
        try:
            real, sim, err = float(m[3]), float(m[4]), float(m[5])
        except ValueError:
            raise ConfigError(f"{str(path)!r} line {lineno}: expected numbers, got {line.strip()!r}") from None
        rows.append((metric_name(f"{lat}_{stat}"), real, sim, err))
    if not rows:
        raise ConfigError(f"{str(path)!r}: no rows like 'TTFT Mean  <vLLM>  <Sim>  <Diff>%'")
    return pd.DataFrame(rows, columns=["metric", "real", "peer_simulated", "peer_error_pct"])


def peer_mismatch(peer: pd.DataFrame, real: dict) -> str | None:
    """Why the peer's table is not about this run (its real value of a metric more than 1 %, and its 0.1 ms
    rounding, from the one requests.jsonl gives), or None where every one agrees."""
    named = {metric_name(k): v for k, v in real.items()}
    for r in peer.itertuples(index=False):
        ours = named.get(r.metric)
        if ours is not None and abs(r.real - ours) > max(0.01 * abs(ours), 0.1):
            return f"its real {r.metric} is {r.real:,.1f} where this run's requests.jsonl gives {ours:,.1f}"
    return None
