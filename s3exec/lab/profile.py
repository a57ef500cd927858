"""`python -m s3exec.lab.profile`: measure the executor's iteration latency over a grid of batch shapes, so the
simulator can replay this hardware (`latency=profiled`) instead of assuming a roofline.

Each grid point is one `ModelRunner.step` of the shape the engine issues: `prompts` prefills of
`prompt_len` tokens beside `decode_tokens` decodes whose cached context is `ctx_per_seq` tokens each.
After warm-up runs, the median of the repeats is kept (CUDA is synchronised around each run); short
points are repeated until their runs add up to `--min-seconds`. The KV
cache contents are zeros: the cost of a forward pass does not depend on the values.

Writes `<out>/<name>.csv` (one row per point, with the simulator's features `prefill_tokens`,
`prefill_sq`, `decode_tokens`, `decode_ctx`) and `<out>/<name>.json` (device, model, dtype, versions,
threads, grid, date, measured swap and KV-copy seconds per token). Hydra overrides of `conf/exec.yaml` pick the model:

    python -m s3exec.lab.profile --name smollm2-cpu executor.model=smollm2
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.commandline import Parser, exit_code, out_path
from s3sim.core.errors import ConfigError

COLUMNS = ("kind", "prompt_len", "prompts", "decode_tokens", "ctx_per_seq", "prefill_tokens", "prefill_sq",
           "decode_ctx", "median_s", "min_s", "max_s", "repeats")
PROMPT_LENS = (16, 64, 256, 1024)
PROMPT_COUNTS = (1, 4, 16)
# every small batch size: measured decode time is not monotone in it (kernels are picked by shape)
BATCHES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 48, 64)
CONTEXTS = (16, 64, 128, 256, 512, 1024)


def grid(prompt_lens=PROMPT_LENS, prompt_counts=PROMPT_COUNTS, batches=BATCHES, contexts=CONTEXTS,
         max_prefill=1024, max_kv=32768, max_context=None) -> list[tuple[int, int, int, int]]:
    """(prompt_len, prompts, decode_tokens, ctx_per_seq) points: prefill-only, decode-only and mixed ones
    (a small and a large decode batch joined by one or a few short prompts), bounded in tokens so a CPU run
    stays short."""
    top = (max_context or 10**9) - 1
    pts = [(L, k, 0, 0) for L in prompt_lens for k in prompt_counts if L * k <= max_prefill and L <= top]
    pts += [(0, 0, b, c) for b in batches for c in contexts if b * c <= max_kv and c < top]
    mid = sorted(contexts)[(len(contexts) - 1) // 2]
    joins = [(L, 1) for L in prompt_lens[:2]] + [(prompt_lens[0], max(prompt_counts))]
    for b in (batches[len(batches) // 2], batches[-1]):
        for L, k in joins:
            if b * mid + L * k <= max_kv and mid < top and L <= top:
                pts.append((L, k, b, mid))
    return list(dict.fromkeys(pts))


def sync_device(device) -> None:
    """Wait for the device's queued work (a CUDA device's; a CPU's is done already): around every timing."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))


def time_point(runner, point, vocab: int, device: str, warmup: int, repeats: int, rng, min_seconds: float = 0.0,
               max_repeats: int = 50) -> list[float]:
    """Seconds of `repeats` steps of one grid point (after `warmup` untimed ones), or more while the timed
    steps add up to less than `min_seconds` (at most `max_repeats`): sub-millisecond steps jitter by 10 %."""
    L, k, b, c = point
    cache = runner.cache
    for i in range(b):  # decoding sequences: context of c tokens already cached
        r = cache.allocate(10**9 + i, c)
        cache.length[r] = c
    rows = np.array([cache.row[10**9 + i] for i in range(b)], dtype=np.int64)
    decode = [(10**9 + i, int(t)) for i, t in enumerate(rng.integers(0, vocab, b))]
    times = []
    rep = 0
    while rep < warmup + repeats or (sum(times) < min_seconds and len(times) < max(max_repeats, repeats)):
        prefill = [(i, rng.integers(0, vocab, L).tolist()) for i in range(k)]
        cache.length[rows] = c
        sync_device(device)
        t0 = time.perf_counter()
        runner.step(decode, prefill)
        sync_device(device)
        t = time.perf_counter() - t0
        for i in range(k):
            cache.release(i)
        if rep >= warmup:
            times.append(t)
        rep += 1
    for i in range(b):
        cache.release(10**9 + i)
    return times


def swap_seconds_per_token(cache, device: str, tokens: int = 512, repeats: int = 3) -> float:
    """Median seconds per token of a swap out plus a swap in, halved: one direction, as the simulator charges."""
    out = []
    tokens = min(tokens, (cache.max_blocks - 1) * cache.block_size)
    for _ in range(repeats):
        r = cache.allocate(-1, tokens)
        cache.length[r] = tokens
        sync_device(device)
        t0 = time.perf_counter()
        cache.swap_out(-1)
        cache.swap_in(-1)
        sync_device(device)
        out.append((time.perf_counter() - t0) / 2 / tokens)
        cache.release(-1)
    return statistics.median(out)


def copy_seconds_per_token(m, device: str, rows: int = 8, tokens: int = 512, repeats: int = 5) -> float:
    """Median seconds per cached token of one growth step of a `DynamicCache`: every layer's keys and values
    concatenated with one new token per row (`torch.cat` into a fresh buffer, as `generate` grows its cache),
    over `rows` rows of `tokens` tokens."""
    import torch

    shape = (rows, m.kv_heads, tokens, m.head_dim)
    layers = [(torch.zeros(shape, dtype=m.dtype, device=device), torch.zeros(shape, dtype=m.dtype, device=device))
              for _ in range(m.num_layers)]
    new = torch.zeros((rows, m.kv_heads, 1, m.head_dim), dtype=m.dtype, device=device)
    out = []
    for _ in range(repeats + 1):
        sync_device(device)
        t0 = time.perf_counter()
        grown = [(torch.cat([k, new], dim=-2), torch.cat([v, new], dim=-2)) for k, v in layers]
        sync_device(device)
        out.append((time.perf_counter() - t0) / (rows * tokens))
        del grown
    return statistics.median(out[1:])


def model_spec(m) -> dict:
    """The measured model's shape as `s3sim.hardware.models.ModelSpec` fields (for roofline calibration)."""
    c = m.model.config
    heads = int(c.num_attention_heads)
    return {"name": str(m.name), "n_params": int(sum(p.numel() for p in m.model.parameters())),
            "n_layers": int(m.num_layers), "hidden_size": int(c.hidden_size), "n_heads": heads,
            "n_kv_heads": int(m.kv_heads), "head_dim": int(m.head_dim), "vocab_size": int(m.vocab_size),
            "max_context": int(m.max_context), "dtype_bytes": int(m.dtype.itemsize)}


def engine_overhead(cfg, loaded, table: pd.DataFrame, requests: int = 48, max_seq_len: int = 64) -> dict:
    """What serving adds to the forward passes the grid timed, from a short offline run of `cfg`'s policy
    with room for every request: the engine's seconds outside the forward pass (scheduling, admission,
    bookkeeping, checks) as a non-negative fit on relative error (so a rare slow iteration, a garbage
    collection say, does not set the rest) per iteration, per decoding sequence and per admitted prompt; and `step_factor`, the median ratio of its forward passes to what `table` predicts
    for the same shapes."""
    import copy

    from s3exec.config import build_exec
    from s3sim.latency.profiled import ProfiledLatency, fit, forward_time

    run = copy.deepcopy(cfg)
    run.update(num_requests=requests, max_seq_len=max_seq_len, arrival={"process": "offline"})
    longest = int(run["executor"].get("max_prompt_len") or 256) + max_seq_len + 16
    run["executor"].update(kv_memory=requests * longest * loaded.kv_bytes_per_token, progress=False)
    setup = build_exec(run, loaded=loaded)
    runner, inside, shapes = setup.executor.runner, [], []
    step, cache = runner.step, runner.cache

    def timed(decode, prefill):
        lens = [len(p[1]) for p in prefill]  # (id, tokens[, cached prefix])
        ctx = sum(int(cache.length[cache.row[r]]) + 1 for r, _ in decode)
        shapes.append((sum(lens), sum(n * n for n in lens), len(decode), ctx, len(lens)))
        sync_device(str(runner.device))
        t0 = time.perf_counter()
        out = step(decode, prefill)
        sync_device(str(runner.device))
        inside.append(time.perf_counter() - t0)
        return out

    runner.step = timed
    result = setup.executor.run(setup.requests, setup.prompts, setup.caps)
    n = len(result.log.durations)  # the calls before them are the executor's untimed warm-up
    inside, shapes = inside[-n:], shapes[-n:]
    outside = np.concatenate(result.log.durations) - np.array(inside)
    x = pd.DataFrame(shapes, columns=["prefill_tokens", "prefill_sq", "decode_tokens", "decode_ctx", "prompts"])
    per = fit(np.column_stack([x.decode_tokens, x.prompts]).astype(np.float64), np.maximum(outside, 1e-7))
    predicted = forward_time(ProfiledLatency(None, None, table=table), x)
    return {"per_iteration_s": float(per[0]), "per_decode_s": float(per[1]), "per_prompt_s": float(per[2]),
            "step_factor": float(np.median(np.array(inside) / predicted)), "iterations": len(outside),
            "policy": run["policy"]["name"], "requests": requests, "max_seq_len": max_seq_len}


def profile(cfg, points=None, warmup: int = 1, repeats: int = 3, log=print, overhead: bool = True,
            min_seconds: float = 0.05):
    """Measure every point of `points` (default `grid()`) on the model of `cfg` (an `s3exec` config), and
    (with `overhead`) the engine's time outside the forward pass; returns the table and its metadata."""
    import torch
    import transformers

    from s3exec.config import load_executor_model
    from s3exec.kv_cache import KVCache
    from s3exec.model_runner import ModelRunner
    from s3sim.spec import get, positive_int

    ex = cfg["executor"]
    m, device = load_executor_model(cfg)
    source, dtype = m.name, str(get(ex, "dtype", "float32"))
    points = points or grid(max_context=m.max_context)
    points = [p for p in points if max(p[0], p[3] + 1) <= m.max_context]
    if not points:
        raise ConfigError(f"no grid point fits the context of {source!r} ({m.max_context} tokens)")
    bs = 16
    need = max(L * k + b * (c + 1) + bs * (k + b) for L, k, b, c in points)
    longest = max(max(L, c + 1) for L, _, _, c in points)
    cache = KVCache(m.num_layers, m.kv_heads, m.head_dim, -(-need // bs) + 64, bs, longest + bs, dtype=m.dtype,
                    device=device)
    runner = ModelRunner(m.model, cache, positive_int(get(ex, "max_batch_tokens"), "executor.max_batch_tokens",
                                                       allow_none=True))
    rng = np.random.default_rng(0)
    rows = []
    for n, (L, k, b, c) in enumerate(points):
        ts = time_point(runner, (L, k, b, c), m.vocab_size, device, warmup, repeats, rng, min_seconds)
        kind = "mixed" if k and b else "prefill" if k else "decode"
        rows.append((kind, L, k, b, c, L * k, L * L * k, b * c, statistics.median(ts), min(ts), max(ts), len(ts)))
        log(f"  [{n + 1}/{len(points)}] {kind:7s} prompt {L}x{k} decode {b}x{c}: {statistics.median(ts) * 1e3:.2f} ms")
    table = pd.DataFrame(rows, columns=COLUMNS)
    meta = {
        "device": device,
        "device_name": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu",
        "model": source, "dtype": dtype, "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats, "min_seconds": min_seconds,
        "grid": [list(p) for p in points], "block_size": bs, "kv_bytes_per_token": m.kv_bytes_per_token,
        "swap_s_per_token": swap_seconds_per_token(cache, device),
        "kv_copy_s_per_token": copy_seconds_per_token(m, device),
        "engine_overhead": engine_overhead(cfg, m, table) if overhead else None,
        "model_spec": model_spec(m),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return table, meta


def write_profile(table: pd.DataFrame, meta: dict, out: Path, name: str) -> Path:
    """`<out>/<name>.csv` and its `<name>.json` sidecar, atomically; returns the CSV's path."""
    from s3sim.writers import write_csv, write_text

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    write_text(json.dumps(meta, indent=1) + "\n", path.with_suffix(".json"))
    write_csv(table, path)
    return path


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/exec.yaml (executor.model=smollm2 ...)")
    ap.add_argument("--name", help="profile name (default: <model>-<device>)")
    ap.add_argument("--out", type=out_path, default="results/profiles", help="folder of profiles (default results/profiles)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per point, at least")
    ap.add_argument("--min-seconds", type=float, default=0.05,
                    help="repeat a point (up to 50 times) until its timed runs add up to this much")
    ap.add_argument("--prompt-lens", type=_ints, default=PROMPT_LENS)
    ap.add_argument("--prompt-counts", type=_ints, default=PROMPT_COUNTS)
    ap.add_argument("--batches", type=_ints, default=BATCHES)
    ap.add_argument("--contexts", type=_ints, default=CONTEXTS)
    ap.add_argument("--max-prefill", type=int, default=1024, help="most prefill tokens in one point")
    ap.add_argument("--gpu", default="a100-80gb-pcie", help="GPU preset the calibrated roofline is relative to")
    args = ap.parse_args(argv)
    return exit_code("s3exec.lab.profile", lambda: _profile_into(args))


def _profile_into(args) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from s3sim.config import CONF_DIR
    from s3sim.hardware.gpus import get_gpu
    from s3sim.lab.calibrate import calibrate, profile_model
    from s3sim.latency.profiled import fit_report

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = OmegaConf.to_container(compose("exec", overrides=args.overrides), resolve=True)
    pts = grid(args.prompt_lens, args.prompt_counts, args.batches, args.contexts, args.max_prefill)
    t0 = time.perf_counter()
    table, meta = profile(cfg, pts, args.warmup, args.repeats, min_seconds=args.min_seconds)
    name = args.name or f"{Path(meta['model']).stem}-{meta['device'].replace(':', '')}"
    path = write_profile(table, meta, Path(args.out), name)
    print(f"{len(table)} points in {time.perf_counter() - t0:.1f} s -> {path}")
    print(fit_report(path))
    cal = calibrate(table, profile_model(meta, None), get_gpu(args.gpu))
    print(f"roofline calibrated to it (relative to {args.gpu}): {cal.overrides()}; relative error mean "
          f"{cal.mean_error:.1%}, max {cal.max_error:.1%}")


if __name__ == "__main__":
    sys.exit(main())
