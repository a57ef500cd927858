"""Figures of the experiments. Each `draw` takes exactly the table saved beside its PNG
(`<name>_data.csv`), so a notebook redraws any figure from `results/` alone."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from s3sim.core.policies import POLICIES
from s3sim.writers import write_atomically, write_csv

POLICY_ORDER = tuple(POLICIES)


def pyplot():
    """matplotlib's pyplot, headless unless in a notebook (or MPLBACKEND says otherwise)."""
    import matplotlib
    if "MPLBACKEND" not in os.environ and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def color(policy: str) -> str:
    """One colour per policy across every figure."""
    i = POLICY_ORDER.index(policy) if policy in POLICY_ORDER else len(POLICY_ORDER)
    return f"C{i}"


POLICY_COLUMNS = ("policy", "policy.name")  # a hue by these keeps each policy's own colour
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def palette(column: str | None, values) -> dict:
    """A distinct colour for each value of `column`, in the values' order: each policy's own colour when the
    column names policies (other values take colours no policy has); otherwise matplotlib's categorical
    tab10 (tab20 beyond 10 values, evenly spaced viridis beyond 20)."""
    from matplotlib.colors import to_hex

    values = list(dict.fromkeys(values))
    if column in POLICY_COLUMNS:
        used = {to_hex(color(p)) for p in POLICY_ORDER}
        others = [v for v in values if v not in POLICY_ORDER]
        spare = [c for c in categorical(10) + categorical(20)[1::2] if c not in used]  # C8, C9, then tab20's light
        spare = iter(spare if len(others) <= len(spare) else categorical(len(others)))
        return {v: to_hex(color(v)) if v in POLICY_ORDER else next(spare) for v in values}
    return dict(zip(values, categorical(len(values))))


def categorical(n: int) -> list[str]:
    """`n` colours a reader tells apart, as hex."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if n <= 10:
        return [to_hex(colormaps["tab10"](i)) for i in range(n)]
    if n <= 20:
        return [to_hex(colormaps["tab20"](i)) for i in range(n)]
    return [to_hex(colormaps["viridis"](i / (n - 1))) for i in range(n)]


def line_styles(values) -> dict:
    """A (line style, marker) pair for each value: the first 8 each a marker of their own, and every pair
    distinct up to (styles x markers), the style moving on by one each time the markers come round."""
    values = list(dict.fromkeys(values))
    return {v: (LINESTYLES[(i + i // len(MARKERS)) % len(LINESTYLES)], MARKERS[i % len(MARKERS)])
            for i, v in enumerate(values)}


def ordered(values):
    """Policies in the usual order, anything else after them in first-seen order."""
    seen = list(dict.fromkeys(values))
    return [p for p in POLICY_ORDER if p in seen] + [v for v in seen if v not in POLICY_ORDER]


def save(fig, data, out_dir, name: str) -> Path:
    """Write `<name>.png` and `<name>_data.csv` into `out_dir`, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(data, out / f"{name}_data.csv")
    try:
        write_atomically(out / f"{name}.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        pyplot().close(fig)
    return out / f"{name}.png"
