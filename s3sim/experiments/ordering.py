"""`python -m s3sim.experiments.ordering` (`make ordering`): where length prediction still pays on vLLM V1, as
an ordering of the waiting queue.

Two grounded engines. The RTX 4090 run's (../shared/data/vllm_runs/rtx4090-llama-3.1-8b): Llama 3.1 8B priced
by that run's operator profile, its 41,408 tokens of KV (2,588 blocks), 256 sequences, a 2,048-token budget,
chunked prefill and prefix caching; and the RTX PRO 6000 run's (rtxpro6000-llama-3.1-8b): its profile, 128
sequences, a 2,048-token budget and 575,808 tokens of KV (what `s3sim-validate` derives for it), so that there
the sequence limit queues requests, not memory. The `vllm` policy's `policy.order` ranks the waiting queue:
- `fcfs`: vLLM as it ships;
- `sjf`: shortest predicted output first; `srpt`: shortest predicted remaining output first (a preempted
  request is re-ranked by what it has left); each with a starvation bound (`policy.max_wait_s`) in one row;
- `srpt` preempting the request with the longest predicted remaining work (`policy.victim=longest_remaining`),
  with that work predicted from the prompt alone or re-predicted as tokens are generated
  (`predictor.repredict=measured`: an error that shrinks with the tokens generated, as measured on SmolLM2's
  hidden states by `python -m s3exec.lab.reprediction`);
- predicted by the shipped predictor (the fine-tuned encoder, its committed predictions: `predictor=trained`),
  by a synthetic predictor where the workload has no prompt text, and by the oracle with one-token buckets
  (the exact length: the best any ordering by length can do).
Three workloads, each swept from about 0.9 to 1.5 times the engine's offline throughput (on the RTX 4090 8.6
requests/s on the ShareGPT prompts and 3.4 on the trace's, on the RTX PRO 6000 17.0 on the ShareGPT prompts:
below it vLLM admits almost every arrival at once, nothing waits, and the order of an empty queue changes
nothing), with three seeds (the arrival process and the synthetic predictor's errors): ShareGPT prompts the
predictor never saw (`workload=sharegpt_pairs workload.split=test`, Poisson arrivals) on each engine, and the
Azure conversation trace on the RTX 4090 (its first rows and own timestamps, replayed faster by
`workload.time_scale`; no prompt text, so no trained predictor).

Writes results/ordering/runs.csv (every run), frontier.csv (means over seeds with 95 % intervals),
summary.csv (each ordering against FCFS and against the oracle ordering, per load), and frontier.png
(mean and p99 TTFT and end-to-end latency against offered load), and prints the summary.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.commandline import Parser, exit_code, out_path

MAX_SEQ_LEN = 2048
ENGINE = ["model=llama-3.1-8b", "gpu=rtx-4090", "latency=operators", "policy=vllm", "+kv_capacity_tokens=41408",
          "policy.max_batch_size=256", "policy.max_num_batched_tokens=2048", "policy.prefix_caching=true",
          f"max_seq_len={MAX_SEQ_LEN}"]
# the RTX PRO 6000 run's engine (../shared/data/vllm_runs/rtxpro6000-llama-3.1-8b): its profile, 128 sequences,
# a 2,048-token budget and the KV capacity s3sim-validate derives for it (35,988 blocks: memory is never short,
# the sequence limit is what queues)
ENGINE_PRO6000 = ["model=llama-3.1-8b", "gpu=rtx-pro-6000", "latency=operators",
                  "latency.path=../shared/data/vllm_runs/rtxpro6000-llama-3.1-8b/profile", "policy=vllm",
                  "+kv_capacity_tokens=575808", "policy.max_batch_size=128", "policy.max_num_batched_tokens=2048",
                  "policy.prefix_caching=true", f"max_seq_len={MAX_SEQ_LEN}"]
SHAREGPT = ["workload=sharegpt_pairs", "workload.split=test", "arrival=poisson"]
WORKLOADS = {
    # name: (engine, overrides, load key, loads, requests)
    "sharegpt": (ENGINE, SHAREGPT, "arrival.rate", (7.5, 8.5, 9.5, 11.0, 13.0), 2000),
    # the trace's first 1,500 rows arrive at 4.8 requests/s on its own clock: time scales for 3.0-5.1 requests/s
    "azure": (ENGINE, ["workload=trace", "arrival=trace"], "workload.time_scale", (1.61, 1.42, 1.27, 1.10, 0.95), 1500),
    # offline, this engine serves the ShareGPT prompts at 17.0 requests/s
    "sharegpt-pro6000": (ENGINE_PRO6000, SHAREGPT, "arrival.rate", (15.0, 17.0, 19.0, 22.0, 26.0), 2000),
}
ORACLE = ["predictor=oracle", f"predictor.num_buckets={MAX_SEQ_LEN}"]
SYNTHETIC = ["predictor=synthetic", "predictor.accuracy=0.8", "predictor.error_shape=adjacent"]
TRAINED = ["predictor=trained"]
LONGEST = ["policy.victim=longest_remaining"]
# the remaining length re-predicted as tokens are generated, with the error measured on SmolLM2's hidden states
REPREDICTED = ["predictor.repredict=measured"]
METRICS = ("ttft_mean", "ttft_p99", "e2e_latency_mean", "e2e_latency_p99", "request_throughput", "offered_rate",
           "preemptions", "aged_admissions")


def configurations(workload: str) -> dict[str, list[str]]:
    """label -> the policy and predictor overrides of one ordering."""
    text = workload.startswith("sharegpt")  # prompts the trained predictor can read
    predicted = TRAINED if text else SYNTHETIC
    name = "trained" if text else "synthetic 80%"
    return {
        "fcfs": ["policy.order=fcfs", *ORACLE],  # the predictor is unused by fcfs
        f"sjf ({name})": ["policy.order=sjf", *predicted],
        f"srpt ({name})": ["policy.order=srpt", *predicted],
        f"srpt ({name}), max wait 20 s": ["policy.order=srpt", "policy.max_wait_s=20", *predicted],
        f"srpt ({name}), longest victim": ["policy.order=srpt", *LONGEST, *predicted],
        f"srpt ({name}), re-predicted, longest victim": ["policy.order=srpt", *LONGEST, *REPREDICTED, *predicted],
        "sjf (oracle)": ["policy.order=sjf", *ORACLE],
        "srpt (oracle)": ["policy.order=srpt", *ORACLE],
        "srpt (oracle), longest victim": ["policy.order=srpt", *LONGEST, *ORACLE],
    }


def one_run(overrides: list[str]) -> dict:
    from s3sim.bench import cfg_for
    from s3sim.cluster.build import build
    from s3sim.core.request import make_requests
    from s3sim.metrics.summary import summarize
    from s3sim.simulator.engine import simulate

    setup = build(cfg_for(overrides))
    result = simulate(make_requests(setup.prompt_len, setup.output_len, setup.arrivals, prefix=setup.prefix),
                      setup.scheduler, setup.latency)
    row = summarize(result)
    counts = setup.scheduler.counters()
    return {m: float(row.get(m, counts.get(m, np.nan))) for m in METRICS}


def sweep(workloads, seeds, echo=print) -> pd.DataFrame:
    rows = []
    for wname in workloads:
        engine, base, key, loads, n = WORKLOADS[wname]
        for label, conf in configurations(wname).items():
            for load in loads:
                for seed in seeds:
                    t0 = time.perf_counter()
                    over = [*engine, *base, *conf, f"{key}={load}", f"num_requests={n}", f"seed={seed}"]
                    row = one_run(over)
                    rows.append({"workload": wname, "ordering": label, "load": load, "seed": seed, **row})
                    echo(f"{wname:8s} {label:38s} {key}={load:<4g} seed {seed}: TTFT mean {row['ttft_mean']:8.2f} s, "
                         f"e2e mean {row['e2e_latency_mean']:8.2f} s ({time.perf_counter() - t0:.1f} s)")
    return pd.DataFrame(rows)


def ci95(values: pd.Series) -> float:
    """Half-width of a 95 % t interval of the mean (NaN for one value)."""
    v = values.dropna().to_numpy(dtype=float)
    if len(v) < 2:
        return float("nan")
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}.get(len(v), 2.0)
    return float(t * v.std(ddof=1) / math.sqrt(len(v)))


def frontier(runs: pd.DataFrame) -> pd.DataFrame:
    keys = ["workload", "ordering", "load"]
    g = runs.groupby(keys, sort=False)
    out = g[list(METRICS)].mean()
    for m in ("ttft_mean", "ttft_p99", "e2e_latency_mean", "e2e_latency_p99"):
        out[f"{m}_ci95"] = g[m].apply(ci95)
    out["seeds"] = g.size()
    return out.reset_index()


def summary(front: pd.DataFrame) -> pd.DataFrame:
    """Each ordering's mean TTFT and end-to-end latency as a ratio to FCFS's and to the oracle SRPT's, per load."""
    rows = []
    for (w, load), g in front.groupby(["workload", "load"], sort=False):
        by = g.set_index("ordering")
        for label, r in by.iterrows():
            rows.append({"workload": w, "load": load, "offered_rate": r.offered_rate, "ordering": label,
                         "ttft_mean": r.ttft_mean, "e2e_latency_mean": r.e2e_latency_mean, "ttft_p99": r.ttft_p99,
                         "e2e_latency_p99": r.e2e_latency_p99,
                         "ttft_mean_vs_fcfs": r.ttft_mean / by.loc["fcfs", "ttft_mean"],
                         "e2e_mean_vs_fcfs": r.e2e_latency_mean / by.loc["fcfs", "e2e_latency_mean"],
                         "e2e_p99_vs_fcfs": r.e2e_latency_p99 / by.loc["fcfs", "e2e_latency_p99"],
                         "e2e_mean_vs_oracle_srpt": r.e2e_latency_mean / by.loc["srpt (oracle)", "e2e_latency_mean"]})
    return pd.DataFrame(rows)


def draw(front: pd.DataFrame):
    from s3sim.plots import pyplot
    plt = pyplot()
    workloads = list(dict.fromkeys(front.workload))
    metrics = (("ttft_mean", "mean TTFT (s)"), ("ttft_p99", "p99 TTFT (s)"), ("e2e_latency_mean", "mean e2e (s)"),
               ("e2e_latency_p99", "p99 e2e (s)"))
    fig, axes = plt.subplots(len(workloads), len(metrics), figsize=(4.0 * len(metrics), 3.4 * len(workloads)),
                             squeeze=False)
    for i, w in enumerate(workloads):
        d = front[front.workload == w]
        for j, (m, label) in enumerate(metrics):
            ax = axes[i][j]
            for o in dict.fromkeys(d.ordering):
                g = d[d.ordering == o].sort_values("offered_rate")
                ax.errorbar(g.offered_rate, g[m], yerr=g[f"{m}_ci95"].fillna(0), marker=".", capsize=2, label=o,
                            linestyle="--" if "oracle" in o else "-")
            ax.set(title=f"{w}: {label}", xlabel="offered load (requests/s)", yscale="log")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=out_path, default="results/ordering")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated: {', '.join(WORKLOADS)}")
    ap.add_argument("--seeds", type=int, default=3)

    def work():
        from s3sim.core.errors import ConfigError
        from s3sim.plots import save
        from s3sim.writers import write_csv

        a = ap.parse_args(argv)
        names = [w for w in a.workloads.split(",") if w]
        bad = [w for w in names if w not in WORKLOADS]
        if bad or not names:
            raise ConfigError(f"--workloads: {bad[0] if bad else '(none)'!r} is not one of {', '.join(WORKLOADS)}")
        if a.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {a.seeds}")
        runs = sweep(names, range(a.seeds))
        front = frontier(runs)
        table = summary(front)
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(runs, out / "runs.csv")
        write_csv(front, out / "frontier.csv")
        save(draw(front), front, out, "frontier_plot")
        write_csv(table, out / "summary.csv")  # last: its presence marks a finished experiment
        with pd.option_context("display.width", 220, "display.max_columns", 20, "display.precision", 3):
            print(table.to_string(index=False))
        print(f"results: {out}")

    return exit_code("ordering", work)


if __name__ == "__main__":
    sys.exit(main())
