"""`s3sim`: simulate one configuration (a Hydra app over `conf/`); `-m` sweeps; `s3sim-collect` gathers."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from s3sim.commandline import terminable
from s3sim.config import CONF_DIR
from s3sim.core.errors import ConfigError, InvariantViolation



def _fail(kind: str, err: Exception, prog: str = "s3sim") -> None:
    print(f"{prog}: {kind}: {err}", file=sys.stderr)
    sys.exit(2 if kind == "error" else 3)


def report_failure(e: Exception, out: Path, sweeping: bool, prog: str) -> None:
    """A run failed: in a sweep, one line naming its directory (the sweep goes on, its failed.txt says the
    rest); alone, one line and exit code 2 (bad input, a directory it cannot write) or 3 (an invariant
    violated), or the traceback of what is neither."""
    if sweeping:
        print(f"{prog}: {out}: {type(e).__name__}: {e}", file=sys.stderr)
        return
    if isinstance(e, ConfigError):
        _fail("error", e, prog)
    if isinstance(e, InvariantViolation):
        _fail("invariant violated", e, prog)
    if isinstance(e, OSError) and e.filename:  # a run directory it may not write, a full disk
        _fail("error", f"cannot write {e.filename}: {e.strerror}", prog)
    raise e


def main() -> None:
    """The `s3sim` command: Hydra's own errors about the overrides first, as one line (exit 2), then the app."""
    from s3sim.hydra_errors import precheck

    precheck(CONF_DIR, "config", sys.argv[1:], "s3sim")
    app()


HEADLINE = ("policy", "request_throughput", "output_throughput", "ttft_p50", "tpot_p50", "e2e_latency_p99",
            "mean_batch_size", "preemptions")
HEADLINE_UNITS = {"request_throughput": " req/s", "output_throughput": " tok/s", "ttft_p50": " s", "tpot_p50": " s",
                  "e2e_latency_p99": " s"}  # as summary.csv's (`s3sim-schema summary`)


def headline(row: dict) -> str:
    """The line a run (s3sim's or s3exec's) prints of its summary: the headline numbers with their units, and with
    repeats each one's 95 % interval, the numbers being means over the seeds."""
    def shown(k):
        ci = row.get(f"{k}_ci95")
        spread = f" ± {ci:.2g}" if isinstance(ci, float) and ci == ci else ""
        value = f"{row[k]:.4g}" if isinstance(row[k], float) else f"{row[k]}"
        return f"{k}={value}{spread}{HEADLINE_UNITS.get(k, '')}"

    repeats = row.get("repeats") or 1
    return ((f"mean of {repeats} seeds (± 95 % interval): " if repeats > 1 else "")
            + "  ".join(shown(k) for k in HEADLINE))


def resolved_config(cfg: DictConfig) -> dict:
    """The run's config as plain data, every interpolation resolved: one that cannot be is one line naming it."""
    from omegaconf.errors import OmegaConfBaseException
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{key + ': ' if key else ''}{first} (an interpolation that cannot be resolved)") from None


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> None:
    """One run into Hydra's output dir. In a sweep a failing run is recorded (failed.txt) and the sweep
    goes on; `SweepReport` names the failures at the end. A finished run of the same config is reused."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from s3sim.runner import record_failure, run_dir

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    sweeping = hc.mode == RunMode.MULTIRUN
    if sweeping:
        from s3sim.sweep import stop_with_parent

        stop_with_parent()
    try:
        from s3sim.runner import clear
        from s3sim.spec import flag
        try:
            resolved = resolved_config(cfg)
            write = flag(resolved.get("write_iterations"), "write_iterations", False)
        except ConfigError:
            clear(out)  # the folder holds this run's config now: an earlier run's results must not stay beside it
            raise
        row, reused = run_dir(resolved, out, write_iterations=write)
    except Exception as e:
        if sweeping and not (out / "failed.txt").exists():
            record_failure(out, e)
        report_failure(e, out, sweeping, "s3sim")
        return
    print(("(reused) " if reused else "") + headline(row))
    from s3sim.config import run_notes, unread_notes
    for note in run_notes(row) + unread_notes(resolved, row, hc.overrides.task):
        print(note)
    print(f"results: {out}")


@terminable
def collect_main(argv=None) -> None:
    """`s3sim-collect DIR [OUT.csv]`: one table of every run under DIR (summary, status and resolved
    config) written to OUT.csv; a short one printed (key metrics and the config fields the runs vary);
    failed, invalid and unfinished runs, and the points of a Hydra sweep never started, listed on stderr.
    Exit code 0 when every run (every point) finished, 1 when some did not, 2 on bad input."""
    from s3sim.collect import RUN_FILES, collect, read_paths, short_table, status_line
    from s3sim.commandline import Parser, given_path

    ap = Parser(prog="s3sim-collect", description=" ".join(collect_main.__doc__.split()).split(": ", 1)[1],
                       epilog="A killed sweep is reported whole: its multirun.yaml says which points it has, and "
                              "those with no folder are rows with status 'never started'.")
    ap.add_argument("dir", metavar="DIR", type=given_path,
                    help="one results directory: a Hydra sweep (multirun) folder, a run, or a folder holding several "
                         "of either")
    ap.add_argument("out", metavar="OUT.csv", nargs="?", type=given_path,
                    help="the whole table as CSV, written atomically, in a folder that exists; not inside a run "
                         "folder DIR holds, nor DIR's multirun.yaml. The columns that time this machine "
                         "(sim_wall_s, sim_requests_per_s, wall_s) go beside it to OUT.wall_clock.csv, keyed by "
                         "run, so that OUT.csv is the same on every machine")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        table = collect(a.dir)
        if a.out is not None:
            from s3sim.writers import write_table
            out = Path(a.out).resolve()
            folders, files = read_paths(a.dir, table)
            inside = next((f for f in folders if out == f or f in out.parents), None)
            if inside is not None or out in files:
                what = f"lies in the run folder {inside}" if inside is not None else "is the sweep file it reads"
                raise ConfigError(f"OUT.csv {a.out} {what}: an output never overlaps an input; write it outside "
                                  "every run folder (e.g. DIR/all.csv)")
            if out.is_dir():
                raise ConfigError(f"OUT.csv {a.out} is a folder: s3sim-collect reads one DIR (a folder holding several "
                                  "sweeps or runs is one DIR) and writes the table to the file OUT.csv")
            if out.name in RUN_FILES:
                raise ConfigError(f"OUT.csv {a.out} is named as a run's own file ({', '.join(RUN_FILES)}): its folder "
                                  "would read as a run from then on; name it otherwise (e.g. all.csv)")
            if out.suffix.lower() != ".csv":
                raise ConfigError(f"OUT.csv {a.out}: the table is written as CSV; name it so (e.g. all.csv)")
            try:
                write_table(table, a.out)  # wall-clock columns beside it: OUT.wall_clock.csv
            except OSError as e:
                raise ConfigError(f"cannot write {e.filename or a.out}: {e.strerror or e}") from None
    except ConfigError as e:
        _fail("error", e, "s3sim-collect")
    with __import__("pandas").option_context("display.width", 200, "display.max_columns", 14):
        print(short_table(table).to_string(index=False, max_colwidth=40, float_format=lambda v: f"{v:.6g}"))
    print(status_line(table), file=sys.stderr)
    if (table.status != "finished").any():
        sys.exit(1)


if __name__ == "__main__":
    main()
