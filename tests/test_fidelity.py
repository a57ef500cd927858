"""The measure-replay loop: the profiler writes a profile, the profiled latency model fits it, and the
simulator with that fit stays near the executor on the tiny model (a loose bound, so the loop cannot
silently break)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from s3exec.profile import grid, profile, write_profile
from s3sim.config import build
from s3sim.errors import ConfigError
from s3sim.experiments.fidelity import compare, exec_config, sim_config
from s3sim.hardware.gpus import get_gpu
from s3sim.hardware.models import get_model
from s3sim.latency.profiled import FEATURES, ProfiledLatency, fit_report, holdout_error

torch.set_num_threads(1)
TRUE = np.array([1e-3, 2e-5, 3e-8, 4e-5, 5e-7])  # const, then per FEATURES


def synthetic_profile(path, coef=TRUE, noise=0.0):
    pts = grid(max_context=2048)
    rng = np.random.default_rng(0)
    rows = []
    for L, k, b, c in pts:
        x = np.array([L * k, L * L * k, b, b * c], dtype=float)
        t = (coef[0] + x @ coef[1:]) * (1 + noise * rng.standard_normal())
        rows.append(dict(zip(FEATURES, x), median_s=t))
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def latency(path, **kw):
    return ProfiledLatency(get_model("tiny-llama"), get_gpu("a100-80gb-pcie"), path, **kw)


def test_fit_recovers_a_linear_model(tmp_path):
    lat = latency(synthetic_profile(tmp_path / "p.csv"))
    np.testing.assert_allclose(lat.coef, TRUE, rtol=1e-6)
    assert holdout_error(pd.read_csv(tmp_path / "p.csv")).max() < 1e-9
    assert "held-out" in fit_report(tmp_path / "p.csv")


def test_iteration_time_scalar_array_and_decode_run_agree(tmp_path):
    lat = latency(synthetic_profile(tmp_path / "p.csv"), overhead_s=0.01)
    assert lat.iteration_time(0, 0, 0, 0) == 0.0
    one = lat.iteration_time(10, 100, 3, 60)
    assert one == pytest.approx(0.01 + TRUE[0] + TRUE[1:] @ [10, 100, 3, 60])
    arr = lat.iteration_time(np.array([10, 0]), np.array([100, 0]), 3, np.array([60, 0]))
    assert arr[0] == pytest.approx(one)
    run = lat.decode_run(4, 100, 5)
    assert run == pytest.approx([lat.iteration_time(0, 0, 4, 100 + 4 * i) for i in range(5)])


def test_fit_keeps_coefficients_non_negative(tmp_path):
    lat = latency(synthetic_profile(tmp_path / "p.csv", coef=np.array([1e-3, 2e-5, -1e-8, 4e-5, 5e-7])))
    assert (lat.coef >= 0).all()


def test_missing_and_malformed_profiles_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="no profile at"):
        latency(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="lacks the columns"):
        latency(tmp_path / "bad.csv")
    (tmp_path / "neg.csv").write_text(",".join(FEATURES) + ",median_s\n" + "1,1,1,1,-1\n" * 6)
    with pytest.raises(ConfigError, match="negative or zero"):
        latency(tmp_path / "neg.csv")


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


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    base = exec_config("tiny-llama", "orca", 1, 8, 100, 1)
    pts = grid((16, 64), (1, 4), (1, 8), (16, 128))
    table, meta = profile(base, pts, warmup=1, repeats=3, log=lambda *_: None)
    assert meta["model"] == "tiny-llama" and meta["swap_s_per_token"] >= 0 and (table.median_s > 0).all()
    return write_profile(table, meta, tmp_path_factory.mktemp("prof"), "tiny")


@pytest.mark.parametrize("policy", ["orca", "s3"])
def test_simulator_tracks_the_executor_on_the_tiny_model(tiny_profile, policy):
    from s3exec.models import load_model

    m = load_model("tiny-llama")
    cfg = exec_config("tiny-llama", policy, 12, 32, 300, m.kv_bytes_per_token)
    ex, sim, finish = compare(cfg, 300, tiny_profile, loaded=m)
    assert sim["kv_capacity_tokens"] == ex[0]["kv_capacity_tokens"] == 300
    assert abs(sim["request_throughput"] / ex[0]["request_throughput"] - 1) < 0.5
    assert len(finish) == 12 and finish.sim_finished.notna().all()
    assert sim_config(cfg, 300, tiny_profile)["latency"]["name"] == "profiled"


def test_profile_cli_writes_a_profile_and_its_fit(tmp_path, capsys):
    from s3exec.profile import main

    assert main(["--name", "t", "--out", str(tmp_path), "--prompt-lens", "16", "--prompt-counts", "1,2",
                 "--batches", "1,2", "--contexts", "16,32", "--repeats", "1"]) == 0
    assert (tmp_path / "t.csv").is_file() and (tmp_path / "t.json").is_file()
    assert "held-out" in capsys.readouterr().out


def test_fidelity_cli_writes_table_requests_and_scatter(tiny_profile, tmp_path, capsys):
    import shutil

    from s3sim.experiments.fidelity import main

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
