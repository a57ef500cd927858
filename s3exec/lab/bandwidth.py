"""How close the executor's decode steps come to the memory-bandwidth floor.

A decode step reads every weight once and every cached key and value of the batch once; little else moves.
So its time is bounded below by those bytes over the device's bandwidth, which `copy_bandwidth` measures
the way a streaming kernel sees it (a large device-to-device copy: bytes read plus bytes written, over
the time). `decode_bandwidth` times real decode steps of the executor's `ModelRunner` (its attention
kernel and CUDA graphs as configured) at a grid of batch sizes and contexts and reports, per point, the
bytes read, the step time, the bandwidth it achieved and its fraction of the measured copy bandwidth.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import pandas as pd

from s3exec.lab.profile import sync_device, time_point

COLUMNS = ("batch", "context", "step_s", "weight_bytes", "kv_bytes", "read_gb_s", "copy_gb_s", "utilisation",
           "floor_s", "vs_floor")


def copy_bandwidth(device: str, nbytes: int = 2**30, repeats: int = 5) -> float:
    """Bytes per second of a device-to-device copy of `nbytes`, counting bytes read and written (best run)."""
    import torch

    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):
        sync_device(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync_device(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


def decode_bandwidth(runner, loaded, batches, contexts, device: str, copy_bps: float, warmup: int = 2,
                     min_seconds: float = 0.2, max_repeats: int = 50, log=print) -> pd.DataFrame:
    """One row per (batch, context) that fits the runner's cache: the median time of a decode step whose
    `batch` sequences each hold `context` cached tokens (`s3exec.lab.profile.time_point`; the cache contents do
    not change the cost)."""
    cache = runner.cache
    rng = np.random.default_rng(0)
    rows = []
    for c in contexts:
        for b in batches:
            need = b * -(-(c + 1) // cache.block_size)
            if need > cache.nfree or c + 1 > cache.max_blocks * cache.block_size:
                log(f"  decode batch {b} x context {c}: skipped, the cache holds {cache.nfree} free blocks")
                continue
            step = statistics.median(time_point(runner, (0, 0, b, c), loaded.vocab_size, device, warmup, 3, rng,
                                                min_seconds, max_repeats))
            kv = b * (c + 1) * loaded.kv_bytes_per_token
            read = loaded.weight_bytes + kv
            floor = read / copy_bps
            rows.append((b, c, step, loaded.weight_bytes, kv, read / step / 1e9, copy_bps / 1e9,
                         read / step / copy_bps, floor, step / floor))
            log(f"  decode batch {b:4d} x context {c:5d}: {step * 1e3:8.3f} ms, {read / step / 1e9:8.1f} GB/s "
                f"({read / step / copy_bps:.0%} of the copy bandwidth)")
    return pd.DataFrame(rows, columns=COLUMNS)
