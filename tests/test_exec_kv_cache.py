"""The executor's block cache: allocation follows real growth, release and swap give memory back, and a
shortage the core did not foresee is an invariant violation."""
import numpy as np
import pytest
import torch

from s3exec.kv_cache import KVCache
from s3sim.core.errors import InvariantViolation


def cache(blocks=10, bs=4):
    return KVCache(num_layers=2, kv_heads=2, head_dim=3, num_blocks=blocks, block_size=bs, max_tokens_per_seq=40)


def test_blocks_follow_tokens_and_come_back():
    c = cache()
    r = c.allocate(7, 5)  # 5 tokens: 2 blocks of 4
    assert c.nblocks[r] == 2 and c.used_blocks == 2
    c.ensure(np.array([r]), np.array([8]))  # still 2
    assert c.used_blocks == 2
    c.ensure(np.array([r]), np.array([9]))
    assert c.used_blocks == 3
    c.release(7)
    assert c.used_blocks == 0 and not c.holds(7)
    c.check_empty()


def test_vectorised_growth_gives_each_row_distinct_blocks():
    c = cache(blocks=20, bs=2)
    rows = np.array([c.allocate(i, 1) for i in range(4)])
    c.ensure(rows, np.array([5, 1, 4, 2]))  # 3, 1, 2, 1 blocks
    assert c.nblocks[rows].tolist() == [3, 1, 2, 1]
    held = np.concatenate([c.table[r, :c.nblocks[r]] for r in rows])
    assert len(set(held.tolist())) == len(held) == c.used_blocks == 7


def test_slots_map_positions_through_the_block_table():
    c = cache(bs=4)
    c.allocate(0, 3)
    r = c.allocate(1, 6)
    blocks = c.table[r, :2]
    assert c.slots(r, 0, 6).tolist() == [blocks[0] * 4 + i for i in range(4)] + [blocks[1] * 4, blocks[1] * 4 + 1]


def test_a_shortage_the_core_did_not_foresee_is_an_invariant_violation():
    c = cache(blocks=3)
    c.allocate(0, 8)
    with pytest.raises(InvariantViolation, match="out of blocks"):
        c.allocate(1, 5)


def test_swap_round_trip_keeps_the_kv_and_frees_the_device():
    c = cache(blocks=6, bs=2)
    r = c.allocate(3, 5)
    c.length[r] = 5
    slots = torch.from_numpy(c.slots(r, 0, 5))
    flat = c.data.view(2, 2, -1, 2, 3)
    values = torch.arange(2 * 2 * 5 * 2 * 3, dtype=torch.float32).view(2, 2, 5, 2, 3)
    flat[:, :, slots] = values
    c.allocate(9, 2)  # someone else holds a block, so the request comes back elsewhere
    assert c.swap_out(3) == 5
    assert not c.holds(3) and c.used_blocks == 1
    c.allocate(4, 4)  # the freed blocks are reused
    assert c.swap_in(3) == 5
    r = c.row[3]
    assert c.tokens(3) == 5
    assert torch.equal(flat[:, :, torch.from_numpy(c.slots(r, 0, 5))], values)
    for rid in (3, 4, 9):
        c.release(rid)
    c.check_empty()


def test_check_empty_names_what_is_left():
    c = cache()
    c.allocate(1, 2)
    with pytest.raises(InvariantViolation, match="still held"):
        c.check_empty()
