"""Whole-step calibration (`s3sim.latency.steps`): the fit recovers a known relation, cross-validation holds
rows out, a calibrated model prices each batch in its CUDA-graph mode, and a bad table is one line."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from s3sim.core.errors import ConfigError
from s3sim.latency.steps import BRANCHES, StepCalibrated, StepFit, cross_validated_error, fit_steps, read_steps

DATA = Path(__file__).parents[2] / "shared" / "data"


def test_the_fit_recovers_each_modes_scale_and_offset_and_holds_rows_out():
    rng = np.random.default_rng(0)
    branch = np.array(["full"] * 20 + ["piecewise"] * 20 + ["none"] * 2)
    op = rng.uniform(0.01, 0.05, size=len(branch))
    truth = {"full": (1.3, 0.002), "piecewise": (1.1, 0.001), "none": (1.0, 0.004)}
    step = np.array([truth[b][0] * o + truth[b][1] for b, o in zip(branch, op)])
    fit = fit_steps(branch, op, step, graph_tokens=256)
    for b in BRANCHES:
        assert fit.scale[b] == pytest.approx(truth[b][0]) and fit.offset_s[b] == pytest.approx(truth[b][1])
    cv = cross_validated_error(pd.DataFrame({"branch": branch, "operator_s": op, "step_s": step}))
    assert set(cv.branch) == set(BRANCHES) and (cv.held_out_max_abs_pct < 1e-6).all()
    noisy = step * (1 + rng.normal(0, 0.05, len(step)))
    cv = cross_validated_error(pd.DataFrame({"branch": branch, "operator_s": op, "step_s": noisy}))
    assert (cv.held_out_mean_abs_pct > 0.5).all()  # held-out rows are not fitted


class Inner:
    def batch_time(self, out):
        return 0.010 if out.prefill_tokens + out.decode_n else 0.0

    def decode_run(self, n, ctx, k):
        return np.full(k, 0.020)

    source = "inner"


def test_a_calibrated_model_prices_each_batch_in_its_graph_mode():
    fit = StepFit({"full": 2.0, "piecewise": 3.0, "none": 1.0}, {"full": 0.0, "piecewise": 0.0, "none": 0.005}, 256)
    lat = StepCalibrated(Inner(), fit)
    out = lambda p, d: SimpleNamespace(prefill_tokens=p, decode_n=d)
    assert lat.batch_time(out(0, 8)) == pytest.approx(0.020)  # decode-only: a full graph
    assert lat.batch_time(out(100, 8)) == pytest.approx(0.030)  # mixed: piecewise
    assert lat.batch_time(out(2048, 8)) == pytest.approx(0.015)  # beyond the largest graph: eager
    assert lat.batch_time(out(0, 0)) == 0.0
    assert lat.decode_run(8, 800, 3).tolist() == pytest.approx([0.04] * 3)
    assert lat.decode_run(300, 800, 2).tolist() == pytest.approx([0.025] * 2)
    assert lat.source == "inner"  # everything else is the inner model's


@pytest.mark.parametrize("text, message", [
    ("branch,num_tokens\nfull,1\n", "missing column 'n_decode'"),
    ("branch,num_tokens,n_decode,kv_decode,prefill_chunk,step_us\ngraph,1,1,1024,0,10\n", "line 2: branch must be"),
    ("branch,num_tokens,n_decode,kv_decode,prefill_chunk,step_us\nfull,1,1,1024,0,-3\n", "line 2:"),
])
def test_a_bad_step_table_is_one_line(tmp_path, text, message):
    path = tmp_path / "step.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        read_steps(path)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not (DATA / "vllm_runs" / "rtxpro6000-qwen3-32b" / "run").is_dir(), reason="no shared runs")
def test_step_check_measures_the_tables_and_the_runs_decode_seconds(tmp_path, capsys):
    from s3sim.lab.step_check import main
    assert main(["--out", str(tmp_path)]) == 0
    fits = pd.read_csv(tmp_path / "steps.csv")
    ticks = pd.read_csv(tmp_path / "run_decode_steps.csv")
    assert set(fits.run) == {"rtxpro6000-llama-3.1-8b", "rtxpro6000-qwen3-32b"}
    assert set(ticks.run) == {"rtx4090-llama-3.1-8b", "rtxpro6000-llama-3.1-8b", "rtxpro6000-qwen3-32b"}
    assert (ticks.step_s > 0).all() and (ticks.operator_s > 0).all() and (ticks.n >= 1).all()
    qwen = fits[(fits.run == "rtxpro6000-qwen3-32b") & (fits.branch == "full")].iloc[0]
    assert qwen.median_step_over_operators > 1.5  # the TP2 step table is far above its operator sum
    assert "held-out error" in capsys.readouterr().out
