"""The policy interface both engines drive, and the bookkeeping every policy shares.

An engine's loop reads aloud: `out = schedule(now)`, run the batch it names, `advance(out, k, end_time)`.
`k > 1` applies k identical decode-only iterations at once; `horizon()` says how many can be applied
before anything could change (a request finishing, outgrowing its reservation or running out of
blocks), so jumping is exact. Progress of running requests is lazy (`Progress`, kept here, not on the
request, which only carries it as an opaque handle): a request that joined at decode iteration `iter0` with `gen0` tokens has `gen0 + (iter - iter0)`
tokens now; an event heap orders the iterations at which each running request needs attention.

A policy is an admission order over one KV manager (`kv`: reservations by default, see
`s3sim.core.kv_reservations`; paged blocks in `s3sim.core.kv_blocks`), which owns the requests' memory in the
pool; the token budget of chunked prefill is a local value of each iteration's batch (`SchedulerOutput.budget`).
"""
from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from s3sim.core.errors import ConfigError, InvariantViolation
from s3sim.core.kv_pool import KVPool
from s3sim.core.kv_reservations import Reservations
from s3sim.core.output import SchedulerOutput, StepOutcome
from s3sim.core.request import Phase, Request


PREEMPTION_MODES = ("recompute", "swap")
CAUSES = ("overflow", "memory")  # why a request was preempted (see Scheduler.by_cause)


@dataclass(eq=False, slots=True)
class Progress:
    """What the scheduler keeps of a request it admitted: `gen0` tokens at decode iteration `iter0` (valid
    while it runs), `epoch` (bumped to invalidate its pending events), `seq` (admission order) and how much
    of its context a chunked prefill has computed."""
    request: Request
    iter0: int = 0
    gen0: int = 0
    epoch: int = 0
    seq: int = 0
    prefilled: int = 0  # context tokens already in KV while a chunked prefill is under way
    blocks: int = 0  # KV blocks held while a prefill allocated chunk by chunk is under way (vllm's allocate=chunk)
    lost: int = 0  # context tokens a preemption part-way through the prefill dropped (computed again on readmission)


@dataclass
class PolicyConfig:
    """The fields of `conf/policy/<name>.yaml` every policy takes; a policy with more subclasses it. Types are
    checked when the config is read (`s3sim.config.structured`), values here."""
    name: str = ""
    max_batch_size: Optional[int] = None  # None: memory is the only limit
    preemption_mode: str = "recompute"  # what a preempted request's KV becomes: dropped, or kept in host memory
    max_num_batched_tokens: Optional[int] = None  # a token budget per iteration, decodes first, then prefill
    # chunks (chunked prefill, as vLLM's V1 engine); None: every admitted prompt is prefilled whole

    def __post_init__(self):
        if self.max_batch_size is not None and self.max_batch_size <= 0:
            raise ConfigError(f"policy.max_batch_size must be a positive integer or null, got {self.max_batch_size!r}")
        if self.max_num_batched_tokens is not None:
            if self.max_num_batched_tokens <= 0:
                raise ConfigError(f"policy.max_num_batched_tokens must be a positive integer or null, got "
                                  f"{self.max_num_batched_tokens!r}")
            if self.max_batch_size is None or self.max_batch_size >= self.max_num_batched_tokens:
                raise ConfigError(f"policy.max_batch_size must be set and below policy.max_num_batched_tokens="
                                  f"{self.max_num_batched_tokens} (decodes come out of the same budget), got "
                                  f"{self.max_batch_size!r}")
        if self.preemption_mode not in PREEMPTION_MODES:
            raise ConfigError(f"policy.preemption_mode '{self.preemption_mode}' is unknown; valid: "
                              f"{', '.join(PREEMPTION_MODES)}")


class Scheduler:
    name = "base"
    Config = PolicyConfig  # its structured config
    uses_predictor = False  # built with the configured predictor
    fixed_predictor: str | None = None  # ... or always with this one (the oracle policy)
    predict_s: float = 0.0  # seconds the configured predictor takes per request, charged before admission
    # what the executor serves it with: "paged" (its model runner over a paged KV cache) or "generate"
    # (transformers' own `generate`, whose cache grows by copying)
    executor_backend = "paged"
    copies_kv = False  # its batches copy their KV cache each step (hf): the latency model must price the copy
    # what of the served model its `from_config` takes: "context" (its context window), "layers" (its layer count)
    model_limits: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, conf: PolicyConfig, capacity_tokens: int, max_seq_len: int, predictor=None,
                    feedback: str = "mispredicted") -> "Scheduler":
        """The policy `conf` describes over a KV pool of `capacity_tokens` (`predictor` and `feedback` for
        policies that predict)."""
        return cls(KVPool(capacity_tokens), max_seq_len, max_batch_size=conf.max_batch_size,
                   preemption_mode=conf.preemption_mode, max_num_batched_tokens=conf.max_num_batched_tokens)

    def __init__(self, pool: KVPool, max_seq_len: int, max_batch_size: int | None = None,
                 preemption_mode: str = "recompute", max_num_batched_tokens: int | None = None):
        self.pool = pool
        self.kv = Reservations(pool)  # the KV manager that owns the requests' memory (a paged policy holds blocks)
        self.max_seq_len = int(max_seq_len)
        self.max_batch = int(max_batch_size) if max_batch_size else math.inf
        self.preemption_mode = preemption_mode
        self.running: dict[int, Request] = {}  # insertion order = admission order
        self.finished: list[Request] = []
        self.iter = 0
        self.now = 0.0
        self.preemptions = 0
        # preemptions and the tokens they cost, by cause: "overflow" (a request outgrew its reservation while
        # memory was free to grow it) or "memory" (no memory left for it or for the running requests)
        self.by_cause = {c: {"preemptions": 0, "recomputed_tokens": 0, "swapped_tokens": 0} for c in CAUSES}
        self.pending_transfer = 0  # swap-out tokens, paid by the next iteration
        self.prefill_context_tokens = 0  # context every admission placed in KV (computed or found cached)
        self.stall_gaps: list[float] = []  # inter-token gaps that span a preemption (or, paged in 2023, a pause)
        self.prefill_preemptions = 0  # of preemptions, those of a request part-way through its prefill (no gap)
        self._events: list = []
        self._pushes = itertools.count()
        self._admissions = itertools.count()
        self._ctx_base = 0
        self._ctx_iter = 0
        self._preempted: list[Request] = []  # taken off the GPU since the last output or outcome
        self.token_budget = None if max_num_batched_tokens is None else int(max_num_batched_tokens)
        if self.token_budget is not None and not self.max_batch < self.token_budget:
            raise ConfigError(f"max_batch_size={max_batch_size} must be set and below max_num_batched_tokens="
                              f"{self.token_budget}")
        self.prefilling: dict[int, Request] = {}  # admitted, prompt partly computed, oldest first (chunked prefill)

    # ---- verbs the engines call -------------------------------------------------------------
    def add(self, requests: list[Request]) -> None:
        raise NotImplementedError

    def schedule(self, now: float) -> SchedulerOutput:
        raise NotImplementedError

    def could_admit(self, request: Request) -> bool:
        """Could `request`, arriving now, be admitted at the next iteration boundary if nothing else
        changed? May answer True when unsure (that only shortens a multi-iteration jump)."""
        raise NotImplementedError

    def has_waiting(self) -> bool:
        raise NotImplementedError

    def is_idle(self) -> bool:
        """Nothing running, part-way through a prefill or waiting."""
        return not self.running and not self.prefilling and not self.has_waiting()

    @property
    def chunks_prefill(self) -> bool:
        """May split a prompt's prefill over several iterations (a token budget is set)."""
        return self.token_budget is not None

    def counters(self) -> dict:
        """The policy's own counts for a run's summary (preemptions; a supervisor's and a static batch's)."""
        return {"preemptions": self.preemptions, "mispredictions": 0, "under_predictions": 0,
                "grown_in_place": 0, "padding_tokens": 0, "prefill_context_tokens": self.prefill_context_tokens}

    def summary_fields(self) -> dict:
        """Columns only this policy has, for its run's summary (how a static batch was sized, say)."""
        return {}

    def cause_fields(self) -> dict:
        """Preemptions, recomputed and swapped tokens split by cause, for every policy's summary."""
        return {f"{k}_{c}": v for c, counts in self.by_cause.items() for k, v in counts.items()}

    def horizon(self) -> int:
        """Decode iterations that can run before the next event (>= 1 while anything runs)."""
        self._drop_stale()
        return self._events[0][0] - self.iter if self._events else 0

    def advance(self, batch: SchedulerOutput, k: int, now: float) -> StepOutcome:
        """Apply `k` iterations of `batch` that ended at `now` (k > 1 only for decode-only batches); returns
        the requests that finished and those preempted on the way."""
        if k > 1 and not batch.is_decode_only:
            raise InvariantViolation(f"t={now:.6f}s a batch with prefill or transfers was repeated {k} times")
        self.now = self.pool.now = now
        done0 = len(self.finished)
        self._on_steps(k)
        self.iter += k
        joining = batch.prefill
        if batch.partial:  # chunks that do not finish their prompt: no token yet
            self._on_chunks(batch)
            unfinished = {r.id for r in batch.partial}
            joining = [r for r in joining if r.id not in unfinished]
        # join in admission order (prefills and swap-ins interleaved), so `running` stays oldest to newest
        if batch.resumed:
            joining = sorted(joining + batch.resumed, key=self.seq)
        for r in joining:
            if r.generated > 0:  # resumed (swap-in or recomputation): the gap since its last token is one ITL sample
                self.stall_gaps.append(now - r.last_token)
            r.generated += 1
            if math.isnan(r.first_token):
                r.first_token = now
            self._join(r)
        self._fire_events(now)
        outcome = StepOutcome(self.finished[done0:], self._preempted)
        self._preempted = []
        return outcome

    def set_output_len(self, r: Request, n: int) -> None:
        """An engine that learns a length only as it generates (end of sequence, real model) re-aims `r` at
        `n` output tokens, before the `advance` of the iteration that produced the token. A running
        request's pending event is replaced; a joining one is aimed when it joins."""
        r.output_len = int(n)
        if r.id in self.running:
            r.progress.epoch += 1
            self._push_event(r)

    # ---- policy hooks -----------------------------------------------------------------------
    def _event_target(self, r: Request) -> int:
        """Tokens generated at which `r` next needs attention (finish, or the end of its reservation)."""
        return min(r.output_len, r.reserved_out)

    def _on_limit(self, r: Request, now: float) -> None:
        raise InvariantViolation(
            f"t={now:.6f}s request {r.id} used its whole reservation ({r.reserved_out} output tokens) "
            f"before finishing ({r.output_len}) under a policy with no supervisor")

    def _on_steps(self, k: int) -> None:
        """Called before `k` decode iterations are applied (paged growth hooks in here)."""

    def _cached_prompt(self, r: Request) -> int:
        """Prompt tokens a running request's KV holds (a left-padded static batch: its longest prompt)."""
        return r.prompt_len

    def _on_finish(self, r: Request) -> None:
        """Called after `r` finished and released its memory."""

    def _on_chunks(self, batch: SchedulerOutput) -> None:
        """Called before the requests of `batch` join when some of its prefills were partial chunks: record
        how far each got."""
        partial = {r.id for r in batch.partial}
        for r, prefix, chunk in zip(batch.prefill, batch.prefill_prefix, batch.prefill_lens):
            if r.id in partial:
                r.progress.prefilled = prefix + chunk

    # ---- shared mechanics -------------------------------------------------------------------
    def generated(self, r: Request) -> int:
        """Tokens a running request has generated by now (its progress is kept lazily)."""
        p = r.progress
        return p.gen0 + (self.iter - p.iter0)

    def seq(self, r: Request) -> int:
        """Admission order of a request admitted and not finished (the newest has the largest)."""
        return r.progress.seq

    def progress(self, r: Request) -> int:
        """Tokens any request has generated by now, running or not."""
        return self.generated(r) if r.id in self.running else r.generated

    def ctx_sum(self) -> int:
        return self._ctx_base + len(self.running) * (self.iter - self._ctx_iter)

    def max_context(self) -> int:
        """The longest context among the running requests (0 when none runs): what uneven decode contexts cost
        beyond their mean is priced from it (`latency=operators` with a skew measurement). A scan, asked only by
        a latency model that uses it."""
        return max((r.prompt_len + self.generated(r) for r in self.running.values()), default=0)

    def shared_kv_tokens(self) -> int:
        """Tokens counted in more than one request's context but held once (blocks shared by a prefix
        cache): what the sum of contexts overstates of the KV in use."""
        return self.kv.shared_blocks() * self.pool.unit_tokens

    def kv_reserved_tokens(self) -> int:
        return self.pool.used * self.pool.unit_tokens

    def kv_reserved_profile(self, k: int) -> np.ndarray:
        """Reserved KV tokens during each of the next k decode steps (constant unless memory grows)."""
        if k == 1:
            return np.array([self.kv_reserved_tokens()], dtype=np.int64)
        return np.full(k, self.kv_reserved_tokens(), dtype=np.int64)

    def _rebase(self) -> None:
        self._ctx_base = self.ctx_sum()
        self._ctx_iter = self.iter

    def _join(self, r: Request) -> None:
        if self.prefilling:
            self.prefilling.pop(r.id, None)  # its last chunk ran
        self._rebase()
        r.phase = Phase.RUNNING
        p = r.progress
        p.gen0, p.iter0 = r.generated, self.iter
        self.running[r.id] = r
        self._ctx_base += self._cached_prompt(r) + r.generated
        self._push_event(r)

    def _leave(self, r: Request) -> None:
        self._rebase()
        r.generated = self.generated(r)
        self._ctx_base -= self._cached_prompt(r) + r.generated
        del self.running[r.id]
        r.progress.epoch += 1

    def _push_event(self, r: Request) -> None:
        p = r.progress
        at = p.iter0 + self._event_target(r) - p.gen0
        heapq.heappush(self._events, (at, next(self._pushes), p.epoch, p))

    def _drop_stale(self) -> None:
        ev = self._events
        while ev and (ev[0][2] != ev[0][3].epoch or ev[0][3].request.phase is not Phase.RUNNING):
            heapq.heappop(ev)

    def _fire_events(self, now: float) -> None:
        ev = self._events
        while ev and ev[0][0] <= self.iter:
            at, _, epoch, p = heapq.heappop(ev)
            r = p.request
            if epoch != p.epoch or r.phase is not Phase.RUNNING:
                continue
            if at < self.iter:
                raise InvariantViolation(
                    f"t={now:.6f}s request {r.id} was advanced {self.iter - at} iterations past its event "
                    f"at {self.generated(r) - (self.iter - at)} tokens: an engine jumped too far")
            if self.generated(r) >= r.output_len:
                self._finish(r, now)
            else:
                self._on_limit(r, now)

    def _admit(self, r: Request, batch: SchedulerOutput, now: float, chunk: int | None = None,
               prefix: int = 0) -> None:
        """Put a waiting request (whose memory is already reserved) into this iteration's batch; `chunk`
        prefills only that many of its tokens (chunked prefill), from `prefix` tokens found cached."""
        p = r.progress
        if p is None:
            p = r.progress = Progress(r)
        p.seq = next(self._admissions)
        if math.isnan(r.admitted):
            r.admitted = now
        if r.swapped:
            r.swapped = False
            batch.budget -= 1  # it decodes
            batch.resumed.append(r)
            batch.transfer_tokens += r.context
            batch.decode_n += 1
            batch.decode_ctx += r.context
        else:
            tokens = r.context
            self.prefill_context_tokens += tokens
            again = tokens - prefix if r.generated else max(p.lost - prefix, 0)  # computed before a preemption
            p.lost = 0
            if again:
                r.recomputed_tokens += again
                self.by_cause[r.preempt_cause]["recomputed_tokens"] += again
            chunk = min(tokens - prefix if chunk is None else chunk, batch.budget)
            batch.budget -= chunk
            self._add_prefill(batch, r, prefix, chunk)
            if prefix + chunk < tokens:
                self.prefilling[r.id] = r

    def _add_prefill(self, batch: SchedulerOutput, r: Request, prefix: int, chunk: int) -> None:
        """`r` prefills tokens prefix..prefix+chunk of its context this iteration."""
        batch.prefill.append(r)
        batch.prefill_lens.append(chunk)
        batch.prefill_prefix.append(prefix)
        batch.prefill_tokens += chunk
        batch.prefill_sq += chunk * (chunk + 2 * prefix)
        if prefix + chunk < r.context:
            batch.partial.append(r)

    def _decode_batch(self) -> SchedulerOutput:
        """This iteration's output before admissions: every running request decodes; the preemptions made
        since the last output are reported (their swap-out is paid by this iteration)."""
        b = SchedulerOutput(decode=self.running.values(), preempted=self._preempted, decode_n=len(self.running),
                            decode_ctx=self.ctx_sum(), transfer_tokens=self.pending_transfer)
        b.itl_tokens = b.decode_n
        self.pending_transfer = 0
        self._preempted = []
        if self.token_budget is None:
            return b
        b.budget = self.token_budget - b.decode_n
        for r, done, chunk in self._continuing_chunks(b.budget):
            self._add_prefill(b, r, done, chunk)
            b.budget -= chunk
        return b

    def _continuing_chunks(self, budget: int):
        """(request, tokens already prefilled, chunk) of each part-way prefill that continues this iteration
        within `budget` tokens: they go first, oldest first, each taking what the budget leaves."""
        for r in self.prefilling.values():
            if budget <= 0:
                break
            done = r.progress.prefilled
            chunk = min(r.context - done, budget)
            yield r, done, chunk
            budget -= chunk

    def _room(self, batch: SchedulerOutput) -> int:
        """Requests that can still be admitted to `batch`: 0 once the batch or the token budget is full."""
        if batch.budget <= 0:
            return 0
        return self.max_batch - len(self.running) - len(self.prefilling)

    def _finish(self, r: Request, now: float) -> None:
        self._leave(r)
        self._complete(r, now, last_token=now)

    def _complete(self, r: Request, now: float, last_token: float) -> None:
        """Return a request to its client: checks exactly-once and token conservation, frees memory."""
        if r.phase is Phase.FINISHED:
            raise InvariantViolation(f"t={now:.6f}s request {r.id} finished twice")
        if r.generated != r.output_len:
            raise InvariantViolation(
                f"t={now:.6f}s request {r.id} finished with {r.generated} tokens, expected {r.output_len}")
        self._release(r)
        r.progress = None
        r.phase = Phase.FINISHED
        r.last_token, r.finished = last_token, now
        self.finished.append(r)
        self._on_finish(r)

    def _release(self, r: Request, preempted: bool = False) -> None:
        """Free `r`'s memory, as it finishes or (`preempted`) is taken off the GPU."""
        self.kv.release(r, preempted)

    def _preempt(self, r: Request, now: float, cause: str = "memory") -> None:
        """Take `r` off the GPU: free its memory; keep its KV in host memory (swap) or drop it (recompute).
        Tokens already generated stay generated: a recomputed request re-prefills them. `cause`: see
        `CAUSES`. A request part-way through its prefill (only where blocks are allocated chunk by chunk) has
        no token to stall and nothing to swap: its computed chunks are dropped."""
        if r.id not in self.running:
            del self.prefilling[r.id]
            self.kv.release_partial(r)  # only a manager that allocates blocks chunk by chunk has one
            r.progress.lost = max(r.progress.lost, r.progress.prefilled)
            r.progress.prefilled = r.progress.blocks = 0
            r.progress.epoch += 1
            self.prefill_preemptions += 1
        else:
            self._leave(r)
            self._release(r, preempted=True)
            r.last_token = now
        r.phase = Phase.WAITING
        r.preemptions += 1
        r.preempt_cause = cause
        self.preemptions += 1
        self.by_cause[cause]["preemptions"] += 1
        self._preempted.append(r)
        if self.preemption_mode == "swap":
            r.swapped = True
            r.swapped_tokens += r.context
            self.by_cause[cause]["swapped_tokens"] += r.context
            self.pending_transfer += r.context


class FcfsScheduler(Scheduler):
    """A first-come first-served queue for policies that know nothing of lengths (every request may
    need up to max_seq_len); preempted requests can be put back at its front."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.waiting: deque[Request] = deque()

    def add(self, requests):
        for r in requests:
            r.reserved_out = self.max_seq_len
        self.waiting.extend(requests)

    def has_waiting(self) -> bool:
        return bool(self.waiting)
