"""Sweeps as a user runs them: through the joblib launcher, resumed without recomputing, with a failing
point that neither stops the others nor corrupts the collected table; cluster launchers that compose."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from s3sim.cli import CONF_DIR
from s3sim.collect import collect, status_line
from s3sim.core.errors import ConfigError
from s3sim.runner import run_dir

S3SIM = [sys.executable, "-m", "s3sim.cli"]
TINY = ["num_requests=50", "max_seq_len=512"]


def s3sim(*args, cwd):
    return subprocess.run([*S3SIM, *args], capture_output=True, text=True, cwd=cwd)


def test_two_point_sweep_through_joblib_then_resumed(tmp_path):
    sweep = ["-m", "policy=orca,s3", *TINY, f"hydra.sweep.dir={tmp_path}/mr"]
    p = s3sim(*sweep, "hydra/launcher=local", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "JoblibLauncher" in (tmp_path / "mr" / "multirun.yaml").read_text()
    assert "2 runs: 2 finished, 0 failed, 0 invalid, 0 incomplete" in p.stderr
    summaries = sorted((tmp_path / "mr").glob("*/summary.csv"))
    assert len(summaries) == 2
    stamps = [s.stat().st_mtime_ns for s in summaries]
    again = s3sim(*sweep, cwd=tmp_path)  # the same points again (basic launcher): nothing recomputed
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("(reused)") == 2
    assert [s.stat().st_mtime_ns for s in summaries] == stamps
    table = collect(tmp_path / "mr")
    assert sorted(table.policy) == ["orca", "s3"] and (table.status == "finished").all()
    assert (table["num_requests"] == 50).all() and (table["policy.name"] == table.policy).all()


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    p = s3sim("-m", "policy.name=s3,nope", *TINY, f"hydra.sweep.dir={tmp_path}/mr", cwd=tmp_path)
    assert p.returncode == 1
    assert "2 runs: 1 finished, 1 failed, 0 invalid, 0 incomplete" in p.stderr
    assert "policy.name 'nope' is unknown" in p.stderr
    assert "sweep: point 0 done (" in p.stderr and "sweep: point 1 FAILED (its failed.txt says why) (" in p.stderr
    out = subprocess.run([sys.executable, "-c", "from s3sim.cli import collect_main; collect_main()",
                          str(tmp_path / "mr"), str(tmp_path / "all.csv")], capture_output=True, text=True)
    assert out.returncode == 1, out.stderr  # not every run finished
    assert "failed: 1_max_seq_len=512,num_requests=50,policy.name=nope: ConfigError: policy.name 'nope' is unknown" in out.stderr
    table = pd.read_csv(tmp_path / "all.csv").set_index("policy.name")
    assert table.status.to_dict() == {"s3": "finished", "nope": "failed"}
    assert table.request_throughput["s3"] > 0 and pd.isna(table.request_throughput["nope"])


def test_a_sweep_through_submitit_runs_real_jobs(tmp_path):
    """hydra/launcher=submitit_local: the SLURM launcher's code path (submitit pickles each point and runs
    it as a job) with local processes for nodes; a failing point is reported, the others finish."""
    p = s3sim("-m", "hydra/launcher=submitit_local", "policy.name=s3,nope", *TINY,
              f"hydra.sweep.dir={tmp_path}/mr", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "2 runs: 1 finished, 1 failed, 0 invalid, 0 incomplete" in p.stderr
    assert "policy.name 'nope' is unknown" in p.stderr
    assert "LocalLauncher" in (tmp_path / "mr" / "multirun.yaml").read_text()
    jobs = list((tmp_path / "mr" / ".submitit").rglob("*_submitted.pkl"))
    assert len(jobs) == 2  # two real submitit jobs, one per point
    table = collect(tmp_path / "mr").set_index("policy.name")
    assert table.status.to_dict() == {"s3": "finished", "nope": "failed"}


def test_a_sweep_through_ray_runs_real_tasks(tmp_path):
    """hydra/launcher=ray: a real Ray cluster started on this machine for the sweep, each point a Ray task;
    the same sweep runs on a cluster by `hydra.launcher.ray.init.address`."""
    p = s3sim("-m", "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2", "policy.name=s3,nope", "seed=0,1",
              *TINY, f"hydra.sweep.dir={tmp_path}/mr", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "Started a local Ray instance" in p.stderr
    assert "4 runs: 2 finished, 2 failed, 0 invalid, 0 incomplete" in p.stderr
    assert "RayLauncher" in (tmp_path / "mr" / "multirun.yaml").read_text()
    table = collect(tmp_path / "mr")
    assert sorted(zip(table["policy.name"], table["config.seed"], table.status)) == [
        ("nope", 0, "failed"), ("nope", 1, "failed"), ("s3", 0, "finished"), ("s3", 1, "finished")]


def test_collector_reads_finished_failed_and_killed_runs(tmp_path, cfg):
    c = cfg(*TINY)
    run_dir(c, tmp_path / "ok")
    with pytest.raises(ConfigError):
        run_dir({**c, "max_seq_len": 0}, tmp_path / "bad")
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "resolved_config.yaml").write_text("policy: {name: s3}\n")
    (tmp_path / "ok" / ".summary.csv.x.tmp").write_text("half a fi")  # a writer that died mid-file
    table = collect(tmp_path).set_index("run_dir")
    assert table.status.to_dict() == {"bad": "failed", "killed": "incomplete", "ok": "finished"}
    assert table.error["bad"].startswith("ConfigError: max_seq_len must be a positive integer")
    assert table["policy.name"].to_dict() == {"bad": "s3", "killed": "s3", "ok": "s3"}
    assert status_line(table.reset_index()).startswith("3 runs: 1 finished, 1 failed, 0 invalid, 1 incomplete")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no runs under"):
        collect(tmp_path / "empty")


def test_a_finished_run_is_reused_only_for_the_same_config(tmp_path, cfg):
    c = cfg(*TINY)
    row, reused = run_dir(c, tmp_path / "r")
    assert not reused
    again, reused = run_dir(c, tmp_path / "r")
    assert reused and again["request_throughput"] == row["request_throughput"]
    _, reused = run_dir({**c, "seed": 1}, tmp_path / "r")
    assert not reused
    with pytest.raises(ConfigError):
        run_dir({**c, "max_seq_len": 0}, tmp_path / "r")
    assert (tmp_path / "r" / "failed.txt").exists() and not (tmp_path / "r" / "summary.csv").exists()
    run_dir(c, tmp_path / "r")
    assert not (tmp_path / "r" / "failed.txt").exists()


@pytest.mark.parametrize("launcher, expect", [
    ("slurm", ["SlurmLauncher", "partition: null", "timeout_min: 30", "array_parallelism: 64"]),
    ("local", ["JoblibLauncher", "n_jobs: -1"]),
    ("ray", ["RayLauncher", "address: null"]),
    ("submitit_local", ["LocalLauncher", "submitit_folder"]),
])
def test_launcher_configs_compose_without_a_cluster(tmp_path, launcher, expect):
    p = s3sim(f"hydra/launcher={launcher}", "--cfg", "hydra", "-p", "hydra.launcher", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for text in expect:
        assert text in p.stdout


@pytest.mark.parametrize("preset", ["paper", "accuracy", "buckets", "rate", "burstiness", "hardware"])
def test_experiment_presets_compose(preset):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        c = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    assert c.hydra.sweep.dir == f"multirun/{preset}"
    assert c.hydra.sweeper.params


def test_a_sweep_worker_ends_when_the_sweep_is_killed(tmp_path):
    """kill -9 of a sweep running on the local launcher: its workers stop instead of finishing points."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = (
        "import multiprocessing, sys, time\n"
        "def child():\n"
        "    from s3sim.sweep import stop_with_parent\n"
        "    stop_with_parent(poll_s=0.05)\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    p = multiprocessing.get_context('spawn').Process(target=child)\n"
        "    p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(60)\n")
    main = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(CONF_DIR).parent)})
    worker = psutil.Process(int(main.stdout.readline()))
    time.sleep(1.0)  # the worker has started its watch
    assert worker.is_running()
    os.kill(main.pid, signal.SIGKILL)
    main.wait()
    worker.wait(timeout=20)  # raises if it is still running
