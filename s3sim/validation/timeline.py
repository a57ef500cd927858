"""timeline.png and timeline_data.csv: running, waiting and KV use at the run's ticks, real against the replay."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from s3sim.core.errors import ConfigError


MAX_TICKS = 10_000_000


def timeline(real: pd.DataFrame, frames: list, capacity_tokens: int, sim_end: float) -> pd.DataFrame:
    """Running, waiting and KV use (%) at the run's 1-second ticks, real against simulated. Simulated values
    are those of the iteration in progress at the tick (none: the engine is idle, all zero), summed over the
    engines (`frames`: each one's iteration log; independent data-parallel ranks are several); its running
    count is the iteration's batch (decodes + prefill chunks), the run's counts partial prefills too."""
    t = real.t.to_numpy(dtype=float)
    tick = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    last = t[-1] if len(t) else 0.0
    if sim_end > last:  # the replay ran longer: extend the ticks over it
        if (sim_end - last) / tick > MAX_TICKS:
            raise ConfigError(f"the replay ran {sim_end:.3g} s where the run took {last:.3g} s: its timeline would "
                              f"hold over {MAX_TICKS:,} ticks; check what prices its steps (the profile's times, "
                              "--all-reduce)")
        extra = last + tick * np.arange(1, int(math.ceil((sim_end - last) / tick)) + 2)
        t = np.concatenate([t, extra])
    def sample_one(frame, col):
        if not len(frame):
            return np.zeros(len(t))
        start = frame.start.to_numpy(dtype=float)
        end = start + frame.duration.to_numpy(dtype=float)
        i = np.searchsorted(start, t, side="right") - 1
        j = np.maximum(i, 0)
        return np.where((i >= 0) & (t < end[j]), frame[col].to_numpy(dtype=float)[j], 0.0)

    def sample(col):
        return sum((sample_one(f, col) for f in frames), np.zeros(len(t)))

    n = len(real)
    pad = lambda col: np.concatenate([real[col].to_numpy(dtype=float), np.full(len(t) - n, np.nan)])  # noqa: E731
    return pd.DataFrame({
        "t": t,
        "real_running": pad("running"), "sim_running": sample("batch_size"),
        "real_waiting": pad("waiting"), "sim_waiting": sample("waiting"),
        "real_kv_pct": pad("kv_cache_pct"), "sim_kv_pct": 100.0 * sample("kv_reserved") / capacity_tokens,
    })


def draw_timeline(data: pd.DataFrame, title: str = ""):
    """`data`: timeline_data.csv (t, real_/sim_ running, waiting, kv_pct)."""
    from s3sim.plots import pyplot
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for ax, (key, label) in zip(axes, (("running", "running"), ("waiting", "waiting"), ("kv_pct", "KV use (%)"))):
        ax.plot(data.t, data[f"real_{key}"], color="k", lw=1.2, label="real (vLLM)")
        ax.plot(data.t, data[f"sim_{key}"], color="C1", lw=1.0, label="simulated")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel("time since the first request was queued (s)")
    if title:
        axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
