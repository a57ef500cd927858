"""The comparison as printed and judged: the table, the targets line (`TARGETS`), the sensitivity column's
settings and the note on times too small for a percentage to mean much."""
from __future__ import annotations

import pandas as pd

from s3sim.validation.metrics import COLUMNS


def _fmt(v: float) -> str:
    return "nan" if v != v else f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3f}"


def format_table(table: pd.DataFrame) -> str:
    """The comparison as printed, each row with the error its sensitivity gives were every step 1 % slower."""
    lines = [f"{'metric':<22}{'real':>14}{'simulated':>14}{'error_pct':>11}{'error if steps +1 %':>21}"]
    for m, r, s, e, d in table[[*COLUMNS, SENSITIVITY_COLUMN]].itertuples(index=False):
        lines.append(f"{m:<22}{_fmt(r):>14}{_fmt(s):>14}{e:>+10.1f}%{e + d:>+20.1f}%")
    return "\n".join(lines)


# the README's targets for a replay: the means and medians of TTFT, TPOT and end-to-end latency and the throughputs
# within 5 %, their p99s within 10 % (the p90/p95 rows and the queue/prefill split are reported, not targeted)
TARGETS = ((5.0, tuple(f"{m}_{s}_ms" for m in ("ttft", "tpot", "e2e_latency") for s in ("mean", "p50"))
            + ("request_throughput", "output_throughput")),
           (10.0, tuple(f"{m}_p99_ms" for m in ("ttft", "tpot", "e2e_latency"))))


def target_misses(table: pd.DataFrame) -> dict[str, float]:
    """The target rows of a validation table outside their bound: metric -> its error (%)."""
    errors = table.set_index("metric").error_pct
    return {m: float(errors[m]) for bound, rows in TARGETS for m in rows if not abs(errors[m]) <= bound}


def target_line(table: pd.DataFrame, profiled: bool = True) -> str:
    """The verdict on the targets, naming the rows they cover: TTFT, TPOT and end-to-end latency (means and
    medians, p99s) and the throughputs; the queue/prefill split and the p90/p95 rows are reported, not
    targeted. A replay without an operator profile gets no verdict (its band is the datasheet replays')."""
    misses = target_misses(table)
    (central, _), (tail, _) = TARGETS
    head = (f"targets (TTFT, TPOT and end-to-end latency: means and medians within {central:g} %, p99s within "
            f"{tail:g} %; throughputs within {central:g} %; the queue/prefill split and the p90/p95 rows are not "
            "targeted): ")
    if not profiled:
        return head + "not applied (no operator profile: see the note above)"
    return head + ("met" if not misses else "missed by " + ", ".join(f"{m} {e:+.1f} %" for m, e in misses.items()))


SENSITIVITY_PCT = 1.0  # validation.csv's last numeric column: every step this much slower, replayed again
SENSITIVITY_COLUMN = "sensitivity"  # points of error_pct per 1 % slower steps
SMALL_MS = 1.0  # a time below this (far below any engine step) makes its percentage error say little


def small_times_note(table: pd.DataFrame) -> str:
    """The times whose real value is under a millisecond, where a percentage of it means little."""
    small = [f"{m} ({_fmt(r)} real, {_fmt(s)} simulated)" for m, r, s in
             table[["metric", "real", "simulated"]].itertuples(index=False) if m.endswith("_ms") and abs(r) < SMALL_MS]
    return ("" if not small else f"note: {', '.join(small)} under {SMALL_MS:g} ms, far below one engine step: "
            "their percentage errors say little")
