"""Paged KV blocks of the running requests, in closed form: how many blocks their decodes take over the next
steps, without visiting each request.

A running request with c tokens in KV needs a new block at the step whose new slot index is a multiple of
the block size (vLLM allocates one when a sequence's last block fills). So requests are counted by their
phase, (context - iteration) modulo the block size, and the blocks the running requests need over the
next i decode steps are n * (i // bs) + C[i % bs], with C[d] the requests that need one within their next
d steps: k decode iterations cost O(block size), not O(batch). The paged policies (`paged`, `paged_spf`,
`vllm`) hold one; the KV pool stays the one place where capacity is enforced.

`Blocks` and `CachedBlocks` own a paged scheduler's blocks, without and with vLLM's prefix cache: the policy
asks them what admission needs free, what a request holds up to a token, and has them take and free blocks.
"""
from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

import numpy as np

from s3sim.core.prefix_cache import PrefixCache


class BlockGrowth:
    """The running requests' phases, and the block arithmetic read off them (see the module's docstring). Kept in
    plain ints, not arrays: a step asks a few of these of 16 numbers, where numpy's per-call cost is the price."""

    def __init__(self, block_size: int):
        self.bs = int(block_size)
        self._phase = [0] * self.bs  # running requests by (context - iter) mod bs
        self._need_cache = (None, None)  # (iter, `_need`'s counts at it): asked many times a step
        # the phases in the order of their next block from each iteration mod bs: (-d - it) mod bs for d = 0..bs-1,
        # kept for every iteration where that is small (bs x bs indices); a huge block size computes them as asked
        self._order = ([[(-d - it) % self.bs for d in range(self.bs)] for it in range(self.bs)]
                       if self.bs <= 256 else None)

    def blocks(self, tokens: int) -> int:
        """Blocks that hold `tokens` tokens."""
        return -(-tokens // self.bs)

    def join(self, context: int, it: int) -> None:
        """A request with `context` tokens in KV starts decoding at iteration `it`."""
        self._phase[(context - it) % self.bs] += 1
        self._need_cache = (None, None)

    def leave(self, context: int, it: int) -> None:
        """A request with `context` tokens in KV at iteration `it` stops decoding."""
        self._phase[(context - it) % self.bs] -= 1
        self._need_cache = (None, None)

    def _need(self, it: int) -> list:
        """`first_need(it)` as a list (kept until the iteration or the running set changes)."""
        key, c = self._need_cache
        if key == it:
            return c
        order = self._order[it % self.bs] if self._order is not None else (
            (-np.arange(self.bs) - it) % self.bs).tolist()
        phase = self._phase
        c = [0, *accumulate(phase[j] for j in order)]
        self._need_cache = (it, c)
        return c

    def first_need(self, it: int) -> np.ndarray:
        """C[d]: running requests that need a new block within their next d steps from iteration `it`
        (d = 0..bs)."""
        return np.array(self._need(it), dtype=np.int64)

    def growth(self, steps: int, running: int, it: int) -> int:
        """Blocks `running` requests need over the next `steps` decode steps from iteration `it`."""
        q, rem = divmod(steps, self.bs)
        if rem == 1 and self._need_cache[0] != it:  # one step (asked most): the requests whose block fills now
            return int(running * q + self._phase[-it % self.bs])
        return int(running * q + self._need(it)[rem])

    def profile(self, k: int, running: int, it: int) -> np.ndarray:
        """Blocks taken after each of the next k decode steps (1..k)."""
        c = self.first_need(it)
        i = np.arange(1, k + 1)
        return running * (i // self.bs) + c[i % self.bs]

    def steps_within(self, free: int, running: int, it: int) -> int:
        """Decode steps the running requests can take before they need more than `free` blocks."""
        c = self._need(it)
        q0, r = divmod(free, running)
        rem = bisect_right(c, r, 0, self.bs) - 1  # c ascends
        return q0 * self.bs + rem


class Blocks:
    """vLLM's KV blocks for one scheduler, without a prefix cache: what admitting a request needs free, what it
    holds once its context up to a token is scheduled, and taking, extending and freeing those blocks in the
    pool. `CachedBlocks` is the same with vLLM's prefix cache; a policy holds one or the other and asks it,
    instead of branching on whether a cache is there."""
    cache = None  # the prefix cache, where there is one

    def __init__(self, pool, paging: BlockGrowth):
        self.pool, self.paging = pool, paging

    def free_needed(self, r) -> int:
        """Free blocks admitting `r` requires: its whole context and next token (vLLM's full_sequence_must_fit)."""
        return self.paging.blocks(r.context + 1)

    def held_until(self, r, end: int) -> int:
        """Blocks `r` holds once its context up to token `end` is scheduled: those tokens, and the next token's
        slot once the whole context is."""
        return self.paging.blocks(end + 1 if end >= r.context else end)

    def hits(self, r) -> list:
        """The cached blocks `r`'s prompt would find (none without a cache)."""
        return []

    def take(self, r, blocks: int, hits: list | None = None) -> int:
        """Give `r` `blocks` blocks (its `hits` among them: `hits(r)`'s, if the caller has them); returns the
        tokens of its context they hold already."""
        self.pool.reserve(r.id, blocks)
        return 0

    def grow_running(self, blocks: int) -> None:
        """The running requests' decodes take `blocks` more (`BlockGrowth.growth`), attributed to each request as
        it stops running (`release`)."""
        self.pool.grow_lazily(blocks)

    def grow(self, r, blocks: int) -> None:
        """`r`, part-way through a prefill allocated chunk by chunk, takes `blocks` more for its next chunk."""
        self.pool.grow(r.id, blocks)

    def computed(self, r, tokens: int) -> None:
        """`r`'s first `tokens` tokens of KV are computed (a cache makes their full blocks findable)."""

    def release_partial(self, r) -> None:
        """Free `r`, preempted part-way through its prefill."""
        self.pool.release(r.id)

    def release(self, r, preempted: bool) -> None:
        """Free `r`'s blocks as it finishes or is preempted."""
        self.pool.settle(r.id, self.paging.blocks(r.context))
        self.pool.release(r.id)

    def shared_blocks(self) -> int:
        """Blocks counted in more than one request's context but held once."""
        return 0


class CachedBlocks(Blocks):
    """`Blocks` with vLLM's prefix cache (`s3sim.core.prefix_cache.PrefixCache`): full blocks keyed by content,
    found again by a later prompt or a preempted request, freed into the cache's free queue."""

    def __init__(self, pool, paging: BlockGrowth):
        super().__init__(pool, paging)
        self.cache = PrefixCache(pool)

    def free_needed(self, r) -> int:
        return self.cache.free_blocks_needed(r, super().free_needed(r))

    def held_until(self, r, end: int) -> int:
        return max(super().held_until(r, end), self.cache.shared_blocks(r))

    def hits(self, r) -> list:
        return self.cache.lookup(r)[0]

    def take(self, r, blocks: int, hits: list | None = None) -> int:
        return self.cache.admit(r, blocks, hits=hits)

    def computed(self, r, tokens: int) -> None:
        self.cache.computed(r, tokens)

    def release_partial(self, r) -> None:  # its computed full blocks stay findable by it, as a preempted request's do
        self.cache.release(r, r.progress.blocks, r.progress.prefilled, preempted=True)

    def release(self, r, preempted: bool) -> None:
        blocks = self.paging.blocks(r.context)
        self.pool.settle(r.id, self.cache.private_blocks(r, blocks))
        self.cache.release(r, blocks, r.context - 1, preempted)  # the last sampled token's KV is not written yet

    def shared_blocks(self) -> int:
        return self.cache.duplicates
