"""What a run read, so that a finished run is reused only while the same files and the same code would
give it again.

Every loader of a data file (workload tables and traces, text data sets, latency and all-reduce profiles,
predictor tables, model config files) calls `note(path)`. `s3sim.runner.run_dir` records the files a run
reads, writes their content hashes and a hash of the code beside the run's config (`inputs.json`), and
reuses a finished run only when its config, its files and the code are all unchanged.
"""
from __future__ import annotations

import functools
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

# The shared data folder beside the repository (workloads, traces, GPU measurements): never copied into it.
SHARED_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
_recorders: list[set] = []
_hashes: dict[tuple, str] = {}
CODE_DIRS = ("s3sim", "s3exec", "conf")
CODE_SUFFIXES = (".py", ".yaml", ".json", ".csv", ".gz")


def note_folder(folder) -> None:
    """Every file under a folder is being read (a trained model: its weights, tokenizer and metadata)."""
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            note(p)


RELATIVE = "@relative"  # a path given relative to the working directory was read


def note(path) -> None:
    """A data file is being read by whatever run is being recorded."""
    for files in _recorders:
        files.add(str(Path(path).absolute()))  # not resolved: a data link pointed elsewhere is another input
        if not Path(path).is_absolute():  # the same config read elsewhere names another file
            files.add(RELATIVE)


def ragged_row(path) -> str | None:
    """Where a CSV's row has more or fewer fields than its header, said as `line N has F fields, the header H`;
    None when every row matches (or the file is not text: the reader then says why). pandas reads such a row
    silently: one field more makes the first column the index and shifts every value by one; one fewer is NaN."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            for row in rows:
                if row and header is not None and len(row) != len(header):
                    return f"line {rows.line_num} has {len(row)} fields, the header {len(header)}"
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None


def read_csv(path, failure: str):
    """A CSV table a run reads (noted as read); a file that is not one, or has a row of more or fewer fields
    than its header, is one ConfigError: `failure`, then why."""
    import pandas as pd

    from s3sim.core.errors import ConfigError

    note(path)
    ragged = ragged_row(path)
    if ragged is not None:
        raise ConfigError(f"{failure} ({ragged})")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ConfigError(f"{failure} ({str(e).splitlines()[0]})") from None


def read_table(path, what: str, columns):
    """A CSV table a run reads that must hold `columns`: a missing file, a file that is not a CSV and a missing
    column are each one ConfigError naming `what` and the file."""
    from s3sim.core.errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what}: no file {str(p)!r}")
    table = read_csv(p, f"{what} {str(p)!r}: not a CSV")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConfigError(f"{what} {str(p)!r}: missing column {missing[0]!r} (needs {', '.join(columns)})")
    return table


def first_bad_line(bad) -> int:
    """The file line (the header is line 1) of the first row where the boolean series `bad` holds."""
    import numpy as np

    return int(np.flatnonzero(bad.to_numpy())[0]) + 2


@contextmanager
def recording():
    """The set of files noted while the block runs."""
    files: set[str] = set()
    _recorders.append(files)
    try:
        yield files
    finally:
        _recorders.remove(files)


def file_hash(path) -> str | None:
    """SHA-256 of a file's bytes (None if it is gone), computed once per size and modification time."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return None
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _hashes[key] = h.hexdigest()
    return _hashes[key]


@functools.cache
def code_version() -> str:
    """A hash of the project's code, configs and bundled tables: any change to them makes earlier runs stale."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for folder in CODE_DIRS:
        for f in sorted((root / folder).rglob("*")):
            if f.suffix in CODE_SUFFIXES and "__pycache__" not in f.parts and f.is_file():
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def fingerprint(files) -> dict:
    """What a finished run is reused on: the code's hash, each file it read with its content hash, and the
    working directory when a path was relative to it."""
    out = {"code": code_version(), "files": {p: file_hash(p) for p in sorted(files) if p != RELATIVE}}
    if RELATIVE in files:
        out["cwd"] = os.getcwd()
    return out


def unchanged(recorded: dict) -> bool:
    """The code and every file of a recorded fingerprint are as they were, read from the same directory if a
    path was relative (the same config in another directory reads another file)."""
    try:
        return (recorded.get("code") == code_version()
                and recorded.get("cwd", os.getcwd()) == os.getcwd()
                and all(file_hash(p) == h for p, h in dict(recorded["files"]).items()))
    except (AttributeError, KeyError, TypeError, ValueError):
        return False
