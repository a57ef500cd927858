"""The KV cache a replay holds: the block count meta.json records, its `kv_cache_memory_bytes`, or vLLM's memory
accounting (memory x gpu_memory_utilization - weights - a non-KV reserve calibrated on the RTX 4090 run), per GPU
or per data-parallel rank; the recorded blocks are checked against the memory they must fit in."""
from __future__ import annotations

from s3sim.core.errors import ConfigError
from s3sim.hardware.capacity import rank_weight_bytes
from s3sim.validation import checks
from s3sim.validation.engine import Engine


# What vLLM keeps back besides weights and KV cache (activations of a max_num_batched_tokens forward pass, the
# sampler, CUDA graphs, the allocator's slack), calibrated on the RTX 4090 run (rtx4090-llama-3.1-8b), the one
# where every term is known: Llama-3.1-8B bf16 (8,030,261,248 params x 2 bytes), gpu_memory_utilization 0.9 of
# 25,250,627,584 bytes, 2,588 KV blocks of 16 tokens at 131,072 bytes per token:
#   floor(0.9 x 25,250,627,584) - 16,060,522,496 - 2,588 x 16 x 131,072 = 1,237,612,953 bytes (1.24 GB).
# One point, one model and one token budget (2,048): other models, budgets or TP degrees would keep back more or
# less; the number is applied to them unchanged (per GPU), which is an assumption.
NON_KV_RESERVE_BYTES = int(0.9 * 25_250_627_584) - 8_030_261_248 * 2 - 2588 * 16 * 131_072
RESERVE_NOTE = "non-KV reserve 1,237,612,953 bytes calibrated on the RTX 4090 run (2,588 blocks known there)"


def weights_per_gpu(engine: Engine, model) -> int:
    """Weight bytes one GPU holds: 1/tp of the model; under expert parallelism every shared weight and
    1/dp of the experts."""
    if engine.expert_parallel:
        return rank_weight_bytes(model, engine.dp)
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
