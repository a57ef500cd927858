"""`python -m s3sim.lab.operator_calibration`: how well datasheet figures price each operator of a
decoder layer, before and after fitting three numbers per GPU.

Every non-attention operator of a layer (the shared `gpu_profiles/compute/<gpu>/<org>/<model>/mlp.csv`:
embedding, norms, QKV and output projections, rotary, MLP up / activation / down, residual add, measured
by token count and tensor-parallel degree) is priced at its own bound,

    time = max(flops / (peak FLOP/s x compute_efficiency), bytes / (bandwidth x memory_efficiency)) + launch,

with FLOPs and bytes from the model's shape (a matmul reads its weights and its activations and writes its
output; an elementwise operator reads and writes its activations). The fit chooses the two efficiencies
and the per-operator launch cost that minimise the mean relative error of a layer's total (its operators
summed) over all models, token counts and TP degrees of one GPU (a log-spaced grid, then twice a 9-point
grid within ±30 % of the best: a resolution of about 7 %, which is what the committed fits carry). It prints the error per
token-count range, of single operators and of a layer's total, before (the roofline's default
efficiencies, no launch cost) and after, and writes `results/calibration/operators.csv` (the fit per GPU, with
the fraction of the datasheet bandwidth a streaming kernel reaches: `copy_efficiency` below)
and `operators_by_tokens.csv`. The fitted
efficiencies are what an operator-by-operator datasheet model of a GPU without its own profile should use.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.commandline import Parser, out_path
from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import GpuSpec, get_gpu

GPUS = {"a100": "a100-80gb-sxm", "a40": "a40"}  # profile folder -> GPU preset (the datasheet it is priced on)
# the shared vLLM runs' own operator profiles (dense.csv of each tp<N>/): run folder -> (GPU preset, model preset)
RUN_PROFILES = {"rtx4090-llama-3.1-8b": ("rtx-4090", "llama-3.1-8b"),
                "rtxpro6000-llama-3.1-8b": ("rtx-pro-6000", "llama-3.1-8b")}
# their operator names -> the names above (vLLM fuses the residual add into its two layernorms per layer)
RUN_OPS = {"embedding": ("emb",), "layernorm": ("input_layernorm", "post_attention_layernorm"),
           "qkv_proj": ("attn_pre_proj",), "rotary_emb": ("attn_rope",), "o_proj": ("attn_post_proj",),
           "gate_up_proj": ("mlp_up_proj",), "act_fn": ("mlp_act",), "down_proj": ("mlp_down_proj",)}
OPS = ("emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
       "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
BUCKETS = ((1, 16), (17, 256), (257, 2048), (2049, 1 << 30))
DEFAULTS = (0.6, 0.8, 0.0)  # the roofline's compute and memory efficiencies, and no launch cost


def operator_work(t: pd.DataFrame, dtype_bytes: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """FLOPs and bytes of each operator for the rows of a profile (shape columns, tokens, TP degree)."""
    T = t.num_tokens.to_numpy(np.float64)
    tp = t.num_tensor_parallel_workers.to_numpy(np.float64)
    h = t.n_embd.to_numpy(np.float64)
    hd = h / t.n_head.to_numpy(np.float64)
    q = t.n_head.to_numpy(np.float64) * hd / tp
    kv = t.n_kv_head.to_numpy(np.float64) * hd / tp
    inter = t.n_expanded_embd.to_numpy(np.float64) / tp
    up = np.where(t.use_gated_mlp.to_numpy(bool), 2.0, 1.0) * inter
    b = float(dtype_bytes)

    def matmul(n_in, n_out):
        return 2 * T * n_in * n_out, b * (n_in * n_out + T * (n_in + n_out))

    def elementwise(width, streams):
        return np.zeros_like(T), b * T * width * streams

    return {
        "emb": elementwise(h, 1),  # gather one row per token
        "input_layernorm": elementwise(h, 2),
        "attn_pre_proj": matmul(h, q + 2 * kv),
        "attn_rope": elementwise(q + kv, 2),
        "attn_post_proj": matmul(q, h),
        "post_attention_layernorm": elementwise(h, 2),
        "mlp_up_proj": matmul(h, up),
        "mlp_act": elementwise(inter, 3),  # reads gate and up, writes one
        "mlp_down_proj": matmul(inter, h),
        "add": elementwise(h, 3),
    }


def load(root: Path, gpu_dir: str) -> pd.DataFrame:
    """One row per (model, operator, tokens, TP degree): measured seconds, FLOPs, bytes."""
    files = sorted((root / gpu_dir).glob("*/*/mlp.csv"))
    if not files:
        raise ConfigError(f"no operator profiles under {str(root / gpu_dir)!r} (expected <org>/<model>/mlp.csv)")
    frames = []
    for f in files:
        t = pd.read_csv(f)
        missing = [c for c in ("num_tokens", "num_tensor_parallel_workers", "n_head", "n_kv_head", "n_embd",
                               "n_expanded_embd", "use_gated_mlp") if c not in t.columns]
        if missing:
            raise ConfigError(f"operator profile {str(f)!r}: missing column {missing[0]!r}")
        work = operator_work(t)
        present = [op for op in OPS if f"time_stats.{op}.median" in t.columns]  # phi-2 has no second norm
        if not {"attn_pre_proj", "mlp_up_proj", "mlp_down_proj"} <= set(present):
            raise ConfigError(f"operator profile {str(f)!r}: needs at least the QKV, MLP up and MLP down timings")
        for op in present:
            col = f"time_stats.{op}.median"
            flops, nbytes = work[op]
            frames.append(pd.DataFrame({"model": f.parent.name, "op": op, "tokens": t.num_tokens,
                                        "tp": t.num_tensor_parallel_workers, "measured_s": t[col] * 1e-3,
                                        "flops": flops, "bytes": nbytes}))
    rows = pd.concat(frames, ignore_index=True)
    return rows[rows.measured_s > 0]


COPY_FROM_TOKENS = 256  # the residual adds the copy bandwidth is read from: large enough to stream


def copy_efficiency(rows: pd.DataFrame) -> float:
    """The fraction of the datasheet bandwidth a streaming kernel reaches, as `operator_work` counts its bytes:
    the residual add (it reads two tensors and writes one, each once and in order, as a copy reads and writes
    one), its seconds against its bytes at `COPY_FROM_TOKENS` tokens or more fitted by least squares
    as a fixed cost plus bytes over a bandwidth, per model; the median over models (phi-2's adds, at half the
    others' rate, are the outlier it leaves aside). NaN where no add was timed (vLLM fuses it into its norms).
    What a KV copy by concatenation (`policy=hf`) is priced at: `LatencyModel.copy_time`."""
    adds = rows[(rows.op == "add") & (rows.tokens >= COPY_FROM_TOKENS)]
    rates = []
    for _, m in adds.groupby("model"):
        if len(m) >= 2 and m.bytes.nunique() >= 2:
            slope = np.polyfit(m.bytes.to_numpy(np.float64), m.measured_s.to_numpy(np.float64), 1)[0]
            if slope > 0:
                rates.append(1.0 / slope)
    return float(np.median(rates)) if rates else float("nan")


def load_run_profile(profile: Path, model_name: str) -> pd.DataFrame:
    """The same rows from a shared run's `profile/tp<N>/dense.csv` (one decoder layer of `model_name`, each
    TP degree profiled), each layernorm counted twice per layer as the model runs it."""
    from s3sim.hardware.models import get_model

    m = get_model(model_name)
    folders = sorted(profile.glob("tp*/dense.csv"))
    if not folders:
        raise ConfigError(f"no operator profile under {str(profile)!r} (expected tp<N>/dense.csv)")
    frames = []
    for f in folders:
        t = pd.read_csv(f)
        if not {"layer", "tokens", "time_us"} <= set(t.columns):
            raise ConfigError(f"operator profile {str(f)!r}: needs the columns layer, tokens, time_us")
        tp = int(f.parent.name.removeprefix("tp"))
        for layer, names in RUN_OPS.items():
            sel = t[t.layer == layer]
            if sel.empty:
                raise ConfigError(f"operator profile {str(f)!r}: no {layer!r} rows")
            shape = pd.DataFrame({"num_tokens": sel.tokens.to_numpy(), "num_tensor_parallel_workers": tp,
                                  "n_head": m.n_heads, "n_kv_head": m.n_kv_heads, "n_embd": m.hidden_size,
                                  "n_expanded_embd": m.intermediate_size, "use_gated_mlp": m.gated_mlp})
            work = operator_work(shape, m.dtype_bytes)
            for op in names:
                flops, nbytes = work[op]
                frames.append(pd.DataFrame({"model": m.name, "op": op, "tokens": sel.tokens.to_numpy(), "tp": tp,
                                            "measured_s": sel.time_us.to_numpy() * 1e-6, "flops": flops,
                                            "bytes": nbytes}))
    rows = pd.concat(frames, ignore_index=True)
    return rows[rows.measured_s > 0]


def attention_rows(profile: Path, model_name: str) -> pd.DataFrame:
    """A shared run's attention timings (`tp<N>/attention.csv`), prefill-only and decode-only rows, with the
    FLOPs and bytes the datasheet model (`s3sim.latency.datasheet`) prices them by, per layer."""
    from s3sim.hardware.models import get_model

    m = get_model(model_name)
    frames = []
    for f in sorted(profile.glob("tp*/attention.csv")):
        t = pd.read_csv(f)
        tp = int(f.parent.name.removeprefix("tp"))
        q, kv, b = m.n_heads * m.head_dim / tp, max(m.n_kv_heads // tp, 1) * m.head_dim, float(m.dtype_bytes)
        c, kp, n, kd = (t[k].to_numpy(np.float64) for k in ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode"))
        prefill, decode = (c > 0) & (n == 0), (c == 0) & (n > 0)
        sq = (kp + c) ** 2 - kp ** 2
        frames.append(pd.DataFrame({
            "kind": np.where(prefill, "prefill", "decode"), "tp": tp, "measured_s": t.time_us.to_numpy() * 1e-6,
            "flops": np.where(prefill, 2 * q * sq, 4 * q * n * kd),
            "bytes": np.where(prefill, b * (2 * q + 4 * kv) * c, b * (2 * kv * n * kd + 2 * q * n))})[prefill | decode])
    if not frames:
        raise ConfigError(f"no attention profile under {str(profile)!r} (expected tp<N>/attention.csv)")
    return pd.concat(frames, ignore_index=True)


def fit_attention(rows: pd.DataFrame, gpu: GpuSpec, compute_eff: float, memory_eff: float, launch_s: float):
    """Efficiencies of prefill attention (of peak FLOP/s; bytes at the dense fit's memory efficiency) and of
    decode attention (of peak bandwidth; FLOPs at the dense fit's compute efficiency) minimising the mean
    relative error of each kind's timings; and those errors before (the dense fit's) and after."""
    grid = np.linspace(0.02, 1.0, 491)
    out = []
    for kind, fixed in (("prefill", memory_eff), ("decode", compute_eff)):
        r = rows[rows.kind == kind]
        if r.empty:
            raise ConfigError(f"attention profile: no {kind}-only rows to fit its efficiency to")
        f, by, m = r.flops.to_numpy(), r.bytes.to_numpy(), r.measured_s.to_numpy()

        def err(e):
            ce, me = (e, fixed) if kind == "prefill" else (fixed, e)
            p = np.maximum(f / (gpu.peak_flops * ce), by / (gpu.mem_bandwidth * me)) + launch_s
            return float(np.abs(p / m - 1).mean())

        before = err(compute_eff if kind == "prefill" else memory_eff)
        best = min(grid, key=err)
        out.append((float(best), before, err(best)))
    return out


def predict(rows: pd.DataFrame, gpu: GpuSpec, compute_eff: float, memory_eff: float, launch_s: float):
    return np.maximum(rows.flops.to_numpy() / (gpu.peak_flops * compute_eff),
                      rows.bytes.to_numpy() / (gpu.mem_bandwidth * memory_eff)) + launch_s


def relative_error(rows, gpu, params) -> np.ndarray:
    return np.abs(predict(rows, gpu, *params) / rows.measured_s.to_numpy() - 1)


def fit(rows: pd.DataFrame, gpu: GpuSpec) -> tuple[float, float, float]:
    """(compute efficiency, memory efficiency, launch seconds) minimising the mean relative error of the
    layer totals (what an iteration's price is made of), over every model, token count and TP degree."""
    groups = rows.groupby(["model", "tokens", "tp"]).ngroup().to_numpy()
    measured = np.bincount(groups, weights=rows.measured_s.to_numpy())
    ce = me = np.geomspace(0.05, 1.0, 16)
    la = np.concatenate(([0.0], np.geomspace(1e-6, 3e-5, 12)))
    best = None
    for _ in range(3):
        for c in ce:
            for m in me:
                for launch in la:
                    total = np.bincount(groups, weights=predict(rows, gpu, c, m, launch))
                    err = float(np.abs(total / measured - 1).mean())
                    if best is None or err < best[0]:
                        best = (err, c, m, launch)
        _, c0, m0, l0 = best
        ce = np.clip(np.geomspace(c0 / 1.3, c0 * 1.3, 9), 0.01, 1.0)
        me = np.clip(np.geomspace(m0 / 1.3, m0 * 1.3, 9), 0.01, 1.0)
        la = np.unique(np.concatenate(([0.0], np.geomspace(max(l0, 1e-7) / 2, max(l0, 1e-7) * 2, 9))))
    return float(best[1]), float(best[2]), float(best[3])


def layer_error(rows, gpu, params) -> pd.DataFrame:
    """Relative error of each layer's total (its operators summed), per model, token count and TP degree:
    what an iteration's price depends on."""
    t = rows.assign(predicted_s=predict(rows, gpu, *params))
    layer = t.groupby(["model", "tokens", "tp"], as_index=False)[["measured_s", "predicted_s"]].sum()
    return layer.assign(error=np.abs(layer.predicted_s / layer.measured_s - 1))


def by_tokens(rows, gpu, params) -> dict[str, float]:
    """Mean relative error of single operators and of layer totals, per token-count range."""
    err, layer = relative_error(rows, gpu, params), layer_error(rows, gpu, params)
    out = {}
    for lo, hi in BUCKETS:
        name = f"{lo}-{hi if hi < 1 << 30 else 'max'}"
        sel = ((rows.tokens >= lo) & (rows.tokens <= hi)).to_numpy()
        lsel = ((layer.tokens >= lo) & (layer.tokens <= hi)).to_numpy()
        if not sel.any():
            continue  # a profile that stops at 2,048 tokens has nothing beyond
        out[name] = (float(err[sel].mean()), float(layer.error[lsel].mean()))
    out["all"] = (float(err.mean()), float(layer.error.mean()))
    return out


def main(argv=None) -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="../shared/data/gpu_profiles/compute")
    ap.add_argument("--runs", default="../shared/data/vllm_runs", help="folder of the shared vLLM runs, whose "
                    "profile/ folders are fitted too")
    ap.add_argument("--out", type=out_path, default="results/calibration")
    args = ap.parse_args(argv)
    from s3sim.writers import write_csv

    fits, buckets = [], []
    try:
        # (label, GPU preset, its dense operator rows, its attention rows: only a run's profile times attention)
        sources = [(folder, preset, lambda folder=folder: load(Path(args.profiles), folder), None)
                   for folder, preset in GPUS.items()]
        sources += [(f"{run}/profile", preset, lambda p=Path(args.runs) / run / "profile", m=m: load_run_profile(p, m),
                     lambda p=Path(args.runs) / run / "profile", m=m: attention_rows(p, m))
                    for run, (preset, m) in RUN_PROFILES.items()]
        for folder, preset, read, read_attention in sources:
            gpu = get_gpu(preset)
            rows = read()
            params = fit(rows, gpu)
            before, after = by_tokens(rows, gpu, DEFAULTS), by_tokens(rows, gpu, params)
            att = {}
            if read_attention is not None:
                (pe, pb, pa), (de, db, da) = fit_attention(read_attention(), gpu, *params)
                att = {"attention_prefill_efficiency": pe, "attention_decode_efficiency": de,
                       "prefill_attention_error_before": pb, "prefill_attention_error_after": pa,
                       "decode_attention_error_before": db, "decode_attention_error_after": da}
            copy = copy_efficiency(rows) / gpu.mem_bandwidth
            fits.append({"gpu": preset, "profiles": folder, "models": rows.model.nunique(), "points": len(rows),
                         "compute_efficiency": params[0], "memory_efficiency": params[1], "launch_us": params[2] * 1e6,
                         **att, "copy_efficiency": copy,
                         "operator_error_before": before["all"][0], "operator_error_after": after["all"][0],
                         "layer_error_before": before["all"][1], "layer_error_after": after["all"][1]})
            for k in before:
                buckets.append({"gpu": preset, "tokens": k, "operator_error_before": before[k][0],
                                "operator_error_after": after[k][0], "layer_error_before": before[k][1],
                                "layer_error_after": after[k][1]})
            print(f"{preset}: {rows.model.nunique()} models, {len(rows):,} operator timings; fitted compute "
                  f"efficiency {params[0]:.3f}, memory efficiency {params[1]:.3f}, launch {params[2] * 1e6:.1f} us")
            if copy == copy:
                print(f"  streaming (the residual add, a copy's traffic): {copy:.3f} of the datasheet bandwidth")
            print("  mean relative error, defaults -> fitted:   single operators   layer totals")
            if att:
                print(f"  attention: prefill at {att['attention_prefill_efficiency']:.3f} of peak FLOP/s (mean error "
                      f"{att['prefill_attention_error_before']:.1%} at the dense fit -> "
                      f"{att['prefill_attention_error_after']:.1%}), decode at {att['attention_decode_efficiency']:.3f}"
                      f" of peak bandwidth ({att['decode_attention_error_before']:.1%} -> "
                      f"{att['decode_attention_error_after']:.1%})")
            for k in before:
                print(f"  tokens {k:>10s}: {before[k][0]:19.1%} -> {after[k][0]:5.1%} {before[k][1]:9.1%} -> "
                      f"{after[k][1]:5.1%}")
    except ConfigError as e:
        print(f"operator_calibration: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(pd.DataFrame(buckets), out / "operators_by_tokens.csv")
    write_csv(pd.DataFrame(fits), out / "operators.csv")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
