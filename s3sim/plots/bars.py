"""Grouped bars, one group per model and one bar per policy: maximum throughput, or the GPUs each policy
needs to serve the same request rate under the SLO (the paper's cost claim)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from s3sim.plots import color, ordered, pyplot


def draw(data: pd.DataFrame, value: str = "gpus", ylabel: str = "GPUs for the target rate", title: str = ""):
    """`data`: model, policy and `value` (inf or NaN, shown as "-", when nothing tried reaches it)."""
    plt = pyplot()
    models = list(dict.fromkeys(data.model))
    policies = ordered(data.policy)
    fig, ax = plt.subplots(figsize=(1.9 * len(models) + 2, 3.9))
    width = 0.8 / len(policies)
    x = np.arange(len(models))
    for j, policy in enumerate(policies):
        g = data[data.policy == policy].set_index("model").reindex(models)
        y = g[value].replace(np.inf, np.nan).to_numpy(dtype=float)
        bars = ax.bar(x + (j - (len(policies) - 1) / 2) * width, np.nan_to_num(y), width, label=policy,
                      color=color(policy))
        for bar, v in zip(bars, y):
            ax.annotate("-" if np.isnan(v) else f"{v:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, models)
    ax.set(ylabel=ylabel, yscale="log")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncols=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
