"""How many tokens of KV cache fit on the GPU(s) once the weights and a working-memory reserve are placed.
This bounds the batch: S3's gain comes from packing more requests into exactly this budget."""

from __future__ import annotations

import math

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import GpuSpec
from s3sim.hardware.models import ModelSpec


def kv_capacity_tokens(model: ModelSpec, gpu: GpuSpec, activation_reserve_frac: float = 0.1,
                       activation_reserve_bytes: int = 0, num_gpus: int = 1, tensor_parallel: int = 1,
                       weight_bytes: int | None = None) -> int:
    """Tokens of KV cache that fit in ``num_gpus`` x ``gpu`` (weights sharded, stored once in total).

    The reserve (``activation_reserve_frac`` of total memory plus ``activation_reserve_bytes``) stands for
    activations, the CUDA context and allocator fragmentation, which a serving engine also keeps back. Split
    over more tensor-parallel GPUs (``tensor_parallel``, of the ``num_gpus``) than the model has KV heads, each
    GPU still holds one whole KV head (vLLM replicates them), so a token takes tensor_parallel / KV heads times
    its KV bytes in all. ``weight_bytes``: the weights these GPUs hold, where that is not the whole model once
    (one data-parallel rank of an MoE model whose experts are split over the ranks).
    """
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
        raise ConfigError(f"num_gpus must be a positive integer, got {num_gpus!r}")
    if not 0 <= activation_reserve_frac < 1:
        raise ConfigError(f"activation_reserve_frac must be in [0, 1), got {activation_reserve_frac!r}")
    if activation_reserve_bytes < 0:
        raise ConfigError(f"activation_reserve_bytes must be >= 0, got {activation_reserve_bytes!r}")
    total = gpu.memory_bytes * num_gpus
    reserve = activation_reserve_frac * total + activation_reserve_bytes
    weights = model.weight_bytes if weight_bytes is None else weight_bytes
    free = total - weights - reserve
    if (isinstance(tensor_parallel, bool) or not isinstance(tensor_parallel, int)
            or not 1 <= tensor_parallel <= num_gpus):
        raise ConfigError(f"tensor_parallel must be a positive integer of at most num_gpus={num_gpus}, got "
                          f"{tensor_parallel!r}")
    per_token = model.kv_bytes_per_token * max(1, tensor_parallel // model.n_kv_heads)  # replicated KV heads
    tokens = int(free // per_token) if free > 0 else 0
    if tokens < 1:
        used = f"weights {weights / 1e9:.1f} GB + activation reserve {reserve / 1e9:.1f} GB"
        verdict = f"> {total / 1e9:.1f} GB of GPU memory" if free < 0 else \
            f"leave less than one token of KV cache ({per_token} bytes) in {total / 1e9:.1f} GB"
        raise ConfigError(f"model '{model.name}' does not fit on {num_gpus} x {gpu.name}: {used} {verdict}")
    return tokens


def rank_weight_bytes(model: ModelSpec, ranks: int, field: str = "data_parallel_size") -> int:
    """Weight bytes one expert-parallel rank's GPU holds: every shared weight and its share of the experts (the
    largest share, ceil(E / ranks) of E, where the ranks do not divide them); `field` names the setting in the
    one-line error for more ranks than experts."""
    if ranks > model.n_experts:
        raise ConfigError(f"{field}={ranks}: {model.name} has {model.n_experts} experts, fewer than the ranks that would "
                          "split them")
    share = math.ceil(model.n_experts / ranks)
    return (model.n_params - model.expert_params + model.expert_params * share // model.n_experts) * model.dtype_bytes
