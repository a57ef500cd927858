"""The closed-form block growth of the paged policies against counting each request's blocks one by one."""
from __future__ import annotations

import numpy as np
import pytest

from s3sim.core.kv_blocks import BlockGrowth


def _brute(contexts_at: dict[int, int], it: int, steps: int, bs: int) -> int:
    """Blocks the requests (context at iteration `it`) take over `steps` decode steps, one by one: a step that
    writes token c + s (its slot index) into a full last block opens a new one."""
    need = 0
    for c in contexts_at.values():
        need += -(-(c + steps) // bs) - -(-c // bs)
    return need


@pytest.mark.parametrize("bs", [1, 4, 16])
def test_growth_profile_and_horizon_match_counting_request_by_request(bs):
    rng = np.random.default_rng(bs)
    g, it, live = BlockGrowth(bs), 0, {}  # live: request -> (context at join, iteration it joined)
    for event in range(300):
        if live and rng.random() < 0.3:  # one leaves
            rid = int(rng.choice(list(live)))
            c0, j = live.pop(rid)
            g.leave(c0 + it - j, it)
        else:
            c = int(rng.integers(1, 200))
            live[event] = (c, it)
            g.join(c, it)
        it += int(rng.integers(0, 5))  # every running request decodes one token per iteration
        now = {rid: c0 + it - j for rid, (c0, j) in live.items()}
        for steps in (0, 1, 2, bs - 1, bs, bs + 3, 3 * bs):
            if steps >= 0:
                assert g.growth(steps, len(live), it) == _brute(now, it, steps, bs)
        prof = g.profile(2 * bs + 1, len(live), it)
        assert prof.tolist() == [_brute(now, it, s, bs) for s in range(1, 2 * bs + 2)]
        if live:
            free = int(rng.integers(0, 3 * len(live) + 1))
            k = g.steps_within(free, len(live), it)
            assert _brute(now, it, k, bs) <= free < _brute(now, it, k + 1, bs)
    assert g.blocks(0) == 0 and g.blocks(1) == 1 and g.blocks(bs) == 1 and g.blocks(bs + 1) == 2
