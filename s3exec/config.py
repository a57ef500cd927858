"""From a resolved `s3exec` config to a ready executor: model, prompts, KV budget, policy, cache.

The workload, arrivals, predictor and policy are built by the simulator's own functions
(`s3sim.config`); only the KV capacity differs: it is what the memory budget buys on this device for
this model, not a GPU preset's. Every bad value is a one-line `ConfigError`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from s3sim.config import (build_scheduler, check_fits, check_requests, sample_workload, served_clipped,
                          served_raised)
from s3sim.core.errors import ConfigError
from s3sim.spec import MAX_THREADS, flag, get, positive_int, run_spec, seed_of
from s3sim.core.predictors.reprediction import hidden_state_probe
from s3sim.core.request import Request, make_requests
from s3sim.metrics.summary import Slo

# the executor keeps no prefix cache and has no GPU preset: vllm, whose defaults are vLLM V1's (prefix caching on,
# limits by GPU), runs there with the cache off and the limits vLLM's server takes below 70 GiB
NO_PREFIX_CACHE = "policy.prefix_caching=false"
EXEC_VLLM = ["policy=vllm", NO_PREFIX_CACHE, "policy.max_batch_size=256", "policy.max_num_batched_tokens=2048"]


def exec_policy(policy: str) -> list[str]:
    """The overrides that select `policy` for the executor (for vllm, `EXEC_VLLM`)."""
    return list(EXEC_VLLM) if policy == "vllm" else [f"policy={policy}"]


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass
class ExecSetup:
    loaded: object  # LoadedModel
    requests: list[Request]
    prompts: list[list[int]]
    caps: list[int]
    scheduler: object
    executor: object
    slo: Slo
    kv_bytes: int
    capacity_tokens: int
    clipped_outputs: int
    workload_rows: int
    clipped_prompts: int  # prompts cut to their last executor.max_prompt_len tokens
    zero_length_rows: int = 0  # requests whose trace row had 0 tokens somewhere, served as 1 (as the simulator)


def parse_bytes(value, field: str) -> int | float:
    """An int of bytes, a string with a unit (`64MiB`, `2GB`), or a float fraction in (0, 1]."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{field} must be bytes (e.g. 268435456 or '256MiB') or a fraction in (0, 1], got {value!r}")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ConfigError(f"{field} {value!r} is not a size like '256MiB', '2GB' or a number of bytes")
        if not m.group(2):  # a bare number, quoted: read as the same number unquoted would be
            number = float(m.group(1))
            return parse_bytes(int(number) if "." not in m.group(1) else number, field)
        return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if isinstance(value, float) and 0 < value <= 1:
        return value
    whole = isinstance(value, (int, np.integer)) or isinstance(value, float) and value.is_integer()
    if whole and value > 1:
        return int(value)
    raise ConfigError(f"{field} must be a whole number of bytes (> 1) or a fraction in (0, 1], got {value!r}")


def free_memory(device: str) -> tuple[int, str]:
    """Bytes free on the device now, and how that was measured."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"executor.device={device} but no CUDA device is available")
        return int(torch.cuda.mem_get_info(torch.device(device))[0]), f"free memory of {device}"
    if device != "cpu":
        raise ConfigError(f"executor.device '{device}' is unknown; valid: cpu, cuda, cuda:N")
    import psutil

    return int(psutil.virtual_memory().available), "available host memory"


def check_memory_limit(limit, asked: int, device: str) -> None:
    """`executor.memory_limit` may not exceed what the device has free now: above the host's memory the
    process would be killed mid-run (exit 137) without a word, above a GPU's it would fail to allocate."""
    available, where = free_memory(device)
    if asked > available:
        raise ConfigError(f"executor.memory_limit={limit} asks for {asked / 2**30:.2f} GiB but the {where} is "
                          f"{available / 2**30:.2f} GiB; lower it, or set executor.memory_limit=null to use that")


def executor_node(cfg) -> dict:
    """The run's `executor` settings (conf/exec.yaml): required."""
    ex = get(cfg, "executor")
    if not isinstance(ex, dict):
        raise ConfigError(f"executor must be the executor's settings (conf/exec.yaml holds them), got {ex!r}")
    return ex


def model_source(cfg) -> str:
    """What `executor.model` names, or the model preset's name where it is unset."""
    given = get(cfg, "executor.model")
    if given is not None:
        if not isinstance(given, str) or not given.strip():
            raise ConfigError(f"executor.model must name a model (smollm2, a preset, a checkpoint folder or a "
                              f"config.json), got {given!r}")
        return given
    name = get(cfg, "model.name")
    if not isinstance(name, str) or not name:
        raise ConfigError("executor.model or model.name must name the model to run (model=<preset>)")
    return name


def set_threads(ex) -> None:
    import torch

    threads = positive_int(get(ex, "threads"), "executor.threads", allow_none=True)
    if threads and threads > MAX_THREADS:
        raise ConfigError(f"executor.threads must be at most {MAX_THREADS}, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def load_executor_model(cfg):
    """The model of an executor config on its device (threads set as it says): (LoadedModel, device)."""
    from s3exec.models import load_model

    ex = executor_node(cfg)
    set_threads(ex)
    device = str(get(ex, "device", "cpu"))
    available, where = free_memory(device)
    source = model_source(cfg)
    return load_model(source, str(get(ex, "dtype", "float32")), device, seed_of(cfg), available, where), device


def attention_kernel(value, device: str) -> str:
    """`executor.attention`: how decode and chunk attention read the cache (auto: flex on CUDA, sdpa elsewhere)."""
    from s3exec.attention import KERNELS

    if value == "auto":
        return "flex" if str(device).startswith("cuda") else "sdpa"
    if value not in KERNELS:
        raise ConfigError(f"executor.attention={value!r} is unknown; valid: auto, {', '.join(KERNELS)}")
    return value


def cuda_graphs_enabled(value, device: str) -> bool:
    """`executor.cuda_graphs`: capture decode steps (auto: on CUDA). CUDA graphs need a CUDA device."""
    if value == "auto":
        return str(device).startswith("cuda")
    if not isinstance(value, bool):
        raise ConfigError(f"executor.cuda_graphs must be auto, true or false, got {value!r}")
    if value and not str(device).startswith("cuda"):
        raise ConfigError(f"executor.cuda_graphs=true needs a CUDA device, but executor.device={device}")
    return value


def build_exec(cfg, progress: bool = False, loaded=None, prompts=None) -> ExecSetup:
    """Everything one run needs; `loaded` reuses a model already loaded from the same source. `prompts`
    (token ids) replaces the workload's rows: one request each, all arriving at t=0, each allowed
    `max_seq_len` output tokens (what natural mode generates up to)."""
    from s3exec.cuda_graphs import ladder
    from s3exec.base import check_mode
    from s3exec.engine import Executor
    from s3exec.kv_cache import KVCache
    from s3exec.model_runner import ModelRunner
    from s3exec.models import load_model
    from s3exec.prompts import TEXT_WORKLOADS, synthetic_prompts, text_prompts

    ex = executor_node(cfg)
    set_threads(ex)
    mode = get(ex, "mode", "fixed")
    check_mode(mode)
    run = run_spec(cfg)
    max_seq_len, seed = run.max_seq_len, run.seed
    if get(cfg, "model.dtype") is not None:
        raise ConfigError("model.dtype is the simulator's; the executor loads its model in executor.dtype")
    if get(cfg, "kv_capacity_tokens") is not None:
        raise ConfigError("kv_capacity_tokens is the simulator's: the executor's KV capacity is what "
                          "executor.kv_memory buys for its model; remove it")
    if get(cfg, "shared_prefix.tokens", 0):
        raise ConfigError("shared_prefix is the simulator's: the executor serves the workload's own prompt text "
                          "and shares no KV between requests; remove it")
    device = str(get(ex, "device", "cpu"))
    # every executor setting checked before the model loads, whichever backend reads it
    block = positive_int(get(ex, "block_size", 16), "executor.block_size")
    tokens = positive_int(get(ex, "max_batch_tokens"), "executor.max_batch_tokens", allow_none=True)
    kernel = attention_kernel(get(ex, "attention", "auto"), device)
    graphs = cuda_graphs_enabled(get(ex, "cuda_graphs", "auto"), device)
    chat_template = flag(get(ex, "chat_template"), "executor.chat_template", True)
    warmup = flag(get(ex, "warmup"), "executor.warmup", True)
    max_prompt = positive_int(get(ex, "max_prompt_len"), "executor.max_prompt_len", allow_none=True)
    limit = get(ex, "memory_limit")
    if limit is None:
        available, where = free_memory(device)
    else:
        available = parse_bytes(limit, "executor.memory_limit")
        if isinstance(available, float):
            raise ConfigError(f"executor.memory_limit must be bytes, got the fraction {limit!r}")
        check_memory_limit(limit, available, device)
        where = f"executor.memory_limit={limit}"
    source = model_source(cfg)
    if loaded is None:
        loaded = load_model(str(source), get(ex, "dtype", "float32"), device, seed, available, where)

    if prompts is not None:
        wl, idx, arrivals = None, None, np.zeros(len(prompts))
        output = np.full(len(prompts), max_seq_len, dtype=np.int64)
    else:
        wl, idx, arrivals = sample_workload(cfg, run)
        output = wl.output_len[idx].astype(np.int64)
        if run.workload.name in TEXT_WORKLOADS:
            prompts = text_prompts(run.workload, wl, idx, loaded.tokenizer, chat_template)
        else:
            prompts = synthetic_prompts(wl.prompt_len[idx], loaded.vocab_size, seed, avoid=loaded.eos_ids)
    clipped = 0
    if max_prompt:
        clipped = sum(len(p) > max_prompt for p in prompts)
        prompts = [p[-max_prompt:] for p in prompts]  # keep the end: the chat template's turn header
    plen = np.array([len(p) for p in prompts], dtype=np.int64)
    worst = int(np.argmax(plen))
    if max_seq_len >= loaded.max_context:  # no prompt leaves room: cutting prompts cannot help
        raise ConfigError(f"max_seq_len={max_seq_len} leaves no room for a prompt in the context of {source!r} "
                          f"({loaded.max_context} tokens): lower max_seq_len below {loaded.max_context}")
    if plen[worst] + max_seq_len > loaded.max_context:
        raise ConfigError(
            f"request {worst}: a prompt of {plen[worst]} tokens plus max_seq_len={max_seq_len} exceeds the context of "
            f"{source!r} ({loaded.max_context} tokens); set executor.max_prompt_len (at most "
            f"{loaded.max_context - max_seq_len}) or lower max_seq_len")

    budget = parse_bytes(get(ex, "kv_memory", "256MiB"), "executor.kv_memory")
    left = available - loaded.weight_bytes
    kv_bytes = int(budget * left) if isinstance(budget, float) else budget
    if kv_bytes > left:
        raise ConfigError(f"executor.kv_memory={get(ex, 'kv_memory')} asks for {kv_bytes / 2**20:.1f} MiB but only "
                          f"{left / 2**20:.1f} MiB are left after the weights ({where})")
    cap = kv_bytes // loaded.kv_bytes_per_token
    need = int(plen.max()) + max_seq_len
    check_fits(cap, int(plen.max()), max_seq_len,
               f"a budget of {kv_bytes} bytes of {source!r} at {loaded.kv_bytes_per_token} bytes each",
               "raise executor.kv_memory or lower max_seq_len")
    if block > cap:  # the executor's pool is whole blocks, and one partial block per request beside them
        raise ConfigError(f"executor.block_size={block} is larger than the KV capacity of {cap:,} tokens that "
                          f"executor.kv_memory={get(ex, 'kv_memory', '256MiB')} buys: not one block fits; lower it")

    requests = make_requests(plen, output, arrivals)  # rows come in arrival order: request i is row idx[i]
    caps = [max_seq_len] * len(requests) if mode == "natural" else [r.output_len for r in requests]
    keys = None if wl is None or getattr(wl, "keys", None) is None else wl.keys[idx]
    # the served model's context and layers (what orca/ft/hf reserve, hf's copy, paged's prompt iterations)
    sched = build_scheduler(cfg, cap, output, keys, hidden_states=True, context=loaded.max_context,
                            layers=loaded.num_layers, spec=run)  # (repredict is read by policy=vllm only)
    check_requests(sched, plen, output)
    if hidden_state_probe(sched) is not None and str(source) != "smollm2":
        raise ConfigError(f"predictor.repredict=hidden: the shipped probe reads SmolLM2's hidden states, not "
                          f"{source!r}'s (set executor.model=smollm2 or predictor.repredict=measured)")
    if sched.executor_backend == "generate":  # transformers' generate with its own growing cache
        from s3exec.generate import GenerateExecutor

        executor = GenerateExecutor(loaded, sched, mode=mode, eos_ids=loaded.eos_ids, progress=progress,
                                    warmup=warmup)
    else:
        holders = min(len(requests), max(1, cap // max(1, int(plen.min()))))  # each holds at least its prompt
        cache = KVCache.for_pool(sched.pool, loaded.num_layers, loaded.kv_heads, loaded.head_dim, need + 1, holders,
                                 block, dtype=loaded.dtype, device=device)
        runner = ModelRunner(loaded.model, cache, tokens, kernel=kernel, cuda_graphs=graphs,
                             graph_sizes=ladder(min(256, len(requests))))  # no batch is larger than the run
        executor = Executor(runner, sched, mode=mode, eos_ids=loaded.eos_ids, progress=progress, warmup=warmup)
    return ExecSetup(loaded, requests, prompts, caps, sched, executor, Slo.from_config(cfg), kv_bytes, cap,
                     0 if wl is None else served_clipped(wl, idx),
                     len(prompts) if wl is None else len(wl.prompt_len),
                     clipped, 0 if wl is None else served_raised(wl, idx))
