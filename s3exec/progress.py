"""Progress of a run: a bar on a terminal, and plain lines (every tenth of the requests) in a log file, where a
bar would be one unreadable line of carriage returns."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, mode: str | bool):
        """`mode`: "bar", "lines", or False (nothing)."""
        self.total, self.done, self.mode = total, 0, "bar" if mode is True else mode
        self._next = max(1, total // 10)
        self._t0 = time.perf_counter()
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="requests", unit="req", leave=False)

    def update(self, n: int) -> None:
        if not n:
            return
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines" and (self.done >= self._next or self.done == self.total):
            print(f"s3exec: {self.done}/{self.total} requests served in {time.perf_counter() - self._t0:.1f} s",
                  file=sys.stderr, flush=True)
            while self._next <= self.done:
                self._next += max(1, self.total // 10)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def mode_for(requested: bool) -> str | bool:
    """A bar on a terminal, lines otherwise; nothing when progress is off."""
    if not requested:
        return False
    return "bar" if sys.stderr.isatty() else "lines"
