"""Count prompt and response tokens of every text data set in the shared data, with a real tokenizer.

    python -m s3sim.lab.token_counts [--data-dir DIR] [--tokenizer smollm2]

writes the small tables in `s3sim/workload/tables/` that the text workloads read, so that simulations need
no tokenizer. Each row keeps its key and a hash of its prompt (for seeded splits by prompt).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from s3sim.commandline import Parser
from s3sim.core.errors import ConfigError
from s3sim.writers import write_csv
from s3sim.workload.lengths import ALPACA_TEXT_FILES, DEFAULT_DATA_DIR, TABLES
from s3sim.workload.text import prompt_hash, read_pairs
from s3sim.workload.tokenizer import count_tokens, load_tokenizer

SHAREGPT_PAIRS = "sharegpt/sharegpt_v3_firstturn_pairs.jsonl"
ALPACA_EVAL_DIR = "alpaca_eval"


def _frame(tok, pairs, **extra) -> pd.DataFrame:
    df = pd.DataFrame({
        **extra,
        "key": [p.key for p in pairs],
        "prompt_hash": [f"{prompt_hash(p.prompt):016x}" for p in pairs],
        "prompt_tokens": count_tokens(tok, [p.prompt for p in pairs]),
        "output_tokens": count_tokens(tok, [p.response for p in pairs]),
    })
    return df


def build_tables(data_dir=None, tokenizer: str = "smollm2", out_dir=TABLES) -> dict[str, pd.DataFrame]:
    d = Path(data_dir or DEFAULT_DATA_DIR).resolve()
    tok = load_tokenizer(tokenizer)
    out_dir = Path(out_dir)
    tables = {"sharegpt_pairs": _frame(tok, read_pairs(d / SHAREGPT_PAIRS))}
    ev = []
    files = sorted((d / ALPACA_EVAL_DIR).glob("*.model_outputs.json"))
    if not files:
        raise ConfigError(f"no *.model_outputs.json files in {d / ALPACA_EVAL_DIR}")
    for f in files:
        ev.append(_frame(tok, read_pairs(f), generator=f.name.removesuffix(".model_outputs.json")))
    tables["alpaca_eval"] = pd.concat(ev, ignore_index=True)
    tables["alpaca_rows"] = pd.concat(
        [_frame(tok, read_pairs(d / rel), source=Path(rel).stem) for rel in ALPACA_TEXT_FILES], ignore_index=True)
    for name, df in tables.items():
        write_csv(df, out_dir / f"{name}.csv")
    return tables


def main(argv=None) -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--tokenizer", default="smollm2", help="'smollm2' or a local tokenizer folder")
    ap.add_argument("--out-dir", default=str(TABLES))
    a = ap.parse_args(argv)
    try:
        tables = build_tables(a.data_dir, a.tokenizer, a.out_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, df in tables.items():
        print(f"{name}: {len(df)} rows, prompt tokens median {df.prompt_tokens.median():.0f}, "
              f"output tokens median {df.output_tokens.median():.0f} p99 {df.output_tokens.quantile(.99):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
