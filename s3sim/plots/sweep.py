"""A metric against a swept parameter, one line per group, with flat reference lines for policies that
do not depend on the parameter (orca, paged: they use no predictor)."""
from __future__ import annotations

import pandas as pd

from s3sim.plots import POLICY_ORDER, color, pyplot


def draw(data: pd.DataFrame, x: str, metrics: list[tuple[str, str]], hue: str = "series", xlabel: str = "",
         xscale: str = "linear", title: str = ""):
    """`data` has a column `x`, a `hue` column naming each line, and the metric columns; rows whose `x` is
    empty are references, drawn as horizontal dashed lines."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    swept, refs = data[data[x].notna()], data[data[x].isna()]
    for ax, (col, label) in zip(axes[0], metrics):
        for i, (name, g) in enumerate(swept.groupby(hue, sort=False)):
            g = g.sort_values(x)
            ax.plot(g[x], g[col], marker="o", label=str(name), color=color(name) if name in POLICY_ORDER else f"C{i}")
        for j, (_, r) in enumerate(refs.iterrows()):
            ax.axhline(r[col], ls="--", lw=1, color=f"C{7 + j % 3}", label=str(r[hue]))
        ax.set(xlabel=xlabel or x, ylabel=label, xscale=xscale)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
