"""`make ordering` on a small grid: every ordering runs on both workloads, the tables and the plot are written,
and the ratios are the ratios of the frontier's own numbers."""
from pathlib import Path

import pandas as pd
import pytest

import s3sim.experiments.ordering as ordering

DATA = Path(__file__).parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "traces").is_dir(), reason="needs the shared data folder")


def test_a_small_ordering_sweep_writes_its_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ordering, "WORKLOADS", {
        "sharegpt": (*ordering.WORKLOADS["sharegpt"][:2], "arrival.rate", (20.0,), 150),
        "azure": (*ordering.WORKLOADS["azure"][:2], "workload.time_scale", (0.5,), 120)})
    assert ordering.main(["--out", str(tmp_path), "--seeds", "2"]) == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 2 * len(ordering.configurations("sharegpt")) * 2 and set(runs.workload) == {"sharegpt", "azure"}
    assert len(ordering.configurations("azure")) == len(ordering.configurations("sharegpt")) == 9
    front = pd.read_csv(tmp_path / "frontier.csv")
    assert (front.seeds == 2).all() and "ttft_mean_ci95" in front.columns
    table = pd.read_csv(tmp_path / "summary.csv")
    fcfs = table[table.ordering == "fcfs"]
    assert (fcfs.ttft_mean_vs_fcfs == 1.0).all()
    for w, g in table.groupby("workload"):
        base = g.set_index("ordering").loc["fcfs", "e2e_latency_mean"]
        assert g.e2e_mean_vs_fcfs.tolist() == pytest.approx((g.e2e_latency_mean / base).tolist())
    assert (tmp_path / "frontier_plot.png").stat().st_size > 0
    assert "results:" in capsys.readouterr().out


def test_bad_arguments_are_one_line(capsys):
    assert ordering.main(["--workloads", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--workloads" in err and len(err.strip().splitlines()) == 1
