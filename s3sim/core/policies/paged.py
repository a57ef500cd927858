"""vLLM-style paged allocation: KV in fixed-size blocks allocated on demand, no length prediction.

Admission is first-come first-served while the free blocks, after this iteration's growth and the new
request's prompt, stay above a watermark (which avoids admitting into immediate thrashing). When the
running requests need more blocks than are free, the newest is preempted (recompute by default, or
swap) and goes back to the front of the queue.

Block growth is accounted in aggregate so that k decode iterations cost O(block_size), not O(batch):
a running request with c tokens in KV needs a new block at the step whose new slot index is a multiple
of the block size, so requests are counted by their phase modulo the block size (`_phase`), and the
blocks needed over the next i steps have a closed form (see `_growth`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.core.kv_pool import KVPool
from s3sim.core.output import SchedulerOutput
from s3sim.core.policies.base import FcfsScheduler, PolicyConfig
from s3sim.core.request import Request


@dataclass
class PagedConfig(PolicyConfig):
    block_size: int = 16  # tokens per KV block
    watermark: float = 0.01  # fraction of blocks kept free at admission

    def __post_init__(self):
        super().__post_init__()
        if self.block_size <= 0:
            raise ConfigError(f"policy.block_size must be a positive integer, got {self.block_size!r}")
        if not 0 <= self.watermark < 1:
            raise ConfigError(f"policy.watermark must be a fraction in [0, 1), got {self.watermark}")


class PagedScheduler(FcfsScheduler):
    name = "paged"
    Config = PagedConfig

    @classmethod
    def from_config(cls, conf: PagedConfig, capacity_tokens, max_seq_len, predictor=None, feedback="mispredicted"):
        pool = KVPool(capacity_tokens // conf.block_size, unit_tokens=conf.block_size)
        extra = {"predictor": predictor} if cls.uses_predictor else {}
        return cls(pool, max_seq_len, watermark=conf.watermark, max_batch_size=conf.max_batch_size,
                   preemption_mode=conf.preemption_mode, max_num_batched_tokens=conf.max_num_batched_tokens, **extra)

    def __init__(self, pool, max_seq_len, watermark: float = 0.01, **kw):
        super().__init__(pool, max_seq_len, **kw)
        self.bs = pool.unit_tokens
        self.watermark = int(math.ceil(watermark * pool.capacity))
        self._phase = np.zeros(self.bs, dtype=np.int64)  # running requests by (context - iter) mod bs
        self._need_cache = (None, None)  # (iter, `_first_need`'s counts at it): asked many times a step

    def _event_target(self, r: Request) -> int:
        return r.output_len

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.bs)

    # ---- block growth in closed form --------------------------------------------------------
    def _first_need(self) -> np.ndarray:
        """C[d]: running requests that need a new block within their next d steps (d = 0..bs). Kept until the
        iteration or the running set changes (`_join`, `_leave` clear it)."""
        key, c = self._need_cache
        if key == self.iter:
            return c
        d_minus_1 = (-np.arange(self.bs) - self.iter) % self.bs
        counts = self._phase[d_minus_1]
        c = np.concatenate(([0], np.cumsum(counts)))
        c.flags.writeable = False
        self._need_cache = (self.iter, c)
        return c

    def _growth(self, steps: int, c: np.ndarray | None = None) -> int:
        """Blocks the running requests need over the next `steps` decode steps."""
        if c is None:
            c = self._first_need()
        q, rem = divmod(steps, self.bs)
        return int(len(self.running) * q + c[rem])

    def _growth_profile(self, k: int) -> np.ndarray:
        c = self._first_need()
        i = np.arange(1, k + 1)
        return len(self.running) * (i // self.bs) + c[i % self.bs]

    def horizon(self) -> int:
        k = super().horizon()
        n = len(self.running)
        if n == 0 or k == 0:
            return k
        c = self._first_need()
        q0, r = divmod(self.pool.free, n)
        rem = int(np.searchsorted(c[: self.bs], r, side="right")) - 1
        return min(k, q0 * self.bs + rem)

    def kv_reserved_profile(self, k: int) -> np.ndarray:
        """Tokens of allocated blocks during each of the next k decode steps (growth is allocated first)."""
        return (self.pool.used + self._growth_profile(k)) * self.bs

    # ---- engine verbs -----------------------------------------------------------------------
    def could_admit(self, r: Request) -> bool:
        return (not self.waiting and len(self.running) + len(self.prefilling) < self.max_batch
                and self.pool.free - self._growth(1) - self._free_needed(r) >= self.watermark)

    def schedule(self, now: float) -> SchedulerOutput:
        need = self._step_need()
        preempted = False
        while need > self.pool.free and (self.running or self.prefilling):
            victim = self._victim()
            self._preempt(victim, now)
            self.waiting.appendleft(victim)
            need = self._step_need()
            preempted = True
        batch = self._decode_batch()
        if preempted:
            return batch
        room = self._room()
        growth = self._growth(1)  # allocated when the step is applied (`_on_steps`)
        free = self.pool.free - growth
        while self.waiting and room > 0 and self._budget_left > 0:
            r = self.waiting[0]
            blocks = self._free_needed(r)
            if free - blocks < self.watermark and (self.running or batch.prefill or batch.resumed):
                break
            if blocks > free:
                break
            self.waiting.popleft()
            prefix = self._take_blocks(r)
            free = self.pool.free - growth
            self._admit(r, batch, now, prefix=prefix)
            room -= 1
        return batch

    def _step_need(self) -> int:
        """Blocks this iteration takes before any admission: the running requests' growth (and, where blocks
        are allocated chunk by chunk, the next chunks of part-way prefills)."""
        return self._growth(1)

    def _victim(self) -> Request:
        """The running request preempted when the running ones need more blocks than are free: the newest."""
        return self.running[next(reversed(self.running))]

    def _free_needed(self, r: Request) -> int:
        """Free blocks admitting `r` takes: those of its context and its next token."""
        return self._blocks(r.context + 1)

    def _take_blocks(self, r: Request) -> int:
        """Give `r` the blocks of its context and next token; returns the tokens of its context they hold
        already (found in a prefix cache: none without one)."""
        self.pool.reserve(r.id, self._blocks(r.context + 1))
        return 0

    # ---- hooks ------------------------------------------------------------------------------
    def _on_steps(self, k: int) -> None:
        if self.running:
            self.pool.grow_lazily(self._growth(k))

    def _join(self, r: Request) -> None:
        # a joining request's blocks already cover its context (allocated at admission)
        super()._join(r)
        self._phase[(r.context - self.iter) % self.bs] += 1
        self._need_cache = (None, None)

    def _leave(self, r: Request) -> None:
        self._phase[(r.prompt_len + self.generated(r) - self.iter) % self.bs] -= 1
        self._need_cache = (None, None)
        super()._leave(r)

    def _release(self, r: Request, preempted: bool = False) -> None:
        self.pool.settle(r.id, self._blocks(r.context))  # its blocks: admission's plus its decode growth
        self.pool.release(r.id)
