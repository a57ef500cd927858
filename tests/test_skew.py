"""Uneven decode contexts priced from the profile's own measurement (`latency=operators`, `skew_alpha`): read
from meta.yaml only where the profile says it measured them, a share of the gap between the longest and the mean
context, and the multi-iteration jump still equal to stepping."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from s3sim.core.errors import ConfigError
from s3sim.core.kv_pool import KVPool
from s3sim.core.policies.vllm import VllmScheduler
from s3sim.core.request import make_requests
from s3sim.hardware.models import get_model
from s3sim.latency.operators import OperatorLatency, skew_alpha
from s3sim.simulator.engine import simulate

RUNS = Path(__file__).parents[2] / "shared" / "data" / "vllm_runs"
PRO, R4090 = RUNS / "rtxpro6000-llama-3.1-8b" / "profile", RUNS / "rtx4090-llama-3.1-8b" / "profile"
pytestmark = pytest.mark.skipif(not PRO.is_dir(), reason="no shared profiles")


def test_alpha_comes_from_the_profile_only_where_it_measured_skew():
    assert skew_alpha({"skew_fit": {"enabled": True, "per_tp": {1: {"alpha_default": 0.05}}}}, 1) == 0.05
    assert skew_alpha({"skew_fit": {"enabled": False, "per_tp": {1: {"alpha_default": 0.05}}}}, 1) == 0.0
    assert skew_alpha({}, 1) == 0.0 and skew_alpha({"skew_fit": {"enabled": True, "per_tp": {}}}, 2) == 0.0
    with pytest.raises(ConfigError, match="alpha_default must be in"):
        skew_alpha({"skew_fit": {"enabled": True, "per_tp": {1: {"alpha_default": 3}}}}, 1)
    m = get_model("llama-3.1-8b")
    assert OperatorLatency.from_profile(PRO, m).skew_alpha == pytest.approx(0.0543)
    assert OperatorLatency.from_profile(PRO, m, skew="none").skew_alpha == 0.0
    assert OperatorLatency.from_profile(R4090, m).skew_alpha == 0.0  # its meta.yaml: skew_fit enabled: false


def test_a_longer_longest_context_costs_its_share_of_the_gap():
    lat = OperatorLatency.from_profile(PRO, get_model("llama-3.1-8b"))
    out = SimpleNamespace(decode_n=64, decode_ctx=64 * 1000, prefill_lens=[], prefill_prefix=[], prefill_tokens=0,
                          prefill=[], partial=[], transfer_tokens=0)
    even, uneven = lat.batch_time(out, max_ctx=1000), lat.batch_time(out, max_ctx=8000)
    gap = lat.attention.at(0, 0, 64, 8000) - lat.attention.at(0, 0, 64, 1000)
    assert uneven - even == pytest.approx(0.0543 * lat.layers * gap)
    assert lat.batch_time(out) == even  # no longest context given: the mean alone
    run = lat.decode_run(64, 64 * 1000, 3, max_ctx=8000)
    assert run[0] == pytest.approx(uneven)


def test_with_skew_the_jump_equals_stepping():
    lat = OperatorLatency.from_profile(PRO, get_model("llama-3.1-8b"))
    prompts, outputs = [30, 900, 60, 2000, 10, 400] * 3, [40, 12, 90, 30, 200, 5] * 3
    arrivals = [0.001 * i for i in range(18)]
    runs = [simulate(make_requests(prompts, outputs, arrivals),
                     VllmScheduler(KVPool(400, unit_tokens=16), 256, max_num_batched_tokens=512, max_batch_size=16),
                     lat, max_jump=j) for j in (None, 1)]
    a, b = (sorted(r.requests, key=lambda q: q.id) for r in runs)
    for x, y in zip(a, b):
        assert (x.first_token, x.finished) == pytest.approx((y.first_token, y.finished), rel=1e-12)
