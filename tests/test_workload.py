"""Workload loaders on the real shared data, trace-file error reporting, and arrival processes."""


import numpy as np
import pytest

from s3sim.core.errors import ConfigError
from s3sim.workload import Workload, arrival_times, load_workload
from s3sim.workload.lengths import DEFAULT_DATA_DIR, load_alpaca, load_trace

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------------------------------------- alpaca

def test_alpaca_reference_lengths_match_manifest():
    w = load_workload("alpaca")
    assert len(w) == 10_000 and w.timestamps is None and w.clipped == 0
    assert 60 < w.output_len.mean() < 72 and np.median(w.output_len) == pytest.approx(48, abs=3)
    assert w.prompt_len.min() >= 1 and w.output_len.min() >= 1
    assert 10 < w.prompt_len.mean() < 40
    assert "tokenizer counts" in w.source


def test_alpaca_clipping_limit_and_seed():
    full = load_alpaca()
    w = load_alpaca(max_output=100, limit=500)
    assert len(w) == 500 and w.output_len.max() == 100
    assert w.clipped == int((full.output_len[:500] > 100).sum()) > 0
    np.testing.assert_array_equal(w.prompt_len, full.prompt_len[:500])
    assert not np.array_equal(load_alpaca(seed=1).prompt_len, full.prompt_len)


def test_alpaca_generated_field_and_bad_field():
    w = load_workload("alpaca", length_field="L_t0.0", split="val")
    assert len(w) == 10_000 and w.output_len.max() <= 520  # capped near 512 upstream
    assert w.output_len.mean() > load_alpaca(split="val").output_len.mean()
    with pytest.raises(ConfigError, match="L_gt, L_t0.0"):
        load_alpaca(length_field="L_t0.9")
    with pytest.raises(ConfigError, match="train, val"):
        load_alpaca(split="test")


# ---------------------------------------------------------------------------------------------- sharegpt

def test_sharegpt():
    w = load_workload("sharegpt")
    assert len(w) == 30_731 and w.prompt_len.min() >= 1 and w.output_len.min() >= 1
    assert w.output_len.mean() > 3 * load_alpaca().output_len.mean()


# ---------------------------------------------------------------------------------------------- traces

def test_azure_trace_real_file():
    w = load_workload("trace")
    assert len(w) == 19_366 and w.timestamps[0] == 0.0 and (np.diff(w.timestamps) >= 0).all()
    span = w.timestamps[-1]
    assert 3300 < span < 3700
    assert np.median(w.output_len) == pytest.approx(129, abs=2) and w.output_len.max() <= 1000
    fast = load_trace(DEFAULT_DATA_DIR / "traces/azure_conv_2023.csv", time_scale=0.5)
    assert fast.timestamps[-1] == pytest.approx(span / 2)


def test_trace_formats_sorting_and_zeros(tmp_path):
    p = write(tmp_path, HEADER + "2023-11-16 18:15:47.5,10,5\n2023-11-16 18:15:46.6805900,0,0\n"
                                 "2023-11-16 18:15:47.5,30,7\n")
    w = load_trace(p)
    np.testing.assert_allclose(w.timestamps, [0, 0.81941, 0.81941])
    assert w.prompt_len.tolist() == [1, 10, 30] and w.output_len.tolist() == [1, 5, 7]  # stable sort
    f = load_trace(write(tmp_path, HEADER + "10.0,5,6\n12.5,7,8\n", "f.csv"), time_scale=2)
    assert f.timestamps.tolist() == [0.0, 5.0]


def test_trace_bad_row_reports_line(tmp_path):
    rows = "".join(f"{i}.0,100,20\n" for i in range(15))
    p = write(tmp_path, HEADER + rows + "15.0,100,abc\n", "azure.csv")
    with pytest.raises(ConfigError, match=r"azure\.csv line 17: GeneratedTokens 'abc'"):
        load_trace(p)
    with pytest.raises(ConfigError, match="line 3: TIMESTAMP"):
        load_trace(write(tmp_path, HEADER + "1,2,3\nyesterday,2,3\n"))
    with pytest.raises(ConfigError, match="line 3: TIMESTAMP .* mixes"):
        load_trace(write(tmp_path, HEADER + "1,2,3\n2023-11-16 18:15:46.6,2,3\n"))
    with pytest.raises(ConfigError, match="line 2: ContextTokens '-4'"):
        load_trace(write(tmp_path, HEADER + "1,-4,3\n"))


def test_trace_bad_header_missing_file_bad_scale(tmp_path):
    with pytest.raises(ConfigError, match="TIMESTAMP,ContextTokens,GeneratedTokens"):
        load_trace(write(tmp_path, "time,prompt,output\n1,2,3\n"))
    with pytest.raises(ConfigError, match="workload.path: no trace file .*nope.csv"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match="time_scale"):
        load_trace(write(tmp_path, HEADER + "1,2,3\n"), time_scale=0)


def test_dispatch_errors(tmp_path):
    with pytest.raises(ConfigError, match="alpaca, sharegpt, trace"):
        load_workload("lmsys")
    with pytest.raises(ConfigError, match="data file not found"):
        load_workload("sharegpt", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="'time_scale' does not apply"):
        load_workload("alpaca", time_scale=2)


def test_workload_validation():
    with pytest.raises(ConfigError):
        Workload("x", [1, 2], [1])
    with pytest.raises(ConfigError):
        Workload("x", [0], [1])
    assert len(Workload("x", [1, 2], [3, 4])) == 2


# ---------------------------------------------------------------------------------------------- arrivals

def test_offline_and_trace_arrivals():
    assert arrival_times(5, "offline").tolist() == [0.0] * 5
    assert arrival_times(3, "trace", timestamps=[0, 1, 1.5]).tolist() == [0, 1, 1.5]
    with pytest.raises(ConfigError):
        arrival_times(3, "trace")
    with pytest.raises(ConfigError):
        arrival_times(2, "trace", timestamps=[1, 0])


def test_poisson_mean_gap_and_determinism():
    t = arrival_times(20_000, "poisson", rate=4.0, seed=7)
    assert t[0] == 0 and (np.diff(t) >= 0).all()
    assert np.diff(t).mean() == pytest.approx(0.25, rel=0.05)
    np.testing.assert_array_equal(t, arrival_times(20_000, "poisson", rate=4.0, seed=7))
    assert not np.array_equal(t, arrival_times(20_000, "poisson", rate=4.0, seed=8))


def test_gamma_burstiness():
    def cv(b):
        g = np.diff(arrival_times(20_000, "gamma", rate=2.0, burstiness=b, seed=1))
        return g.std() / g.mean(), g.mean()

    cv_half, mean_half = cv(0.5)
    cv_one, mean_one = cv(1.0)
    assert cv_half > 1.2 * cv_one and cv_one == pytest.approx(1.0, rel=0.1)
    assert mean_half == pytest.approx(0.5, rel=0.1) and mean_one == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("rate", [-1, 0, None, float("inf"), float("nan")])
def test_bad_rate(rate):
    with pytest.raises(ConfigError, match="arrival.rate must be a positive number of requests per second"):
        arrival_times(10, "poisson", rate=rate)


def test_bad_burstiness_and_process():
    with pytest.raises(ConfigError, match="burstiness"):
        arrival_times(10, "gamma", rate=1, burstiness=0)
    with pytest.raises(ConfigError, match="offline, poisson, gamma, trace"):
        arrival_times(10, "uniform", rate=1)
