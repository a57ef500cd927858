"""The datasheet operator model's calibration: it recovers the efficiencies a profile was made with, and
a malformed profile is one clear line."""
import numpy as np
import pandas as pd
import pytest

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import get_gpu
from s3sim.lab.operator_calibration import OPS, fit, layer_error, load, main, operator_work


def write_profile(root, efficiencies=(0.55, 0.7, 4e-6)):
    """An mlp.csv in the shared format whose timings are the model itself at the given efficiencies."""
    gpu = get_gpu("a100-80gb-sxm")
    rows = []
    for tp in (1, 2):
        for tokens in (1, 8, 64, 512, 4096):
            rows.append({"num_tokens": tokens, "num_tensor_parallel_workers": tp, "n_head": 32, "n_kv_head": 8,
                         "n_embd": 4096, "n_expanded_embd": 14336, "use_gated_mlp": True, "vocab_size": 128256})
    t = pd.DataFrame(rows)
    c, m, launch = efficiencies
    for op, (flops, nbytes) in operator_work(t).items():
        t[f"time_stats.{op}.median"] = (np.maximum(flops / (gpu.peak_flops * c), nbytes / (gpu.mem_bandwidth * m))
                                         + launch) * 1e3
    folder = root / "a100" / "org" / "model"
    folder.mkdir(parents=True)
    t.to_csv(folder / "mlp.csv", index=False)
    return root


def test_the_fit_recovers_the_efficiencies_a_profile_was_made_with(tmp_path):
    rows = load(write_profile(tmp_path), "a100")
    assert set(rows.op) == set(OPS) and len(rows) == 10 * len(OPS)
    gpu = get_gpu("a100-80gb-sxm")
    params = fit(rows, gpu)
    assert params == pytest.approx((0.55, 0.7, 4e-6), rel=0.15)
    assert layer_error(rows, gpu, params).error.max() < 0.02


def test_a_malformed_profile_is_one_line(tmp_path, capsys):
    root = write_profile(tmp_path)
    f = root / "a100" / "org" / "model" / "mlp.csv"
    t = pd.read_csv(f)
    t.drop(columns=["time_stats.mlp_up_proj.median"]).to_csv(f, index=False)
    with pytest.raises(ConfigError, match="needs at least the QKV, MLP up and MLP down"):
        load(root, "a100")
    t.drop(columns=["n_embd"]).to_csv(f, index=False)
    with pytest.raises(ConfigError, match="missing column 'n_embd'"):
        load(root, "a100")
    assert main(["--profiles", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "operator_calibration: error: no operator profiles" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
