"""Which numbers of committed result tables moved, and by how much, between a commit and the working tree.

A regeneration changes many tables at once; a closing note must name every number that moved by more than a
threshold (2 % by default). Rows are matched by their key columns (every text column, then the numeric ones
that name a sweep point, such as a rate, while rows are not told apart); each numeric cell of a matched row
is compared relatively, and rows found on one side only are listed as added or removed.

    python -m s3sim.lab.moved 15d2529 results/paper/paper_vs_sim.csv results/default/offline.csv
    python -m s3sim.lab.moved 15d2529 results/paper/*.csv --columns request_throughput,ttft_p99 --threshold 0.05
"""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.commandline import Parser, exit_code
from s3sim.core.errors import ConfigError

def key_columns(old: pd.DataFrame, new: pd.DataFrame) -> list[str]:
    """Columns in both tables that identify a row: every non-numeric one, then, while rows are not told apart,
    the numeric columns that name a sweep point (the same values in both tables, such as a rate or a seed;
    a measured column, such as a searched capacity, differs and is compared instead)."""
    both = [c for c in old.columns if c in new.columns]
    keys = [c for c in both if not pd.api.types.is_numeric_dtype(old[c])]
    for c in both:
        if not keys or not old.duplicated(keys).any():
            break
        if c not in keys and sorted(old[c].dropna().tolist()) == sorted(new[c].dropna().tolist()):
            keys.append(c)
    return keys


def moved(old: pd.DataFrame, new: pd.DataFrame, threshold: float, columns=None) -> tuple[list[str], list[str]]:
    """(cells whose relative change exceeds `threshold`, rows found on one side only), as text lines:
    `<row key> <column>: <old> -> <new> (<change> %)`. A cell that was 0 and is not any more counts as moved."""
    keys = key_columns(old, new)
    o = old.set_index(keys) if keys else old
    n = new.set_index(keys) if keys else new
    o, n = o[~o.index.duplicated()], n[~n.index.duplicated()]
    common = o.index.intersection(n.index, sort=False)
    values = [c for c in o.columns if c in n.columns and pd.api.types.is_numeric_dtype(o[c])
              and (columns is None or c in columns)]
    cells = []
    for c in values:
        a = pd.to_numeric(o.loc[common, c], errors="coerce").to_numpy(float)
        b = pd.to_numeric(n.loc[common, c], errors="coerce").to_numpy(float)
        for j in np.flatnonzero(np.isfinite(a) & np.isfinite(b) & (a != b)):
            rel = (b[j] - a[j]) / abs(a[j]) if a[j] else np.inf
            if abs(rel) > threshold:
                change = "new non-zero" if a[j] == 0 else f"{100 * rel:+.1f} %"
                cells.append(f"{label(common[j])} {c}: {a[j]:.4g} -> {b[j]:.4g} ({change})")
    unmatched = [f"{label(k)}: removed" for k in o.index.difference(n.index, sort=False)]
    unmatched += [f"{label(k)}: added" for k in n.index.difference(o.index, sort=False)]
    return cells, unmatched


def label(key) -> str:
    parts = key if isinstance(key, tuple) else (key,)
    return "[" + ", ".join(str(p) for p in parts if not (isinstance(p, float) and np.isnan(p))) + "]"


def at_commit(commit: str, path: str) -> pd.DataFrame | None:
    """The table `path` as committed at `commit`, or None where it did not exist."""
    out = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True)
    if out.returncode != 0:
        if "exists on disk, but not in" in out.stderr or "does not exist in" in out.stderr:
            return None
        raise ConfigError(f"git show {commit}:{path}: {out.stderr.strip().splitlines()[-1] if out.stderr else 'failed'}")
    return pd.read_csv(io.StringIO(out.stdout))


def main(argv=None) -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("commit", help="the commit the tables are compared with (any git revision)")
    ap.add_argument("tables", nargs="+", help="CSV tables of the working tree, by their paths in the repository")
    ap.add_argument("--threshold", type=float, default=0.02, help="relative change a cell must exceed (0.02: 2 %%)")
    ap.add_argument("--columns", default=None, help="compare only these numeric columns (comma-separated)")
    args = ap.parse_args(argv)

    def body():
        if not 0 <= args.threshold < np.inf:
            raise ConfigError(f"--threshold must be a non-negative fraction, got {args.threshold}")
        columns = None if args.columns is None else set(args.columns.split(","))
        for path in args.tables:
            if not Path(path).is_file():
                raise ConfigError(f"{path}: no such table in the working tree")
            old, new = at_commit(args.commit, path), pd.read_csv(path)
            if old is None:
                print(f"## {path}: new since {args.commit}")
                continue
            cells, unmatched = moved(old, new, args.threshold, columns)
            print(f"## {path}: {len(cells)} cells moved by more than {100 * args.threshold:g} %"
                  + (f", {len(unmatched)} rows on one side only" if unmatched else ""))
            for line in cells + unmatched:
                print("  " + line)

    return exit_code(ap.prog, body)


if __name__ == "__main__":
    sys.exit(main())
