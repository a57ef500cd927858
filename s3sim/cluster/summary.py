"""The summary of a cluster run: one row for the cluster (the usual columns over every request, plus the
cluster's own) and one row per replica (the usual columns over that replica's requests).

The cluster row is the single-engine summary of the merged run: request metrics over all requests, the
iterations of every replica together (mean batch size is per replica iteration), counters summed. Three
columns are put on a per-replica footing: `gpu_busy_frac` (the replicas' busy time summed, over replicas x the
cluster's span) and the time-weighted KV fractions (each replica's own, weighted by its busy time); `kv_peak_reserved_frac`
is the largest replica's. Added: `replicas`, `router`, `replica_requests` (requests per replica, joined
by '/'), `replica_imbalance` (the busiest replica's requests over the mean) and `replica_throughput_min`
and `_max` (requests per second of each replica over the cluster's span).
"""
from __future__ import annotations

from dataclasses import fields

import numpy as np

from s3sim.core.data_parallel import summed_fields
from s3sim.core.results import IterationLog, RunResult
from s3sim.metrics.summary import Slo, busy_fraction, summarize


class _MergedPool:
    def __init__(self, results: list[RunResult]):
        self.unit_tokens = 1
        self.peak = max(r.scheduler.pool.peak * r.scheduler.pool.unit_tokens / r.kv_capacity_tokens
                        for r in results) * sum(r.kv_capacity_tokens for r in results)


class _MergedScheduler:
    """What `summarize` reads of a scheduler, over every replica."""

    def __init__(self, results: list[RunResult]):
        scheds = [r.scheduler for r in results]
        self.name = scheds[0].name  # every replica runs the run's policy (cluster.build refuses another)
        self.stall_gaps = [g for s in scheds for g in s.stall_gaps]
        self.pool = _MergedPool(results)
        self._scheds = scheds

    def counters(self) -> dict:
        return summed_fields([s.counters() for s in self._scheds])

    def cause_fields(self) -> dict:
        return summed_fields([s.cause_fields() for s in self._scheds])

    def summary_fields(self) -> dict:
        return summed_fields([s.summary_fields() for s in self._scheds])


def _merged_log(logs: list[IterationLog]) -> IterationLog:
    out = IterationLog()
    for f in fields(IterationLog):
        setattr(out, f.name, [x for log in logs for x in getattr(log, f.name)])
    return out


def cluster_summary(result, slo: Slo, records) -> tuple[dict, list[dict]]:
    """(the cluster's row, one row per replica) of a `ClusterResult`; `records` are all requests' records."""
    reps = result.replicas
    merged = RunResult(result.requests, _merged_log([r.log for r in reps]), _MergedScheduler(reps),
                       result.end_time, sum(r.engine_steps for r in reps), sum(r.kv_capacity_tokens for r in reps))
    row = summarize(merged, slo, records, engines=len(reps))
    rows = []
    for i, r in enumerate(reps):
        one = summarize(r, slo, records[records.id.isin([q.id for q in r.requests])]) if r.requests else {}
        rows.append({"replica": i, **one})
    busy = np.array([float(np.concatenate(r.log.durations).sum()) if r.log.durations else 0.0 for r in reps])
    start = float(records.arrival.min()) if len(records) else 0.0
    span = max(result.end_time - start, 1e-12)
    counts = np.array([len(r.requests) for r in reps])
    row["gpu_busy_frac"] = busy_fraction(float(busy.sum()), span, len(reps))
    for col in ("kv_reserved_frac", "kv_used_frac"):
        v = np.array([x.get(col, 0.0) for x in rows])
        row[col] = float(np.dot(v, busy) / busy.sum()) if busy.sum() else 0.0
    row.update({"replicas": len(reps), "router": result.router,
                "replica_requests": "/".join(str(c) for c in counts),
                "replica_imbalance": float(counts.max() / counts.mean()) if counts.sum() else float("nan"),
                "replica_throughput_min": float(counts.min() / span), "replica_throughput_max": float(counts.max() / span)})
    return row, rows


def run_summary(result, slo: Slo, records) -> tuple[dict, list[dict]]:
    """(the run's row, one row per replica) of a `ClusterResult`: one engine's row is its own summary (no
    replica rows), a cluster's is `cluster_summary`'s."""
    if len(result.replicas) == 1:
        return summarize(result.replicas[0], slo, records), []
    return cluster_summary(result, slo, records)
