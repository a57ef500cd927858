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
With `prefix_caching`, the full blocks a preempted request frees stay cached until the free queue, an LRU
list, hands them out again: vLLM appends them in reverse order, so after `a` allocations beyond the `f`
blocks that were free before them, the request's last `a - f` blocks are gone and the rest of its prefix is
found when it is admitted again; only the tokens after it are recomputed (at least the last one). Prompts
shared between requests are not modelled (each request's prompt is taken to be its own).
Decoding then grows blocks on demand exactly as `paged` does (the same closed form, the same exact jumps).
The chunk a request computes emits no token until its last one, which samples the first output token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from s3sim.core.errors import ConfigError
from s3sim.core.kv_pool import KVPool
from s3sim.core.policies.paged import PagedConfig, PagedScheduler
from s3sim.core.request import Request


@dataclass
class VllmConfig(PagedConfig):
    max_batch_size: Optional[int] = 256  # vLLM's max_num_seqs: requests running or part-way through a prefill
    max_num_batched_tokens: Optional[int] = 2048  # tokens one iteration computes: decodes first, then chunks
    watermark: float = 0.0  # vLLM V1 keeps no free-block watermark
    prefix_caching: bool = False  # a preempted request finds the blocks it freed if they were not reused

    def __post_init__(self):
        super().__post_init__()
        if self.preemption_mode != "recompute":
            raise ConfigError("policy.preemption_mode must be recompute for vllm (its V1 engine only recomputes)")
        if self.max_num_batched_tokens is None:
            raise ConfigError("policy.max_num_batched_tokens must be set for vllm (its V1 engine always has a budget)")


class VllmScheduler(PagedScheduler):
    name = "vllm"
    Config = VllmConfig

    def __init__(self, pool, max_seq_len, max_num_batched_tokens: int = 2048, watermark: float = 0.0,
                 prefix_caching: bool = False, **kw):
        super().__init__(pool, max_seq_len, watermark=watermark, max_num_batched_tokens=max_num_batched_tokens, **kw)
        self.prefix_caching = bool(prefix_caching)
        self.cached_tokens = 0  # prefill tokens found in the prefix cache instead of recomputed

    @classmethod
    def from_config(cls, conf: VllmConfig, capacity_tokens, max_seq_len, predictor=None, feedback="mispredicted"):
        pool = KVPool(capacity_tokens // conf.block_size, unit_tokens=conf.block_size)
        return cls(pool, max_seq_len, max_num_batched_tokens=conf.max_num_batched_tokens, watermark=conf.watermark,
                   prefix_caching=conf.prefix_caching, max_batch_size=conf.max_batch_size,
                   preemption_mode=conf.preemption_mode)

    def counters(self) -> dict:
        return {**super().counters(), "cached_tokens": self.cached_tokens}

    def _preempt(self, r: Request, now: float, cause: str = "memory") -> None:
        if self.prefix_caching:
            # full blocks of computed KV: the last sampled token's KV is not written yet
            r.progress.cached = (self.pool.allocated, self.pool.free,
                                 (r.prompt_len + self.generated(r) - 1) // self.bs)
        super()._preempt(r, now, cause)

    def _cached_prefix(self, r: Request) -> int:
        """Tokens of `r`'s context still in the prefix cache (see the module doc)."""
        p = r.progress
        if p is None or p.cached is None:
            return 0
        allocated, free, blocks = p.cached
        p.cached = None
        lost = max(0, self.pool.allocated - allocated - free)
        tokens = min(max(0, blocks - lost) * self.bs, r.context - 1)
        self.cached_tokens += tokens
        return tokens
