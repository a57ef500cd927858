"""Where the served model's own answers (`s3exec.lab.own_lengths`) are cached, and the predictor's training file
made from them: kept in `s3sim` so that training needs neither the executor nor a model."""
from __future__ import annotations

import json
import os
from pathlib import Path

from s3sim.core.errors import ConfigError
from s3sim.workload.lengths import OWN_LENGTHS, TABLES


def cache_root() -> Path:
    return Path(os.environ.get("S3_OWN_LENGTHS_DIR") or Path.home() / ".cache" / "s3" / "own_lengths")


def folder_name(cap: int, max_prompt: int, seed: int) -> str:
    return f"cap{cap}-prompt{max_prompt}-seed{seed}"


def read_cache(path: Path) -> list[dict]:
    """The answers generated so far, in order. A last line that a stop cut off (no newline after it) is
    dropped and cut from the file, so the chunk it belonged to runs again; a bad line before it is an error."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    whole = text[:text.rfind("\n") + 1]  # through the last newline: a torn tail has none after it
    if len(whole) < len(text):
        with open(path, "r+", encoding="utf-8") as f:
            f.truncate(len(whole.encode("utf-8")))
    out = []
    for n, line in enumerate(whole.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise ConfigError(f"{path} line {n}: not a cached answer (a JSON object with an id); delete the cache "
                              f"folder or run with --fresh")
        out.append(row)
    return out


def training_file(folder: Path, table: Path = TABLES / f"{OWN_LENGTHS}.csv", rows: list[dict] | None = None) -> Path:
    """`<folder>/smollm2_greedy.jsonl` (id, prompt, response, output_tokens) for the rows of a length table
    (default the committed one), in its order (from the cache when `rows` is not given), checked against the
    table's keys."""
    import pandas as pd

    from s3sim.writers import write_text

    table = Path(table)
    if not table.is_file():
        raise ConfigError(f"{table} is missing: generate SmolLM2's own lengths first (python -m s3exec.lab.own_lengths)")
    df = pd.read_csv(table, dtype={"key": str})
    keys = (df["source"] + ":" + df["key"]).tolist()
    rows = read_cache(folder / "rows.jsonl")[:len(keys)] if rows is None else rows
    if [r["id"] for r in rows] != keys:
        raise ConfigError(f"the cached answers in {folder} are not the rows of {table} ({len(rows)} cached, "
                          f"{len(keys)} in the table): run the command in {table.with_suffix('.json').name} again")
    path = folder / f"{OWN_LENGTHS}.jsonl"
    write_text("".join(json.dumps({k: r[k] for k in ("id", "prompt", "response", "output_tokens")},
                                  ensure_ascii=False) + "\n" for r in rows), path)
    return path


def committed_training_file() -> Path:
    """The training file for the committed table's settings (written from the generation's cache)."""
    meta = TABLES / f"{OWN_LENGTHS}.json"
    if not meta.is_file():
        raise ConfigError(f"{meta} is missing: generate SmolLM2's own lengths first (python -m s3exec.lab.own_lengths)")
    m = json.loads(meta.read_text())
    folder = cache_root() / folder_name(m["cap"], m["max_prompt"], m["seed"])
    if not (folder / "rows.jsonl").is_file():
        raise ConfigError(f"no cached answers in {folder}: run `{m['command']}` (cached, resumable) to generate them")
    return training_file(folder)
