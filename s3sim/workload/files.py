"""Reading a workload's data files: found or one line naming the file, noted as an input of the run, and CSV
rows whose bad bytes or oversized fields are one line naming the file and line. Shared by the length tables
(`lengths`) and the request logs (`trace_formats`), so neither imports the other."""
from __future__ import annotations

import csv
from pathlib import Path

from s3sim.core.errors import ConfigError
from s3sim.inputs import note


def require_file(path: Path) -> Path:
    """`path`, noted as read by the run, or one ConfigError if it is not a file."""
    if not path.is_file():
        raise ConfigError(f"data file not found: {path} (expected the shared data folder; set workload.data_dir)")
    note(path)
    return path


def csv_rows(path: Path, reader_rows):
    """Rows of a CSV file, with a bad byte or an oversized field as one line naming the file and line."""
    try:
        yield from reader_rows
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: byte {e.object[e.start:e.start + 1]!r} at offset {e.start} is not UTF-8 text") \
            from None
    except csv.Error as e:
        line = getattr(reader_rows, "line_num", "?")
        raise ConfigError(f"{path.name} line {line}: {e}") from None
