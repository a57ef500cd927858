"""Every file a command writes is written atomically: a temporary file beside it, renamed into place, so a
reader never sees half a file and a failed write leaves nothing behind. Results, tables, figures and
profiles all go through here; the module imports nothing of the project, so any layer may use it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_csv(df, path: Path) -> None:
    """Write a table atomically (see `write_text`)."""
    write_text(df.to_csv(index=False), path)


# how fast this machine simulated (`sim_*`) or how long the executor served (`wall_s`): differ run to run
WALL_CLOCK = ("sim_wall_s", "sim_requests_per_s", "wall_s")


def write_table(df, path: Path) -> None:
    """A results table that stays byte-stable from run to run: its wall-clock columns go to
    `<stem>.wall_clock.csv` beside it (ignored by git), keyed by its run, run_dir, engine, policy and rate columns."""
    import errno

    path = Path(path)
    if path.is_dir():  # refused before the companion is written beside it
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not path.parent.is_dir():  # named as the table asked for, not its companion
        raise OSError(errno.ENOENT, f"its folder {path.parent} does not exist", str(path))
    wall = [c for c in WALL_CLOCK if c in df.columns]
    companion = path.with_name(f"{path.stem}.wall_clock.csv")
    if wall:  # the companion first: a table that cannot have its companion is not written either
        keys = [c for c in ("run", "run_dir", "engine", "policy", "rate") if c in df.columns] or [df.columns[0]]
        write_csv(df[[*keys, *wall]], companion)
    elif companion.is_file():  # an earlier table's, which would sit beside this one as if its own
        companion.unlink()
    try:
        write_csv(df.drop(columns=wall), path)
    except BaseException:
        if wall:  # no companion without its table
            companion.unlink(missing_ok=True)
        raise


def write_parquet(df, path: Path) -> None:
    """Write a table as Parquet, atomically (see `write_atomically`)."""
    write_atomically(path, lambda tmp: df.to_parquet(tmp, index=False))


def write_text(text: str, path: Path) -> None:
    """Write text atomically (see `write_atomically`)."""
    write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def write_atomically(path: Path, write) -> None:
    """`write(tmp)` a temporary file beside `path`, then rename it into place, so a reader never sees half a
    file and a failed write leaves nothing behind."""
    path = Path(path)
    if path.is_symlink():  # the file it points to is written, the link kept
        path = path.resolve()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # named as the file asked for, not the temporary one
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make results unreadable to others
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
