"""Gather every run under a directory (a Hydra multirun, or several) into one table.

A run is a directory holding `resolved_config.yaml`, `summary.csv` or `failed.txt`. Each becomes one
row: its status (`finished`; `failed`; `invalid` for a summary that cannot be read, is not one row, or
lacks the summary's columns; or `incomplete` for a run still going or killed before it could say), the
error line of a failed or invalid one, the summary's numbers, and every field of the resolved config as
a dotted column (`predictor.accuracy`). Files are written atomically, so a sweep still running (or one
that crashed) yields a table of what is there, never a half-read row.

A Hydra sweep says at its start which points it has (`<sweep>/multirun.yaml`: `hydra.overrides.task` and
`hydra.sweeper.params`, expanded as Hydra's basic sweeper does); a point with no folder yet (the sweep was
killed, or is still going) becomes a row `never started` named as Hydra would name its folder, so a killed
sweep is reported whole ("6 points: 2 finished, ..., 3 never started"), not as the runs that happened to begin.
"""
from __future__ import annotations

import numbers
import re
from pathlib import Path

import pandas as pd
import yaml

from s3sim.core.errors import ConfigError
from s3sim.inputs import ragged_row
from s3sim.runner import CONFIG, FAILED, SUMMARY

STATUSES = ("finished", "failed", "invalid", "incomplete")
NEVER_STARTED = "never started"  # a sweep point with no folder: listed only when there is one
SWEEP_FILE = "multirun.yaml"
LISTED = 20  # never-started points named one by one on stderr; the rest counted
REQUIRED = ("policy", "num_requests", "request_throughput")  # a summary without them (and valid) is not one
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


def natural(dirs) -> list[Path]:
    """Folders in natural order (a sweep's 2_... before 10_...)."""
    return sorted(set(dirs), key=lambda d: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(d))])


def run_dirs(root: Path) -> list[Path]:
    """Every run directory under `root`, in natural order (a sweep's 2_... before 10_...)."""
    return natural(p.parent for name in (CONFIG, SUMMARY, FAILED) for p in root.rglob(name))


def read_summary(path: Path) -> tuple[dict | None, str | None]:
    """A summary's one row, or None and why it is not a summary: unreadable, a row of more or fewer fields than
    its header (half written, or edited), not one row, a headline column missing, or a required value that is
    not one (no policy, a request count that is not a count, a throughput that is not a finite rate)."""
    ragged = ragged_row(path)
    if ragged is not None:
        return None, f"{SUMMARY} {ragged}: not one row of its columns"
    try:
        table = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        return None, f"{SUMMARY} cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if len(table) != 1:
        return None, f"{SUMMARY} has {len(table)} rows, not one"
    missing = [c for c in KEY_COLUMNS if c not in table.columns]
    if missing:
        return None, f"{SUMMARY} lacks the column {missing[0]!r}: not a run's summary"
    row = table.iloc[0].to_dict()
    policy, n, rate = (row[c] for c in REQUIRED)
    if not isinstance(policy, str) or not policy.strip():
        return None, f"{SUMMARY}: policy is {policy!r}, not a policy's name"
    if not _number(n) or n < 0 or n != int(n):
        return None, f"{SUMMARY}: num_requests is {n!r}, not a count of requests"
    if not _number(rate) or not 0 <= rate < float("inf"):
        return None, f"{SUMMARY}: request_throughput is {rate!r}, not a finite rate >= 0"
    return row, None


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and v == v


def missing_outputs(d: Path) -> list[str]:
    """The result files the run's inputs.json says it wrote and that are not there any more."""
    import json

    try:
        outputs = json.loads((d / "inputs.json").read_text()).get("outputs") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [str(n) for n in outputs if not (d / str(n)).is_file()]


def read_run(d: Path, root: Path) -> dict:
    row = {"run_dir": str(d.relative_to(root)) or ".", "status": "incomplete", "error": None}
    if (d / SUMMARY).is_file():
        summary, why = read_summary(d / SUMMARY)
        if summary is None:
            row.update(status="invalid", error=why)
        else:
            row["status"] = "finished"
            row.update(summary)
            gone = missing_outputs(d)
            if gone:
                row.update(status="incomplete", error=f"{gone[0]} is gone since the run finished ({len(gone)} "
                                                      f"result file(s) missing); running it again rewrites it")
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


def sweep_points(sweep: Path) -> list[tuple[list[str], str]] | None:
    """Every point of the Hydra sweep whose `multirun.yaml` is in `sweep`: its overrides and the folder Hydra
    gives it (relative to `sweep`; a description when the sweep names folders otherwise), in job order. None
    when that cannot be told (no basic sweeper, an unreadable file, a sweep Hydra's parser cannot expand)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        hydra = yaml.safe_load((sweep / SWEEP_FILE).read_text())["hydra"]
        sweeper = hydra.get("sweeper") or {}
        if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return None
        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        parser = OverridesParser.create()
        task = list(hydra["overrides"]["task"] or [])
        (points,) = BasicSweeper.split_arguments(parser.parse_overrides(params + task), None)
        naming = hydra["job"]["config"]["override_dirname"]
        default_subdir = str(hydra["sweep"]["subdir"]) == "${hydra.job.num}_${hydra.job.override_dirname}"
    except Exception:  # noqa: BLE001 - whatever Hydra or YAML raise, the point count is unknown, nothing more
        return None
    out = []
    for num, point in enumerate(points):
        if default_subdir:
            kept = sorted(o.input_line for o in parser.parse_overrides(point)
                          if o.key_or_group not in (naming.get("exclude_keys") or []))
            name = f"{num}_" + naming.get("item_sep", ",").join(kept).replace("=", naming.get("kv_sep", "="))
        else:
            name = f"point {num} ({','.join(point)})"
        out.append((list(point), name))
    return out


def point_overrides(d: Path) -> tuple[str, ...] | None:
    """The overrides Hydra gave the run in `d` (its `.hydra/overrides.yaml`), sorted; None without them."""
    try:
        overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return tuple(sorted(map(str, overrides))) if isinstance(overrides, list) else None


def missing_points(root: Path, dirs: list[Path]) -> tuple[list[dict], list[Path]]:
    """Rows for the points of every sweep under `root` that have no run folder (`never started`), and the
    folders Hydra made for a point that died before writing anything (read as `incomplete` runs)."""
    rows, started = [], []
    known = set(dirs)
    for spec in sorted(root.rglob(SWEEP_FILE)):
        sweep = spec.parent
        points = sweep_points(sweep)
        if points is None:
            continue
        begun = {}
        for o in sweep.rglob("overrides.yaml"):
            if o.parent.name == ".hydra" and (ov := point_overrides(o.parent.parent)) is not None:
                begun.setdefault(ov, o.parent.parent)
        for overrides, name in points:
            d = begun.get(tuple(sorted(overrides)))
            if d is None:
                rel = sweep.relative_to(root).as_posix()
                rows.append({"run_dir": name if rel == "." else f"{rel}/{name}", "status": NEVER_STARTED,
                             "error": None})
            elif d not in known:
                started.append(d)
                known.add(d)
    return rows, started


def collect(root) -> pd.DataFrame:
    """One row per run under `root`, finished or not, and one per sweep point never started (see the
    module doc)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"no such results directory: {root}")
    dirs = run_dirs(root)
    never, started = missing_points(root, dirs)
    dirs = natural(dirs + started)
    if not dirs and not never:
        raise ConfigError(f"no runs under {root}: no {SUMMARY}, {FAILED} or {CONFIG} there")
    rows = [read_run(d, root) for d in dirs] + never
    table = pd.DataFrame(rows)
    return table.astype({c: "Int64" for c in whole_columns(rows) if table[c].isna().any()})


def whole_columns(rows: list[dict]) -> list[str]:
    """The columns whose every given value is a whole number: a row that lacks them (a run that did not
    finish, a point never started) leaves them empty there, not `20.0` everywhere else."""
    seen: dict[str, bool] = {}
    for row in rows:
        for k, v in row.items():
            if v is not None and not (isinstance(v, float) and v != v):
                seen[k] = seen.get(k, True) and isinstance(v, numbers.Integral) and not isinstance(v, bool)
    return [k for k, whole in seen.items() if whole]


def read_paths(root, table: pd.DataFrame) -> tuple[list[Path], list[Path]]:
    """What `collect(root)` read: the run folders (resolved), and the sweep files beside them."""
    root = Path(root).resolve()
    folders = [(root / d).resolve() for d, s in zip(table.run_dir, table.status) if s != NEVER_STARTED]
    return folders, [p.resolve() for p in root.rglob(SWEEP_FILE)]


def short_table(table: pd.DataFrame) -> pd.DataFrame:
    """What a person reads: the run, its status, the key metrics and the config fields that differ between
    runs (what the sweep varied); the written table keeps every column."""
    config = [c for c in table.columns if "." in c or c in ("seed", "max_seq_len", "num_requests")]
    began = table[table.status != NEVER_STARTED]  # a point never started has no config to differ
    varied = [c for c in config if c not in KEY_COLUMNS and c != "policy.name" and began[c].astype(str).nunique() > 1]
    keys = [c for c in KEY_COLUMNS if c in table.columns]
    return table[["run_dir", "status", *varied, *keys]]


def status_line(table: pd.DataFrame) -> str:
    """`N runs: a finished, b failed, c invalid, d incomplete` (`N points: ..., e never started` when a
    sweep's points have no folder yet), then one line per run that did not finish (of the points never
    started, the first LISTED)."""
    counts = table.status.value_counts()
    never = int(counts.get(NEVER_STARTED, 0))
    lines = [f"{len(table)} {'points' if never else 'runs'}: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
             + (f", {never} {NEVER_STARTED}" if never else "")]
    for _, r in table[~table.status.isin(["finished", NEVER_STARTED])].iterrows():
        lines.append(f"  {r.status}: {r.run_dir}" + (f": {r.error}" if isinstance(r.error, str) else ""))
    for run in table.run_dir[table.status == NEVER_STARTED].head(LISTED):
        lines.append(f"  {NEVER_STARTED}: {run}")
    if never > LISTED:
        lines.append(f"  ... and {never - LISTED} more {NEVER_STARTED}")
    return "\n".join(lines)
