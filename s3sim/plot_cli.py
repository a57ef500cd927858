"""`s3sim-plot TABLE --x COL --y COL [--hue COL] [--col COL] [--out FILE.png]`: a figure from any table
`s3sim-collect` writes (or any CSV of summaries), so a sweep is looked at without writing code.

One line per `--hue` value (a policy, say) of `--y` against `--x`, sorted by x; one panel per `--col` value;
error bars where the table has `<y>_ci95` (runs with `repeats` > 1). Only finished runs are drawn when the
table has a `status` column. Typical: a latency-throughput frontier of trace replays at several
`workload.time_scale`s, `--x offered_rate --y e2e_latency_p50 --hue policy --logy`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from s3sim.core.errors import ConfigError


def figure(table: pd.DataFrame, x: str, y: str, hue: str | None = None, col: str | None = None,
           logx: bool = False, logy: bool = False, title: str = ""):
    from s3sim.plots import color, pyplot

    if "status" in table.columns:
        table = table[table.status == "finished"]
    for name, column in (("--x", x), ("--y", y), ("--hue", hue), ("--col", col)):
        if column is not None and column not in table.columns:
            near = [c for c in table.columns if column.split(".")[-1] in c][:4]
            raise ConfigError(f"{name} {column!r} is not a column of the table" +
                              (f"; similar: {', '.join(near)}" if near else ""))
    if table.empty:
        raise ConfigError("the table has no finished runs to plot")
    for column in (x, y):
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise ConfigError(f"column {column!r} is not numeric")
    plt = pyplot()
    panels = list(dict.fromkeys(table[col])) if col else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.6 * len(panels), 7.0), 4.0), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        d = table if panel is None else table[table[col] == panel]
        groups = d.groupby(hue, sort=False) if hue else [(None, d)]
        for key, g in groups:
            g = g.sort_values(x)
            err = g[f"{y}_ci95"] if f"{y}_ci95" in g.columns else None
            ax.errorbar(g[x], g[y], yerr=err, marker="o", ms=4, capsize=3, label=None if key is None else str(key),
                        color=color(str(key)) if key is not None else None)
        ax.set(xlabel=x, ylabel=y, title="" if panel is None else f"{col} = {panel}",
               xscale="log" if logx else "linear", yscale="log" if logy else "linear")
        ax.grid(alpha=0.3)
    if hue:
        axes[0][-1].legend(fontsize=8, title=hue)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"s3sim-plot: error: {message} (s3sim-plot --help)\n")


def main(argv=None) -> None:
    ap = OneLineParser(prog="s3sim-plot", description=__doc__.split("\n\n")[0])
    ap.add_argument("table", help="a CSV of run summaries (s3sim-collect DIR OUT.csv writes one)")
    ap.add_argument("--x", required=True)
    ap.add_argument("--y", required=True)
    ap.add_argument("--hue", help="one line per value of this column")
    ap.add_argument("--col", help="one panel per value of this column")
    ap.add_argument("--logx", action="store_true")
    ap.add_argument("--logy", action="store_true")
    ap.add_argument("--title", default="")
    ap.add_argument("--out", help="PNG to write (default: TABLE with .png)")
    a = ap.parse_args(argv)
    path = Path(a.table)
    out = Path(a.out) if a.out else path.with_suffix(".png")
    try:
        try:
            table = pd.read_csv(path)
        except FileNotFoundError:
            raise ConfigError(f"no such table: {path}") from None
        except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ConfigError(f"{path} is not a CSV table ({str(e).splitlines()[0]})") from None
        fig = figure(table, a.x, a.y, a.hue, a.col, a.logx, a.logy, a.title)
        tmp = out.with_name(f".{out.name}.tmp.png")
        try:
            fig.savefig(tmp, dpi=120)
            tmp.replace(out)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"cannot write {out}: {e.strerror or e}") from None
    except ConfigError as e:
        print(f"s3sim-plot: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
