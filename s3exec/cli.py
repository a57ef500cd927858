"""`s3exec`: execute one configuration on a real model (a Hydra app over `conf/`, primary config
`conf/exec.yaml`, sharing the simulator's model, workload, arrival, policy and predictor groups)."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from s3sim.cli import headline, report_failure, resolved_config
from s3sim.config import CONF_DIR


def _record(out: Path, err: Exception) -> None:
    """`failed.txt` in the run directory, so a collector reports the run failed."""
    from s3sim.runner import record_failure

    try:
        if out.is_dir():
            record_failure(out, err)
    except OSError:
        pass  # a directory it cannot write: the error itself is reported


def main() -> None:
    """The `s3exec` command: Hydra's own errors about the overrides first, as one line (exit 2), then the app."""
    from s3sim.hydra_errors import precheck

    precheck(CONF_DIR, "exec", sys.argv[1:], "s3exec", refused_later=("shared_prefix", "model.dtype"))
    app()


@hydra.main(config_path=CONF_DIR, config_name="exec", version_base="1.3")
def app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from s3exec.progress import mode_for
    from s3exec.runner import run_exec
    from s3sim.runner import clear
    from s3sim.writers import write_text

    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        clear(out)  # an earlier run's summary must not sit beside this run's config
        resolved = resolved_config(cfg)
        write_text(OmegaConf.to_yaml(cfg, resolve=True), out / "resolved_config.yaml")
        from s3exec.config import executor_node
        from s3sim.spec import flag
        ex = executor_node(resolved)
        if ex.get("attention") == "flex" and not str(ex.get("device", "cpu")).startswith("cuda"):
            print("note: executor.attention=flex off CUDA runs FlexAttention's reference implementation, which reads "
                  "the whole KV pool (executor.kv_memory) every step, its cost that of the pool, not of the batch's "
                  "context; sdpa, auto's choice here, reads the context alone", flush=True)
        row, _ = run_exec(resolved, out, progress=mode_for(flag(ex.get("progress"), "executor.progress", True)),
                          write_iterations=flag(resolved.get("write_iterations"), "write_iterations", False),
                          write_tokens=flag(ex.get("write_tokens"), "executor.write_tokens", True))
    except Exception as e:
        _record(out, e)
        report_failure(e, out, HydraConfig.get().mode == RunMode.MULTIRUN, "s3exec")  # a sweep goes on
        return
    print(headline(row))
    from s3exec.runner import exec_notes
    for note in exec_notes(row, resolved):
        print(note)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
