"""Hugging Face Transformers' `generate`: request-level static batches whose KV cache grows by copying.

A batch is formed only when the previous one has returned, first come first served, left-padded to its
longest prompt (every member's prefill computes that many tokens), and it runs until its longest member
finishes: members that finish early keep decoding padding, as `generate`'s finished rows do, and are
returned with the batch. Nothing is reserved: each decode step appends one token to every row, and
`DynamicCache` appends with `torch.cat`, which allocates a buffer one token longer and copies the old one
into it, one layer's keys or values at a time; so for a moment memory holds the grown cache and the old copy
of one of its 2 x layers tensors (the pool's `hold_briefly`), and the copy of the whole cache costs time
(the output's `copies_kv`: a latency model adds the bytes moved).

A batch must not run out of memory, so it is admitted only if its peak, the cache at its longest length
plus one layer's old keys or values, about the cache x (1 + 1/(2 x layers)), fits the KV capacity
(`s3sim.core.kv_reservations.peak_tokens`); `policy.sizing` says which length that is:

* ``max_len``: each member's prompt plus `max_seq_len` output tokens, or the model's context if that is
  less, what a user who knows no output length must assume so that no batch ever runs out of memory;
* ``actual``: the batch's actual longest output, the largest first-come-first-served batch that would not
  have run out of memory. It reads each request's length as the oracle does, so it is a best case for
  `generate`, which no real deployment reaches without knowing lengths.

The allocator's own margin (rounding, fragmentation) is not counted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.core.kv_pool import KVPool
from s3sim.core.kv_reservations import CopiedCache
from s3sim.core.output import SchedulerOutput
from s3sim.core.policies.base import PolicyConfig
from s3sim.core.policies.orca import FasterTransformerScheduler
from s3sim.core.request import Request

SIZINGS = ("max_len", "actual")


@dataclass
class HfConfig(PolicyConfig):
    sizing: str = "max_len"  # the length a batch's peak memory is checked at: prompt + max_seq_len, or actual

    def __post_init__(self):
        if self.max_num_batched_tokens is not None:
            raise ConfigError("policy.max_num_batched_tokens does not apply to hf: generate prefills a batch whole")
        if self.preemption_mode != "recompute":
            raise ConfigError("policy.preemption_mode does not apply to hf: generate never preempts; leave it "
                              "'recompute'")
        check_sizing(self.sizing)
        super().__post_init__()


def check_sizing(sizing: str) -> None:
    if sizing not in SIZINGS:
        raise ConfigError(f"policy.sizing '{sizing}' is unknown; valid: {', '.join(SIZINGS)}")


class HfScheduler(FasterTransformerScheduler):
    name = "hf"
    Config = HfConfig
    copies_kv = True  # its latency model must price a KV copy (checked when a run is built)
    executor_backend = "generate"
    model_limits = ("context", "layers")  # a row's growth, and one layer's copy

    @classmethod
    def from_config(cls, conf: HfConfig, capacity_tokens: int, max_seq_len: int, predictor=None,
                    feedback: str = "mispredicted", context: int | None = None,
                    layers: int | None = None) -> "HfScheduler":
        """`context` and `layers`: the served model's context window and layer count (what a row can grow to,
        and how much of the cache one copy holds twice)."""
        return cls(KVPool(capacity_tokens), max_seq_len, max_batch_size=conf.max_batch_size, sizing=conf.sizing,
                   context=context, layers=layers)

    def __init__(self, pool: KVPool, max_seq_len: int, max_batch_size: int | None = None, sizing: str = "max_len",
                 context: int | None = None, layers: int | None = None):
        """`layers`: the model's layer count; None (built by hand, without a model): the whole cache is taken
        to be copied at once, the most a copy could hold."""
        super().__init__(pool, max_seq_len, max_batch_size=max_batch_size, context=context)
        check_sizing(sizing)
        if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers <= 0):
            raise ConfigError(f"the model's layer count must be a positive integer, got {layers!r}")
        self.sizing = sizing
        self.layers = layers
        self.kv = CopiedCache(pool, layers)  # the batch's cache, grown by copying
        self.width = 0  # the running batch's padded prompt length
        self.batch_rows: list[int] = []  # size of every batch formed

    @property
    def copied_tokens(self) -> int:
        """KV tokens copied by growth, over the run."""
        return self.kv.copied_tokens

    # ---- sizing -----------------------------------------------------------------------------
    @property
    def batches(self) -> int:
        """Static batches formed so far."""
        return len(self.batch_rows)

    def longest(self, prompt: int, output_len: int) -> int:
        """Output tokens a batch must be sized for on account of a member with a prompt of `prompt` tokens that
        will generate `output_len`: those, or the most it could (max_seq_len, at most what the context leaves)."""
        return output_len if self.sizing == "actual" else self.reserved_out(prompt)

    def add(self, requests):
        for r in requests:
            self.check_fits(r.id, r.prompt_len, r.output_len)
        super().add(requests)

    def check_fits(self, rid: int, prompt: int, output: int) -> None:
        """A request whose batch of one would run out of memory is a configuration error (checked for every
        request when a run is built, and again as each arrives)."""
        longest = self.longest(prompt, output)
        need = self.kv.peak(1, prompt, longest)
        if need > self.kv.capacity:
            copied = "the whole cache" if self.layers is None else f"one of {self.layers} layers' keys or values"
            raise ConfigError(
                f"request {rid}: policy=hf with sizing={self.sizing} needs {need} KV tokens at its peak alone "
                f"(prompt {prompt}, {longest} output tokens, {copied} held twice), more than the capacity of "
                f"{self.kv.capacity}; lower max_seq_len or give the KV cache more memory")

    def _form(self) -> list[Request]:
        """The longest first-come-first-served prefix of the queue whose peak fits (at most max_batch_size)."""
        members, width, longest = [], 0, 0
        for r in self.waiting:
            if len(members) >= self.max_batch:
                break
            w, n = max(width, r.prompt_len), max(longest, self.longest(r.prompt_len, r.output_len))
            if self.kv.peak(len(members) + 1, w, n) > self.kv.capacity:
                break
            members.append(r)
            width, longest = w, n
        return members

    def could_admit(self, r: Request) -> bool:
        return not self.running and not self.waiting

    # ---- one iteration ----------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:
        if self.running:
            batch = self._decode_batch()
            batch.padding = list(self.done)
            batch.itl_tokens = batch.decode_n - len(self.done)
            batch.copies_kv = True
            return batch
        batch = self._decode_batch()
        members = self._form()
        if not members:
            return batch
        self.width = max(r.prompt_len for r in members)
        self.batch_rows.append(len(members))
        for r in members:
            self.waiting.popleft()
            self.padding_tokens += self.width - r.prompt_len
            self.kv.take_row(r, self.width)
            self._admit(r, batch, now, chunk=self.width)
        return batch

    def kv_reserved_profile(self, k: int) -> np.ndarray:
        """KV held during each of the next k steps: a decode step grows every row by one token."""
        return self.kv.profile(k, len(self.running))

    def _cached_prompt(self, r: Request) -> int:
        return self.width

    def _on_steps(self, k: int) -> None:
        """k decode steps: every row grows by one token a step, one layer's old keys or values held while they
        are copied (the last step's, the largest)."""
        super()._on_steps(k)
        if self.running:
            self.kv.grow_rows(len(self.running), k)

    def _finish(self, r: Request, now: float) -> None:
        """A member produced its last token: it decodes padding until the last member does; then every row's
        cache (padded prompt, one token per decode step and the last token produced) is attributed to it and
        freed."""
        r.last_token = now
        self.done.append(r)
        if len(self.done) == len(self.running):
            for m in self.done:
                self._leave(m)
                self.kv.settle(m, self.width + m.generated)
                m.generated = m.output_len
                self._complete(m, now, last_token=m.last_token)
            self.done = []

    def summary_fields(self) -> dict:
        rows = np.asarray(self.batch_rows, dtype=np.float64)
        return {"batch_sizing": self.sizing, "static_batches": self.batches,
                "mean_static_batch": float(rows.mean()) if len(rows) else 0.0, "copied_tokens": self.copied_tokens}
