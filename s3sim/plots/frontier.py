"""Latency-throughput frontier per policy: where each policy's latency takes off as load grows."""
from __future__ import annotations

import pandas as pd

from s3sim.plots import color, ordered, pyplot

COLUMNS = ["panel", "policy", "rate", "request_throughput", "goodput", "e2e_latency_p50", "ttft_p90", "tpot_p50",
           "slo_attainment"]


def draw(data: pd.DataFrame, title: str = ""):
    """One panel per `panel` value; x: achieved throughput, y: median e2e latency (log)."""
    plt = pyplot()
    panels = list(dict.fromkeys(data.panel))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        d = data[data.panel == panel]
        for policy in ordered(d.policy):
            g = d[d.policy == policy].sort_values("rate")
            ax.plot(g.request_throughput, g.e2e_latency_p50, marker=".", label=policy, color=color(policy))
        ax.set(title=str(panel), xlabel="throughput (requests/s)", yscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("median e2e latency (s)")
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
