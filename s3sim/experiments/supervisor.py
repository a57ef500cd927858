"""S3 with the real predictor, supervisor by supervisor (`make supervisor`): how close to the oracle, at what cost.

1. Offline, ShareGPT's held-out prompts, GPT-J 6B on one A100 80 GB, the trained predictor's committed
   predictions: the paper's supervisor (preempt on every overflow), growth in place, making room by
   preempting the cheapest newest requests (the default), reservations at quantiles of the predicted
   distribution or at the size that minimises reserved tokens plus the expected recompute (`reserve=cost`),
   and growth from the conditional distribution, each beside the oracle.
2. Starvation: the Azure conversation trace on Llama-3.1-8B (one A100 80 GB, replayed as recorded, near
   capacity, and 4x faster, overloaded), s3 with and without aging (`policy.max_wait`) beside paged and vllm: the longest wait,
   TTFT p99 by output-length class, and the throughput aging costs.
3. Prediction's own time: `predictor.latency_ms` charged before admission, offline and on the trace.

   The first table again on the grounded latency model (Llama-3.1-8B, RTX 4090, its measured operators).
Writes results/supervisor/{offline,grounded,quantiles,fairness,latency}.csv and prints the tables.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from s3sim.commandline import Parser, out_path
from s3sim.core.errors import ConfigError
from s3sim.experiments.default import run_all
from s3sim.writers import write_table

SHAREGPT = ["workload=sharegpt_pairs", "workload.split=test", "num_requests=null"]
TRAINED = ["policy=s3", "predictor=trained"]
OFFLINE = {  # label -> overrides (on top of SHAREGPT)
    "s3 + trained, paper supervisor (in_place=false)": TRAINED + ["policy.in_place=false", "policy.make_room=false"],
    "s3 + trained, grow in place (make_room=false)": TRAINED + ["policy.make_room=false"],
    "s3 + trained, grow in place + make room (default)": TRAINED,
    "s3 + trained, default + grow=conditional": TRAINED + ["policy.grow=conditional"],
    "s3 + trained, default + grow=max": TRAINED + ["policy.grow=max"],
    "oracle": ["policy=oracle"],
    "orca": ["policy=orca"],
}
# the same, on the grounded latency model: Llama-3.1-8B on an RTX 4090 priced by the operators measured on it
GROUNDED = ["model=llama-3.1-8b", "gpu=rtx-4090", "latency=operators"]
GROUNDED_RUNS = {k: OFFLINE[k] for k in list(OFFLINE)[:3]} | {"oracle": ["policy=oracle"], "vllm": ["policy=vllm"],
                                                               "orca": ["policy=orca"]}
QUANTILES = (0.2, 0.35, 0.5, 0.65, 0.8, 0.9)
OVERFLOW_COSTS = (0.25, 0.5, 1, 2, 4)
TRACE = ["workload=trace", "arrival=trace", "model=llama-3.1-8b"]
SPEEDS = {"x1": "workload.time_scale=1", "x4": "workload.time_scale=0.25"}  # near capacity, and overloaded
FAIRNESS = {
    "s3, paper supervisor": ["policy=s3", "policy.in_place=false", "policy.make_room=false"],
    "s3 (default supervisor)": ["policy=s3"],
    "s3, max_wait=30 s": ["policy=s3", "policy.max_wait=30"],
    "s3, max_wait=10 s": ["policy=s3", "policy.max_wait=10"],
    "s3, max_wait=2 s": ["policy=s3", "policy.max_wait=2"],
    "paged": ["policy=paged"],
    "vllm": ["policy=vllm"],
}
LATENCIES_MS = (0, 1, 5, 21)
COLUMNS = ["run", "request_throughput", "of_oracle", "preemptions", "preemptions_overflow", "preemptions_memory",
           "recomputed_tokens", "recomputed_tokens_overflow", "recomputed_tokens_memory", "grown_in_place",
           "mispredictions", "under_predictions", "mean_batch_size", "kv_reserved_frac", "kv_used_frac"]
FAIR_COLUMNS = ["run", "request_throughput", "ttft_p50", "ttft_p99", "queue_time_max", "ttft_p99_short",
                "ttft_p99_medium", "ttft_p99_long", "e2e_latency_p99", "preemptions", "aged_admissions"]


def labelled(runs: dict, common: list, label: str) -> pd.DataFrame:
    df = run_all([common + ov for ov in runs.values()], label)
    df.insert(0, "run", list(runs))
    return df


def of_oracle(df: pd.DataFrame, oracle: float) -> pd.DataFrame:
    df.insert(2, "of_oracle", df.request_throughput / oracle)
    return df


def show(title: str, df: pd.DataFrame, cols) -> None:
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.precision", 3):
        print(f"\n{title}")
        print(df[[c for c in cols if c in df]].to_string(index=False))


def main(argv=None) -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=out_path, default="results/supervisor")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        off = labelled(OFFLINE, SHAREGPT, "offline")
        oracle = float(off.loc[off.run == "oracle", "request_throughput"].iloc[0])
        off = of_oracle(off, oracle)
        write_table(off, out / "offline.csv")
        grounded = labelled(GROUNDED_RUNS, SHAREGPT + GROUNDED, "grounded")
        grounded = of_oracle(grounded, float(grounded.loc[grounded.run == "oracle", "request_throughput"].iloc[0]))
        write_table(grounded, out / "grounded.csv")
        qs = {f"s3 + trained, reserve=quantile q={q}{', grow=conditional' if g else ''}":
              TRAINED + ["policy.reserve=quantile", f"policy.quantile={q}"] + (["policy.grow=conditional"] if g else [])
              for g in (False, True) for q in QUANTILES}
        qs |= {f"s3 + trained, reserve=cost overflow_cost={w}": TRAINED + ["policy.reserve=cost", f"policy.overflow_cost={w}"]
               for w in OVERFLOW_COSTS}
        quant = of_oracle(labelled(qs, SHAREGPT, "quantiles"), oracle)
        write_table(quant, out / "quantiles.csv")
        fair = labelled({f"{speed}: {k}": v + [ts] for speed, ts in SPEEDS.items() for k, v in FAIRNESS.items()},
                        TRACE, "fairness")
        write_table(fair, out / "fairness.csv")
        lat = {f"{where}, latency_ms={ms}": (common + [f"predictor.latency_ms={ms}"])
               for where, common in (("offline sharegpt, s3 + trained", SHAREGPT + TRAINED),
                                     *((f"azure trace {speed}, s3 + synthetic", TRACE + [ts, "policy=s3"])
                                       for speed, ts in SPEEDS.items()))
               for ms in LATENCIES_MS}
        latency = labelled(lat, [], "latency")
        write_table(latency, out / "latency.csv")
    except ConfigError as e:
        print(f"s3sim: error: {e}", file=sys.stderr)
        sys.exit(2)
    show("offline, ShareGPT held-out prompts, GPT-J 6B / A100 80 GB:", off, COLUMNS)
    show("offline, ShareGPT held-out prompts, Llama-3.1-8B / RTX 4090, latency from its measured operators:",
         grounded, COLUMNS)
    show("reservation at a quantile of the predicted distribution, or by expected cost (default supervisor):",
         quant, COLUMNS)
    show("starvation: Azure conversation trace as recorded (x1) and 4x faster, Llama-3.1-8B / A100 80 GB:", fair,
         FAIR_COLUMNS)
    show("prediction latency charged before admission:", latency,
         ["run", "request_throughput", "ttft_p50", "ttft_p99", "e2e_latency_p50", "preemptions"])
    print(f"\nwrote {out}/offline.csv, grounded.csv, quantiles.csv, fairness.csv, latency.csv")


if __name__ == "__main__":
    main()
