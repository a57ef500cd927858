"""Beyond the paper (`make beyond`): where S3 loses, and whether prediction still helps once memory is paged.

Measured sweeps, each answering one question (results/beyond/<name>.csv, and a figure with its data):
- accuracy: s3 against predictor accuracy and error shape (offline throughput, goodput at a fixed load);
- buckets: s3 and the oracle against the number of buckets (equal and quantile edges);
- workloads: Alpaca reference lengths, Vicuna's generated lengths and ShareGPT's long tail;
- burstiness: gamma arrivals from Poisson (cv 1) to cv 10, the highest rate meeting the SLO;
- hardware: the same model on GPUs with more memory and compute to spare;
- paging: paged allocation against s3, and paged with shortest-predicted-first admission (paged_spf),
  by SLO capacity and by latency at one load 10 % over paged's capacity (paging_latency.csv).
SLO as in `experiment=paper` (TTFT <= 2 s and TPOT <= 0.18 s for 90 % of requests). Runs go to
multirun/beyond/ and are reused when finished.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim import plots
from s3sim.commandline import Parser, out_path
from s3sim.experiments.common import Composer, online_requests, rate_text, run_many, slo_capacity
from s3sim.experiments.paper import MODELS
from s3sim.plots import bars, sweep
from s3sim.writers import write_csv

FULL = dict(
    accuracy=(0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0),
    shapes=("adjacent", "uniform", "under", "over"),
    buckets=(2, 3, 5, 10, 20, 50, 100),
    workloads=("alpaca", "alpaca_vicuna", "sharegpt"),
    burstiness=(1.0, 0.25, 0.05, 0.01),  # gamma shape; cv = 1 / sqrt(shape): 1, 2, 4.5, 10
    burst_models=("gpt-j-6b", "opt-30b"),
    gpus=("a100-40gb-pcie", "a100-80gb-pcie", "h100-sxm", "h200"),
    hw_models=("gpt-j-6b", "llama-2-7b"),
    policies=("orca", "s3", "oracle", "paged", "paged_spf"),
    hw_policies=("orca", "s3", "oracle", "paged"),
    bucket_series={"s3": ["policy=s3"], "oracle": ["policy=oracle"],
                   "s3 quantile": ["policy=s3", "predictor.bucketing=quantile"],
                   "oracle quantile": ["policy=oracle", "predictor.bucketing=quantile"]},
    grid=(0.25, 0.5, 0.75, 1.0),  # first rates of each SLO-capacity search, times the offline maximum
)
QUICK = dict(accuracy=(0.4, 1.0), shapes=("adjacent", "under"), buckets=(2, 10), workloads=("alpaca", "sharegpt"),
             burstiness=(1.0, 0.25), burst_models=("gpt-j-6b",), gpus=("a100-80gb-pcie", "h200"),
             hw_models=("gpt-j-6b",),
             policies=("orca", "s3", "paged_spf"), hw_policies=("orca", "s3"),
             bucket_series={"s3": ["policy=s3"], "oracle": ["policy=oracle"]}, grid=(0.5, 1.0))
REFERENCES = ("orca", "oracle", "paged")
# GPT-J's context is 2,048 tokens: ShareGPT rows whose prompt leaves fewer than 128 for the answer are dropped
WORKLOAD_OVERRIDES = {"sharegpt": ["workload.max_prompt=1920"]}
# paged is vLLM as it ran in 2023 (prompt-only iterations, 256 sequences); beside it, the same without the batch cap
PAGING = {"paged": ["policy=paged"], "paged, no batch cap": ["policy=paged", "policy.max_batch_size=null"],
          "paged_spf": ["policy=paged_spf"], "s3": ["policy=s3"]}
LATENCY = ["model", "policy", "rate", "goodput", "slo_attainment", "ttft_mean", "ttft_p99", "e2e_latency_mean",
           "e2e_latency_p99", "preemptions", "recomputed_tokens"]


class Study:
    """Shared settings of every sweep: where runs go, how many requests, how many workers."""

    def __init__(self, args, grid):
        self.grid = grid
        self.composer = Composer("paper")
        self.runs, self.out = Path(args.runs), Path(args.out)
        self.n, self.jobs, self.rounds = args.num_requests, args.jobs, args.rounds
        self.window, self.least = args.window, args.least_requests

    def offline(self, points, label):
        for p in points:
            p["overrides"] = p["overrides"] + [f"num_requests={self.n}"]
        return run_many(points, self.runs, self.composer, jobs=self.jobs, label=label)

    def at_rate(self, points, rate, label, arrival=("arrival=poisson",)):
        for p in points:
            p["overrides"] = p["overrides"] + list(arrival) + [
                f"arrival.rate={rate_text(rate)}",
                f"num_requests={online_requests(float(rate_text(rate)), self.window, self.least)}"]
        return run_many(points, self.runs, self.composer, jobs=self.jobs, label=label)

    def capacity(self, points, label, arrival=("arrival=poisson",)):
        """Offline maximum, then the highest rate meeting the SLO, for each point."""
        off = self.offline([dict(p) for p in points], f"{label} offline")
        pts = [{**p, "scale": r.request_throughput} for p, (_, r) in zip(points, off.iterrows())
               if r.status == "finished"]
        cap, _ = slo_capacity(pts, self.runs, self.composer, grid=self.grid, rounds=self.rounds, jobs=self.jobs,
                              label=f"{label} online", arrival=arrival, window_s=self.window, least=self.least)
        keep = ["request_throughput", "mean_batch_size", "kv_used_frac", "preemptions", "mispredictions",
                "ttft_mean", "e2e_latency_mean"]
        off = off[off.status == "finished"].reset_index(drop=True)
        return pd.concat([cap.reset_index(drop=True), off[keep]], axis=1)

    def save(self, table, name):
        self.out.mkdir(parents=True, exist_ok=True)
        write_csv(table, self.out / f"{name}.csv")


def predictor_sweep(st: Study, model: str, x: str, values, series: dict, rate: float, name: str):
    """s3-family policies over `x` (offline and at `rate`), with the predictor-free references."""
    pts = [{"series": s, x: v, "overrides": MODELS[model][0] + ov + [f"{x}={v}"]}
           for s, ov in series.items() for v in values]
    pts += [{"series": p, x: np.nan, "overrides": MODELS[model][0] + [f"policy={p}"]} for p in REFERENCES]
    off = st.offline([dict(p) for p in pts], f"{name} offline")
    on = st.at_rate([dict(p) for p in pts], rate, f"{name} at {rate:.4g} req/s")
    t = off[["series", x, "request_throughput", "preemptions", "mispredictions", "kv_used_frac"]].copy()
    t["goodput"] = on.goodput.to_numpy()
    t["slo_attainment"] = on.slo_attainment.to_numpy()
    t.insert(0, "model", model)
    t["rate"] = rate
    return t


def main(argv=None) -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=out_path, default="results/beyond")
    ap.add_argument("--runs", default="multirun/beyond")
    ap.add_argument("--num-requests", type=int, default=5000, help="offline runs")
    ap.add_argument("--window", type=float, default=60.0, help="seconds of arrivals in each online run")
    ap.add_argument("--least-requests", type=int, default=2000, help="fewest requests in an online run")
    ap.add_argument("--rounds", type=int, default=3, help="bisection rounds of the SLO-capacity search")
    ap.add_argument("--models", default="gpt-j-6b,llama-13b", help="models of the accuracy and bucket sweeps")
    ap.add_argument("--paging-models", default="gpt-j-6b,llama-13b,opt-30b")
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="two values per sweep (to check the pipeline)")
    args = ap.parse_args(argv)
    g = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    st = Study(args, g["grid"])
    models = args.models.split(",")

    # a fixed load per model for goodput: s3's (default predictor) highest rate meeting the SLO
    ref = st.capacity([{"model": m, "overrides": MODELS[m][0] + ["policy=s3"]} for m in models], "load")
    rate = dict(zip(ref.model, ref.capacity))

    acc, bkt = [], []
    for m in models:
        acc.append(predictor_sweep(st, m, "predictor.accuracy", g["accuracy"],
                                   {s: ["policy=s3", f"predictor.error_shape={s}"] for s in g["shapes"]},
                                   rate[m], f"accuracy {m}"))
        bkt.append(predictor_sweep(st, m, "predictor.num_buckets", g["buckets"],
                                   g["bucket_series"], rate[m], f"buckets {m}"))
    for name, tables, x, xlabel, xscale in (("accuracy", acc, "predictor.accuracy", "predictor accuracy", "linear"),
                                            ("buckets", bkt, "predictor.num_buckets", "buckets", "log")):
        st.save(pd.concat(tables, ignore_index=True), name)
        for t in tables:
            m = t.model.iloc[0]
            fig = sweep.draw(t, x, [("request_throughput", "offline throughput (requests/s)"),
                                    ("goodput", f"goodput at {t.rate.iloc[0]:.3g} requests/s")],
                             hue="series", xlabel=xlabel, xscale=xscale, title=f"{m}, A100 80 GB, Alpaca")
            plots.save(fig, t, st.out, f"{name}_{m}")

    policies = g["policies"]
    wl = st.capacity([{"workload": w, "policy": p, "overrides": ["model=gpt-j-6b", f"workload={w}", f"policy={p}",
                                                                 *WORKLOAD_OVERRIDES.get(w, [])]}
                      for w in g["workloads"] for p in policies], "workloads")
    st.save(wl, "workloads")
    plots.save(bars.draw(wl.rename(columns={"workload": "model"}), "capacity", "highest rate meeting the SLO (req/s)",
                         "gpt-j-6b, A100 80 GB: by workload"), wl, st.out, "workloads")

    # the gamma shape is part of the arrival, so each burstiness is its own search
    bu = pd.concat([st.capacity([{"model": m, "burstiness": b, "cv": round(b ** -0.5, 2), "policy": p,
                                  "overrides": MODELS[m][0] + [f"policy={p}"]} for p in policies],
                                f"burstiness {m} {b}", arrival=("arrival=gamma", f"arrival.burstiness={b}"))
                    for m in g["burst_models"] for b in g["burstiness"]], ignore_index=True)
    st.save(bu, "burstiness")
    for m, t in bu.assign(series=bu.policy).groupby("model", sort=False):
        plots.save(sweep.draw(t, "cv", [("capacity", "highest rate meeting the SLO (req/s)")], xscale="log",
                              xlabel="coefficient of variation of inter-arrival gaps", title=f"{m}, A100 80 GB"),
                   t, st.out, f"burstiness_{m}")

    hw = st.capacity([{"gpu": gpu, "model": m, "policy": p, "overrides": [f"model={m}", f"gpu={gpu}", f"policy={p}"]}
                      for m in g["hw_models"] for gpu in g["gpus"] for p in g["hw_policies"]],
                     "hardware")
    st.save(hw, "hardware")
    plots.save(bars.draw(hw[hw.model == "gpt-j-6b"].assign(model=lambda d: d.gpu), "capacity",
                         "highest rate meeting the SLO (req/s)", "gpt-j-6b on larger GPUs"), hw, st.out, "hardware")

    pg = st.capacity([{"model": m, "policy": s, "overrides": MODELS[m][0] + ov}
                      for m in args.paging_models.split(",") for s, ov in PAGING.items()], "paging")
    st.save(pg, "paging")
    # the same load for every variant, 10 % over paged's SLO capacity: a queue forms, so its order shows
    lat = []
    for m in args.paging_models.split(","):
        r = 1.1 * float(pg[(pg.model == m) & (pg.policy == "paged")].capacity.iloc[0])
        pts = [{"model": m, "policy": s, "overrides": MODELS[m][0] + ov} for s, ov in PAGING.items()]
        if r > 0:
            lat.append(st.at_rate(pts, r, f"paging {m} at {r:.4g} req/s").assign(rate=r))
    if lat:
        st.save(pd.concat(lat, ignore_index=True)[LATENCY], "paging_latency")
    plots.save(bars.draw(pg, "capacity", "highest rate meeting the SLO (req/s)", "paging with and without prediction"),
               pg, st.out, "paging")
    print(f"\nwrote {st.out}/ in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
