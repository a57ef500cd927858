"""Routers side by side: SLO attainment and TTFT p99 per router, one bar per policy, one row per load."""
from __future__ import annotations

import numpy as np

from s3sim.plots import color, ordered, pyplot

COLUMNS = ["load", "router", "policy", "slo_attainment", "ttft_p99", "request_throughput", "offered_rate"]
PANELS = (("slo_attainment", "SLO attainment"), ("ttft_p99", "TTFT p99 (s)"))


def draw(data, title: str = ""):
    """`data`: the COLUMNS, one row per (load, router, policy)."""
    plt = pyplot()
    loads = list(dict.fromkeys(data.load))
    routers = list(dict.fromkeys(data.router))
    policies = ordered(data.policy)
    fig, axes = plt.subplots(len(loads), len(PANELS), figsize=(11, 3.2 * len(loads)), squeeze=False)
    width = 0.8 / len(policies)
    x = np.arange(len(routers))
    for i, load in enumerate(loads):
        d = data[data.load == load]
        for ax, (col, label) in zip(axes[i], PANELS):
            for j, p in enumerate(policies):
                y = d[d.policy == p].set_index("router").reindex(routers)[col].to_numpy(dtype=float)
                ax.bar(x + (j - (len(policies) - 1) / 2) * width, y, width, label=p, color=color(p))
            ax.set_xticks(x, routers, fontsize=8)
            ax.set(ylabel=label, title=f"{load}")
            if col == "slo_attainment":
                ax.set_ylim(max(0.0, float(d[col].min()) - 0.05), 1.0)
            ax.grid(alpha=0.3, axis="y")
        axes[i][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
