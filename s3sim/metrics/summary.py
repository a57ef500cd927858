"""Per-request records and one summary row per run, named as in vLLM's benchmarks plus S3's own.

Latencies: `ttft` = first token - arrival; `tpot` = (last token - first token) / (output - 1);
`e2e_latency` = finished - arrival (for static batching a request is returned with its batch);
`itl` = every gap between consecutive tokens of a request: an iteration's duration counts once per
token it produced for an already-running request, and a gap across a preemption counts once.
KV fractions are time-weighted over the iterations (idle time excluded), relative to KV capacity.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from s3sim.core.errors import InvariantViolation

PCTS = (50, 90, 99)
# output-length classes for fairness: does one kind of request wait for the others? (upper bounds, tokens)
LENGTH_CLASSES = (("short", 128), ("medium", 512), ("long", None))


@dataclass(frozen=True)
class Slo:
    """Service-level objectives for goodput; None disables one."""
    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None

    @classmethod
    def from_config(cls, cfg) -> "Slo":
        """The `slo` block of a run's config (missing: no SLO); each bound a positive number of seconds or null."""
        from s3sim.core.errors import ConfigError

        s = cfg.get("slo") or {}
        unknown = sorted(set(s) - {"ttft", "tpot", "e2e"})
        if unknown:
            raise ConfigError(f"slo.{unknown[0]} is unknown; valid: ttft, tpot, e2e")
        for k in ("ttft", "tpot", "e2e"):
            v = s.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")):
                raise ConfigError(f"slo.{k} must be a positive number of seconds or null, got {v!r}")
        return cls(ttft=s.get("ttft"), tpot=s.get("tpot"), e2e=s.get("e2e"))


def request_records(requests) -> pd.DataFrame:
    cols = ("id", "arrival", "admitted", "first_token", "last_token", "finished", "prompt_len", "output_len",
            "generated", "first_bucket", "bucket", "reserved_out", "preemptions", "recomputed_tokens",
            "swapped_tokens")
    df = pd.DataFrame({c: [getattr(r, c) for r in requests] for c in cols})
    df["ttft"] = df.first_token - df.arrival
    df["e2e_latency"] = df.finished - df.arrival
    decode_gaps = (df.output_len - 1).where(df.output_len > 1)
    df["tpot"] = (df.last_token - df.first_token) / decode_gaps
    df["queue_time"] = df.admitted - df.arrival
    return df


def _pcts(name: str, values, weights=None) -> dict:
    v = np.asarray(values, dtype=float)
    w = None if weights is None else np.asarray(weights, dtype=float)
    keep = ~np.isnan(v)
    v = v[keep]
    if w is not None:
        w = w[keep]
        keep = w > 0
        v, w = v[keep], w[keep]
    if len(v) == 0:
        return {f"{name}_mean": np.nan, **{f"{name}_p{p}": np.nan for p in PCTS}}
    if w is None:
        return {f"{name}_mean": float(v.mean()), **{f"{name}_p{p}": float(np.percentile(v, p)) for p in PCTS}}
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cw = np.cumsum(w)
    out = {f"{name}_mean": float(np.dot(v, w) / cw[-1])}
    for p in PCTS:  # inverted-CDF weighted percentile
        out[f"{name}_p{p}"] = float(v[min(np.searchsorted(cw, p / 100 * cw[-1], side="left"), len(v) - 1)])
    return out


def fairness(df: pd.DataFrame) -> dict:
    """Starvation shows in the tail of the wait for admission and in TTFT by output-length class: the longest
    and p99 queue time, and TTFT p99 of short (<= 128 output tokens), medium (129-512) and long answers
    (NaN for a class with no request)."""
    q = df.queue_time.to_numpy(dtype=float)
    out = {"queue_time_max": float(np.nanmax(q)) if len(q) else np.nan,
           "queue_time_p99": float(np.nanpercentile(q, 99)) if len(q) else np.nan}
    lower = 0
    for name, upper in LENGTH_CLASSES:
        sel = (df.output_len > lower) & (df.output_len <= (upper if upper is not None else np.inf))
        t = df.ttft[sel].to_numpy(dtype=float)
        out[f"ttft_p99_{name}"] = float(np.nanpercentile(t, 99)) if len(t) else np.nan
        lower = upper
    return out


TAIL_BATCH = 0.1  # offline, the steady part ends with the last iteration whose batch is at least this share of the peak


def steady(df: pd.DataFrame, it: pd.DataFrame, end: float) -> dict:
    """Throughput over the steady part of a run, beside the whole-run figures, which also count the warm-up
    and the run-out. The steady part ends at the last arrival when requests arrive over time, and offline
    (every request at once) with the last iteration whose batch is at least TAIL_BATCH of the run's peak:
    after it a few long requests run out alone. Over it, completions are counted between the first finish
    and the last finish by its end: (k - 1) requests, and their output tokens, over (f_k - f_1).
    `tail_frac`: the share of the whole run's duration after the steady part."""
    nan = {"steady_request_throughput": np.nan, "steady_output_throughput": np.nan, "tail_frac": np.nan}
    if len(df) < 2 or not len(it):
        return nan
    start, last_arrival = float(df.arrival.min()), float(df.arrival.max())
    if last_arrival > start:
        steady_end = last_arrival
    else:
        big = it.batch_size.to_numpy() >= TAIL_BATCH * float(it.batch_size.max())
        steady_end = float((it.start.to_numpy() + it.duration.to_numpy())[big].max())
    finished = df.finished.to_numpy(dtype=float)
    order = np.argsort(finished, kind="stable")
    f = finished[order]
    k = int(np.searchsorted(f, steady_end, side="right"))
    span = f[k - 1] - f[0] if k >= 2 else 0.0
    out = dict(nan, tail_frac=max(end - steady_end, 0.0) / max(end - start, 1e-12))
    if span > 0:
        out["steady_request_throughput"] = (k - 1) / span
        out["steady_output_throughput"] = float(df.output_len.to_numpy()[order][1:k].sum()) / span
    return out


def busy_fraction(busy: float, span: float, engines: int = 1) -> float:
    """`busy` seconds of iterations over `engines` engines' runs of `span` seconds each. The iterations'
    durations summed in another order than the clock added them may exceed the span by a rounding
    (1.0000000000000002 of an always-busy engine): that is 1. Beyond rounding, an engine busy longer than its
    run is a broken invariant, not a number."""
    frac = busy / span / engines
    if frac > 1.0:
        if frac - 1.0 > 1e-9:
            raise InvariantViolation(f"iterations took {busy:.9g} s over {engines} engine(s) in a run of {span:.9g} s")
        return 1.0
    return frac


def summarize(result, slo: Slo = Slo(), records: pd.DataFrame | None = None, engines: int = 1) -> dict:
    """One row of numbers for a finished `RunResult` (either engine's); `engines`: how many engines' iterations
    its log holds (a cluster's replicas, merged)."""
    df = request_records(result.requests) if records is None else records
    it = result.log.frame()
    sched = result.scheduler
    start = float(df.arrival.min()) if len(df) else 0.0
    span = max(result.end_time - start, 1e-12)
    ok = np.ones(len(df), dtype=bool)
    for col, limit in (("ttft", slo.ttft), ("tpot", slo.tpot), ("e2e_latency", slo.e2e)):
        if limit is not None:
            ok &= ~(df[col].to_numpy() > limit)  # a 1-token request has no tpot and meets that SLO
    busy = float(it.duration.sum())
    cap = result.kv_capacity_tokens
    w = it.duration.to_numpy()
    arrivals = df.arrival.to_numpy(dtype=float)
    offered_span = float(arrivals.max() - arrivals.min()) if len(df) > 1 else 0.0
    row = {
        "policy": sched.name,
        "num_requests": len(df),
        "offered_rate": (len(df) - 1) / offered_span if offered_span > 0 else float("inf"),  # arrivals per second
        "duration": span,
        "request_throughput": len(df) / span,
        "output_throughput": float(df.output_len.sum()) / span,
        "total_token_throughput": float(df.output_len.sum() + df.prompt_len.sum()) / span,
        "goodput": float(ok.sum()) / span,
        "slo_attainment": float(ok.mean()) if len(df) else np.nan,
        **steady(df, it, float(result.end_time)),
    }
    row.update(_pcts("ttft", df.ttft))
    row.update(_pcts("tpot", df.tpot))
    itl_v = np.concatenate([w, np.asarray(sched.stall_gaps, dtype=float)])
    itl_w = np.concatenate([it.itl_tokens.to_numpy(), np.ones(len(sched.stall_gaps))])
    row.update(_pcts("itl", itl_v, itl_w))
    row.update(_pcts("e2e_latency", df.e2e_latency))
    row.update(fairness(df))
    counts = sched.counters()
    row.update({
        "mean_batch_size": float(it.batch_size.mean()) if len(it) else 0.0,
        "max_batch_size": int(it.batch_size.max()) if len(it) else 0,
        "kv_capacity_tokens": cap,
        "kv_reserved_frac": float(np.dot(it.kv_reserved, w) / busy / cap) if busy else 0.0,
        "kv_used_frac": float(np.dot(it.kv_used, w) / busy / cap) if busy else 0.0,
        "kv_peak_reserved_frac": float(sched.pool.peak * sched.pool.unit_tokens / cap),
        "gpu_busy_frac": busy_fraction(busy, span, engines),
        "iterations": len(it),
        "engine_steps": result.engine_steps,
        "preemptions": int(counts["preemptions"]),
        "mispredictions": int(counts["mispredictions"]),
        "under_predictions": int(counts["under_predictions"]),
        "grown_in_place": int(counts["grown_in_place"]),
        "recomputed_tokens": int(df.recomputed_tokens.sum()),
        "swapped_tokens": int(df.swapped_tokens.sum()),
        "padding_tokens": int(counts["padding_tokens"]),
        "prompt_tokens": int(df.prompt_len.sum()),
        "prefill_context_tokens": int(counts["prefill_context_tokens"]),  # every admission's context:
        # the prompt, and after each recompute preemption prompt + generated again; the cache's hits are part of it
        "prefix_cached_tokens": int(counts.get("cached_tokens", 0)),  # prefill tokens a prefix cache held already
        "prefix_shared_tokens": int(counts.get("shared_cached_tokens", 0)),  # ... of them computed by another
        # request (a shared prompt prefix) or by its own earlier run, found by content
    })
    row.update(sched.cause_fields())
    row.update(sched.summary_fields())
    return row
