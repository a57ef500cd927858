"""`python -m s3sim.experiments.modern`: S3 on a modern engine, priced by a real GPU's operators.

The question the paper could not ask: does reserving by predicted length still pay when the baseline is
vLLM's V1 scheduler (paged blocks on demand, chunked prefill under a token budget) rather than systems that
reserve the maximum? Each shared vLLM run (../shared/data/vllm_runs) is replayed exactly as
`s3sim-validate` does (the same arrivals, token counts, engine settings, KV blocks and the run's own
operator profile, against which the `vllm` row is validated: see results/validation), and then with every
other policy under the same token budget, `max_num_seqs` and KV memory:
- `vllm`: the engine as it ran (prefix caching as recorded);
- `s3` with the oracle predictor (the upper bound of prediction), and with synthetic predictors of 80 %
  accuracy (errors one bucket either way, the paper's setting) and 50 % (errors one bucket under): S3
  reserves prompt + the predicted bucket's upper bound (10 equal buckets up to `max_seq_len`) and its
  supervisor preempts a request that outgrows its reservation;
- `orca`: prompt + `max_seq_len` reserved up front, under the same budget;
- `paged`: paging as vLLM did it in 2023, whole prompts in one iteration (no budget).
Every policy runs in the run's engine loop (asynchronous scheduling as the run records it, else vLLM's default,
as `s3sim-validate` replays it). `max_seq_len` is the smallest multiple of 128 above the run's longest output (1,024 here). Writes
`results/modern/<run>.csv` (one row per policy: latency means and percentiles in ms, named so as in
validation.csv (`ttft_p50_ms`), throughput, batch and KV use, preemptions) and prints it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from s3sim.commandline import Parser, out_path
from s3sim.config import build_scheduler
from s3sim.core.errors import ConfigError
from s3sim.core.request import make_requests
from s3sim.metrics.summary import summarize
from s3sim.simulator.engine import simulate
from s3sim.validation.engine import engine_limits, engine_settings
from s3sim.validation.kv_capacity import kv_capacity
from s3sim.validation.metrics import metric_name, replay_records, simulated_metrics
from s3sim.validation.model_gpu import resolve_gpu, resolve_model, served_16_bit
from s3sim.validation.pricing import build_latency
from s3sim.validation.run_files import META, beside_run, read_run, unserved_note

RUNS = ("rtx4090-llama-3.1-8b", "rtxpro6000-llama-3.1-8b")
COLUMNS = ("ttft_mean", "ttft_p50", "ttft_p99", "tpot_mean", "tpot_p50", "e2e_latency_mean", "e2e_latency_p50",
           "e2e_latency_p99", "request_throughput", "output_throughput")


def policy_configs(engine, max_seq_len: int, seed: int = 0) -> dict[str, dict]:
    """label -> the config `s3sim.config.build_scheduler` builds it from: the run's token budget,
    `max_num_seqs` and block size for every policy that takes them."""
    budget = {"max_num_batched_tokens": engine.max_num_batched_tokens, "max_batch_size": engine.max_num_seqs}

    def run(policy: dict, predictor: dict | None = None) -> dict:
        return {"max_seq_len": max_seq_len, "seed": seed, "policy": policy,
                "predictor": predictor or {"name": "oracle", "num_buckets": 10}}

    def synthetic(accuracy: float, shape: str) -> dict:
        return {"name": "synthetic", "num_buckets": 10, "accuracy": accuracy, "error_shape": shape}

    return {
        "vllm": run({"name": "vllm", "block_size": engine.block_size, "prefix_caching": engine.prefix_caching,
                     **budget}),
        "s3 oracle": run({"name": "oracle", **budget}),
        "s3 80% adjacent": run({"name": "s3", **budget}, synthetic(0.8, "adjacent")),
        "s3 50% under": run({"name": "s3", **budget}, synthetic(0.5, "under")),
        "orca": run({"name": "orca", **budget}),
        "paged (2023)": run({"name": "paged", "block_size": engine.block_size, "max_batch_size": engine.max_num_seqs}),
    }


def compare(run_dir: Path) -> pd.DataFrame:
    run = read_run(run_dir)
    engine = engine_settings(run.meta, str(run.dir / META))
    profile = beside_run(run.dir, "profile", folder=True)
    if profile is None:
        raise ConfigError(f"{run.dir}: no operator profile in or beside the run folder (profile/)")
    model, served_note = served_16_bit(resolve_model(None, engine, beside_run(run.dir, "config.json"), run.dir))
    if served_note:
        print(served_note)
    gpu, _ = resolve_gpu(None, engine, profile, "deriving the KV capacity" if engine.num_gpu_blocks is None else
                         "vLLM's default engine limits" if None in (engine.max_num_seqs, engine.max_num_batched_tokens)
                         else None)
    engine_limits(engine, gpu, None, str(run.dir / META))  # a run that records its limits: nothing to fill in
    blocks, _ = kv_capacity(engine, model, gpu)
    latency, _ = build_latency(profile, model, gpu, engine.tp)
    req = run.requests
    if note := unserved_note(req):  # every policy replays the served ones, as s3sim-validate does
        print(note)
    arrivals = (req.queued_ts - req.queued_ts.min()).to_numpy(dtype=float)
    max_seq_len = int(-(-(int(req.output_toks.max()) + 1) // 128) * 128)
    rows = []
    output = req.output_toks.to_numpy()
    for name, cfg in policy_configs(engine, max_seq_len).items():
        sched = build_scheduler(cfg, blocks * engine.block_size, output, context=model.max_context, layers=model.n_layers)
        result = simulate(make_requests(req.input_toks.to_numpy(), req.output_toks.to_numpy(), arrivals), sched,
                          latency, async_scheduling=engine.async_scheduling)
        records = replay_records(result.requests)
        m = simulated_metrics(records)
        summary = summarize(result, records=records)
        rows.append({"policy": name, **{metric_name(c): m[c] for c in COLUMNS},  # latencies in ms, named so
                     "mean_batch_size": summary["mean_batch_size"], "kv_reserved_frac": summary["kv_reserved_frac"],
                     "kv_used_frac": summary["kv_used_frac"], "preemptions": summary["preemptions"],
                     "mispredictions": summary["mispredictions"]})
    table = pd.DataFrame(rows)
    base = table.set_index("policy").loc["vllm"]
    table["throughput_vs_vllm"] = table.request_throughput / base.request_throughput
    return table


def main(argv=None) -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--data", default="../shared/data/vllm_runs")
    ap.add_argument("--out", type=out_path, default="results/modern")
    args = ap.parse_args(argv)
    from s3sim.writers import write_csv

    out = Path(args.out)
    try:
        tables = {name: compare(Path(args.data) / name / "run") for name in args.runs.split(",") if name}
    except ConfigError as e:
        print(f"modern: error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        write_csv(table, out / f"{name}.csv")
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
            print(f"\n{name}\n{table.to_string(index=False)}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
