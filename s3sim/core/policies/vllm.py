"""The vLLM V1 scheduler: paged KV blocks under a per-iteration token budget, with chunked prefill.

Each iteration (vLLM's `Scheduler.schedule`, as of its V1 engine):
- the running requests decode first, one token each out of the budget (`max_num_batched_tokens`); if the
  blocks they need are not free, the newest running request is preempted (recompute: its blocks are freed
  and it goes back to the front of the queue), and no new request is admitted in that iteration;
- requests whose prompt is partly computed continue with the next chunk the budget allows, oldest first;
- then waiting requests are admitted first-come first-served while the budget, `max_num_seqs` (here
  `max_batch_size`) and free blocks allow; a prompt longer than what is left of the budget is prefilled over
  several iterations and keeps its place. Admission checks that the blocks of the whole prompt are free
  (vLLM's `scheduler_reserve_full_isl`) but takes only the first chunk's; each later chunk takes its own as
  it is scheduled (`allocate_slots`), and one that finds too few preempts the newest request, decoding or
  part-way through a prefill (often that prefill itself, whose computed chunks are then dropped).
  `allocate=prompt` takes the whole prompt's blocks at admission instead (no prefill is ever preempted).
With `prefix_caching`, full blocks of computed KV are found again instead of recomputed
(`s3sim.core.prefix_cache`, vLLM's free queue and block hashes): the prompt blocks a workload marks as
shared between requests (a trace's `hash_ids`, or `shared_prefix`), and the blocks a preempted request
freed, until the free queue hands them out again.
Decoding then grows blocks on demand exactly as `paged` does (the same closed form, the same exact jumps).
The chunk a request computes emits no token until its last one, which samples the first output token.

Length prediction as an ordering (the budget, the limits, the blocks and the prefix cache unchanged):
- `order` ranks the waiting queue: `fcfs` (vLLM: arrival order, a preempted request back at the front), `sjf`
  (shortest predicted output length first) or `srpt` (shortest predicted remaining length first: the
  predicted length less the tokens generated before a preemption, which is what re-ranks a preempted
  request); ties go to the earlier arrival. A request's predicted length is the upper bound of its
  predicted bucket (what S3 would reserve, at most max_seq_len). Once a request has generated that many
  tokens the prediction is known short and is refreshed to the first bucket not ruled out yet, the one
  holding generated + 1 (the next bucket, or further ones: S3's supervisor's `grow=next`); beyond the last
  bucket it is max_seq_len. So the remaining estimate is always at least one token, and it is re-read
  whenever a request re-enters the queue (`Request.bucket` holds the bucket in use). With
  `predictor.repredict` the remaining length is re-predicted as the request generates
  (`s3sim.core.predictors.reprediction`: an error that shrinks with the tokens generated, measured on a
  served model's hidden states), and that estimate ranks a re-queued request and picks the victim. Part-way prefills
  keep their place (they continue before any admission, oldest first), as in vLLM.
- `max_wait_s` bounds starvation: a request waiting that long (since it arrived, or since it was
  preempted) is admitted first, oldest first, whatever its rank, and nothing else is admitted until it
  fits (`aged_admissions` counts the admissions the bound took ahead of the order).
- `victim` picks the request preempted when blocks run out: the `newest` (vLLM) or the one with the
  `longest_remaining` predicted work (the newest among equals).
Orders other than fcfs and the longest_remaining victim read a length predictor; fcfs with the newest victim
and no bound is vLLM's scheduler, unchanged.

Exact jumps under an ordering: an arrival that could fit may jump the queue, so it interrupts a jump
whenever it fits (`could_admit`); after a preemption the next head may be another request than the victim,
so the jump stops at the next boundary (as with the prefix cache); and with `max_wait_s` the head can change
with time alone, so while the oldest waiting request would fit, iterations are taken one at a time (the
scheduler does not know when the bound falls; it cannot fit later in a jump if it does not fit now, since
free blocks only shrink while decoding).
"""
from __future__ import annotations

import copy
import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Optional

from sortedcontainers import SortedKeyList

from s3sim.core.errors import ConfigError
from s3sim.core.kv_pool import block_pool
from s3sim.core.output import SchedulerOutput
from s3sim.core.policies.base import Progress
from s3sim.core.policies.paged import PagedConfig, PagedScheduler
from s3sim.core.predictors.base import Predictor
from s3sim.core.kv_blocks import CachedBlocks
from s3sim.core.request import Request

ALLOCATIONS = ("chunk", "prompt")  # policy.allocate: when a prompt's blocks are taken
ORDERS = ("fcfs", "sjf", "srpt")  # policy.order: how waiting requests are ranked
VICTIMS = ("newest", "longest_remaining")  # policy.victim: which running request is preempted
AUTO = "auto"  # policy.max_batch_size / policy.max_num_batched_tokens: the limit vLLM V1 picks when none is set


def vllm_default_limits(memory_gib: float, gpu_name: str, offline: bool) -> tuple[int, int, str]:
    """(max_num_seqs, max_num_batched_tokens, why) that vLLM V1 picks when the user sets neither
    (`EngineArgs.get_batch_defaults`): on a GPU of at least 70 GiB that is not an A100, 1,024 sequences and
    16,384 tokens for the offline `LLM` class or 8,192 for the server; elsewhere 256 sequences and 8,192 or
    2,048 tokens; the sequence limit never above the token budget."""
    a100 = "a100" in gpu_name.lower()
    big = memory_gib >= 70 and not a100
    tokens = (16384 if offline else 8192) if big else (8192 if offline else 2048)
    seqs = min(1024 if big else 256, tokens)
    size = f"{memory_gib:.0f} GiB, " + ("at least 70 GiB and not an A100" if big else "an A100" if a100 else
                                         "below 70 GiB")
    why = f"vLLM V1's default for {'the offline LLM class' if offline else 'the server'} on {gpu_name} ({size})"
    return seqs, tokens, why


@dataclass
class VllmConfig(PagedConfig):
    max_batch_size: Optional[int] = 256  # vLLM's max_num_seqs: requests running or part-way through a prefill
    max_num_batched_tokens: Optional[int] = 2048  # tokens one iteration computes: decodes first, then chunks
    watermark: float = 0.0  # vLLM V1 keeps no free-block watermark
    prefix_caching: bool = True  # full blocks found again (vLLM V1's default): shared prompt blocks, a preempted request's own
    order: str = "fcfs"  # the waiting queue: fcfs | sjf (predicted length) | srpt (predicted remaining length)
    victim: str = "newest"  # preempted when blocks run out: newest | longest_remaining (predicted)
    max_wait_s: Optional[float] = None  # seconds: a request waiting this long is admitted first; null: no bound
    allocate: str = "chunk"  # a prompt's blocks: chunk (vLLM: as each chunk is scheduled) | prompt (all at admission)

    @property
    def predictor_use(self) -> str:
        """The setting that reads a length predictor ('' when none does)."""
        return predictor_use(self.order, self.victim)

    def __post_init__(self):
        # vLLM's rule for the budget is its own (max_num_batched_tokens >= max_num_seqs: every running request's
        # decode fits in one step), where other policies keep the batch strictly below the budget; so the
        # inherited checks run with the budget set aside, and vLLM's rule after them
        check_budget(self.max_batch_size, self.max_num_batched_tokens, "policy.")
        unbudgeted = copy.copy(self)
        unbudgeted.max_num_batched_tokens = None
        super(VllmConfig, unbudgeted).__post_init__()
        if self.preemption_mode != "recompute":
            raise ConfigError("policy.preemption_mode must be recompute for vllm (its V1 engine only recomputes)")
        check_ordering(self.order, self.victim, self.max_wait_s)
        check_allocate(self.allocate)


def check_allocate(allocate) -> None:
    if allocate not in ALLOCATIONS:
        raise ConfigError(f"policy.allocate {allocate!r} is unknown; valid: {', '.join(ALLOCATIONS)}")


def check_ordering(order, victim, max_wait_s) -> None:
    """The ordering settings' values (`policy.order`, `policy.victim`, `policy.max_wait_s`)."""
    if order not in ORDERS:
        raise ConfigError(f"policy.order {order!r} is unknown; valid: {', '.join(ORDERS)}")
    if victim not in VICTIMS:
        raise ConfigError(f"policy.victim {victim!r} is unknown; valid: {', '.join(VICTIMS)}")
    if max_wait_s is not None and (isinstance(max_wait_s, bool) or not isinstance(max_wait_s, (int, float))
                                   or not 0 <= max_wait_s < math.inf):
        raise ConfigError(f"policy.max_wait_s must be a non-negative number of seconds or null, got {max_wait_s!r}")


def predictor_use(order: str, victim: str) -> str:
    """The setting among `order` and `victim` that reads a length predictor, as `policy.<field>=<value>`, or ''."""
    if order != "fcfs":
        return f"policy.order={order}"
    return "policy.victim=longest_remaining" if victim == "longest_remaining" else ""


def check_budget(max_batch_size, max_num_batched_tokens, prefix: str = "") -> None:
    """vLLM's rule: a token budget, and at most that many requests (`max_num_seqs`) running."""
    if max_num_batched_tokens is None:
        raise ConfigError(f"{prefix}max_num_batched_tokens must be set for vllm (its V1 engine always has a budget)")
    if max_num_batched_tokens <= 0:
        raise ConfigError(f"{prefix}max_num_batched_tokens must be a positive integer, got {max_num_batched_tokens!r}")
    if not max_batch_size or max_batch_size < 0 or max_batch_size > max_num_batched_tokens:
        raise ConfigError(f"{prefix}max_batch_size (vLLM's max_num_seqs) must be a positive integer of at most "
                          f"{prefix}max_num_batched_tokens={max_num_batched_tokens} (every running request decodes "
                          f"within the budget, as vLLM requires), or auto (vLLM V1's default for the GPU), got "
                          f"{max_batch_size!r}")


class VllmScheduler(PagedScheduler):
    name = "vllm"
    Config = VllmConfig
    model_limits = ()

    def __init__(self, pool, max_seq_len, max_num_batched_tokens: int = 2048, watermark: float = 0.0,
                 prefix_caching: bool = False, order: str = "fcfs", victim: str = "newest",
                 max_wait_s: float | None = None, predictor: Predictor | None = None, allocate: str = "chunk", **kw):
        check_budget(kw.get("max_batch_size"), max_num_batched_tokens)
        check_ordering(order, victim, max_wait_s)
        check_allocate(allocate)
        use = predictor_use(order, victim)
        if use and predictor is None:
            raise ConfigError(f"{use} ranks requests by predicted length and needs a length predictor")
        super().__init__(pool, max_seq_len, watermark=watermark, **kw)  # the budget by vLLM's rule, not the base's
        self.token_budget = int(max_num_batched_tokens)
        self.prefix_caching = bool(prefix_caching)
        if self.prefix_caching:
            self.kv = CachedBlocks(pool, self.paging)  # owns the blocks, with the prefix cache
        self.cache = self.kv.cache  # the prefix cache, or None
        self.cached_tokens = 0  # prefill tokens found in the prefix cache instead of recomputed
        self._readmit_next = False  # the last schedule preempted with requests waiting (see `horizon`)
        self.order, self.victim = order, victim
        self.max_wait_s = None if max_wait_s is None else float(max_wait_s)
        self.predictor = predictor if use else None  # read only by the settings that rank by predicted length
        if self.predictor is not None:
            # predicted lengths: each bucket's upper bound, at most max_seq_len
            self._upper = [min(int(u), self.max_seq_len) for u in self.predictor.buckets.upper]
        self.by_chunk = allocate == "chunk"  # a prompt's blocks taken chunk by chunk (else all at admission)
        self.aged_admissions = 0  # admissions max_wait_s took ahead of the order
        if order != "fcfs" or self.max_wait_s is not None:
            self.waiting = WaitingQueue(self)

    @classmethod
    def from_config(cls, conf: VllmConfig, capacity_tokens, max_seq_len, predictor=None, feedback="mispredicted"):
        pool = block_pool(capacity_tokens, conf.block_size)
        return cls(pool, max_seq_len, max_num_batched_tokens=conf.max_num_batched_tokens, watermark=conf.watermark,
                   prefix_caching=conf.prefix_caching, max_batch_size=conf.max_batch_size,
                   preemption_mode=conf.preemption_mode, order=conf.order, victim=conf.victim,
                   max_wait_s=conf.max_wait_s, predictor=predictor, allocate=conf.allocate)

    def counters(self) -> dict:
        shared = 0 if self.cache is None else self.cache.found_shared * self.bs
        return {**super().counters(), "cached_tokens": self.cached_tokens, "shared_cached_tokens": shared,
                "prefill_preemptions": self.prefill_preemptions}

    limits_source = ""  # set when policy's limits were `auto`: which of vLLM's defaults they are

    def summary_fields(self) -> dict:
        out = {"aged_admissions": self.aged_admissions} if self.max_wait_s is not None else {}
        if self.by_chunk:
            out["prefill_preemptions"] = self.prefill_preemptions
        rp = None if self.predictor is None else self.predictor.reprediction
        if rp is not None:
            out["repredict"] = rp.name
        if self.limits_source:  # text, so that a cluster's summary keeps one replica's limits (numbers add up)
            out["vllm_limits"] = (f"max_num_seqs {self.max_batch}, max_num_batched_tokens {self.token_budget} "
                                  f"({self.limits_source})")
        return out

    def add(self, requests):
        if self.predictor is not None and requests:
            for r, b in zip(requests, self.predictor.predict(requests)):
                r.first_bucket = r.bucket = int(b)
        super().add(requests)

    def could_admit(self, r: Request) -> bool:
        if self.order == "fcfs":
            return super().could_admit(r)
        # ranked by prediction, an arrival may go ahead of the whole queue: only the batch and memory rule it out
        return (len(self.running) + len(self.prefilling) < self.max_batch
                and self.pool.free - self._growth(1) - self._free_needed(r) >= self.watermark)

    def schedule(self, now: float) -> SchedulerOutput:
        before = self.preemptions
        if isinstance(self.waiting, WaitingQueue):
            self.waiting.now = now  # the bound is read, and a preempted request re-queued, at this boundary
        out = super().schedule(now)
        self._readmit_next = ((self.cache is not None or self.order != "fcfs") and self.preemptions > before
                              and self.has_waiting())
        return out

    def horizon(self) -> int:
        """As paged's, but one iteration where a request may be admitted at the next boundary though none was
        at this one: after a preemption while requests wait, with the prefix cache (a victim that finds a
        shared block in use on readmission needs fewer blocks than it freed) or with an order other than
        fcfs if the head fits (a ranked queue may put a request ahead of the victim); and with `max_wait_s`
        while the request waiting longest would fit (the bound may make it the head at the next boundary).
        Otherwise the head stays inadmissible while free blocks only shrink, and no preempted victim fits
        again at the next boundary."""
        k = super().horizon()
        if k <= 1:
            return k
        if self._readmit_next and (self.cache is not None or self._may_enter(self.waiting[0])):
            return 1
        if self.max_wait_s is not None and self._may_enter(self.waiting.oldest()):
            return 1
        return k

    def _may_enter(self, r: Request | None) -> bool:
        """Could waiting request `r` be admitted at the next boundary if it were the head? A necessary
        condition: room in the batch and the budget, and its blocks within those free after this iteration's
        growth (the next boundary's own growth and the watermark only take more)."""
        if r is None or len(self.running) + len(self.prefilling) >= self.max_batch:
            return False
        if self.token_budget - len(self.running) <= 0:
            return False
        return self._free_needed(r) <= self.pool.free - self._growth(1)

    # ---- predicted lengths --------------------------------------------------------------------
    def estimate(self, r: Request, generated: int) -> tuple[int, int]:
        """(bucket, predicted output length) of `r` once it has `generated` tokens: its bucket's upper bound;
        a bound already reached is refreshed to the bucket holding generated + 1, and past the last bucket
        the length is max_seq_len. With `predictor.repredict`, from its first checkpoint on the length is
        generated + the re-predicted remaining length instead."""
        b = r.bucket
        length = self._upper[b]
        if generated >= length:
            while b + 1 < len(self._upper) and self._upper[b] <= generated:
                b += 1
            length = self._upper[b] if self._upper[b] > generated else self.max_seq_len
        rp = self.predictor.reprediction  # predictor.repredict's model, or None
        if rp is not None:
            left = rp.remaining(r, generated)
            if left is not None:  # re-predicted from what the request has generated
                return b, generated + left
        return b, length

    def remaining(self, r: Request, generated: int) -> int:
        """Predicted output tokens `r` has left once it has `generated` (at least 1)."""
        return max(self.estimate(r, generated)[1] - generated, 1)

    def _victim(self) -> Request:
        """The newest running request, or by `victim=longest_remaining` the one with the largest predicted
        remaining work (the newest among equals). With blocks allocated chunk by chunk, a request part-way
        through its prefill is in vLLM's running list too: the newest of all is taken (often that prefill
        itself), and a ranked victim is taken among the decoding requests while any decodes."""
        if self.victim == "newest" or not self.running:
            best = self.running[next(reversed(self.running))] if self.running else None
            if self.prefilling and self.by_chunk:
                last = self.prefilling[next(reversed(self.prefilling))]
                if best is None or self.seq(last) > self.seq(best):
                    best = last
            return best
        best, most = None, -1
        for r in self.running.values():
            left = self.remaining(r, self.generated(r))
            if left >= most:
                best, most = r, left
        return best

    # ---- blocks chunk by chunk, and the prefix cache's hooks ------------------------------------
    def _free_needed(self, r: Request) -> int:
        """Free blocks `r`'s whole context and next token need: admission requires them free even where only
        the first chunk's are taken (vLLM's full_sequence_must_fit)."""
        return self.kv.free_needed(r)

    def _chunk_blocks(self, r: Request, end: int) -> int:
        """Blocks `r` holds once its context up to token `end` is scheduled: those tokens, and the next
        token's slot once the whole context is (as at admission without chunks); with a prefix cache at
        least its hits and the shared region it registers at admission."""
        return self.kv.held_until(r, end)

    def _step_need(self) -> int:
        need = self._growth(1)
        if not (self.by_chunk and self.prefilling):
            return need
        for r, done, chunk in self._continuing_chunks(self.token_budget - len(self.running)):  # as `_decode_batch`
            need += max(self._chunk_blocks(r, done + chunk) - r.progress.blocks, 0)
        return need

    def _take_blocks(self, r: Request, budget: float = math.inf) -> int:
        if not self.by_chunk:
            tokens = self.kv.take(r, self._blocks(r.context + 1))
        else:
            hits = self.kv.hits(r)
            prefix = len(hits) * self.bs
            blocks = max(self._chunk_blocks(r, prefix + min(r.context - prefix, budget)), len(hits))
            if r.progress is None:
                r.progress = Progress(r)
            r.progress.blocks = blocks
            tokens = self.kv.take(r, blocks, hits)
        self.cached_tokens += tokens
        return tokens

    def _add_prefill(self, batch: SchedulerOutput, r: Request, prefix: int, chunk: int) -> None:
        if self.by_chunk and r.id in self.prefilling:  # a continuing chunk takes its blocks (`_step_need` made room)
            p = r.progress
            more = self._chunk_blocks(r, prefix + chunk) - p.blocks
            if more > 0:
                self.kv.grow(r, more)
                p.blocks += more
        super()._add_prefill(batch, r, prefix, chunk)
        self.kv.computed(r, prefix + chunk)


class WaitingQueue:
    """vllm's waiting requests under `policy.order` and `policy.max_wait_s`, with the deque verbs
    `PagedScheduler` uses: `[0]` (the head), `popleft` (admit it), `appendleft` (re-queue a preempted
    request), `extend` (arrivals).

    fcfs keeps the deque's order (arrivals at the back, a preempted request at the front, the latest first);
    sjf and srpt rank every request, preempted ones included, by (predicted length or predicted remaining
    length, arrival). With `max_wait_s`, the request that has waited longest (since its arrival, or since its
    preemption) is the head once it has waited that long, at the scheduler's clock `now`."""

    def __init__(self, sched: VllmScheduler):
        self.sched = sched
        self.now = 0.0  # the boundary being scheduled (set by `VllmScheduler.schedule`)
        self._rank: dict[int, tuple] = {}  # request id -> its place in the order
        self._q = SortedKeyList(key=lambda r: self._rank[r.id])
        self._pushes = itertools.count()
        self._age: dict[int, int] = {}  # request id -> its entry in `_by_age` (max_wait_s only)
        self._by_age: list = []  # heap of (queued at, push, request); entries of admitted requests are skipped

    def __len__(self) -> int:
        return len(self._q)

    def __getitem__(self, i: int) -> Request:
        return self.head() if i == 0 else self._q[i]

    def __iter__(self):
        """The waiting requests in the order's rank (the bound's head aside)."""
        return iter(self._q)

    def extend(self, requests) -> None:
        for r in requests:
            self._put(r, front=False, at=r.arrival)

    def appendleft(self, r: Request) -> None:
        self._put(r, front=True, at=self.now)

    def popleft(self) -> Request:
        r = self.head()
        if r is self._q[0]:
            self._q.pop(0)
        else:  # the bound took it ahead of the order
            self._q.remove(r)
            self.sched.aged_admissions += 1
        del self._rank[r.id]
        self._age.pop(r.id, None)
        return r

    def head(self) -> Request:
        """The request admitted next if it fits: the oldest once it has waited max_wait_s, else the first in
        the order."""
        wait = self.sched.max_wait_s
        if wait is not None:
            old = self._oldest_entry()
            if old is not None and self.now - old[0] >= wait:
                return old[2]
        return self._q[0]

    def oldest(self) -> Request | None:
        """The request that has waited longest (max_wait_s only), or None."""
        old = self._oldest_entry()
        return None if old is None else old[2]

    def _oldest_entry(self):
        h = self._by_age
        while h and self._age.get(h[0][2].id) != h[0][1]:
            heapq.heappop(h)
        return h[0] if h else None

    def _put(self, r: Request, front: bool, at: float) -> None:
        push = next(self._pushes)
        sched = self.sched
        if sched.order == "fcfs":
            self._rank[r.id] = (0, -push) if front else (1, push)
        else:
            r.bucket, length = sched.estimate(r, r.generated)
            left = max(length - r.generated, 1) if sched.order == "srpt" else length
            self._rank[r.id] = (left, r.id)
        self._q.add(r)
        if sched.max_wait_s is not None:
            self._age[r.id] = push
            heapq.heappush(self._by_age, (at, push, r))
