"""What one serving iteration does: the shape a latency model prices and an engine executes."""
from __future__ import annotations

from dataclasses import dataclass, field

from s3sim.core.request import Request


@dataclass(slots=True)
class Batch:
    prefill: list[Request] = field(default_factory=list)  # prefill prompt (+ generated, if recomputing), emit one token
    resumed: list[Request] = field(default_factory=list)  # KV swapped back in; decode one token
    decode_n: int = 0  # sequences decoding one token (running + resumed + static-batch padding)
    decode_ctx: int = 0  # their summed context lengths (tokens already in KV)
    prefill_tokens: int = 0
    prefill_sq: int = 0  # sum of squared prefill lengths, for quadratic attention
    transfer_tokens: int = 0  # KV moved over the host link this iteration (swap in and swap out)
    itl_tokens: int = 0  # tokens whose inter-token latency is this iteration's duration

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
