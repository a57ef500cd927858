"""ORCA: iteration-level batching, but every request reserves prompt + max_seq_len (no length knowledge).

Admission is first-come first-served and stops at the first request that does not fit (head-of-line).
"""
from __future__ import annotations


from s3sim.core.errors import ConfigError
from s3sim.core.output import SchedulerOutput
from s3sim.core.policies.base import FcfsScheduler
from s3sim.core.request import Request


class OrcaScheduler(FcfsScheduler):
    name = "orca"

    def _need(self, r: Request) -> int:
        return self.pool.units_for(r.prompt_len + self.max_seq_len)

    def could_admit(self, r: Request) -> bool:
        return not self.waiting and len(self.running) < self.max_batch and self.pool.can_reserve(self._need(r))

    def schedule(self, now: float) -> SchedulerOutput:
        batch = self._decode_batch()
        room = self._room()
        while self.waiting and room > 0 and self._budget_left > 0:
            r = self.waiting[0]
            need = self._need(r)
            if not self.pool.can_reserve(need):
                break
            self.waiting.popleft()
            self.pool.reserve(r.id, need)
            self._admit(r, batch, now)
            room -= 1
        return batch


class FasterTransformerScheduler(OrcaScheduler):
    """Request-level static batching (FasterTransformer): a batch is formed only when the previous one is
    done, every member reserves prompt + max_seq_len, and the batch runs until its longest member
    finishes. Members that finish early keep their slot and memory (the batch dimension stays, computing
    padding) and are returned with the batch, so their e2e latency ends when the batch does."""

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
        if self.running:
            batch = self._decode_batch()
            batch.padding = list(self.done)
            batch.itl_tokens = batch.decode_n - len(self.done)
            return batch
        return super().schedule(now)

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
