"""Run one configuration end to end and write its results atomically into a run directory.

A run directory says its own state: `summary.csv` (written last) marks a finished run, `failed.txt` a
failed one, and `resolved_config.yaml` alone one that is running or was killed. `run_dir` reuses a
finished run instead of recomputing it, so a sweep can be resumed, but only when the same resolved
config, the same data files (by content) and the same code would give it (`inputs.json`, written after
the summary: a run without it is never reused), and a summary that cannot be read runs again.
"""
from __future__ import annotations

import json
import numbers
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from s3sim.cluster.build import build
from s3sim.cluster.summary import run_summary
from s3sim.config import policy_node, rows_used, structured
from s3sim.core.policies import POLICIES
from s3sim.core.request import make_requests
from s3sim.inputs import fingerprint, ragged_row, recording, unchanged
from s3sim.metrics.summary import request_records
from s3sim.simulator.engine import simulate_cluster
from s3sim.spec import flag, get, run_spec
from s3sim.writers import write_csv, write_parquet, write_text


SUMMARY, FAILED, CONFIG, INPUTS = "summary.csv", "failed.txt", "resolved_config.yaml", "inputs.json"
REQUESTS = "requests.parquet"  # per request, columnar: large runs write and read it fast (pandas.read_parquet)
REQUIRED = ("policy", "num_requests", "request_throughput")  # a summary without them (and valid) is not one
KEY_COLUMNS = ("policy", "num_requests", "request_throughput", "ttft_p50", "tpot_p50", "e2e_latency_p99",
               "goodput")  # the headline a summary must hold (s3sim-collect prints them)
RESULT_FILES = (SUMMARY, FAILED, INPUTS, REQUESTS, "requests.csv", "iterations.csv", "tokens.csv", "outputs.csv",
                "repeats.csv", "replicas.csv")  # summary first


def config_text(cfg) -> str:
    """The resolved config as YAML: what a run directory is keyed on."""
    return OmegaConf.to_yaml(OmegaConf.create(cfg))


def run_dir(cfg: dict, out: str | Path, write_iterations: bool = False) -> tuple[dict, bool]:
    """Run `cfg` into `out`, or reuse the finished run already there if its config is the same.

    Returns the summary row and whether it was reused. A failure leaves `failed.txt` (the error and its
    traceback) and re-raises; a later attempt clears it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = config_text(cfg)
    row = reusable(out, text)
    if row is not None and (not write_iterations or (out / "iterations.csv").is_file()):
        return row, True
    clear(out)
    write_text(text, out / CONFIG)
    try:
        with recording() as files:
            row = run_config(cfg, out, write_iterations=write_iterations)
    except Exception as e:
        try:
            record_failure(out, e)
        except OSError:
            pass  # a directory it cannot write: the error itself is reported
        raise
    record = {**fingerprint(files), "outputs": written(out)}
    write_text(json.dumps(record, indent=1) + "\n", out / INPUTS)
    return row, False


def written(out: Path) -> list[str]:
    """The result files a finished run wrote into `out`: all must still be there for it to be reused."""
    return sorted(p.name for p in out.iterdir() if p.is_file() and p.name in RESULT_FILES and p.name != INPUTS)


def reusable(out: Path, text: str) -> dict | None:
    """The summary row of a finished run in `out` that the config `text`, the files it read and the code
    would give again, with every result file it wrote still there; None if there is none (a changed input,
    a deleted result, or a summary that cannot be read)."""
    summary, conf, inputs = out / SUMMARY, out / CONFIG, out / INPUTS
    if not (summary.is_file() and conf.is_file() and inputs.is_file()):
        return None
    try:
        record = json.loads(inputs.read_text())
        outputs = record.get("outputs") if isinstance(record, dict) else None
        if conf.read_text() != text or not unchanged(record) or not isinstance(outputs, list):
            return None
        if not all((out / str(name)).is_file() for name in outputs):  # a result file deleted since
            return None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return read_summary(summary)[0]


def read_summary(path: Path) -> tuple[dict | None, str | None]:
    """A summary's one row, or None and why it is not a summary: unreadable, a row of more or fewer fields than
    its header (half written, or edited), not one row, a headline column missing, or a required value that is
    not one (no policy, a request count that is not a count, a throughput that is not a finite rate)."""
    ragged = ragged_row(path)
    if ragged is not None:
        return None, f"{SUMMARY} {ragged}: not one row of its columns"
    try:
        table = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        return None, f"{SUMMARY} cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if len(table) != 1:
        return None, f"{SUMMARY} has {len(table)} rows, not one"
    missing = [c for c in KEY_COLUMNS if c not in table.columns]
    if missing:
        return None, f"{SUMMARY} lacks the column {missing[0]!r}: not a run's summary"
    row = table.iloc[0].to_dict()
    policy, n, rate = (row[c] for c in REQUIRED)
    if not isinstance(policy, str) or not policy.strip():
        return None, f"{SUMMARY}: policy is {policy!r}, not a policy's name"
    if not _number(n) or n < 0 or n != int(n):
        return None, f"{SUMMARY}: num_requests is {n!r}, not a count of requests"
    if not _number(rate) or not 0 <= rate < float("inf"):
        return None, f"{SUMMARY}: request_throughput is {rate!r}, not a finite rate >= 0"
    return row, None


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and v == v


def clear(out: Path) -> None:
    """Remove an earlier run's results from `out`, its summary first (from then on the run is unfinished)."""
    for stale in RESULT_FILES:
        (out / stale).unlink(missing_ok=True)


def record_failure(out: str | Path, err: BaseException) -> None:
    """Write `failed.txt`: one line naming the error, then the traceback."""
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    write_text(f"{type(err).__name__}: {err}\n\n{tb}", Path(out) / FAILED)


def run_config(cfg, out_dir: str | Path | None = None, write_iterations: bool = False) -> dict:
    """Simulate `cfg`; return its summary row (config fields included) and write files if `out_dir`. With
    `repeats: N` (N > 1) the run is simulated with seeds seed .. seed + N - 1 (workload sample, arrivals,
    predictor errors): the row holds each metric's mean over them, `<metric>_ci95` the half-width of its
    95 % confidence interval (Student's t), and `repeats.csv` every seed's row; requests.parquet is the first seed's;
    sim_wall_s is every seed's together."""
    spec = run_spec(cfg)
    n, seed = spec.repeats, spec.seed
    if n == 1:
        return _run_once(cfg, out_dir, write_iterations)
    rows = [_run_once({**cfg, "seed": seed + i}, out_dir if i == 0 else None, write_iterations, summary=False)
            for i in range(n)]
    row = mean_with_ci(rows)
    row.update(seed=seed, repeats=n)
    if all("sim_wall_s" in r for r in rows):  # the simulator's time for the whole run, every seed
        wall = sum(r["sim_wall_s"] for r in rows)
        row.update(sim_wall_s=wall, sim_requests_per_s=sum(r["num_requests"] for r in rows) / wall if wall > 0
                   else float("inf"))
    if out_dir is not None:
        write_csv(pd.DataFrame(rows), Path(out_dir) / "repeats.csv")
        write_csv(pd.DataFrame([row]), Path(out_dir) / SUMMARY)
    return row


def mean_with_ci(rows: list[dict]) -> dict:
    """The rows' mean for every measured numeric column, with `<metric>_ci95`, the half-width of the 95 %
    confidence interval of the mean; settings, counts of the workload and text: the first row's value."""
    df = pd.DataFrame(rows)
    out = dict(rows[0])
    t = t975(len(rows) - 1)
    for c in df.columns:
        if c in CI_SKIP or not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]):
            continue  # a setting, a count of the workload, or text: the first seed's value
        v = df[c].astype(float)
        out[c] = float(v.mean(skipna=False))  # a metric missing for one seed is missing for the mean
        finite = np.isfinite(v.to_numpy()).all()  # an offline run's offered_rate is inf, a missing metric NaN
        out[f"{c}_ci95"] = float(t * v.std(ddof=1) / np.sqrt(len(v))) if finite else float("nan")
    return out


# Student's t, two-sided 95 %, by degrees of freedom (1..30)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """Student's t quantile 0.975: the table, then the Cornish-Fisher expansion (2.040 at 31, within 1e-3)."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


# summary columns that are settings or bookkeeping, not measurements: no confidence interval
CI_SKIP = {"seed", "num_requests", "max_seq_len", "rate", "accuracy", "kv_capacity_tokens", "workload_rows",
           "clipped_outputs", "context_clipped", "dropped_requests", "clipped_prompts", "zero_length_rows",
           "gpus_per_engine", "model_dtype_bytes", "prefix_blocks", "shared_prefix_tokens",
           "shared_prefix_groups", "prefix_caching", "sim_wall_s",
           "sim_requests_per_s", "repeats"}


def _run_once(cfg, out_dir, write_iterations: bool, summary: bool = True) -> dict:
    """Simulate `cfg` once: its replicas behind its router (one engine is a cluster of one). A cluster also
    writes replicas.csv (one row per replica), each request's `replica` in requests.parquet and, in
    iterations.csv (if asked), each iteration's."""
    setup = build(cfg)
    reqs = make_requests(setup.prompt_len, setup.output_len, setup.arrivals, setup.prefix)
    t0 = time.perf_counter()
    result = simulate_cluster(reqs, setup.replicas, setup.router, max_jump=setup.spec.max_jump)
    wall = time.perf_counter() - t0
    records = request_records(result.requests)
    row, replica_rows = run_summary(result, setup.slo, records)
    row.update(setup_fields(cfg, setup, row["policy"], len(reqs), wall))
    for r, gpu in zip(replica_rows, setup.gpus):
        r["gpu"] = gpu
    if out_dir is not None:
        extra, log = {}, None
        if replica_rows:
            records.insert(1, "replica", result.assignment[records.id.to_numpy()])
            extra["replicas.csv"] = pd.DataFrame(replica_rows)
        if write_iterations:
            log = pd.concat([r.log.frame().assign(replica=i) for i, r in enumerate(result.replicas)],
                            ignore_index=True) if replica_rows else result.replicas[0].log.frame()
        write_results(out_dir, records, row if summary else None, log, extra)
    return row


def setup_fields(cfg, setup, policy: str, n: int, wall: float) -> dict:
    """The summary fields that say what was simulated and how fast."""
    per_engine = setup.spec.gpu.gpus
    coll = collectives(setup.replicas)
    return {"model": setup.spec.model, "gpu": setup.spec.gpu.name,
            **({"gpus_per_engine": per_engine} if per_engine > 1 else {}), **({"collectives": coll} if coll else {}),
            **run_fields(cfg, policy, setup.spec),
            "clipped_outputs": setup.clipped, "context_clipped": setup.context_clipped,
            "dropped_requests": setup.dropped, "clipped_prompts": setup.clipped_prompts,
            "model_dtype_bytes": setup.model.dtype_bytes, "model_assumed": "; ".join(setup.model.assumed),
            "prefix_blocks": setup.prefix_blocks, "shared_prefix_tokens": setup.shared_prefix[0],
            "shared_prefix_groups": setup.shared_prefix[1],
            "prefix_caching": flag(get(cfg, "policy.prefix_caching"), "policy.prefix_caching", False), "workload_rows": setup.workload_rows,
            "rows_used": rows_used(n + setup.dropped, setup.workload_rows, setup.spec.arrival_process == "trace"),
            "sim_wall_s": wall, "sim_requests_per_s": n / wall if wall > 0 else float("inf"),
            **({"zero_length_rows": setup.zero_length_rows} if setup.zero_length_rows else {})}


def collectives(replicas) -> str:
    """How the engines price tensor parallelism's all-reduces and its logits' all-gather, and expert parallelism's
    exchanges (each latency model's `all_reduce`, `logits_gather` and `gather` sources, the distinct ones joined by
    ' | '); '' where no engine has any."""
    seen = []
    for _, lat, _ in replicas:
        for priced in (getattr(lat, "all_reduce", None), getattr(lat, "logits_gather", None),
                       getattr(lat, "gather", None)):
            if priced is not None and priced.source not in seen:
                seen.append(priced.source)
    return " | ".join(seen)


def run_fields(cfg, policy: str, spec=None) -> dict:
    """The summary fields that say what ran, shared by the simulator's and the executor's runs (`spec`: `cfg`'s
    run spec, if read already)."""
    spec = spec if spec is not None else run_spec(cfg)
    cls = POLICIES[policy]
    ranks = bool(getattr(structured(cls.Config, policy_node(cfg, spec)[0], "policy"), "predictor_use", ""))  # vllm's order
    predicts = (cls.uses_predictor or ranks) and cls.fixed_predictor is None  # the configured predictor, not its own
    return {
        "workload": spec.workload.name if spec.workload else None, "arrival": spec.arrival_process, "rate": spec.arrival_rate,
        "predictor": cls.fixed_predictor or (cfg["predictor"]["name"] if predicts else "none"),
        "accuracy": cfg["predictor"].get("accuracy") if predicts else None,
        "max_seq_len": spec.max_seq_len, "seed": spec.seed,
    }


def write_results(out_dir, records: pd.DataFrame, row: dict, log: pd.DataFrame | None = None,
                  extra: dict | None = None) -> None:
    """requests.parquet, iterations.csv (if `log`, a frame), any `extra` tables, and summary.csv last: its
    presence marks a finished run."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(records, out / REQUESTS)
    if log is not None:
        write_csv(log, out / "iterations.csv")
    for name, table in (extra or {}).items():
        write_csv(table, out / name)
    if row is not None:
        write_csv(pd.DataFrame([row]), out / "summary.csv")
