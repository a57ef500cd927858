"""The executor's operators, one by one, written as an operator profile in the format of the shared vLLM runs
(`profile/meta.yaml` and `profile/tp1/{dense,attention,per_sequence}.csv`), so `latency=operators`
(`s3sim.latency.operators.OperatorLatency`) prices this executor on this device the way it prices vLLM.

One decoder layer of the loaded model is timed operator by operator on synthetic inputs of the right shape
(random hidden states `[1, tokens, hidden]` in the model's dtype on the device; the values do not change
the cost). What each row times:

dense.csv (`layer, tokens, time_us`), by the tokens in the batch:
- `qkv_proj`: `q_proj`, `k_proj` and `v_proj` of the hidden states (three matmuls);
- `rotary_emb`: the model's `rotary_emb(x, position_ids)` (cos and sin of every position) and the modeling
  module's `apply_rotary_pos_emb` on q `[1, H, T, D]` and k `[1, KVH, T, D]`. Hugging Face computes cos and
  sin once per forward and applies them in every layer; the profile, like vLLM's, charges both per layer;
- `o_proj`: the output projection of `[1, T, H * D]`;
- `gate_up_proj`: `gate_proj` and `up_proj` of the hidden states;
- `act_fn`: the MLP's activation on `[1, T, intermediate]`;
- `down_proj`: the down projection of `[1, T, intermediate]`;
- `layernorm`: the residual add and one RMSNorm (`input_layernorm`) of its sum, which is what stands
  before each of the two norms of a decoder layer (vLLM's fused add-and-norm does the same work);
- `embedding`: `embed_tokens` on `[1, T]` token ids;
- `final_layernorm`: the model's final norm.

attention.csv (`prefill_chunk, kv_prefill, n_decode, kv_decode, time_us`): one call of
`s3exec.attention.paged_attention` for layer 0 (its KV writes into the paged cache included) on a real
`StepLayout` from `ModelRunner.layout` with the executor's attention kernel (`sdpa` or `flex`; building the
layout and its masks is not timed): `n_decode` decodes with `kv_decode` tokens cached each, and at most one
prefill chunk of `prefill_chunk` tokens whose first `kv_prefill` tokens are already cached. The grid is the
shared runs': decode-only (every decode count by every context), prefill-only (every chunk by every prefix,
0 included) and every mixed combination of the two.

per_sequence.csv (`layer, sequences, time_us`): `lm_head` on `[1, sequences, hidden]`, and `sampler`, the
greedy argmax over `[sequences, vocab]` logits and its copy to a Python list (as `ModelRunner` samples).

Each time is the median of `repeats` timed samples after `warmup` untimed ones, sampled again while they add
up to less than `min_seconds` (at most 50 samples). On CUDA the device is synchronised around each sample,
and a sample is `calls` back-to-back calls (default 8 on CUDA, 1 on CPU) divided by their number, so a small
kernel is not charged a whole synchronisation: what a step of many launches in a row costs per operator.
Everything runs eagerly, as in the shared runs (CUDA graphs off there too): a decode step the executor
replays from a CUDA graph costs less than the sum.
"""
from __future__ import annotations

import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from s3exec.lab.profile import sync_device
from s3sim.commandline import Parser, exit_code, out_path
from s3sim.core.errors import ConfigError

PROFILER_VERSION = "1.0.0"
BLOCK_SIZE = 16
DENSE_OPERATORS = ("qkv_proj", "rotary_emb", "o_proj", "gate_up_proj", "act_fn", "down_proj", "layernorm",
                   "embedding", "final_layernorm")
SEQUENCE_OPERATORS = ("lm_head", "sampler")
ATTENTION_COLUMNS = ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "time_us")


def steps(*ranges: tuple[int, int, int]) -> tuple[int, ...]:
    """Every `step`-th count from `lo` to `hi` of each `(lo, hi, step)`, in order, without repeats."""
    return tuple(dict.fromkeys(x for lo, hi, step in ranges for x in range(lo, hi + 1, step)))


def doubling(lo: int, hi: int) -> tuple[int, ...]:
    """lo, 2 lo, 4 lo, ... up to hi."""
    out = [lo]
    while out[-1] * 2 <= hi:
        out.append(out[-1] * 2)
    return tuple(out)


# Grids shaped like the shared vLLM profiles' (tokens 1..16 one by one, then by 4 to 64, then by 16), bounded
# so the tiny model runs in seconds on a CPU core; pass larger ones for a real model on a GPU.
TOKENS = steps((1, 16, 1), (20, 64, 4), (80, 512, 16))
SEQUENCES = steps((1, 16, 1), (20, 64, 4), (80, 256, 16))
CHUNKS = doubling(16, 256)  # prefill chunks beside 0 (no prefill)
DECODES = doubling(1, 32)  # decode counts beside 0 (no decodes)
CONTEXTS = doubling(16, 256)  # cached tokens: decode contexts, and prefixes beside 0


def median_seconds(fn, device: str, warmup: int = 1, repeats: int = 3, min_seconds: float = 0.0, calls: int = 1,
                   max_samples: int = 50) -> float:
    """Median seconds of one call of `fn` over `repeats` samples (after `warmup` untimed calls), more while
    the samples add up to less than `min_seconds` (at most `max_samples`); each sample times `calls` calls
    in a row between device synchronisations and divides by `calls`."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeats or (sum(times) * calls < min_seconds and len(times) < max(max_samples, repeats)):
        sync_device(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync_device(device)
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def _grid(values, name: str, at_least: int = 1) -> tuple[int, ...]:
    """Sorted distinct positive counts of a grid axis (a 0 is dropped: the profile adds it where it belongs)."""
    try:
        values = list(values)
        out = sorted({int(v) for v in values})
        whole = all(int(v) == v for v in values)
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise ConfigError(f"operator profile grid {name} must be whole numbers, got {values!r}")
    if out and out[0] < 0:
        raise ConfigError(f"operator profile grid {name} must be non-negative, got {out[0]}")
    out = [v for v in out if v > 0]
    if len(out) < at_least:
        raise ConfigError(f"operator profile grid {name} needs at least {at_least} positive "
                          f"value{'s' if at_least > 1 else ''}, got {values!r}")
    return tuple(out)


def _part(obj, path: str, what: str, model=None, where: str = ""):
    """`obj.<path>` (dotted), or a one-line ConfigError naming the operator that needs it."""
    cur = obj
    for name in path.split("."):
        cur = getattr(cur, name, None)
        if cur is None:
            raise ConfigError(f"model {type(model or obj).__name__} has no {where}{path} (needed for {what}): the "
                              f"operator profile needs a Llama-like decoder")
    return cur


def _operators(model) -> dict:
    """The modules and functions of layer 0 and of the model that the profile times."""
    layer = _part(model, "model.layers", "every operator")[0]
    attn = _part(layer, "self_attn", "attention", model, "model.layers[0].")
    names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
             "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj", "act": "mlp.act_fn",
             "norm": "input_layernorm"}
    ops = {k: _part(layer, p, p.split(".")[-1], model, "model.layers[0].") for k, p in names.items()}
    ops.update(attn=attn, embed=_part(model, "model.embed_tokens", "embedding"),
               final_norm=_part(model, "model.norm", "final_layernorm"),
               rotary=_part(model, "model.rotary_emb", "rotary_emb"), lm_head=_part(model, "lm_head", "lm_head"))
    apply = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
    if apply is None:
        raise ConfigError(f"model {type(model).__name__}: its modeling module has no apply_rotary_pos_emb "
                          f"(needed for rotary_emb): the operator profile needs a Llama-like decoder")
    if getattr(attn, "layer_idx", None) is None:
        raise ConfigError(f"model {type(model).__name__}: its attention has no layer_idx, which the paged "
                          f"attention reads")
    ops["apply_rotary"] = apply
    return ops


def _dense(loaded, ops, device, tokens, timer) -> list[tuple[str, int, float]]:
    import torch

    dt_ = loaded.dtype
    hidden = ops["q"].in_features
    heads_dim = ops["o"].in_features
    inter = ops["down"].in_features
    h, kvh, d = heads_dim // loaded.head_dim, loaded.kv_heads, loaded.head_dim
    rows = []
    for t in tokens:
        x = torch.randn(1, t, hidden, dtype=dt_, device=device)
        r = torch.randn(1, t, hidden, dtype=dt_, device=device)
        a = torch.randn(1, t, heads_dim, dtype=dt_, device=device)
        g = torch.randn(1, t, inter, dtype=dt_, device=device)
        q = torch.randn(1, h, t, d, dtype=dt_, device=device)
        k = torch.randn(1, kvh, t, d, dtype=dt_, device=device)
        pos = torch.arange(t, device=device)[None]
        ids = torch.randint(0, loaded.vocab_size, (1, t), device=device)

        def rotary():
            cos, sin = ops["rotary"](x, pos)
            return ops["apply_rotary"](q, k, cos, sin)

        fns = {"qkv_proj": lambda: (ops["q"](x), ops["k"](x), ops["v"](x)),
               "rotary_emb": rotary,
               "o_proj": lambda: ops["o"](a),
               "gate_up_proj": lambda: (ops["gate"](x), ops["up"](x)),
               "act_fn": lambda: ops["act"](g),
               "down_proj": lambda: ops["down"](g),
               "layernorm": lambda: ops["norm"](x + r),
               "embedding": lambda: ops["embed"](ids),
               "final_layernorm": lambda: ops["final_norm"](x)}
        rows += [(name, t, timer(fns[name])) for name in DENSE_OPERATORS]
    return rows


def _per_sequence(loaded, ops, device, sequences, timer) -> list[tuple[str, int, float]]:
    import torch

    hidden = ops["lm_head"].in_features
    rows = []
    for s in sequences:
        x = torch.randn(1, s, hidden, dtype=loaded.dtype, device=device)
        logits = torch.randn(s, loaded.vocab_size, dtype=loaded.dtype, device=device)
        rows.append(("lm_head", s, timer(lambda: ops["lm_head"](x))))
        rows.append(("sampler", s, timer(lambda: logits.argmax(-1).tolist())))
    return rows


def attention_points(chunks, decodes, contexts) -> list[tuple[int, int, int, int]]:
    """(prefill_chunk, kv_prefill, n_decode, kv_decode) of the shared runs' grid: decode-only, prefill-only
    (prefixes 0 and `contexts`) and mixed, sorted."""
    prefixes = (0, *contexts)
    pts = [(0, 0, n, kd) for n in decodes for kd in contexts]
    pts += [(c, kp, 0, 0) for c in chunks for kp in prefixes]
    pts += [(c, kp, n, kd) for c in chunks for kp in prefixes for n in decodes for kd in contexts]
    return sorted(pts)


def _attention(loaded, ops, device, points, kernel, timer) -> list[tuple[int, int, int, int, float]]:
    import torch

    from s3exec.attention import paged_attention
    from s3exec.kv_cache import KVCache
    from s3exec.model_runner import ModelRunner

    attn = ops["attn"]
    bs = BLOCK_SIZE
    h, kvh, d = ops["o"].in_features // loaded.head_dim, loaded.kv_heads, loaded.head_dim
    blocks = max(n * -(-(kd + 1) // bs) + -(-(kp + c) // bs) for c, kp, n, kd in points)
    longest = max(max(kd + 1, kp + c) for c, kp, n, kd in points)
    # layer 0 only: a cache of `layer_idx + 1` layers (1 for layer 0)
    cache = KVCache(int(attn.layer_idx) + 1, kvh, d, blocks + 1, bs, longest + bs, dtype=loaded.dtype,
                    device=device)
    runner = ModelRunner(loaded.model, cache, kernel=kernel)
    scale = getattr(attn, "scaling", None)  # None: SDPA's 1 / sqrt(head size)
    rng = np.random.default_rng(0)
    rows = []
    for c, kp, n, kd in points:
        decode = []
        for i in range(n):
            r = cache.allocate(10**9 + i, kd)
            cache.length[r] = kd
            decode.append((10**9 + i, int(rng.integers(0, loaded.vocab_size))))
        prefill = []
        if c:
            if kp:
                r = cache.allocate(-1, kp)
                cache.length[r] = kp
            prefill = [(-1, rng.integers(0, loaded.vocab_size, c).tolist(), kp)]
        step = runner.layout(decode, prefill)[3]
        t = n + c
        q = torch.randn(1, h, t, d, dtype=loaded.dtype, device=device)
        k = torch.randn(1, kvh, t, d, dtype=loaded.dtype, device=device)
        v = torch.randn(1, kvh, t, d, dtype=loaded.dtype, device=device)
        s = timer(lambda: paged_attention(attn, q, k, v, None, scaling=scale, s3exec_step=step))
        rows.append((c, kp, n, kd, s))
        for i in range(n):
            cache.release(10**9 + i)
        if c:
            cache.release(-1)
    return rows


_VARIANTS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _doubles(values) -> bool:
    v = list(values)
    return len(v) > 1 and all(b == 2 * a for a, b in zip(v, v[1:]))


def _factor(values) -> float | None:
    """2.0 for a doubling axis (as the shared meta.yaml says it), else None."""
    return 2.0 if _doubles(values) else None


def describe_axis(values, zero: bool = True) -> str:
    """The shared meta.yaml's way of writing a grid axis: `0, 16-2048 x2` for a doubling series, else a list."""
    v = list(values)
    head = "0, " if zero else ""
    if _doubles(v):
        return f"{head}{v[0]}-{v[-1]} x2"
    return head + ", ".join(str(x) for x in v)


def measure_operators(loaded, device: str = "cpu", *, tokens=TOKENS, sequences=SEQUENCES, chunks=CHUNKS,
                      decodes=DECODES, contexts=CONTEXTS, warmup: int = 1, repeats: int = 3,
                      min_seconds: float = 0.0, calls: int | None = None, kernel: str = "auto", log=print):
    """Time the operators of one decoder layer of `loaded` (an `s3exec.models.LoadedModel` on `device`) over
    the grids (see the module doc): returns the tables of dense.csv, attention.csv and per_sequence.csv and
    the metadata of meta.yaml. `kernel` is the attention kernel (`executor.attention`: auto, sdpa or flex)."""
    import torch
    import transformers

    tokens = _grid(tokens, "tokens")
    sequences = _grid(sequences, "sequences")
    chunks = _grid(chunks, "chunks")
    decodes = _grid(decodes, "decodes")
    contexts = _grid(contexts, "contexts", at_least=2)  # the simulator interpolates between decode contexts
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"operator profile needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    device = str(device)
    from s3exec.config import attention_kernel

    kernel = attention_kernel(kernel, device)
    calls = int(calls or (8 if device.startswith("cuda") else 1))
    ops = _operators(loaded.model)

    def timer(fn):
        return median_seconds(fn, device, warmup, repeats, min_seconds, calls)

    points = attention_points(chunks, decodes, contexts)
    t0 = time.perf_counter()
    with torch.inference_mode():
        dense = _dense(loaded, ops, device, tokens, timer)
        log(f"  dense: {len(tokens)} token counts x {len(DENSE_OPERATORS)} operators "
            f"({time.perf_counter() - t0:.1f} s)")
        per_seq = _per_sequence(loaded, ops, device, sequences, timer)
        log(f"  per sequence: {len(sequences)} counts x {len(SEQUENCE_OPERATORS)} operators "
            f"({time.perf_counter() - t0:.1f} s)")
        attention = _attention(loaded, ops, device, points, kernel, timer)
        log(f"  attention: {len(points)} batch shapes ({time.perf_counter() - t0:.1f} s)")
    us = 1e6
    dense_df = pd.DataFrame([(o, t, s * us) for o, t, s in dense], columns=["layer", "tokens", "time_us"])
    seq_df = pd.DataFrame([(o, n, s * us) for o, n, s in per_seq], columns=["layer", "sequences", "time_us"])
    att_df = pd.DataFrame([(*p, s * us) for *p, s in attention], columns=list(ATTENTION_COLUMNS))
    dense_df = dense_df.sort_values(["layer", "tokens"], ignore_index=True)
    seq_df = seq_df.sort_values(["layer", "sequences"], ignore_index=True)
    att_df = att_df.sort_values(list(ATTENTION_COLUMNS[:-1]), ignore_index=True)
    cuda = device.startswith("cuda")
    from s3exec.lab.profile import model_spec

    dtype = str(loaded.dtype).removeprefix("torch.")
    meta = {
        "profiler_version": PROFILER_VERSION,
        "engine": "s3exec",
        "torch_version": str(torch.__version__),
        "transformers_version": str(transformers.__version__),
        "cuda_version": str(torch.version.cuda) if cuda else None,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if cuda else "cpu",
        "device": device,
        "threads": torch.get_num_threads(),
        "profiled_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "architecture": str(getattr(loaded.model.config, "model_type", type(loaded.model).__name__)),
        "model": str(loaded.name),
        "variant": _VARIANTS.get(dtype, dtype),
        "tp_degrees": [1],
        "block_size": BLOCK_SIZE,
        "attention_kernel": kernel,
        "attention_grid": {"max_kv": int(max(contexts)), "chunk_factor": _factor(chunks),
                           "kv_factor": _factor(contexts), "chunks": describe_axis(chunks),
                           "n_decode": describe_axis(decodes), "kv": describe_axis(contexts)},
        "measurement_iterations": int(repeats),
        "warmup_iterations": int(warmup),
        "calls_per_sample": calls,
        "min_seconds": float(min_seconds),
        "model_spec": model_spec(loaded),
    }
    return dense_df, att_df, seq_df, meta


def write_operator_profile(dense: pd.DataFrame, attention: pd.DataFrame, per_sequence: pd.DataFrame, meta: dict,
                           out: Path) -> Path:
    """`out/meta.yaml` and `out/tp1/{dense,attention,per_sequence}.csv`, each written atomically; returns `out`."""
    import yaml

    from s3sim.writers import write_csv, write_text

    out = Path(out)
    tp1 = out / "tp1"
    tp1.mkdir(parents=True, exist_ok=True)
    (out / "meta.yaml").unlink(missing_ok=True)  # written last: a folder without it is not a finished profile
    for df, name in ((dense, "dense"), (attention, "attention"), (per_sequence, "per_sequence")):
        write_csv(df.round({"time_us": 4}), tp1 / f"{name}.csv")
    write_text(yaml.safe_dump(meta, sort_keys=False), out / "meta.yaml")
    return out


def main(argv=None) -> int:
    """`python -m s3exec.lab.operator_profile --out DIR [overrides of conf/exec.yaml]`: the model of the executor
    config (executor.model, device, dtype, attention) profiled operator by operator into DIR."""
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/exec.yaml (executor.model=smollm2 ...)")
    ap.add_argument("--out", type=out_path, required=True, help="the profile folder (meta.yaml, tp1/*.csv)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=0.01, help="sample a point until its samples add up to this")
    args = ap.parse_args(argv)
    return exit_code("s3exec.lab.operator_profile", lambda: _profile_into(args))


def _profile_into(args) -> None:
    from s3exec.config import load_executor_model
    from s3exec.lab.bench import compose
    from s3sim.spec import get

    cfg = compose(args.overrides)
    loaded, device = load_executor_model(cfg)
    t0 = time.perf_counter()
    tables = measure_operators(loaded, device, repeats=args.repeats, min_seconds=args.min_seconds,
                               kernel=str(get(cfg["executor"], "attention", "auto")))
    out = write_operator_profile(*tables, args.out)
    print(f"{loaded.name} on {device} in {time.perf_counter() - t0:.1f} s -> {out}; simulate with it: "
          f"s3sim latency=operators latency.path={out} model=<the preset of this shape> latency.overhead_s=<what a "
          "step adds around the operators: fit it on a run of the executor, as the GPU check does>")


if __name__ == "__main__":
    sys.exit(main())
