"""The KV managers: every policy is an admission order over one of them, and only they change what the pool
holds (a policy asks, they take, grow and free)."""
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from s3sim.config import build_scheduler
from s3sim.core.errors import InvariantViolation
from s3sim.core.kv_blocks import Blocks, CachedBlocks
from s3sim.core.kv_pool import KVPool
from s3sim.core.kv_reservations import CopiedCache, Reservations, peak_tokens
from s3sim.core.policies import POLICIES

MANAGER = {"ft": Reservations, "orca": Reservations, "s3": Reservations, "oracle": Reservations,
           "hf": CopiedCache, "paged": Blocks, "paged_spf": Blocks, "vllm": CachedBlocks}
POLICY_SOURCES = sorted((Path(__file__).parents[1] / "s3sim" / "core" / "policies").glob("*.py"))
POOL_VERBS = re.compile(r"\bpool\.(reserve|grow|grow_lazily|settle|release|hold|hold_briefly|give_back)\(")


def cfg(policy: dict) -> dict:
    return {"max_seq_len": 2048, "seed": 0, "model": {"name": "gpt-j-6b"}, "policy": policy,
            "predictor": {"name": "synthetic", "num_buckets": 4, "accuracy": 0.8}}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_holds_the_kv_manager_of_its_memory(name):
    sched = build_scheduler(cfg({"name": name}), 100_000, [10])
    assert type(sched.kv) is MANAGER[name] and sched.kv.pool is sched.pool


def test_vllm_without_the_prefix_cache_holds_plain_blocks():
    assert type(build_scheduler(cfg({"name": "vllm", "prefix_caching": False}), 100_000, [10]).kv) is Blocks


def test_no_policy_changes_the_pool_itself():
    for path in POLICY_SOURCES:
        found = [m.group(0) for m in POOL_VERBS.finditer(path.read_text())]
        assert not found, f"{path.name} calls {found}: the KV manager takes and frees memory"


def test_reservations_count_whole_units_and_free_exactly_what_was_held():
    pool = KVPool(10, unit_tokens=16)
    kv, r = Reservations(pool), SimpleNamespace(id=7)
    need = kv.units(20, 13)  # 33 tokens: three blocks of 16
    assert need == 3 and kv.fits(need)
    kv.take(r, need)
    kv.grow(r, 2)
    assert kv.held(r) == 5 and kv.free == 5 and not kv.fits(6)
    kv.release(r)
    assert kv.free == 10 and not pool.held
    pool.check_empty()


def test_a_reservation_is_never_released_part_way_through_a_prefill():
    kv = Reservations(KVPool(100))
    with pytest.raises(InvariantViolation, match="request 3 .*part-way through its prefill"):
        kv.release_partial(SimpleNamespace(id=3))


def test_a_copied_cache_grows_every_row_and_peaks_at_one_layers_old_copy():
    """Two rows of a 6-token prompt on a 2-layer model, 4 decode steps: each row ends at 6 + 1 + 4 tokens, and
    the last step held one of the 4 layer tensors of the 18 tokens it copied (rounded up: 5) on top."""
    pool = KVPool(100)
    kv = CopiedCache(pool, layers=2)
    rows = [SimpleNamespace(id=i) for i in range(2)]
    for r in rows:
        kv.take_row(r, 6)
    kv.grow_rows(2, 4)
    assert pool.used == 2 * 11 and pool.peak == 22 + 5 == kv.peak(2, 6, 5) == peak_tokens(2, 6, 5, layers=2)
    assert kv.copied_tokens == 12 + 14 + 16 + 18  # the cache each step copies
    for r in rows:
        kv.settle(r, 11)
        kv.release(r)
    pool.check_empty()
