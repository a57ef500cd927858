"""Model shapes: the few numbers that decide weight memory, KV-cache bytes per token and FLOPs per token.

Presets are data (``s3sim/hardware/presets/<name>.yaml``): a Hugging Face ``config.json`` with the
published parameter count where there is one. ``ModelSpec.from_hf_dict`` reads them and, through
``ModelSpec.from_hf_config``, any other decoder-only ``config.json``: one way in for both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

from s3sim.core.errors import ConfigError
from s3sim.hardware.presets import preset_names, preset_path, read_preset
from s3sim.inputs import note

_DTYPE_BYTES = {"float16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2, "float32": 4, "fp32": 4, "float": 4}
# Families with a gated (SwiGLU) MLP: gate, up and down projections instead of two matrices.
_GATED_MLP = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma"}
# Families whose lm_head shares the embedding matrix when the config does not say otherwise.
_TIED_BY_DEFAULT = {"opt", "gpt2"}
# Families with a learned position-embedding table (the others use rotary embeddings).
_LEARNED_POSITIONS = {"opt", "gpt2"}


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, described only as far as serving cost needs."""

    name: str
    n_params: int
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    dtype_bytes: int = 2
    source: str = ""
    # mixture of experts (0 for a dense model): the experts' parameters over all layers (counted in
    # n_params), experts per MoE layer and experts each token is routed to
    expert_params: int = 0
    n_experts: int = 0
    experts_per_token: int = 0
    # the MLP's shape, for pricing it operator by operator (`latency=datasheet`): the dense MLP's width (0 when
    # every layer is a mixture of experts), one expert's width, and whether it is gated (gate, up, down)
    intermediate_size: int = 0
    moe_intermediate_size: int = 0
    gated_mlp: bool = False
    assumed: tuple = ()  # what its config did not say and was assumed (e.g. "intermediate_size = 4 x hidden_size")

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"model name must be a non-empty string, got {self.name!r}")
        moe = ("expert_params", "n_experts", "experts_per_token", "intermediate_size", "moe_intermediate_size")
        for f in moe:
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"model '{self.name}': {f} must be a non-negative integer, got {value!r}")
        if self.n_experts and not (0 < self.experts_per_token <= self.n_experts and 0 < self.expert_params < self.n_params):
            raise ConfigError(f"model '{self.name}': a mixture of experts needs 0 < experts_per_token <= n_experts "
                              f"and 0 < expert_params < n_params")
        for f in fields(self):
            if f.name in ("name", "source", "assumed", "gated_mlp", *moe):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model '{self.name}': {f.name} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model '{self.name}': n_kv_heads must divide n_heads={self.n_heads}, got {self.n_kv_heads}"
            )

    @property
    def weight_bytes(self) -> int:
        """Every parameter is in memory, every expert included."""
        return self.n_params * self.dtype_bytes

    @property
    def active_params(self) -> int:
        """Parameters one token passes through (its experts only, for a mixture of experts)."""
        if not self.n_experts:
            return self.n_params
        return self.n_params - self.expert_params + self.expert_params * self.experts_per_token // self.n_experts

    def weight_bytes_read(self, tokens):
        """Weight bytes one iteration of `tokens` tokens reads: the dense part, and of the experts those its
        tokens are routed to, expected over uniform routing: n (1 - (1 - k/n)^tokens) of n per layer."""
        if not self.n_experts:
            return self.weight_bytes
        import numpy as np
        touched = 1.0 - (1.0 - self.experts_per_token / self.n_experts) ** np.asarray(tokens, dtype=np.float64)
        return (self.n_params - self.expert_params + self.expert_params * touched) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer and KV head: what one cached token costs in GPU memory."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @classmethod
    def from_hf_config(cls, path: str | Path) -> ModelSpec:
        """Read a Hugging Face ``config.json`` (the file or its folder); the parameter count is
        estimated from the shape (embeddings, attention and MLP matrices; norms and biases ignored)."""
        p = Path(path)
        file = p / "config.json" if p.is_dir() else p
        if not file.is_file():
            raise ConfigError(f"model config: no such file {str(file)!r} (expected a config.json or its folder)")
        note(file)
        try:
            cfg = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"model config {str(file)!r}: invalid JSON ({e})") from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"model config {str(file)!r}: expected a JSON object at the top level")
        name = str(cfg.get("_name_or_path") or file.parent.name or file.stem)
        spec = cls.from_hf_dict(cfg, name, source=str(file), where=str(file))
        # what a user's file leaves unsaid is said (the presets state their serving dtype: float16)
        assumed = []
        if not any(k in cfg for k in ("intermediate_size", "ffn_dim", "n_inner", "moe_intermediate_size")):
            assumed.append("intermediate_size = 4 x hidden_size")  # (n_inner: null is GPT-2/J's own rule for it)
        if not any(k in cfg for k in ("torch_dtype", "dtype")):
            assumed.append("torch_dtype = float16")
        assumed += unmodelled(cfg, spec)
        return replace(spec, assumed=tuple(assumed))

    @classmethod
    def from_hf_dict(cls, cfg: dict, name: str, n_params: int | None = None, source: str = "",
                     where: str = "") -> ModelSpec:
        """The model a Hugging Face config (as a dict) describes; ``n_params`` (a published count)
        replaces the estimate from the shape. Errors name ``where``: the file the dict came from."""
        where = where or name

        def get(*keys: str, default=None):
            for k in keys:
                if cfg.get(k) is not None:
                    return cfg[k]
            if default is None:
                raise ConfigError(f"model config {where!r}: missing key {' / '.join(keys)}")
            return default

        def as_int(value, key: str) -> int:
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or isinstance(value, float) and not math.isfinite(value) or value != int(value)):
                raise ConfigError(f"model config {where!r}: {key} must be an integer, got {value!r}")
            return int(value)

        family = str(cfg.get("model_type", "")).lower()
        n_layers = as_int(get("num_hidden_layers", "n_layer", "num_layers"), "num_hidden_layers")
        hidden = as_int(get("hidden_size", "n_embd", "d_model"), "hidden_size")
        n_heads = as_int(get("num_attention_heads", "n_head"), "num_attention_heads")
        n_kv_heads = as_int(get("num_key_value_heads", default=n_heads), "num_key_value_heads")
        head_dim = as_int(get("head_dim", default=hidden // n_heads if n_heads > 0 else 0), "head_dim")
        vocab = as_int(get("vocab_size"), "vocab_size")
        max_ctx = as_int(get("max_position_embeddings", "n_positions"), "max_position_embeddings")
        inter = as_int(get("intermediate_size", "ffn_dim", "n_inner", default=4 * hidden), "intermediate_size")
        dtype = str(get("torch_dtype", "dtype", default="float16")).lower().removeprefix("torch.")
        if dtype not in _DTYPE_BYTES:
            raise ConfigError(
                f"model config {where!r}: torch_dtype {dtype!r} not understood (valid: float16, bfloat16, float32)"
            )
        experts = cfg.get("num_experts") or cfg.get("num_local_experts") or cfg.get("n_routed_experts") or 0
        experts = as_int(experts, "num_experts")
        gated = family in _GATED_MLP or experts > 0  # MoE experts are gated MLPs (Mixtral, Qwen, DeepSeek)
        per_token = expert_params = moe_inter = 0
        if experts:  # a mixture of experts: every MoE layer holds `experts` MLPs, a token passes `per_token`
            per_token = as_int(get("num_experts_per_tok"), "num_experts_per_tok")
            moe_inter = as_int(get("moe_intermediate_size", default=inter), "moe_intermediate_size")
            step = cfg.get("decoder_sparse_step")  # every step-th layer is a mixture of experts (0: no such layer)
            if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
                raise ConfigError(f"model config {where!r}: decoder_sparse_step must be a positive integer (every "
                                  f"how many layers one is a mixture of experts), got {step!r}")
            if cfg.get("n_shared_experts") or cfg.get("shared_expert_intermediate_size") or cfg.get("mlp_only_layers") \
                    or cfg.get("first_k_dense_replace") or (step or 1) != 1:
                raise ConfigError(f"model config {where!r}: shared experts and dense layers among MoE layers are not "
                                  f"modelled (only every layer a mixture of experts)")
            expert_params = n_layers * experts * (3 if gated else 2) * hidden * moe_inter
            inter = 0  # no dense MLP
        if n_params is None:
            tied = bool(cfg.get("tie_word_embeddings", family in _TIED_BY_DEFAULT))
            n_params = estimate_params(
                n_layers, hidden, n_heads, n_kv_heads, head_dim, vocab, inter,
                gated_mlp=gated, tied_embeddings=tied,
                learned_positions=max_ctx if family in _LEARNED_POSITIONS else 0,
            ) + expert_params + n_layers * hidden * experts  # experts and their routers
        try:
            return cls(name, n_params, n_layers, hidden, n_heads, n_kv_heads, head_dim, vocab, max_ctx,
                       _DTYPE_BYTES[dtype], source=source, expert_params=expert_params, n_experts=experts,
                       experts_per_token=per_token, intermediate_size=inter, moe_intermediate_size=moe_inter,
                       gated_mlp=gated)
        except ConfigError as e:  # say it in the config's own words: its file and JSON key
            msg = str(e).replace(f"model '{name}': ", f"model config {where!r}: ", 1)
            for field, key in _JSON_KEYS.items():
                msg = msg.replace(f": {field} ", f": {key} ", 1)
            raise ConfigError(msg) from None


def unmodelled(cfg: dict, spec: "ModelSpec") -> list[str]:
    """What a config.json says that the cost model does not price, each said as what was assumed instead:
    weight quantization (weights and KV at the config's dtype) and a sliding attention window (every layer
    keeps and reads the whole context's KV, as full attention does)."""
    out = []
    q = cfg.get("quantization_config")
    if isinstance(q, dict) and q:
        what = ", ".join(f"{k} {q[k]}" for k in ("quant_method", "bits", "weight_bits") if k in q) or "present"
        out.append(f"unquantized weights at {spec.dtype_bytes} bytes (quantization_config: {what}, not modelled)")
    window = cfg.get("sliding_window")
    if isinstance(window, int) and not isinstance(window, bool) and 0 < window < spec.max_context \
            and cfg.get("use_sliding_window", True) is not False:
        out.append(f"full attention over the whole context (sliding_window {window}, not modelled)")
    return out


def estimate_params(n_layers: int, hidden: int, n_heads: int, n_kv_heads: int, head_dim: int, vocab: int,
                    intermediate: int, gated_mlp: bool, tied_embeddings: bool, learned_positions: int = 0) -> int:
    """Matrix parameters of a decoder-only transformer; norms and biases are under 0.1% and left out."""
    q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
    attention = hidden * q_dim + 2 * hidden * kv_dim + q_dim * hidden
    mlp = (3 if gated_mlp else 2) * hidden * intermediate
    embeddings = vocab * hidden * (1 if tied_embeddings else 2) + learned_positions * hidden
    return n_layers * (attention + mlp) + embeddings


def preset_spec(path: str | Path) -> ModelSpec:
    """The model of one preset file, read as the Hugging Face config it holds (``s3sim.hardware.presets``)."""
    p = read_preset(path)
    return ModelSpec.from_hf_dict(p.config, p.name, p.n_params, p.source, where=str(p.path))


MODEL_PRESETS: dict[str, ModelSpec] = {name: preset_spec(preset_path(name)) for name in preset_names()}


def _hf_names() -> dict[str, str]:
    """Hugging Face id (lower case) -> preset, from each preset's `hf_names`; one id in two presets is refused."""
    names: dict[str, str] = {}
    for preset in preset_names():
        for hf in read_preset(preset_path(preset)).hf_names:
            if hf in names:
                raise ConfigError(f"model presets {names[hf]} and {preset} both claim the Hugging Face id {hf!r}")
            names[hf] = preset
    return names


HF_NAMES = _hf_names()


def preset_of_hf_name(name) -> str | None:
    """The preset a recorded Hugging Face model id stands for (case-insensitive), or None."""
    return HF_NAMES.get(str(name).strip().lower()) if name else None


DTYPES = ("float16", "bfloat16", "float32")
# ModelSpec fields by the config.json key they come from (for errors about a config file)
_JSON_KEYS = {"n_layers": "num_hidden_layers", "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads",
              "max_context": "max_position_embeddings", "n_params": "the parameter count (from the shape)",
              "n_experts": "num_experts", "experts_per_token": "num_experts_per_tok"}


def with_dtype(model: ModelSpec, dtype: str | None) -> ModelSpec:
    """`model` served in `dtype` (weights and KV), whatever its config says; None keeps the config's."""
    if dtype is None:
        return model
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype '{dtype}' is unknown; valid: {', '.join(DTYPES)} (or null: the config's)")
    return replace(model, dtype_bytes=_DTYPE_BYTES[dtype],
                   assumed=tuple(a for a in model.assumed if not a.startswith("torch_dtype")))


def get_model(name_or_path: str | Path) -> ModelSpec:
    """A preset by name, or a model read from a Hugging Face config.json (file or folder)."""
    key = str(name_or_path)
    if key in MODEL_PRESETS:
        return MODEL_PRESETS[key]
    if Path(key).exists():
        return ModelSpec.from_hf_config(key)
    if key.endswith(".json") or "/" in key or "\\" in key:  # meant as a path: say it names nothing
        raise ConfigError(f"model {key!r}: no such file or folder (a Hugging Face config.json, or a folder holding "
                          f"one; or a preset: {', '.join(sorted(MODEL_PRESETS))})")
    raise ConfigError(
        f"unknown model {key!r}: valid presets are {', '.join(sorted(MODEL_PRESETS))}, or a path to a config.json"
    )
