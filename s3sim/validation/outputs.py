"""What a replay writes into --out, and how: an earlier run's outputs cleared once the inputs are good, the new
ones staged in a temporary folder and moved in with validation.csv last."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from s3sim.core.errors import InvariantViolation


OUTPUTS = ("validation.csv", "peer.csv", "timeline.png", "timeline_data.csv")  # what a run writes into --out


def clear_outputs(out: Path) -> None:
    """Remove what an earlier run wrote into `out` (`OUTPUTS`, validation.csv first), nothing else."""
    for name in OUTPUTS:
        path = out / name
        if path.is_file() or path.is_symlink():
            path.unlink()


@contextmanager
def staged_outputs(out: Path):
    """A temporary folder inside `out` to write the results into; on success its files move into `out`,
    validation.csv last; on failure it goes, and `out` holds no result of this run."""
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".s3sim-validate-"))
    try:
        yield stage
        unknown = [p.name for p in stage.iterdir() if p.name not in OUTPUTS]
        if unknown:
            raise InvariantViolation(f"outputs not in OUTPUTS: {unknown}")
        for name in sorted(OUTPUTS, key=lambda n: n == "validation.csv"):
            if (stage / name).is_file():
                os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
