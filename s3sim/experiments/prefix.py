"""`make prefix`: what sharing a prompt's prefix is worth, and whether S3's lead survives it.

Llama 3.1 8B on one A100 80 GB SXM (the datasheet operator latency) serves 2,000 ShareGPT first turns
offline, each prompt starting with a system prompt: none, or one of `groups` prefixes of 512 or 2,048 tokens
(`shared_prefix`: 1 group, every request the same; 16 groups, a service with many). Policies: `vllm` (V1
scheduler, its default limits for the GPU) with its prefix cache (its default), which finds the shared blocks
instead of computing and holding them once per request, and without it (`x_no_cache` is relative to that); `s3` (80 % accurate synthetic predictor) and `oracle`, which
reserve prompt + predicted length per request and share nothing. Runs go to multirun/prefix/ (reused when
finished); the table to results/prefix/prefix.csv.
"""
from __future__ import annotations

import time
from pathlib import Path

from s3sim.commandline import Parser, out_path
from s3sim.experiments.common import Composer, run_many
from s3sim.writers import write_csv

BASE = ["model=llama-3.1-8b", "gpu=a100-80gb-sxm", "workload=sharegpt_pairs", "num_requests=2000"]
PREFIXES = ((0, 1), (512, 1), (512, 16), (2048, 1), (2048, 16))
NO_CACHE = "vllm, no prefix cache"
POLICIES = {NO_CACHE: ["policy=vllm", "policy.prefix_caching=false"], "vllm": ["policy=vllm"],  # its default: on
            "s3": ["policy=s3"], "oracle": ["policy=oracle"]}
COLUMNS = ["prefix_tokens", "groups", "policy", "request_throughput", "x_no_cache", "prefix_shared_frac",
           "mean_batch_size", "kv_used_frac", "preemptions", "recomputed_tokens", "ttft_p50", "tpot_p50"]


def main(argv=None) -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=out_path, default="results/prefix")
    ap.add_argument("--runs", default="multirun/prefix")
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    pts = [{"prefix_tokens": t, "groups": g, "policy": name,
            "overrides": BASE + over + [f"shared_prefix.tokens={t}", f"shared_prefix.groups={g}"]}
           for t, g in PREFIXES for name, over in POLICIES.items()]
    res = run_many(pts, Path(args.runs), Composer(), jobs=args.jobs, label="prefix")
    done = res[res.status == "finished"].copy()
    base = done[done.policy == NO_CACHE].set_index(["prefix_tokens", "groups"]).request_throughput
    done["x_no_cache"] = [r.request_throughput / base[(r.prefix_tokens, r.groups)] for r in done.itertuples()]
    # of every admission's context (a preempted request's readmission asks for its prompt again): a share <= 1
    done["prefix_shared_frac"] = done.prefix_shared_tokens / done.prefill_context_tokens
    table = done[COLUMNS]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(table, out / "prefix.csv")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\nwrote {out}/prefix.csv in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
