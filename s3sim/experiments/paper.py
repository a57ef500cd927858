"""The S3 paper's evaluation in simulation (`make paper`): maximum throughput of ft, hf, orca, s3 and oracle
(and paged and vllm, the peers the paper predates) for GPT-J 6B, LLaMA 13B, GPT-NeoX 20B and OPT 30B on one A100
80 GB, LLaMA 65B on two and GPT-3 175B on eight SXM A100s; the highest Poisson rate each sustains under
the reading-speed SLO; and how many GPUs each needs to serve what s3 serves.

GPUs needed: for each model the target is s3's SLO capacity at the model's smallest GPU count. Every
policy is measured at 1x, 2x and 4x that count (tensor parallelism, `gpu.count`, its all-reduces
priced). Two answers: by arithmetic, replicas of a k-GPU server that each sustain c requests/s need
k * ceil(target / c) GPUs (as if the stream split evenly, each replica seeing Poisson at target /
replicas); by simulation, the fewest replicas of k GPUs behind a router (least outstanding requests,
`s3sim.cluster`) whose whole cluster serves the Poisson stream at the target within the SLO (a search:
the arithmetic count first, then doubling or bisection). Each keeps the cheapest k.

Runs go to multirun/paper/<overrides> (resumable: finished runs are reused); tables and figures, each
with its data, to results/paper/.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pandas as pd

from s3sim import plots
from s3sim.commandline import Parser, out_path
from s3sim.core.policies import COMPARED
from s3sim.experiments.common import Composer, replicas_needed, run_many, slo_capacity
from s3sim.plots import bars, frontier, timeline
from s3sim.writers import write_csv

# label, overrides, GPUs the model needs at least (80 GB each)
MODELS = {
    "gpt-j-6b": (["model=gpt-j-6b"], 1),
    "llama-13b": (["model=llama-2-13b"], 1),
    "gpt-neox-20b": (["model=gpt-neox-20b"], 1),
    "opt-30b": (["model=opt-30b"], 1),
    "llama-65b": (["model=llama-65b"], 2),
    # the paper's largest model: eight SXM A100s (NVLink), as such a model is served
    "gpt-3-175b": (["model=gpt-3-175b", "gpu=a100-80gb-sxm"], 8),
}
PAPER_GAIN = 6.49  # S3's best throughput gain over max-length reservation, offline and under the SLO
OFFLINE_COLUMNS = ["model", "gpus", "policy", "request_throughput", "output_throughput", "mean_batch_size",
                   "max_batch_size", "kv_reserved_frac", "kv_used_frac", "tpot_p50", "preemptions",
                   "mispredictions"]


def gpu_overrides(n: int) -> list[str]:
    return [f"gpu.count={n}"] if n != 1 else []


def offline_points(models, policies, multiples, extra):
    return [{"model": m, "policy": p, "gpus": MODELS[m][1] * k,
             "overrides": MODELS[m][0] + [f"policy={p}"] + gpu_overrides(MODELS[m][1] * k) + extra}
            for m in models for k in multiples for p in policies]


def gpus_needed(cap: pd.DataFrame) -> pd.DataFrame:
    """Per model and policy: the cheapest GPU count (k-GPU replicas) serving s3's rate at the base count."""
    rows = []
    for model, g in cap.groupby("model", sort=False):
        base = g.gpus.min()
        s3 = g[(g.policy == "s3") & (g.gpus == base)].capacity
        target = float(s3.iloc[0]) if len(s3) else math.nan
        for policy, h in g.groupby("policy", sort=False):
            best, how = math.inf, ""
            for _, r in h.sort_values("gpus").iterrows():
                if r.capacity > 0 and target > 0:
                    n = int(r.gpus) * math.ceil(target / r.capacity - 1e-9)
                    if n < best:
                        best, how = n, f"{math.ceil(target / r.capacity - 1e-9)} x {int(r.gpus)}"
            one = h[h.gpus == base].capacity
            rows.append({"model": model, "policy": policy, "target_rate": target, "gpus": best, "as": how,
                         "replicas_only": (int(base) * math.ceil(target / float(one.iloc[0]) - 1e-9)
                                           if len(one) and one.iloc[0] > 0 and target > 0 else math.inf)})
    return pd.DataFrame(rows)


def simulated_points(cap: pd.DataFrame, gpus: pd.DataFrame) -> list[dict]:
    """One cluster search per model, policy and replica size (GPUs) with a measured SLO capacity."""
    pts = []
    for _, g in gpus.iterrows():
        if not g.target_rate > 0:
            continue
        rows = cap[(cap.model == g.model) & (cap.policy == g.policy) & (cap.capacity > 0)]
        for _, r in rows.iterrows():
            pts.append({"model": g.model, "policy": g.policy, "gpus_per_replica": int(r.gpus), "target": g.target_rate,
                        "start": math.ceil(g.target_rate / r.capacity - 1e-9),
                        "overrides": MODELS[g.model][0] + [f"policy={g.policy}"] + gpu_overrides(int(r.gpus))})
    return pts


def with_simulated(gpus: pd.DataFrame, found: pd.DataFrame) -> pd.DataFrame:
    """The arithmetic table with the simulated answer beside it: `gpus_simulated` (the cheapest replicas x
    GPUs found), `as_simulated` and the router."""
    out = gpus.copy()
    out["gpus_simulated"], out["as_simulated"], out["router"] = math.inf, "", ""
    for i, g in out.iterrows():
        f = found[(found.model == g.model) & (found.policy == g.policy) & found.replicas.notna()] if len(found) else found
        if len(f):
            cost = f.replicas.astype(int) * f.gpus_per_replica
            best = f.loc[cost.idxmin()]
            out.loc[i, ["gpus_simulated", "as_simulated", "router"]] = [
                int(cost.min()), f"{int(best.replicas)} x {int(best.gpus_per_replica)}", best.router]
    out["gpus_simulated"] = [int(v) if math.isfinite(v) else v for v in out.gpus_simulated]  # counts, or inf
    return out


def comparison(offline: pd.DataFrame, cap: pd.DataFrame, gpus: pd.DataFrame) -> pd.DataFrame:
    """One row per model: s3's gains in this simulator, beside the paper's headline figure."""
    rows = []
    for model, g in offline.groupby("model", sort=False):
        base = g.gpus.min()
        thr = g[g.gpus == base].set_index("policy").request_throughput
        c = cap[(cap.model == model) & (cap.gpus == base)].set_index("policy").capacity
        n = gpus[gpus.model == model].set_index("policy").gpus_simulated
        ratio = lambda s, a, b: s[a] / s[b] if a in s and b in s and s[b] > 0 else math.nan  # noqa: E731
        rows.append({"model": model, "gpus": int(base),
                     "offline_s3/orca": ratio(thr, "s3", "orca"), "offline_s3/ft": ratio(thr, "s3", "ft"),
                     "offline_s3/oracle": ratio(thr, "s3", "oracle"), "offline_s3/paged": ratio(thr, "s3", "paged"),
                     "offline_s3/vllm": ratio(thr, "s3", "vllm"), "offline_s3/hf": ratio(thr, "s3", "hf"),
                     "slo_s3/orca": ratio(c, "s3", "orca"), "slo_s3/ft": ratio(c, "s3", "ft"),
                     "slo_s3/oracle": ratio(c, "s3", "oracle"), "slo_s3/paged": ratio(c, "s3", "paged"),
                     "slo_s3/vllm": ratio(c, "s3", "vllm"), "slo_s3/hf": ratio(c, "s3", "hf"),
                     **{f"gpus_{p}": n.get(p, math.nan) for p in COMPARED},
                     "paper_gain_max": PAPER_GAIN})
    return pd.DataFrame(rows)


def timeline_data(composer, runs, model, policies, n, jobs):
    pts = [{"policy": p, "overrides": MODELS[model][0] + [f"policy={p}", f"num_requests={n}"]} for p in policies]
    res = run_many(pts, runs, composer, jobs=jobs, write_iterations=True, label="timeline")
    parts = []
    for _, r in res[res.status == "finished"].iterrows():
        it = pd.read_csv(Path(runs) / r.key / "iterations.csv")
        parts.append(timeline.resample(it, int(r.kv_capacity_tokens)).assign(policy=r.policy))
    return pd.concat(parts, ignore_index=True)


def main(argv=None) -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=out_path, default="results/paper")
    ap.add_argument("--runs", default="multirun/paper", help="run directories (reused when finished)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    ap.add_argument("--policies", default=",".join(COMPARED))
    ap.add_argument("--num-requests", type=int, default=None, help="offline runs (default: the preset's)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds of arrivals in each online run")
    ap.add_argument("--least-requests", type=int, default=2000, help="fewest requests in an online run")
    ap.add_argument("--timeline-requests", type=int, default=3000)
    ap.add_argument("--gpu-multiples", default="1,2,4", help="GPU counts tried, as multiples of the least")
    ap.add_argument("--rounds", type=int, default=4, help="bisection rounds of the SLO-capacity search")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default $S3SIM_JOBS, else one per core)")
    ap.add_argument("--router", default="least_outstanding", help="router of the simulated clusters")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    models, policies = args.models.split(","), args.policies.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        sys.exit(f"paper: unknown model {unknown[0]!r}; valid: {', '.join(MODELS)}")
    multiples = [int(k) for k in args.gpu_multiples.split(",")]
    composer = Composer("paper")
    runs, out = Path(args.runs), Path(args.out)
    extra = [] if args.num_requests in (None, composer([])["num_requests"]) else [f"num_requests={args.num_requests}"]

    print(f"offline: {len(models)} models x {len(policies)} policies x GPU counts {multiples}")
    offline = run_many(offline_points(models, policies, multiples, extra), runs, composer, jobs=args.jobs,
                       label="offline")
    done = offline[offline.status == "finished"]
    print("online: highest Poisson rate meeting the SLO (bisection)")
    pts = [{"model": r.model, "policy": r.policy, "gpus": r.gpus, "scale": r.request_throughput,
            "overrides": MODELS[r.model][0] + [f"policy={r.policy}"] + gpu_overrides(r.gpus)}
           for _, r in done.iterrows()]
    cap, online = slo_capacity(pts, runs, composer, rounds=args.rounds, jobs=args.jobs, label="online",
                               window_s=args.window, least=args.least_requests)
    gpus = gpus_needed(cap)
    print(f"GPUs needed, by simulating clusters behind the {args.router} router")
    found, cluster_runs = replicas_needed(simulated_points(cap, gpus), runs, composer, router=args.router,
                                          jobs=args.jobs, label="clusters", window_s=args.window,
                                          least=args.least_requests)
    gpus = with_simulated(gpus, found)
    table = comparison(done, cap, gpus)

    out.mkdir(parents=True, exist_ok=True)
    write_csv(done[OFFLINE_COLUMNS], out / "offline.csv")
    write_csv(cap, out / "slo_capacity.csv")
    write_csv(gpus, out / "gpus_needed.csv")
    write_csv(found, out / "replicas_needed.csv")
    write_csv(table, out / "paper_vs_sim.csv")
    base = done.groupby("model").gpus.transform("min") == done.gpus
    plots.save(bars.draw(done[base][["model", "policy", "request_throughput"]], "request_throughput",
                         "max throughput (requests/s)", "offline maximum throughput (fewest GPUs per model)"),
               done[base][["model", "gpus", "policy", "request_throughput"]], out, "throughput")
    plots.save(bars.draw(gpus.assign(gpus=gpus.gpus_simulated), "gpus", "GPUs (A100 80 GB)",
                         f"GPUs to serve s3's rate under the SLO (simulated clusters, {args.router} router)"),
               gpus, out, "gpus_needed")
    on = online[online.status == "finished"]
    on = on[on.groupby("model").gpus.transform("min") == on.gpus].assign(panel=lambda d: d.model)
    rank = on.panel.map({m: i for i, m in enumerate(MODELS)})
    fr = on.assign(rank=rank).sort_values(["rank", "policy", "rate"])[frontier.COLUMNS]
    plots.save(frontier.draw(fr, "latency-throughput frontier, Poisson arrivals (fewest GPUs per model)"),
               fr, out, "frontier")
    tl_model = "gpt-j-6b" if "gpt-j-6b" in models else models[0]
    # ft's static batches take ~6x as long to drain: left out so that the others stay readable
    tl = timeline_data(composer, runs, tl_model, [p for p in policies if p != "ft"], args.timeline_requests,
                       args.jobs)
    plots.save(timeline.draw(tl, f"{tl_model}, {args.timeline_requests} requests at t=0"), tl, out, "timeline")

    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.precision", 3):
        print("\noffline maximum throughput (requests/s):")
        print(done.pivot_table(index=["model", "gpus"], columns="policy", values="request_throughput",
                               sort=False)[policies].to_string())
        print("\nhighest Poisson rate meeting the SLO (requests/s):")
        print(cap.pivot_table(index=["model", "gpus"], columns="policy", values="capacity",
                              sort=False)[policies].to_string())
        print("\nGPUs to serve s3's rate:")
        print(gpus.to_string(index=False))
        print("\nside by side with the paper (up to 6.49x over max-length reservation):")
        print(table.to_string(index=False))
    print(f"\nwrote {out}/ in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
