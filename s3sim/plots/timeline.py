"""Batch size and KV memory over time, per policy: reserved (what admission sees) against used (what the
cached tokens fill). The gap between the two is what S3's prediction wins back from max-length reservation."""
from __future__ import annotations

import numpy as np
import pandas as pd

from s3sim.plots import color, ordered, pyplot


def resample(iterations: pd.DataFrame, capacity: int, points: int = 300) -> pd.DataFrame:
    """A per-iteration table (runner's iterations.csv) averaged, weighted by duration, over `points`
    equal time bins: t, batch_size, kv_reserved_frac, kv_used_frac."""
    it = iterations
    end = float((it.start + it.duration).max())
    edges = np.linspace(0.0, end, points + 1)
    b = np.clip(np.searchsorted(edges, it.start.to_numpy(), side="right") - 1, 0, points - 1)
    w = it.duration.to_numpy()
    tot = np.bincount(b, w, points)
    out = {"t": (edges[:-1] + edges[1:]) / 2}
    for col, name, scale in (("batch_size", "batch_size", 1), ("kv_reserved", "kv_reserved_frac", capacity),
                             ("kv_used", "kv_used_frac", capacity)):
        s = np.bincount(b, w * it[col].to_numpy(), points)
        out[name] = np.where(tot > 0, s / np.where(tot > 0, tot, 1) / scale, np.nan)
    return pd.DataFrame(out).dropna()


def draw(data: pd.DataFrame, title: str = ""):
    """`data`: policy, t, batch_size, kv_reserved_frac, kv_used_frac."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.9))
    for policy in ordered(data.policy):
        g = data[data.policy == policy]
        a.plot(g.t, g.batch_size, label=policy, color=color(policy))
        b.plot(g.t, g.kv_reserved_frac, ls="--", color=color(policy))
        b.plot(g.t, g.kv_used_frac, label=policy, color=color(policy))
    a.set(xlabel="time (s)", ylabel="batch size (requests)", yscale="log", title="batch size")
    b.set(xlabel="time (s)", ylabel="share of KV capacity", ylim=(0, 1.05),
          title="KV reserved (dashed) and used (solid)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
