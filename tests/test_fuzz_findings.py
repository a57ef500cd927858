"""What a random sweep of s3sim's settings (about 850 runs) found, each fixed: impossible numbers from a profile's
noisy last segment, infinite overheads accepted, memory or time growing with settings a run never used, an unknown
key in a replica's override ignored, and an error naming the wrong value."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from s3sim.core.errors import ConfigError
from s3sim.inputs import SHARED_DATA_DIR
from s3sim.latency.operators import Curve

QWEN = SHARED_DATA_DIR / "vllm_runs" / "rtxpro6000-qwen3-32b" / "profile"


def s3sim(*args, cwd):
    return subprocess.run([sys.executable, "-c", "from s3sim.cli import main; main()", *args], capture_output=True,
                          text=True, cwd=cwd)


def test_a_curve_beyond_its_counts_grows_at_its_top_octaves_rate_and_never_falls():
    """Measured every 16 tokens, the last segment is noise: beyond the largest count a curve rises at the secant
    over its top octave (from half the largest count), and stays at the largest count's time where that falls."""
    x = np.arange(16, 2049, 16, dtype=float)
    y = 1e-6 * x + 1e-5
    y[-1] = y[-2] - 2e-5  # the last segment falls
    c = Curve(x, y)
    far = np.array([4096.0, 16384.0])
    rate = (y[-1] - y[np.searchsorted(x, 1024.0)]) / (2048 - 1024)
    assert np.allclose(c(far), y[-1] + rate * (far - 2048)) and all(c.at(v) == pytest.approx(c(v)) for v in far)
    flat = Curve(x, np.linspace(2e-3, 1e-3, len(x)))  # falling throughout: held at its last time
    assert flat.at(8192.0) == flat(8192.0) == pytest.approx(1e-3)
    coarse = Curve([1024.0, 2048.0], [1e-3, 2e-3])  # an octave apart: the last segment, as before
    assert coarse.at(4096.0) == pytest.approx(4e-3) and float(coarse(4096.0)) == pytest.approx(4e-3)


@pytest.mark.skipif(not (QWEN / "tp1").is_dir(), reason="the shared Qwen3-32B profile is not present")
def test_a_long_prefill_beyond_the_profile_is_priced_positive_and_longer(tmp_path):
    """Qwen3-32B's tp1 gate_up_proj falls over its last 16 tokens: a 14,368-token prefill used to cost -1.5 s (TTFT
    -1.54 s, 1e13 requests/s)."""
    p = s3sim("model=qwen3-32b", "gpu=rtx-pro-6000", "latency=operators", f"latency.path={QWEN}", "workload=sharegpt",
              "num_requests=10", "max_seq_len=16", f"hydra.run.dir={tmp_path}/r", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    row = pd.read_csv(tmp_path / "r" / "summary.csv").iloc[0]
    assert row.ttft_mean > 0 and row.e2e_latency_mean > row.ttft_mean and 0 < row.request_throughput < 100


def test_a_profile_with_a_negative_time_is_refused(tmp_path):
    from s3sim.hardware.models import get_model
    from s3sim.latency.operators import OperatorLatency

    src = SHARED_DATA_DIR / "vllm_runs" / "rtx4090-llama-3.1-8b" / "profile" / "tp1"
    if not src.is_dir():
        pytest.skip("the shared RTX 4090 profile is not present")
    for f in ("dense.csv", "attention.csv", "per_sequence.csv"):
        (tmp_path / f).write_text((src / f).read_text())
    rows = (tmp_path / "dense.csv").read_text().splitlines()
    cells = rows[5].split(",")
    rows[5] = ",".join(cells[:-1] + ["-5000000"])
    (tmp_path / "dense.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match="dense.csv' line 6: time_us must be >= 0"):
        OperatorLatency.from_profile(tmp_path, get_model("llama-3.1-8b"))


@pytest.mark.parametrize("args, words", [
    (["latency.overhead_s=inf"], "latency.overhead_s must be a finite number >= 0"),
    (["latency.launch_s=inf"], "latency.launch_s must be a finite number >= 0"),
    (["latency=roofline", "latency.overhead_s=inf"], "overhead_s must be a finite number >= 0"),
    (["cluster.replicas=2", "cluster.overrides={1:{gpu:{bogus:1}}}"], "gpu.bogus is not a gpu setting"),
    (["policy=ft", "policy=nope"], "policy=nope: unknown")])
def test_settings_that_gave_nan_or_passed_unread_are_one_line(tmp_path, args, words):
    p = s3sim("num_requests=5", *args, f"hydra.run.dir={tmp_path}/r", cwd=tmp_path)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and words in lines[0], p.stderr[-400:]
    assert not (tmp_path / "r" / "summary.csv").exists()


def test_a_huge_block_size_or_many_prefix_groups_cost_nothing_a_run_does_not_use():
    """A block of 100,000 tokens used to allocate its phases' orders as 100,000 x 100,000 indices (killed for memory),
    and a billion shared-prefix groups a list of a billion prefixes for one request (a hang)."""
    from s3sim.core.kv_blocks import BlockGrowth
    from s3sim.workload.prefix import shared_prefix

    growth = BlockGrowth(100_000)
    growth.join(10, 0)
    assert growth.first_need(3)[-1] == 1 and BlockGrowth(16).first_need(3).shape == (17,)
    prompts, prefixes = shared_prefix(np.array([5, 7]), 16, 1_000_000_000, seed=0)
    assert list(prompts) == [21, 23] and all(p[0] == 16 for p in prefixes)


@pytest.mark.parametrize("args, words", [
    (["~policy"], "policy: the run has none (was it removed by ~policy?)"),
    (["~latency"], "latency: the run has none (was it removed by ~latency?)"),
    (["policy=s3", "~predictor"], "policy=s3 reserves by predicted length and needs a predictor node"),
    (["policy.max_batch_size=${foo}"], "policy.max_batch_size: Interpolation key 'foo' not found"),
    (["seed=${oc.env:S3SIM_NO_SUCH_VARIABLE}"], "seed: KeyError raised while resolving interpolation"),
    (["experiment=null"], "experiment=null: Config group override must be a string"),
    (["arrival=gamma", "arrival.burstiness=1e-30"], "arrival.burstiness must be at least 0.001"),
    (["predictor.latency_ms=1e30"], "predictor.latency_ms must be at most 1e+12"),  # refused before the run now
    (["latency.overhead_s=1e30"], "s of simulated time, beyond 1e+09 s"),
    (["policy=s3", "policy.make_room=2"], "policy.make_room must be true or false, got 2"),
])
def test_what_a_second_sweep_of_the_settings_crashed_on_is_one_line(tmp_path, args, words):
    """A group removed with ~ (a KeyError), an interpolation that cannot be resolved, experiment=null (a Hydra
    ValueError), a burstiness whose gamma gaps all underflow to 0 (offered_rate inf at rate 10), and steps so long
    that the run's seconds lose their precision (tpot 0 beside an itl of 10 ms)."""
    p = s3sim("num_requests=20", *args, f"hydra.run.dir={tmp_path}/r", cwd=tmp_path)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and words in lines[0], p.stderr[-400:]
    assert not (tmp_path / "r" / "summary.csv").exists()


def test_a_run_with_no_steady_part_says_so_and_prints_no_nan(tmp_path):
    """Every request arriving before the first one finishes leaves the steady part empty: its throughput is blank in
    summary.csv, and the note says why instead of printing nan."""
    p = s3sim("num_requests=20", "arrival=poisson", "arrival.rate=1e6", f"hydra.run.dir={tmp_path}/r", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "nan" not in p.stdout and "steady_request_throughput is undefined" in p.stdout
