"""`s3sim-validate`: replay a real vLLM serving run in the simulator and compare the two, metric by metric.

    s3sim-validate RUN_DIR --out DIR [--profile PROFILE_DIR|none] [--model PRESET_OR_CONFIG_JSON] [--gpu PRESET]

RUN_DIR holds what a real run recorded (`meta.json`, `requests.jsonl`, and `timeseries.csv` for the plot where
recorded; the folder above it, with `run/` inside, is accepted too). Every request is replayed with the `vllm` policy (vLLM's V1 scheduler)
under the run's engine settings, arriving at its `queued_ts` (relative to the earliest one: the zero of every
real metric) with the run's prompt and output lengths. vLLM stamps `queued_ts` when its engine takes a request
in, between two steps; the replay's `queued` is likewise the first iteration boundary from the arrival (at once
where the engine was idle). The metrics, real and simulated alike: TTFT = first token - queued; TPOT = (last
token - first token) / (output tokens - 1) over requests with more than one output token; end-to-end latency =
last token - queued; throughput = requests (output tokens) / (last token of the run - first queued). Times are
reported in milliseconds, like the peer's table, and their metric names say so (`ttft_p50_ms`).

KV capacity: `kv_cache.num_gpu_blocks * block_size` when meta.json gives it; otherwise vLLM's memory accounting,

    blocks = floor((floor(gpu_memory_utilization * device memory) - weights - NON_KV_RESERVE_BYTES)
                   / (block_size * KV bytes per token))          (per GPU: weights and KV heads split by TP)

with the device memory from meta.json (`hardware.device_total_memory_bytes`) or else the GPU preset, and the
non-KV reserve calibrated on the one run where every term is known (see `NON_KV_RESERVE_BYTES`).

Latency: the run's operator profile (`RUN_DIR/../profile` unless --profile says otherwise) through
`s3sim.latency.operators.OperatorLatency`; without one (`--profile none`) the operator sum on the GPU's datasheet
(`s3sim.latency.datasheet`). Tensor parallelism's all-reduces (`--all-reduce`, default auto) are priced from the
all-reduce table measured on the run's GPUs where the GPU preset names one (`measured_all_reduce`: the two PCIe
RTX PRO 6000, the A100 DGX), as the engine ran it where the preset also names whole steps to fit that to
(`engine`: the table's floor plus the bytes at its measured bandwidth over a factor fitted to whole steps,
`s3sim.latency.operators.in_engine_factor`; the logits' and expert parallelism's all-gathers get the same
factor), else as a ring over the preset's interconnect, and the latency line says which.

Before any replay the inputs are checked against each other and against physics (`s3sim.validate_checks`):
meta.json against itself, requests.jsonl against meta.json (every request once, timestamps in seconds within
the run's recorded duration, no tokens at one instant), the recorded KV blocks against the recorded device
memory, every request within `max_model_len`, and --gpu / --model against the GPU and model the run and its
profile name (a disagreement is refused: `--profile none --fit-from PRESET` prices a run with another GPU's
fitted efficiencies, and says so).

Writes into DIR only once the replay has succeeded: `timeline.png` and `timeline_data.csv` (running, waiting and
KV use over time, real against simulated), `peer.csv` (the errors another simulator reports on the same run,
from `llmservingsim_summary.txt`, when there is one) and `validation.csv` last (`metric, real, simulated,
error_pct, sensitivity, kv_capacity_source` with error_pct = 100 * (simulated - real) / real, sensitivity how
far error_pct moves were every step 1 % slower (a second replay), and kv_capacity_source
`recorded` (meta.json's block count) or `derived` (vLLM's memory accounting)). They are written into a
temporary folder inside DIR and moved into place, validation.csv last; an earlier run's outputs (`OUTPUTS`)
are removed from DIR once the inputs have passed their checks, so DIR never holds a file this run did not
write, and a replay that fails leaves no validation.csv. Other files in DIR are left alone.
Bad input is one line on stderr and exit status 2, before the replay and before DIR is touched.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim import validate_checks as checks
from s3sim.commandline import exit_code
from s3sim.core.errors import ConfigError, InvariantViolation
from s3sim.hardware.gpus import preset_of_device
from s3sim.hardware.models import preset_of_hf_name
from s3sim.latency.provenance import SPEC_FIELDS
from s3sim.workload.text import json_lines

PROG = "s3sim-validate"
META, REQUESTS, TIMESERIES, PEER = "meta.json", "requests.jsonl", "timeseries.csv", "llmservingsim_summary.txt"
REQUEST_FIELDS = ("input_toks", "output_toks", "queued_ts", "first_token_ts", "last_token_ts")
# read when every row has them: the consistency checks, and TTFT's split at `scheduled_ts` (first scheduled)
OPTIONAL_FIELDS = ("request_id", "arrival_time", "scheduled_ts")
OUTPUTS = ("validation.csv", "peer.csv", "timeline.png", "timeline_data.csv")  # what a run writes into --out
TIMESERIES_FIELDS = ("t", "running", "waiting", "kv_cache_pct")
COLUMNS = ("metric", "real", "simulated", "error_pct")
STATS = (("mean", None), ("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99))
LATENCIES = ("ttft", "tpot", "e2e_latency")
SPLIT = ("queue", "prefill")  # TTFT = queue (queued -> first scheduled) + prefill (first scheduled -> first token)
METRICS = tuple(f"{lat}_{s}" for lat in LATENCIES for s, _ in STATS) + ("request_throughput", "output_throughput")


def metric_name(metric: str) -> str:
    """The name a metric has in validation.csv and peer.csv: latencies carry their unit, ms."""
    return f"{metric}_ms" if metric.startswith(LATENCIES + SPLIT) else metric


# Device names (torch's, as in meta.json's hardware block or a profile's meta.yaml) -> GPU presets.
VLLM_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization
VLLM_PREFIX_CACHING = True  # vLLM V1 enables prefix caching unless told not to
VLLM_ASYNC_SCHEDULING = True  # vLLM V1 schedules a step ahead by default in recent versions (the runs' 0.19)
DEFAULTS_CHECKED = "0.19"  # the vLLM version whose defaults (async scheduling, prefix caching) were read
DEFAULT_BLOCK_SIZE = 16  # vLLM's default KV block size (tokens)
# What vLLM keeps back besides weights and KV cache (activations of a max_num_batched_tokens forward pass, the
# sampler, CUDA graphs, the allocator's slack), calibrated on the RTX 4090 run (rtx4090-llama-3.1-8b), the one
# where every term is known: Llama-3.1-8B bf16 (8,030,261,248 params x 2 bytes), gpu_memory_utilization 0.9 of
# 25,250,627,584 bytes, 2,588 KV blocks of 16 tokens at 131,072 bytes per token:
#   floor(0.9 x 25,250,627,584) - 16,060,522,496 - 2,588 x 16 x 131,072 = 1,237,612,953 bytes (1.24 GB).
# One point, one model and one token budget (2,048): other models, budgets or TP degrees would keep back more or
# less; the number is applied to them unchanged (per GPU), which is an assumption.
NON_KV_RESERVE_BYTES = int(0.9 * 25_250_627_584) - 8_030_261_248 * 2 - 2588 * 16 * 131_072
RESERVE_NOTE = "non-KV reserve 1,237,612,953 bytes calibrated on the RTX 4090 run (2,588 blocks known there)"


# ---- reading a run ---------------------------------------------------------------------------------------
@dataclass
class Run:
    dir: Path  # the folder with meta.json, requests.jsonl and, if recorded, timeseries.csv
    meta: dict
    requests: pd.DataFrame  # REQUEST_FIELDS, in file order, with each row's `line` and OPTIONAL_FIELDS if present
    timeseries: pd.DataFrame  # TIMESERIES_FIELDS; no rows where the run has no timeseries.csv
    has_timeseries: bool = True  # False: the run folder holds no timeseries.csv (it feeds the plot alone)

    @property
    def name(self) -> str:
        return (self.dir.parent if self.dir.name == "run" else self.dir).name


def find_run_dir(path: str | Path) -> Path:
    """The folder holding the run's files: `path` itself, or `path/run`."""
    p = Path(path)
    if p.is_file():
        raise ConfigError(f"run folder {str(p)!r} is a file: give the folder that holds {META} and {REQUESTS} "
                          f"(and {TIMESERIES} where recorded)")
    if not p.is_dir():
        raise ConfigError(f"run folder {str(p)!r} does not exist")
    if not (p / META).exists() and (p / "run" / META).exists():
        p = p / "run"
    for name in (META, REQUESTS):
        if not (p / name).is_file():
            raise ConfigError(f"{str(p / name)!r}: no such file (a run folder holds {META}, {REQUESTS} and, where "
                              f"recorded, {TIMESERIES})")
    return p


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{str(path)!r}: cannot be read ({e})") from None


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{str(path)!r}: invalid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{str(path)!r}: expected a JSON object at the top level")
    for key in ("engine_kwargs", "kv_cache", "hardware"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise ConfigError(f"{str(path)!r}: {key} must be an object, got {meta[key]!r}")
    if not isinstance(meta.get("engine_kwargs"), dict):
        raise ConfigError(f"{str(path)!r}: missing engine_kwargs (the engine's max_num_seqs, max_num_batched_tokens)")
    return meta


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_requests(path: Path) -> pd.DataFrame:
    rows = []
    for lineno, row in json_lines(_read_text(path), repr(str(path))):
        where = f"{str(path)!r} line {lineno}"
        for f in REQUEST_FIELDS:
            if f not in row:
                raise ConfigError(f"{where}: missing field {f!r}")
            if not _is_number(row[f]):
                raise ConfigError(f"{where}: field {f!r} must be a number, got {row[f]!r}")
        for f in ("input_toks", "output_toks"):
            if row[f] != int(row[f]) or row[f] < 1:
                raise ConfigError(f"{where}: field {f!r} must be a positive integer, got {row[f]!r}")
        if not row["queued_ts"] <= row["first_token_ts"] <= row["last_token_ts"]:
            raise ConfigError(f"{where}: expected queued_ts <= first_token_ts <= last_token_ts, got "
                              f"{row['queued_ts']}, {row['first_token_ts']}, {row['last_token_ts']}")
        checks.check_request_row(row, where)
        if "scheduled_ts" in row and (not _is_number(row["scheduled_ts"])
                                      or not row["queued_ts"] <= row["scheduled_ts"] <= row["first_token_ts"]):
            raise ConfigError(f"{where}: field 'scheduled_ts' must be a number within queued_ts..first_token_ts "
                              f"({row['queued_ts']}..{row['first_token_ts']}), got {row['scheduled_ts']!r}")
        if "arrival_time" in row and not _is_number(row["arrival_time"]):
            raise ConfigError(f"{where}: field 'arrival_time' must be a number (epoch seconds), got "
                              f"{row['arrival_time']!r}")
        rows.append({"line": lineno, **{f: row[f] for f in REQUEST_FIELDS + OPTIONAL_FIELDS if f in row}})
    if not rows:
        raise ConfigError(f"{str(path)!r}: no requests")
    optional = [f for f in OPTIONAL_FIELDS if all(f in r for r in rows)]
    df = pd.DataFrame(rows, columns=["line", *REQUEST_FIELDS, *optional])
    df.attrs["lacking"] = {f: sum(f not in r for r in rows) for f in OPTIONAL_FIELDS if f not in optional}
    return df.astype({"input_toks": np.int64, "output_toks": np.int64})


def read_timeseries(path: Path) -> pd.DataFrame:
    reader = csv.reader(_read_text(path).splitlines())
    header = next(reader, None)
    if header is None:
        raise ConfigError(f"{str(path)!r}: empty file (expected a header {','.join(TIMESERIES_FIELDS)},...)")
    header = [h.strip() for h in header]
    missing = [f for f in TIMESERIES_FIELDS if f not in header]
    if missing:
        raise ConfigError(f"{str(path)!r}: missing column {missing[0]!r} (columns: {','.join(header)})")
    cols = [header.index(f) for f in TIMESERIES_FIELDS]
    rows = []
    for lineno, rec in enumerate(reader, 2):
        if not rec:
            continue
        row = []
        for f, i in zip(TIMESERIES_FIELDS, cols):
            cell = rec[i] if i < len(rec) else ""
            try:
                v = float(cell)
            except ValueError:
                raise ConfigError(f"{str(path)!r} line {lineno}: column {f!r} must be a number, got {cell!r}") from None
            if not math.isfinite(v):
                raise ConfigError(f"{str(path)!r} line {lineno}: column {f!r} must be finite, got {cell!r}")
            row.append(v)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(TIMESERIES_FIELDS), dtype=float)


def read_run(path: str | Path) -> Run:
    """The run's files, each read and checked, then checked against each other (`s3sim.validate_checks`)."""
    d = find_run_dir(path)
    recorded = os.path.lexists(d / TIMESERIES)  # a folder or a broken link there is read, and refused, as a file
    series = read_timeseries(d / TIMESERIES) if recorded else pd.DataFrame(columns=list(TIMESERIES_FIELDS), dtype=float)
    run = Run(d, read_meta(d / META), read_requests(d / REQUESTS), series, recorded)
    where = repr(str(d / META))
    checks.check_meta(run.meta, where)
    checks.check_requests(run.requests, run.meta, d / REQUESTS, where)
    checks.check_span_against_timeseries(run.requests, run.timeseries, d / REQUESTS, d / TIMESERIES,
                                         checks.recorded_duration(run.meta, where) is not None)
    return run


# ---- metrics ---------------------------------------------------------------------------------------------
def latency_stats(name: str, seconds) -> dict:
    """`<name>_<stat>` (`STATS`) of per-request seconds in milliseconds, NaN (a request without it) dropped."""
    v = np.asarray(seconds, dtype=float)
    v = v[~np.isnan(v)] * 1e3
    return {f"{name}_{stat}": (float(v.mean()) if p is None else float(np.percentile(v, p))) if len(v) else float("nan")
            for stat, p in STATS}


def metrics(ttft, tpot, e2e, n_requests: int, output_tokens: int, span: float) -> dict:
    """The rows of validation.csv from per-request seconds (TPOT: only requests with more than one output
    token; NaN elsewhere is dropped), in milliseconds; throughputs per second of `span`."""
    out = {}
    for name, values in zip(LATENCIES, (ttft, tpot, e2e)):
        out.update(latency_stats(name, values))
    out["request_throughput"] = n_requests / span if span > 0 else float("nan")
    out["output_throughput"] = output_tokens / span if span > 0 else float("nan")
    return out


def real_metrics(req: pd.DataFrame) -> dict:
    many = req.output_toks > 1
    tpot = ((req.last_token_ts - req.first_token_ts) / (req.output_toks - 1)).where(many)
    span = float(req.last_token_ts.max() - req.queued_ts.min())
    return metrics(req.first_token_ts - req.queued_ts, tpot, req.last_token_ts - req.queued_ts, len(req),
                   int(req.output_toks.sum()), span)


def replay_records(requests) -> pd.DataFrame:
    """`request_records` of a replay's requests with each one's `queued`, the zero of its metrics."""
    from s3sim.metrics.summary import request_records
    return request_records(requests).assign(queued=[r.queued for r in requests])


def simulated_metrics(records: pd.DataFrame) -> dict:
    """From `request_records` of the replay with each request's `queued` (the step boundary at which the engine
    took it in, as vLLM stamps `queued_ts`): the same definitions (end-to-end ends at the last token)."""
    many = records.output_len > 1
    tpot = ((records.last_token - records.first_token) / (records.output_len - 1)).where(many)
    span = float(records.last_token.max() - records.queued.min())
    return metrics(records.first_token - records.queued, tpot, records.last_token - records.queued,
                   len(records), int(records.output_len.sum()), span)


def split_metrics(queued, scheduled, first_token) -> dict:
    """TTFT's two parts in ms (`SPLIT`): waiting to be scheduled, and from the first scheduling to the first token
    (the prompt's chunks, and any wait for a slot between them)."""
    out = {}
    for name, values in zip(SPLIT, (np.asarray(scheduled) - queued, np.asarray(first_token) - scheduled)):
        out.update(latency_stats(name, values))
    return out


def comparison(real: dict, sim: dict) -> pd.DataFrame:
    rows = []
    for m in METRICS + tuple(f"{n}_{s}" for n in SPLIT for s, _ in STATS if f"{n}_{s}" in real):
        r, s = real[m], sim[m]
        rows.append((metric_name(m), r, s, 100.0 * (s - r) / r if r else float("nan")))
    return pd.DataFrame(rows, columns=list(COLUMNS))


# ---- the peer's table ------------------------------------------------------------------------------------
_PEER_ROW = re.compile(r"^\s*(TTFT|TPOT|Latency)\s+(Mean|Median|P\d+)\s+(\S+)\s+(\S+)\s+([-+]?[\d.]+)%\s*$", re.I)
_PEER_LAT = {"ttft": "ttft", "tpot": "tpot", "latency": "e2e_latency"}


def read_peer(path: Path) -> pd.DataFrame:
    """`llmservingsim_summary.txt` (rows like `TTFT Mean  65456.6  65820.2  +0.6%`) as
    `metric, real, peer_simulated, peer_error_pct`, with validation.csv's metric names."""
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        m = _PEER_ROW.match(line)
        if not m:
            continue
        lat, stat = _PEER_LAT[m[1].lower()], m[2].lower()
        stat = "p50" if stat == "median" else stat
        try:
            real, sim, err = float(m[3]), float(m[4]), float(m[5])
        except ValueError:
            raise ConfigError(f"{str(path)!r} line {lineno}: expected numbers, got {line.strip()!r}") from None
        rows.append((metric_name(f"{lat}_{stat}"), real, sim, err))
    if not rows:
        raise ConfigError(f"{str(path)!r}: no rows like 'TTFT Mean  <vLLM>  <Sim>  <Diff>%'")
    return pd.DataFrame(rows, columns=["metric", "real", "peer_simulated", "peer_error_pct"])


def peer_mismatch(peer: pd.DataFrame, real: dict) -> str | None:
    """Why the peer's table is not about this run (its real value of a metric more than 1 %, and its 0.1 ms
    rounding, from the one requests.jsonl gives), or None where every one agrees."""
    named = {metric_name(k): v for k, v in real.items()}
    for r in peer.itertuples(index=False):
        ours = named.get(r.metric)
        if ours is not None and abs(r.real - ours) > max(0.01 * abs(ours), 0.1):
            return f"its real {r.metric} is {r.real:,.1f} where this run's requests.jsonl gives {ours:,.1f}"
    return None


# ---- the engine ------------------------------------------------------------------------------------------
def _positive_int(value, where: str) -> int:
    if not _is_number(value) or value != int(value) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    return int(value)


@dataclass
class Engine:
    """What the replay takes from meta.json."""
    model: str | None
    max_num_seqs: int | None  # None until `engine_limits` where meta.json does not record it
    max_num_batched_tokens: int | None
    tp: int
    block_size: int
    num_gpu_blocks: int | None
    gpu_memory_utilization: float
    prefix_caching: bool
    prefix_caching_recorded: bool
    device_name: str | None
    device_memory: int | None
    kv_cache_memory: int | None = None  # kv_cache.kv_cache_memory_bytes: the KV cache's memory when set
    async_scheduling: bool = True  # resolved_config.scheduler_config.async_scheduling, else vLLM V1's default
    async_recorded: bool = False
    dp: int = 1  # data_parallel_size: ranks of one MoE model stepping together (`s3sim.core.data_parallel`)
    expert_parallel: bool = False  # enable_expert_parallel: the experts split across the data-parallel ranks
    blocks_from: str = "kv_cache.num_gpu_blocks"  # the meta.json field num_gpu_blocks came from
    graph_tokens: int | None = None  # the largest CUDA-graph batch (0: none, enforce_eager); None: vLLM's default
    graphs_from: str = ""  # the meta.json field graph_tokens came from

    @property
    def kv_capacity_source(self) -> str:
        """`recorded` when meta.json gives the block count, else `derived` (vLLM's memory accounting)."""
        return "recorded" if self.num_gpu_blocks is not None else "derived"


def _resolved(meta: dict) -> dict:
    """`resolved_config`'s sections (what vLLM resolved every setting to), empty where the run has none."""
    rc = meta.get("resolved_config")
    return rc if isinstance(rc, dict) else {}


def _section(meta: dict, name: str) -> dict:
    sec = _resolved(meta).get(name)
    return sec if isinstance(sec, dict) else {}


# settings that change what a step does or costs, and are not modelled: (section of resolved_config, field,
# engine_kwargs field, what is modelled); each refused where the run sets it otherwise
UNMODELLED = (("parallel_config", "pipeline_parallel_size", "pipeline_parallel_size", 1, "one pipeline stage"),
              ("parallel_config", "decode_context_parallel_size", "decode_context_parallel_size", 1,
               "no context parallelism"),
              ("model_config", "quantization", "quantization", None, "unquantized 16-bit weights"),
              ("scheduler_config", "enable_chunked_prefill", "enable_chunked_prefill", True, "chunked prefill"),
              ("scheduler_config", "policy", "scheduling_policy", "fcfs", "first-come first-served scheduling"),
              ("scheduler_config", "long_prefill_token_threshold", "long_prefill_token_threshold", 0,
               "chunks capped by the token budget alone"),
              ("scheduler_config", "max_num_partial_prefills", "max_num_partial_prefills", 1,
               "vLLM's default of one partial prefill, whose chunks only the token budget caps"))
# sections of resolved_config (and the engine argument) that, set at all, change what a step does
UNMODELLED_SECTIONS = (("speculative_config", "speculative_config", "speculative decoding is not modelled"),
                       ("lora_config", "enable_lora", "LoRA adapters are not modelled"))


# engine arguments that change no step's work or time (where the weights come from, logging, the seed)
INERT_ENGINE_KWARGS = frozenset(("seed", "tokenizer", "tokenizer_mode", "tokenizer_revision", "revision",
                                 "trust_remote_code", "download_dir", "load_format", "served_model_name",
                                 "disable_log_stats", "enable_log_requests", "disable_log_requests"))


def unread_engine_kwargs(meta: dict) -> list[str]:
    """`name=value` of each engine argument set (not null, not false) that the replay neither reads, refuses
    nor knows to be inert: said in a note, since its effect, if any, lands in the errors."""
    read = ({f for f, _ in checks.ENGINE_RESOLVED} | set(checks.KV_ENGINE) | {u[2] for u in UNMODELLED}
            | {u[1] for u in UNMODELLED_SECTIONS}
            | {"model", "dtype", "kv_cache_dtype", "num_gpu_blocks_override"} | INERT_ENGINE_KWARGS)
    return [f"{k}={v!r}" for k, v in meta["engine_kwargs"].items()
            if k not in read and v is not None and v is not False]


def check_unmodelled(meta: dict, where: str) -> None:
    """One line for a setting the replay would otherwise ignore: more pipeline stages, context parallelism,
    quantized weights, prefill unchunked, another scheduling policy, a cap on each request's chunk (vLLM's
    long_prefill_token_threshold, which more than one partial prefill also sets), speculative decoding, LoRA."""
    ek = meta["engine_kwargs"]
    for section, field, ek_field, modelled, what in UNMODELLED:
        for value, name in ((ek.get(ek_field), f"engine_kwargs.{ek_field}"),
                            (_section(meta, section).get(field), f"resolved_config.{section}.{field}")):
            if isinstance(value, str) and isinstance(modelled, str):  # an enum's text too: SchedulerPolicy.FCFS
                value = value.lower().rsplit(".", 1)[-1]
            if value is not None and value != modelled:
                raise ConfigError(f"{where}: {name}={value!r} is not modelled (the replay models {what})")
    for section, ek_field, what in UNMODELLED_SECTIONS:
        for value, name in ((ek.get(ek_field), f"engine_kwargs.{ek_field}"),
                            (_resolved(meta).get(section), f"resolved_config.{section}")):
            if value:
                raise ConfigError(f"{where}: {name} is set: {what}")


def engine_settings(meta: dict, where: str) -> Engine:
    """The engine settings, refusing the ones the simulator does not model (one line naming them). A setting
    meta.json's `engine_kwargs` or `kv_cache` leaves out is read from `resolved_config` where vLLM recorded it."""
    check_unmodelled(meta, where)
    ek, kv, hw = dict(meta["engine_kwargs"]), dict(meta.get("kv_cache") or {}), meta.get("hardware") or {}
    for section, fields in (("scheduler_config", ("max_num_seqs", "max_num_batched_tokens")),
                            ("parallel_config", ("tensor_parallel_size", "data_parallel_size"))):
        for f in fields:
            ek[f] = checks.engine_value(meta, section, f)[0]
    cache = _section(meta, "cache_config")
    named = {f: f"kv_cache.{f}" for f, v in kv.items() if v is not None}  # the meta.json field each came from
    for f in ("block_size", "num_gpu_blocks", "gpu_memory_utilization", "enable_prefix_caching",
              "kv_cache_memory_bytes"):
        # the kv_cache section, else vLLM's engine argument of that name, else what vLLM resolved it to
        value, name = checks.first_given((kv.get(f), f"kv_cache.{f}"),
                                         (ek.get(f) if f in checks.KV_ENGINE else None, f"engine_kwargs.{f}"),
                                         (cache.get(f), f"resolved_config.cache_config.{f}"))
        if value is not None:
            kv[f], named[f] = value, name
    if kv.get("num_gpu_blocks") is None:  # the block count vLLM was told to use instead of its own
        value, name = checks.first_given(
            (ek.get("num_gpu_blocks_override"), "engine_kwargs.num_gpu_blocks_override"),
            (cache.get("num_gpu_blocks_override"), "resolved_config.cache_config.num_gpu_blocks_override"))
        if value is not None:
            kv["num_gpu_blocks"], named["num_gpu_blocks"] = value, name

    def where_kv(f: str) -> str:
        return f"{where}: {named.get(f, f'kv_cache.{f}')}"

    dp = ek.get("data_parallel_size")
    dp = 1 if dp is None else _positive_int(dp, f"{where}: engine_kwargs.data_parallel_size")
    ep, ep_from = checks.engine_value(meta, "parallel_config", "enable_expert_parallel")
    ep = ep or False
    if not isinstance(ep, bool):
        raise ConfigError(f"{where}: {ep_from} must be true or false, got {ep!r}")
    dtype, dtype_from = checks.engine_value(meta, "model_config", "dtype")
    dtype = str(dtype or "auto").lower().removeprefix("torch.")
    if dtype not in ("auto", "bfloat16", "float16", "half", "bf16", "fp16"):
        raise ConfigError(f"{where}: {dtype_from}={dtype!r} is not modelled (16-bit weights only)")
    kv_dtype, kv_dtype_from = checks.first_given(  # vLLM's CacheConfig names it cache_dtype
        (ek.get("kv_cache_dtype"), "engine_kwargs.kv_cache_dtype"),
        (cache.get("cache_dtype"), "resolved_config.cache_config.cache_dtype"))
    kv_dtype = str(kv_dtype or "auto").lower().removeprefix("torch.")
    if kv_dtype not in ("auto", "bfloat16", "float16"):
        raise ConfigError(f"{where}: {kv_dtype_from}={kv_dtype!r} is not modelled (16-bit KV only)")
    tp = ek.get("tensor_parallel_size")
    tp = 1 if tp is None else _positive_int(tp, f"{where}: engine_kwargs.tensor_parallel_size")
    if ep and dp == 1:
        raise ConfigError(f"{where}: {ep_from}=true with data_parallel_size=1: experts split over "
                          "tensor-parallel ranks are not modelled (only over data-parallel ranks)")
    # None where meta.json records neither the engine argument nor what vLLM resolved it to (`engine_limits`)
    seqs, budget = (None if ek.get(f) is None else _positive_int(ek[f], f"{where}: engine_kwargs.{f}")
                    for f in LIMITS)
    if None not in (seqs, budget):
        _check_budget(seqs, budget, where)
    block = _positive_int(kv.get("block_size") or DEFAULT_BLOCK_SIZE, where_kv("block_size"))
    blocks = kv.get("num_gpu_blocks")
    blocks = None if blocks is None else _positive_int(blocks, where_kv("num_gpu_blocks"))
    util = kv.get("gpu_memory_utilization")
    util = VLLM_GPU_MEMORY_UTILIZATION if util is None else util
    if not _is_number(util) or not 0 < util <= 1:
        raise ConfigError(f"{where_kv('gpu_memory_utilization')} must be in (0, 1], got {util!r}")
    mem = hw.get("device_total_memory_bytes")
    mem = None if mem is None else _positive_int(mem, f"{where}: hardware.device_total_memory_bytes")
    model = meta.get("model") or ek.get("model")
    caching = kv.get("enable_prefix_caching")
    caching = VLLM_PREFIX_CACHING if caching is None else caching
    if not isinstance(caching, bool):
        raise ConfigError(f"{where_kv('enable_prefix_caching')} must be true or false, got {caching!r}")
    kv_mem = kv.get("kv_cache_memory_bytes")
    kv_mem = None if kv_mem is None else _positive_int(kv_mem, where_kv("kv_cache_memory_bytes"))
    asynchronous, async_from = checks.engine_value(meta, "scheduler_config", "async_scheduling")
    if asynchronous is not None and not isinstance(asynchronous, bool):
        raise ConfigError(f"{where}: {async_from} must be true or false, got {asynchronous!r}")
    return Engine(None if model is None else str(model), seqs, budget, tp, block, blocks, float(util),
                  caching, kv.get("enable_prefix_caching") is not None, hw.get("device_name"), mem, kv_mem,
                  VLLM_ASYNC_SCHEDULING if asynchronous is None else asynchronous, asynchronous is not None, dp, ep,
                  named.get("num_gpu_blocks", ""), *cuda_graphs(meta, where))


LIMITS = ("max_num_seqs", "max_num_batched_tokens")  # vLLM's two engine limits, each picked by GPU when unset
VLLM_ENTRIES = ("offline", "server")  # --vllm-entry: how vLLM was started, which its default limits depend on


def _check_budget(seqs: int, budget: int, where: str, how: str = "") -> None:
    if budget < seqs:  # vLLM's own rule: every running sequence's decode fits in one step's budget
        raise ConfigError(f"{where}: engine_kwargs.max_num_batched_tokens={budget} must be at least "
                          f"engine_kwargs.max_num_seqs={seqs}{how} (vLLM refuses a token budget below its sequence "
                          "limit)")


def engine_limits(engine: Engine, gpu, entry: str | None, where: str) -> str | None:
    """Fill in the limits meta.json leaves unrecorded (`max_num_seqs`, `max_num_batched_tokens`) with what vLLM V1
    picks for the run's GPU and entry point (`--vllm-entry`: the offline LLM class or the server, which meta.json
    does not say, so it is never guessed); the line that says so, or None where both are recorded. A
    `--vllm-entry` with nothing to fill in is refused rather than ignored."""
    from s3sim.core.policies.vllm import vllm_default_limits

    missing = [f for f in LIMITS if getattr(engine, f) is None]
    if not missing:
        if entry is not None:
            raise ConfigError(f"--vllm-entry {entry}: {where} records max_num_seqs and max_num_batched_tokens, so "
                              "none of vLLM's defaults is needed: leave the flag out")
        return None
    device = engine.device_name or gpu.name
    gib = (engine.device_memory or gpu.memory_bytes) / 2**30
    if entry is None:
        each = "; ".join(f"{e}: {s:,} and {t:,}" for e in VLLM_ENTRIES
                         for s, t, _ in [vllm_default_limits(gib, device, e == "offline")])
        raise ConfigError(f"{where} records no {' and no '.join(missing)} (engine_kwargs, resolved_config."
                          f"scheduler_config): vLLM V1 picks them by GPU and by how it was started, which the run "
                          f"does not say: give --vllm-entry offline (the LLM class) or server (vllm serve); on "
                          f"{device} max_num_seqs and max_num_batched_tokens would be {each}")
    if entry not in VLLM_ENTRIES:
        raise ConfigError(f"--vllm-entry must be one of {', '.join(VLLM_ENTRIES)}, got {entry!r}")
    seqs, tokens, why = vllm_default_limits(gib, device, entry == "offline")
    engine.max_num_seqs = engine.max_num_seqs or seqs
    engine.max_num_batched_tokens = engine.max_num_batched_tokens or tokens
    _check_budget(engine.max_num_seqs, engine.max_num_batched_tokens, where, f" (one of them {why})")
    return (f"engine limits: {', '.join(f'{f}={getattr(engine, f):,}' for f in missing)} not recorded: {why} "
            f"(--vllm-entry {entry})")


def cuda_graphs(meta: dict, where: str) -> tuple[int | None, str]:
    """(the largest batch vLLM captured a CUDA graph for, the field that says so): 0 where the run ran eagerly
    (`enforce_eager`, or `cudagraph_mode` NONE), the recorded `max_cudagraph_capture_size`, else (None, '')
    for vLLM's default."""
    eager, eager_from = checks.engine_value(meta, "model_config", "enforce_eager")
    if eager is not None and not isinstance(eager, bool):
        raise ConfigError(f"{where}: {eager_from} must be true or false, got {eager!r}")
    if eager:
        return 0, eager_from
    comp = _section(meta, "compilation_config")
    mode = comp.get("cudagraph_mode")
    if mode is not None and str(mode).upper().rsplit(".", 1)[-1] in ("0", "NONE"):
        return 0, "resolved_config.compilation_config.cudagraph_mode"
    size = comp.get("max_cudagraph_capture_size")
    if size is not None:  # 0: graphs on, but no batch size captured
        field = "resolved_config.compilation_config.max_cudagraph_capture_size"
        return (0 if size == 0 and not isinstance(size, bool) else _positive_int(size, f"{where}: {field}")), field
    return None, ""


def other_version_note(meta: dict) -> str:
    """A loud word where a default was assumed for a run of a vLLM version other than the one it was read from."""
    version = meta.get("vllm_version")
    text = str(version).strip().lstrip("vV")
    if version is None or text == DEFAULTS_CHECKED or text.startswith(DEFAULTS_CHECKED + "."):
        return ""
    return (f"; read from vLLM {DEFAULTS_CHECKED}, and this run ran vLLM {version}, whose default may differ: "
            "--async-scheduling on or off sets it as the run had it")


def resolve_model(name: str | None, engine: Engine, beside: Path | None = None):
    """The model to price: `name` (--model), else the preset of meta.json's Hugging Face id, else the
    `config.json` beside the run (`beside`, where the shared runs keep the model's config)."""
    from s3sim.hardware.models import get_model
    if name is None:
        if engine.model is None:
            raise ConfigError("meta.json names no model: give --model (a preset name or a config.json)")
        name = preset_of_hf_name(engine.model)
        if name is None and beside is not None and beside.is_file():
            name = str(beside)
        if name is None:
            raise ConfigError(f"model {engine.model!r} of meta.json has no preset here and no config.json is beside "
                              "the run: give --model (a preset name or a config.json path)")
    return get_model(name)


def profile_field(profile: Path | None, key: str) -> str | None:
    """A text field of a profile's meta.yaml (`gpu`: the device it was measured on, `model`), if it says."""
    if profile is None or not (profile / "meta.yaml").is_file():
        return None
    import yaml
    try:
        meta = yaml.safe_load((profile / "meta.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{str(profile / 'meta.yaml')!r}: cannot be read ({str(e).splitlines()[0]})") from None
    return meta.get(key) if isinstance(meta, dict) and isinstance(meta.get(key), str) else None


def profile_device(profile: Path | None) -> str | None:
    """The device a profile was measured on (its meta.yaml's `gpu`), if it says."""
    return profile_field(profile, "gpu")


def check_model_agrees(spec, given: str | None, engine: Engine, profile: Path | None) -> None:
    """The model priced must have the shape of the model the run (meta.json's `model`) and its profile
    (meta.yaml's `model`) name, where they name a preset: a disagreement is refused, naming both."""
    from s3sim.hardware.models import get_model
    who = f"--model {given}" if given is not None else f"meta.json's model {engine.model!r} ({spec.name})"
    for named, where in ((engine.model, "meta.json's model"), (profile_field(profile, "model"),
                                                               f"the profile's meta.yaml ({profile}) model")):
        preset = preset_of_hf_name(named)
        if preset is None or (given is None and where == "meta.json's model"):
            continue
        ref = get_model(preset)
        diff = [f"{f} {getattr(spec, f)} vs {getattr(ref, f)}" for f in SPEC_FIELDS
                if getattr(spec, f) != getattr(ref, f)]
        if diff:
            raise ConfigError(f"{who} disagrees with {where} {named!r} ({spec.name} vs its preset {preset}: "
                              f"{'; '.join(diff)}): price the model the run served (leave --model out, or give its "
                              "config.json)")


def check_gpu_agrees(name: str | None, engine: Engine, profile: Path | None) -> None:
    """--gpu, meta.json's device and the profile's device must be one GPU where they name a preset: a
    disagreement is refused, naming both (`--profile none --fit-from` is the way to borrow another GPU's fit)."""
    named = ((engine.device_name, "meta.json's hardware.device_name"),
             (profile_device(profile), f"the profile's meta.yaml ({profile}) gpu"))
    known = [(preset_of_device(d), d, where) for d, where in named if preset_of_device(d)]
    for preset, device, where in known:
        if name is not None and preset != name:
            raise ConfigError(f"--gpu {name} disagrees with the run's GPU: {where} is {device!r} (preset {preset}); "
                              f"leave --gpu out, or price the run with {name}'s fitted efficiencies on its own GPU's "
                              f"datasheet: --profile none --fit-from {name}")
    if len(known) == 2 and known[0][0] != known[1][0]:
        (p0, d0, w0), (p1, d1, w1) = known
        raise ConfigError(f"{w0} is {d0!r} ({p0}) but {w1} is {d1!r} ({p1}): give a profile measured on the run's "
                          "GPU, or --profile none")
    (d0, w0), (d1, w1) = named
    if d0 and d1 and len(known) < 2 and " ".join(str(d0).lower().split()) != " ".join(str(d1).lower().split()):
        raise ConfigError(f"{w0} is {d0!r} but {w1} is {d1!r}: give a profile measured on the run's GPU, or "
                          "--profile none (with --gpu where the run's device has no preset)")


def resolve_gpu(name: str | None, engine: Engine, profile: Path | None, needed_for: str | None):
    """The GPU preset: --gpu, else the device meta.json (or the profile) names; (spec, how) or (None, None)
    when nothing needs one."""
    from s3sim.hardware.gpus import get_gpu
    if name is not None:
        return get_gpu(name), f"{name} (--gpu)"
    device, where = ((engine.device_name, "meta.json") if engine.device_name else  # the run's own word first
                     (profile_device(profile), "the profile's meta.yaml"))
    preset = preset_of_device(device)
    if preset:
        return get_gpu(preset), f"{preset} ({device!r} in {where})"
    if needed_for is None:
        return None, None
    from s3sim.hardware.gpus import GPU_PRESETS
    seen = device
    raise ConfigError(f"{needed_for} needs the GPU, and {'device ' + repr(seen) if seen else 'the run'} names no "
                      f"preset: give --gpu (one of {', '.join(sorted(GPU_PRESETS))})")


def weights_per_gpu(engine: Engine, model) -> int:
    """Weight bytes one GPU holds: 1/tp of the model; under expert parallelism every shared weight and
    1/dp of the experts."""
    if engine.expert_parallel:
        return (model.n_params - model.expert_params + model.expert_params // engine.dp) * model.dtype_bytes
    return model.weight_bytes // engine.tp


def derived_kv_blocks(engine: Engine, model, device_memory: int) -> int:
    """KV blocks by vLLM's memory accounting (see the module's docstring), per GPU of `engine.tp` (per rank)."""
    per_token = kv_bytes_per_token(engine, model)
    free = int(engine.gpu_memory_utilization * device_memory) - weights_per_gpu(engine, model) - NON_KV_RESERVE_BYTES
    return max(0, free // (engine.block_size * per_token))


def kv_bytes_per_token(engine: Engine, model) -> int:
    """KV bytes a token takes on one GPU of `engine.tp` (KV heads split, at least one each)."""
    return -(-model.kv_bytes_per_token * max(1, model.n_kv_heads // engine.tp) // model.n_kv_heads)


def check_kv_memory(engine: Engine, model, gpu, where: str) -> None:
    """Recorded KV blocks must fit beside the weights in the memory the run records (or its GPU preset's)."""
    if engine.num_gpu_blocks is None:
        return
    if engine.device_memory is not None:
        mem, how = engine.device_memory, "hardware.device_total_memory_bytes"
    elif gpu is not None:
        mem, how = gpu.memory_bytes, f"the {gpu.name} preset's memory_bytes"
    else:
        mem, how = None, ""
    if mem is None and engine.kv_cache_memory is None:
        return
    checks.check_kv_memory(engine.num_gpu_blocks, engine.block_size, kv_bytes_per_token(engine, model),
                           weights_per_gpu(engine, model), model.name, engine.gpu_memory_utilization, mem, how,
                           engine.kv_cache_memory, where)


def kv_capacity(engine: Engine, model, gpu) -> tuple[int, str]:
    """(KV blocks, how they were obtained)."""
    if engine.num_gpu_blocks is not None:
        return engine.num_gpu_blocks, f"from meta.json ({engine.blocks_from}={engine.num_gpu_blocks})"
    if engine.kv_cache_memory is not None:  # vLLM sizes the cache by it instead of by gpu_memory_utilization
        blocks = engine.kv_cache_memory // (engine.block_size * kv_bytes_per_token(engine, model))
        if blocks < 1:
            raise ConfigError(f"meta.json's kv_cache_memory_bytes={engine.kv_cache_memory:,} holds no KV block of "
                              f"{engine.block_size} tokens of model '{model.name}'")
        return blocks, (f"from meta.json's kv_cache_memory_bytes ({engine.kv_cache_memory:,} bytes per GPU) over "
                        f"{engine.block_size} tokens x {kv_bytes_per_token(engine, model):,} KV bytes a token")
    if engine.device_memory is not None:
        mem, mem_how = engine.device_memory, "meta.json's hardware.device_total_memory_bytes"
    else:
        mem, mem_how = gpu.memory_bytes, f"the {gpu.name} preset's memory_bytes"
    blocks = derived_kv_blocks(engine, model, mem)
    if blocks < 1:
        raise ConfigError(f"model '{model.name}' leaves no KV cache in {engine.gpu_memory_utilization} x {mem:,} bytes "
                          f"after weights {weights_per_gpu(engine, model):,} per GPU and the {RESERVE_NOTE}")
    how = (f"derived from vLLM's memory accounting: {engine.gpu_memory_utilization} x {mem:,} bytes ({mem_how}) - "
           f"weights {weights_per_gpu(engine, model):,}{' per GPU' if engine.dp > 1 else ''} - {RESERVE_NOTE}")
    return blocks, how


def build_latency(profile: Path | None, model, gpu, tp: int, fit_from=None, all_reduce: str = "auto"):
    """The run's operator profile, or the operator sum on the GPU's datasheet when there is none, with the
    efficiencies the GPU preset was fitted to, or those of `fit_from` (another preset: what a GPU never
    profiled would get); tp > 1 prices its all-reduces by `all_reduce` (`latency.all_reduce`'s values; auto:
    the GPU's measured table as the engine ran it where the preset names a step table to fit that to, else the
    measured table alone, else a ring); (model, description)."""
    from s3sim.hardware.network import NoAllReduce, all_gather_model, all_reduce_model
    from s3sim.latency.operators import engine_collectives, in_engine

    factor = engine_collectives(all_reduce, gpu, tp) if tp > 1 else False
    as_run = factor is not False
    if as_run:
        ring = in_engine(gpu, all_reduce_model("measured", gpu, tp), factor)
    else:
        ring = (all_reduce_model(all_reduce, gpu, tp) or NoAllReduce()) if tp > 1 else None
    if profile is None:
        from s3sim.latency import DatasheetLatency
        f = fit_from or gpu
        lat = DatasheetLatency(model, gpu, num_gpus=tp, all_reduce=ring, compute_efficiency=f.compute_efficiency,
                               memory_efficiency=f.memory_efficiency, launch_s=f.launch_s,
                               attention_prefill_efficiency=f.attention_prefill_efficiency,
                               attention_decode_efficiency=f.attention_decode_efficiency)
        whose = "" if fit_from is None else f" borrowed from {fit_from.name}"
        return lat, (f"operators on the {gpu.name} datasheet (no profile; efficiencies{whose} "
                     f"{lat.compute_efficiency:.3g} / {lat.memory_efficiency:.3g}, attention "
                     f"{lat.attention_prefill_efficiency:.3g} / {lat.attention_decode_efficiency:.3g}, launch "
                     f"{lat.launch_s * 1e6:.3g} us: {f.calibration}"
                     + (f"; tp{tp} all-reduces: {getattr(ring, 'source', '') or 'free (none)'}" if tp > 1 else "")
                     + ")")
    if tp > 1 and not (profile / f"tp{tp}").is_dir():
        raise ConfigError(f"profile {str(profile)!r} has no tp{tp}/ folder for tensor_parallel_size={tp}")
    from s3sim.latency.operators import OperatorLatency  # its tp<N> folder times one GPU's shard
    gather = all_gather_model(gpu, tp) if tp > 1 and not isinstance(ring, NoAllReduce) else None
    if as_run and gather is not None:
        gather = in_engine(gpu, gather, factor)
    lat = OperatorLatency.from_profile(profile, model, gpu, tp=tp, all_reduce=ring, gather=gather)
    how = (f"operator profile {profile} (tp{tp}" + (f", all-reduces: {ring.source}" if ring else "")
           + (f"; the logits' gathering: {gather.source}" if gather is not None else "")
           + (f", uneven decode contexts at the profile's measured alpha {lat.skew_alpha:g}" if lat.skew_alpha
              else ", decodes at their mean context (the profile measured no skew)") + ")")
    return lat, how


def profile_reach(latency, engine: Engine) -> str | None:
    """What the engine's limits ask of an operator profile beyond what it measured (its largest token count,
    prefill chunk and decode batch), said in words; None where everything is within it (or no profile)."""
    from s3sim.latency.operators import OperatorLatency
    if not isinstance(latency, OperatorLatency):
        return None
    over = []
    tokens, chunk, decodes = float(latency.dense.x[-1]), float(latency.attention.c[-1]), float(latency.attention.n[-1])
    if engine.max_num_batched_tokens > tokens:
        over.append(f"max_num_batched_tokens={engine.max_num_batched_tokens} is beyond the {tokens:,.0f} tokens its "
                    "dense operators were timed at")
    if engine.max_num_batched_tokens > chunk:
        over.append(f"a prefill chunk may exceed the {chunk:,.0f} tokens its attention was timed at")
    if engine.max_num_seqs > decodes:
        over.append(f"max_num_seqs={engine.max_num_seqs} is beyond the {decodes:,.0f} decodes its attention was "
                    "timed at")
    return "; ".join(over) or None


ALL_REDUCE_FORMS = "auto, engine, engine:<factor>, measured, ring, link:<GB/s>:<us>, none, or a CSV path"


def check_all_reduce_flag(spec: str) -> None:
    """`--all-reduce` read before anything else, on every run (a run without tensor parallelism uses none, and
    would otherwise pass a misspelt value over unread), by the parsers that price it."""
    from s3sim.hardware.network import link_all_reduce
    from s3sim.latency.operators import engine_factor
    where = f"--all-reduce {spec!r}"
    if spec in ("auto", "engine", "measured", "ring", "none"):
        return
    if spec.startswith("engine:"):
        try:
            engine_factor(spec)
        except ConfigError:
            raise ConfigError(f"{where}: the factor must be a number > 0, e.g. engine:2.31; valid: "
                              f"{ALL_REDUCE_FORMS}") from None
        return
    if spec.startswith("link:"):
        try:
            link_all_reduce(spec)
        except ConfigError:
            raise ConfigError(f"{where}: expected link:<GB/s, > 0>:<us, >= 0>, e.g. link:16:20") from None
        return
    if not Path(spec).is_file():
        raise ConfigError(f"{where}: no such file, nor one of {ALL_REDUCE_FORMS}")


def data_parallel_latency(latency, engine: Engine, model, gpu, all_reduce: str = "auto"):
    """The step of `engine.dp` MoE ranks in lockstep (`s3sim.latency.data_parallel`); (model, description)."""
    from s3sim.hardware.network import all_gather_model
    from s3sim.latency.data_parallel import DataParallelLatency
    from s3sim.latency.operators import OperatorLatency, engine_collectives, in_engine
    if not isinstance(latency, OperatorLatency):
        raise ConfigError("data-parallel MoE ranks are priced from an operator profile with a moe.csv "
                          "(not --profile none or --step-calibration)")
    gather = all_gather_model(gpu, engine.dp) if engine.expert_parallel else None
    factor = engine_collectives(all_reduce, gpu, engine.dp) if gather is not None else False
    if factor is not False:
        gather = in_engine(gpu, gather, factor)
    graphs = engine.graph_tokens
    if graphs is None:
        graphs, padded = min(2 * engine.max_num_seqs, 512), "vLLM's largest CUDA graph by default"
    else:
        padded = f"the largest CUDA graph ({engine.graphs_from})"
    padding = (f"up to {graphs} tokens, {padded}, every rank padded to the largest rank's" if graphs else
               f"no CUDA graphs ({engine.graphs_from}), so no rank padded")
    how = (f"{engine.dp} data-parallel ranks step together (the slowest rank's batch, an idle rank a dummy token; "
           f"{padding})"
           + (f"; experts split over them, every MoE layer exchanging the batch's hidden states twice ({gather.source})"
              if engine.expert_parallel else "; every rank holds every expert"))
    return DataParallelLatency(latency, engine.dp, engine.expert_parallel, gather, how, graph_tokens=graphs), how


def calibrate_steps(latency, how: str, profile: Path | None, tp: int, graph_tokens: int | None = None):
    """The operator model priced as whole steps (`s3sim.latency.steps`): `own` fits the profile's
    `tp<N>/step.csv`, anything else names a step table; (model, description). `graph_tokens`: the run's
    largest CUDA-graph batch where meta.json says it (0: none, every step eager), else the table's."""
    from s3sim.latency.operators import OperatorLatency
    from s3sim.latency.steps import StepCalibrated, fit_table
    if not isinstance(latency, OperatorLatency):
        raise ConfigError("--step-calibration prices an operator profile's sum as whole steps: it needs a profile "
                          "(not --profile none)")
    path = profile / f"tp{tp}" / "step.csv" if how == "own" else Path(how)
    if how == "own" and not path.is_file():
        raise ConfigError(f"--step-calibration own: the profile has no {path} (give a step table, or none)")
    fit, _ = fit_table(latency, path)
    modes = ", ".join(f"{b} {fit.scale[b]:.3g} x + {fit.offset_s[b] * 1e3:.3g} ms" for b in fit.scale)
    how = f"whole steps fitted to {path} ({modes})"
    if graph_tokens is not None and graph_tokens != fit.graph_tokens:
        from dataclasses import replace
        fit = replace(fit, graph_tokens=graph_tokens)
        how += f"; graph modes up to {graph_tokens} tokens, as the run had them"
    return StepCalibrated(latency, fit), how


# ---- the timeline ----------------------------------------------------------------------------------------
def timeline(real: pd.DataFrame, frames: list, capacity_tokens: int, sim_end: float) -> pd.DataFrame:
    """Running, waiting and KV use (%) at the run's 1-second ticks, real against simulated. Simulated values
    are those of the iteration in progress at the tick (none: the engine is idle, all zero), summed over the
    engines (`frames`: each one's iteration log; independent data-parallel ranks are several); its running
    count is the iteration's batch (decodes + prefill chunks), the run's counts partial prefills too."""
    t = real.t.to_numpy(dtype=float)
    tick = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    last = t[-1] if len(t) else 0.0
    if sim_end > last:  # the replay ran longer: extend the ticks over it
        extra = last + tick * np.arange(1, int(math.ceil((sim_end - last) / tick)) + 2)
        t = np.concatenate([t, extra])
    def sample_one(frame, col):
        if not len(frame):
            return np.zeros(len(t))
        start = frame.start.to_numpy(dtype=float)
        end = start + frame.duration.to_numpy(dtype=float)
        i = np.searchsorted(start, t, side="right") - 1
        j = np.maximum(i, 0)
        return np.where((i >= 0) & (t < end[j]), frame[col].to_numpy(dtype=float)[j], 0.0)

    def sample(col):
        return sum((sample_one(f, col) for f in frames), np.zeros(len(t)))

    n = len(real)
    pad = lambda col: np.concatenate([real[col].to_numpy(dtype=float), np.full(len(t) - n, np.nan)])  # noqa: E731
    return pd.DataFrame({
        "t": t,
        "real_running": pad("running"), "sim_running": sample("batch_size"),
        "real_waiting": pad("waiting"), "sim_waiting": sample("waiting"),
        "real_kv_pct": pad("kv_cache_pct"), "sim_kv_pct": 100.0 * sample("kv_reserved") / capacity_tokens,
    })


def draw_timeline(data: pd.DataFrame, title: str = ""):
    """`data`: timeline_data.csv (t, real_/sim_ running, waiting, kv_pct)."""
    from s3sim.plots import pyplot
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for ax, (key, label) in zip(axes, (("running", "running"), ("waiting", "waiting"), ("kv_pct", "KV use (%)"))):
        ax.plot(data.t, data[f"real_{key}"], color="k", lw=1.2, label="real (vLLM)")
        ax.plot(data.t, data[f"sim_{key}"], color="C1", lw=1.0, label="simulated")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel("time since the first request was queued (s)")
    if title:
        axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---- the whole replay ------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return "nan" if v != v else f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3f}"


def format_table(table: pd.DataFrame) -> str:
    """The comparison as printed, each row with the error its sensitivity gives were every step 1 % slower."""
    lines = [f"{'metric':<22}{'real':>14}{'simulated':>14}{'error_pct':>11}{'error if steps +1 %':>21}"]
    for m, r, s, e, d in table[[*COLUMNS, SENSITIVITY_COLUMN]].itertuples(index=False):
        lines.append(f"{m:<22}{_fmt(r):>14}{_fmt(s):>14}{e:>+10.1f}%{e + d:>+20.1f}%")
    return "\n".join(lines)


# the README's targets for a replay: the means and medians of TTFT, TPOT and end-to-end latency and the throughputs
# within 5 %, their p99s within 10 % (the p90/p95 rows and the queue/prefill split are reported, not targeted)
TARGETS = ((5.0, tuple(f"{m}_{s}_ms" for m in ("ttft", "tpot", "e2e_latency") for s in ("mean", "p50"))
            + ("request_throughput", "output_throughput")),
           (10.0, tuple(f"{m}_p99_ms" for m in ("ttft", "tpot", "e2e_latency"))))


def target_misses(table: pd.DataFrame) -> dict[str, float]:
    """The target rows of a validation table outside their bound: metric -> its error (%)."""
    errors = table.set_index("metric").error_pct
    return {m: float(errors[m]) for bound, rows in TARGETS for m in rows if not abs(errors[m]) <= bound}


def target_line(table: pd.DataFrame, profiled: bool = True) -> str:
    """The verdict on the targets, naming the rows they cover: TTFT, TPOT and end-to-end latency (means and
    medians, p99s) and the throughputs; the queue/prefill split and the p90/p95 rows are reported, not
    targeted. A replay without an operator profile gets no verdict (its band is the datasheet replays')."""
    misses = target_misses(table)
    (central, _), (tail, _) = TARGETS
    head = (f"targets (TTFT, TPOT and end-to-end latency: means and medians within {central:g} %, p99s within "
            f"{tail:g} %; throughputs within {central:g} %; the queue/prefill split and the p90/p95 rows are not "
            "targeted): ")
    if not profiled:
        return head + "not applied (no operator profile: see the note above)"
    return head + ("met" if not misses else "missed by " + ", ".join(f"{m} {e:+.1f} %" for m, e in misses.items()))


SENSITIVITY_PCT = 1.0  # validation.csv's last numeric column: every step this much slower, replayed again
SENSITIVITY_COLUMN = "sensitivity"  # points of error_pct per 1 % slower steps
SMALL_MS = 1.0  # a time below this (far below any engine step) makes its percentage error say little


def small_times_note(table: pd.DataFrame) -> str:
    """The times whose real value is under a millisecond, where a percentage of it means little."""
    small = [f"{m} ({_fmt(r)} real, {_fmt(s)} simulated)" for m, r, s in
             table[["metric", "real", "simulated"]].itertuples(index=False) if m.endswith("_ms") and abs(r) < SMALL_MS]
    return ("" if not small else f"note: {', '.join(small)} under {SMALL_MS:g} ms, far below one engine step: "
            "their percentage errors say little")


def validate(run_dir, out, profile: str | None = None, model: str | None = None, gpu: str | None = None,
             echo=print, fit_from: str | None = None, all_reduce: str = "auto",
             step_calibration: str = "none", async_scheduling: str = "auto",
             vllm_entry: str | None = None) -> pd.DataFrame:
    """Replay the run in `run_dir`, write the results into `out` and return the validation table.
    `profile`: a profile folder, "none", or None for the run's own (`../profile`) when it has one.
    `fit_from`: with no profile, price with this GPU preset's fitted efficiencies instead of the run GPU's.
    `vllm_entry`: offline or server, for vLLM's default limits where meta.json records none (`engine_limits`)."""
    from s3sim.config import build_scheduler
    from s3sim.core.request import make_requests
    from s3sim.simulator.engine import simulate

    out = checks.check_out(out)
    run = read_run(run_dir)
    engine = engine_settings(run.meta, str(run.dir / META))
    own = run.dir.parent / "profile"
    own = own if own.is_dir() else None
    if profile is None:
        prof = own
    elif str(profile).lower() == "none":
        prof = None
    else:
        prof = Path(profile)
        if not prof.is_dir():
            raise ConfigError(f"--profile {str(prof)!r}: no such folder (or 'none' for the datasheet operator model)")
    if fit_from is not None and prof is not None:
        raise ConfigError("--fit-from prices the datasheet model, which runs without a profile: add --profile none")
    check_all_reduce_flag(all_reduce)
    from s3sim.hardware.gpus import get_gpu
    borrowed = None if fit_from is None or fit_from == "others" else get_gpu(fit_from)
    spec = resolve_model(model, engine, run.dir.parent / "config.json")
    if engine.tp > 1 and (spec.n_heads % engine.tp or spec.n_kv_heads % engine.tp and engine.tp % spec.n_kv_heads):
        raise ConfigError(f"{str(run.dir / META)!r}: engine_kwargs.tensor_parallel_size={engine.tp} does not divide "
                          f"{spec.name}'s {spec.n_heads} attention heads and {spec.n_kv_heads} KV heads as vLLM "
                          "requires")
    check_model_agrees(spec, model, engine, prof or own)
    if engine.dp > 1 and engine.tp > 1 and spec.n_experts:
        raise ConfigError(f"{str(run.dir / META)!r}: data_parallel_size={engine.dp} with tensor_parallel_size="
                          f"{engine.tp} of a mixture of experts is not modelled (its data-parallel ranks of one GPU "
                          "each only)")
    needs = ("vLLM's default max_num_seqs and max_num_batched_tokens" if None in (engine.max_num_seqs,
                                                                                 engine.max_num_batched_tokens) else
             "the datasheet latency (no profile)" if prof is None else
             "deriving the KV capacity" if engine.num_gpu_blocks is None and engine.device_memory is None else
             "pricing tensor parallelism's all-reduces" if engine.tp > 1 and all_reduce != "none" else None)
    # a profile names the device it ran on; with --profile none, the one beside the run only where meta.json names none
    named_by = prof if prof is not None else (own if engine.device_name is None else None)
    gpu_spec, gpu_how = resolve_gpu(gpu, engine, named_by, needs)
    check_gpu_agrees(gpu, engine, named_by)
    limits_how = engine_limits(engine, gpu_spec, vllm_entry, str(run.dir / META))
    peer_path = next((p for p in (run.dir / PEER, run.dir.parent / PEER) if p.is_file()), None)
    peer = read_peer(peer_path) if peer_path is not None else None
    check_kv_memory(engine, spec, gpu_spec, repr(str(run.dir / META)))
    blocks, kv_how = kv_capacity(engine, spec, gpu_spec)
    capacity = blocks * engine.block_size
    if fit_from == "others":  # leave the run's GPU out: what it would get had it never been profiled
        from s3sim.hardware.gpus import leave_one_out_fit
        borrowed = leave_one_out_fit(gpu_spec)
    try:  # the collectives' errors name the flag that chose them (s3sim's own key is latency.all_reduce)
        latency, lat_how = build_latency(prof, spec, gpu_spec, engine.tp, borrowed, all_reduce)
        if step_calibration != "none":
            latency, step_how = calibrate_steps(latency, step_calibration, prof, engine.tp, engine.graph_tokens)
            lat_how += f"; {step_how}"
        beyond = profile_reach(latency, engine)
        dense_ranks = engine.dp > 1 and not spec.n_experts  # independent engines behind vLLM's load balancer
        if engine.dp > 1 and not dense_ranks:
            latency, dp_how = data_parallel_latency(latency, engine, spec, gpu_spec, all_reduce)
            lat_how += f"; {dp_how}"
    except ConfigError as e:
        raise ConfigError(str(e).replace("latency.all_reduce", "--all-reduce")) from None
    if beyond:
        echo(f"note: {beyond}: priced along the profile's last measured segment (extrapolated)")

    req = run.requests
    limit, field = checks.max_model_len(run.meta)
    checks.check_context(req, *((limit, f"meta.json's {field}") if limit is not None else
                                (spec.max_context, f"the model's context ({spec.name}: max_context, meta.json "
                                                   "records no max_model_len)")), run.dir / REQUESTS)
    too_big = np.flatnonzero(-(-(req.input_toks + req.output_toks) // engine.block_size) > blocks)
    if len(too_big):
        k = int(too_big[0])
        raise ConfigError(f"{str(run.dir / REQUESTS)!r} line {req.line[k]}: {req.input_toks[k]} + "
                          f"{req.output_toks[k]} tokens do not fit in the KV cache of {capacity:,} tokens")

    echo(f"run: {run.dir} ({len(req)} requests); model {spec.name}"
         + (f" (read from {spec.source}: meta.json's {engine.model!r} has no preset)"
            if model is None and preset_of_hf_name(engine.model) is None else "")
         + (f"; gpu {gpu_how}" if gpu_how else "") + f"; tp{engine.tp}"
         + (f"; data parallel {engine.dp}" + (" with expert parallelism" if engine.expert_parallel else "")
            if engine.dp > 1 else ""))
    if limits_how:
        echo(limits_how)
    echo(f"KV capacity: {capacity:,} tokens ({blocks:,} blocks x {engine.block_size}), {kv_how}"
         + (f"; on each of the {engine.dp} ranks" if engine.dp > 1 else ""))
    how = "as recorded" if engine.prefix_caching_recorded else "vLLM V1's default (the run does not record it)"
    echo(f"prefix caching: {'on' if engine.prefix_caching else 'off'}, {how}"
         + ("; modelled for preempted requests' own blocks (prompts are not shared between requests here)"
            if engine.prefix_caching else ""))
    asynchronous = {"auto": engine.async_scheduling, "on": True, "off": False}.get(async_scheduling)
    if asynchronous is None:
        raise ConfigError(f"--async-scheduling must be auto, on or off, got {async_scheduling!r}")
    how = ("--async-scheduling" if async_scheduling != "auto" else "as recorded" if engine.async_recorded
           else "vLLM V1's default (the run does not record it)" + other_version_note(run.meta))
    echo(f"asynchronous scheduling: {'on' if asynchronous else 'off'}, {how}"
         + ("; an arrival joins the step after next, its scheduled_ts is its step's scheduling" if asynchronous
            else ""))
    echo(f"latency: {lat_how}")
    if engine.graph_tokens == 0:
        echo(f"note: the run ran without CUDA graphs ({engine.graphs_from}): the replay prices its steps by the "
             "operator profile, timed without graphs too (with --step-calibration: every step in its eager mode), "
             "and pads no data-parallel rank to a graph's size")
    unread = unread_engine_kwargs(run.meta)
    if unread:
        echo(f"note: meta.json's engine_kwargs sets {', '.join(unread)}, which the replay does not model: its "
             "effect, if any, is in the errors")
    if prof is None:
        echo("note: no operator profile: priced from the GPU's datasheet and efficiencies fitted to operators (the "
             "line above says whose): read its errors against the band the README's 'How well it generalises' "
             "measures for datasheet replays, not against a profiled replay's targets")
    if borrowed is not None and borrowed.name != gpu_spec.name:
        echo(f"note: cross-GPU pricing: the run's {gpu_spec.name} datasheet with {borrowed.name}'s fitted "
             f"efficiencies (--fit-from), as a GPU never profiled would be priced; not the run GPU's own fit")

    arrivals = (req.queued_ts - req.queued_ts.min()).to_numpy(dtype=float)
    max_seq_len = int(req.output_toks.max())  # bounds outputs only: vllm reserves nothing by it
    policy = {"name": "vllm", "block_size": engine.block_size, "max_batch_size": engine.max_num_seqs,
              "max_num_batched_tokens": engine.max_num_batched_tokens, "prefix_caching": engine.prefix_caching}
    conf = {"max_seq_len": max_seq_len, "policy": policy}

    def replay(lat):
        """(result, the runs of its engines) of one replay of the run's requests priced by `lat`."""
        requests = make_requests(req.input_toks.to_numpy(), req.output_toks.to_numpy(), arrivals)
        ranks = [build_scheduler(conf, capacity, req.output_toks.to_numpy()) for _ in range(engine.dp)]
        if dense_ranks:
            from s3sim.cluster.routers import VllmDataParallel
            from s3sim.simulator.engine import simulate_cluster
            result = simulate_cluster(requests, [(s, lat, capacity) for s in ranks], VllmDataParallel(),
                                      async_scheduling=asynchronous)
            return result, result.replicas
        from s3sim.core.data_parallel import DataParallelScheduler
        result = simulate(requests, DataParallelScheduler(ranks) if engine.dp > 1 else ranks[0], lat,
                          async_scheduling=asynchronous)
        return result, [result]

    def metrics(records) -> dict:
        """The replay's metrics from its records (`replay_records`), TTFT split where the run records it."""
        sim = simulated_metrics(records)
        if "scheduled_ts" in req.columns:
            sim.update(split_metrics(records.queued, records.admitted, records.first_token))
        return sim

    if dense_ranks:
        echo(f"data parallel: {engine.dp} ranks of a dense model, independent engines (each its own KV cache, "
             "max_num_seqs, token budget and steps); a request goes to the rank with the lowest 4 x waiting + running")
    elif engine.dp > 1:  # one scheduler per rank behind vLLM's load balancer, stepping together
        echo(f"data parallel: {engine.dp} ranks, each with its own KV cache, max_num_seqs and token budget; a request "
             "goes to the rank with the lowest 4 x waiting + running; the ranks step together")
    real = real_metrics(req)
    mismatch = peer_mismatch(peer, real) if peer is not None else None
    if mismatch:  # a table about another run (a trimmed copy of a run, another run's file): left out, said so
        echo(f"note: {peer_path} is not about this run ({mismatch}): peer.csv is not written")
        peer = None
    clear_outputs(out)  # the inputs are good: an earlier run's results go, so a failed replay leaves none
    t0 = time.perf_counter()
    result, runs = replay(latency)
    wall = time.perf_counter() - t0

    records = replay_records(result.requests)
    sim = metrics(records)
    if "scheduled_ts" in req.columns:  # the run says when each request was first scheduled: TTFT's split
        real.update(split_metrics(req.queued_ts, req.scheduled_ts, req.first_token_ts))
    else:
        lacking = req.attrs.get("lacking", {}).get("scheduled_ts", len(req))
        echo("note: " + ("no row of requests.jsonl records scheduled_ts" if lacking == len(req) else
                         f"{lacking} of the {len(req)} rows of requests.jsonl lack scheduled_ts")
             + ": TTFT is not split into queueing and prefill")
    table = comparison(real, sim)
    # how far each error moves were every step SENSITIVITY_PCT % slower: a second replay
    from s3sim.latency.scaled import ScaledLatency
    slower = comparison(real, metrics(replay_records(
        replay(ScaledLatency(latency, 1 + SENSITIVITY_PCT / 100))[0].requests)))
    table[SENSITIVITY_COLUMN] = (slower.error_pct - table.error_pct) / SENSITIVITY_PCT
    table["kv_capacity_source"] = engine.kv_capacity_source
    frames = [r.log.frame() for r in runs]
    data = timeline(run.timeseries, frames, capacity * engine.dp, float(records.last_token.max()))

    echo(format_table(table))
    echo(target_line(table, profiled=prof is not None))
    if run.timeseries.empty:
        echo(f"note: {TIMESERIES + ' holds no rows' if run.has_timeseries else 'the run has no ' + TIMESERIES}: the "
             "real curves of timeline.png stay blank (validation.csv does not use it)")
    small = small_times_note(table)
    if small:
        echo(small)
    counts = {k: sum(r.scheduler.counters()[k] for r in runs) for k in ("preemptions", "prefill_preemptions",
                                                                          "cached_tokens")}
    iterations, steps = sum(len(f) for f in frames), sum(r.engine_steps for r in runs)
    echo(f"replay: {wall:.2f} s wall, {iterations:,} simulated iterations ({steps:,} engine steps), "
         f"{int(counts['preemptions'])} preemptions ({int(counts['prefill_preemptions'])} of them part-way through a prefill), "
         f"{int(counts['cached_tokens']):,} recomputed tokens found in the prefix cache")

    from s3sim.plots import save
    from s3sim.writers import write_csv
    kind = f"operator profile, tp{engine.tp}" if prof is not None else f"operators on the {gpu_spec.name} datasheet"
    with staged_outputs(out) as stage:
        save(draw_timeline(data, f"{run.name}: vLLM against the replay ({kind})"), data, stage, "timeline")
        if peer is not None:
            write_csv(peer, stage / "peer.csv")
            echo(f"peer: {len(peer)} rows of {peer_path} -> {out / 'peer.csv'}")
        elif not mismatch:
            echo(f"peer: no peer table ({PEER}) beside the run")
        write_csv(table, stage / "validation.csv")  # moved in last: its presence marks a finished validation
    echo(f"results: {out}")
    return table


def clear_outputs(out: Path) -> None:
    """Remove what an earlier run wrote into `out` (`OUTPUTS`, validation.csv first), nothing else."""
    for name in OUTPUTS:
        path = out / name
        if path.is_file() or path.is_symlink():
            path.unlink()


@contextmanager
def staged_outputs(out: Path):
    """A temporary folder inside `out` to write the results into; on success its files move into `out`,
    validation.csv last; on failure it goes, and `out` holds no result of this run."""
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".s3sim-validate-"))
    try:
        yield stage
        unknown = [p.name for p in stage.iterdir() if p.name not in OUTPUTS]
        if unknown:
            raise InvariantViolation(f"outputs not in OUTPUTS: {unknown}")
        for name in sorted(OUTPUTS, key=lambda n: n == "validation.csv"):
            if (stage / name).is_file():
                os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + error
        raise ConfigError(message)


def main(argv=None) -> int:
    p = _Parser(prog=PROG, description="Replay a real vLLM run in the simulator and compare the metrics.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder with meta.json, requests.jsonl and, where recorded, "
                   "timeseries.csv (or the folder with run/ inside)")
    p.add_argument("--out", required=True, metavar="DIR", help="where validation.csv and the rest go")
    p.add_argument("--profile", metavar="PROFILE_DIR", help="operator profile folder, or 'none' for the datasheet operator model "
                   "(default: RUN_DIR/../profile if it exists)")
    p.add_argument("--model", metavar="PRESET_OR_CONFIG_JSON", help="model preset or config.json (default: from "
                   "meta.json's model)")
    p.add_argument("--gpu", metavar="PRESET", help="GPU preset (default: from meta.json's or the profile's device)")
    p.add_argument("--fit-from", metavar="PRESET", help="with --profile none: the efficiencies fitted to another "
                   "GPU preset (what a GPU never profiled gets), not the run GPU's own; 'others': the mean of every "
                   "other GPU measured")
    p.add_argument("--all-reduce", default="auto", metavar="HOW", help="the collectives between the GPUs (tensor "
                   "parallelism's all-reduces; the logits' and expert parallelism's all-gathers follow): auto (engine "
                   "where the GPU preset names a step table, else the preset's measured table, else a ring; default), "
                   "engine (the measured table as the engine ran it: its floor plus the bytes at its bandwidth over "
                   "a factor fitted to whole steps), engine:<factor> (a factor given), measured (the table alone), "
                   "ring, link:<GB/s>:<us>, none, or a measured CSV")
    p.add_argument("--step-calibration", default="none", metavar="HOW", help="price each iteration as a whole "
                   "step fitted to a step table (s3sim.latency.steps): none (default), own (the profile's "
                   "tp<N>/step.csv), or a step.csv path")
    p.add_argument("--async-scheduling", default="auto", choices=("auto", "on", "off"), help="schedule each step "
                   "while the one before runs, as vLLM V1 does: auto (as meta.json records it, else on, vLLM's "
                   "default), on, off")
    p.add_argument("--vllm-entry", choices=VLLM_ENTRIES, help="only for a run whose meta.json records no "
                   "max_num_seqs or max_num_batched_tokens: how vLLM was started (offline: the LLM class; server: "
                   "vllm serve), whose defaults for the run's GPU fill them in")

    def replay():
        args = p.parse_args(sys.argv[1:] if argv is None else argv)
        validate(args.run_dir, args.out, args.profile, args.model, args.gpu, fit_from=args.fit_from,
                 all_reduce=args.all_reduce, step_calibration=args.step_calibration,
                 async_scheduling=args.async_scheduling, vllm_entry=args.vllm_entry)

    return exit_code(PROG, replay)


if __name__ == "__main__":
    sys.exit(main())
