"""What `s3sim-validate` checks before a replay beyond each file's format: that a recorded run's files agree
with each other and with physics, and that its output folder can be written, outside the run and its profile.

Each check raises one `ConfigError` line naming the file, the field or line, and what would be valid:
- meta.json against itself: `kv_cache.num_kv_tokens = num_gpu_blocks x block_size`; the `kv_cache` and
  `engine_kwargs` values against the same settings in `resolved_config` (what vLLM resolved them to);
  `finished_at` after `started_at`; no more GPUs (tensor x data parallel) than `hardware.device_count`.
- requests.jsonl against meta.json: one row per request (`num_requests` of them, every `request_id` once, no
  row twice); timestamps in seconds (the requests span no longer than the run's recorded duration, arrivals
  within it, `arrival_time` and `queued_ts` spacing requests alike); a first token after its request was
  queued, and several tokens over some time (a run whose tokens come at one instant has no latency to compare).
- the KV cache meta.json records against the device memory it records (`check_kv_memory`), and every request
  within `max_model_len` (`check_context`).
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.core.errors import ConfigError

# (kv_cache field, resolved_config.cache_config field), and engine_kwargs fields against resolved_config's
KV_RESOLVED = ("block_size", "num_gpu_blocks", "enable_prefix_caching", "gpu_memory_utilization")
ENGINE_RESOLVED = (("max_num_seqs", "scheduler_config"), ("max_num_batched_tokens", "scheduler_config"),
                   ("tensor_parallel_size", "parallel_config"), ("data_parallel_size", "parallel_config"),
                   ("enable_expert_parallel", "parallel_config"), ("max_model_len", "model_config"),
                   ("async_scheduling", "scheduler_config"), ("enforce_eager", "model_config"))
# engine_kwargs fields that say what the `kv_cache` section says (vLLM's engine arguments of the same names)
KV_ENGINE = ("block_size", "gpu_memory_utilization", "enable_prefix_caching", "kv_cache_memory_bytes")
SPAN_SLACK = (1.1, 10.0)  # the requests may span at most 1.1 x the recorded duration + 10 s (clock offsets)
ARRIVAL_SLACK_S = 60.0  # arrival_time may lie this far outside started_at..finished_at
SPACING_SLACK = (2.0, 5.0)  # queued_ts and arrival_time spans may differ by at most 2x, or 5 s


def _q(path) -> str:
    return repr(str(path))


# ---- the output folder -----------------------------------------------------------------------------------
def check_out(out) -> Path:
    """The output folder, refused unless it is a folder or can become one (nothing in its path is a file)."""
    if out is None or not str(out).strip():
        raise ConfigError("--out is empty: name the folder the results go to (new, or holding earlier results)")
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--out {_q(p)} is a file, not a folder: name a folder (new, or holding earlier results)")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {_q(p)}: {_q(parent)} is a file, so no folder can be made there")
            break
    return p


def check_out_apart(out: Path, inputs: dict) -> None:
    """The output folder outside every input folder (`inputs`: what each is, its path or None): a replay's
    results go beside a recording and its profile, never into them."""
    where = out.resolve()
    for what, folder in inputs.items():
        if folder is not None and where.is_relative_to(Path(folder).resolve()):
            raise ConfigError(f"--out {_q(out)} is inside the {what} {_q(folder)}: a replay's results go beside "
                              "the recording and its profile, not into them; name a folder outside it")


# ---- meta.json against itself ----------------------------------------------------------------------------
def _timestamp(meta: dict, key: str, where: str) -> float | None:
    value = meta.get(key)
    if value is None:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ConfigError(f"{where}: {key} must be an ISO 8601 time (2026-04-25T18:47:18Z), got {value!r}") from None


def recorded_duration(meta: dict, where: str) -> tuple[float, float] | None:
    """(started_at, finished_at) as epoch seconds when meta.json records both."""
    start, end = _timestamp(meta, "started_at", where), _timestamp(meta, "finished_at", where)
    if start is None or end is None:
        return None
    if not end > start:
        raise ConfigError(f"{where}: finished_at ({meta['finished_at']}) must be after started_at "
                          f"({meta['started_at']})")
    return start, end


def _same(a, b) -> bool:
    """Two recordings of one value agree (NaN with NaN too: what it is not is said where the value is read)."""
    return a == b or (a != a and b != b)


def check_meta(meta: dict, where: str) -> None:
    """meta.json's values that say the same thing twice must agree."""
    kv = meta.get("kv_cache") or {}
    ek = meta["engine_kwargs"]
    blocks, size, tokens = kv.get("num_gpu_blocks"), kv.get("block_size"), kv.get("num_kv_tokens")
    for f, v in (("num_gpu_blocks", blocks), ("block_size", size), ("num_kv_tokens", tokens)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{where}: kv_cache.{f} must be a positive integer or null, got {v!r}")
    if None not in (blocks, size, tokens) and tokens != blocks * size:
        raise ConfigError(f"{where}: kv_cache.num_kv_tokens={tokens!r} must be num_gpu_blocks x block_size = "
                          f"{blocks!r} x {size!r} = {blocks * size!r} (one of the three is wrong)")
    cache = resolved_section(meta, "cache_config")
    for f in KV_RESOLVED:
        if kv.get(f) is not None and cache.get(f) is not None and not _same(kv[f], cache[f]):
            raise ConfigError(f"{where}: kv_cache.{f}={kv[f]!r} but resolved_config.cache_config.{f}="
                              f"{cache[f]!r}: the two must agree")
    for f, section in ENGINE_RESOLVED:
        conf = resolved_section(meta, section)
        if ek.get(f) is not None and conf.get(f) is not None and not _same(ek[f], conf[f]):
            raise ConfigError(f"{where}: engine_kwargs.{f}={ek[f]!r} but resolved_config.{section}.{f}="
                              f"{conf[f]!r}: the two must agree")
    for f in KV_ENGINE:  # vLLM's engine argument of the kv_cache section's name says it a second or third time
        for other, name in ((kv, "kv_cache"), (cache, "resolved_config.cache_config")):
            if other.get(f) is not None and ek.get(f) is not None and not _same(other[f], ek[f]):
                raise ConfigError(f"{where}: {name}.{f}={other[f]!r} but engine_kwargs.{f}={ek[f]!r}: the two must "
                                  "agree")
    n = meta.get("num_requests")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"{where}: num_requests must be a positive integer (the requests the run recorded), "
                          f"got {n!r}")
    recorded_duration(meta, where)
    count = (meta.get("hardware") or {}).get("device_count")
    (tp, tp_from), (dp, dp_from) = (engine_value(meta, "parallel_config", f)
                                    for f in ("tensor_parallel_size", "data_parallel_size"))
    tp, dp = 1 if tp is None else tp, 1 if dp is None else dp
    if (isinstance(count, int) and not isinstance(count, bool) and isinstance(tp, int) and isinstance(dp, int)
            and count < tp * dp):
        raise ConfigError(f"{where}: {tp_from}={tp} x {dp_from}={dp} needs {tp * dp} GPUs but "
                          f"hardware.device_count={count}: the device count must be at least their product")


def engine_value(meta: dict, section: str, field: str) -> tuple:
    """(an engine setting, the meta.json field it came from): `engine_kwargs` first, then where vLLM recorded
    what it resolved it to (`resolved_config.<section>`); (None, the engine_kwargs field) where neither has it.
    The checks and the replay (`s3sim.validation.engine.engine_settings`) read a setting the same way."""
    return first_given((meta["engine_kwargs"].get(field), f"engine_kwargs.{field}"),
                       (resolved_section(meta, section).get(field), f"resolved_config.{section}.{field}"))


def resolved_section(meta: dict, name: str) -> dict:
    """`resolved_config.<name>` (what vLLM resolved those settings to), {} where the run records none."""
    resolved = meta.get("resolved_config")
    section = resolved.get(name) if isinstance(resolved, dict) else None
    return section if isinstance(section, dict) else {}


def first_given(*candidates: tuple) -> tuple:
    """The first (value, meta.json field) of `candidates` whose value is set (not None); where none is, (None, the
    first field), the one a run would be asked to give."""
    for value, name in candidates:
        if value is not None:
            return value, name
    return None, candidates[0][1]


def max_model_len(meta: dict) -> tuple[int | None, str]:
    """(the longest request vLLM serves, the meta.json field that says so), (None, '') if it records none."""
    for value, field in ((meta["engine_kwargs"].get("max_model_len"), "engine_kwargs.max_model_len"),
                         (resolved_section(meta, "model_config").get("max_model_len"),
                          "resolved_config.model_config.max_model_len")):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"meta.json: {field} must be a positive integer or null, got {value!r}")
            return value, field
    return None, ""


# ---- requests.jsonl ---------------------------------------------------------------------------------------
def check_request_row(row: dict, where: str) -> None:
    """One request's times: its first token after it was queued, several tokens over some time."""
    if not row["first_token_ts"] > row["queued_ts"]:
        raise ConfigError(f"{where}: first_token_ts ({row['first_token_ts']}) must be later than queued_ts "
                          f"({row['queued_ts']}): a first token takes a prefill")
    if row["output_toks"] > 1 and not row["last_token_ts"] > row["first_token_ts"]:
        raise ConfigError(f"{where}: {int(row['output_toks'])} output tokens at one instant (last_token_ts = "
                          f"first_token_ts = {row['first_token_ts']}): last_token_ts must be later when "
                          "output_toks > 1")


def check_requests(req: pd.DataFrame, meta: dict, path: Path, meta_where: str) -> None:
    """requests.jsonl (`req`: its rows, with their `line` and, where recorded, `request_id` and `arrival_time`)
    against itself and meta.json."""
    where = _q(path)
    if "request_id" in req:
        ids = req.request_id.astype(str)
        first = ids.drop_duplicates()
        dup = ids[ids.duplicated()]
        if len(dup):
            k = dup.index[0]
            j = first.index[first == ids[k]][0]
            raise ConfigError(f"{where} line {req.line[k]}: request_id {ids[k]!r} repeats line {req.line[j]} "
                              f"({int(ids.duplicated(keep=False).sum())} rows share an id): every request once, "
                              "ids unique")
    values = req.drop(columns=[c for c in ("line", "request_id") if c in req])
    dup = values.duplicated()
    if dup.any():
        k = int(np.flatnonzero(dup.to_numpy())[0])
        same = values.eq(values.iloc[k]).all(axis=1).to_numpy()
        raise ConfigError(f"{where} line {req.line[k]}: the same request as line {req.line[int(np.argmax(same))]} "
                          "(every field equal): every request once")
    n = meta.get("num_requests")
    rows = len(req) + len(req.attrs.get("unserved", ()))
    if n is not None and n != rows:
        raise ConfigError(f"{where}: {rows} requests, but {meta_where} num_requests={n}: requests.jsonl must "
                          f"hold every request the run recorded, each once")
    span = float(req.last_token_ts.max() - req.queued_ts.min())
    duration = recorded_duration(meta, meta_where)
    if duration is not None:
        start, end = duration
        limit = SPAN_SLACK[0] * (end - start) + SPAN_SLACK[1]
        if span > limit:
            raise ConfigError(f"{where}: the requests span {span:,.1f} s (first queued_ts to last last_token_ts), "
                              f"longer than the run ({meta_where} started_at..finished_at: {end - start:,.1f} s): "
                              "timestamps must be seconds, at most the run's duration apart")
        if "arrival_time" in req:
            a = req.arrival_time.to_numpy(dtype=float)
            outside = np.flatnonzero((a < start - ARRIVAL_SLACK_S) | (a > end + ARRIVAL_SLACK_S))
            if len(outside):
                k = int(outside[0])
                raise ConfigError(f"{where} line {req.line[k]}: arrival_time {float(a[k])!r} is outside the run "
                                  f"({meta_where} started_at..finished_at: {start:.1f}..{end:.1f} epoch s): "
                                  "arrival_time must be epoch seconds within the run")
    if "arrival_time" in req and len(req) > 1:
        a_span = float(req.arrival_time.max() - req.arrival_time.min())
        q_span = float(req.queued_ts.max() - req.queued_ts.min())
        ratio, slack = SPACING_SLACK
        if abs(a_span - q_span) > slack and max(a_span, q_span) > ratio * min(a_span, q_span):
            raise ConfigError(f"{where}: arrivals span {a_span:,.1f} s by arrival_time but {q_span:,.1f} s by "
                              "queued_ts: both must be seconds (the same requests arrive the same time apart)")


def check_span_against_timeseries(req: pd.DataFrame, ts: pd.DataFrame, path: Path, ts_path: Path,
                                  recorded: bool) -> None:
    """The per-second series and the requests bound each other loosely (10 x the other's length + 60 s): a
    series in milliseconds is refused; without a recorded duration, requests timed in milliseconds too."""
    if len(ts) < 2:
        return
    span = float(req.last_token_ts.max() - req.queued_ts.min())
    ts_span = float(ts.t.max() - ts.t.min())
    if ts_span > 10 * span + 60:
        raise ConfigError(f"{_q(ts_path)}: its t covers {ts_span:,.1f} s, over 10 times the {span:,.1f} s the requests "
                          f"of {_q(path)} span: t must be seconds")
    if recorded:
        return
    if span > 10 * ts_span + 60:
        raise ConfigError(f"{_q(path)}: the requests span {span:,.1f} s (first queued_ts to last last_token_ts), "
                          f"over 10 times the {ts_span:,.1f} s {_q(ts_path)} covers: timestamps must be seconds")


# ---- physics ----------------------------------------------------------------------------------------------
def check_kv_memory(blocks: int, block_size: int, per_token: int, weights: int, model: str, util: float,
                    memory: int, memory_how: str, kv_bytes: int | None, where: str) -> None:
    """The recorded KV blocks and the weights (per GPU) must fit in the memory vLLM was given:
    `gpu_memory_utilization x device memory`, or `kv_cache.kv_cache_memory_bytes` for the KV cache when set."""
    kv = blocks * block_size * per_token
    if kv_bytes is not None:
        if kv > kv_bytes:
            raise ConfigError(f"{where}: kv_cache.num_gpu_blocks={blocks:,} ({blocks * block_size:,} tokens x "
                              f"{per_token:,} bytes = {kv:,} bytes) exceeds kv_cache.kv_cache_memory_bytes="
                              f"{kv_bytes:,}: at most {kv_bytes // (block_size * per_token):,} blocks fit")
        return
    budget = int(util * memory)
    if kv + weights > budget:
        most = max(0, (budget - weights) // (block_size * per_token))
        raise ConfigError(f"{where}: kv_cache.num_gpu_blocks={blocks:,} ({kv / 1e9:,.1f} GB of KV per GPU at "
                          f"{per_token:,} bytes a token) and {model}'s weights ({weights / 1e9:,.1f} GB per GPU) "
                          f"do not fit in gpu_memory_utilization {util} x {memory:,} bytes ({memory_how}): at most "
                          f"{most:,} blocks fit")


def check_context(req: pd.DataFrame, limit: int | None, field: str, path: Path) -> None:
    """Every request within the longest vLLM serves: prompt + output <= max_model_len."""
    if limit is None:
        return
    total = (req.input_toks + req.output_toks).to_numpy()
    over = np.flatnonzero(total > limit)
    if len(over):
        k = int(over[0])
        raise ConfigError(f"{_q(path)} line {req.line[k]}: input_toks + output_toks = {req.input_toks[k]} + "
                          f"{req.output_toks[k]} = {int(total[k]):,} tokens, over {field}={limit:,} "
                          f"({len(over)} such requests): vLLM serves at most max_model_len tokens a request")
