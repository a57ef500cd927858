"""What the scheduler decided, and what an iteration changed: the only things a backend acts on.

`schedule()` returns a `SchedulerOutput` (as vLLM's scheduler does): which requests prefill this iteration,
how many tokens each computes and over how long a prefix (chunked prefill), which decode, which resume from host memory, which were taken off the
GPU before it ran, and the batch's shape that a latency model prices. `advance()` returns a `StepOutcome`:
which requests finished and which were preempted when the iteration's tokens were counted. A backend never
infers either by comparing counters or reading a policy's fields.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

from s3sim.core.request import Request


@dataclass(slots=True)
class SchedulerOutput:
    prefill: list[Request] = field(default_factory=list)  # start (or recompute) a prefill; emit one token each
    prefill_lens: list[int] = field(default_factory=list)  # tokens each prefill computes this iteration
    prefill_prefix: list[int] = field(default_factory=list)  # tokens of it already in KV (earlier chunks)
    partial: list[Request] = field(default_factory=list)  # prefills whose chunk does not finish the prompt:
    # they emit no token (chunked prefill); the others emit their first token
    resumed: list[Request] = field(default_factory=list)  # KV swapped back in; decode one token
    decode: Collection[Request] = ()  # running requests that decode one token, oldest first (valid until advance)
    padding: list[Request] = field(default_factory=list)  # static-batch members already done: decode padding
    preempted: list[Request] = field(default_factory=list)  # taken off the GPU before this iteration
    # (`r.swapped`: KV kept in host memory; else dropped, to be recomputed)
    # the shape a latency model prices
    decode_n: int = 0  # sequences decoding one token (running + resumed + static-batch padding)
    decode_ctx: int = 0  # their summed context lengths (tokens already in KV)
    prefill_tokens: int = 0
    prefill_sq: int = 0  # sum over chunks of (prefix + chunk)^2 - prefix^2: quadratic attention, chunked or not
    transfer_tokens: int = 0  # KV moved over the host link this iteration (swap in and swap out)
    itl_tokens: int = 0  # tokens whose inter-token latency is this iteration's duration
    copies_kv: bool = False  # each decode step reallocates the batch's KV cache by concatenation (dynamic
    # growth, as transformers' DynamicCache): the `decode_ctx - decode_n` tokens cached before the step (the
    # context less the token each row feeds now) are copied into a buffer one token longer
    budget: float = math.inf  # tokens this iteration can still compute (the token budget less what is scheduled):
    # the scheduler's running count while it builds this output, local to one `schedule()`; a backend ignores it

    @property
    def is_empty(self) -> bool:
        return not self.prefill and not self.resumed and self.decode_n == 0 and self.transfer_tokens == 0

    @property
    def is_decode_only(self) -> bool:
        """A batch that can be repeated unchanged until the scheduler's next event."""
        return not self.prefill and not self.resumed and self.transfer_tokens == 0 and self.decode_n > 0

    @property
    def size(self) -> int:
        return self.decode_n + len(self.prefill)


@dataclass(slots=True)
class StepOutcome:
    """What `advance()` changed: requests returned to their clients (free their KV) and requests taken off
    the GPU because they outgrew their reservation (swap out or drop their KV)."""
    finished: list[Request] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
