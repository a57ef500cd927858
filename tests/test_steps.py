"""Whole-step calibration (`s3sim.latency.steps`): the fit recovers a known relation, cross-validation holds
rows out, a calibrated model prices each batch in its CUDA-graph mode, and a bad table is one line."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from s3sim.core.errors import ConfigError
from s3sim.hardware.network import InEngineCollective
from s3sim.latency.steps import (BRANCHES, STEP_COLUMNS, StepCalibrated, StepFit, cross_validated_error,
                              fit_in_engine_factor, fit_steps, read_steps)

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
    # full-budget steps: the collectives measured alone price the TP2 run's fast, the engine's factor does not
    budget = pd.read_csv(tmp_path / "run_budget_steps.csv").set_index("run")
    q = budget.loc["rtxpro6000-qwen3-32b"]
    assert q.decodes_per_step < 128 and q.operator_s < 0.85 * q.run_step_s < q.in_engine_s
    factor = pd.read_csv(tmp_path / "in_engine_collectives.csv").set_index("run").loc["rtxpro6000-qwen3-32b"]
    assert 2 < factor.factor < 3 and factor.rows == 82


class _Measured:
    """A measured collective stand-in: 12 us plus the bytes at `bandwidth`."""

    def __init__(self, bandwidth):
        self.bw = bandwidth

    def time_s(self, tp, b):
        return 12e-6 + np.asarray(b, dtype=float) / self.bw

    def bandwidth(self, tp):
        return self.bw


def _tp_table(factor, offsets, grow=True):
    """A latency stand-in, its model, measured collectives and a step table made from them with a known factor
    (piecewise rows with 32 decodes too where `offsets` has a `piecewise_mixed` constant)."""
    model = SimpleNamespace(n_layers=4, hidden_size=1024, dtype_bytes=2, vocab_size=32000)
    ar, ag = _Measured(36e9), _Measured(30e9)
    const = lambda v: SimpleNamespace(at=lambda *a: v)
    per_seq = SimpleNamespace(at=lambda s: 2e-4 + float(ag.time_s(2, s * 32000 * 2)))
    latency = SimpleNamespace(overhead_s=0.0, layers=4, attention=const(1e-5), per_sequence=per_seq,
                              dense=SimpleNamespace(at=lambda x: 1e-3 + 2e-6 * x + 9 * float(ar.time_s(2, x * 2048))))
    rows = []
    mixed = [("piecewise_mixed", t) for t in (64, 96, 192, 256)] if "piecewise_mixed" in offsets else []
    for kind, tokens in [("full", t) for t in (1, 8, 32, 64)] + [("piecewise", t) for t in (16, 64, 128, 256)] + \
            mixed + [("none", t) for t in (512, 1024)]:
        branch = "piecewise" if kind == "piecewise_mixed" else kind
        decodes = tokens if branch == "full" else 32 if kind == "piecewise_mixed" else 0
        sampled = decodes + (branch != "full")
        compute = 1e-3 + 2e-6 * tokens + 4 * 1e-5 + 2e-4
        k = factor if grow else 0.0
        comm = 9 * (12e-6 + k * tokens * 2048 / 36e9) + 12e-6 + k * sampled * 64000 / 30e9
        rows.append((branch, tokens, decodes, 1024, 0 if branch == "full" else tokens - decodes,
                     1e6 * (compute + offsets[kind] + comm)))
    return latency, ar, ag, model, pd.DataFrame(rows, columns=list(STEP_COLUMNS))


def test_the_in_engine_factor_is_recovered_from_a_step_table_and_never_prices_below_the_collective_alone():
    offsets = {"full": 0.020, "piecewise": 0.022, "none": 0.030}
    latency, ar, ag, model, table = _tp_table(2.5, offsets)
    fit = fit_in_engine_factor(latency, ar, ag, table, model, 2, "t")
    assert fit.factor == pytest.approx(2.5, rel=1e-6) and fit.offset_s == pytest.approx(offsets)
    assert fit.rows == len(table) and fit.held_out_max_abs_pct < 1e-6
    assert fit.fold_factors == pytest.approx((2.5, 2.5), rel=1e-6)
    assert float(InEngineCollective(ar, 2.5, "t").time_s(2, 1e6)) == pytest.approx(12e-6 + 2.5 * 1e6 / 36e9)
    faster = InEngineCollective(ar, 0.5, "t")  # a factor below 1 would beat the collective alone: it does not
    assert faster.time_s(2, np.array([4096.0, 1e6])) == pytest.approx(ar.time_s(2, np.array([4096.0, 1e6])))
    assert InEngineCollective(ar, 2.5, "t").time_s(1, 1e6) == pytest.approx(ar.time_s(1, 1e6))


def test_a_constant_of_piecewise_steps_with_decodes_stays_out_of_the_factor():
    """The shared TP2 table's piecewise steps with decodes sit a constant above those without: each kind of step
    has its own offset, so the factor is still the one the table was made with, and every held-out row fits."""
    offsets = {"full": 0.020, "piecewise": 0.018, "piecewise_mixed": 0.027, "none": 0.030}
    latency, ar, ag, model, table = _tp_table(1.8, offsets)
    fit = fit_in_engine_factor(latency, ar, ag, table, model, 2, "t")
    assert fit.factor == pytest.approx(1.8, rel=1e-6) and fit.offset_s == pytest.approx(offsets)
    assert fit.fold_factors == pytest.approx((1.8, 1.8), rel=1e-6) and fit.held_out_max_abs_pct < 1e-6


def test_a_step_table_whose_steps_do_not_grow_with_the_bytes_implies_no_factor():
    latency, ar, ag, model, table = _tp_table(2.5, {"full": 0.02, "piecewise": 0.02, "none": 0.02}, grow=False)
    with pytest.raises(ConfigError, match="implies no in-engine factor"):
        fit_in_engine_factor(latency, ar, ag, table, model, 2, "t")


def test_engine_pricing_is_refused_in_one_line_where_it_cannot_be_had(tmp_path):
    from s3sim.hardware.gpus import get_gpu, read_gpu_preset
    from s3sim.hardware.network import all_reduce_model
    from s3sim.latency.operators import engine_factor, in_engine_factor

    with pytest.raises(ConfigError, match="priced_collectives"):  # engine is read before this, by every model
        all_reduce_model("engine", get_gpu("rtx-pro-6000"), 2)
    with pytest.raises(ConfigError, match="names no whole-step table"):
        in_engine_factor(get_gpu("a100-80gb-sxm"))
    assert engine_factor("engine") is None and engine_factor("engine:2.5") == 2.5
    for bad in ("engine:", "engine:x", "engine:-1", "engine:inf", "engine:nan", "engine:1e30"):
        with pytest.raises(ConfigError, match="expected engine or engine:<factor, > 0 and at most 100>"):
            engine_factor(bad)
    preset = Path(__file__).parents[1] / "s3sim" / "hardware" / "gpu_presets" / "rtx-pro-6000.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(preset.read_text().replace("  tp: 2", "  tp: 1"))
    with pytest.raises(ConfigError, match="in_engine_steps must be profile"):
        read_gpu_preset(bad)


@pytest.mark.skipif(not (DATA / "vllm_runs").is_dir(), reason="needs the shared data folder")
def test_auto_collectives_are_measured_wherever_measured_and_a_ring_only_as_a_said_fallback():
    """latency.all_reduce's default, for every latency model: the RTX PRO 6000 pair as the engine ran its measured
    table (its preset names a step table), the A100 DGX's measured table at 8 GPUs, and a ring whose source says
    it is a fallback where nothing was measured (two A100 PCIe, or 16 SXM: the table stops at 8); the summary
    carries it, and a fallback is a note."""
    from s3sim.config import build_latency, run_notes
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.models import get_model
    from s3sim.hardware.network import RING_FALLBACK, InEngineCollective, MeasuredAllReduce, RingAllReduce

    def priced(name, gpu, n, model="llama-65b"):
        return build_latency({"name": name}, get_model(model), get_gpu(gpu), n).all_reduce

    for name in ("datasheet", "roofline"):
        assert isinstance(priced(name, "rtx-pro-6000", 2), InEngineCollective)
        assert type(priced(name, "a100-80gb-sxm", 8)) is MeasuredAllReduce
        for gpu, n in (("a100-80gb-pcie", 2), ("a100-80gb-sxm", 16)):
            ring = priced(name, gpu, n)
            assert isinstance(ring, RingAllReduce) and RING_FALLBACK in ring.source
        assert priced(name, "a100-80gb-pcie", 1) is None
    profile = str(DATA / "vllm_runs" / "rtxpro6000-llama-3.1-8b" / "profile")
    ops = build_latency({"name": "operators", "path": profile, "tp": 2}, get_model("llama-3.1-8b"),
                        get_gpu("rtx-pro-6000"), 2)
    assert isinstance(ops.all_reduce, InEngineCollective)
    ring = priced("datasheet", "a100-80gb-pcie", 2)
    assert any(RING_FALLBACK in n for n in run_notes({"collectives": ring.source}))
    assert not any("all-reduces" in n for n in run_notes({"collectives": ops.all_reduce.source}))


def test_a_preset_table_missing_from_the_shared_data_is_named_in_the_fallback(monkeypatch, tmp_path):
    """auto falls back to a ring where the shared data lacks the preset's table, and says that, not that nothing
    was measured."""
    from s3sim.hardware import network
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.network import RING_FALLBACK, all_gather_model, all_reduce_model

    monkeypatch.setattr(network, "SHARED_DATA_DIR", tmp_path)
    for model in (all_reduce_model("auto", get_gpu("a100-80gb-sxm"), 8), all_gather_model(get_gpu("a100-80gb-sxm"), 8)):
        assert RING_FALLBACK in model.source and "is not in the shared data folder" in model.source


@pytest.mark.skipif(not (DATA / "vllm_runs").is_dir(), reason="needs the shared data folder")
def test_latency_all_reduce_engine_prices_a_tp2_prefill_step_with_the_fitted_factor():
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.models import get_model
    from s3sim.hardware.network import preset_measured
    from s3sim.latency.operators import OperatorLatency, OperatorsConfig, in_engine_factor

    profile = str(DATA / "vllm_runs" / "rtxpro6000-qwen3-32b" / "profile")
    model, gpu = get_model("qwen3-32b"), get_gpu("rtx-pro-6000")
    price = {how: OperatorLatency.from_config(OperatorsConfig(path=profile, tp=2, all_reduce=how), model, gpu, 2)
             .iteration_time(2048, 1, 0, 0) for how in ("measured", "engine", "engine:1")}
    ar, k = preset_measured(gpu), in_engine_factor(gpu).factor
    nbytes = 2048 * model.hidden_size * model.dtype_bytes
    engine = float(ar.time_s(2, 0.0)) + k * nbytes / ar.bandwidth(2)
    assert 2 < k < 3  # the engine moves its bytes at well under half of NCCL's bandwidth alone
    assert price["engine"] - price["measured"] == pytest.approx(129 * (engine - float(ar.time_s(2, nbytes))),
                                                                rel=0.02)
    assert price["engine:1"] == pytest.approx(price["measured"], rel=0.01)  # factor 1: about the table alone


def test_auto_falls_back_to_the_collective_measured_alone_without_the_step_table():
    """A preset whose step table is not in the shared data: `auto` prices the collectives as measured (the
    latency line says which), `engine` is refused in one line."""
    import dataclasses

    from s3sim.hardware.gpus import get_gpu
    from s3sim.latency.operators import engine_collectives

    gpu = dataclasses.replace(get_gpu("rtx-pro-6000"), in_engine_steps=("nowhere/profile", "qwen3-32b", 2))
    assert engine_collectives("auto", gpu, 2) is False and engine_collectives("measured", gpu, 2) is False
    assert engine_collectives("engine:2", gpu, 2) == 2.0
    with pytest.raises(ConfigError, match="no step table"):
        engine_collectives("engine", gpu, 2)
