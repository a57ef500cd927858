"""The `s3sim-validate` command line: arguments, one-line errors and exit status 2 for bad input."""
from __future__ import annotations

import argparse
import sys

from s3sim.commandline import exit_code
from s3sim.core.errors import ConfigError
from s3sim.validation.engine import VLLM_ENTRIES
from s3sim.validation.replay import validate


PROG = "s3sim-validate"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)  # `--ou` is an error, not --out

    def error(self, message):  # one line, not usage + error
        raise ConfigError(message)


def main(argv=None) -> int:
    p = _Parser(prog=PROG, description="Replay a real vLLM run in the simulator and compare the metrics.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder with meta.json, requests.jsonl and, where recorded, "
                   "timeseries.csv (or the folder with run/ inside)")
    p.add_argument("--out", required=True, metavar="DIR", help="where validation.csv and the rest go")
    p.add_argument("--profile", metavar="PROFILE_DIR", help="operator profile folder, or 'none' for the datasheet operator model "
                   "(default: RUN_DIR/profile, else RUN_DIR/../profile, if either exists)")
    p.add_argument("--model", metavar="PRESET_OR_CONFIG_JSON", help="model preset or config.json (default: from "
                   "meta.json's model)")
    p.add_argument("--gpu", metavar="PRESET", help="GPU preset (default: from meta.json's or the profile's device)")
    p.add_argument("--fit-from", metavar="PRESET", help="with --profile none: the efficiencies fitted to another "
                   "GPU preset (what a GPU never profiled gets), not the run GPU's own; 'others': the mean of every "
                   "other GPU measured")
    p.add_argument("--all-reduce", default="auto", metavar="HOW", help="the collectives between the GPUs (tensor "
                   "parallelism's all-reduces; the logits' and expert parallelism's all-gathers follow): auto (engine "
                   "where the GPU preset names a step table, else the preset's measured table, else a ring; default), "
                   "engine (the measured table as the engine ran it: its floor plus the bytes at its bandwidth over "
                   "a factor fitted to whole steps), engine:<factor> (a factor given), measured (the table alone), "
                   "ring, link:<GB/s>:<us>, none, or a measured CSV")
    p.add_argument("--step-calibration", default="none", metavar="HOW", help="price each iteration as a whole "
                   "step fitted to a step table (s3sim.latency.steps): none (default), own (the profile's "
                   "tp<N>/step.csv), or a step.csv path")
    p.add_argument("--async-scheduling", default="auto", choices=("auto", "on", "off"), help="schedule each step "
                   "while the one before runs, as vLLM V1 does: auto (as meta.json records it, else on, vLLM's "
                   "default), on, off")
    p.add_argument("--vllm-entry", choices=VLLM_ENTRIES, help="only for a run whose meta.json records no "
                   "max_num_seqs or max_num_batched_tokens: how vLLM was started (offline: the LLM class; server: "
                   "vllm serve), whose defaults for the run's GPU fill them in")

    def replay():
        args = p.parse_args(sys.argv[1:] if argv is None else argv)
        validate(args.run_dir, args.out, args.profile, args.model, args.gpu, fit_from=args.fit_from,
                 all_reduce=args.all_reduce, step_calibration=args.step_calibration,
                 async_scheduling=args.async_scheduling, vllm_entry=args.vllm_entry)

    return exit_code(PROG, replay)


if __name__ == "__main__":
    sys.exit(main())
