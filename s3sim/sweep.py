"""A Hydra callback that ends a sweep with one account of its runs, and a failing exit code if any failed.

Runs inside a sweep record their own failures (`failed.txt`) and return, so one bad point does not stop
the others, locally or on a cluster; this is where the failures are named.
"""
from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback


def stop_with_parent(poll_s: float = 0.5) -> None:
    """In a sweep's worker process (the local launcher's), end this process when the sweep's main process
    dies: after `kill -9` of a sweep its workers went on finishing points nobody would collect. A daemon
    thread watches for this process being handed to another parent. Not in the main process itself (a
    sweep started with nohup may outlive its shell)."""
    import multiprocessing
    import os
    import threading
    import time

    if multiprocessing.parent_process() is None:
        return
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)  # the run stays unfinished: its folder holds no summary.csv

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


class SweepReport(Callback):
    def on_job_end(self, config, job_return=None, **kwargs) -> None:
        """A sweep shows its points as they finish: this one, and how many of the sweep's points have a summary
        by now (counted on disk, so it holds for parallel and cluster launchers too)."""
        hc = config.hydra
        if str(hc.mode) != "RunMode.MULTIRUN":
            return
        root = Path(hc.sweep.dir)
        done = sum(1 for _ in root.glob("*/summary.csv"))
        failed = (Path(hc.runtime.output_dir) / "failed.txt").is_file()
        print(f"sweep: point {hc.job.num} {'FAILED (its failed.txt says why)' if failed else 'done'} "
              f"({hc.job.override_dirname or 'no overrides'}); {done} point{'s' if done != 1 else ''} of {root} "
              f"{'have' if done != 1 else 'has'} a summary",
              file=sys.stderr, flush=True)

    def on_multirun_end(self, config, **kwargs) -> None:
        from s3sim.collect import collect, status_line
        from s3sim.core.errors import ConfigError

        root = Path(config.hydra.sweep.dir)
        try:
            table = collect(root)
        except ConfigError as e:
            print(f"s3sim: {e}", file=sys.stderr)
            sys.exit(1)
        print(f"{root}: {status_line(table)}\ncollect with: s3sim-collect {root} {root}/all.csv", file=sys.stderr)
        if (table.status != "finished").any():
            sys.exit(1)
