"""s3sim-collect and s3sim-plot as a person uses them: help that helps, a killed sweep reported whole, outputs
that never overwrite inputs, and figures whose lines, labels and bands say what they show."""
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from s3sim.collect import collect, status_line

TINY = ["num_requests=20", "max_seq_len=256"]


def collect_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", "from s3sim.cli import collect_main; collect_main()", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real six-point sweep (two policies x three seeds), run once for the module."""
    root = tmp_path_factory.mktemp("sweep")
    p = subprocess.run([sys.executable, "-m", "s3sim.cli", "-m", "policy=orca,s3", "seed=0,1,2", *TINY,
                        f"hydra.sweep.dir={root}/mr"], capture_output=True, text=True, cwd=root)
    assert p.returncode == 0, p.stderr
    return root / "mr"


def point_dirs(mr):
    return sorted((d for d in mr.iterdir() if d.is_dir() and d.name[0].isdigit()),
                  key=lambda d: int(d.name.split("_")[0]))


# ---- s3sim-collect ---------------------------------------------------------------------------------

def test_collect_help_is_real_help_and_bad_arguments_are_one_line():
    p = collect_cli("--help")
    assert p.returncode == 0 and "usage: s3sim-collect" in p.stdout and "OUT.csv" in p.stdout
    assert "no such results directory" not in p.stdout + p.stderr
    for args in ([], ["a", "b", "c"], ["--nope", "x"]):
        p = collect_cli(*args)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert p.stderr.startswith("s3sim-collect: error:")
    p = collect_cli("/nonexistent/results")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no such results directory" in p.stderr


def test_a_killed_sweep_reports_every_point_it_has(sweep, tmp_path):
    """The state kill -9 leaves behind: points 0-1 finished, point 2 begun (its config, no summary), point 3
    begun by Hydra only (its .hydra folder), points 4-5 never given a folder."""
    mr = tmp_path / "mr"
    shutil.copytree(sweep, mr)
    dirs = point_dirs(mr)
    assert len(dirs) == 6
    (dirs[2] / "summary.csv").unlink()
    for f in dirs[3].iterdir():
        if f.name != ".hydra":
            f.unlink()
    names = [d.name for d in dirs[4:]]
    for d in dirs[4:]:
        shutil.rmtree(d)
    table = collect(mr)
    assert len(table) == 6
    status = dict(zip(table.run_dir, table.status))
    assert status[dirs[0].name] == status[dirs[1].name] == "finished"
    assert status[dirs[2].name] == status[dirs[3].name] == "incomplete"
    assert [status[n] for n in names] == ["never started"] * 2  # named as Hydra would have named the folders
    line = status_line(table)
    assert line.startswith("6 points: 2 finished, 0 failed, 0 invalid, 2 incomplete, 2 never started")
    assert all(f"never started: {n}" in line for n in names)
    p = collect_cli(mr, tmp_path / "all.csv")
    assert p.returncode == 1 and "6 points:" in p.stderr and "Traceback" not in p.stderr
    written = pd.read_csv(tmp_path / "all.csv")
    assert (written.status == "never started").sum() == 2
    text = pd.read_csv(tmp_path / "all.csv", dtype=str)  # whole numbers stay whole beside the empty rows
    assert set(text["config.num_requests"].dropna()) == {"20"}  # the config's fields named as summary columns
    assert set(text["config.seed"].dropna()) == {"0", "1", "2"}
    assert text.seed.notna().sum() == 2  # the summary's: the finished runs'
    assert "config.seed" in p.stdout  # still the varied config field in the short table, the empty rows aside
    # a whole sweep says runs, as before; the points match their folders one to one
    whole = collect(sweep)
    assert (whole.status == "finished").all() and len(whole) == 6
    assert status_line(whole).startswith("6 runs: 6 finished")


def test_collect_refuses_an_output_that_overlaps_what_it_reads(sweep, tmp_path):
    mr = tmp_path / "mr"
    shutil.copytree(sweep, mr)
    run = point_dirs(mr)[0]
    before = (run / "summary.csv").read_bytes()
    for out in (run / "summary.csv", run / "all.csv", mr / "multirun.yaml", run):
        p = collect_cli(mr, out)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "OUT.csv" in p.stderr, (out, p.stderr)
    assert (run / "summary.csv").read_bytes() == before and not (run / "all.csv").exists()
    # the same folder reached by another spelling (a relative path, a link) is the same input
    (tmp_path / "link").symlink_to(mr)
    p = collect_cli("link", f"mr/{run.name}/summary.csv", cwd=tmp_path)
    assert p.returncode == 2 and "lies in the run folder" in p.stderr
    p = collect_cli(mr, mr / "all.csv")  # beside the runs, as the sweep's own hint says: fine
    assert p.returncode == 0, p.stderr
    assert len(pd.read_csv(mr / "all.csv")) == 6


def test_what_collect_cannot_tell_of_a_sweep_is_said(sweep, tmp_path):
    """Folders without Hydra's record (hydra.output_subdir=null) are matched by name, not reported never
    started; an unreadable sweep file and folders of an earlier sweep into the same folder are said."""
    bare = tmp_path / "bare"
    shutil.copytree(sweep, bare)
    for d in point_dirs(bare):
        shutil.rmtree(d / ".hydra")
    table = collect(bare)
    assert len(table) == 6 and (table.status == "finished").all()
    assert status_line(table) == "6 runs: 6 finished, 0 failed, 0 invalid, 0 incomplete"
    killed = tmp_path / "killed"
    shutil.copytree(sweep, killed)
    (killed / "multirun.yaml").write_text("")
    shutil.rmtree(point_dirs(killed)[-1])
    line = status_line(collect(killed))
    assert line.startswith("5 runs: 5 finished") and "multirun.yaml cannot be read" in line
    assert "which of its points never started is not known" in line
    mixed = tmp_path / "mixed"
    shutil.copytree(sweep, mixed)
    shutil.copytree(point_dirs(mixed)[0], mixed / "0_policy=vllm")
    line = status_line(collect(mixed))
    assert line.startswith("7 runs: 7 finished")
    assert "1 run folder(s) in the sweep folder are none of the points its multirun.yaml lists" in line


def test_collect_writes_no_table_it_cannot_pair_and_no_file_a_run_is_made_of(sweep, tmp_path):
    (tmp_path / "all.wall_clock.csv").mkdir()  # the companion cannot be written: nor is the table
    p = collect_cli(sweep, tmp_path / "all.csv")
    assert p.returncode == 2 and "cannot write" in p.stderr and "all.wall_clock.csv" in p.stderr
    assert not (tmp_path / "all.csv").exists()
    for name in ("failed.txt", "summary.csv", "resolved_config.yaml"):
        p = collect_cli(sweep, tmp_path / name)
        assert p.returncode == 2 and "named as a run's own file" in p.stderr and not (tmp_path / name).exists()
    p = collect_cli(sweep, "")
    assert p.returncode == 2 and "an empty path names nothing" in p.stderr


def test_collect_refuses_an_out_it_would_not_write_as_named_and_leaves_nothing(sweep, tmp_path):
    """OUT.csv a folder (a second DIR, as a user reading "several" might give), of another format, or in a folder
    that does not exist: one line naming OUT.csv, and no wall-clock companion left behind (it was written first)."""
    (tmp_path / "other_sweep").mkdir()
    for out, words in ((tmp_path / "other_sweep", "is a folder: s3sim-collect reads one DIR"),
                       (tmp_path / "all.parquet", "the table is written as CSV"),
                       (tmp_path / "gone" / "all.csv", f"cannot write {tmp_path / 'gone' / 'all.csv'}: its folder")):
        p = collect_cli(sweep, out)
        assert p.returncode == 2 and words in p.stderr, p.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == ["other_sweep"]


def test_a_table_without_wall_clock_columns_leaves_no_earlier_companion(tmp_path):
    from s3sim.writers import write_table

    write_table(pd.DataFrame({"run": [1], "sim_wall_s": [2.0]}), tmp_path / "t.csv")
    assert (tmp_path / "t.wall_clock.csv").is_file()
    write_table(pd.DataFrame({"run": [1]}), tmp_path / "t.csv")
    assert not (tmp_path / "t.wall_clock.csv").exists()
    (tmp_path / "target.csv").write_text("old\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "target.csv")
    write_table(pd.DataFrame({"run": [1]}), tmp_path / "link.csv")  # the file it points to, the link kept
    assert (tmp_path / "link.csv").is_symlink() and (tmp_path / "target.csv").read_text() == "run\n1\n"


# ---- s3sim-plot ------------------------------------------------------------------------------------

def plot_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", "from s3sim.plot_cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def sweep_table(**extra):
    """Two policies at three offered rates and two time scales, latency rising with the rate."""
    rows = []
    for policy, base in (("orca", 2.0), ("s3", 1.0)):
        for scale in (0.5, 1.0):
            for rate in (1.0, 2.0, 4.0):
                rows.append({"status": "finished", "policy": policy, "workload.time_scale": scale,
                             "offered_rate": rate / scale, "e2e_latency_p50": base * rate * (1 + scale),
                             "ttft_p50": 0.1 * base * rate})
    return pd.DataFrame(rows).assign(**extra)


def figure_of(tmp_path, table, *args):
    from s3sim.plot_cli import build

    table.to_csv(tmp_path / "t.csv", index=False)
    notes = []
    fig, out = build([str(tmp_path / "t.csv"), *args], note=notes.append)
    return fig, notes


def line_colours(ax):
    from matplotlib.colors import to_hex
    return [to_hex(line.get_color()) for line in ax.get_lines()]


def test_hue_by_any_column_gives_each_value_its_own_colour_and_policies_keep_theirs(tmp_path):
    from matplotlib.colors import to_hex

    from s3sim.plots import color

    fig, _ = figure_of(tmp_path, sweep_table(), "--x", "offered_rate", "--y", "e2e_latency_p50",
                       "--hue", "workload.time_scale", "--col", "policy")
    for ax in fig.axes[:2]:
        colours = line_colours(ax)
        assert len(colours) == 2 and len(set(colours)) == 2  # one line per time scale, each its own colour
    assert line_colours(fig.axes[0]) == line_colours(fig.axes[1])  # a value keeps its colour across panels
    fig, _ = figure_of(tmp_path, sweep_table(), "--x", "offered_rate", "--y", "e2e_latency_p50", "--hue", "policy",
                       "--col", "workload.time_scale")
    ax = fig.axes[0]
    assert line_colours(ax) == [to_hex(color("orca")), to_hex(color("s3"))]  # the figures' usual policy colours
    # policies no figure knows still differ from each other and from the known ones
    t = sweep_table()
    t.loc[t.policy == "orca", "policy"] = "mine"
    t = pd.concat([t, sweep_table().query("policy == 'orca'").assign(policy="yours")])
    fig, _ = figure_of(tmp_path, t, "--x", "offered_rate", "--y", "e2e_latency_p50", "--hue", "policy",
                       "--col", "workload.time_scale")
    assert len(set(line_colours(fig.axes[0]))) == 3


def test_style_varies_line_style_and_marker_and_the_legend_names_both(tmp_path):
    fig, _ = figure_of(tmp_path, sweep_table(), "--x", "offered_rate", "--y", "e2e_latency_p50",
                       "--hue", "policy", "--style", "workload.time_scale")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4
    looks = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(looks) == 4 and len({(line.get_linestyle(), line.get_marker()) for line in lines}) == 2
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"policy", "orca", "s3", "workload.time_scale", "0.5", "1.0"} <= set(labels)


def test_axes_carry_units_and_the_frontier_preset_draws_latency_against_offered_rate(tmp_path):
    from s3sim.metrics.schema import unit

    fig, _ = figure_of(tmp_path, sweep_table(), "--preset", "frontier")
    assert len(fig.axes) == 2
    ylabels = [ax.get_ylabel() for ax in fig.axes]
    assert [label.split(" (")[0] for label in ylabels] == ["e2e_latency_p50", "ttft_p50"]
    for ax, metric in zip(fig.axes, ("e2e_latency_p50", "ttft_p50")):
        assert unit(metric) and ax.get_ylabel().endswith(f"({unit(metric)})")
        assert unit("offered_rate") and ax.get_xlabel() == f"offered_rate ({unit('offered_rate')})"
        assert ax.get_yscale() == "log"
        assert len(set(line_colours(ax))) == 2  # hue policy
    # an explicit option overrides the preset's
    fig, _ = figure_of(tmp_path, sweep_table(), "--preset", "frontier", "--y", "ttft_p50")
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel().startswith("ttft_p50")
    # a column the preset needs and the table lacks is one line naming it
    sweep_table().drop(columns="ttft_p50").to_csv(tmp_path / "t.csv", index=False)
    p = plot_cli(tmp_path / "t.csv", "--preset", "frontier")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "ttft_p50" in p.stderr


def test_panels_of_one_metric_in_a_row_share_y_unless_asked(tmp_path):
    args = ["--x", "offered_rate", "--y", "e2e_latency_p50", "--hue", "policy", "--col", "workload.time_scale"]
    fig, _ = figure_of(tmp_path, sweep_table(), *args)
    fig.canvas.draw()
    a, b = fig.axes[:2]
    ys = [y for ax in (a, b) for line in ax.get_lines() for y in line.get_ydata()]
    low, high = a.get_ylim()
    assert a.get_ylim() == b.get_ylim() and low <= min(ys) and high >= max(ys)  # one scale that shows every point
    fig, _ = figure_of(tmp_path, sweep_table(), *args, "--no-sharey")
    fig.canvas.draw()
    assert fig.axes[0].get_ylim() != fig.axes[1].get_ylim()
    # several metrics beside a --col: a row per metric, each row its own scale
    fig, _ = figure_of(tmp_path, sweep_table(), *args[:2], "--y", "e2e_latency_p50,ttft_p50", "--col", "policy")
    fig.canvas.draw()
    grid = [fig.axes[:2], fig.axes[2:4]]
    assert [ax.get_ylabel().split(" (")[0] for ax in (grid[0][0], grid[1][0])] == ["e2e_latency_p50", "ttft_p50"]
    assert grid[0][0].get_ylim() == grid[0][1].get_ylim() != grid[1][0].get_ylim() == grid[1][1].get_ylim()
    for row in grid:
        ys = [y for ax in row for line in ax.get_lines() for y in line.get_ydata()]
        assert row[0].get_ylim()[0] <= min(ys) and row[0].get_ylim()[1] >= max(ys)


def test_confidence_bands_cover_the_interval_where_the_table_has_one(tmp_path):
    import numpy as np
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_hex

    t = sweep_table()
    t["e2e_latency_p50_ci95"] = 0.1 * t.e2e_latency_p50
    fig, _ = figure_of(tmp_path, t.query("`workload.time_scale` == 1.0"), "--x", "offered_rate",
                       "--y", "e2e_latency_p50", "--hue", "policy")
    ax = fig.axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    for band, line in zip(bands, ax.get_lines()):
        assert to_hex(band.get_facecolor()[0]) == to_hex(line.get_color())
        y = np.asarray(line.get_ydata())
        ys = band.get_paths()[0].vertices[:, 1]
        assert ys.min() == pytest.approx((0.9 * y).min()) and ys.max() == pytest.approx((1.1 * y).max())
    fig, _ = figure_of(tmp_path, t, "--x", "offered_rate", "--y", "e2e_latency_p50", "--hue", "policy", "--ci", "none")
    assert not [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    # asked for intervals a column does not have: said, not drawn silently without them
    _, notes = figure_of(tmp_path, t, "--x", "offered_rate", "--y", "e2e_latency_p50,ttft_p50", "--ci", "bars")
    assert any(n.startswith("--ci bars: no interval to draw for ttft_p50 (") for n in notes), notes
    _, notes = figure_of(tmp_path, t.drop(columns="e2e_latency_p50_ci95"), "--x", "offered_rate", "--y",
                         "e2e_latency_p50")
    assert not any("--ci" in n for n in notes)  # the default draws a band where there is one, quietly


def test_what_is_left_out_is_said_and_a_figure_without_a_point_is_refused(tmp_path):
    t = sweep_table()
    t.loc[t["workload.time_scale"] == 0.5, "offered_rate"] = float("inf")  # offline runs
    t = pd.concat([t, t.head(2).assign(status="failed")])
    t["empty"] = float("nan")
    t.to_csv(tmp_path / "t.csv", index=False)
    p = plot_cli(tmp_path / "t.csv", "--x", "offered_rate", "--y", "e2e_latency_p50", "--hue", "policy")
    assert p.returncode == 0, p.stderr
    inf_rows = int((t.status == "finished").sum() // 2)
    assert f"left out {inf_rows} of {int((t.status == 'finished').sum())} rows: offered_rate inf" in p.stderr
    assert "left out 2 of" in p.stderr and "failed" in p.stderr
    assert (tmp_path / "t.png").stat().st_size > 10_000
    p = plot_cli(tmp_path / "t.csv", "--x", "offered_rate", "--y", "empty")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no finite point" in p.stderr and "empty" in p.stderr
    p = plot_cli(tmp_path / "t.csv", "--x", "workload.time_scale", "--y", "offered_rate", "--logx")
    assert p.returncode == 0 and "offered_rate inf" in p.stderr


def test_log_axes_leave_out_non_positive_values_in_one_line(tmp_path):
    t = sweep_table()
    t.loc[t.index[:3], "e2e_latency_p50"] = [0.0, -1.0, 0.0]
    t.to_csv(tmp_path / "t.csv", index=False)
    p = plot_cli(tmp_path / "t.csv", "--x", "offered_rate", "--y", "e2e_latency_p50", "--hue", "policy", "--logy",
                 "--style", "workload.time_scale")
    assert p.returncode == 0, p.stderr
    assert "Warning" not in p.stderr and p.stderr.count("\n") == 1
    assert "left out 3 of" in p.stderr and "<= 0" in p.stderr and "--logy" in p.stderr
    t["e2e_latency_p50"] = 0.0
    t.to_csv(tmp_path / "t.csv", index=False)
    p = plot_cli(tmp_path / "t.csv", "--x", "offered_rate", "--y", "e2e_latency_p50", "--logy")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "no finite point" in p.stderr and "Warning" not in p.stderr


def test_the_figure_never_overwrites_its_table(tmp_path):
    sweep_table().to_csv(tmp_path / "t.csv", index=False)
    before = (tmp_path / "t.csv").read_bytes()
    for out in ("t.csv", "./t.csv", str(tmp_path / "t.csv")):
        p = plot_cli("t.csv", "--x", "offered_rate", "--y", "e2e_latency_p50", "--out", out, cwd=tmp_path)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--out" in p.stderr, p.stderr
    (tmp_path / "t.png").symlink_to(tmp_path / "t.csv")  # the default output, a link to the table
    p = plot_cli("t.csv", "--x", "offered_rate", "--y", "e2e_latency_p50", cwd=tmp_path)
    assert p.returncode == 2 and "overlaps an input" in p.stderr
    assert (tmp_path / "t.csv").read_bytes() == before
    p = plot_cli("--help")
    assert p.returncode == 0 and "--preset" in p.stdout and "frontier" in p.stdout


def test_a_row_without_a_facet_value_is_drawn_as_none_and_said(tmp_path):
    """orca has no block size: its runs are a panel of their own, not dropped; a hue without a value gets its
    own colour and legend entry, not an unlabelled grey."""
    t = sweep_table().query("`workload.time_scale` == 1.0")
    t = t.assign(**{"policy.block_size": np.where(t.policy == "s3", 16.0, np.nan)})
    fig, notes = figure_of(tmp_path, t, "--x", "offered_rate", "--y", "ttft_p50", "--col", "policy.block_size",
                           "--hue", "policy")
    assert [ax.get_title() for ax in fig.axes] == ["policy.block_size = 16.0", "policy.block_size = (none)"]
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 1]
    assert notes == ["--col policy.block_size: 3 of 6 rows have no value, drawn as (none)"]
    fig, notes = figure_of(tmp_path, t, "--x", "offered_rate", "--y", "ttft_p50", "--hue", "policy.block_size")
    labels = [x.get_text() for x in fig.legends[0].get_texts()]
    assert labels == ["policy.block_size", "16.0", "(none)"]
    assert len(set(line_colours(fig.axes[0]))) == 2


def test_a_line_joining_runs_at_one_x_is_said_and_dollars_are_text(tmp_path):
    fig, notes = figure_of(tmp_path, sweep_table(), "--x", "offered_rate", "--y", "ttft_p50", "--hue", "policy",
                           "--title", r"cost: $5 vs $\undefined{")
    assert len(notes) == 1 and "point(s) share an x with another of their line" in notes[0]
    assert fig._suptitle.get_text() == r"cost: \$5 vs \$\undefined{"  # drawn as written
    fig.savefig(tmp_path / "f.png")  # mathematics would fail to parse it
    _, notes = figure_of(tmp_path, sweep_table(), "--x", "offered_rate", "--y", "ttft_p50", "--hue", "policy",
                         "--style", "workload.time_scale")
    assert notes == []


@pytest.mark.parametrize("text, message", [("a,b\n1,2,3,4\n3,4\n", "line 2 has 4 fields, the header 2"),
                                           ("a,b\n1,2\n3\n", "line 3 has 1 fields, the header 2"),
                                           ("a,b,b\n1,2,3\n", "the column 'b' is named twice")])
def test_a_table_with_a_ragged_row_or_a_column_named_twice_is_refused(tmp_path, text, message):
    (tmp_path / "t.csv").write_text(text)
    p = plot_cli(tmp_path / "t.csv", "--x", "a", "--y", "b")
    assert p.returncode == 2 and message in p.stderr and p.stderr.count("\n") == 1
    assert not (tmp_path / "t.png").exists()


def test_line_styles_stay_distinct_past_the_markers():
    from s3sim.plots import LINESTYLES, MARKERS, line_styles

    n = len(LINESTYLES) * len(MARKERS)
    styles = list(line_styles(range(n)).values())
    assert len(set(styles)) == n
    assert styles[:len(MARKERS)] == [(LINESTYLES[i % len(LINESTYLES)], m) for i, m in enumerate(MARKERS)]


def test_a_misspelt_column_gets_near_names_and_a_word_names_its_row(tmp_path):
    t = sweep_table()
    with pytest.raises(Exception, match=r"--y 'ttft_p55' is not a column of the table; similar: ttft_p50"):
        figure_of(tmp_path, t, "--x", "offered_rate", "--y", "ttft_p55")
    t["ttft_p50"] = t["ttft_p50"].astype(object)
    t.loc[t.index[4], "ttft_p50"] = "fast"
    with pytest.raises(Exception, match=r"--y 'ttft_p50' is not numeric .*: 'fast' in data row 5"):
        figure_of(tmp_path, t, "--x", "offered_rate", "--y", "ttft_p50")


def test_a_gzip_table_is_drawn_as_a_plain_one(tmp_path):
    sweep_table().to_csv(tmp_path / "t.csv.gz", index=False)
    p = plot_cli(tmp_path / "t.csv.gz", "--x", "offered_rate", "--y", "ttft_p50", "--hue", "policy", "--style",
                 "workload.time_scale", "--out", tmp_path / "f.png")
    assert p.returncode == 0 and p.stderr == "" and (tmp_path / "f.png").is_file(), p.stderr


def test_a_split_into_more_panels_than_a_figure_holds_is_refused(tmp_path):
    """--col over a column of 200 values drew 200 panels (minutes, gigabytes); past 64 it is one line naming the
    option, the column and its count, and no figure."""
    n = 200
    pd.DataFrame({"x": np.tile([1, 2], n), "y": np.arange(2 * n), "seed": np.repeat(np.arange(n), 2)}).to_csv(
        tmp_path / "t.csv", index=False)
    p = plot_cli(tmp_path / "t.csv", "--x", "x", "--y", "y", "--col", "seed", "--out", tmp_path / "f.png")
    assert p.returncode == 2 and "200 panels (--col 'seed' has 200 values), beyond the 64" in p.stderr, p.stderr
    assert not (tmp_path / "f.png").exists()
    small = pd.read_csv(tmp_path / "t.csv").query("seed < 8")
    small.to_csv(tmp_path / "s.csv", index=False)
    p = plot_cli(tmp_path / "s.csv", "--x", "x", "--y", "y", "--col", "seed", "--out", tmp_path / "f.png")
    assert p.returncode == 0, p.stderr


def test_too_many_panels_from_several_y_columns_is_said_as_such(tmp_path):
    """65 --y columns: the refusal names them (it read '65 panels (, one row per --y)'), before any other note."""
    cols = {f"m{i}": [1.0, 2.0] for i in range(65)}
    pd.DataFrame({"x": [1, 2], **cols}).to_csv(tmp_path / "t.csv", index=False)
    p = plot_cli(tmp_path / "t.csv", "--x", "x", "--y", ",".join(cols), "--out", tmp_path / "f.png")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [p.stderr.strip()], p.stderr
    assert "65 panels (65 --y columns), beyond the 64" in p.stderr
