"""Progress of long simulations: nothing for a short run, a bar on a terminal, a line a minute in a log,
points done in a sweep; and the simulation's results do not depend on whether it is shown."""
import io

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s3sim.cli import CONF_DIR
from s3sim.simulator.progress import LOG_EVERY_S, QUIET_S, Progress


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_one_line_a_minute_with_requests_simulated_time_and_rate(monkeypatch):
    monkeypatch.delenv("S3SIM_PROGRESS", raising=False)
    clock, out = Clock(), io.StringIO()
    p = Progress(1_000_000, stream=out, clock=clock)
    assert p.mode == "log"  # not a terminal
    clock.t += QUIET_S + 1
    p.update(50.0, 10)
    assert out.getvalue() == ""  # the first line comes a minute in
    clock.t = 100.0 + LOG_EVERY_S
    p.update(1234.5, 120_000)
    assert out.getvalue() == ("progress: 120,000/1,000,000 requests finished, 1,234.5 s simulated, "
                              "2,000 simulated requests/s (60 s)\n")
    clock.t += 1
    p.update(1300.0, 121_000)
    assert out.getvalue().count("\n") == 1  # not again before another minute


def test_a_terminal_gets_a_bar_after_a_few_seconds_and_a_short_run_nothing(monkeypatch):
    monkeypatch.delenv("S3SIM_PROGRESS", raising=False)
    clock, out = Clock(), Tty()
    p = Progress(500, stream=out, clock=clock)
    assert p.mode == "bar"
    clock.t += QUIET_S / 2
    p.update(1.0, 10)
    assert out.getvalue() == ""
    clock.t += QUIET_S
    p.update(42.0, 250)
    p.close()
    text = out.getvalue()
    assert "simulating" in text and "250/500" in text and "simulated 42 s" in text


def test_progress_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("S3SIM_PROGRESS", "0")
    assert Progress(10, stream=Tty()).mode == "off"


def _run(monkeypatch, setting, *extra):
    from s3sim.runner import run_config

    monkeypatch.setenv("S3SIM_PROGRESS", setting)
    monkeypatch.setattr("s3sim.simulator.progress.SLICE", 7)  # many looks at the clock
    monkeypatch.setattr("s3sim.simulator.progress.QUIET_S", 0.0)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=["num_requests=300", "arrival=poisson",
                                                                   "arrival.rate=50", "policy=vllm",
                                                                   *extra]), resolve=True)
    return run_config(cfg)


@pytest.mark.parametrize("extra", [[], ["cluster.replicas=3", "cluster.router=least_kv"]])
def test_the_results_are_the_same_with_progress_shown_or_not(monkeypatch, extra):
    on, off = _run(monkeypatch, "1", *extra), _run(monkeypatch, "0", *extra)
    skip = ["sim_wall_s", "sim_requests_per_s"]
    pd.testing.assert_series_equal(pd.Series(on).drop(skip), pd.Series(off).drop(skip))
