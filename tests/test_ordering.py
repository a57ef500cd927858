"""policy=vllm ordered by predicted length (`policy.order`, `policy.max_wait_s`, `policy.victim`) on hand-worked
schedules: every iteration takes one second (test_vllm_policy's OneSecond), so a timestamp is the number of
the iteration that produced it; one-token blocks; an oracle predictor over the buckets (0,4], (4,8], (8,12],
(12,16], so a request's predicted length is the upper bound of its true length's bucket. The property tests
(invariants, a jump equal to stepping one iteration at a time) run these orderings in test_invariants_property."""
import math
import subprocess
import sys

import numpy as np
import pytest
from test_vllm_policy import run

from s3sim.config import build_scheduler
from s3sim.core.errors import ConfigError
from s3sim.core.kv_pool import KVPool
from s3sim.core.policies.vllm import VllmScheduler
from s3sim.core.predictors import Buckets, OraclePredictor
from s3sim.core.request import Request
from s3sim.runner import run_config

MSL = 16


def vllm(blocks: int, max_batch: int = 8, budget: int = 64, **ordering) -> VllmScheduler:
    predictor = OraclePredictor(Buckets.equal(4, MSL)) if ordering else None
    return VllmScheduler(KVPool(blocks, unit_tokens=1), MSL, max_num_batched_tokens=budget, max_batch_size=max_batch,
                         predictor=predictor, **ordering)


def admitted(res) -> list[float]:
    return [r.admitted for r in res.requests]


def test_sjf_admits_a_short_predicted_request_before_an_earlier_long_one():
    """One request at a time: X runs from t=0; B (12 tokens, arrived at 0.1) and C (2 tokens, arrived at 0.5) wait.
    fcfs admits B when X is done at t=12, sjf admits C there, then B."""
    prompts, outputs, arrivals = [1, 1, 1], [12, 12, 2], [0.0, 0.1, 0.5]
    fcfs, _ = run(vllm(100, max_batch=1), prompts, outputs, arrivals)
    sjf, _ = run(vllm(100, max_batch=1, order="sjf"), prompts, outputs, arrivals)
    assert admitted(fcfs) == [0.0, 12.0, 24.0]
    assert admitted(sjf) == [0.0, 14.0, 12.0]
    assert [r.first_bucket for r in sjf.requests] == [2, 2, 0]


def test_srpt_reranks_a_preempted_request_by_its_remaining_length():
    """22 blocks. X (16 tokens) runs from t=0, A (12) from t=1, Q (7) from t=5. Q, the newest, is preempted at t=7
    with 2 tokens (predicted 8, 6 left), A at t=9 with 8 tokens (predicted 12, 4 left). At t=10 Q's 5 blocks are
    free, A's 11 are not. sjf ranks Q (8) before A (12) and readmits it at once; srpt ranks A (4 left) before Q
    (6 left), so nothing is admitted until X is done at t=16, then A and Q in that order."""
    prompts, outputs, arrivals = [2, 2, 2], [16, 12, 7], [0.0, 0.5, 4.5]
    sjf, sjf_outs = run(vllm(22, order="sjf"), prompts, outputs, arrivals)
    srpt, srpt_outs = run(vllm(22, order="srpt"), prompts, outputs, arrivals)
    for outs in (sjf_outs, srpt_outs):
        preempted = [(t, ids) for t, ids, _, _ in outs if ids]
        assert preempted[:2] == [(7.0, [2]), (9.0, [1])]
    readmissions = lambda outs: [(t, ids) for t, _, ids, _ in outs if ids and t > 9.0]
    assert readmissions(sjf_outs)[0] == (10.0, [2])  # Q first
    assert readmissions(srpt_outs) == [(16.0, [1, 2])]  # A, then Q
    a, q = srpt.requests[1], srpt.requests[2]
    assert q.finished > a.finished and sjf.requests[2].finished < sjf.requests[1].finished


def test_a_predicted_length_already_reached_is_refreshed_to_the_next_bucket_not_yet_ruled_out():
    sched = vllm(100, order="srpt")
    r = Request(0, 1, 20, 0.0)
    r.bucket = 0  # predicted (0, 4]
    assert sched.estimate(r, 0) == (0, 4) and sched.remaining(r, 3) == 1
    assert sched.estimate(r, 4) == (1, 8) and sched.remaining(r, 4) == 4  # 4 tokens generated: not (0, 4]
    assert sched.estimate(r, 9) == (2, 12) and sched.remaining(r, 9) == 3
    assert sched.estimate(r, 15) == (3, 16) and sched.remaining(r, 15) == 1
    # buckets shorter than max_seq_len (a trained predictor's): past the last one, max_seq_len
    short = VllmScheduler(KVPool(100, unit_tokens=1), 32, max_num_batched_tokens=64, max_batch_size=8, order="srpt",
                          predictor=OraclePredictor(Buckets.equal(4, MSL)))
    assert short.estimate(r, 20) == (3, 32) and short.remaining(r, 20) == 12


def test_a_part_way_prefill_keeps_its_place_under_sjf():
    """Budget 8: A's 20-token prompt is chunked over three iterations; B (2 tokens, predicted shorter) arrives at
    0.5 and is admitted only with what A's last chunk leaves of the budget, as under fcfs."""
    for order in ("fcfs", "sjf"):
        sched = vllm(100, budget=8, **({} if order == "fcfs" else {"order": order}))
        res, outs = run(sched, [20, 2], [12, 2], [0.0, 0.5])
        assert [o[2:] for o in outs[:3]] == [([0], [8]), ([0], [8]), ([0, 1], [4, 2])]
        a, b = res.requests
        assert (a.first_token, b.admitted, b.first_token) == (3.0, 2.0, 3.0)


def test_max_wait_forces_an_old_request_through_and_counts_it():
    """One request at a time, every request at t=0: L (12 tokens) and six of 2 tokens. sjf serves the six first
    (2 iterations each), L at t=12. With max_wait_s=3, L has waited 4 s at t=4 and goes next, ahead of the four
    short ones still waiting: one admission forced by the bound."""
    prompts, outputs = [1] * 7, [12] + [2] * 6
    plain, _ = run(vllm(100, max_batch=1, order="sjf"), prompts, outputs)
    assert admitted(plain) == [12.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert plain.scheduler.aged_admissions == 0 and "aged_admissions" not in plain.scheduler.summary_fields()
    bound, _ = run(vllm(100, max_batch=1, order="sjf", max_wait_s=3.0), prompts, outputs)
    assert admitted(bound) == [4.0, 0.0, 2.0, 16.0, 18.0, 20.0, 22.0]
    assert bound.scheduler.summary_fields()["aged_admissions"] == 1
    # every request aged at once (max_wait_s=0): arrival order, each admission ahead of sjf's counted
    zero, _ = run(vllm(100, max_batch=1, order="sjf", max_wait_s=0.0), prompts, outputs)
    assert admitted(zero) == sorted(admitted(zero)) and zero.scheduler.aged_admissions == 1  # L only: then sjf's own


def test_victim_longest_remaining_preempts_the_most_predicted_work_left():
    """18 blocks: X (16 tokens) from t=0, A (8) from t=1; at t=7 they need 2 blocks and 1 is free. newest
    preempts A (6 tokens, 2 left); longest_remaining preempts X (7 tokens, 9 left of its predicted 16)."""
    newest, outs_n = run(vllm(18, victim="newest", order="fcfs", max_wait_s=None), [2, 2], [16, 8], [0.0, 0.5])
    longest, outs_l = run(vllm(18, victim="longest_remaining"), [2, 2], [16, 8], [0.0, 0.5])
    assert [(t, ids) for t, ids, _, _ in outs_n if ids] == [(7.0, [1])]
    assert [(t, ids) for t, ids, _, _ in outs_l if ids] == [(7.0, [0])]
    assert [r.preemptions for r in longest.requests] == [1, 0] and longest.requests[1].finished == 9.0


def test_the_config_builds_each_ordering_with_the_predictor_and_reports_the_bound(cfg):
    """Through the config (memory short enough to queue and preempt): sjf with the oracle, srpt with the synthetic
    predictor, the bound and the longest_remaining victim; the bound's column only where it is set."""
    base = ("policy=vllm", "num_requests=200", "max_seq_len=512", "arrival=poisson", "arrival.rate=80",
            "+kv_capacity_tokens=3000")
    plain = run_config(cfg(*base))
    sjf = run_config(cfg(*base, "policy.order=sjf", "predictor=oracle"))
    srpt = run_config(cfg(*base, "policy.order=srpt", "policy.max_wait_s=0.5", "policy.victim=longest_remaining"))
    assert "aged_admissions" not in plain and "aged_admissions" not in sjf
    assert srpt["aged_admissions"] > 0 and plain["preemptions"] > 0
    assert sjf["ttft_mean"] < plain["ttft_mean"] and srpt["ttft_mean"] < plain["ttft_mean"]
    spec = {"max_seq_len": 64, "policy": {"name": "vllm", "order": "sjf"}, "predictor": {}}
    with pytest.raises(ConfigError, match=r"policy.order=sjf .* needs a length predictor; valid: predictor=oracle, "
                                          r"synthetic, trained"):
        build_scheduler(spec, 1024, np.array([10]))
    with pytest.raises(ConfigError, match="policy.victim=longest_remaining .* needs a length predictor"):
        VllmScheduler(KVPool(64, unit_tokens=16), 64, max_batch_size=4, victim="longest_remaining")


@pytest.mark.parametrize("args, message", [
    (["policy.order=bogus"], "policy.order 'bogus' is unknown; valid: fcfs, sjf, srpt"),
    (["policy.victim=oldest"], "policy.victim 'oldest' is unknown; valid: newest, longest_remaining"),
    (["policy.max_wait_s=-1"], "policy.max_wait_s must be a non-negative number of seconds or null, got -1.0"),
    (["policy.max_wait_s=abc"], "policy.max_wait_s: Value 'abc'"),
    (["policy.order=srpt", "~predictor"], "policy.order=srpt ranks requests by predicted length and needs a length "
                                          "predictor; valid: predictor=oracle, synthetic, trained"),
    (["policy.victim=longest_remaining", "~predictor"], "policy.victim=longest_remaining ranks requests"),
])
def test_a_bad_ordering_is_one_line_and_exit_code_2(tmp_path, args, message):
    p = subprocess.run([sys.executable, "-c", "from s3sim.cli import main; main()", "policy=vllm", "num_requests=20",
                        *args, f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("s3sim: error: ") and message in p.stderr
    assert not (tmp_path / "run" / "summary.csv").exists()


def test_the_summary_names_the_predictor_an_ordering_reads():
    from s3sim.runner import run_fields
    cfg = {"workload": {"name": "alpaca"}, "arrival": {"process": "offline"}, "max_seq_len": 256,
           "predictor": {"name": "synthetic", "accuracy": 0.8},
           "policy": {"name": "vllm", "max_batch_size": 8, "max_num_batched_tokens": 64, "order": "sjf"}}
    assert run_fields(cfg, "vllm")["predictor"] == "synthetic" and run_fields(cfg, "vllm")["accuracy"] == 0.8
    cfg["policy"]["order"] = "fcfs"
    assert run_fields(cfg, "vllm")["predictor"] == "none"


def test_a_hand_built_synthetic_predictor_takes_the_error_shape_its_yaml_states():
    """One default per knob: code that builds a predictor from a dict without error_shape gets the value
    conf/predictor/synthetic.yaml states, not another."""
    import yaml

    from s3sim.config import CONF_DIR, build_predictor
    stated = yaml.safe_load(open(f"{CONF_DIR}/predictor/synthetic.yaml"))["error_shape"]
    p = build_predictor({"seed": 0, "predictor": {"name": "synthetic", "num_buckets": 4, "accuracy": 0.5}}, 64,
                        [10, 20, 30])
    assert p.error_shape == stated


@pytest.mark.parametrize("name", ["oracle", "synthetic", "trained"])
def test_every_predictor_knob_has_one_default_the_yaml_and_its_structured_config_agree(name):
    """conf/predictor/<name>.yaml states each knob's default; the structured config (`s3sim.core.predictors.spec`)
    holds the same one, so a config built by hand gets what a run from the files gets."""
    import dataclasses

    import yaml

    from s3sim.config import CONF_DIR
    from s3sim.core.predictors.spec import SPECS
    stated = yaml.safe_load(open(f"{CONF_DIR}/predictor/{name}.yaml"))
    spec = SPECS[name]()
    fields = {f.name for f in dataclasses.fields(spec)}
    assert set(stated) <= fields
    for key, value in stated.items():
        got = getattr(spec, key)
        assert (dataclasses.asdict(got) if dataclasses.is_dataclass(got) else got) == value, key


@pytest.mark.parametrize("over, message", [
    ({"bogus": 1}, "predictor.bogus"), ({"bucketing": "log"}, "predictor.bucketing 'log' is unknown"),
    ({"error_shape": "wide"}, "predictor.error_shape 'wide' is unknown"), ({"feedback": "some"}, "predictor.feedback"),
    ({"num_buckets": 2.5}, "predictor.num_buckets must be an integer"),
])
def test_a_bad_predictor_knob_is_one_line_naming_it(over, message):
    from s3sim.config import predictor_spec
    with pytest.raises(ConfigError, match=message) as e:
        predictor_spec({"predictor": {"name": "synthetic", "num_buckets": 10, "accuracy": 0.8, **over}})
    assert "\n" not in str(e.value)


def test_a_re_predicted_remaining_length_is_drawn_per_checkpoint_carried_between_and_bounded():
    """The error model: None before its first checkpoint (g = 0 is the prompt predictor's), at each checkpoint the
    true remaining length times a factor drawn from (seed, id, checkpoint) only, carried less the tokens generated
    since, at least 1 and at most what max_seq_len leaves; no spread and no bias is the exact remaining length."""
    from s3sim.core.predictors.reprediction import RePrediction

    r = Request(7, 1, 100, 0.0)
    exact = RePrediction([0, 10, 50], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], seed=0, max_seq_len=200)
    assert exact.remaining(r, 9) is None
    assert [exact.remaining(r, g) for g in (10, 30, 50, 99)] == [90, 70, 50, 1]
    noisy = RePrediction([0, 10, 50], [0.0, 1.0, 0.2], [0.0, 0.0, 0.0], seed=3, max_seq_len=200)
    at10 = noisy.remaining(r, 10)
    assert noisy.remaining(r, 20) == max(at10 - 10, 1) and at10 != 90
    again = RePrediction([0, 10, 50], [0.0, 1.0, 0.2], [0.0, 0.0, 0.0], seed=3, max_seq_len=200)
    assert again.remaining(r, 10) == at10  # the draw depends on (seed, id, checkpoint) only
    assert 1 <= noisy.remaining(r, 60) <= 140
    biased = RePrediction([10], [0.0], [math.log(10.0)], max_seq_len=200)
    assert biased.remaining(r, 10) == 190  # 900 predicted, at most what max_seq_len leaves
    spreads = [RePrediction([10], [s], [0.0], seed=k).remaining(r, 10) for s in (0.1, 1.0) for k in range(200)]
    assert np.std(np.log(spreads[200:])) > 3 * np.std(np.log(spreads[:200]))  # the spread is the table's


def test_srpt_with_exact_re_prediction_preempts_the_truly_longest_remaining():
    """Buckets alone put X (16 tokens) and A (8) in one predicted length; re-predicted exactly from generated
    token 2 on, longest_remaining preempts the request with most true work left."""
    from s3sim.core.predictors.reprediction import RePrediction

    pred = OraclePredictor(Buckets.equal(2, MSL))  # (0, 8], (8, 16]: X and A both predicted 16 when A is 9
    pred.reprediction = RePrediction([0, 2], [0.0, 0.0], [0.0, 0.0], max_seq_len=MSL)
    sched = VllmScheduler(KVPool(100, unit_tokens=1), MSL, max_num_batched_tokens=64, max_batch_size=8,
                          order="srpt", victim="longest_remaining", predictor=pred)
    x, a = Request(0, 1, 16, 0.0), Request(1, 1, 9, 0.0)
    x.bucket = a.bucket = 1
    assert sched.estimate(x, 1) == (1, 16) and sched.estimate(a, 1) == (1, 16)  # before the checkpoint: buckets
    assert sched.remaining(x, 4) == 12 and sched.remaining(a, 4) == 5
    assert sched.estimate(a, 4) == (1, 9)


@pytest.mark.parametrize("args, message", [
    (["policy.order=srpt", "predictor=oracle", "predictor.repredict=measured"],
     "predictor.repredict=measured adds estimation error to the oracle"),
    (["policy.order=fcfs", "predictor=synthetic", "predictor.repredict=measured"],
     "predictor.repredict=measured re-ranks running requests and is read only by policy=vllm with policy.order=sjf"),
    (["policy.order=srpt", "predictor=synthetic", "predictor.repredict=/nonexistent.csv"],
     "predictor.repredict=/nonexistent.csv: no table at /nonexistent.csv"),
])
def test_a_bad_repredict_is_one_line_and_exit_code_2(tmp_path, args, message):
    p = subprocess.run([sys.executable, "-c", "from s3sim.cli import main; main()", "policy=vllm", "num_requests=20",
                        *args, f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("s3sim: error: ") and message in p.stderr


def test_the_measured_re_prediction_table_ranks_a_config_run(cfg):
    """Through the config with the shipped table: srpt re-predicted runs, keeps its invariants (run_config checks
    them) and differs from srpt on the buckets alone once requests are preempted."""
    base = ("policy=vllm", "num_requests=200", "max_seq_len=512", "arrival=poisson", "arrival.rate=80",
            "+kv_capacity_tokens=3000", "policy.order=srpt", "policy.victim=longest_remaining", "predictor=synthetic")
    plain = run_config(cfg(*base))
    re = run_config(cfg(*base, "predictor.repredict=measured"))
    assert plain["preemptions"] > 0 and re["preemptions"] > 0
    assert (re["ttft_mean"], re["preemptions"]) != (plain["ttft_mean"], plain["preemptions"])


def test_a_re_predicted_error_keeps_the_measured_correlation_with_the_checkpoint_before():
    """z_k = rho z_(k-1) + sqrt(1 - rho^2) e_k: rho = 1 keeps one z for every checkpoint; rho = 0 draws them
    independently; a measured rho comes back from many requests."""
    from s3sim.core.predictors.reprediction import RePrediction

    same = RePrediction([0, 10, 20], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0], seed=1, log_corr=[0.0, 0.0, 1.0])
    assert all(math.isclose(same._factor(i, 0), same._factor(i, 1)) for i in range(20))
    for rho in (0.0, 0.8):
        rp = RePrediction([0, 10, 20], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0], seed=2, log_corr=[0.0, 0.0, rho])
        z = np.log([[rp._factor(i, 0), rp._factor(i, 1)] for i in range(4000)])
        assert abs(np.corrcoef(z.T)[0, 1] - rho) < 0.05 and abs(z[:, 1].std() - 1.0) < 0.05
    with pytest.raises(ConfigError, match="correlations must be between -1 and 1"):
        RePrediction([10], [1.0], [0.0], log_corr=[1.5])
