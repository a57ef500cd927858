import math
from fractions import Fraction

import numpy as np
import pytest

from s3sim.core.errors import ConfigError
from s3sim.core.predictors import ERROR_SHAPES, Buckets, OraclePredictor, Predictor, SyntheticPredictor
from s3sim.core.request import Request

MAX_LEN = 2048


def requests_with(output_lens, first_id=0):
    return [Request(first_id + i, 10, int(o), 0.0) for i, o in enumerate(output_lens)]


@pytest.fixture(scope="module")
def many():
    """20,000 requests with outputs spread over every bucket (more mass at short lengths, like real data)."""
    rng = np.random.default_rng(123)
    lens = np.concatenate([rng.integers(1, MAX_LEN + 1, 10_000),
                           np.clip(rng.lognormal(4.5, 1.2, 10_000).astype(np.int64), 1, MAX_LEN)])
    rng.shuffle(lens)
    return requests_with(lens)


# ---- equal buckets ----------------------------------------------------------------------------

def test_equal_buckets_edges_over_2048():
    b = Buckets.equal(10, MAX_LEN)
    assert b.num == 10
    assert b.max_len == MAX_LEN
    # edge i is ceil(i * 204.8)
    assert b.upper.tolist() == [205, 410, 615, 820, 1024, 1229, 1434, 1639, 1844, 2048]


def test_equal_buckets_of_with_inclusive_upper_bounds():
    b = Buckets.equal(10, MAX_LEN)
    assert int(b.of(0)) == 0
    assert int(b.of(1)) == 0
    assert int(b.of(205)) == 0  # exactly on the edge: bucket i covers (upper[i-1], upper[i]]
    assert int(b.of(206)) == 1
    assert int(b.of(410)) == 1
    assert int(b.of(411)) == 2
    assert int(b.of(1024)) == 4
    assert int(b.of(1025)) == 5
    assert int(b.of(2047)) == 9
    assert int(b.of(2048)) == 9
    assert int(b.of(2049)) == 9  # beyond max: last bucket
    assert int(b.of(10**9)) == 9
    lens = np.arange(0, 2100)
    idx = b.of(lens)
    assert idx.shape == lens.shape
    assert (np.diff(idx) >= 0).all()
    inside = lens[(lens >= 1) & (lens <= MAX_LEN)]
    # every length fits its bucket's reservation, and not the one below
    assert (inside <= b.upper[b.of(inside)]).all()
    lower = np.concatenate([[0], b.upper[:-1]])
    assert (inside > lower[b.of(inside)]).all()


def test_one_length_falls_in_the_bucket_of_the_arrays():
    b = Buckets([3, 10, 200, 2048])
    lengths = [-1, 0, 1, 3, 4, 10, 11, 199, 200, 201, 2048, 2049, 10**6]
    assert [b.of_one(x) for x in lengths] == b.of(lengths).tolist()


def test_upper_of_and_midpoint():
    b = Buckets.equal(10, MAX_LEN)
    assert b.upper_of(0) == 205 and b.upper_of(9) == 2048
    assert isinstance(b.upper_of(3), int)
    assert b.midpoint(0) == pytest.approx(102.5)
    assert b.midpoint(9) == pytest.approx((1844 + 2048) / 2)


@pytest.mark.parametrize("k,m", [(2, 2), (10, 10), (7, 29), (19, 21), (10, 16), (10, 64), (3, 100), (10, 4096),
                                 (7, 225), (64, 2048), (13, 27)])
def test_equal_buckets_are_exact_ceilings_and_end_at_max(k, m):
    b = Buckets.equal(k, m)
    assert b.upper.tolist() == [math.ceil(Fraction(i * m, k)) for i in range(1, k + 1)]
    assert b.max_len == m
    assert (np.diff(b.upper) > 0).all()


def test_equal_buckets_end_at_max_len_for_all_small_configs():
    for m in range(2, 300):
        for k in range(2, min(m, 12) + 1):
            b = Buckets.equal(k, m)
            assert b.max_len == m and b.num == k, (k, m)


@pytest.mark.parametrize("k", [1, 0, -3])
def test_fewer_than_two_buckets_is_a_config_error(k):
    with pytest.raises(ConfigError, match="at least 2"):
        Buckets.equal(k, MAX_LEN)
    with pytest.raises(ConfigError, match="at least 2"):
        Buckets.quantile(k, MAX_LEN, [1, 2, 3])


def test_bad_bucket_configs_are_config_errors():
    with pytest.raises(ConfigError):
        Buckets.equal(11, 10)  # more buckets than lengths
    with pytest.raises(ConfigError):
        Buckets.equal(2, 0)
    with pytest.raises(ConfigError):
        Buckets([5])
    with pytest.raises(ConfigError):
        Buckets([3, 3, 9])
    with pytest.raises(ConfigError):
        Buckets([0, 9])
    with pytest.raises(ConfigError):
        Buckets.quantile(4, 100, [])
    with pytest.raises(ConfigError):
        Buckets.quantile(10, 5, [1, 2, 3, 4, 5] * 10)  # would silently give 5 buckets


def test_quantile_buckets_have_exactly_k_edges_down_to_k_equal_max():
    for k, m in [(2, 2), (4, 4), (5, 6), (10, 10)]:
        b = Buckets.quantile(k, m, list(range(1, m + 1)) * 3)
        assert b.num == k and b.max_len == m


# ---- quantile buckets -------------------------------------------------------------------------

@pytest.mark.parametrize("dist", ["uniform", "lognormal", "geometric"])
@pytest.mark.parametrize("k", [4, 10])
def test_quantile_buckets_split_the_sample_evenly(dist, k):
    rng = np.random.default_rng(7)
    n = 20_000
    lens = {"uniform": rng.integers(1, MAX_LEN + 1, n),
            "lognormal": np.clip(rng.lognormal(4, 1, n).astype(np.int64), 1, MAX_LEN),
            "geometric": np.minimum(rng.geometric(1 / 100, n), MAX_LEN)}[dist]
    b = Buckets.quantile(k, MAX_LEN, lens)
    assert b.num == k
    assert (np.diff(b.upper) > 0).all()
    assert b.max_len == MAX_LEN
    counts = np.bincount(b.of(lens), minlength=k)
    assert counts.sum() == n
    assert counts.min() >= 0.85 * n / k and counts.max() <= 1.15 * n / k, counts


def test_quantile_buckets_with_heavy_ties_still_have_k_distinct_edges():
    for sample in ([5] * 100, [5] * 50 + [7] * 50, [100] * 10, [1]):
        b = Buckets.quantile(4, 100, sample)
        assert b.num == 4 and b.max_len == 100
        assert (np.diff(b.upper) > 0).all()


def test_quantile_buckets_clip_lengths_to_max():
    b = Buckets.quantile(3, 50, [10, 20, 30, 10_000, 20_000, 30_000])
    assert b.max_len == 50 and b.num == 3


# ---- oracle ---------------------------------------------------------------------------------------

def test_oracle_is_always_right(many):
    b = Buckets.equal(10, MAX_LEN)
    oracle = OraclePredictor(b)
    pred = oracle.predict(many)
    true = b.of([r.output_len for r in many])
    assert (pred == true).all()
    assert isinstance(oracle, Predictor)


def test_observe_counts_feedback():
    b = Buckets.equal(10, MAX_LEN)
    for p in (OraclePredictor(b), SyntheticPredictor(b, 0.5)):
        assert p.observed == 0
        p.observe(Request(0, 1, 7, 0.0), 7)
        p.observe(Request(1, 1, 9, 0.0), 9)
        assert p.observed == 2


# ---- synthetic ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ERROR_SHAPES)
@pytest.mark.parametrize("accuracy", [0.0, 0.3, 0.7, 0.85, 1.0])
def test_synthetic_hits_its_target_accuracy(many, shape, accuracy):
    b = Buckets.equal(10, MAX_LEN)
    pred = SyntheticPredictor(b, accuracy, shape, seed=3).predict(many)
    true = b.of([r.output_len for r in many])
    assert ((pred >= 0) & (pred < b.num)).all()
    assert abs((pred == true).mean() - accuracy) <= 0.02


@pytest.mark.parametrize("shape", ERROR_SHAPES)
def test_synthetic_wrong_predictions_are_never_the_true_bucket(many, shape):
    b = Buckets.equal(10, MAX_LEN)
    pred = SyntheticPredictor(b, 0.0, shape, seed=11).predict(many)
    true = b.of([r.output_len for r in many])
    assert (pred != true).all()


def test_under_predicts_one_bucket_low_except_from_bucket_zero(many):
    b = Buckets.equal(10, MAX_LEN)
    pred = SyntheticPredictor(b, 0.5, "under", seed=5).predict(many)
    true = b.of([r.output_len for r in many])
    assert (pred[true > 0] <= true[true > 0]).all()
    wrong = pred != true
    assert (pred[wrong & (true > 0)] == true[wrong & (true > 0)] - 1).all()
    assert (pred[wrong & (true == 0)] == 1).all()
    assert (wrong & (true == 0)).any()


def test_over_predicts_one_bucket_high_except_from_the_last(many):
    b = Buckets.equal(10, MAX_LEN)
    pred = SyntheticPredictor(b, 0.5, "over", seed=5).predict(many)
    true = b.of([r.output_len for r in many])
    last = b.num - 1
    wrong = pred != true
    assert (pred[wrong & (true < last)] == true[wrong & (true < last)] + 1).all()
    assert (pred[wrong & (true == last)] == last - 1).all()
    assert (wrong & (true == last)).any()


def test_adjacent_is_always_within_one_bucket(many):
    b = Buckets.equal(10, MAX_LEN)
    pred = SyntheticPredictor(b, 0.3, "adjacent", seed=2).predict(many)
    true = b.of([r.output_len for r in many])
    assert (np.abs(pred - true) <= 1).all()
    wrong = pred != true
    inner = wrong & (true > 0) & (true < b.num - 1)
    # both directions occur, roughly as often
    up = (pred[inner] > true[inner]).mean()
    assert 0.45 <= up <= 0.55


def test_uniform_errors_spread_over_every_other_bucket(many):
    b = Buckets.equal(10, MAX_LEN)
    pred = SyntheticPredictor(b, 0.0, "uniform", seed=4).predict(many)
    true = b.of([r.output_len for r in many])
    for t in range(b.num):
        got = set(pred[true == t].tolist())
        assert got == set(range(b.num)) - {t}


@pytest.mark.parametrize("shape", ERROR_SHAPES)
def test_predictions_do_not_depend_on_batching_or_order(many, shape):
    b = Buckets.equal(10, MAX_LEN)
    whole = SyntheticPredictor(b, 0.6, shape, seed=9).predict(many)
    p = SyntheticPredictor(b, 0.6, shape, seed=9)
    chunks = np.concatenate([p.predict(many[i:i + n]) for i, n in
                             zip(range(0, len(many), 997), [997] * (len(many) // 997 + 1))])
    assert (chunks == whole).all()
    one_by_one = np.array([p.predict([r])[0] for r in many[:500]])
    assert (one_by_one == whole[:500]).all()
    for n in (5, 9):  # a few at a time are drawn in plain integers, more as arrays: the same buckets
        few = np.concatenate([p.predict(many[i:i + n]) for i in range(0, 900, n)])
        assert (few == whole[:len(few)]).all()
    order = np.random.default_rng(0).permutation(len(many))
    shuffled = p.predict([many[i] for i in order])
    assert (shuffled == whole[order]).all()


def test_predictions_are_reproducible_per_seed(many):
    b = Buckets.equal(10, MAX_LEN)
    a = SyntheticPredictor(b, 0.5, "uniform", seed=1).predict(many)
    again = SyntheticPredictor(b, 0.5, "uniform", seed=1).predict(many)
    other = SyntheticPredictor(b, 0.5, "uniform", seed=2).predict(many)
    assert (a == again).all()
    assert (a != other).mean() > 0.2


def test_which_requests_are_wrong_depends_on_the_seed_not_the_shape(many):
    b = Buckets.equal(10, MAX_LEN)
    true = b.of([r.output_len for r in many])
    wrong = {s: SyntheticPredictor(b, 0.5, s, seed=8).predict(many) != true for s in ERROR_SHAPES}
    for s in ERROR_SHAPES:
        assert (wrong[s] == wrong["uniform"]).all()
    other_seed = SyntheticPredictor(b, 0.5, "uniform", seed=9).predict(many) != true
    assert (other_seed != wrong["uniform"]).mean() > 0.3


def test_prediction_never_reads_anything_but_id_and_length():
    b = Buckets.equal(10, MAX_LEN)
    p = SyntheticPredictor(b, 0.5, "adjacent", seed=3)
    r1 = [Request(i, 5, 300, 0.0) for i in range(50)]
    r2 = [Request(i, 900, 300, 123.0) for i in range(50)]
    assert (p.predict(r1) == p.predict(r2)).all()


@pytest.mark.parametrize("accuracy", [-0.1, 1.01])
def test_synthetic_rejects_bad_accuracy(accuracy):
    with pytest.raises(ConfigError, match="accuracy"):
        SyntheticPredictor(Buckets.equal(10, MAX_LEN), accuracy)


def test_synthetic_rejects_unknown_shape():
    with pytest.raises(ConfigError, match="error_shape"):
        SyntheticPredictor(Buckets.equal(10, MAX_LEN), 0.5, "sideways")


def test_two_buckets_all_shapes_flip_to_the_other_bucket():
    b = Buckets.equal(2, 8)
    reqs = requests_with([1, 4, 5, 8] * 50)
    true = b.of([r.output_len for r in reqs])
    for shape in ERROR_SHAPES:
        pred = SyntheticPredictor(b, 0.0, shape, seed=0).predict(reqs)
        assert (pred == 1 - true).all(), shape
