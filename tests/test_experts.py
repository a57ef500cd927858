"""A mixture-of-experts layer from its measured table, and operators a profile measures that the model would drop."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s3sim.core.errors import ConfigError
from s3sim.hardware.models import get_model
from s3sim.latency.experts import ExpertTable, expected_experts
from s3sim.latency.operators import OperatorLatency

DATA = Path(__file__).parents[2] / "shared" / "data" / "vllm_runs"
MOE = DATA / "rtxpro6000-qwen3-30b-a3b" / "profile"


def test_expected_experts_follow_uniform_routing():
    assert expected_experts(1, 128, 8) == pytest.approx(8)
    assert expected_experts(10_000, 128, 8) == pytest.approx(128)
    e = expected_experts(np.arange(1, 200), 128, 8)
    assert (np.diff(e) > 0).all()


def table(rows):
    return ExpertTable(pd.DataFrame(rows, columns=["tokens", "activated_experts", "time_us"]), 16, 2, "t")


def test_the_table_is_linear_in_experts_then_in_tokens_and_exact_on_its_points():
    t = table([(1, 2, 10.0), (4, 2, 12.0), (4, 8, 30.0), (16, 2, 20.0), (16, 16, 60.0)])
    assert t.seconds(1) == pytest.approx(10e-6)  # one token activates its two experts
    at4 = expected_experts(4, 16, 2)
    assert t.seconds(4) == pytest.approx((12 + (30 - 12) / 6 * (at4 - 2)) * 1e-6)
    assert t.seconds(0) == 0.0
    assert t.seconds(10) > t.seconds(4)


def test_a_bad_expert_table_is_one_line(tmp_path):
    p = tmp_path / "moe.csv"
    p.write_text("tokens,activated_experts,time_us\n1,8,-3\n")
    with pytest.raises(ConfigError, match="line 2"):
        ExpertTable.from_csv(p, 128, 8)
    p.write_text("tokens,activated_experts,time_us\n1,256,3\n")
    with pytest.raises(ConfigError, match="the model has 128"):
        ExpertTable.from_csv(p, 128, 8)
    with pytest.raises(ConfigError, match="no .*moe.csv"):
        ExpertTable.from_csv(tmp_path / "moe.csv.missing", 128, 8)


@pytest.mark.skipif(not MOE.is_dir(), reason="no shared MoE profile")
def test_the_moe_profile_prices_its_experts_and_a_batch_reads_more_of_them():
    lat = OperatorLatency.from_profile(MOE, get_model("qwen3-30b-a3b"), tp=1)
    one, sixteen = (float(lat.decode_run(n, n * 1000, 1)[0]) for n in (1, 16))
    moe = pd.read_csv(MOE / "tp1" / "moe.csv")
    per_layer_one = moe[(moe.tokens == 1) & (moe.activated_experts == 8)].time_us.iloc[0] * 1e-6
    assert one > 48 * per_layer_one  # every one of the 48 layers runs its experts
    assert sixteen > 3 * one  # 16 tokens activate about 82 of 128 experts, not 8


@pytest.mark.skipif(not (DATA / "rtxpro6000-qwen3-32b").is_dir(), reason="no shared Qwen3-32B profile")
def test_an_operator_the_model_does_not_price_is_refused_and_qk_norm_is_priced(tmp_path):
    src = DATA / "rtxpro6000-qwen3-32b" / "profile" / "tp1"
    model = get_model("qwen3-32b")
    with_norm = OperatorLatency.from_profile(src, model)
    dense = pd.read_csv(src / "dense.csv")
    for name in ("attention.csv", "per_sequence.csv"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    dense[dense.layer != "qk_norm"].to_csv(tmp_path / "dense.csv", index=False)
    without = OperatorLatency.from_profile(tmp_path, model)
    norm = dense[(dense.layer == "qk_norm") & (dense.tokens == 1)].time_us.iloc[0] * 1e-6
    assert with_norm.dense.at(1.0) - without.dense.at(1.0) == pytest.approx(64 * norm)
    dense.assign(layer=dense.layer.replace("qk_norm", "mystery_op")).to_csv(tmp_path / "dense.csv", index=False)
    with pytest.raises(ConfigError, match="'mystery_op' is not one the model prices"):
        OperatorLatency.from_profile(tmp_path, model)
