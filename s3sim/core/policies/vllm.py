"""The vLLM V1 scheduler: paged KV blocks under a per-iteration token budget, with chunked prefill.

Each iteration (vLLM's `Scheduler.schedule`, as of its V1 engine):
- the running requests decode first, one token each out of the budget (`max_num_batched_tokens`); if the
  blocks they need are not free, the newest running request is preempted (recompute: its blocks are freed
  and it goes back to the front of the queue), and no new request is admitted in that iteration;
- requests whose prompt is partly computed continue with the next chunk the budget allows, oldest first;
- then waiting requests are admitted first-come first-served while the budget, `max_num_seqs` (here
  `max_batch_size`) and free blocks allow; a prompt longer than what is left of the budget is prefilled over
  several iterations and keeps its place. Admission reserves the blocks of the whole prompt at once (vLLM's
  `scheduler_reserve_full_isl`), so a partly prefilled request never waits for memory mid-prompt.
With `prefix_caching`, full blocks of computed KV are found again instead of recomputed
(`s3sim.core.prefix_cache`, vLLM's free queue and block hashes): the prompt blocks a workload marks as
shared between requests (a trace's `hash_ids`, or `shared_prefix`), and the blocks a preempted request
freed, until the free queue hands them out again.
Decoding then grows blocks on demand exactly as `paged` does (the same closed form, the same exact jumps).
The chunk a request computes emits no token until its last one, which samples the first output token.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

from s3sim.core.errors import ConfigError
from s3sim.core.kv_pool import KVPool
from s3sim.core.output import SchedulerOutput
from s3sim.core.policies.paged import PagedConfig, PagedScheduler
from s3sim.core.prefix_cache import PrefixCache
from s3sim.core.request import Request


@dataclass
class VllmConfig(PagedConfig):
    max_batch_size: Optional[int] = 256  # vLLM's max_num_seqs: requests running or part-way through a prefill
    max_num_batched_tokens: Optional[int] = 2048  # tokens one iteration computes: decodes first, then chunks
    watermark: float = 0.0  # vLLM V1 keeps no free-block watermark
    prefix_caching: bool = False  # full blocks found again: shared prompt blocks, a preempted request's own

    def __post_init__(self):
        # vLLM's rule for the budget is its own (max_num_batched_tokens >= max_num_seqs: every running request's
        # decode fits in one step), where other policies keep the batch strictly below the budget; so the
        # inherited checks run with the budget set aside, and vLLM's rule after them
        unbudgeted = copy.copy(self)
        unbudgeted.max_num_batched_tokens = None
        super(VllmConfig, unbudgeted).__post_init__()
        if self.preemption_mode != "recompute":
            raise ConfigError("policy.preemption_mode must be recompute for vllm (its V1 engine only recomputes)")
        check_budget(self.max_batch_size, self.max_num_batched_tokens, "policy.")


def check_budget(max_batch_size, max_num_batched_tokens, prefix: str = "") -> None:
    """vLLM's rule: a token budget, and at most that many requests (`max_num_seqs`) running."""
    if max_num_batched_tokens is None:
        raise ConfigError(f"{prefix}max_num_batched_tokens must be set for vllm (its V1 engine always has a budget)")
    if max_num_batched_tokens <= 0:
        raise ConfigError(f"{prefix}max_num_batched_tokens must be a positive integer, got {max_num_batched_tokens!r}")
    if not max_batch_size or max_batch_size > max_num_batched_tokens:
        raise ConfigError(f"{prefix}max_batch_size (vLLM's max_num_seqs) must be set and at most {prefix}"
                          f"max_num_batched_tokens={max_num_batched_tokens} (every running request decodes within "
                          f"the budget, as vLLM requires), got {max_batch_size!r}")


class VllmScheduler(PagedScheduler):
    name = "vllm"
    Config = VllmConfig

    def __init__(self, pool, max_seq_len, max_num_batched_tokens: int = 2048, watermark: float = 0.0,
                 prefix_caching: bool = False, **kw):
        check_budget(kw.get("max_batch_size"), max_num_batched_tokens)
        super().__init__(pool, max_seq_len, watermark=watermark, **kw)  # the budget by vLLM's rule, not the base's
        self.token_budget = int(max_num_batched_tokens)
        self.prefix_caching = bool(prefix_caching)
        self.cache = PrefixCache(pool) if self.prefix_caching else None
        self.cached_tokens = 0  # prefill tokens found in the prefix cache instead of recomputed
        self._readmit_next = False  # the last schedule preempted with requests waiting (see `horizon`)

    @classmethod
    def from_config(cls, conf: VllmConfig, capacity_tokens, max_seq_len, predictor=None, feedback="mispredicted"):
        pool = KVPool(capacity_tokens // conf.block_size, unit_tokens=conf.block_size)
        return cls(pool, max_seq_len, max_num_batched_tokens=conf.max_num_batched_tokens, watermark=conf.watermark,
                   prefix_caching=conf.prefix_caching, max_batch_size=conf.max_batch_size,
                   preemption_mode=conf.preemption_mode)

    def counters(self) -> dict:
        shared = 0 if self.cache is None else self.cache.found_shared * self.bs
        return {**super().counters(), "cached_tokens": self.cached_tokens, "shared_cached_tokens": shared}

    def schedule(self, now: float) -> SchedulerOutput:
        before = self.preemptions
        out = super().schedule(now)
        self._readmit_next = self.cache is not None and self.preemptions > before and self.has_waiting()
        return out

    def horizon(self) -> int:
        """As paged's, but one iteration after a preemption while requests wait: a victim that finds a shared
        block in use on readmission needs fewer blocks than it freed, so it may be admitted at the next
        boundary (without the cache it never can, and after an iteration that did not preempt the head
        stays inadmissible while free blocks only shrink)."""
        k = super().horizon()
        return min(k, 1) if self._readmit_next else k

    def shared_kv_tokens(self) -> int:
        return 0 if self.cache is None else self.cache.duplicates * self.bs

    # ---- the prefix cache's hooks ----------------------------------------------------------
    def _free_needed(self, r: Request) -> int:
        blocks = self._blocks(r.context + 1)
        return blocks if self.cache is None else self.cache.free_blocks_needed(r, blocks)

    def _take_blocks(self, r: Request) -> int:
        if self.cache is None:
            return super()._take_blocks(r)
        tokens = self.cache.admit(r, self._blocks(r.context + 1))
        self.cached_tokens += tokens
        return tokens

    def _add_prefill(self, batch: SchedulerOutput, r: Request, prefix: int, chunk: int) -> None:
        super()._add_prefill(batch, r, prefix, chunk)
        if self.cache is not None:
            self.cache.computed(r, prefix + chunk)

    def _release(self, r: Request, preempted: bool = False) -> None:
        if self.cache is None:
            return super()._release(r, preempted)
        blocks = self._blocks(r.context)
        self.pool.settle(r.id, self.cache.private_blocks(r, blocks))
        # the last sampled token's KV is not written yet
        self.cache.release(r, blocks, r.context - 1, preempted)
