"""s3sim-collect and s3sim-plot as a person uses them: help that helps, a killed sweep reported whole, outputs
that never overwrite inputs, and figures whose lines, labels and bands say what they show."""
import shutil
import subprocess
import sys

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
    return sorted((d for d in mr.iterdir() if d.is_dir() and d.name[0].isdigit()), key=lambda d: int(d.name.split("_")[0]))


# ---- s3sim-collect ---------------------------------------------------------------------------------

def test_collect_help_is_real_help_and_bad_arguments_are_one_line():
    p = collect_cli("--help")
    assert p.returncode == 0 and "usage: s3sim-collect" in p.stdout and "OUT.csv" in p.stdout
    assert "no such results directory" not in p.stdout + p.stderr
    for args in ([], ["a", "b", "c"], ["--nope", "x"]):
        p = collect_cli(*args)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("s3sim-collect: error:"), p.stderr
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
    assert set(text.num_requests.dropna()) == {"20"} and set(text.seed.dropna()) == {"0", "1", "2"}
    assert "seed" in p.stdout  # still the varied config field in the short table, the empty rows aside
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
