"""ORCA: iteration-level batching, but every request reserves the most it could ever hold (no length knowledge).

That is its prompt plus `max_seq_len` output tokens, or the model's whole context if that is less: no real
system lets a sequence run past the context window, so no reservation does either.
Admission is first-come first-served and stops at the first request that does not fit (head-of-line).
"""
from __future__ import annotations


from s3sim.core.errors import ConfigError
from s3sim.core.kv_pool import KVPool
from s3sim.core.output import SchedulerOutput
from s3sim.core.policies.base import FcfsScheduler, PolicyConfig
from s3sim.core.request import Request


class OrcaScheduler(FcfsScheduler):
    name = "orca"
    model_limits = ("context",)  # each reservation at most the context window

    @classmethod
    def from_config(cls, conf: PolicyConfig, capacity_tokens: int, max_seq_len: int, predictor=None,
                    feedback: str = "mispredicted", context: int | None = None) -> "OrcaScheduler":
        """As every policy's, with `context`, the served model's context window, bounding each reservation."""
        return cls(KVPool(capacity_tokens), max_seq_len, max_batch_size=conf.max_batch_size,
                   preemption_mode=conf.preemption_mode, max_num_batched_tokens=conf.max_num_batched_tokens,
                   context=context)

    def __init__(self, pool: KVPool, max_seq_len: int, *args, context: int | None = None, **kw):
        """`context`: the model's context window in tokens; None (a policy built by hand, without a model):
        reservations are not capped by it."""
        super().__init__(pool, max_seq_len, *args, **kw)
        self.context = None if context is None else int(context)

    def add(self, requests):
        for r in requests:
            if self.context is not None and r.prompt_len >= self.context:
                raise ConfigError(f"request {r.id}: a prompt of {r.prompt_len} tokens leaves no room for an output "
                                  f"token in the model's context of {self.context} tokens")
        super().add(requests)
        if self.context is not None:
            for r in requests:
                r.reserved_out = self.reserved_out(r.prompt_len)

    def reserved_out(self, prompt: int) -> int:
        """Output tokens reserved behind a prompt of `prompt` tokens: max_seq_len, or what the context leaves."""
        if self.context is None:
            return self.max_seq_len
        return min(self.max_seq_len, self.context - prompt)

    def _need(self, r: Request) -> int:
        return self.kv.units(r.prompt_len, self.reserved_out(r.prompt_len))

    def could_admit(self, r: Request) -> bool:
        return not self.waiting and len(self.running) < self.max_batch and self.kv.fits(self._need(r))

    def schedule(self, now: float) -> SchedulerOutput:
        batch = self._decode_batch()
        room = self._room(batch)
        while self.waiting and room > 0 and batch.budget > 0:
            r = self.waiting[0]
            need = self._need(r)
            if not self.kv.fits(need):
                break
            self.waiting.popleft()
            self.kv.take(r, need)
            self._admit(r, batch, now)
            room -= 1
        return batch


class FasterTransformerScheduler(OrcaScheduler):
    """Request-level static batching (FasterTransformer): a batch is formed only when the previous one is
    done, and it runs until its longest member finishes. Members that finish early keep their slot and memory
    (the batch dimension stays, computing padding) and are returned with the batch, so their e2e latency
    ends when the batch does. So every row must hold its prompt plus as many tokens as the batch may run:
    the most any member may generate, max_seq_len, or less where the context caps every member's output
    (a batch of one reserves what an orca request does)."""

    name = "ft"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        if self.token_budget is not None:
            raise ConfigError("policy.max_num_batched_tokens does not apply to ft: a static batch prefills whole")
        self.done: list[Request] = []  # members that produced their last token, awaiting the batch's end
        self.padding_tokens = 0

    def could_admit(self, r: Request) -> bool:
        return not self.running and super().could_admit(r)

    def schedule(self, now: float) -> SchedulerOutput:
        batch = self._decode_batch()
        if self.running:
            batch.padding = list(self.done)
            batch.itl_tokens = batch.decode_n - len(self.done)
            return batch
        members, out = self._static_batch()
        for r in members:
            self.waiting.popleft()
            self.kv.take(r, self.kv.units(r.prompt_len, out))
            self._admit(r, batch, now)
        return batch

    def _static_batch(self) -> tuple[list[Request], int]:
        """The longest first-come-first-served prefix of the queue (at most max_batch_size) whose rows fit, each
        holding its prompt plus the output tokens the batch may run (returned with it)."""
        members, units, out = [], 0, 0
        for r in self.waiting:
            if len(members) >= self.max_batch:
                break
            o = max(out, self.reserved_out(r.prompt_len))
            more = self.kv.units(r.prompt_len, o)
            if o > out:  # every member's row grows to the new length
                more += sum(self.kv.units(m.prompt_len, o) for m in members) - units
            if not self.kv.fits(units + more):
                break
            members.append(r)
            units, out = units + more, o
        return members, out

    def counters(self) -> dict:
        return {**super().counters(), "padding_tokens": self.padding_tokens}

    def _event_target(self, r: Request) -> int:
        return r.output_len

    def _on_steps(self, k: int) -> None:
        self.padding_tokens += k * len(self.done)

    def _finish(self, r: Request, now: float) -> None:
        """A member produced its last token: it stays in the batch until the last member does."""
        r.last_token = now
        self.done.append(r)
        if len(self.done) == len(self.running):
            for m in self.done:
                self._leave(m)
                m.generated = m.output_len  # iterations past a member's end computed padding
                self._complete(m, now, last_token=m.last_token)
            self.done = []
