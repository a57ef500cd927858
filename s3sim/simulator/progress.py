"""Progress of a long simulation: a bar on a terminal, a line a minute in a log, nothing for a short run.

10^6 requests take about a minute and a 64-replica cluster several; without a sign of life a user cannot
tell a slow run from a hung one. SimPy's `env.run()` is replaced by stepping it in slices and looking at the
wall clock between slices, so the simulation itself (event order, results) is untouched.
"""
from __future__ import annotations

import os
import sys
import time

import simpy

SLICE = 4096  # SimPy events between looks at the clock: a few milliseconds of simulation
QUIET_S = 3.0  # a run shorter than this shows nothing
LOG_EVERY_S = 60.0  # not on a terminal: one line this often


class Progress:
    """Requests finished of `total`, simulated time and simulated requests per wall-clock second, shown once
    a run has taken QUIET_S: as a tqdm bar when `stream` is a terminal, else as a line every LOG_EVERY_S.
    S3SIM_PROGRESS=0 turns it off, =1 forces the log lines (for a terminal's scrollback)."""

    def __init__(self, total: int, stream=None, clock=time.monotonic, mode: str | None = None):
        self.total, self.stream, self.clock = total, stream or sys.stderr, clock
        env = os.environ.get("S3SIM_PROGRESS", "")
        self.mode = mode or ("off" if env == "0" else "log" if env == "1" or not _isatty(self.stream) else "bar")
        self.t0 = clock()
        self.last_line = self.t0
        self.bar = None

    def update(self, sim_time: float, done: int) -> None:
        now = self.clock()
        wall = now - self.t0
        if self.mode == "off" or wall < QUIET_S:
            return
        if self.mode == "bar":
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, file=self.stream, unit="req", desc="simulating", leave=False,
                                dynamic_ncols=True)
            self.bar.n = done
            self.bar.set_postfix_str(f"simulated {sim_time:,.0f} s, {done / wall:,.0f} req/s", refresh=False)
            self.bar.refresh()
        elif now - self.last_line >= LOG_EVERY_S:
            self.last_line = now
            print(self.line(sim_time, done, wall), file=self.stream, flush=True)

    def line(self, sim_time: float, done: int, wall: float) -> str:
        return (f"progress: {done:,}/{self.total:,} requests finished, {sim_time:,.1f} s simulated, "
                f"{done / max(wall, 1e-9):,.0f} simulated requests/s ({wall:,.0f} s)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def run(env: simpy.Environment, progress: Progress | None, done) -> None:
    """`env.run()` to the end, with `progress.update(env.now, done())` between slices of SLICE events."""
    if progress is None or progress.mode == "off":
        env.run()
        return
    try:
        while True:
            for _ in range(SLICE):
                env.step()
            progress.update(env.now, done())
    except simpy.core.EmptySchedule:
        pass
    finally:
        progress.close()
