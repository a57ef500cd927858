"""`s3sim-plot TABLE --x COL --y COL[,COL...] [--hue COL] [--style COL] [--col COL] [--row COL] [--out FILE.png]`:
a figure from any table `s3sim-collect` writes (or any CSV of summaries), so a sweep is looked at without
writing code.

One line per `--hue` value (a distinct colour each; a policy keeps its own colour across every figure) and per
`--style` value (line style and marker), `--y` against `--x`, sorted by x; one panel per `--col` value (columns) and
per `--row` value (rows), at most 64 in all (`MAX_PANELS`); several `--y` columns give one panel each (rows when
`--col` is given). Panels showing the same metric in a row share their y axis (`--no-sharey`: each its own). Axes
are labelled with units (`ttft_p50 (s)`). Where the table has `<y>_ci95` (runs with `repeats` > 1) a shaded band
shows the 95 % confidence interval (`--ci bars`: error bars; `--ci none`). Only finished runs are drawn when the
table has a `status` column.

Rows that cannot be drawn are left out and said so on stderr, count and why: not finished, an empty (NaN)
or infinite value (an offline run's `offered_rate` is inf: every request arrives at t=0), or a value <= 0
on a log axis. A row with no `--hue`, `--style`, `--col` or `--row` value is drawn under the value `(none)`,
said so; a line holding two points at one x (runs that differ in a column no option splits) is said too.
Text is drawn as written (a `$` is a dollar sign, not mathematics). A figure (or a requested metric) left
with no point is refused, exit code 2, as is bad input: one line naming the option and what would be valid.
The figure never overwrites the table.

Presets (explicit options override a preset's):
  --preset frontier   latency against offered load, one panel per latency (`--x offered_rate
                      --y e2e_latency_p50,ttft_p50 --hue policy --logy`): where each policy's latency
                      takes off as the offered rate grows; e.g. a trace replayed at several
                      `workload.time_scale`s, or `arrival=poisson` at several `arrival.rate`s.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.commandline import Parser, given_path, terminable
from s3sim.core.errors import ConfigError

PROG = "s3sim-plot"
PRESETS = {
    "frontier": {"x": "offered_rate", "y": ["e2e_latency_p50", "ttft_p50"], "hue": "policy", "logy": True},
}
CI_MODES = ("band", "bars", "none")
FORMATS = ("png", "pdf", "svg")
WHY_INF = {"offered_rate": " (offline runs: every request arrives at t=0)"}
MAX_PANELS = 64  # panels in one figure (an 8 x 8 grid)
NONE = "(none)"  # the value drawn for a row with no value in a --hue/--style/--col/--row column


def say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _check_columns(table: pd.DataFrame, named: list[tuple[str, str | None]]) -> None:
    for option, column in named:
        if column is not None and column not in table.columns:
            near = list(dict.fromkeys([*difflib.get_close_matches(column, map(str, table.columns), n=4),
                                       *(c for c in table.columns if column.split(".")[-1] in c)]))[:4]
            raise ConfigError(f"{option} {column!r} is not a column of the table" +
                              (f"; similar: {', '.join(near)}" if near else ""))


def _values(series: pd.Series, column: str) -> list:
    """A column's distinct values in reading order: policies in the usual order, numbers ascending,
    anything else as first seen."""
    from s3sim.plots import POLICY_COLUMNS, ordered

    seen = list(dict.fromkeys(series.dropna()))
    if column in POLICY_COLUMNS:
        return ordered(seen)
    if pd.api.types.is_numeric_dtype(series):
        return sorted(seen)
    return seen


def _drawable(table: pd.DataFrame, x: str, y: str, logx: bool, logy: bool) -> tuple[pd.Series, list[str]]:
    """Which rows have a point for `y` against `x`, and why the others have none."""
    keep = pd.Series(True, index=table.index)
    why = []
    for column, log, flag in ((x, logx, "--logx"), (y, logy, "--logy")):
        v = pd.to_numeric(table[column], errors="coerce").astype(float)
        checks = [(v.isna(), "empty (NaN)"), (np.isinf(v), "inf" + WHY_INF.get(column, ""))]
        if log:
            checks.append((v <= 0, f"<= 0 (no place on a log axis, {flag})"))
        for bad, reason in checks:
            bad = bad & keep
            if bad.any():
                why.append(f"{column} {reason} in {int(bad.sum())}")
                keep &= ~bad
    return keep, why


def shown(text: str) -> str:
    """Text drawn as written: matplotlib reads `$...$` as mathematics (and fails on some), so `$` is escaped."""
    return text.replace("$", r"\$")


def _split_values(table: pd.DataFrame, keys: dict, notes: list) -> tuple[pd.DataFrame, dict]:
    """Each splitting column's values in reading order (`_values`), a row without one under `NONE` (after the
    rest, said in `notes`), and the table with those rows' cells set to it."""
    values = {}
    for option, column in keys.items():
        if column is None or column in values:
            continue
        values[column] = _values(table[column], column)
        empty = table[column].isna()
        if empty.any():
            notes.append(f"{option} {column}: {int(empty.sum())} of {len(table)} rows have no value, drawn as {NONE}")
            table = table.assign(**{column: table[column].astype(object).where(~empty, NONE)})
            values[column].append(NONE)
    return table, values


def figure(table: pd.DataFrame, x: str, y, hue: str | None = None, col: str | None = None,
           logx: bool = False, logy: bool = False, title: str = "", style: str | None = None,
           row: str | None = None, sharey: bool = True, ci: str | None = None, note=say):
    """The figure the module doc describes; `y` is a column or a list of them. What is left out is passed
    to `note` (stderr by default); a figure or metric with nothing to draw raises ConfigError. Its text
    (title, columns, values) is drawn as given (`shown`)."""
    from matplotlib.lines import Line2D

    from s3sim.metrics.schema import axis_label
    from s3sim.plots import line_styles, palette, pyplot

    metrics = [y] if isinstance(y, str) else list(y)
    if not metrics:
        raise ConfigError("--y names no column")
    asked = ci is not None  # None: a band where the table has the intervals, said nothing where it has none
    ci = "band" if ci is None else ci
    if ci not in CI_MODES:
        raise ConfigError(f"--ci {ci!r} is not one of {', '.join(CI_MODES)}")
    _check_columns(table, [("--x", x), *(("--y", m) for m in metrics), ("--hue", hue), ("--style", style),
                           ("--col", col), ("--row", row)])
    if row is not None and len(metrics) > 1:
        raise ConfigError("--row takes one --y column; with several, each metric is a row of its own")
    notes = []  # said once the figure is sure to be drawn: a refusal is one line
    if asked and ci != "none":
        missing = [m for m in metrics if f"{m}_ci95" not in table.columns
                   or not np.isfinite(pd.to_numeric(table[f"{m}_ci95"], errors="coerce")).any()]
        if missing:
            notes.append(f"--ci {ci}: no interval to draw for {', '.join(missing)} (no finite <y>_ci95 column: runs "
                         "with repeats > 1 have one)")
    if "status" in table.columns:
        done = table.status == "finished"
        if not done.all():
            counts = table.status[~done].fillna("no status").value_counts()
            notes.append(f"left out {int((~done).sum())} of {len(table)} rows not finished ("
                 + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")")
        table = table[done]
    if table.empty:
        raise ConfigError("the table has no finished runs to plot")
    for option, column in (("--x", x), *(("--y", m) for m in metrics)):
        if not pd.api.types.is_numeric_dtype(table[column]):
            cells = pd.to_numeric(table[column], errors="coerce")
            bad = cells.isna() & table[column].notna()
            where = (f": {table[column][bad].iloc[0]!r} in data row {int(np.flatnonzero(bad.to_numpy())[0]) + 1} "
                     "of the finished runs") if bad.any() else ""
            raise ConfigError(f"{option} {column!r} is not numeric (a column of numbers is needed){where}")
    kept = {}
    for m in metrics:
        keep, why = _drawable(table, x, m, logx, logy)
        if not keep.any():
            raise ConfigError(f"no finite point to plot for {m} against {x} in {len(table)} "
                              + ("finished " if "status" in table.columns else "") + "rows: " + "; ".join(why))
        if why:
            notes.append(f"{m} against {x}: left out {int((~keep).sum())} of {len(table)} rows: " + "; ".join(why))
        kept[m] = keep
    table, values = _split_values(table, {"--hue": hue, "--style": style, "--col": col, "--row": row}, notes)
    splits = [k for k in (hue, style, col, row) if k]
    panels = (len(values[col]) if col else 1) * (len(metrics) if len(metrics) > 1 else len(values[row]) if row else 1)
    if panels > MAX_PANELS:  # a figure of thousands of axes takes minutes and gigabytes to say nothing
        many = [f"{o} {c!r} has {len(values[c])} values" for o, c in (("--col", col), ("--row", row)) if c]
        many += [f"{len(metrics)} --y columns"] if len(metrics) > 1 else []
        raise ConfigError(f"{panels} panels ({', '.join(many)}), beyond the {MAX_PANELS} a figure holds: split by a "
                          "column with fewer values, or keep fewer rows of the table")
    for m in metrics:
        drawn = table[kept[m]]
        twice = drawn.duplicated([*splits, x]).sum()
        if twice:
            notes.append(f"{m}: {int(twice)} point(s) share an x with another of their line (runs that differ in a "
                         f"column no --hue/--style/--col/--row splits): the line joins them as they sort")
    for line in notes:
        note(line)

    hues = palette(hue, values[hue]) if hue else {None: "C0"}
    styles = line_styles(values[style]) if style else {None: ("-", "o")}
    col_values = values[col] if col else [None]
    row_values = values[row] if row else [None]
    # the grid: (metric, row value, col value) per panel
    if len(metrics) > 1 and col is None:
        grid = [[(m, None, None) for m in metrics]]
    elif len(metrics) > 1:
        grid = [[(m, None, c) for c in col_values] for m in metrics]
    else:
        grid = [[(metrics[0], r, c) for c in col_values] for r in row_values]
    nrows, ncols = len(grid), len(grid[0])
    names = [str(v) for v in (*(hues if hue else ()), *(styles if style else ()), hue or "", style or "")]
    legend_w = 0.7 + 0.075 * max(map(len, names)) if (hue or style) else 0.0  # inches, at font size 8
    plt = pyplot()
    shared = sharey and all(len({m for m, _, _ in panels}) == 1 for panels in grid)  # a row shows one metric
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols + legend_w, 3.4 * nrows + 0.4), squeeze=False,
                             sharex="col" if nrows > 1 else False, sharey="row" if shared else False)
    for i, panels in enumerate(grid):
        for j, (m, r, c) in enumerate(panels):
            ax = axes[i][j]
            d = table[kept[m]]
            if r is not None:
                d = d[d[row] == r]
            if c is not None:
                d = d[d[col] == c]
            keys = [k for k in (hue, style) if k]
            groups = d.groupby(keys, sort=False, dropna=False) if keys else [((), d)]
            for key, g in groups:
                key = key if isinstance(key, tuple) else (key,)
                h = key[0] if hue else None
                s = key[-1] if style else None
                colour = hues.get(h, "0.5")
                ls, marker = styles.get(s, ("-", "o"))
                g = g.sort_values(x)
                xs, ys = g[x].astype(float).to_numpy(), g[m].astype(float).to_numpy()
                ax.plot(xs, ys, ls=ls, marker=marker, ms=4, color=colour)
                band = f"{m}_ci95"
                if ci != "none" and band in g.columns:
                    err = pd.to_numeric(g[band], errors="coerce").astype(float).to_numpy()
                    if np.isfinite(err).any():
                        if ci == "band":
                            ax.fill_between(xs, ys - err, ys + err, color=colour, alpha=0.2, lw=0)
                        else:
                            ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor=colour, capsize=3)
            if d.empty:
                ax.text(0.5, 0.5, "no finite point", transform=ax.transAxes, ha="center", va="center", color="0.4")
            where = [f"{row} = {r}" if r is not None else "", f"{col} = {c}" if c is not None else ""]
            ax.set(title=shown(", ".join(w for w in where if w)), xscale="log" if logx else "linear",
                   yscale="log" if logy else "linear")
            if i == nrows - 1:
                ax.set_xlabel(shown(axis_label(x)))
            ax.grid(alpha=0.3)
            if j == 0 or not shared:
                ax.set_ylabel(shown(axis_label(m)))
    handles, heads = [], []  # one legend: each column's name, then its values
    if hue:
        heads.append(len(handles))
        handles.append(Line2D([], [], ls="none", label=shown(hue)))
        handles += [Line2D([], [], color=c, marker="o", ms=4, label=shown(str(v))) for v, c in hues.items()]
    if style:
        heads.append(len(handles))
        handles.append(Line2D([], [], ls="none", label=shown(style)))
        handles += [Line2D([], [], color="0.3", ls=ls, marker=mk, ms=4, label=shown(str(v)))
                    for v, (ls, mk) in styles.items()]
    if title:
        fig.suptitle(shown(title), fontsize=10, wrap=True)  # a long title wraps within the figure, not past its edges
    if handles:
        texts = fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False).get_texts()
        for i in heads:
            texts[i].set_fontweight("bold")
    fig.tight_layout(rect=(0, 0, 1 - legend_w / fig.get_figwidth(), 1))
    return fig


def read_table(path: Path) -> pd.DataFrame:
    """The table, refused whole where a row has more or fewer fields than the header (pandas would shift it a
    column or fill it with NaN) or where two columns share a name (pandas renames the second `name.1`)."""
    from s3sim.inputs import ragged_row

    if not path.is_file():
        raise ConfigError(f"no such table: {path}")
    ragged = ragged_row(path)
    if ragged is not None:
        raise ConfigError(f"{path}: {ragged}; a table has one value per column in every row")
    try:
        table = pd.read_csv(path)  # a .csv.gz too
        header = list(pd.read_csv(path, nrows=1, header=None, dtype=str).iloc[0]) if len(table.columns) else []
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ConfigError(f"{path} is not a CSV table ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    twice = [c for c in dict.fromkeys(header) if header.count(c) > 1]
    if twice:
        raise ConfigError(f"{path}: the column {twice[0]!r} is named twice; name each column once")
    return table


def columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def parser() -> Parser:
    ap = Parser(prog=PROG, description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", type=given_path, help="a CSV of run summaries (s3sim-collect DIR OUT.csv writes one)")
    ap.add_argument("--preset", choices=sorted(PRESETS),
                    help="a named figure (described above); options given override it")
    ap.add_argument("--x", help="the column along x")
    ap.add_argument("--y", type=columns, help="the column(s) along y, comma-separated: one panel each")
    ap.add_argument("--hue", help="one colour per value of this column")
    ap.add_argument("--style", help="one line style and marker per value of this column")
    ap.add_argument("--col", help="one panel per value of this column, side by side")
    ap.add_argument("--row", help="one row of panels per value of this column")
    ap.add_argument("--logx", action="store_true", help="log x axis (values <= 0 left out, said so)")
    ap.add_argument("--logy", action="store_true", help="log y axis (values <= 0 left out, said so)")
    ap.add_argument("--no-sharey", dest="sharey", action="store_false",
                    help="each panel its own y axis (default: shared by the panels of one metric in a row)")
    ap.add_argument("--ci", choices=CI_MODES, default=None,
                    help="how <y>_ci95 is drawn where the table has it (default: band; asked for, a column without "
                         "it is said)")
    ap.add_argument("--title", default="", help="above the panels")
    ap.add_argument("--out", type=given_path, help="the figure to write, .png, .pdf or .svg (default: TABLE with .png)")
    return ap


def build(argv=None, note=say):
    """The figure the command line asks for and the file it goes to; ConfigError on bad input (argparse's
    own errors exit 2 with one line)."""
    ap = parser()
    a = ap.parse_args(argv)
    preset = PRESETS.get(a.preset, {})
    x, y, hue = a.x or preset.get("x"), a.y or preset.get("y"), a.hue or preset.get("hue")
    logy = a.logy or preset.get("logy", False)
    if x is None or not y:
        ap.error("--x and --y are required (or --preset " + "/".join(PRESETS) + ")")
    path = Path(a.table)
    out = Path(a.out) if a.out else path.with_suffix(".png")
    from_preset = {"--x": None if a.x else x, "--y": None if a.y else y, "--hue": None if a.hue else hue}
    if out.resolve() == path.resolve():
        raise ConfigError(f"--out {out} is the table it reads: an output never overlaps an input; name another file")
    if out.suffix.lstrip(".").lower() not in FORMATS:
        raise ConfigError(f"--out {out} must end with one of {', '.join('.' + f for f in FORMATS)}")
    table = read_table(path)
    for option, given in from_preset.items():
        for c in [given] if isinstance(given, str) else given or []:
            if c not in table.columns:
                if option == "--hue":  # a table of one policy's runs: no colours by policy, no complaint
                    hue = None
                    continue
                raise ConfigError(f"--preset {a.preset} draws {option} {c}, not a column of the table; "
                                  f"name another with {option}")
    fig = figure(table, x, y, hue, a.col, a.logx, logy, a.title, style=a.style, row=a.row, sharey=a.sharey,
                 ci=a.ci, note=note)
    return fig, out


@terminable
def main(argv=None) -> None:
    from s3sim.plots import pyplot
    from s3sim.writers import write_atomically

    try:
        fig, out = build(argv)
        try:
            write_atomically(out, lambda tmp: fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".").lower()))
        except OSError as e:
            raise ConfigError(f"cannot write {out}: {e.strerror or e}") from None
        finally:
            pyplot().close(fig)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
