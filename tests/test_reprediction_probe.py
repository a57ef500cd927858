"""The re-prediction probe of `s3exec.lab.reprediction` on synthetic hidden states (no model): it finds a
remaining length written into the states, its evaluation compares it with the estimate carried from g = 0, and
the executor's `HiddenStateRePrediction` applies the saved probe exactly as the lab evaluated it."""
import subprocess
import sys

import numpy as np

from s3exec.lab.reprediction import CHECKPOINTS, design, evaluate, fit
from s3sim.core.predictors.reprediction import HiddenStateRePrediction
from s3sim.core.request import Request


def synthetic(n=240, width=12, seed=0):
    """Requests whose states carry log(remaining) in one direction, plus noise."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=width)
    direction /= np.linalg.norm(direction)
    rows = {"h": [], "g": [], "length": [], "test": [], "request": []}
    for i in range(n):
        length = int(rng.integers(2, 500))
        for g in CHECKPOINTS:
            if g >= length:
                break
            rows["h"].append(np.log(length - g) * direction + 0.1 * rng.normal(size=width))
            rows["g"].append(g)
            rows["length"].append(length)
            rows["test"].append(i >= n * 3 // 4)
            rows["request"].append(i)
    return {k: np.asarray(v, dtype=np.float32 if k == "h" else None) for k, v in rows.items()}


def test_the_probe_recovers_a_remaining_length_written_into_the_states():
    data = synthetic()
    probe, fitted = fit(data, lambda m: None)
    assert fitted["cv_mse"] < 0.2 * fitted["cv_mse_g_only"]
    table = evaluate(data, probe)
    assert list(table.generated) == [g for g in CHECKPOINTS if (data["g"][data["test"]] == g).sum() >= 8]
    early = table[table.generated <= 32]
    assert (early.repredicted_kendall_tau > 0.8).all() and (early.repredicted_log_sd < 0.3).all()
    # at g = 0 the carried estimate is the re-predicted one; later it is the g = 0 estimate less g
    first = table.iloc[0]
    assert first.repredicted_log_sd == first.carried_log_sd and first.repredicted_kendall_tau == first.carried_kendall_tau
    assert (table.running.diff().dropna() <= 0).all()  # requests leave as they end


def test_the_executor_applies_the_saved_probe_as_the_lab_evaluated_it():
    data = synthetic()
    probe, _ = fit(data, lambda m: None)
    live = HiddenStateRePrediction(probe.mean, probe.scale, probe.weights, CHECKPOINTS, max_seq_len=4096)
    r = Request(0, 1, 300, 0.0)
    state, g = data["h"][5], int(data["g"][5])
    assert g > 0 and live.wants(g) and not live.wants(g + 1)
    live.observe(r.id, g, state)
    expected = round(float(np.exp(probe(design(state[None], np.array([g])))[0])))
    assert live.remaining(r, g) == max(1, expected)
    assert live.remaining(r, g + 3) == max(1, expected - 3)
    assert live.remaining(Request(1, 1, 300, 0.0), g) is None  # never observed: the prompt's predictor stands


def test_bad_arguments_are_one_line_and_exit_code_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "s3exec.lab.reprediction", "--train", "0", "--cache", str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "--train must be a positive integer, got 0" in p.stderr
