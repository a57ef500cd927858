"""Figures of the experiments. Each `draw` takes exactly the table saved beside its PNG
(`<name>_data.csv`), so a notebook redraws any figure from `results/` alone."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from s3sim.core.policies import POLICIES
from s3sim.runner import write_atomically, write_csv

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
