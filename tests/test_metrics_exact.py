"""The summary's numbers against answers worked out by hand: hand-built runs (requests, iteration log,
stall gaps) whose every latency is a dyadic fraction, so the arithmetic in the comments is exact, and one
tiny simulation whose timeline is worked out in full.

What is being checked is the definition in `s3sim/metrics/summary.py` and `schema.py`: TTFT, TPOT and e2e
percentiles by linear interpolation (numpy's default), ITL percentiles token-weighted by inverted CDF, goodput
counting only requests that meet every bound, and the steady-part throughputs of `steady()`.
"""
import math

import numpy as np
import pytest

from s3sim.core.kv_pool import KVPool
from s3sim.core.policies.orca import OrcaScheduler
from s3sim.core.request import Request, make_requests
from s3sim.core.results import IterationLog, RunResult
from s3sim.latency.base import LatencyModel
from s3sim.metrics.summary import TAIL_BATCH, Slo, summarize
from s3sim.simulator.engine import simulate

OTHER_METHODS = ("inverted_cdf", "averaged_inverted_cdf", "closest_observation", "interpolated_inverted_cdf",
                 "hazen", "weibull", "median_unbiased", "normal_unbiased", "lower", "higher", "midpoint", "nearest")


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def request(i, arrival, first, last, prompt, output, finished=None):
    r = Request(i, prompt, output, arrival)
    r.admitted, r.first_token, r.last_token = arrival, first, last
    r.finished = last if finished is None else finished
    r.generated = output
    return r


def log_of(rows):
    """An IterationLog from engine steps (start, durations, batch, decode, itl_tokens, prefill, used0,
    reserved): a step with several durations is a jump of identical decode iterations."""
    log = IterationLog()
    for start, durs, batch, decode, itl, prefill, used0, reserved in rows:
        k = len(durs)
        log.start.append(start)
        log.steps.append(k)
        log.batch.append(batch)
        log.decode.append(decode)
        log.itl_tokens.append(itl)
        log.prefill_tokens.append(prefill)
        log.used0.append(used0)
        log.waiting.append(0)
        log.durations.append(np.asarray(durs, dtype=float))
        log.reserved.append(np.full(k, reserved, dtype=np.int64))
    return log


def run_of(requests, rows, end, stall_gaps=(), capacity=200):
    sched = OrcaScheduler(KVPool(capacity), 100)
    sched.stall_gaps = list(stall_gaps)
    steps = len(rows)
    return RunResult(requests, log_of(rows), sched, end, steps, capacity)


# ---- an online run: six requests arriving over 5.5 s, the last iteration ending at 8.0 s -----------------
#
#  id arrival first  last  finished prompt output | ttft  tpot                  e2e   | ttft<=2 tpot<=0.25
#   0   0.0    0.5   1.0    1.0      10     5    | 0.5   (1.0-0.5)/4 = 0.125   1.0   |  yes     yes   good
#   1   0.5    1.5   2.5    2.5      20     3    | 1.0   (2.5-1.5)/2 = 0.5     2.0   |  yes     no
#   2   1.0    4.5   4.75   4.75     30     9    | 3.5   (4.75-4.5)/8 = 0.03125 3.75 |  no      yes
#   3   2.0    3.5   3.5    3.5      40     1    | 1.5   none (one token)      1.5   |  yes     yes   good
#   4   3.0    5.0   6.0    6.0      50     5    | 2.0   (6.0-5.0)/4 = 0.25    3.0   |  yes     yes   good
#   5   5.5    8.0   8.0    8.0      60     1    | 2.5   none (one token)      2.5   |  no      yes
# (request 4 sits exactly at both bounds: a bound is met with <=)
ONLINE = [(0, 0.0, 0.5, 1.0, 10, 5), (1, 0.5, 1.5, 2.5, 20, 3), (2, 1.0, 4.5, 4.75, 30, 9),
          (3, 2.0, 3.5, 3.5, 40, 1), (4, 3.0, 5.0, 6.0, 50, 5), (5, 5.5, 8.0, 8.0, 60, 1)]
# The iteration log: a prefill-only step (no ITL sample), a step whose duration is the gap of 6 running
# requests, ..., a jump of two identical decode iterations for one request; and one gap across a preemption.
#        start   durations     batch decode itl prefill used0 reserved
ITER = [(0.0,   [1.0],          2,    0,    0,  30,     30,   100),
        (1.0,   [0.25],         6,    6,    6,   0,     50,   100),
        (1.25,  [0.5],          1,    1,    1,   0,     10,    60),
        (1.75,  [0.125],        3,    2,    2,  10,     40,    80),
        (1.875, [0.75, 0.75],   1,    1,    1,   0,     20,    40)]
STALL = [2.0]


def online_run():
    return run_of([request(i, a, f, lt, p, o) for i, a, f, lt, p, o in ONLINE], ITER, end=8.0, stall_gaps=STALL)


def test_latency_percentiles_interpolate_linearly():
    row = summarize(online_run())
    # TTFT sorted: 0.5, 1.0, 1.5, 2.0, 2.5, 3.5 (n = 6; linear: position p/100 * (n - 1))
    #   mean = 11 / 6
    #   p50: position 2.5 -> 1.5 + 0.5 * (2.0 - 1.5) = 1.75
    #   p90: position 4.5 -> 2.5 + 0.5 * (3.5 - 2.5) = 3.0
    #   p99: position 4.95 -> 2.5 + 0.95 * (3.5 - 2.5) = 3.45
    assert row["ttft_mean"] == approx(11 / 6)
    assert (row["ttft_p50"], row["ttft_p90"], row["ttft_p99"]) == (approx(1.75), approx(3.0), approx(3.45))
    # TPOT over the four requests with more than one token (the one-token ones have none, not 0):
    # sorted 0.03125, 0.125, 0.25, 0.5 (n = 4)
    #   mean = 0.90625 / 4 = 0.2265625
    #   p50: position 1.5 -> 0.125 + 0.5 * 0.125 = 0.1875
    #   p90: position 2.7 -> 0.25 + 0.7 * 0.25 = 0.425
    #   p99: position 2.97 -> 0.25 + 0.97 * 0.25 = 0.4925
    assert row["tpot_mean"] == approx(0.2265625)
    assert (row["tpot_p50"], row["tpot_p90"], row["tpot_p99"]) == (approx(0.1875), approx(0.425), approx(0.4925))
    # e2e sorted: 1.0, 1.5, 2.0, 2.5, 3.0, 3.75
    #   mean = 13.75 / 6; p50: 2.0 + 0.5 * 0.5 = 2.25; p90: 3.0 + 0.5 * 0.75 = 3.375; p99: 3.0 + 0.95 * 0.75 = 3.7125
    assert row["e2e_latency_mean"] == approx(13.75 / 6)
    assert (row["e2e_latency_p50"], row["e2e_latency_p90"], row["e2e_latency_p99"]) == (
        approx(2.25), approx(3.375), approx(3.7125))
    # every output is at most 128 tokens: the short class is every request, the others are empty
    assert row["ttft_p99_short"] == approx(3.45)
    assert math.isnan(row["ttft_p99_medium"]) and math.isnan(row["ttft_p99_long"])


@pytest.mark.parametrize("values", [[0.5, 1.0, 1.5, 2.0, 2.5, 3.5], [0.03125, 0.125, 0.25, 0.5],
                                    [1.0, 1.5, 2.0, 2.5, 3.0, 3.75]])
def test_the_samples_above_tell_linear_interpolation_from_every_other_method(values):
    """A guard on the test data, not on the code: every other numpy method gives another (p50, p90, p99)."""
    linear = tuple(np.percentile(values, (50, 90, 99)))
    for method in OTHER_METHODS:
        other = tuple(np.percentile(values, (50, 90, 99), method=method))
        assert not np.allclose(other, linear, rtol=1e-9, atol=0), method


def test_itl_is_token_weighted_and_a_preemption_gap_counts_once():
    row = summarize(online_run())
    # ITL samples: each iteration's duration once per token it gave a running request (itl_tokens), each of a
    # jump's iterations on its own, the prefill-only iteration (itl 0) not at all, the stall gap once:
    #   0.125 x 2, 0.25 x 6, 0.5 x 1, 0.75 x 2 (the jump: 1 + 1), 2.0 x 1 (stall)   -> 12 samples
    #   cumulative weight, sorted by value: 0.125: 2, 0.25: 8, 0.5: 9, 0.75: 11, 2.0: 12
    #   mean = (0.25 + 1.5 + 0.5 + 1.5 + 2.0) / 12 = 5.75 / 12
    #   inverted CDF (the first value whose cumulative weight reaches p% of 12):
    #   p50: 6 -> 0.25; p90: 10.8 -> 0.75; p99: 11.88 -> 2.0
    # (unweighted, one sample per row: 0.125, 0.25, 0.5, 0.75, 0.75, 2.0 -> p50 0.5, p90 2.0, mean 4.375 / 6)
    assert row["itl_mean"] == approx(5.75 / 12)
    assert (row["itl_p50"], row["itl_p90"], row["itl_p99"]) == (0.25, 0.75, 2.0)


def test_a_stall_gap_is_one_sample_however_many_tokens_the_iterations_gave():
    """Two stall gaps of 2.0 s are two samples: 13 in all, cumulative 0.125: 2, 0.25: 8, 0.5: 9, 0.75: 11,
    2.0: 13 -> p50 (6.5) 0.25, p90 (11.7) 2.0 (with one gap it was 0.75), p99 2.0; mean (5.75 + 2.0) / 13."""
    reqs = [request(i, a, f, lt, p, o) for i, a, f, lt, p, o in ONLINE]
    row = summarize(run_of(reqs, ITER, end=8.0, stall_gaps=[2.0, 2.0]))
    assert row["itl_mean"] == approx(7.75 / 13)
    assert (row["itl_p50"], row["itl_p90"], row["itl_p99"]) == (0.25, 2.0, 2.0)


def test_goodput_needs_every_bound_met_and_a_one_token_request_meets_tpot():
    run = online_run()
    # duration = end 8.0 - first arrival 0.0 = 8.0
    # both bounds: requests 0, 3 (one token, TTFT 1.5) and 4 (exactly at both bounds) -> 3
    #   (1 fails TPOT only, 2 fails TTFT only, 5 has one token but a TTFT of 2.5)
    both = summarize(run, Slo(ttft=2.0, tpot=0.25))
    assert both["goodput"] == approx(3 / 8) and both["slo_attainment"] == approx(3 / 6)
    # TTFT alone: 0, 1, 3, 4 -> 4; TPOT alone: 0, 2, 3, 4, 5 (3 and 5 have no TPOT) -> 5
    ttft = summarize(run, Slo(ttft=2.0))
    assert ttft["goodput"] == approx(4 / 8) and ttft["slo_attainment"] == approx(4 / 6)
    tpot = summarize(run, Slo(tpot=0.25))
    assert tpot["goodput"] == approx(5 / 8) and tpot["slo_attainment"] == approx(5 / 6)
    # e2e <= 2.5: requests 0 (1.0), 1 (2.0), 3 (1.5), 5 (2.5) -> 4; with TTFT <= 2 as well: 0, 1, 3 -> 3
    e2e = summarize(run, Slo(ttft=2.0, e2e=2.5))
    assert e2e["goodput"] == approx(3 / 8) and e2e["slo_attainment"] == approx(3 / 6)
    none = summarize(run)
    assert none["goodput"] == approx(6 / 8) and none["slo_attainment"] == 1.0


def test_throughputs_over_the_duration_and_over_the_steady_part():
    row = summarize(online_run())
    assert row["num_requests"] == 6 and row["duration"] == 8.0
    assert row["offered_rate"] == approx(5 / 5.5)            # 5 gaps between the arrivals at 0.0 and 5.5
    assert row["request_throughput"] == approx(6 / 8)        # 0.75
    assert row["output_throughput"] == approx(24 / 8)        # outputs 5 + 3 + 9 + 1 + 5 + 1 = 24
    assert row["total_token_throughput"] == approx(234 / 8)  # + prompts 10 + 20 + ... + 60 = 210
    # Steady part: requests arrive over time, so it ends at the last arrival, 5.5.
    # Finishes sorted: 1.0 (r0), 2.5 (r1), 3.5 (r3), 4.75 (r2) | 6.0 (r4), 8.0 (r5): k = 4 by 5.5.
    # (k - 1) = 3 requests over f_4 - f_1 = 4.75 - 1.0 = 3.75 s -> 0.8 req/s; their outputs (the first
    # finisher's, r0's 5, excluded): r1 3 + r3 1 + r2 9 = 13 -> 13 / 3.75 tok/s.
    # tail_frac = (8.0 - 5.5) / (8.0 - 0.0) = 0.3125
    assert row["steady_request_throughput"] == approx(0.8)
    assert row["steady_output_throughput"] == approx(13 / 3.75)
    assert row["tail_frac"] == approx(0.3125)


def test_iteration_columns_are_time_weighted():
    row = summarize(online_run())
    # busy = 1.0 + 0.25 + 0.5 + 0.125 + 0.75 + 0.75 = 3.375 of 8.0
    assert row["gpu_busy_frac"] == approx(3.375 / 8)
    assert row["iterations"] == 6 and row["engine_steps"] == 5
    assert row["mean_batch_size"] == approx((2 + 6 + 1 + 3 + 1 + 1) / 6) and row["max_batch_size"] == 6
    # reserved x duration: 100 * 1 + 100 * 0.25 + 60 * 0.5 + 80 * 0.125 + 40 * 1.5 = 225 -> 225 / 3.375 / 200
    assert row["kv_reserved_frac"] == approx(1 / 3)
    # used (a jump's second iteration holds one more token): 30 * 1 + 50 * 0.25 + 10 * 0.5 + 40 * 0.125
    # + 20 * 0.75 + 21 * 0.75 = 83.25 -> 83.25 / 3.375 / 200
    assert row["kv_used_frac"] == approx(83.25 / 675)


# ---- an offline run: 12 requests at t=0; 8 finish at 2.0, 3 at 3.0, one runs out alone to 6.0 -------------
#   step  start durations     batch   (peak 12: the steady part keeps batches >= TAIL_BATCH * 12 = 1.2)
#    s0   0.0   [1.0]          12     prefill of all 12 (first tokens at 1.0)
#    s1   1.0   [1.0]          12     8 requests of 2 tokens finish at 2.0
#    s2   2.0   [1.0]           4     3 requests of 3 tokens finish at 3.0
#    s3   3.0   [1, 1, 1]       1     the 6-token request runs out alone: 4.0, 5.0, 6.0 (batch 1 < 1.2: tail)
OFFLINE_ITER = [(0.0, [1.0], 12, 0, 0, 12 * 4, 48, 300), (1.0, [1.0], 12, 12, 12, 0, 72, 300),
                (2.0, [1.0], 4, 4, 4, 0, 30, 300), (3.0, [1.0, 1.0, 1.0], 1, 1, 1, 0, 8, 300)]


def test_steady_part_of_an_offline_run_ends_with_the_last_full_enough_batch():
    assert TAIL_BATCH == 0.1
    outputs = [2] * 8 + [3] * 3 + [6]
    finished = [2.0] * 8 + [3.0] * 3 + [6.0]
    reqs = [request(i, 0.0, 1.0, f, 4, o) for i, (o, f) in enumerate(zip(outputs, finished))]
    row = summarize(run_of(reqs, OFFLINE_ITER, end=6.0, capacity=1000))
    assert math.isinf(row["offered_rate"])
    assert row["request_throughput"] == approx(12 / 6)
    assert row["output_throughput"] == approx((8 * 2 + 3 * 3 + 6) / 6)
    # steady end = the end of s2 (batch 4 >= 1.2) = 3.0; finishes by then: 8 + 3 = 11 (one at 3.0 exactly counts)
    # (11 - 1) = 10 requests over 3.0 - 2.0 = 1 s; their outputs: 7 of the 2-token ones and 3 x 3 = 23
    # tail_frac = (6.0 - 3.0) / (6.0 - 0.0) = 0.5
    assert row["steady_request_throughput"] == approx(10.0)
    assert row["steady_output_throughput"] == approx(23.0)
    assert row["tail_frac"] == approx(0.5)


# ---- a tiny simulation worked out in full ----------------------------------------------------------------
class DecodeCountLatency(LatencyModel):
    """0.5 s per iteration plus 0.25 s per decoding request (prefill and context cost nothing)."""
    name = "decode-count"

    def __init__(self):
        super().__init__(None, None)

    def iteration_time(self, prefill_tokens, prefill_sq, decode_tokens, decode_ctx):
        return 0.5 + 0.25 * np.asarray(decode_tokens, dtype=float) + 0.0 * np.asarray(decode_ctx, dtype=float)


def test_simulated_itl_weights_each_iteration_by_the_tokens_it_gave():
    """ORCA, memory for all three, every request at t=0, outputs 2, 3 and 5 tokens:
         iteration            decoding  duration  ends at  tokens
         prefill of all 3        0        0.5      0.5     first token of each (no ITL sample)
         decode                  3        1.25     1.75    r0 done (2 tokens)
         decode                  2        1.0      2.75    r1 done (3)
         decode x 2 (a jump)     1        0.75     3.5, 4.25  r2 done (5)
    Gaps per request: r0 1.25; r1 1.25, 1.0; r2 1.25, 1.0, 0.75, 0.75 -> 1.25 x 3, 1.0 x 2, 0.75 x 2 (7).
    Cumulative weight: 0.75: 2, 1.0: 4, 1.25: 7 -> p50 (3.5) 1.0, p90 (6.3) 1.25, p99 1.25;
    mean (1.5 + 2.0 + 3.75) / 7 = 7.25 / 7 (unweighted over the decode rows: p50 0.75, mean 0.9375)."""
    res = simulate(make_requests([4, 4, 4], [2, 3, 5], [0.0] * 3), OrcaScheduler(KVPool(1000), 100),
                   DecodeCountLatency())
    r = {q.id: q for q in res.requests}
    assert res.end_time == 4.25
    assert [r[i].finished for i in range(3)] == [1.75, 2.75, 4.25]
    row = summarize(res)
    assert row["itl_mean"] == approx(7.25 / 7)
    assert (row["itl_p50"], row["itl_p90"], row["itl_p99"]) == (1.0, 1.25, 1.25)
    # TTFT 0.5 for all; TPOT: r0 1.25 / 1, r1 2.25 / 2 = 1.125, r2 3.75 / 4 = 0.9375 -> linear p90: position 1.8
    # in (0.9375, 1.125, 1.25) -> 1.125 + 0.8 * 0.125 = 1.225
    assert row["ttft_p50"] == 0.5
    assert row["tpot_p50"] == approx(1.125) and row["tpot_p90"] == approx(1.225)
    assert row["request_throughput"] == approx(3 / 4.25) and row["output_throughput"] == approx(10 / 4.25)
