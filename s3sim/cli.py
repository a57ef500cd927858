"""`s3sim`: simulate one configuration (a Hydra app over `conf/`); `-m` sweeps; `s3sim-collect` gathers."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from s3sim.errors import ConfigError, InvariantViolation

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _fail(kind: str, err: Exception) -> None:
    print(f"s3sim: {kind}: {err}", file=sys.stderr)
    sys.exit(2 if kind == "error" else 3)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from s3sim.runner import run_config, write_text

    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        out.mkdir(parents=True, exist_ok=True)
        write_text(OmegaConf.to_yaml(cfg, resolve=True), out / "resolved_config.yaml")
        row = run_config(resolved, out, write_iterations=bool(cfg.get("write_iterations", False)))
    except ConfigError as e:
        _fail("error", e)
    except InvariantViolation as e:
        _fail("invariant violated", e)
    keys = ("policy", "request_throughput", "output_throughput", "ttft_p50", "tpot_p50", "e2e_latency_p99",
            "mean_batch_size", "preemptions")
    print("  ".join(f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys))
    print(f"results: {out}")


def collect_main(argv=None) -> None:
    """`s3sim-collect DIR [OUT.csv]`: one table from every run's summary.csv under DIR."""
    from s3sim.collect import collect

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
    with __import__("pandas").option_context("display.width", 200, "display.max_columns", 12):
        print(table.to_string(index=False, max_colwidth=14))
