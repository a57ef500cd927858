"""Every column of the files a run writes, with its unit and exact definition, in one place.

The README's "Outputs" section, `s3sim-schema` and plot axis labels are all generated from these tables, so
none of them can disagree with another, and tests check every table against the files real runs write.
Times are seconds unless a column's name says otherwise (`_ms`, `_s`). A name with `{...}` stands for a
family (`ttft_{stat}`: ttft_mean, ttft_p50, ...): see `family`.

    s3sim-schema [summary|requests|iterations|validation|replicas|timeline|peer|tokens|bandwidth|fidelity]
                 [--markdown]
"""
from __future__ import annotations

import functools
import itertools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from s3sim.commandline import Parser, given_path, terminable

PROG = "s3sim-schema"
KINDS = ("summary", "requests", "iterations", "validation", "replicas", "timeline", "peer", "tokens", "bandwidth",
         "fidelity")
FILES = {"summary": "summary.csv", "requests": "requests.parquet", "iterations": "iterations.csv",
         "validation": "validation.csv", "replicas": "replicas.csv", "timeline": "timeline_data.csv",
         "peer": "peer.csv", "tokens": "tokens.csv", "bandwidth": "bandwidth.csv", "fidelity": "fidelity.csv"}
TEXT, FLAG, ID = "text", "true/false", "id"  # units of columns that hold no quantity
PER_ROW = "the row's metric"  # validation.csv: real and simulated take the unit of the metric they hold


@dataclass(frozen=True)
class Column:
    name: str  # the column, or a family of columns (see `family`)
    unit: str
    definition: str
    future: bool = False  # added by a change still under way: a file may not have it yet
    row: bool = False  # validation.csv: a value of its `metric` column (one row), not a column
    only: str = ""  # written only where this holds (said in the docs): a file may lack it otherwise

    def names(self) -> tuple[str, ...]:
        """The concrete column names this entry stands for."""
        keys = re.findall(r"\{(\w+)\}", self.name)
        out = []
        for combo in itertools.product(*(family(k) for k in keys)):
            name = self.name
            for k, v in zip(keys, combo):
                name = name.replace("{" + k + "}", v, 1)
            out.append(name)
        return tuple(out)

    def pattern(self) -> str:
        """The name as the docs show it: a family's members spelt out (`ttft_{mean,p50,p90,p99}`)."""
        return re.sub(r"\{(\w+)\}", lambda m: "{" + ",".join(family(m[1])) + "}"
                      if m[1] != "metric" else "<metric>", self.name)


@functools.cache
def family(key: str) -> tuple[str, ...]:
    """The members of a `{key}` family, from the code that writes them."""
    if key == "stat":
        from s3sim.metrics.summary import PCTS
        return ("mean",) + tuple(f"p{p}" for p in PCTS)
    if key == "cause":
        from s3sim.core.policies.base import CAUSES
        return CAUSES
    if key == "class":
        from s3sim.metrics.summary import LENGTH_CLASSES
        return tuple(name for name, _ in LENGTH_CLASSES)
    if key == "vstat":
        from s3sim.validation.metrics import STATS
        return tuple(s for s, _ in STATS)
    if key == "fid":  # the GPU check's fidelity metrics (s3exec.lab.gpu_check.FIDELITY_METRICS; a test holds them equal)
        return ("request_throughput", "output_throughput", "ttft_p50", "tpot_p50", "e2e_latency_p50")
    if key == "metric":  # what a run with repeats gives a confidence interval: numeric measurements
        from s3sim.runner import CI_SKIP
        return tuple(n for c in SUMMARY if c.unit not in (TEXT, FLAG, ID) and "{metric}" not in c.name
                     for n in c.names() if n not in CI_SKIP)
    raise KeyError(key)


_PCT = "`_mean` the plain mean, `_p50`/`_p90`/`_p99` percentiles with linear interpolation (numpy's default)"
_CLUSTER = "; cluster runs only"

# ---- what summarize() measures: summary.csv, and replicas.csv per replica -------------------------------
MEASURED = (
    Column("policy", TEXT, "the scheduling policy (ft, hf, orca, s3, oracle, paged, paged_spf, vllm); every "
           "replica of a cluster runs the same one"),
    Column("num_requests", "requests", "requests served (every one finishes)"),
    Column("offered_rate", "req/s", "(num_requests - 1) / (last arrival - first arrival); inf when every request "
           "arrives at once (offline) or there is one"),
    Column("duration", "s", "the run's span: the end of its last iteration - the first arrival"),
    Column("request_throughput", "req/s", "num_requests / duration"),
    Column("output_throughput", "tok/s", "output tokens of every request (sum of output_len) / duration"),
    Column("total_token_throughput", "tok/s", "(output tokens + prompt tokens of every request) / duration"),
    Column("goodput", "req/s", "requests that met every SLO of the run's `slo` block (ttft <= slo.ttft, tpot <= "
           "slo.tpot, e2e_latency <= slo.e2e; null disables one; the default config: ttft 2 s, tpot 0.2 s) / "
           "duration; a request with one output token has no tpot and meets that SLO"),
    Column("slo_attainment", "fraction", "requests that met every SLO (as goodput) / num_requests (1 with no SLO)"),
    Column("ttft_{stat}", "s", "time to first token, first_token - arrival, over every request; " + _PCT),
    Column("tpot_{stat}", "s", "time per output token, (last_token - first_token) / (output_len - 1), over the "
           "requests with more than one output token; " + _PCT),
    Column("itl_{stat}", "s", "inter-token latency, every gap between consecutive tokens of a request: each "
           "iteration's duration is one sample per token it gave an already-running request (its itl_tokens), "
           "and each gap across a preemption, or across prompt-only iterations that paused it (paged, 2023), one "
           "more (the token after it - the token before); `_mean` the "
           "token-weighted mean, `_p50`/`_p90`/`_p99` token-weighted percentiles (inverted CDF)"),
    Column("e2e_latency_{stat}", "s", "end-to-end latency, finished - arrival (static batching returns a request "
           "with its batch), over every request; " + _PCT),
    Column("queue_time_max", "s", "the longest wait for a first admission, admitted - arrival"),
    Column("queue_time_p99", "s", "the 99th percentile of admitted - arrival over every request (linear "
           "interpolation)"),
    Column("ttft_p99_{class}", "s", "TTFT p99 over the requests of one output-length class: short (output_len "
           "<= 128), medium (129-512), long (> 512); empty (NaN) for a class with no request"),
    Column("mean_batch_size", "requests", "batch size (decode_tokens + prefills, iterations.csv's batch_size) "
           "averaged over iterations, not weighted by their duration; a cluster's over every replica's iterations"),
    Column("max_batch_size", "requests", "the largest batch of any iteration"),
    Column("kv_capacity_tokens", "tokens", "the KV cache's capacity (a cluster's: summed over replicas)"),
    Column("kv_reserved_frac", "fraction", "KV tokens reserved (iterations.csv's kv_reserved), time-weighted: "
           "sum of kv_reserved x duration over iterations / their summed duration (idle time excluded) / "
           "kv_capacity_tokens; a cluster's: each replica's, weighted by its busy time"),
    Column("kv_used_frac", "fraction", "KV tokens holding context (iterations.csv's kv_used), time-weighted as "
           "kv_reserved_frac"),
    Column("kv_peak_reserved_frac", "fraction", "the most KV tokens reserved at any moment (whole blocks or "
           "units) / kv_capacity_tokens; a cluster's: the largest replica's"),
    Column("gpu_busy_frac", "fraction", "time spent in iterations (their summed duration) / duration; a "
           "cluster's: every replica's busy time summed / (replicas x the cluster's duration), where replicas.csv "
           "divides each by its own duration; 1 for an engine never idle (a sum that overshoots the duration "
           "by a rounding is 1)"),
    Column("iterations", "iterations", "model iterations run (the rows of iterations.csv)"),
    Column("engine_steps", "steps", "scheduler decisions: a step runs one batch k times (k > 1 only for a "
           "decode-only batch until the next event), so engine_steps <= iterations"),
    Column("preemptions", "preemptions", "times a running request was taken off the GPU (recompute or swap)"),
    Column("mispredictions", "requests", "S3's supervisor: finished requests whose true output bucket differs "
           "from first_bucket (0 for policies without a supervisor)"),
    Column("under_predictions", "requests", "of mispredictions, those whose first_bucket was below the true one"),
    Column("grown_in_place", "growths", "S3's supervisor: times a reservation that overflowed grew to a larger "
           "bucket without the request being preempted"),
    Column("recomputed_tokens", "tokens", "context tokens prefilled again after recompute-mode preemptions (less "
           "those the prefix cache still held), summed over requests"),
    Column("swapped_tokens", "tokens", "context tokens moved to host memory by swap-mode preemptions, summed"),
    Column("padding_tokens", "tokens", "ft and hf: decode slots spent on members of a static batch that already "
           "finished, plus (hf) the left-padding of prompts to the batch's longest; 0 for other policies"),
    Column("prompt_tokens", "tokens", "prompt tokens of every request (sum of prompt_len)"),
    Column("prefill_context_tokens", "tokens", "the context every admission placed in KV, computed or found in the "
           "prefix cache: each prompt on its first admission and, after each recompute preemption, its prompt and "
           "generated tokens again; prefix_cached_tokens is a part of it, prompt_tokens is not a bound"),
    Column("prefix_cached_tokens", "tokens", "vllm: prefill tokens the prefix cache held already (0 elsewhere)"),
    Column("prefix_shared_tokens", "tokens", "vllm: of prefix_cached_tokens, those found by content (blocks "
           "computed by another request's shared prompt prefix or by the request's own earlier run)"),
    Column("preemptions_{cause}", "preemptions", "preemptions by cause: overflow (S3: a request outgrew its "
           "reservation while the memory to grow it was free, and waits again for the larger one) or memory "
           "(taken off to free KV memory)"),
    Column("recomputed_tokens_{cause}", "tokens", "recomputed_tokens of re-admissions, by the cause of the "
           "request's last preemption"),
    Column("swapped_tokens_{cause}", "tokens", "swapped_tokens of the preemptions of that cause"),
    # a policy's own (Scheduler.summary_fields)
    Column("aged_admissions", "requests", "s3 with `policy.max_wait`, vllm with `policy.max_wait_s`: admissions "
           "made ahead of the policy's order (s3: its packing order; vllm: `policy.order`) because the request had "
           "been queued at least that many seconds"),
    Column("prefill_preemptions", "preemptions", "vllm with `policy.allocate=chunk` (its default): of preemptions, "
           "those of a request part-way through its prefill, whose next chunk found no free block (vLLM V1 takes a "
           "prompt's blocks chunk by chunk); its computed chunks are dropped"),
    Column("repredict", TEXT, "vllm with `predictor.repredict`: how remaining lengths were re-predicted as tokens "
           "were generated (measured: the error model measured on SmolLM2's hidden states, or a CSV's; hidden: the "
           "probe reading the served model's states, executor only)"),
    Column("vllm_limits", TEXT, "vllm with `policy.max_batch_size=auto` or `policy.max_num_batched_tokens=auto`: the "
           "sequence limit and token budget the run used (each replica's, in a cluster), which were auto and which of "
           "vLLM V1's defaults they took (by the GPU preset's memory and name, and the entry point: arrival=offline is "
           "the offline LLM class, other arrivals the server)"),
    Column("batch_sizing", TEXT, "hf: the length a static batch's peak memory is checked at (`policy.sizing`)"),
    Column("static_batches", "batches", "hf: static batches formed"),
    Column("mean_static_batch", "requests", "hf: requests per static batch, averaged over batches"),
    Column("copied_tokens", "tokens", "hf: KV tokens copied by the cache growing one token a decode step "
           "(transformers' DynamicCache)"),
)

STEADY = (  # a run's steady part, beside the whole-run throughputs that count its warm-up and run-out too
    Column("steady_request_throughput", "req/s", "completions over the steady part: with f_1 <= f_2 <= ... the "
           "finish times and f_k the last at or before the steady part's end, (k - 1) / (f_k - f_1); the steady "
           "part ends at the last arrival, or offline (every request at once) at the end of the last iteration "
           "whose batch_size is at least a tenth of the run's largest; empty when k < 2"),
    Column("steady_output_throughput", "tok/s", "output tokens of the 2nd .. k-th requests to finish / (f_k - "
           "f_1), as steady_request_throughput"),
    Column("tail_frac", "fraction", "(end of the run - end of the steady part) / duration: the share of the run "
           "after its steady part"),
)

SETUP = (  # what was run, and how fast
    Column("model", TEXT, "the model preset (the executor: the model it loaded)"),
    Column("gpu", TEXT, "the GPU preset (the executor: the device's name)"),
    Column("gpus_per_engine", "GPUs", "GPUs one engine runs on: gpu.count (tensor parallel) x gpu.pipeline_stages "
           "x gpu.data_parallel (a cluster's: the run's own setting; replicas.csv's gpu says each replica's)",
           only="an engine runs on more than one GPU"),
    Column("collectives", TEXT, "how tensor parallelism's all-reduces (and, on the operator model, its logits' "
           "all-gather) and expert parallelism's exchanges were priced "
           "(`latency.all_reduce`; auto: the measured table as the engine ran it, else measured alone, else a ring "
           "over the GPU's link, which says it is a fallback; the distinct ones joined by ' | ')",
           only="an engine splits its layers or its experts over GPUs"),
    Column("workload", TEXT, "the workload (`workload.name`)"),
    Column("arrival", TEXT, "the arrival process (`arrival.process`)"),
    Column("rate", "req/s", "the configured arrival rate (`arrival.rate`); empty for a process without one"),
    Column("predictor", TEXT, "the length predictor the policy used; 'none' for a policy without one"),
    Column("accuracy", "fraction", "the synthetic predictor's configured accuracy; empty when none is used"),
    Column("max_seq_len", "tokens", "the most output tokens a request may have (`max_seq_len`)"),
    Column("seed", ID, "the run's seed (with repeats: the first)"),
    Column("clipped_outputs", "requests", "requests whose workload output was cut to max_seq_len (s3exec's natural "
           "mode, which serves the model's own lengths: whose generation reached max_seq_len)"),
    Column("context_clipped", "requests", "requests whose output was cut where it would run past the model's "
           "context window"),
    Column("dropped_requests", "requests", "requests removed before the run because their prompt leaves no room "
           "for an output token in the model's context (`workload.overlong=drop`); num_requests excludes them, and so "
           "do offered_rate, goodput and slo_attainment (a rejected request is neither a hit nor a miss there)"),
    Column("zero_length_rows", "requests", "requests whose trace row gave a 0-token prompt or output, served as 1 "
           "token (a request has a prompt and yields at least one)", only="a trace row has 0 tokens"),
    Column("clipped_prompts", "requests", "prompts that kept only their last tokens, as many as leave room for "
           "the output, to fit the model's context (`workload.overlong=clip`; the executor: their last "
           "`executor.max_prompt_len` tokens)"),
    Column("model_dtype_bytes", "bytes", "bytes per weight"),
    Column("model_assumed", TEXT, "what the model preset assumed rather than read from the model, joined by '; '"),
    Column("prefix_blocks", "requests", "trace rows that carry shared-prefix block hashes"),
    Column("shared_prefix_tokens", "tokens", "tokens of the shared prefix prepended to every prompt "
           "(`shared_prefix.tokens`; 0: none)"),
    Column("shared_prefix_groups", "prefixes", "distinct shared prefixes (`shared_prefix.groups`)"),
    Column("prefix_caching", FLAG, "whether the policy's prefix cache was on (`policy.prefix_caching`)"),
    Column("workload_rows", "rows", "rows of the workload table the requests were drawn from"),
    Column("rows_used", TEXT, "how the requests (dropped ones included) relate to those rows: all (each row "
           "once), sample (a seeded sample), first (a trace's first rows, in order) or cycled (more requests than "
           "rows)"),
    Column("sim_wall_s", "s", "wall-clock time the simulation took on this machine (simulator runs; with repeats, "
           "every seed's together)"),
    Column("sim_requests_per_s", "req/s", "requests simulated / sim_wall_s: the simulator's speed"),
    Column("repeats", "runs", "seeds simulated (`repeats`); only when above 1"),
    Column("{metric}_ci95", "the metric's", "with repeats: the half-width of the 95 % confidence interval of the "
           "metric's mean over the seeds (Student's t), in the metric's unit; the metric itself is that mean"),
)

CLUSTER = (
    Column("replicas", "replicas", "replicas behind the router (`cluster.replicas`)" + _CLUSTER),
    Column("router", TEXT, "the router that sends each request to a replica" + _CLUSTER),
    Column("replica_requests", TEXT, "requests per replica, replica 0 first, joined by '/'" + _CLUSTER),
    Column("replica_imbalance", "ratio", "the busiest replica's requests / the mean per replica" + _CLUSTER),
    Column("replica_throughput_min", "req/s", "the fewest requests a replica served / the cluster's duration"
           + _CLUSTER),
    Column("replica_throughput_max", "req/s", "the most requests a replica served / the cluster's duration"
           + _CLUSTER),
)

EXECUTOR = (  # s3exec's runs only
    Column("engine", TEXT, "'exec': a run of the executor (s3exec) on a real model"),
    Column("mode", TEXT, "the executor's `executor.mode`: fixed (the workload's output lengths) or natural "
           "(until the model's end of sequence)"),
    Column("dtype", TEXT, "the torch dtype of the executor's weights and KV cache"),
    Column("kv_bytes", "bytes", "the executor's KV pool budget (`executor.kv_memory`, resolved)"),
    Column("peak_kv_used_frac", "fraction", "the executor's KV cache at its peak, in token slots of whole blocks, / "
           "kv_capacity_tokens (above 1 by at most the partial blocks of a token pool)"),
    Column("wall_s", "s", "wall-clock time the executor served for (after loading the model)"),
)

SUMMARY = MEASURED + STEADY + SETUP + CLUSTER + EXECUTOR

REQUESTS = (
    Column("id", ID, "the request's index, 0 .. num_requests - 1 in arrival order"),
    Column("replica", ID, "the replica the router sent it to" + _CLUSTER),
    Column("arrival", "s", "when it arrived, on the run's clock (the first arrival at 0 unless a trace says "
           "otherwise; the executor: wall clock from the run's start)"),
    Column("admitted", "s", "when it was first admitted: the start of the iteration that first scheduled it"),
    Column("first_token", "s", "the end of the iteration that gave its first output token"),
    Column("last_token", "s", "the end of the iteration that gave its last output token"),
    Column("finished", "s", "when it was returned: last_token, or (static batching) the end of its batch"),
    Column("prompt_len", "tokens", "prompt tokens"),
    Column("output_len", "tokens", "output tokens generated (the executor's natural mode: until end of sequence)"),
    Column("generated", "tokens", "output tokens the engine generated for it (equals output_len)"),
    Column("first_bucket", "bucket", "the length bucket its first reservation was sized for, from the predictor "
           "at arrival (0-based; -1 for a policy without a predictor)"),
    Column("bucket", "bucket", "the bucket its last reservation was sized for (grows on overflow; -1 without a "
           "predictor)"),
    Column("reserved_out", "tokens", "output tokens its last reservation covered (max_seq_len for policies that "
           "reserve without a prediction)"),
    Column("preemptions", "preemptions", "times it was taken off the GPU"),
    Column("recomputed_tokens", "tokens", "its context tokens prefilled again after preemptions (less those the "
           "prefix cache held)"),
    Column("swapped_tokens", "tokens", "its context tokens moved to host memory by preemptions"),
    Column("ttft", "s", "first_token - arrival"),
    Column("e2e_latency", "s", "finished - arrival"),
    Column("tpot", "s", "(last_token - first_token) / (output_len - 1); empty for one output token"),
    Column("queue_time", "s", "admitted - arrival"),
)

ITERATIONS = (
    Column("start", "s", "when the iteration began, on the run's clock"),
    Column("duration", "s", "how long it took"),
    Column("batch_size", "requests", "sequences in the batch: decode_tokens + prefills (whole or chunks)"),
    Column("decode_tokens", "tokens", "sequences decoding one token (running, resumed, and static-batch members "
           "already finished)"),
    Column("itl_tokens", "tokens", "tokens it gave already-running requests: the ITL samples of its duration"),
    Column("prefill_tokens", "tokens", "context tokens prefilled (prompts, chunks and recomputations)"),
    Column("kv_used", "tokens", "KV tokens holding context at its end (shared prompt blocks once)"),
    Column("kv_reserved", "tokens", "KV tokens reserved or allocated during it (paged: whole blocks)"),
    Column("waiting", "requests", "requests in the scheduler's queue, not admitted, once its batch was formed"),
    Column("replica", ID, "the replica that ran it" + _CLUSTER),
)

_VALID = ("over every request the run served (real: requests.jsonl, times from `queued_ts`; simulated: the "
          "replay, from its arrival)")
VALIDATION = (
    Column("metric", TEXT, "the row's measurement, one of the rows below"),
    Column("real", PER_ROW, "measured on the real vLLM run"),
    Column("simulated", PER_ROW, "the simulator's replay of that run"),
    Column("error_pct", "%", "100 x (simulated - real) / real; empty when real is 0"),
    Column("sensitivity", "% per %", "how far error_pct moves were every step 1 % slower (a second replay with "
           "every step priced 1 % higher): where it is large (TTFT of a run that queues), a small error per step "
           "is a large one here"),
    Column("kv_capacity_source", TEXT, "where the replay's KV capacity came from: recorded (meta.json's "
           "kv_cache.num_gpu_blocks) or derived (vLLM's memory accounting from the recorded device memory)"),
    Column("unserved_requests", "requests", "rows of requests.jsonl whose three times are all null (requests the run "
           "did not serve), left out of the replay and of both sides' metrics; 0 where every request was served"),
    Column("ttft_{vstat}_ms", "ms", "TTFT, first token - queued, " + _VALID + "; `_mean` the mean, the rest "
           "percentiles with linear interpolation", row=True),
    Column("tpot_{vstat}_ms", "ms", "TPOT, (last token - first token) / (output tokens - 1), over requests with "
           "more than one output token; as ttft", row=True),
    Column("e2e_latency_{vstat}_ms", "ms", "last token - queued " + _VALID, row=True),
    Column("request_throughput", "req/s", "requests / (the run's last token - its first queued)", row=True),
    Column("output_throughput", "tok/s", "output tokens / (the run's last token - its first queued)", row=True),
    Column("queue_{vstat}_ms", "ms", "TTFT's first part: first scheduled (the run's scheduled_ts; the replay's "
           "first admission) - queued; only where every request records scheduled_ts", row=True),
    Column("prefill_{vstat}_ms", "ms", "TTFT's second part: first token - first scheduled (the prompt's chunks "
           "and any wait between them); as queue", row=True),
)

REPLICAS = (
    Column("replica", ID, "the replica's index"),
    Column("gpu", TEXT, "the replica's GPUs, '<count> x <preset>' (count: gpu.count x gpu.pipeline_stages x gpu.data_parallel)"),
) + MEASURED + STEADY

TIMELINE = (
    Column("t", "s", "the run's timeseries.csv tick (seconds from its start), extended at the same spacing while the "
           "replay runs past the run's last tick"),
    Column("real_running", "requests", "running requests the run recorded at the tick (timeseries.csv's running); "
           "empty past its last tick"),
    Column("sim_running", "requests", "the replay's batch (decodes and prefill chunks) in the iteration in progress "
           "at the tick, summed over its engines; 0 while idle"),
    Column("real_waiting", "requests", "waiting requests the run recorded at the tick; as real_running"),
    Column("sim_waiting", "requests", "requests waiting in the replay during the iteration in progress at the "
           "tick, summed over its engines"),
    Column("real_kv_pct", "%", "the KV cache use the run recorded at the tick (timeseries.csv's kv_cache_pct)"),
    Column("sim_kv_pct", "%", "100 x KV tokens the replay's iteration in progress at the tick reserves / the KV "
           "capacity (every rank's)"),
)

PEER = (
    Column("metric", TEXT, "validation.csv's name for the peer's row (TTFT, TPOT and end-to-end latency's mean, "
           "median and percentiles)"),
    Column("real", PER_ROW, "the peer's vLLM column: the real value, rounded as its summary prints it"),
    Column("peer_simulated", PER_ROW, "the peer simulator's value"),
    Column("peer_error_pct", "%", "the error the peer's summary prints for it"),
)

TOKENS = (
    Column("id", ID, "the request (requests.parquet's id)"),
    Column("index", "tokens", "the token's position in the request's output, 0 for the first"),
    Column("token", ID, "the token's id in the model's vocabulary"),
    Column("time", "s", "when the token appeared, on the run's clock: index 0 is the request's first_token, its "
           "last its last_token"),
    Column("text", TEXT, "the token decoded on its own", only="the model has a tokenizer (outputs.csv then holds "
           "each request's whole text: id, text)"),
)

BANDWIDTH = (
    Column("batch", "sequences", "decodes in the step"),
    Column("context", "tokens", "cached tokens each of them attends to"),
    Column("step_s", "s", "the decode step's median time (the executor's ModelRunner, its attention kernel and CUDA "
           "graphs as configured)"),
    Column("weight_bytes", "bytes", "the model's weights, read once a step"),
    Column("kv_bytes", "bytes", "the batch's keys and values read: batch x (context + 1) x KV bytes a token"),
    Column("read_gb_s", "GB/s", "(weight_bytes + kv_bytes) / step_s / 1e9"),
    Column("copy_gb_s", "GB/s", "the device's streaming bandwidth: a 1 GiB device-to-device copy, bytes read plus "
           "written over its best time of five"),
    Column("utilisation", "fraction", "read_gb_s / copy_gb_s"),
    Column("floor_s", "s", "the step's bandwidth floor: (weight_bytes + kv_bytes) / copy bandwidth"),
    Column("vs_floor", "x", "step_s / floor_s"),
)

FIDELITY = (
    Column("policy", TEXT, "the policy run on both engines, the same requests and KV budget"),
    Column("requests", "requests", "requests served"),
    Column("max_seq_len", "tokens", "their output cap"),
    Column("kv_capacity_tokens", "tokens", "the KV budget both engines share"),
    Column("overhead_s", "s", "the fixed cost per iteration the simulator adds: the calibration run's median step "
           "time beyond its operator sum"),
    Column("exec_mean_batch", "requests", "the executor's mean batch size"),
    Column("sim_mean_batch", "requests", "the simulator's mean batch size"),
    Column("exec_{fid}", "as summary.csv's", "summary.csv's column of that name, measured by the executor"),
    Column("sim_{fid}", "as summary.csv's", "the same, simulated on the profile the check measured"),
    Column("err_{fid}", "fraction", "(sim - exec) / exec, a fraction (printed as a percentage)"),
)

SCHEMAS: dict[str, tuple[Column, ...]] = {"summary": SUMMARY, "requests": REQUESTS, "iterations": ITERATIONS,
                                         "validation": VALIDATION, "replicas": REPLICAS, "timeline": TIMELINE,
                                         "peer": PEER, "tokens": TOKENS, "bandwidth": BANDWIDTH,
                                         "fidelity": FIDELITY}
INTROS = {
    "summary": "One row per run (`s3sim`, `s3exec`; `repeats.csv` has one per seed, the same columns). Columns "
               "that say what ran come after the measurements; cluster and executor columns only in such runs.",
    "requests": "One row per request, every one finished. Times are on the run's clock.",
    "iterations": "One row per model iteration (with `write_iterations=true`).",
    "validation": "`s3sim-validate`: one row per metric, real against simulated (`peer.csv`, another "
                  "simulator's errors, uses the same metric names).",
    "replicas": "A cluster run: one row per replica, with summary.csv's measurements over that replica's "
                "own requests and iterations (its duration from its first arrival to its last iteration).",
    "timeline": "`s3sim-validate`: running, waiting and KV use at the run's ticks, real against the replay "
                "(what timeline.png draws).",
    "peer": "`s3sim-validate`, where the run has another simulator's summary beside it "
            "(`llmservingsim_summary.txt`): its rows, under validation.csv's metric names.",
    "tokens": "`s3exec` (unless `executor.write_tokens=false`): one row per generated token.",
    "bandwidth": "`make gpu-check`: one row per decode step timed (batch x context).",
    "fidelity": "`make gpu-check`: one row per policy, the executor against the simulator on the same requests "
                "(the metrics: request and output throughput, TTFT, TPOT and end-to-end p50).",
}


def lookup(column: str, kind: str | None = None) -> Column | None:
    """The entry that defines `column` in `kind`'s table (None: any table); None if none does."""
    for k in ([kind] if kind else KINDS):
        for c in SCHEMAS[k]:
            if column in c.names():
                return c
    return None


def unit(column: str, kind: str | None = None) -> str:
    """The unit of `column` ('' for a column no table defines)."""
    c = lookup(column, kind)
    if c is None:
        return ""
    if "{metric}" in c.name:
        return unit(column.removesuffix("_ci95"), kind)
    return c.unit


def axis_label(column: str, kind: str | None = None) -> str:
    """`column (unit)` for a plot axis; the bare name for a column without a quantity or not in the schema."""
    u = unit(column, kind)
    return f"{column} ({u})" if u and u not in (TEXT, FLAG, ID) else column


# ---- printing -------------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(kind: str) -> str:
    """A kind's table as Markdown; replicas.csv refers to summary.csv for the columns they share."""
    cols = SCHEMAS[kind]
    shared = [c for c in cols if kind == "replicas" and c in MEASURED + STEADY]
    lines = [f"**`{FILES[kind]}`**: {INTROS[kind]}", "", "| column | unit | definition |", "|---|---|---|"]
    for c in cols:
        if c in shared:
            continue
        note = " (not written yet: a change under way adds it)" if c.future else ""
        note += f"; only where {c.only}" if c.only else ""
        name = f"`{c.pattern()}`" + (" (a row)" if c.row else "")
        lines.append(f"| {name} | {_cell(c.unit)} | {_cell(c.definition + note)} |")
    if shared:
        names = ", ".join(f"`{c.pattern()}`" for c in shared)
        lines.append(f"| {names} | as in summary.csv | as in summary.csv, over the replica's requests |")
    return "\n".join(lines) + "\n"


def plain(kind: str) -> str:
    """A kind's table as aligned text, one column a line."""
    cols = SCHEMAS[kind]
    width = max(len(c.pattern()) for c in cols)
    uw = max(len(c.unit) for c in cols)
    lines = [f"{FILES[kind]}: {INTROS[kind]}"]
    for c in cols:
        note = " (not written yet)" if c.future else ""
        note += f"; only where {c.only}" if c.only else ""
        lines.append(f"  {c.pattern():<{width}}  {c.unit:<{uw}}  {c.definition}{note}")
    return "\n".join(lines) + "\n"


def render(kinds=KINDS, as_markdown: bool = False) -> str:
    return "\n".join((markdown if as_markdown else plain)(k) for k in kinds)


BEGIN, END = "<!-- outputs:begin -->\n", "<!-- outputs:end -->"


def update_readme(path: Path) -> int:
    """The README's Outputs section regenerated in place (atomically), so a new column is documented by
    adding it to the tables above and running `s3sim-schema --update-readme README.md`."""
    from s3sim.writers import write_text

    def refuse(why: str) -> int:
        print(f"{PROG}: error: {path} {why}", file=sys.stderr)
        return 2

    if not path.is_file():
        return refuse("is not a file (the README to update)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        return refuse(f"cannot be read as text ({e.strerror if isinstance(e, OSError) else 'not UTF-8'})")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        return refuse(f"needs one {BEGIN.strip()} line and, after it, one {END} line")
    head, rest = text.split(BEGIN)
    try:
        write_text(head + BEGIN + render(KINDS, True) + END + rest.split(END, 1)[1], path)
    except OSError as e:
        return refuse(f"cannot be written ({e.strerror or e})")
    return 0


@terminable
def main(argv=None) -> int:
    p = Parser(prog=PROG, description="Print every column of the files a run writes: unit and definition.")
    p.add_argument("kind", nargs="?", help=f"one of {', '.join(KINDS)} (default: all)")
    p.add_argument("--markdown", action="store_true", help="Markdown tables (the README's Outputs section)")
    p.add_argument("--update-readme", metavar="README", type=given_path, help="rewrite README's section between "
                   f"{BEGIN.strip()} and {END} with the Markdown tables")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.kind is not None and args.kind not in KINDS:
        print(f"{PROG}: error: kind must be one of {', '.join(KINDS)}, got {args.kind!r}", file=sys.stderr)
        return 2
    if args.update_readme is not None:
        if args.kind is not None or args.markdown:
            print(f"{PROG}: error: --update-readme writes every kind as Markdown; give it alone", file=sys.stderr)
            return 2
        return update_readme(args.update_readme)
    sys.stdout.write(render([args.kind] if args.kind else KINDS, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
