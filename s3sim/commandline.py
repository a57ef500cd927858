"""What every command line of the project shares: bad arguments as one line on stderr and exit code 2 (never
argparse's usage block), named after the command as the user typed it, and output paths that cannot be
empty (an empty `--out` wrote into the working directory)."""
from __future__ import annotations

import argparse
import contextlib
import functools
import signal
import sys
import threading
from pathlib import Path

from s3sim.core.errors import ConfigError, InvariantViolation


def _invoked_as() -> str:
    """`python -m package.module` for a module run with -m, else the script's name."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "s3sim"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `<command>: error: <what> (<command> --help)`, exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("prog", _invoked_as())
        kwargs.setdefault("allow_abbrev", False)  # `--smok` is an error, not --smoke (nor `--thr` --threads)
        super().__init__(*args, **kwargs)

    def error(self, message):
        command = self.prog.split(" ")[0] if not self.prog.startswith("python -m") else self.prog
        self.exit(2, f"{command}: error: {message} ({self.prog} --help)\n")


def out_path(text: str) -> Path:
    """The type of an `--out` argument: a path, never an empty one."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("an empty path would write into the working directory; name a folder")
    return Path(text)


def given_path(text: str) -> Path:
    """The type of a file or folder argument: a path, never an empty one (it would name the working directory)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("an empty path names nothing (it would read or write the working "
                                         "directory); give one")
    return Path(text)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_as_exit():
    """Within it, a SIGTERM (a `timeout`, a scheduler's cancel) ends the command as Ctrl-C does, through its
    clean-ups (a file being written atomically leaves no temporary file), with exit status 143; the handler
    before it is restored after. Off the main thread (where no handler can be set), or where SIGTERM is ignored
    or handled outside Python, it does nothing."""
    before = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if before in (None, signal.SIG_IGN):  # off the main thread, set outside Python, or ignored on purpose: as it is
        yield
        return
    signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def terminable(main):
    """A command's `main` run within `sigterm_as_exit`."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        with sigterm_as_exit():
            return main(*args, **kwargs)
    return wrapped


def exit_code(prog: str, body) -> int:
    """Run `body()` as a command's work: 0 when it returns, one line on stderr and 2 for bad input
    (`ConfigError`), 3 for a violated invariant; anything else is a bug and keeps its traceback. A SIGTERM (a
    `timeout`, a scheduler's cancel) ends it as Ctrl-C does, through its clean-ups (a file being written
    atomically leaves no temporary file), with exit status 143 (`sigterm_as_exit`)."""
    try:
        with sigterm_as_exit():
            body()
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except InvariantViolation as e:
        print(f"{prog}: invariant violated: {e}", file=sys.stderr)
        return 3
    return 0
