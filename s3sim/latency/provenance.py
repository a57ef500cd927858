"""A measured profile is a model on a device: pricing another model or GPU with it is refused, not ignored.

A profile records what it measured (a vLLM profile's `meta.yaml`: the device name and the shapes it
overrode; the executor's: `model_spec` and the device). `check_profile` compares that with the run's
model and GPU and raises one line naming both when they disagree. What a profile does not record (a CPU
device, a GPU without a preset, a profile without metadata) cannot be compared and is let through.
"""
from __future__ import annotations

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import preset_of_device

SPEC_FIELDS = ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim")


def check_profile(meta: dict, model, gpu, what: str, where: str) -> None:
    """Refuse pricing `model` on `gpu` with a profile (`what`, read from `where`) of another model or GPU."""
    if not meta:
        return
    measured = meta.get("model") or "an unnamed model"
    spec = meta.get("model_spec")
    if model is not None and isinstance(spec, dict):
        diff = [f"{f} {spec[f]} vs {getattr(model, f)}" for f in SPEC_FIELDS
                if f in spec and spec[f] != getattr(model, f, spec[f])]
        if diff:
            raise ConfigError(f"{what}: {where} measured {measured}, not model={model.name} ({'; '.join(diff)}); "
                              f"give a profile of {model.name} or the model it measured")
    over = (meta.get("engine_effective") or {}).get("hf_overrides") or {}
    if model is not None and {"num_attention_heads", "num_key_value_heads"} <= set(over):
        # a tensor-parallel profile overrides a shard's shape: compare ratios, which sharding keeps
        h, kv, inter = over["num_attention_heads"], over["num_key_value_heads"], over.get("intermediate_size")
        same = h * model.n_kv_heads == kv * model.n_heads
        if inter and model.intermediate_size:
            same &= inter * model.n_heads == model.intermediate_size * h
        if not same:
            raise ConfigError(f"{what}: {where} measured {measured} ({h} attention heads, {kv} KV heads, "
                              f"intermediate {inter} per shard), not the shape of model={model.name} "
                              f"({model.n_heads}, {model.n_kv_heads}, {model.intermediate_size}); give a profile of "
                              f"{model.name} or the model it measured")
    device = meta.get("gpu") or meta.get("device_name")
    preset = preset_of_device(device)
    if gpu is not None and preset is not None and preset != gpu.name:
        raise ConfigError(f"{what}: {where} was measured on {device} (gpu={preset}), not gpu={gpu.name}; set "
                          f"gpu={preset}, or price gpu={gpu.name} from its datasheet (latency=datasheet)")
