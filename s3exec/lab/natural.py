"""`python -m s3exec.lab.natural` (`make natural`): S3 on a real model that predicts the model's own lengths.

SmolLM2 serves held-out prompts of `smollm2_greedy` (the test side of the predictor's split; the table holds
SmolLM2's own greedy lengths, from `s3exec.lab.own_lengths`) in natural mode on this CPU: each answer ends at
end-of-sequence or `max_seq_len`, whatever the table says. All arrive at t=0, under one KV budget that binds
(ORCA fits only a few maximal requests), once per policy: s3 with the predictor trained on SmolLM2's lengths
(`predictor=trained`), the oracle (the generation run's lengths), orca, vllm (V1: paged, chunked prefill)
and paged (vLLM 2023); on request, vllm ordering its queue by the predicted length (`vllm-sjf`, `vllm-srpt`:
`policy.order` with `predictor=trained`), and srpt preempting the longest predicted remaining work with that
work predicted from the prompt (`vllm-srpt-longest`) or re-predicted from SmolLM2's own hidden states as it
generates (`vllm-srpt-hidden`, `predictor.repredict=hidden`; its replay draws `repredict=measured`). The simulator then replays each run with a profile of this machine measured just
before (`latency=profiled`, the executor's pool, the table's lengths).

Each executor run is cached (`--cache`, resumed unless `--fresh`), so a stopped comparison goes on where it
stopped. Writes `results/natural/`: `natural.csv` (executor and simulator rows side by side), `summary.md`,
and the profile used.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.commandline import Parser, out_path
from s3exec.config import EXEC_VLLM, exec_policy
from s3sim.core.errors import ConfigError

DEFAULT_POLICIES = ("s3", "oracle", "orca", "vllm", "paged")  # make natural: S3 against the others
POLICIES = (*DEFAULT_POLICIES, "vllm-sjf", "vllm-srpt", "vllm-srpt-longest", "vllm-srpt-hidden")  # the rest on request
# runs that are one policy configured: vllm ordering its waiting queue by the length SmolLM2's predictor gives;
# the last two also preempt the request with the longest predicted remaining work, the last re-predicting it from
# SmolLM2's hidden states as it generates (its simulator replay draws the error measured from them instead)
SRPT_LONGEST = [*EXEC_VLLM, "policy.order=srpt", "policy.victim=longest_remaining", "predictor=trained"]
VARIANTS = {"vllm-sjf": [*EXEC_VLLM, "policy.order=sjf", "predictor=trained"],
            "vllm-srpt": [*EXEC_VLLM, "policy.order=srpt", "predictor=trained"],
            "vllm-srpt-longest": SRPT_LONGEST,
            "vllm-srpt-hidden": [*SRPT_LONGEST, "predictor.repredict=hidden"]}
COLUMNS = ("request_throughput", "output_throughput", "mean_batch_size", "max_batch_size", "preemptions",
           "preemptions_overflow", "preemptions_memory", "recomputed_tokens", "grown_in_place", "kv_reserved_frac",
           "kv_used_frac", "ttft_mean", "ttft_p50", "e2e_latency_mean", "e2e_latency_p50", "e2e_latency_p99", "duration",
           "iterations")


def exec_config(policy: str, a, kv_bytes: int) -> dict:
    from s3exec.lab.bench import compose

    over = [*VARIANTS.get(policy, exec_policy(policy)), "workload=smollm2_greedy", "workload.split=test", f"num_requests={a.requests}",
            f"max_seq_len={a.cap}", f"seed={a.seed}", "arrival=offline", "executor.model=smollm2",
            "model=smollm2-135m",  # the simulator's replay prices and fits SmolLM2's shape and context
            "executor.mode=natural", f"executor.kv_memory={kv_bytes}", "executor.max_prompt_len=null",
            f"executor.threads={a.threads}", "executor.progress=false", "executor.write_tokens=false"]
    if policy == "s3":
        over.append("predictor=trained")
    return compose(over)


def served_lengths(cfg) -> np.ndarray:
    """The table's length of each request of `cfg`, in request order (what the oracle was told)."""
    from s3sim.config import sample_workload
    from s3sim.spec import run_spec

    wl, idx, _ = sample_workload(cfg, run_spec(cfg))
    return wl.output_len[idx]


def accuracy(records: pd.DataFrame, buckets) -> dict:
    """How the first prediction of each request compares with the length it really generated (in the
    scheduler's own buckets)."""
    true = np.asarray(buckets.of(records["output_len"].to_numpy()))
    pred = records["first_bucket"].to_numpy()
    return {"bucket_accuracy": float((pred == true).mean()), "under_predicted": float((pred < true).mean()),
            "within_one_bucket": float((np.abs(pred - true) <= 1).mean())}


def run_code() -> list[Path]:
    """The source an executor run depends on beyond its inputs: the core both engines share, and the executor's
    runtime."""
    root = Path(__file__).resolve().parents[2]
    return sorted((root / "s3sim" / "core").rglob("*.py")) + sorted((root / "s3exec").glob("*.py"))


def inputs_digest(policy: str = "") -> str:
    """The length table and the predictions an executor run read (and the re-prediction probe, for the run that
    reads it), and the code that scheduled and ran it (the shared core and the executor's runtime): a cached run
    is reused only with these, so a changed scheduler runs again rather than answering from before."""
    from s3sim.config import REPREDICTION_PROBE
    from s3sim.predictor.trained.predictor import table_path
    from s3sim.workload.lengths import OWN_LENGTHS, TABLES

    h = hashlib.blake2b(digest_size=8)
    paths = [TABLES / f"{OWN_LENGTHS}.csv", table_path(OWN_LENGTHS), *run_code()]
    if "predictor.repredict=hidden" in VARIANTS.get(policy, ()):
        paths.append(REPREDICTION_PROBE)
    for path in paths:
        h.update(path.read_bytes() if path.is_file() else b"missing")
    return h.hexdigest()


def cached_run(cache: Path, policy: str, digest: str) -> dict | None:
    path = cache / f"{policy}.json"
    try:
        row = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return row if row.get("inputs_digest") == digest else None


def run_policy(policy: str, a, loaded, kv_bytes: int, cache: Path, digest: str) -> dict:
    """One executor run (cached as JSON): its summary row plus prediction accuracy and length agreement."""
    from s3exec.runner import run_exec
    from s3sim.metrics.summary import request_records
    from s3sim.writers import write_text

    cfg = exec_config(policy, a, kv_bytes)
    row, result = run_exec(cfg, loaded=loaded)
    rec = request_records(result.requests)
    table = served_lengths(cfg)
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
    row["same_length_as_table"] = float((rec["output_len"].to_numpy() == table).mean())
    row["hit_cap"] = int((rec["output_len"] >= a.cap).sum())  # the cap ended them (or EOS exactly there)
    if policy in ("s3", "oracle"):
        row.update(accuracy(rec, result.scheduler.buckets))
    row["inputs_digest"] = digest
    row["policy"] = policy  # the run's label (a configured variant of a policy keeps its own)
    write_text(json.dumps(row, default=str), cache / f"{policy}.json")
    return row


def replay(policy: str, a, kv_tokens: int, profile: Path) -> dict:
    """The simulator's run of the same requests (the table's lengths), pool and policy, on the profile."""
    from s3exec.lab.fidelity import sim_config, simulate_config

    cfg = exec_config(policy, a, kv_tokens)  # kv_memory is unused by the simulator: the pool is given outright
    if cfg["predictor"].get("repredict") == "hidden":  # no hidden states here: the error measured from them
        cfg["predictor"]["repredict"] = "measured"
    return {**simulate_config(sim_config(cfg, kv_tokens, profile)), "policy": policy}


def times(value: float, base: float) -> str:
    """`value` as a multiple of `base` ("1.23x"), or a dash where there is no base (no orca run) or no value."""
    return "—" if not (pd.notna(value) and pd.notna(base) and base) else f"{value / base:.2f}x"


def summary_markdown(df: pd.DataFrame, a, kv_tokens: int) -> str:
    from s3exec.lab.fidelity import rel

    ex, sim = df[df.engine == "exec"].set_index("policy"), df[df.engine == "sim"].set_index("policy")
    lines = [f"{a.requests} held-out smollm2_greedy prompts, natural mode, max_seq_len {a.cap}, all at t=0, "
             f"KV budget {kv_tokens:,} tokens, SmolLM2 float32 on {a.threads} CPU threads.", "",
             "| policy | req/s exec | req/s sim | error | x orca exec / sim | mean batch exec / sim | ms per iteration "
             "exec / sim | preemptions (overflow / memory) | recomputed | KV reserved / used | bucket accuracy (under) "
             "| length = table |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    base = ex.loc["orca", "request_throughput"] if "orca" in ex.index else nan
    sim_base = sim.loc["orca", "request_throughput"] if "orca" in sim.index else nan
    for p in ex.index:
        e, s = ex.loc[p], sim.loc[p] if p in sim.index else None
        err = rel(s["request_throughput"], e["request_throughput"]) if s is not None else nan
        step = lambda r: 1e3 * r["duration"] / r["iterations"] if r is not None and r["iterations"] else nan
        acc = (f"{e['bucket_accuracy']:.1%} ({e['under_predicted']:.1%})"
               if "bucket_accuracy" in e and pd.notna(e["bucket_accuracy"]) else "—")
        lines.append(
            f"| {p} | {e['request_throughput']:.3f} | {s['request_throughput'] if s is not None else float('nan'):.3f} "
            f"| {err:+.1%} | {times(e['request_throughput'], base)} / "
            f"{times(s['request_throughput'] if s is not None else nan, sim_base)} | {e['mean_batch_size']:.1f} / "
            f"{s['mean_batch_size'] if s is not None else nan:.1f} | {step(e):.0f} / {step(s):.0f} | {int(e['preemptions'])} "
            f"({int(e['preemptions_overflow'])} / {int(e['preemptions_memory'])}) | {int(e['recomputed_tokens']):,} "
            f"| {e['kv_reserved_frac']:.0%} / {e['kv_used_frac']:.0%} | {acc} | {e['same_length_as_table']:.1%} |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    from s3exec.lab.own_lengths import positive_count

    ap = Parser(prog="python -m s3exec.lab.natural", description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=positive_count, default=128)
    ap.add_argument("--cap", type=positive_count, default=512, help="max_seq_len: the generation run's cap")
    ap.add_argument("--kv-tokens", type=positive_count, default=6144, help="the KV budget, in tokens")
    ap.add_argument("--threads", type=positive_count, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", nargs="+", choices=POLICIES, default=list(DEFAULT_POLICIES),
                    help=f"default: {' '.join(DEFAULT_POLICIES)}")
    ap.add_argument("--out", type=out_path, default="results/natural")
    ap.add_argument("--cache", default=None,
                    help="cache root (default $S3_NATURAL_DIR or ~/.cache/s3/natural); a folder per settings below it")
    ap.add_argument("--profile", default=None, help="a profile CSV of this machine (default: measure one now)")
    ap.add_argument("--fresh", action="store_true", help="run every policy again")
    return ap


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    a.policies = list(dict.fromkeys(a.policies))
    out = Path(a.out)
    root = Path(a.cache or os.environ.get("S3_NATURAL_DIR") or Path.home() / ".cache" / "s3" / "natural")
    cache = root / f"n{a.requests}-cap{a.cap}-kv{a.kv_tokens}-t{a.threads}-seed{a.seed}"
    try:
        import torch

        from s3exec.config import load_executor_model
        from s3exec.lab.fidelity import ensure_profile
        from s3sim.writers import write_table, write_text

        out.mkdir(parents=True, exist_ok=True)
        cache.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(a.threads)
        rows, loaded = [], None
        for p in a.policies:
            t0 = time.perf_counter()
            digest = inputs_digest(p)
            row = None if a.fresh else cached_run(cache, p, digest)
            if row is None:
                if loaded is None:
                    loaded, _ = load_executor_model(exec_config("orca", a, 1))
                row = run_policy(p, a, loaded, a.kv_tokens * loaded.kv_bytes_per_token, cache, digest)
            print(f"exec {p:7s} {row['request_throughput']:.3f} req/s, mean batch {row['mean_batch_size']:.1f}, "
                  f"{row['preemptions']} preemptions, lengths as the table {row['same_length_as_table']:.1%} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            rows.append({"engine": "exec", **row})
        profile = Path(a.profile) if a.profile else ensure_profile(
            "smollm2", out, fresh=True, name=f"smollm2-cpu-{a.threads}t", threads=a.threads)
        for p in a.policies:
            sim = replay(p, a, a.kv_tokens, profile)
            rows.append({"engine": "sim", **sim})
            print(f"sim  {p:7s} {sim['request_throughput']:.3f} req/s, mean batch {sim['mean_batch_size']:.1f}, "
                  f"{sim['preemptions']} preemptions", flush=True)
    except ConfigError as e:
        print(f"natural: error: {e}", file=sys.stderr)
        return 2
    df = pd.DataFrame(rows)
    keep = ["engine", "policy", *COLUMNS, "same_length_as_table", "hit_cap", "bucket_accuracy", "under_predicted",
            "within_one_bucket", "peak_kv_used_frac", "wall_s"]
    df = df[[c for c in keep if c in df.columns]]
    write_table(df, out / "natural.csv")  # the executor's wall_s to natural.wall_clock.csv (ignored by git)
    write_text(summary_markdown(df, a, a.kv_tokens), out / "summary.md")
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
