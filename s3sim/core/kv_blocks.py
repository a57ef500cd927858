"""Paged KV blocks of the running requests, in closed form: how many blocks their decodes take over the next
steps, without visiting each request.

A running request with c tokens in KV needs a new block at the step whose new slot index is a multiple of
the block size (vLLM allocates one when a sequence's last block fills). So requests are counted by their
phase, (context - iteration) modulo the block size, and the blocks the running requests need over the
next i decode steps are n * (i // bs) + C[i % bs], with C[d] the requests that need one within their next
d steps: k decode iterations cost O(block size), not O(batch). The paged policies (`paged`, `paged_spf`,
`vllm`) hold one; the KV pool stays the one place where capacity is enforced.
"""
from __future__ import annotations

import numpy as np


class BlockGrowth:
    """The running requests' phases, and the block arithmetic read off them (see the module's docstring)."""

    def __init__(self, block_size: int):
        self.bs = int(block_size)
        self._phase = np.zeros(self.bs, dtype=np.int64)  # running requests by (context - iter) mod bs
        self._need_cache = (None, None)  # (iter, `first_need`'s counts at it): asked many times a step

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

    def first_need(self, it: int) -> np.ndarray:
        """C[d]: running requests that need a new block within their next d steps from iteration `it`
        (d = 0..bs). Kept until the iteration or the running set changes."""
        key, c = self._need_cache
        if key == it:
            return c
        d_minus_1 = (-np.arange(self.bs) - it) % self.bs
        counts = self._phase[d_minus_1]
        c = np.concatenate(([0], np.cumsum(counts)))
        c.flags.writeable = False
        self._need_cache = (it, c)
        return c

    def growth(self, steps: int, running: int, it: int) -> int:
        """Blocks `running` requests need over the next `steps` decode steps from iteration `it`."""
        q, rem = divmod(steps, self.bs)
        return int(running * q + self.first_need(it)[rem])

    def profile(self, k: int, running: int, it: int) -> np.ndarray:
        """Blocks taken after each of the next k decode steps (1..k)."""
        c = self.first_need(it)
        i = np.arange(1, k + 1)
        return running * (i // self.bs) + c[i % self.bs]

    def steps_within(self, free: int, running: int, it: int) -> int:
        """Decode steps the running requests can take before they need more than `free` blocks."""
        c = self.first_need(it)
        q0, r = divmod(free, running)
        rem = int(np.searchsorted(c[: self.bs], r, side="right")) - 1
        return q0 * self.bs + rem
