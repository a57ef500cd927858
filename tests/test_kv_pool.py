import pytest

from s3sim.core.errors import InvariantViolation
from s3sim.core.kv_pool import KVPool


def test_reserve_grow_release_accounting():
    pool = KVPool(100)
    assert (pool.capacity, pool.used, pool.free, pool.unit_tokens) == (100, 0, 100, 1)
    pool.reserve(1, 30)
    pool.reserve(2, 50)
    assert (pool.used, pool.free) == (80, 20)
    assert pool.held == {1: 30, 2: 50}
    pool.grow(1, 15)
    assert pool.held[1] == 45 and pool.used == 95 and pool.free == 5
    pool.grow(2, 0)
    assert pool.held[2] == 50 and pool.used == 95
    assert pool.release(1) == 45
    assert pool.used == 50 and pool.held == {2: 50}
    assert pool.release(2) == 50
    assert pool.used == 0 and pool.held == {}
    pool.check_empty()


def test_reserve_exactly_to_capacity():
    pool = KVPool(64)
    pool.reserve(7, 64)
    assert pool.free == 0
    assert not pool.can_reserve(1)
    assert pool.can_reserve(0)
    pool.grow(7, 0)
    pool.release(7)
    assert pool.can_reserve(64) and not pool.can_reserve(65)


def test_release_with_lazily_computed_holding():
    pool = KVPool(20, unit_tokens=4)
    pool.reserve(3, 2)
    pool.grow_lazily(5)
    assert pool.used == 7 and pool.unsettled == 5
    pool.check()
    pool.settle(3, 7)
    assert pool.held == {3: 7} and pool.unsettled == 0
    assert pool.release(3) == 7
    assert pool.used == 0
    pool.check_empty()


def test_settling_more_than_was_grown_lazily_raises_at_that_request():
    pool = KVPool(20)
    pool.reserve(1, 2)
    pool.reserve(2, 2)
    pool.grow_lazily(3)
    pool.settle(1, 4)  # takes 2 of the 3
    with pytest.raises(InvariantViolation, match="request 2 needs 2 lazily grown"):
        pool.settle(2, 4)
    with pytest.raises(InvariantViolation, match="request 2 .*shrank"):
        pool.settle(2, 1)
    pool.settle(2, 3)
    pool.check()


def test_check_finds_units_no_request_accounts_for():
    pool = KVPool(20)
    pool.reserve(1, 5)
    pool.check()
    pool.used += 1  # drift that bypassed the verbs
    with pytest.raises(InvariantViolation, match="hold 5"):
        pool.check()


def test_over_capacity_reserve_raises_and_leaves_pool_unchanged():
    pool = KVPool(10)
    pool.reserve(1, 6)
    with pytest.raises(InvariantViolation, match="request 2"):
        pool.reserve(2, 5)
    assert pool.used == 6 and pool.held == {1: 6}
    pool.reserve(2, 4)  # a failed reservation must not block a later one
    assert pool.used == 10


def test_over_capacity_grow_raises():
    pool = KVPool(10)
    pool.reserve(1, 6)
    pool.reserve(2, 3)
    with pytest.raises(InvariantViolation, match="capacity"):
        pool.grow(1, 2)
    assert pool.held == {1: 6, 2: 3} and pool.used == 9
    pool.grow(1, 1)
    assert pool.used == 10


def test_over_capacity_lazy_growth_raises():
    pool = KVPool(8, unit_tokens=16)
    pool.reserve(0, 6)
    with pytest.raises(InvariantViolation):
        pool.grow_lazily(3)
    pool.grow_lazily(2)
    assert pool.used == 8


def test_negative_growth_raises():
    pool = KVPool(10)
    pool.reserve(1, 3)
    with pytest.raises(InvariantViolation):
        pool.grow(1, -1)
    with pytest.raises(InvariantViolation):
        pool.reserve(2, -1)
    assert pool.used == 3 and pool.held == {1: 3}


def test_grow_of_unknown_request_raises():
    pool = KVPool(10)
    with pytest.raises(InvariantViolation, match="request 4"):
        pool.grow(4, 1)
    assert pool.used == 0


def test_double_reserve_raises():
    pool = KVPool(100)
    pool.reserve(5, 10)
    with pytest.raises(InvariantViolation, match="twice"):
        pool.reserve(5, 10)
    assert pool.used == 10 and pool.held == {5: 10}


def test_release_of_unknown_id_raises():
    pool = KVPool(100)
    with pytest.raises(InvariantViolation, match="request 9"):
        pool.release(9)
    pool.reserve(9, 1)
    pool.release(9)
    with pytest.raises(InvariantViolation):
        pool.release(9)  # released twice


def test_release_going_negative_raises():
    pool = KVPool(100)
    pool.reserve(1, 3)
    pool.used -= 1  # drift that bypassed the verbs
    with pytest.raises(InvariantViolation, match="negative"):
        pool.release(1)


def test_check_empty_raises_while_something_is_held():
    pool = KVPool(100)
    pool.check_empty()
    pool.reserve(1, 10)
    with pytest.raises(InvariantViolation, match=r"\[1\]"):
        pool.check_empty()
    pool.release(1)
    pool.check_empty()
    pool.reserve(2, 0)  # holding nothing is still a holding that outlived its request
    with pytest.raises(InvariantViolation):
        pool.check_empty()
    pool.release(2)
    pool.grow_lazily(1)  # units in use that no request accounts for
    with pytest.raises(InvariantViolation):
        pool.check_empty()


def test_violation_message_names_the_time():
    pool = KVPool(4)
    pool.now = 1.25
    with pytest.raises(InvariantViolation, match=r"t=1\.250000s"):
        pool.reserve(0, 5)


@pytest.mark.parametrize("unit,tokens,units", [
    (1, 0, 0), (1, 1, 1), (1, 17, 17),
    (16, 0, 0), (16, 1, 1), (16, 15, 1), (16, 16, 1), (16, 17, 2), (16, 32, 2), (16, 33, 3),
    (4, 7, 2), (4, 8, 2), (4, 9, 3), (2, 3, 2),
])
def test_units_for_rounds_up_to_whole_blocks(unit, tokens, units):
    assert KVPool(1000, unit_tokens=unit).units_for(tokens) == units


def test_units_for_matches_ceiling_division_everywhere():
    for unit in (1, 2, 3, 4, 16):
        pool = KVPool(10, unit_tokens=unit)
        for tokens in range(0, 100):
            units = pool.units_for(tokens)
            assert units * unit >= tokens > (units - 1) * unit or tokens == units == 0


def test_peak_tracks_the_high_water_mark():
    pool = KVPool(100)
    assert pool.peak == 0
    pool.reserve(1, 40)
    pool.reserve(2, 30)
    assert pool.peak == 70
    pool.release(1)
    assert pool.peak == 70 and pool.used == 30
    pool.grow(2, 20)
    assert pool.peak == 70 and pool.used == 50
    pool.reserve(3, 45)
    assert pool.peak == 95
    pool.release(2)
    pool.release(3)
    pool.grow_lazily(97)
    assert pool.peak == 97
    with pytest.raises(InvariantViolation):
        pool.grow_lazily(4)
    assert pool.peak == 97


@pytest.mark.parametrize("capacity", [0, -5])
def test_capacity_must_be_positive(capacity):
    with pytest.raises(ValueError):
        KVPool(capacity)
