"""The default experiment (`make run`): every policy on Alpaca lengths, GPT-J 6B on one A100 80 GB.

Offline (all requests at t=0) gives maximum throughput; online, a sweep of Poisson arrival rates gives
the latency-throughput frontier. Then S3 with real predictions: the trained predictor's committed
predictions for ShareGPT's held-out prompts, beside the oracle and a synthetic predictor. Configs are
composed from `conf/` exactly as `s3sim` composes them. Writes results/default/{offline,online,
predictors}.csv, frontier.png and the data behind it, and prints the tables.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s3sim.commandline import Parser, out_path
from s3sim.config import CONF_DIR
from s3sim.core.errors import ConfigError
from s3sim.core.policies import COMPARED
from s3sim.runner import run_config
from s3sim.writers import write_csv, write_table

RATES = (10, 25, 50, 75, 100, 125, 150, 175)
PREDICTOR_RUNS = {  # S3 on the held-out ShareGPT prompts, offline, under each predictor
    "s3 + trained": ["policy=s3", "predictor=trained"],
    "s3 + synthetic 80% adjacent": ["policy=s3", "predictor=synthetic"],
    "s3 + synthetic 50% under": ["policy=s3", "predictor=synthetic", "predictor.accuracy=0.5",
                                 "predictor.error_shape=under"],
    "oracle": ["policy=oracle"],
    "orca": ["policy=orca"],
}
# hf sized by each batch's actual longest output (a best case for generate) beside its default (max_len)
HF_ACTUAL = ["policy=hf", "policy.sizing=actual"]
PREDICTOR_COMMON = ["workload=sharegpt_pairs", "workload.split=test", "num_requests=null"]
COLUMNS = ["run", "request_throughput", "output_throughput", "ttft_p50", "tpot_p50", "e2e_latency_p50",
           "e2e_latency_p99", "mean_batch_size", "max_batch_size", "kv_reserved_frac", "kv_used_frac",
           "preemptions", "mispredictions", "recomputed_tokens", "goodput"]


def configs(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for ov in overrides:
            yield ov, OmegaConf.to_container(compose("config", overrides=ov), resolve=True)


def run_all(overrides, label):
    rows = []
    for ov, cfg in configs(overrides):
        t0 = time.perf_counter()
        rows.append(run_config(cfg))
        print(f"  {label}: {' '.join(ov):55s} {time.perf_counter() - t0:6.2f}s wall", flush=True)
    return pd.DataFrame(rows)


def ratios(offline: pd.DataFrame) -> pd.DataFrame:
    thr = offline[offline.run == offline.policy].set_index("policy").request_throughput
    pairs = [("s3", "orca"), ("s3", "ft"), ("oracle", "orca"), ("s3", "oracle"), ("paged", "orca"), ("s3", "paged"),
             ("s3", "vllm"), ("s3", "hf"), ("hf", "ft")]
    pairs = [(a, b) for a, b in pairs if a in thr and b in thr]
    return pd.DataFrame({"ratio": [f"{a}/{b}" for a, b in pairs], "value": [thr[a] / thr[b] for a, b in pairs]})


def plot_frontier(online: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for policy, g in online.groupby("policy", sort=False):
        g = g.sort_values("rate")
        axes[0].plot(g.request_throughput, g.e2e_latency_p50, marker="o", label=policy)
        axes[1].plot(g.request_throughput, g.tpot_p50 * 1000, marker="o", label=policy)
    axes[0].set(xlabel="achieved throughput (requests/s)", ylabel="median e2e latency (s)", yscale="log",
                title="latency-throughput frontier")
    axes[1].set(xlabel="achieved throughput (requests/s)", ylabel="median TPOT (ms)", title="time per output token")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("GPT-J 6B, A100 80 GB PCIe, Alpaca lengths, Poisson arrivals (simulated)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=out_path, default="results/default")
    ap.add_argument("--num-requests", type=int, default=None,
                    help="offline requests (default: every workload row once, Alpaca's 10,000)")
    ap.add_argument("--online-requests", type=int, default=4000)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        n = "null" if args.num_requests is None else args.num_requests
        print(f"offline: {'one request per workload row' if args.num_requests is None else f'{n} requests'}, "
              f"all at t=0")
        offline = run_all([[f"policy={p}", f"num_requests={n}"] for p in COMPARED]
                          + [HF_ACTUAL + [f"num_requests={n}"]], "offline")
        offline.insert(0, "run", [*COMPARED, "hf, sizing=actual"])
        write_table(offline, out / "offline.csv")
        print(f"online: {args.online_requests} requests, Poisson arrivals at {list(RATES)} req/s")
        online = run_all([[f"policy={p}", "arrival=poisson", f"arrival.rate={r}",
                           f"num_requests={args.online_requests}"] for p in COMPARED for r in RATES], "online")
    except ConfigError as e:
        print(f"s3sim: error: {e}", file=sys.stderr)
        sys.exit(2)
    write_table(online, out / "online.csv")
    try:
        print("predictors: ShareGPT held-out prompts (SmolLM2 token counts), offline")
        pred = run_all([PREDICTOR_COMMON + ov for ov in PREDICTOR_RUNS.values()], "predictors")
    except ConfigError as e:
        print(f"s3sim: error: {e}", file=sys.stderr)
        sys.exit(2)
    pred.insert(0, "run", list(PREDICTOR_RUNS))
    write_table(pred, out / "predictors.csv")
    write_csv(online[["policy", "rate", "request_throughput", "e2e_latency_p50", "tpot_p50"]],
              out / "frontier_data.csv")
    plot_frontier(online, out / "frontier.png")
    r = ratios(offline)
    write_csv(r, out / "ratios.csv")
    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.precision", 3):
        print("\noffline (maximum throughput):")
        print(offline[COLUMNS].to_string(index=False))
        print("\nthroughput ratios:")
        print(r.to_string(index=False))
        print("\nS3 with real predictions (ShareGPT held-out prompts, offline):")
        print(pred[["run"] + COLUMNS[1:]].to_string(index=False))
    print(f"\nwrote {out}/offline.csv, online.csv, predictors.csv, ratios.csv, frontier.png, frontier_data.csv")


if __name__ == "__main__":
    main()
