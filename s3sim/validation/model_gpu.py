"""The model and the GPU a run is priced as: --model / --gpu, else what meta.json and the profile's meta.yaml
name (a Hugging Face id, a device name), each checked against the other."""
from __future__ import annotations

from pathlib import Path

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import preset_of_device
from s3sim.hardware.models import preset_of_hf_name
from s3sim.latency.provenance import SPEC_FIELDS
from s3sim.validation.engine import Engine

# what a profile's operators depend on beyond the attention's shape: the MLP's and the experts' widths, the LM head's
# vocabulary (a model with Llama 3.1 8B's attention and another vocabulary is not priced by its profile)
SHAPE_FIELDS = SPEC_FIELDS + ("intermediate_size", "moe_intermediate_size", "n_experts", "experts_per_token",
                              "vocab_size")


def resolve_model(name: str | None, engine: Engine, beside: Path | None = None, run_dir: Path | None = None):
    """The model to price: `name` (--model), else the preset of meta.json's Hugging Face id, else the
    `config.json` in or beside the run folder `run_dir` (`beside`, where found: the shared runs keep the model's
    config next to `run/`)."""
    from s3sim.hardware.models import get_model
    if name is None:
        if engine.model is None:
            raise ConfigError("meta.json names no model: give --model (a preset name or a config.json)")
        name = preset_of_hf_name(engine.model)
        if name is None and beside is not None and beside.is_file():
            name = str(beside)
        if name is None:
            looked = (f" (looked for {str(run_dir / 'config.json')!r} and {str(run_dir.parent / 'config.json')!r})"
                      if run_dir is not None else "")
            raise ConfigError(f"model {engine.model!r} of meta.json has no preset here and no config.json is in or "
                              f"beside the run folder{looked}: give --model (a preset name or a config.json path)")
    return get_model(name)


def served_16_bit(spec) -> tuple[object, str]:
    """`spec` as the run served it: in 16 bits (meta.json's dtype is refused otherwise, and vLLM's `auto` casts a
    float32 config to 16 bits), with a note where its config.json said otherwise ('' where it did not)."""
    if spec.dtype_bytes == 2:
        return spec, ""
    from s3sim.hardware.models import with_dtype
    note = (f"note: {spec.source or spec.name} says torch_dtype of {spec.dtype_bytes} bytes a value; the run served "
            "it in 16 bits (meta.json's dtype is 16-bit or auto, which casts a float32 config to 16 bits), and so "
            "does the replay: 16-bit weights and KV")
    return with_dtype(spec, "bfloat16"), note


def profile_field(profile: Path | None, key: str) -> str | None:
    """A text field of a profile's meta.yaml (`gpu`: the device it was measured on, `model`), if it says."""
    if profile is None or not (profile / "meta.yaml").is_file():
        return None
    import yaml
    try:
        meta = yaml.safe_load((profile / "meta.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{str(profile / 'meta.yaml')!r}: cannot be read ({str(e).splitlines()[0]})") from None
    return meta.get(key) if isinstance(meta, dict) and isinstance(meta.get(key), str) else None


def profile_device(profile: Path | None) -> str | None:
    """The device a profile was measured on (its meta.yaml's `gpu`), if it says."""
    return profile_field(profile, "gpu")


def check_model_agrees(spec, given: str | None, engine: Engine, profile: Path | None) -> None:
    """The model priced must have the shape of the model the run (meta.json's `model`) and its profile
    (meta.yaml's `model`) name, where they name a preset: a disagreement is refused, naming both."""
    from s3sim.hardware.models import get_model
    who = f"--model {given}" if given is not None else f"meta.json's model {engine.model!r} ({spec.name})"
    for named, where in ((engine.model, "meta.json's model"), (profile_field(profile, "model"),
                                                               f"the profile's meta.yaml ({profile}) model")):
        preset = preset_of_hf_name(named)
        if preset is None or (given is None and where == "meta.json's model"):
            continue
        ref = get_model(preset)
        guessed = {a.split()[0] for m in (spec, ref) for a in m.assumed}  # a field its config left out: no evidence
        diff = [f"{f} {getattr(spec, f)} vs {getattr(ref, f)}" for f in SHAPE_FIELDS
                if f not in guessed and getattr(spec, f) != getattr(ref, f)]
        if diff:
            raise ConfigError(f"{who} disagrees with {where} {named!r} ({spec.name} vs its preset {preset}: "
                              f"{'; '.join(diff)}): price the model the run served ("
                              + ("leave --model out, or give its config.json)" if given is not None else
                                 "give a profile measured on it, or --profile none)" if spec.source.endswith(".json")
                                 else "give its config.json with --model, or a profile measured on it)"))


def check_gpu_agrees(name: str | None, engine: Engine, profile: Path | None) -> None:
    """--gpu, meta.json's device and the profile's device must be one GPU where they name a preset: a
    disagreement is refused, naming both (`--profile none --fit-from` is the way to borrow another GPU's fit)."""
    if name is not None:
        from s3sim.hardware.gpus import get_gpu
        get_gpu(name)  # an unknown preset is the error first
    named = ((engine.device_name, "meta.json's hardware.device_name"),
             (profile_device(profile), f"the profile's meta.yaml ({profile}) gpu"))
    known = [(preset_of_device(d), d, where) for d, where in named if preset_of_device(d)]
    for preset, device, where in known:
        if name is not None and preset != name:
            raise ConfigError(f"--gpu {name} disagrees with the run's GPU: {where} is {device!r} (preset {preset}); "
                              f"leave --gpu out, or price the run with {name}'s fitted efficiencies on its own GPU's "
                              f"datasheet: --profile none --fit-from {name}")
    if len(known) == 2 and known[0][0] != known[1][0]:
        (p0, d0, w0), (p1, d1, w1) = known
        raise ConfigError(f"{w0} is {d0!r} ({p0}) but {w1} is {d1!r} ({p1}): give a profile measured on the run's "
                          "GPU, or --profile none")
    (d0, w0), (d1, w1) = named
    if d0 and d1 and len(known) < 2 and " ".join(str(d0).lower().split()) != " ".join(str(d1).lower().split()):
        raise ConfigError(f"{w0} is {d0!r} but {w1} is {d1!r}: give a profile measured on the run's GPU, or "
                          "--profile none (with --gpu where the run's device has no preset)")


def resolve_gpu(name: str | None, engine: Engine, profile: Path | None, needed_for: str | None):
    """The GPU preset: --gpu, else the device meta.json (or the profile) names; (spec, how) or (None, None)
    when nothing needs one."""
    from s3sim.hardware.gpus import get_gpu
    if name is not None:
        spec = get_gpu(name)
        unknown = next((d for d in (engine.device_name, profile_device(profile)) if d and not preset_of_device(d)), None)
        if unknown is None:
            return spec, f"{name} (--gpu)"
        sized = engine.num_gpu_blocks is not None or engine.device_memory is not None or engine.kv_cache_memory is not None
        return spec, (f"{name} (--gpu), standing in for {unknown!r}, which has no preset: "
                      + ("" if sized else f"its memory ({spec.memory_bytes / 1e9:.0f} GB: meta.json records neither "
                                          "kv_cache.num_gpu_blocks nor hardware.device_total_memory_bytes), ")
                      + f"its link and, without a profile, its datasheet are {name}'s")
    device, where = ((engine.device_name, "meta.json") if engine.device_name else  # the run's own word first
                     (profile_device(profile), "the profile's meta.yaml"))
    preset = preset_of_device(device)
    if preset:
        return get_gpu(preset), f"{preset} ({device!r} in {where})"
    if needed_for is None:
        return None, None
    from s3sim.hardware.gpus import GPU_PRESETS
    seen = device
    raise ConfigError(f"{needed_for} needs the GPU, and {'device ' + repr(seen) if seen else 'the run'} names no "
                      f"preset: give --gpu (one of {', '.join(sorted(GPU_PRESETS))})")
