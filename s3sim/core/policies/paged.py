"""vLLM-style paged allocation: KV in fixed-size blocks allocated on demand, no length prediction.

Admission is first-come first-served while the free blocks, after this iteration's growth and the new
request's prompt, stay above a watermark (which avoids admitting into immediate thrashing). When the
running requests need more blocks than are free, the newest is preempted (recompute by default, or
swap) and goes back to the front of the queue.

`policy.iterations` says what one iteration runs:

* ``prompt_only`` (vLLM as it was in 2023, the S3 paper's baseline, and `policy=paged`'s default): an
  iteration runs either prompts or decodes, never both. When the waiting requests at the head of the queue
  can be admitted (by the watermark rule, at most max_batch_size sequences in all, and at most
  `policy.prompt_tokens` prompt tokens together: vLLM's max_num_batched_tokens then, max(the model's
  context, 2,560) by default), the iteration prefills only them and every running request's decode waits;
  otherwise it is a decode iteration (preempting the newest when blocks run out, then swapping requests back
  in while they fit, as vLLM did no prompt while any request was swapped out). A request's paused decode
  lengthens its inter-token gap: that gap is one ITL sample of its own (`stall_gaps`), not the decode
  iteration's duration.
* ``mixed``: the running requests decode in every iteration, and the prompts admitted join them in it.

Block growth is accounted in aggregate, in closed form, by `s3sim.core.kv_blocks.BlockGrowth` (`paging`), so
that k decode iterations cost O(block_size), not O(batch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.core.kv_blocks import BlockGrowth, Blocks
from s3sim.core.kv_pool import block_pool
from s3sim.core.output import SchedulerOutput, StepOutcome
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


ITERATIONS = ("prompt_only", "mixed")  # policy.iterations: what one iteration runs (see the module's docstring)
AUTO = "auto"  # policy.prompt_tokens: vLLM's 2023 default, max(the model's context, PROMPT_TOKENS_FLOOR)
PROMPT_TOKENS_FLOOR = 2560  # vLLM's 2023 max_num_batched_tokens when the model's context is shorter


def check_iterations(iterations, prompt_tokens, max_num_batched_tokens) -> None:
    """`policy.iterations` and `policy.prompt_tokens`, and which token limit goes with which."""
    if iterations not in ITERATIONS:
        raise ConfigError(f"policy.iterations {iterations!r} is unknown; valid: {', '.join(ITERATIONS)}")
    if prompt_tokens != AUTO and (isinstance(prompt_tokens, bool) or not isinstance(prompt_tokens, int)
                                  or prompt_tokens <= 0):
        raise ConfigError(f"policy.prompt_tokens must be auto or a positive integer, got {prompt_tokens!r}")
    if iterations == "mixed" and prompt_tokens != AUTO:
        raise ConfigError(f"policy.prompt_tokens={prompt_tokens} applies to policy.iterations=prompt_only only; valid "
                          f"with iterations=mixed: auto (its iterations' tokens are policy.max_num_batched_tokens')")
    if iterations == "prompt_only" and max_num_batched_tokens is not None:
        raise ConfigError(f"policy.max_num_batched_tokens={max_num_batched_tokens} (chunked prefill) applies to "
                          f"policy.iterations=mixed only; valid with iterations=prompt_only: null (its prompt "
                          f"iterations' tokens are policy.prompt_tokens')")


def prompt_token_limit(prompt_tokens, context: int | None) -> int:
    """The tokens one prompt iteration may prefill: `prompt_tokens`, or by `auto` vLLM's 2023 default
    max(context, 2,560). vLLM refused a limit below the model's context (a prompt that long could never run),
    and so does this."""
    if prompt_tokens == AUTO:
        return max(context or 0, PROMPT_TOKENS_FLOOR)
    if context is not None and prompt_tokens < context:
        raise ConfigError(f"policy.prompt_tokens={prompt_tokens} is below the model's context of {context} tokens, "
                          f"so a long prompt could never be prefilled (vLLM refused it too); valid: auto or an "
                          f"integer of at least {context}")
    return int(prompt_tokens)


@dataclass
class Paged2023Config(PagedConfig):
    """`policy=paged` and `paged_spf`: paging as vLLM ran it in 2023 (the S3 paper's time)."""
    max_batch_size: Optional[int] = 256  # vLLM's max_num_seqs (256 by default)
    iterations: str = "prompt_only"  # prompt_only (vLLM 2023: prompts and decodes in separate iterations) | mixed
    prompt_tokens: Union[int, str] = AUTO  # tokens one prompt iteration prefills: auto = max(model context, 2560)

    def __post_init__(self):
        super().__post_init__()
        check_iterations(self.iterations, self.prompt_tokens, self.max_num_batched_tokens)


class PagedScheduler(FcfsScheduler):
    name = "paged"
    Config = Paged2023Config
    model_limits = ("context",)  # prompt_tokens=auto is read from it

    @classmethod
    def from_config(cls, conf: Paged2023Config, capacity_tokens, max_seq_len, predictor=None,
                    feedback="mispredicted", context: int | None = None):
        """`context`: the served model's context window (what `prompt_tokens=auto` is read from)."""
        pool = block_pool(capacity_tokens, conf.block_size)
        extra = {"predictor": predictor} if cls.uses_predictor else {}
        prompt_only = conf.iterations == "prompt_only"
        return cls(pool, max_seq_len, watermark=conf.watermark, max_batch_size=conf.max_batch_size,
                   preemption_mode=conf.preemption_mode, max_num_batched_tokens=conf.max_num_batched_tokens,
                   iterations=conf.iterations,
                   prompt_tokens=prompt_token_limit(conf.prompt_tokens, context) if prompt_only else None, **extra)

    def __init__(self, pool, max_seq_len, watermark: float = 0.01, iterations: str = "mixed",
                 prompt_tokens: int | None = None, **kw):
        """`iterations`: see the module's docstring (built by hand, mixed, as `vllm` runs); `prompt_tokens`:
        the tokens a prompt-only iteration may prefill (None: no limit; a prompt longer than the limit is
        prefilled alone)."""
        super().__init__(pool, max_seq_len, **kw)
        check_iterations(iterations, AUTO if prompt_tokens is None else prompt_tokens,
                         None if iterations == "mixed" else self.token_budget)
        self.bs = pool.unit_tokens
        self.watermark = int(math.ceil(watermark * pool.capacity))
        self.paging = BlockGrowth(self.bs)  # the running requests' block growth
        self.kv = Blocks(pool, self.paging)  # owns the requests' blocks
        self.prompt_only = iterations == "prompt_only"
        self.prompt_tokens = math.inf if prompt_tokens is None else int(prompt_tokens)
        # prompt-only iterations: `self.iter` counts decode iterations only (a running request's progress is
        # counted in them), and each running request's last token is kept to time the gap a pause opens
        self._prompt_iteration = False  # the batch being run is a prompt-only one
        self._decoded_at = 0.0  # end of the last decode iteration: the last token of those running since
        self._joined_at: dict[int, float] = {}  # running requests admitted since then: when each got its token
        self._paused: list[float] = []  # last tokens of the requests whose decode waited before this decode
        self.pause_gaps = 0  # inter-token gaps lengthened by prompt-only iterations (ITL samples in stall_gaps)

    def _event_target(self, r: Request) -> int:
        return r.output_len

    def _blocks(self, tokens: int) -> int:
        return self.paging.blocks(tokens)

    def _growth(self, steps: int) -> int:
        """Blocks the running requests need over the next `steps` decode steps."""
        return self.paging.growth(steps, len(self.running), self.iter)

    def horizon(self) -> int:
        k = super().horizon()
        n = len(self.running)
        if n == 0 or k == 0:
            return k
        if self._paused:  # the first decode after a pause: its gaps are timed at its own end
            return 1
        return min(k, self.paging.steps_within(self.pool.free, n, self.iter))

    def kv_reserved_profile(self, k: int) -> np.ndarray:
        """Tokens of allocated blocks during each of the next k decode steps (growth is allocated first; none
        in a prompt-only iteration, whose running requests do not decode)."""
        if self._prompt_iteration:
            return np.full(k, self.pool.used * self.bs, dtype=np.int64)
        if k == 1:  # the same count, without the arrays of `profile`
            return np.array([(self.pool.used + self._growth(1)) * self.bs], dtype=np.int64)
        return (self.pool.used + self.paging.profile(k, len(self.running), self.iter)) * self.bs

    # ---- engine verbs -----------------------------------------------------------------------
    def could_admit(self, r: Request) -> bool:
        return (not self.waiting and len(self.running) + len(self.prefilling) < self.max_batch
                and self.pool.free - self._growth(1) - self._free_needed(r) >= self.watermark)

    def schedule(self, now: float) -> SchedulerOutput:
        if self.prompt_only:
            return self._prompts(now) or self._decodes(now)
        preempted = self._make_room(now)
        batch = self._decode_batch()
        if preempted:
            return batch
        room = self._room(batch)
        growth = self._growth(1)  # allocated when the step is applied (`_on_steps`)
        free = self.pool.free - growth
        while self.waiting and room > 0 and batch.budget > 0:
            r = self.waiting[0]
            blocks = self._free_needed(r)
            if free - blocks < self.watermark and (self.running or batch.prefill or batch.resumed):
                break
            if blocks > free:
                break
            self.waiting.popleft()
            prefix = self._take_blocks(r, batch.budget)
            free = self.pool.free - growth
            self._admit(r, batch, now, prefix=prefix)
            room -= 1
        return batch

    def _prompts(self, now: float) -> SchedulerOutput | None:
        """A prompt-only iteration of the waiting requests that can be admitted (first come first served), or
        None if the head cannot be. No block is grown for the running requests: their decodes wait."""
        batch, tokens, room = None, 0, self.max_batch - len(self.running)
        while self.waiting and room > 0:
            r = self.waiting[0]
            blocks = self._free_needed(r)
            if r.swapped or blocks > self.pool.free:  # a swapped-out request is swapped in by a decode iteration
                break
            if self.pool.free - blocks < self.watermark and (self.running or batch is not None):
                break
            if batch is not None and tokens + r.context > self.prompt_tokens:
                break
            if batch is None:
                batch = SchedulerOutput(preempted=self._preempted, transfer_tokens=self.pending_transfer)
                self._preempted, self.pending_transfer = [], 0
            self.waiting.popleft()
            self._take_blocks(r)
            self._admit(r, batch, now)
            tokens += r.context
            room -= 1
        self._prompt_iteration = batch is not None
        return batch

    def _decodes(self, now: float) -> SchedulerOutput:
        """A decode iteration: the newest running requests are preempted while the others need more blocks than
        are free; if none was, swapped-out requests at the head of the queue are swapped back in while they
        fit. Running requests whose decode waited give their token a gap of its own."""
        preempted = self._make_room(now)
        batch = self._decode_batch()
        if self._joined_at or self._decoded_at < now:
            self._paused = [t for t in map(self._last_token, self.running.values()) if t < now]
            batch.itl_tokens -= len(self._paused)
        if preempted:
            return batch
        room, free = self._room(batch), self.pool.free - self._growth(1)
        while self.waiting and room > 0 and self.waiting[0].swapped:
            r = self.waiting[0]
            blocks = self._free_needed(r)
            if blocks > free or free - blocks < self.watermark and (self.running or batch.resumed):
                break
            self.waiting.popleft()
            self._take_blocks(r)
            free = self.pool.free - self._growth(1)
            self._admit(r, batch, now)
            room -= 1
        return batch

    def _last_token(self, r: Request) -> float:
        """When running request `r` produced its last token (prompt-only iterations)."""
        return self._joined_at.get(r.id, self._decoded_at)

    def advance(self, batch: SchedulerOutput, k: int, now: float) -> StepOutcome:
        if not self.prompt_only:
            return super().advance(batch, k, now)
        if self._prompt_iteration:  # the running requests did not decode: their progress stands still
            self.iter -= k
            outcome = super().advance(batch, k, now)
            self._prompt_iteration = False
            for r in batch.prefill:
                if r.id in self.running:
                    self._joined_at[r.id] = now
            return outcome
        outcome = super().advance(batch, k, now)
        self.stall_gaps.extend(now - t for t in self._paused)
        self.pause_gaps += len(self._paused)
        self._decoded_at, self._paused = now, []
        self._joined_at.clear()
        return outcome

    def _preempt(self, r: Request, now: float, cause: str = "memory") -> None:
        last = self._last_token(r) if self.prompt_only and r.id in self.running else None
        super()._preempt(r, now, cause)
        if last is not None:  # its gap runs from its last token, which a pause may have left before `now`
            r.last_token = last
            self._joined_at.pop(r.id, None)

    def _make_room(self, now: float) -> bool:
        """Preempt victims (the newest first), each back to the front of the queue, while this iteration needs
        more blocks than are free; whether any was."""
        preempted = False
        while self._step_need() > self.pool.free and (self.running or self.prefilling):
            victim = self._victim()
            self._preempt(victim, now)
            self.waiting.appendleft(victim)
            preempted = True
        return preempted

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

    def _take_blocks(self, r: Request, budget: float = math.inf) -> int:
        """Give `r` the blocks of its context and next token; returns the tokens of its context they hold
        already (found in a prefix cache: none without one). `budget`: the tokens its iteration can still
        compute (what a policy that allocates chunk by chunk takes blocks for)."""
        return self.kv.take(r, self._blocks(r.context + 1))

    # ---- hooks ------------------------------------------------------------------------------
    def _on_steps(self, k: int) -> None:
        if self.running and not self._prompt_iteration:
            self.kv.grow_running(self._growth(k))

    def _join(self, r: Request) -> None:
        # a joining request's blocks already cover its context (allocated at admission)
        super()._join(r)
        self.paging.join(r.context, self.iter)

    def _leave(self, r: Request) -> None:
        self.paging.leave(r.prompt_len + self.generated(r), self.iter)
        super()._leave(r)
