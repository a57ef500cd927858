"""The metrics compared, real and simulated alike: TTFT, TPOT and end-to-end latency (mean and percentiles, in
milliseconds), the two throughputs, and TTFT split at `scheduled_ts` into queueing and prefill."""
from __future__ import annotations

import numpy as np
import pandas as pd


COLUMNS = ("metric", "real", "simulated", "error_pct")
STATS = (("mean", None), ("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99))
LATENCIES = ("ttft", "tpot", "e2e_latency")
SPLIT = ("queue", "prefill")  # TTFT = queue (queued -> first scheduled) + prefill (first scheduled -> first token)
METRICS = tuple(f"{lat}_{s}" for lat in LATENCIES for s, _ in STATS) + ("request_throughput", "output_throughput")


def metric_name(metric: str) -> str:
    """The name a metric has in validation.csv and peer.csv: latencies carry their unit, ms."""
    return f"{metric}_ms" if metric.startswith(LATENCIES + SPLIT) else metric


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
