"""Gather every run under a directory (a Hydra multirun, or several) into one table.

A run is a directory holding `resolved_config.yaml`, `summary.csv` or `failed.txt`. Each becomes one
row: its status (`finished`; `failed`; `invalid` for a summary that cannot be read, is not one row, or
lacks the summary's columns; or `incomplete` for a run still going or killed before it could say), the
error line of a failed or invalid one, the summary's numbers, and every field of the resolved config as
a dotted column (`predictor.accuracy`); a config field named as a summary column is `config.<name>`
(`config.num_requests`, the requests asked for, beside `num_requests`, those served), so a column means
one thing in every row. Files are written atomically, so a sweep still running (or one
that crashed) yields a table of what is there, never a half-read row.

A Hydra sweep says at its start which points it has (`<sweep>/multirun.yaml`: `hydra.overrides.task` and
`hydra.sweeper.params`, expanded as Hydra's basic sweeper does); a point with no folder yet (the sweep was
killed, or is still going) becomes a row `never started` named as Hydra would name its folder, so a killed
sweep is reported whole ("6 points: 2 finished, ..., 3 never started"), not as the runs that happened to begin.
A point is matched to its folder by the overrides Hydra recorded there (`.hydra/overrides.yaml`) or, without
them (`hydra.output_subdir=null`), by the folder's name. What cannot be told is said (`notes`): a sweep file
that cannot be read (its points never started are then unknown), and run folders in a sweep that are none of
its points (an earlier sweep's, into the same folder), which are collected all the same.
"""
from __future__ import annotations

import functools
import numbers
import re
from pathlib import Path

import pandas as pd
import yaml

from s3sim.core.errors import ConfigError
from s3sim.runner import CONFIG, FAILED, KEY_COLUMNS, SUMMARY, read_summary

STATUSES = ("finished", "failed", "invalid", "incomplete")
RUN_FILES = (CONFIG, SUMMARY, FAILED)  # a folder holding one of them is a run
NEVER_STARTED = "never started"  # a sweep point with no folder: listed only when there is one
SWEEP_FILE = "multirun.yaml"
LISTED = 20  # never-started points named one by one on stderr; the rest counted


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
    return natural(p.parent for name in RUN_FILES for p in root.rglob(name))


def missing_outputs(d: Path) -> tuple[list[str], str | None]:
    """The result files the run's inputs.json says it wrote and that are not there any more, or why that
    cannot be told (an inputs.json that cannot be read: the reuse would run it again too)."""
    import json

    path = d / "inputs.json"
    if not path.exists():
        return [], None
    try:
        outputs = json.loads(path.read_text()).get("outputs") or []
        if not isinstance(outputs, list):
            raise ValueError("outputs is not a list")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return [], ("inputs.json cannot be read, so which result files the run wrote is not known; running it "
                    "again rewrites them")
    return [str(n) for n in outputs if not (d / str(n)).is_file()], None


@functools.cache
def summary_columns() -> frozenset:
    """Every column a summary may hold (`s3sim-schema summary`)."""
    from s3sim.metrics.schema import SUMMARY as COLUMNS
    return frozenset(n for c in COLUMNS for n in c.names())


def printable(text: str) -> str:
    """A line read from a run's file as it may be printed: control characters (binary junk) as `?`."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def read_run(d: Path, root: Path) -> dict:
    row = {"run_dir": str(d.relative_to(root)) or ".", "status": "incomplete", "error": None}
    if (d / SUMMARY).is_file():
        summary, why = read_summary(d / SUMMARY)
        if summary is None:
            row.update(status="invalid", error=why)
        else:
            row["status"] = "finished"
            row.update(summary)
            gone, unknown = missing_outputs(d)
            if unknown:
                row.update(status="incomplete", error=unknown)
            elif gone:
                row.update(status="incomplete", error=f"{gone[0]} is gone since the run finished ({len(gone)} "
                                                      f"result file(s) missing); running it again rewrites it")
    elif (d / FAILED).is_file():
        row["status"] = "failed"
        try:
            lines = (d / FAILED).read_text(errors="replace").splitlines()
        except OSError as e:
            lines = [f"{FAILED} cannot be read ({e.strerror})"]
        row["error"] = printable(lines[0])[:500] if lines else "failed"
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
        named = summary_columns()
        for k, v in flatten(config).items():
            if k in named:
                row[f"config.{k}"] = v
            else:
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


def missing_points(root: Path, dirs: list[Path]) -> tuple[list[dict], list[Path], list[str]]:
    """Rows for the points of every sweep under `root` that have no run folder (`never started`), the
    folders Hydra made for a point that died before writing anything (read as `incomplete` runs), and notes
    on what could not be told (see the module doc)."""
    rows, started, notes = [], [], []
    known = set(dirs)
    for spec in sorted(root.rglob(SWEEP_FILE)):
        sweep = spec.parent
        rel = sweep.relative_to(root).as_posix()
        points = sweep_points(sweep)
        if points is None:
            notes.append(f"{spec.relative_to(root).as_posix()} cannot be read as a sweep of Hydra's basic sweeper: "
                         f"which of its points never started is not known")
            continue
        begun = {}
        for o in sweep.rglob("overrides.yaml"):
            if o.parent.name == ".hydra" and (ov := point_overrides(o.parent.parent)) is not None:
                begun.setdefault(ov, o.parent.parent)
        matched = set()
        for overrides, name in points:
            d = begun.get(tuple(sorted(overrides)))
            if d is None and (sweep / name).is_dir():  # no overrides recorded (hydra.output_subdir=null)
                d = sweep / name
            if d is None:
                rows.append({"run_dir": name if rel == "." else f"{rel}/{name}", "status": NEVER_STARTED,
                             "error": None})
                continue
            matched.add(d)
            if d not in known:
                started.append(d)
                known.add(d)
        others = [d for d in dirs if d.parent == sweep and d not in matched]
        if others:
            where = "the sweep folder" if rel == "." else rel
            notes.append(f"{len(others)} run folder(s) in {where} are none of the points its {SWEEP_FILE} lists (an "
                         f"earlier sweep's into the same folder?), e.g. {others[0].name}: collected all the same")
    return rows, started, notes


def collect(root) -> pd.DataFrame:
    """One row per run under `root`, finished or not, and one per sweep point never started (see the
    module doc)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"no such results directory: {root}")
    dirs = run_dirs(root)
    never, started, notes = missing_points(root, dirs)
    dirs = natural(dirs + started)
    if not dirs and not never:
        raise ConfigError(f"no runs under {root}: no {SUMMARY}, {FAILED} or {CONFIG} there")
    rows = [read_run(d, root) for d in dirs] + never
    table = pd.DataFrame(rows)
    table = table.astype({c: "Int64" for c in whole_columns(rows) if table[c].isna().any()})
    table.attrs["notes"] = notes  # said by `status_line`
    return table


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
    config = [c for c in table.columns if c not in summary_columns() and c not in ("run_dir", "status", "error")]
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
    lines += [f"  note: {n}" for n in table.attrs.get("notes", [])]
    return "\n".join(lines)
