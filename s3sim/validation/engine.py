"""What the replay takes from a run's meta.json (`Engine`): the engine's limits, parallelism, KV cache, prefix
caching, asynchronous scheduling and CUDA graphs, read from `engine_kwargs`, the `kv_cache` section or
`resolved_config` (what vLLM resolved each setting to); a setting the replay would otherwise ignore is refused,
and the limits a run leaves unrecorded are vLLM's defaults for its GPU only where `--vllm-entry` says how vLLM
was started."""
from __future__ import annotations

import re

from dataclasses import dataclass

from s3sim.core.errors import ConfigError
from s3sim.validation import checks
from s3sim.validation.run_files import is_number


VLLM_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization
VLLM_PREFIX_CACHING = True  # vLLM V1 enables prefix caching unless told not to
VLLM_ASYNC_SCHEDULING = True  # vLLM V1 schedules a step ahead by default in recent versions (the runs' 0.19)
DEFAULTS_CHECKED = "0.19"  # the vLLM version whose defaults (async scheduling, prefix caching) were read
V1_FROM = (0, 8)  # the first vLLM whose engine is V1 by default
SCHEMA_READ = 1  # the meta.json schema_version whose fields the replay reads (a run recording another is noted)
DEFAULT_BLOCK_SIZE = 16  # vLLM's default KV block size (tokens)


def _positive_int(value, where: str) -> int:
    if not is_number(value) or value != int(value) or value < 1:
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
               "vLLM's default of one partial prefill, whose chunks only the token budget caps"),
              ("cache_config", "cpu_offload_gb", "cpu_offload_gb", 0, "every weight held on the GPU"),
              ("cache_config", "kv_offloading_size", "kv_offloading_size", 0, "a KV cache held on the GPU alone"),
              ("scheduler_config", "num_scheduler_steps", "num_scheduler_steps", 1, "one step per scheduling"),
              ("scheduler_config", "preemption_mode", "preemption_mode", "recompute",
               "preemption by recomputation, vLLM V1's one mode"))
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
    long_prefill_token_threshold, which more than one partial prefill also sets), weights or KV offloaded to the
    CPU, multi-step scheduling, preemption by swapping, speculative decoding, LoRA."""
    ek = meta["engine_kwargs"]
    for section, field, ek_field, modelled, what in UNMODELLED:
        for value, name in ((ek.get(ek_field), f"engine_kwargs.{ek_field}"),
                            (checks.resolved_section(meta, section).get(field), f"resolved_config.{section}.{field}")):
            if isinstance(value, str) and isinstance(modelled, str):  # an enum's text too: SchedulerPolicy.FCFS
                value = value.lower().rsplit(".", 1)[-1]
            if value is not None and value != modelled:
                raise ConfigError(f"{where}: {name}={value!r} is not modelled (the replay models {what})")
    uva = checks.resolved_section(meta, "offload_config").get("uva")  # vLLM 0.19 records it as its dataclass's text
    found = re.search(r"cpu_offload_gb=([0-9.eE+-]+)", uva) if isinstance(uva, str) else None
    if found and float(found[1]) != 0:
        raise ConfigError(f"{where}: resolved_config.offload_config.uva: cpu_offload_gb={found[1]} is not modelled "
                          "(the replay models every weight held on the GPU)")
    for section, ek_field, what in UNMODELLED_SECTIONS:
        for value, name in ((ek.get(ek_field), f"engine_kwargs.{ek_field}"),
                            (_resolved(meta).get(section), f"resolved_config.{section}")):
            if value:
                raise ConfigError(f"{where}: {name} is set: {what}")


def engine_settings(meta: dict, where: str) -> Engine:
    """The engine settings, refusing the ones the simulator does not model (one line naming them). A setting
    meta.json's `engine_kwargs` or `kv_cache` leaves out is read from `resolved_config` where vLLM recorded it."""
    check_v1(meta, where)
    check_unmodelled(meta, where)
    ek, kv, hw = dict(meta["engine_kwargs"]), dict(meta.get("kv_cache") or {}), meta.get("hardware") or {}
    for section, fields in (("scheduler_config", ("max_num_seqs", "max_num_batched_tokens")),
                            ("parallel_config", ("tensor_parallel_size", "data_parallel_size"))):
        for f in fields:
            ek[f] = checks.engine_value(meta, section, f)[0]
    cache = checks.resolved_section(meta, "cache_config")
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
    if not is_number(util) or not 0 < util <= 1:
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
    comp = checks.resolved_section(meta, "compilation_config")
    mode = comp.get("cudagraph_mode")
    if mode is not None and str(mode).upper().rsplit(".", 1)[-1] in ("0", "NONE"):
        return 0, "resolved_config.compilation_config.cudagraph_mode"
    size = comp.get("max_cudagraph_capture_size")
    if size is not None:  # 0: graphs on, but no batch size captured
        field = "resolved_config.compilation_config.max_cudagraph_capture_size"
        return (0 if size == 0 and not isinstance(size, bool) else _positive_int(size, f"{where}: {field}")), field
    return None, ""


def other_version_note(meta: dict, set_by: str) -> str:
    """A loud word where a default was assumed for a run of a vLLM version other than the one it was read from;
    `set_by`: how the user says what the run had."""
    version = meta.get("vllm_version")
    text = str(version).strip().lstrip("vV")
    if version is None or text == DEFAULTS_CHECKED or text.startswith(DEFAULTS_CHECKED + "."):
        return ""
    return f"; read from vLLM {DEFAULTS_CHECKED}, and this run ran vLLM {version}, whose default may differ: {set_by}"


def check_v1(meta: dict, where: str) -> None:
    """A run of a vLLM before 0.8.0 ran the V0 engine by default, whose scheduler (and defaults) this replay does not
    model: refused in one line rather than replayed as V1."""
    version = meta.get("vllm_version")
    m = re.match(r"\s*[vV]?(\d+)\.(\d+)", str(version)) if version is not None else None
    if m and (int(m[1]), int(m[2])) < V1_FROM:
        raise ConfigError(f"{where}: vllm_version={version!r} ran vLLM's V0 engine; the replay models the V1 engine, "
                          f"the default from vLLM {'.'.join(map(str, V1_FROM))}.0 (record a run of that or later)")
