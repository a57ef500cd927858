"""`make cluster`: replicas behind a router on a bursty trace, every router for s3, vllm and orca.

Four replicas of Llama 3.1 8B, each on one A100 80 GB (its long context takes the trace's prompts), serve
the Azure LLM conversation trace (19,366 requests, an hour of real arrivals with their bursts) replayed
3.3x and 4x faster (`workload.time_scale` 0.3 and 0.25: about 18 and 22 requests/s), under the paper's
SLO (first token within 2 s, then at reading speed). Runs go to multirun/cluster/ (reused when finished);
the table and figure to results/cluster/ (`routers.csv`, `routers.png` with its data).
"""
from __future__ import annotations

import time
from pathlib import Path

from s3sim import plots
from s3sim.cluster.routers import ROUTERS
from s3sim.commandline import Parser, out_path
from s3sim.experiments.common import Composer, run_many
from s3sim.plots import routers as routers_plot
from s3sim.writers import write_csv

POLICIES = ("s3", "vllm", "orca")
SCALES = (0.3, 0.25)
BASE = ["model=llama-3.1-8b", "workload=trace", "arrival=trace", "slo.ttft=2.0", "slo.tpot=0.18",  # the paper's SLO
        "cluster.replicas=4"]


def main(argv=None) -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=out_path, default="results/cluster")
    ap.add_argument("--runs", default="multirun/cluster")
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    pts = [{"load": f"trace x{1 / s:.1f}", "router": r, "policy": p,
            "overrides": BASE + [f"workload.time_scale={s}", f"policy={p}", f"cluster.router={r}"]}
           for s in SCALES for r in ROUTERS for p in POLICIES]
    res = run_many(pts, Path(args.runs), Composer(), jobs=args.jobs, label="routers")
    done = res[res.status == "finished"]
    cols = routers_plot.COLUMNS + ["goodput", "ttft_p50", "replica_imbalance", "replica_requests", "preemptions"]
    table = done[cols]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(table, out / "routers.csv")
    plots.save(routers_plot.draw(table[routers_plot.COLUMNS], "4 replicas, Azure conversation trace sped up"),
               table[routers_plot.COLUMNS], out, "routers")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\nwrote {out}/ in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
