"""`s3sim`: simulate one configuration (a Hydra app over `conf/`); `-m` sweeps; `s3sim-collect` gathers."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from s3sim.core.errors import ConfigError, InvariantViolation

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _fail(kind: str, err: Exception) -> None:
    print(f"s3sim: {kind}: {err}", file=sys.stderr)
    sys.exit(2 if kind == "error" else 3)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """One run into Hydra's output dir. In a sweep a failing run is recorded (failed.txt) and the sweep
    goes on; `SweepReport` names the failures at the end. A finished run of the same config is reused."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from s3sim.runner import record_failure, run_dir

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    sweeping = hc.mode == RunMode.MULTIRUN
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        row, reused = run_dir(resolved, out, write_iterations=bool(cfg.get("write_iterations", False)))
    except Exception as e:
        if sweeping:
            if not (out / "failed.txt").exists():
                record_failure(out, e)
            print(f"s3sim: {out}: {type(e).__name__}: {e}", file=sys.stderr)
            return
        if isinstance(e, ConfigError):
            _fail("error", e)
        if isinstance(e, InvariantViolation):
            _fail("invariant violated", e)
        raise
    keys = ("policy", "request_throughput", "output_throughput", "ttft_p50", "tpot_p50", "e2e_latency_p99",
            "mean_batch_size", "preemptions")
    print(("(reused) " if reused else "")
          + "  ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys))
    from s3sim.config import run_notes
    for note in run_notes(row):
        print(note)
    print(f"results: {out}")


def collect_main(argv=None) -> None:
    """`s3sim-collect DIR [OUT.csv]`: one table of every run under DIR (summary, status and resolved
    config); failed and unfinished runs are listed on stderr."""
    from s3sim.collect import collect, status_line

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: s3sim-collect DIR [OUT.csv]", file=sys.stderr)
        sys.exit(2)
    try:
        table = collect(args[0])
    except ConfigError as e:
        _fail("error", e)
    if len(args) > 1:
        from s3sim.runner import write_csv
        write_csv(table, Path(args[1]))
    shown = [c for c in table.columns if "." not in c]  # the summaries; config columns are in the file
    with __import__("pandas").option_context("display.width", 200, "display.max_columns", 12):
        print(table[shown].to_string(index=False, max_colwidth=14))
    print(status_line(table), file=sys.stderr)


if __name__ == "__main__":
    main()
