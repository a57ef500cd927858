"""`python -m s3sim.lab.step_check` (`make steps`): what a whole engine step costs against the operator sum, in
the shared step tables and in the shared runs themselves.

1. Each profile's `tp<N>/step.csv` (whole steps timed in vLLM with CUDA graphs) against the operator model of
   the same profile (tensor parallelism's all-reduces from the measured table of the GPUs,
   `latency.all_reduce=auto`): per CUDA-graph mode, `step = scale x operator sum + offset`, fitted on all rows
   and checked by two-fold cross-validation (fit on every other row, error on the rest).
2. Each run's decode-only seconds: the run's `timeseries.csv` seconds with no prompt tokens and nothing waiting,
   where one step takes `running / generated tokens per second`; the batch's contexts are rebuilt from
   `requests.jsonl` (each running request's prompt plus the share of its output it had produced by the middle
   of that second; the longest of them for uneven contexts, where the profile measured their cost). Priced by
   the operator model alone, and by the step calibration of part 1 where the run's profile has a step table. A measurement of the latency model on the run's own steps, apart from scheduling.
3. Each run's full-budget seconds: seconds with prompt tokens and requests waiting while fewer than
   `max_num_seqs` run and the KV cache is not near full, so that every step fills the token budget (not the
   run's first second, which the engine enters idle); a second
   holds a few such steps, so they are pooled: one step = budget / (prompt + generated tokens per second),
   summed over the seconds, against the operator model's price of a step of that many decodes (at the running
   requests' mean context) and one prefill chunk filling the rest.
4. For a run at TP > 1 on GPUs whose preset names a step table (`in_engine_steps`): the collectives as the
   engine ran them (the measured ones' floor plus their bytes at the measured bandwidth over a factor), the
   factor fitted to that table
   (`s3sim.latency.steps.fit_in_engine_factor`, two-fold cross-validated), and parts 2 and 3 priced with them
   (`latency.all_reduce=engine`) beside the collectives measured alone.

Writes results/calibration/steps.csv (the fits and held-out errors), steps_rows.csv (every step row),
run_decode_steps.csv (every decode-only second), run_budget_steps.csv (the full-budget seconds, pooled per run)
and in_engine_collectives.csv (part 4), and prints the summary the README quotes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.commandline import Parser, exit_code
from s3sim.core.errors import ConfigError

RUNS = ("rtx4090-llama-3.1-8b", "rtxpro6000-llama-3.1-8b", "rtxpro6000-qwen3-32b")
OUT = Path("results/calibration")


def run_latency(run_dir: Path):
    """(operator latency at the run's TP, model, step table or None) for a shared run folder."""
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.models import get_model
    from s3sim.validation.engine import engine_limits, engine_settings
    from s3sim.hardware.gpus import preset_of_device
    from s3sim.hardware.models import preset_of_hf_name
    from s3sim.validation.model_gpu import profile_device
    from s3sim.validation.pricing import build_latency
    from s3sim.validation.run_files import read_meta

    meta = read_meta(run_dir / "run" / "meta.json")
    engine = engine_settings(meta, str(run_dir / "run" / "meta.json"))
    profile = run_dir / "profile"
    name = preset_of_hf_name(engine.model)
    device = preset_of_device(engine.device_name) or preset_of_device(profile_device(profile))
    if name is None or device is None:
        raise ConfigError(f"{run_dir}: its model {engine.model!r} or GPU has no preset")
    model, gpu = get_model(name), get_gpu(device)
    engine_limits(engine, gpu, None, str(run_dir / "run" / "meta.json"))  # a run that records its limits
    latency, _ = build_latency(profile, model, gpu, engine.tp, all_reduce="measured" if engine.tp > 1 else "auto")
    steps = profile / f"tp{engine.tp}" / "step.csv"
    return latency, model, engine, steps if steps.is_file() else None


def in_engine(run_dir: Path, latency, model, engine):
    """(latency with the collectives as the engine ran them, its `CollectiveFit`) for a run at TP > 1 whose GPU
    preset names a step table (`latency`, `model`, `engine`: the run's, from `run_latency`); None otherwise."""
    from s3sim.latency.operators import in_engine_factor
    from s3sim.validation.pricing import build_latency

    if engine.tp < 2 or latency.gpu is None or not latency.gpu.in_engine_steps:
        return None
    lat, _ = build_latency(run_dir / "profile", model, latency.gpu, engine.tp, all_reduce="engine")
    return lat, in_engine_factor(latency.gpu)


class RunTimeline:
    """A shared run's per-second series (`series`, ticks of `tick` seconds) and, at any second, the contexts of
    the requests running at its middle (each one's prompt plus the share of its output produced by then)."""

    NEED = ("t", "prompt_throughput", "gen_throughput", "running", "waiting")

    def __init__(self, run_dir: Path):
        from s3sim.inputs import read_csv
        from s3sim.validation.run_files import read_run

        run = read_run(run_dir / "run")
        self.req = req = run.requests
        if req.attrs.get("unserved"):  # the running set would miss them wherever they did run
            raise ConfigError(f"{run.dir}: requests.jsonl holds requests that were not served (null times, "
                              f"{len(req.attrs['unserved'])} of them, line {req.attrs['unserved'][0]} the first): the "
                              "steps' batches cannot be rebuilt without their times")
        path = run.dir / "timeseries.csv"
        self.series = ts = read_csv(path, f"{path}: not a CSV")
        if missing := [c for c in self.NEED if c not in ts.columns]:
            raise ConfigError(f"{path}: missing column {missing[0]!r} (needs {', '.join(self.NEED)})")
        t0 = req.queued_ts.min()
        self.tick = float(np.median(np.diff(ts.t))) if len(ts) > 1 else 1.0
        self.first, self.last = (req.first_token_ts - t0).to_numpy(), (req.last_token_ts - t0).to_numpy()

    def running_at(self, t: float) -> np.ndarray:
        mid = t - 0.5 * self.tick
        return (self.first <= mid) & (self.last >= mid)

    def contexts(self, t: float) -> np.ndarray:
        mid, on = t - 0.5 * self.tick, self.running_at(t)
        share = np.clip((mid - self.first[on]) / np.maximum(self.last[on] - self.first[on], 1e-9), 0, 1)
        return self.req.input_toks.to_numpy()[on] + share * self.req.output_toks.to_numpy()[on]


def budget_seconds(tl: RunTimeline, engine) -> pd.DataFrame:
    """The run's full-budget seconds (part 3 of the module doc): `t, running, tokens, generated, ctx_mean`."""
    ts = tl.series
    kv = ts.kv_cache_pct if "kv_cache_pct" in ts.columns else pd.Series(0.0, index=ts.index)
    rows = []
    for r, k in zip(ts.itertuples(index=False), kv):
        tokens = r.prompt_throughput + r.gen_throughput
        if (r.t <= tl.tick or r.prompt_throughput <= 0 or r.waiting < 1 or r.running > engine.max_num_seqs - 2
                or k >= 90 or r.gen_throughput * engine.max_num_batched_tokens > r.running * tokens):
            continue  # a slot freed within the second, or more decodes a step than requests: the budget did not bind
        ctx = tl.contexts(r.t)
        rows.append((r.t, int(r.running), float(tokens), float(r.gen_throughput),
                     float(ctx.mean()) if len(ctx) else 0.0))
    return pd.DataFrame(rows, columns=["t", "running", "tokens", "generated", "ctx_mean"])


def pooled_budget_step(sec: pd.DataFrame, budget: int, latencies: dict) -> dict:
    """The full-budget seconds pooled: the run's mean step and each latency model's price of the mean step."""
    steps = sec.tokens.sum() / budget
    decodes = sec.generated.sum() / steps
    ctx = float(np.average(sec.ctx_mean, weights=sec.tokens))
    row = {"seconds": len(sec), "steps": steps, "decodes_per_step": decodes, "ctx_mean": ctx,
           "run_step_s": len(sec) / steps}
    for name, lat in latencies.items():
        row[f"{name}_s"] = float(lat.iteration_time(budget - decodes, 1.0, decodes, decodes * ctx))
    return row


def decode_seconds(tl: RunTimeline) -> pd.DataFrame:
    """The run's decode-only seconds: `t, running, step_s` and the rebuilt batch (`n`, `ctx_sum`)."""
    rows = []
    for r in tl.series.itertuples(index=False):
        if r.prompt_throughput > 0 or r.waiting > 0 or r.running < 1 or r.gen_throughput <= 0:
            continue
        n = int(tl.running_at(r.t).sum())
        if not n or abs(n - r.running) > max(1, 0.1 * r.running):
            continue  # requests came or went within the second: its batch is not one size
        ctx = tl.contexts(r.t)
        rows.append((r.t, int(r.running), n, float(ctx.sum()), float(ctx.max()), r.running / r.gen_throughput))
    return pd.DataFrame(rows, columns=["t", "running", "n", "ctx_sum", "ctx_max", "step_s"])


def check(data: Path) -> tuple[pd.DataFrame, ...]:
    from s3sim.latency.steps import cross_validated_error, fit_table

    fits, step_rows, ticks, budgets, links = [], [], [], [], []
    for name in RUNS:
        run_dir = data / "vllm_runs" / name
        if not (run_dir / "run").is_dir():
            raise ConfigError(f"no shared run {str(run_dir)!r} (see ../shared/data/MANIFEST.md)")
        latency, model, engine, steps = run_latency(run_dir)
        fit = None
        if steps is not None:
            fit, rows = fit_table(latency, steps)
            step_rows.append(rows.assign(run=name))
            cv = cross_validated_error(rows)
            for b, scale in fit.scale.items():
                held = cv[cv.branch == b]
                fits.append({"run": name, "tp": engine.tp, "branch": b, "rows": int((rows.branch == b).sum()),
                             "scale": scale, "offset_ms": fit.offset_s[b] * 1e3,
                             "median_step_over_operators": float((rows.step_s / rows.operator_s)[rows.branch == b]
                                                                 .median()),
                             "held_out_mean_abs_pct": float(held.held_out_mean_abs_pct.iloc[0]) if len(held) else np.nan,
                             "held_out_max_abs_pct": float(held.held_out_max_abs_pct.iloc[0]) if len(held) else np.nan})
        timeline = RunTimeline(run_dir)
        sec = decode_seconds(timeline)
        sec["operator_s"] = [float(latency.decode_run(n, c, 1, max_ctx=int(m))[0])
                             for n, c, m in zip(sec.n, sec.ctx_sum, sec.ctx_max)]
        sec["step_calibrated_s"] = ([float(fit.seconds(o, fit.branch(n, True))) for o, n in zip(sec.operator_s, sec.n)]
                                    if fit is not None else np.nan)
        lats = {"operator": latency}
        engine_ar = in_engine(run_dir, latency, model, engine)
        if engine_ar is not None:
            lat_in, link = engine_ar
            lats["in_engine"] = lat_in
            sec["in_engine_s"] = [float(lat_in.decode_run(n, c, 1, max_ctx=int(m))[0])
                                  for n, c, m in zip(sec.n, sec.ctx_sum, sec.ctx_max)]
            links.append({"run": name, "tp": engine.tp, "step_table": link.source, "factor": link.factor,
                          "rows": link.rows, "fold_factors": " ".join(f"{k:.2f}" for k in link.fold_factors),
                          "held_out_mean_abs_pct": link.held_out_mean_abs_pct,
                          "held_out_max_abs_pct": link.held_out_max_abs_pct,
                          **{f"offset_{b}_ms": v * 1e3 for b, v in link.offset_s.items()}})
        ticks.append(sec.assign(run=name, tp=engine.tp))
        full = budget_seconds(timeline, engine)
        if len(full):
            budgets.append({"run": name, "tp": engine.tp, "budget": engine.max_num_batched_tokens,
                            **pooled_budget_step(full, engine.max_num_batched_tokens, lats)})
    return (pd.DataFrame(fits), pd.concat(step_rows, ignore_index=True), pd.concat(ticks, ignore_index=True),
            pd.DataFrame(budgets), pd.DataFrame(links))


def summary(fits: pd.DataFrame, ticks: pd.DataFrame, budgets: pd.DataFrame, links: pd.DataFrame) -> str:
    lines = ["step tables: step = scale x operator sum + offset, per CUDA-graph mode (two-fold cross-validation)"]
    for r in fits.itertuples(index=False):
        lines.append(f"  {r.run} tp{r.tp} {r.branch:9s} {r.rows:3d} rows: step/operators median "
                     f"{r.median_step_over_operators:.2f}, fit {r.scale:.3f} x + {r.offset_ms:.2f} ms, held-out "
                     f"error mean {r.held_out_mean_abs_pct:.1f} %, max {r.held_out_max_abs_pct:.1f} %")
    lines.append("the runs' decode-only seconds (one step = running / generated tokens per second): model / run - 1")
    for (run, tp), t in ticks.groupby(["run", "tp"], sort=False):
        for lo, hi in ((1, 16), (17, 64), (65, 1024)):
            band = t[(t.n >= lo) & (t.n <= hi)]
            if band.empty:
                continue
            op = 100 * np.median(band.operator_s / band.step_s - 1)
            cal = 100 * np.median(band.step_calibrated_s / band.step_s - 1)
            lines.append(f"  {run} tp{tp} batches {lo}-{hi} ({len(band)} s): run step median "
                         f"{1e3 * band.step_s.median():.1f} ms; operator sum {op:+.1f} %"
                         + (f"; step-calibrated {cal:+.1f} %" if np.isfinite(cal) else "; no step table"))
    lines.append("the runs' full-budget seconds, pooled (one step = budget / tokens per second): model / run - 1")
    for r in budgets.itertuples(index=False):
        extra = (f"; collectives as the engine ran them {100 * (r.in_engine_s / r.run_step_s - 1):+.1f} %"
                 if "in_engine_s" in budgets.columns and np.isfinite(r.in_engine_s) else "")
        lines.append(f"  {r.run} tp{r.tp}: {r.seconds} s, {r.steps:.0f} steps of {r.budget} tokens with "
                     f"{r.decodes_per_step:.0f} decodes: run step {1e3 * r.run_step_s:.1f} ms; operator sum "
                     f"{100 * (r.operator_s / r.run_step_s - 1):+.1f} %{extra}")
    for r in links.itertuples(index=False):
        lines.append(f"collectives as the engine ran them, {r.run} tp{r.tp} ({r.step_table}, {r.rows} rows): "
                     f"the measured floor plus the bytes at 1/{r.factor:.2f} of the measured bandwidth (folds "
                     f"{r.fold_factors}; held-out step "
                     f"error mean {r.held_out_mean_abs_pct:.1f} %, max {r.held_out_max_abs_pct:.1f} %)")
        t = ticks[ticks.run == r.run]
        for lo, hi in ((1, 16), (17, 64), (65, 1024)):
            band = t[(t.n >= lo) & (t.n <= hi)]
            if len(band):
                lines.append(f"  its decode-only seconds, batches {lo}-{hi}: collectives as the engine ran them "
                             f"{100 * np.median(band.in_engine_s / band.step_s - 1):+.1f} %")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="the shared data folder (default: ../shared/data)")
    ap.add_argument("--out", default=str(OUT), help=f"folder for the tables (default {OUT})")

    def work():
        from s3sim.inputs import SHARED_DATA_DIR
        from s3sim.writers import write_csv

        a = ap.parse_args(argv)
        fits, rows, ticks, budgets, links = check(Path(a.data) if a.data else SHARED_DATA_DIR)
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(fits.round(6), out / "steps.csv")
        write_csv(rows.round(9), out / "steps_rows.csv")
        write_csv(ticks.round(9), out / "run_decode_steps.csv")
        write_csv(budgets.round(6), out / "run_budget_steps.csv")
        write_csv(links.round(4), out / "in_engine_collectives.csv")
        print(summary(fits, ticks, budgets, links))
        print(f"tables: {out}/steps.csv, steps_rows.csv, run_decode_steps.csv, run_budget_steps.csv, "
              f"in_engine_collectives.csv")

    return exit_code("step_check", work)


if __name__ == "__main__":
    sys.exit(main())
