"""Run one configuration end to end and write its results atomically into a run directory."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from s3sim.config import build
from s3sim.engine.simulator import make_requests, simulate
from s3sim.metrics.summary import request_records, summarize


def run_config(cfg, out_dir: str | Path | None = None, write_iterations: bool = False) -> dict:
    """Simulate `cfg`; return its summary row (config fields included) and write files if `out_dir`."""
    setup = build(cfg)
    reqs = make_requests(setup.prompt_len, setup.output_len, setup.arrivals)
    t0 = time.perf_counter()
    result = simulate(reqs, setup.scheduler, setup.latency, max_jump=cfg.get("max_jump"))
    wall = time.perf_counter() - t0
    records = request_records(result.requests)
    row = summarize(result, setup.slo, records)
    row.update({
        "model": cfg["model"]["name"], "gpu": cfg["gpu"]["name"], "workload": cfg["workload"]["name"],
        "arrival": cfg["arrival"]["process"], "rate": cfg["arrival"].get("rate"),
        "predictor": {"s3": cfg["predictor"]["name"], "oracle": "oracle"}.get(row["policy"], "none"),
        "accuracy": cfg["predictor"].get("accuracy") if row["policy"] == "s3" else None,
        "max_seq_len": cfg["max_seq_len"], "seed": cfg.get("seed", 0), "clipped_outputs": setup.clipped,
        "sim_wall_s": wall, "sim_requests_per_s": len(reqs) / wall if wall > 0 else float("inf"),
    })
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(records, out / "requests.csv")
        if write_iterations:
            write_csv(result.log.frame(), out / "iterations.csv")
        write_csv(pd.DataFrame([row]), out / "summary.csv")  # last: its presence marks a finished run
    return row


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write a table atomically (see `write_text`)."""
    write_text(df.to_csv(index=False), path)


def write_text(text: str, path: Path) -> None:
    """Write to a temporary file and rename, so a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
