"""The measure-replay loop: the profiler writes a profile, the profiled latency model fits it, and the
simulator with that fit stays near the executor on the tiny model (a loose bound, so the loop cannot
silently break)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from s3exec.lab.fidelity import compare, exec_config, sim_config
from s3exec.lab.profile import grid, profile, write_profile
from s3sim.cluster.build import build
from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import get_gpu
from s3sim.hardware.models import get_model
from s3sim.latency.profiled import FEATURES, ProfiledLatency, fit_report, holdout_error

torch.set_num_threads(1)
PRE = np.array([1e-3, 2e-5, 3e-8, 1e-4])  # prefill: const, per token, per squared prompt, per prompt
DEC = (1e-3, 4e-5, 5e-7)  # decode: const, per sequence, per cached token (bilinear, so interpolation is exact)
SHARED = 8e-4  # paid once, not twice, by a mixed iteration


def truth(L, k, b, c, pre=PRE):
    dec = DEC[0] + DEC[1] * b + DEC[2] * b * c if b else 0.0
    pf = pre[0] + pre[1] * L * k + pre[2] * L * L * k + pre[3] * k if k else 0.0
    return dec + pf - (SHARED if b and k else 0.0)


def write_profile_table(path, times, meta=None):
    """A profile at the default grid's points with the given time per (L, k, b, c) point."""
    rows = [dict(prefill_tokens=L * k, prefill_sq=L * L * k, decode_tokens=b, decode_ctx=b * c, prompts=k,
                 median_s=times(L, k, b, c)) for L, k, b, c in grid(max_context=2048)]
    pd.DataFrame(rows).to_csv(path, index=False)
    if meta is not None:
        path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def synthetic_profile(path, pre=PRE, meta=None):
    return write_profile_table(path, lambda *pt: truth(*pt, pre=pre), meta)


def latency(path, **kw):
    return ProfiledLatency(get_model("tiny-llama"), get_gpu("a100-80gb-pcie"), path, **kw)


def test_profile_model_reproduces_a_profile_it_can_represent(tmp_path):
    path = synthetic_profile(tmp_path / "p.csv")
    lat = latency(path)
    np.testing.assert_allclose(lat.prefill_coef, PRE, rtol=1e-6)
    assert lat.shared_s == pytest.approx(SHARED)
    err, kinds = holdout_error(pd.read_csv(path))
    assert err.max() < 1e-9 and set(kinds) == {"decode", "prefill", "mixed"}
    assert lat.iteration_time(0, 0, 5, 5 * 300) == pytest.approx(truth(0, 0, 5, 300))  # between grid points
    assert lat.iteration_time(20, 400, 0, 0) == pytest.approx(truth(20, 1, 0, 0))
    assert "held-out" in fit_report(path)


def test_decode_follows_measurements_that_are_not_monotone(tmp_path):
    """On real kernels a larger batch can be faster; the table keeps that, and never extrapolates downwards."""
    odd = {1: 0.040, 2: 0.061, 3: 0.077, 4: 0.058, 64: 0.050}

    def times(L, k, b, c):
        return truth(L, k, b, c) if k else odd.get(b, 0.06) + 1e-6 * b * c

    lat = latency(write_profile_table(tmp_path / "p.csv", times))
    assert lat.iteration_time(0, 0, 3, 3 * 16) == pytest.approx(0.077 + 1e-6 * 48)
    assert lat.iteration_time(0, 0, 3, 3 * 16) > lat.iteration_time(0, 0, 4, 4 * 16)
    assert lat.iteration_time(0, 0, 3.5, 3.5 * 16) == pytest.approx((0.077 + 0.058) / 2 + 1e-6 * 3.5 * 16)
    top = lat.iteration_time(0, 0, 64, 64 * 16)
    assert lat.iteration_time(0, 0, 200, 200 * 16) == pytest.approx(top)  # 48 -> 64 got faster: flat beyond
    assert lat.iteration_time(0, 0, 1, 2) == pytest.approx(0.040 + 1e-6 * 2)  # below the grid: the edge's slope


def test_iteration_time_scalar_array_and_decode_run_agree(tmp_path):
    lat = latency(synthetic_profile(tmp_path / "p.csv"), overhead_s=0.01)
    assert lat.iteration_time(0, 0, 0, 0) == 0.0
    one = lat.iteration_time(10, 100, 3, 60)
    assert one == pytest.approx(0.01 + truth(10, 1, 3, 20))
    arr = lat.iteration_time(np.array([10, 0]), np.array([100, 0]), 3, np.array([60, 0]))
    assert arr[0] == pytest.approx(one) and arr[1] == pytest.approx(lat.iteration_time(0, 0, 3, 0))
    run = lat.decode_run(4, 100, 5)
    assert run == pytest.approx([lat.iteration_time(0, 0, 4, 100 + 4 * i) for i in range(5)])
    with pytest.raises(ConfigError, match=">= 0"):
        lat.iteration_time(-1, 0, 1, 1)


def test_engine_overhead_comes_from_the_profile_unless_overridden(tmp_path):
    meta = {"engine_overhead": {"per_iteration_s": 1e-4, "per_decode_s": 1e-5, "per_prompt_s": 3e-5,
                                "step_factor": 1.5}}
    path = synthetic_profile(tmp_path / "p.csv", meta=meta)
    measured, bare, const = latency(path), latency(path, overhead_s=0.0), latency(path, overhead_s=0.01)
    # 3 decoding sequences and 2 equal prompts (p^2 / sq = 2)
    forward = bare.iteration_time(20, 200, 3, 60)
    assert measured.iteration_time(20, 200, 3, 60) == pytest.approx(1.5 * forward + 1e-4 + 3 * 1e-5 + 2 * 3e-5)
    assert const.iteration_time(20, 200, 3, 60) == pytest.approx(forward + 0.01)
    assert measured.decode_run(3, 60, 4) == pytest.approx([measured.iteration_time(0, 0, 3, 60 + 3 * i)
                                                           for i in range(4)])
    with pytest.raises(ConfigError, match="overhead_s"):
        latency(path, overhead_s=-1.0)


def test_prefill_fit_keeps_coefficients_non_negative(tmp_path):
    lat = latency(synthetic_profile(tmp_path / "p.csv", pre=np.array([1e-3, 2e-5, -1e-8, 1e-4])))
    assert (lat.prefill_coef >= 0).all()


def test_missing_and_malformed_profiles_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="no profile at"):
        latency(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="lacks the columns"):
        latency(tmp_path / "bad.csv")
    head = ",".join(FEATURES) + ",prompts,median_s\n"
    (tmp_path / "neg.csv").write_text(head + "1,1,1,1,1,-1\n" * 6)
    with pytest.raises(ConfigError, match="negative or zero"):
        latency(tmp_path / "neg.csv")
    (tmp_path / "dec.csv").write_text(head + "0,0,4,64,0,0.01\n" * 6)
    with pytest.raises(ConfigError, match="no prefill-only point"):
        latency(tmp_path / "dec.csv")
    (tmp_path / "empty.csv").write_text(head + "0,0,4,64,0,0.01\n16,256,0,0,1,0.01\n0,0,0,0,0,0.01\n")
    with pytest.raises(ConfigError, match="line 4"):
        latency(tmp_path / "empty.csv")
    path = synthetic_profile(tmp_path / "p.csv")
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        latency(path)


def test_config_builds_profiled_latency_and_fixed_capacity(cfg, tmp_path):
    path = synthetic_profile(tmp_path / "p.csv")
    c = cfg("latency=profiled", f"latency.path={path}", "model=tiny-llama", "num_requests=20", "max_seq_len=64",
            "+kv_capacity_tokens=500")
    s = build(c)
    assert isinstance(s.latency, ProfiledLatency) and s.capacity_tokens == 500
    with pytest.raises(ConfigError, match="latency.path"):
        build(cfg("latency=profiled", "latency.path=nowhere.csv", "model=tiny-llama"))
    with pytest.raises(ConfigError, match="kv_capacity_tokens"):
        build(cfg("model=tiny-llama", "+kv_capacity_tokens=0"))
    with pytest.raises(ConfigError, match="cannot price gpu.count=2"):  # it used to ignore it silently
        build(cfg("latency=profiled", f"latency.path={path}", "model=tiny-llama", "gpu.count=2"))


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    base = exec_config("tiny-llama", "orca", 1, 8, 100, 1)
    pts = grid((16, 64), (1, 4), (1, 8), (16, 128))
    table, meta = profile(base, pts, warmup=1, repeats=3, log=lambda *_: None)
    assert meta["model"] == "tiny-llama" and meta["swap_s_per_token"] >= 0 and (table.median_s > 0).all()
    eng = meta["engine_overhead"]
    assert eng["iterations"] > 0 and min(eng["per_iteration_s"], eng["per_decode_s"], eng["per_prompt_s"]) >= 0
    assert np.isfinite(eng["step_factor"]) and eng["step_factor"] > 0  # its size is a timing: see the slow test
    return write_profile(table, meta, tmp_path_factory.mktemp("prof"), "tiny")


@pytest.mark.slow  # wall-clock against wall-clock: a busy shared CPU has put it at 0.42
def test_the_executors_forward_passes_take_what_the_table_says(tiny_profile):
    """`step_factor`: the executor's forward passes over the table's prediction for the same shapes, both
    timed on this machine a few seconds apart: about 1 when the machine is quiet."""
    meta = json.loads(Path(tiny_profile).with_suffix(".json").read_text())
    assert 0.5 < meta["engine_overhead"]["step_factor"] < 2


@pytest.mark.slow  # wall-clock against wall-clock: a busy or jittery 2-core machine failed it now and then
@pytest.mark.parametrize("policy", ["orca", "s3"])
def test_simulator_tracks_the_executor_on_the_tiny_model(tiny_profile, policy):
    from s3exec.models import load_model

    m = load_model("tiny-llama")
    cfg = exec_config("tiny-llama", policy, 12, 32, 300, m.kv_bytes_per_token)
    ex, sim, finish = compare(cfg, 300, tiny_profile, loaded=m, repeats=2)
    assert sim["kv_capacity_tokens"] == ex[0]["kv_capacity_tokens"] == 300
    # the executor's better run: a run that a busy shared CPU slowed down says nothing about the simulator
    assert abs(sim["request_throughput"] / max(e["request_throughput"] for e in ex) - 1) < 0.5
    assert len(finish) == 12 and finish.sim_finished.notna().all()
    assert sim_config(cfg, 300, tiny_profile)["latency"]["name"] == "profiled"


def test_profile_cli_writes_a_profile_and_its_fit(tmp_path, capsys):
    from s3exec.lab.profile import main

    assert main(["--name", "t", "--out", str(tmp_path), "--prompt-lens", "16", "--prompt-counts", "1,2",
                 "--batches", "1,2", "--contexts", "16,32", "--repeats", "1"]) == 0
    assert (tmp_path / "t.csv").is_file() and (tmp_path / "t.json").is_file()
    assert "held-out" in capsys.readouterr().out


def test_fidelity_cli_writes_table_requests_and_scatter(tiny_profile, tmp_path, capsys):
    import shutil

    from s3exec.lab.fidelity import main

    prof = tmp_path / "profiles"
    prof.mkdir()
    for ext in (".csv", ".json"):
        shutil.copy(tiny_profile.with_suffix(ext), prof / f"tiny-llama-cpu{ext}")
    out = tmp_path / "fid"
    assert main(["--models", "tiny-llama", "--policies", "orca", "--rates", "0.5", "--profiles", str(prof),
                 "--out", str(out)]) == 0
    df = pd.read_csv(out / "fidelity.csv")
    assert list(df.arrival) == ["offline", "poisson 0.5x"] and (out / "finish_tiny-llama.png").is_file()
    assert len(pd.read_csv(out / "requests.csv")) == 2 * 32
    assert "req/s" in capsys.readouterr().out


def test_roofline_calibration_recovers_the_factors_of_a_roofline_profile(tmp_path):
    from s3sim.lab.calibrate import calibrate
    from s3sim.latency.roofline import RooflineLatency

    model, gpu = get_model("llama-2-7b"), get_gpu("a100-80gb-pcie")
    roof = RooflineLatency(model, gpu, compute_efficiency=0.3, memory_efficiency=0.6, overhead_s=1e-3)
    path = write_profile_table(tmp_path / "p.csv", lambda L, k, b, c: roof.iteration_time(L * k, L * L * k, b, b * c))
    cal = calibrate(pd.read_csv(path), model, gpu)
    assert cal.compute_efficiency == pytest.approx(0.3, rel=0.01)
    assert cal.memory_efficiency == pytest.approx(0.6, rel=0.01)
    assert cal.overhead_s == pytest.approx(1e-3, rel=0.05) and cal.mean_error < 0.005
    assert cal.flops_per_s == pytest.approx(0.3 * gpu.peak_flops, rel=0.01)


def test_calibrate_cli_prints_overrides_and_needs_a_model_shape(tmp_path, capsys):
    from s3sim.lab.calibrate import main

    path = synthetic_profile(tmp_path / "p.csv")
    assert main([str(path), "--model", "tiny-llama"]) == 0
    assert "latency.compute_efficiency=" in capsys.readouterr().out
    assert main([str(path)]) == 2
    assert "--model" in capsys.readouterr().err
    assert main([str(path), "--model", "tiny-llama", "--gpu", "tpu"]) == 2


def test_target_summary_counts_cells_and_names_each_miss():
    from s3exec.lab.fidelity import METRICS, target_summary

    row = {"model": "m", "arrival": "offline", "policy": "orca", **{f"err_{m}": 0.01 for m in METRICS}}
    df = pd.DataFrame([row, {**row, "policy": "s3", "err_request_throughput": -0.06, "err_e2e_latency_p99": 0.2}])
    text = target_summary(df)
    assert "throughput within 5%: 3/4" in text and "p50 within 10%: 6/6" in text and "p99 within 15%: 5/6" in text
    assert "m offline s3 request_throughput: -6.0%" in text and "e2e_latency_p99: +20.0%" in text


def test_committed_fidelity_table_is_what_the_simulator_gives_now():
    """The simulator's columns of results/fidelity are deterministic: simulating a row again reproduces them
    to SIMULATOR_RTOL on any CPU (a change to the simulator that moves them must refresh the table:
    `--resimulate`)."""
    from pathlib import Path

    from s3exec.lab.fidelity import SIMULATOR_RTOL, compare_simulator, resimulate

    root = Path(__file__).resolve().parent.parent / "results" / "fidelity"
    table = pd.read_csv(root / "fidelity.csv")
    rows = table[(table.model == "tiny-llama") & table.policy.isin(["orca", "paged"])].head(3)
    same, total, worst = compare_simulator(rows, resimulate(rows, root / "profiles"))
    assert total == 3 * 9 and same == total and worst <= SIMULATOR_RTOL


def test_check_simulator_cli_fails_on_a_stale_table(tmp_path, capsys):
    import shutil
    from pathlib import Path

    from s3exec.lab.fidelity import main

    root = Path(__file__).resolve().parent.parent / "results" / "fidelity"
    shutil.copytree(root / "profiles", tmp_path / "profiles")
    table = pd.read_csv(root / "fidelity.csv").head(2)
    table.loc[1, "sim_tpot_p50"] *= 1.01  # a stale cell
    table.to_csv(tmp_path / "fidelity.csv", index=False)
    assert main(["--check-simulator", "--out", str(tmp_path)]) == 1
    assert "17/18" in capsys.readouterr().out
    assert main(["--resimulate", "--out", str(tmp_path)]) == 0
    assert main(["--check-simulator", "--out", str(tmp_path)]) == 0
    assert main(["--check-simulator", "--out", str(tmp_path / "none")]) == 2


def test_a_fresh_profile_is_measured_before_each_group_of_cells(monkeypatch, tmp_path):
    """With a profile function, each group (offline, each Poisson rate) gets its own profile, measured just
    before it, and each row names the profile it was simulated with."""
    import s3exec.lab.fidelity as fid

    calls, used = [], []

    def fake_compare(cfg, cap, prof, loaded, repeats=1):
        used.append(Path(prof).name)
        row = {m: 1.0 for m in fid.METRICS} | {"mean_batch_size": 1.0}
        return [row] * repeats, row, pd.DataFrame({"exec_finished": [1.0], "sim_finished": [1.0]})

    monkeypatch.setattr(fid, "compare", fake_compare)
    monkeypatch.setattr("s3exec.models.load_model", lambda m: type("L", (), {"kv_bytes_per_token": 1})())
    monkeypatch.setattr(fid, "exec_config", lambda *a, **k: {})

    def profile_for(label):
        calls.append(label)
        return tmp_path / f"m-cpu-{label.replace(' ', '-')}.csv"

    rows, _ = fid.run_model("tiny-llama", ["orca", "s3"], [0.5, 1.0], profile_for, spread=False, log=lambda *_: None)
    assert calls == ["offline", "poisson 0.5x", "poisson 1x"]
    assert [r["profile"] for r in rows] == used == ["m-cpu-offline.csv"] * 2 + ["m-cpu-poisson-0.5x.csv"] * 2 + [
        "m-cpu-poisson-1x.csv"] * 2
