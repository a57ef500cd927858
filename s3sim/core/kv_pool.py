"""KV-cache accounting: the one place where memory capacity is enforced.

Capacity and holdings are counted in units (tokens for reservation policies, blocks for paged ones).
Every change goes through `reserve`/`grow`/`release`, each of which checks the invariants, so a policy
bug surfaces as an `InvariantViolation` naming the request and the time instead of a silent wrong number.
"""
from __future__ import annotations

from s3sim.core.errors import InvariantViolation


class KVPool:
    def __init__(self, capacity: int, unit_tokens: int = 1):
        if capacity <= 0:
            raise ValueError(f"KV pool capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.unit_tokens = int(unit_tokens)
        self.used = 0
        self.held: dict[int, int] = {}
        self.peak = 0
        self.now = 0.0  # set by the engine so violations can say when

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def units_for(self, tokens: int) -> int:
        return -(-int(tokens) // self.unit_tokens)

    def can_reserve(self, units: int) -> bool:
        return units <= self.capacity - self.used

    def reserve(self, rid: int, units: int) -> None:
        if rid in self.held:
            raise InvariantViolation(f"t={self.now:.6f}s request {rid} reserved KV twice")
        self.held[rid] = 0
        try:
            self.grow(rid, units)
        except InvariantViolation:
            del self.held[rid]  # a failed reservation holds nothing
            raise

    def grow(self, rid: int, units: int) -> None:
        if rid not in self.held:
            raise InvariantViolation(f"t={self.now:.6f}s request {rid} grew KV it does not hold")
        if units < 0:
            raise InvariantViolation(f"t={self.now:.6f}s request {rid} grew KV by {units} < 0")
        if self.used + units > self.capacity:
            raise InvariantViolation(
                f"t={self.now:.6f}s request {rid} needs {units} KV units but only {self.free} of "
                f"{self.capacity} are free: capacity would be exceeded")
        self.held[rid] += units
        self.used += units
        if self.used > self.peak:
            self.peak = self.used

    def grow_untracked(self, units: int, rid_hint: int = -1) -> None:
        """Aggregate growth for policies that keep per-request holdings lazily (paged)."""
        if self.used + units > self.capacity:
            raise InvariantViolation(
                f"t={self.now:.6f}s block allocation of {units} (request {rid_hint}) exceeds capacity "
                f"{self.capacity} with {self.used} used")
        self.used += units
        if self.used > self.peak:
            self.peak = self.used

    def release(self, rid: int, units: int | None = None) -> int:
        """Free what `rid` holds. `units` is the holding computed by a lazy policy, which must add up."""
        if rid not in self.held:
            raise InvariantViolation(f"t={self.now:.6f}s request {rid} released KV it does not hold")
        held = self.held.pop(rid)
        if units is not None:
            held = units
        self.used -= held
        if self.used < 0:
            raise InvariantViolation(f"t={self.now:.6f}s KV accounting went negative after releasing request {rid}")
        return held

    def check_empty(self) -> None:
        if self.held or self.used:
            some = list(self.held)[:5]
            raise InvariantViolation(
                f"t={self.now:.6f}s run ended with {self.used} KV units still held by requests {some}: "
                f"a reservation outlived its request")
