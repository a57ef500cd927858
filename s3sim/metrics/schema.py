"""Every column of the files a run writes, with its unit and exact definition, in one place.

The README's "Outputs" section, `s3sim-schema` and plot axis labels are all generated from these tables, so
none of them can disagree with another. Times are seconds unless a column's name says otherwise (`_ms`,
`_s`). A name with `{...}` stands for a family (`ttft_{stat}`: ttft_mean, ttft_p50, ...), see `FAMILIES`.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

KINDS = ("summary", "requests", "iterations", "validation", "replicas")
TEXT = "text"  # the unit of a column that holds a name, not a number
FLAG = "true/false"


@dataclass(frozen=True)
class Column:
    name: str  # the column, or a family of columns (see FAMILIES)
    unit: str
    definition: str
    future: bool = False  # added by a pending change: not yet in every file

    def names(self) -> tuple[str, ...]:
        """The concrete column names this entry stands for."""
        keys = re.findall(r"\{(\w+)\}", self.name)
        if not keys:
            return (self.name,)
        out = []
        for combo in itertools.product(*(FAMILIES[k] for k in keys)):
            name = self.name
            for k, v in zip(keys, combo):
                name = name.replace("{" + k + "}", v, 1)
            out.append(name)
        return tuple(out)


def _families() -> dict[str, tuple[str, ...]]:
    from s3sim.core.policies.base import CAUSES
    from s3sim.metrics.summary import LENGTH_CLASSES, PCTS
    return {
        "stat": ("mean",) + tuple(f"p{p}" for p in PCTS),
        "cause": CAUSES,
        "class": tuple(name for name, _ in LENGTH_CLASSES),
        "vstat": ("mean", "p50", "p90", "p95", "p99"),  # validation.csv's (s3sim.validate.STATS)
    }


FAMILIES = _families()

_PCT = ("`_mean` is the plain mean, `_p50/_p90/_p99` linear-interpolated percentiles (numpy's default)")

# ---- per-run summary (summary.csv; replicas.csv holds the same measured columns per replica) -------------
MEASURED = (
    Column("policy", TEXT, "the scheduling policy (ft, hf, orca, s3, oracle, paged, paged_spf, vllm); a cluster "
           "of mixed policies joins their names with '+'"),
    Column("num_requests", "requests", "requests served in the run (all of them finish)"),
    Column("offered_rate", "req/s", "(requests - 1) / (last arrival - first arrival); inf when all arrive at once "
           "(offline) or there is one request"),
    Column("duration", "s", "the run's span: end of the last iteration - first arrival (at least 1e-12)"),
    Column("request_throughput", "req/s", "num_requests / duration"),
    Column("output_throughput", "tok/s", "output tokens of all requests (sum of output_len) / duration"),
    Column("total_token_throughput", "tok/s", "(output tokens + prompt tokens of all requests) / duration"),
    Column("goodput", "req/s", "requests that met every configured SLO (`slo.ttft`, `slo.tpot`, `slo.e2e`; "
           "none configured: all requests) / duration; a 1-token request has no tpot and meets that SLO"),
    Column("slo_attainment", "fraction", "requests that met every configured SLO / num_requests (1.0 with no SLO)"),
    Column("ttft_{stat}", "s", "time to first token, first_token - arrival, over all requests; " + _PCT),
    Column("tpot_{stat}", "s", "time per output token, (last_token - first_token) / (output_len - 1), over "
           "requests with more than one output token; " + _PCT),
    Column("itl_{stat}", "s", "inter-token latency: every gap between consecutive tokens of a request. Each "
           "iteration's duration is one sample per token it produced for an already-running request (its "
           "itl_tokens), and each gap across a preemption (resumption time - the token before) one more sample; "
           "`_mean` is that token-weighted mean, `_p50/_p90/_p99` token-weighted inverted-CDF percentiles"),
    Column("e2e_latency_{stat}", "s", "end-to-end latency, finished - arrival (static batching returns a request "
           "with its batch), over all requests; " + _PCT),
    Column("queue_time_max", "s", "the longest wait for admission, admitted - arrival (first admission)"),
    Column("queue_time_p99", "s", "the 99th percentile of admitted - arrival over all requests"),
    Column("ttft_p99_{class}", "s", "TTFT p99 over requests of one output-length class: short (output_len <= "
           "128), medium (129-512), long (> 512); empty (NaN) when the class has no request"),
    Column("mean_batch_size", "requests", "batch size (decoding sequences + prefills) averaged over iterations, "
           "not weighted by duration; a cluster's over every replica's iterations"),
    Column("max_batch_size", "requests", "the largest batch of any iteration"),
    Column("kv_capacity_tokens", "tokens", "KV-cache capacity (a cluster's: summed over replicas)"),
    Column("kv_reserved_frac", "fraction", "KV tokens reserved, time-weighted over iterations (each iteration's "
           "reservation x its duration, idle time excluded) / busy time / kv_capacity_tokens; a cluster's: each "
           "replica's weighted by its busy time"),
    Column("kv_used_frac", "fraction", "KV tokens holding a context, time-weighted like kv_reserved_frac "
           "/ kv_capacity_tokens"),
    Column("kv_peak_reserved_frac", "fraction", "the most KV tokens ever reserved at once / kv_capacity_tokens "
           "(a cluster's: the largest replica's)"),
    Column("gpu_busy_frac", "fraction", "time the engine spent in iterations (sum of durations) / duration; a "
           "cluster's: averaged over replicas"),
    Column("iterations", "iterations", "model iterations run (rows of iterations.csv)"),
    Column("engine_steps", "steps", "scheduler decisions: an engine step runs one batch k times (k > 1 only for "
           "decode-only batches until the next event), so engine_steps <= iterations"),
    Column("preemptions", "preemptions", "requests taken off the GPU (recompute or swap), counted every time"),
    Column("mispredictions", "requests", "S3's supervisor: requests whose output outgrew their predicted bucket "
           "(0 for policies without a predictor)"),
    Column("under_predictions", "requests", "S3's supervisor: predictions below the true length's bucket"),
    Column("grown_in_place", "requests", "S3's supervisor: reservations grown to a larger bucket without "
           "preempting the request"),
    Column("recomputed_tokens", "tokens", "context tokens prefilled again after a recompute-mode preemption "
           "(less any found in the prefix cache), summed over requests"),
    Column("swapped_tokens", "tokens", "context tokens moved to host memory by swap-mode preemptions, summed"),
    Column("padding_tokens", "tokens", "orca: decode slots spent on finished members of a static batch waiting "
           "for the last one (0 elsewhere)"),
    Column("prompt_tokens", "tokens", "prompt tokens of all requests (sum of prompt_len)"),
    Column("prefix_cached_tokens", "tokens", "vllm: prefill tokens the prefix cache held already (0 elsewhere)"),
    Column("prefix_shared_tokens", "tokens", "vllm: of prefix_cached_tokens, those computed by another request "
           "(a shared prompt prefix) or the request's own earlier run, found by content"),
    Column("preemptions_{cause}", "preemptions", "preemptions by cause: overflow (S3: a request outgrew its "
           "reservation and was put back to wait for a larger one) or memory (taken off to free KV memory)"),
    Column("recomputed_tokens_{cause}", "tokens", "recomputed_tokens of requests last preempted for that cause"),
    Column("swapped_tokens_{cause}", "tokens", "swapped_tokens of preemptions for that cause"),
    # policy-specific (Scheduler.summary_fields)
    Column("aged_admissions", "requests", "s3 with `policy.max_wait`: requests admitted ahead of the SJF order "
           "because they waited longer than max_wait"),
    Column("batch_sizing", TEXT, "hf: how a static batch is sized (`policy.sizing`)"),
    Column("static_batches", "batches", "hf: static batches run"),
    Column("mean_static_batch", "requests", "hf: requests per static batch, averaged over batches"),
    Column("copied_tokens", "tokens", "hf: KV tokens copied as the cache grows (transformers' DynamicCache)"),
)

SETUP = (
    Column("model", TEXT, "the model preset's name (the executor: the loaded model's)"),
    Column("gpu", TEXT, "the GPU preset's name (the executor: the device's name)"),
    Column("workload", TEXT, "the workload's name (`workload.name`)"),
    Column("arrival", TEXT, "the arrival process (`arrival.process`)"),
    Column("rate", "req/s", "the configured arrival rate (`arrival.rate`); empty when the process has none"),
    Column("predictor", TEXT, "the length predictor the policy used; 'none' for policies without one"),
    Column("accuracy", "fraction", "the synthetic predictor's configured accuracy; empty when not used"),
    Column("max_seq_len", "tokens", "the longest output a request may have (`max_seq_len`)"),
    Column("seed", "", "the run's seed (with repeats: the first seed's)"),
    Column("clipped_outputs", "requests", "requests whose workload output was cut to max_seq_len"),
    Column("context_clipped", "requests", "requests whose output was cut where it would run past the model's "
           "context window"),
    Column("model_dtype_bytes", "bytes", "bytes per weight of the model"),
    Column("model_assumed", TEXT, "what the model preset assumed rather than read, joined by '; '"),
    Column("prefix_blocks", "requests", "trace rows that carry shared-prefix block hashes"),
    Column("shared_prefix_tokens", "tokens", "tokens of the shared prefix prepended to every prompt "
           "(`shared_prefix.tokens`; 0: none)"),
    Column("shared_prefix_groups", "prefixes", "distinct shared prefixes (`shared_prefix.groups`)"),
    Column("prefix_caching", FLAG, "whether the policy's prefix cache was on (`policy.prefix_caching`)"),
    Column("workload_rows", "rows", "rows of the workload table the requests were drawn from"),
    Column("rows_used", TEXT, "how the requests relate to the workload's rows: all (each once), sample (a seeded "
           "sample) or cycled"),
    Column("sim_wall_s", "s", "wall-clock time the simulation took (this machine, not simulated time)"),
    Column("sim_requests_per_s", "req/s", "num_requests / sim_wall_s: the simulator's speed"),
)

CLUSTER = (
    Column("replicas", "replicas", "replicas behind the router (`cluster.replicas`); cluster runs only"),
    Column("router", TEXT, "the router that assigns requests to replicas; cluster runs only"),
    Column("replica_requests", TEXT, "requests per replica, replica 0 first, joined by '/'; cluster runs only"),
    Column("replica_imbalance", "ratio", "the busiest replica's requests / the mean per replica; cluster runs only"),
    Column("replica_throughput_min", "req/s", "the fewest requests any replica served / the cluster's duration"),
    Column("replica_throughput_max", "req/s", "the most requests any replica served / the cluster's duration"),
)

FUTURE = (
    Column("dropped_requests", "requests", "requests removed before the run because prompt + output cannot fit "
           "the model's context (`workload.overlong=drop`)", future=True),
    Column("clipped_prompts", "requests", "prompts cut to fit the model's context (`workload.overlong=clip`)",
           future=True),
    Column("steady_request_throughput", "req/s", "requests finished from the first arrival to the end of the "
           "steady part / that span; the steady part ends at the later of the last arrival and the last "
           "iteration whose batch is at least a tenth of the run's peak batch", future=True),
    Column("steady_output_throughput", "tok/s", "output tokens of the requests finished from the first arrival "
           "to the end of the steady part / that span", future=True),
    Column("tail_frac", "fraction", "the share of the run's duration after the steady part", future=True),
)

SUMMARY = MEASURED + SETUP + CLUSTER + FUTURE

SCHEMAS: dict[str, tuple[Column, ...]] = {"summary": SUMMARY}


def lookup(column: str, kind: str | None = None) -> Column | None:
    """The entry that defines `column` (in `kind`'s table, or any); None if no entry does."""
    for k in ([kind] if kind else list(SCHEMAS)):
        for c in SCHEMAS[k]:
            if column in c.names():
                return c
    return None


def unit(column: str, kind: str | None = None) -> str:
    """The unit of `column` ('' for a count of nothing in particular or an unknown column)."""
    c = lookup(column, kind)
    return c.unit if c is not None else ""


def axis_label(column: str, kind: str | None = None) -> str:
    """`column (unit)` for a plot axis; the bare name where the column has no numeric unit."""
    u = unit(column, kind)
    return f"{column} ({u})" if u and u not in (TEXT, FLAG) else column
