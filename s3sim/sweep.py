"""A Hydra callback that ends a sweep with one account of its runs, and a failing exit code if any failed.

Runs inside a sweep record their own failures (`failed.txt`) and return, so one bad point does not stop
the others, locally or on a cluster; this is where the failures are named.
"""
from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback


class SweepReport(Callback):
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
