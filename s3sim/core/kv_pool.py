"""KV-cache accounting: the one place where memory capacity is enforced.

Capacity and holdings are counted in units (tokens for reservation policies, blocks for paged ones).
Every unit in use is accounted for one way, for every policy: either it is held by a named request
(`held[rid]`, set by `reserve` and `grow`), or it was grown lazily on behalf of the running requests and is
not yet attributed to one (`unsettled`: paged decoding allocates blocks in aggregate, k iterations at once,
so that a jump costs O(block size), not O(batch)). A lazy policy attributes a request's blocks when it
stops running (`settle`), and `release` frees exactly what the request holds. Every verb checks the
invariants, so a policy bug surfaces as an `InvariantViolation` naming the request and the time, at that
request, not only at the end of the run.

With a prefix cache (`s3sim.core.prefix_cache`), the free units also form an ordered free queue
(`free_queue`): an allocation takes units from its head (evicting cached blocks it reaches), a hit takes a
cached block out of its middle (`reused`), and freed units are appended to its tail.
"""
from __future__ import annotations

from s3sim.core.errors import ConfigError, InvariantViolation


class KVPool:
    def __init__(self, capacity: int, unit_tokens: int = 1):
        if capacity <= 0:
            raise ValueError(f"KV pool capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.unit_tokens = int(unit_tokens)
        self.used = 0
        self.held: dict[int, int] = {}
        self.unsettled = 0  # grown lazily for running requests, not yet attributed to one
        self.peak = 0
        self.now = 0.0  # set by the engine so violations can say when
        self.free_queue = None  # the free units in allocation order, kept by a prefix cache (None: unordered)

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def units_for(self, tokens: int) -> int:
        return -(-int(tokens) // self.unit_tokens)

    def can_reserve(self, units: int) -> bool:
        return units <= self.capacity - self.used

    def reserve(self, rid: int, units: int, reused: int = 0) -> None:
        if rid in self.held:
            raise InvariantViolation(f"t={self.now:.6f}s request {rid} reserved KV twice")
        self.held[rid] = 0
        try:
            self.grow(rid, units, reused)
        except InvariantViolation:
            del self.held[rid]  # a failed reservation holds nothing
            raise

    def grow(self, rid: int, units: int, reused: int = 0) -> None:
        """`rid` holds `units` more; `reused` of them are cached blocks its caller took out of the free queue
        (the rest come from the queue's head)."""
        if rid not in self.held:
            raise InvariantViolation(f"t={self.now:.6f}s request {rid} grew KV it does not hold")
        self._take(units, f"request {rid}", reused)
        self.held[rid] += units

    def hold(self, rid: int, units: int, reused: int = 0) -> None:
        """`grow`, or `reserve` if `rid` holds nothing (a holder that comes and goes: the prefix cache)."""
        (self.grow if rid in self.held else self.reserve)(rid, units, reused)

    def give_back(self, rid: int, units: int, order=()) -> None:
        """`rid` frees `units` of what it holds (forgotten once it holds nothing); with a free queue, they join
        its tail in `order` (see `FreeQueue.append`)."""
        if rid not in self.held or not 0 <= units <= self.held[rid]:
            raise InvariantViolation(f"t={self.now:.6f}s holder {rid} gave back {units} KV units but holds "
                                     f"{self.held.get(rid, 0)}")
        self.held[rid] -= units
        if not self.held[rid]:
            del self.held[rid]
        self._put(units, order)

    def grow_lazily(self, units: int) -> None:
        """Allocate `units` for the running requests as a whole; each request's share is attributed to it by
        `settle` when it stops running."""
        self._take(units, "lazy growth of the running requests")
        self.unsettled += units

    def settle(self, rid: int, units: int) -> None:
        """Request `rid` now holds `units` in all: what it was given plus its share of the lazy growth, which
        must have been allocated (and never shrinks a holding)."""
        if rid not in self.held:
            raise InvariantViolation(f"t={self.now:.6f}s request {rid} settled KV it does not hold")
        share = units - self.held[rid]
        if share < 0:
            raise InvariantViolation(f"t={self.now:.6f}s request {rid} holds {self.held[rid]} KV units but settles "
                                     f"at {units}: a holding shrank")
        if share > self.unsettled:
            raise InvariantViolation(
                f"t={self.now:.6f}s request {rid} needs {share} lazily grown KV units but only {self.unsettled} were "
                f"allocated: the lazy growth fell behind the requests' contexts")
        self.unsettled -= share
        self.held[rid] = units

    def hold_briefly(self, units: int, who: str) -> None:
        """`units` held for a moment on top of what is in use (the old buffer while a cache is copied into a
        larger one): checked against capacity and counted in the peak, then given back."""
        self._check_room(units, who, "for a moment", "out of memory")
        self.peak = max(self.peak, self.used + units)

    def release(self, rid: int, order=()) -> int:
        """Free everything `rid` holds; returns how much that was. `order`: see `give_back`."""
        if rid not in self.held:
            raise InvariantViolation(f"t={self.now:.6f}s request {rid} released KV it does not hold")
        held = self.held.pop(rid)
        self._put(held, order)
        if self.used < self.unsettled:
            raise InvariantViolation(f"t={self.now:.6f}s KV accounting went negative after releasing request {rid}")
        return held

    def _put(self, units: int, order) -> None:
        self.used -= units
        if self.free_queue is not None:
            self.free_queue.append(units, order)

    def check(self) -> None:
        """Every unit in use is held by a request or lazily grown for the running ones (O(requests))."""
        held = sum(self.held.values())
        if held + self.unsettled != self.used or not 0 <= self.used <= self.capacity:
            raise InvariantViolation(
                f"t={self.now:.6f}s KV pool uses {self.used} of {self.capacity} units but requests hold {held} "
                f"and {self.unsettled} are unsettled")
        if self.free_queue is not None and self.free_queue.total != self.free:
            raise InvariantViolation(f"t={self.now:.6f}s KV pool has {self.free} free units but its free queue "
                                     f"holds {self.free_queue.total}")

    def check_empty(self) -> None:
        if self.free_queue is not None and self.free_queue.total != self.capacity:
            raise InvariantViolation(f"t={self.now:.6f}s run ended with {self.free_queue.total} of {self.capacity} KV "
                                     f"units in the free queue")
        if self.held or self.used or self.unsettled:
            some = list(self.held)[:5]
            raise InvariantViolation(
                f"t={self.now:.6f}s run ended with {self.used} KV units still held by requests {some} "
                f"({self.unsettled} lazily grown and never attributed): a reservation outlived its request")

    def _check_room(self, units: int, who: str, when: str = "", consequence: str = "capacity would be exceeded"):
        """`units` more KV units fit beside those in use, or an InvariantViolation naming `who`."""
        if units < 0:
            raise InvariantViolation(f"t={self.now:.6f}s {who} grew KV by {units} < 0")
        if self.used + units > self.capacity:
            raise InvariantViolation(
                f"t={self.now:.6f}s {who} needs {units} KV units{' ' + when if when else ''} but only {self.free} "
                f"of {self.capacity} are free: {consequence}")

    def _take(self, units: int, who: str, reused: int = 0) -> None:
        self._check_room(units, who)
        self.used += units
        if self.free_queue is not None:
            self.free_queue.pop_head(units - reused)
        if self.used > self.peak:
            self.peak = self.used


def block_pool(capacity_tokens: int, block_size: int) -> KVPool:
    """A pool of the whole blocks of `block_size` tokens that `capacity_tokens` holds (at least one)."""
    if capacity_tokens // block_size < 1:
        raise ConfigError(f"policy.block_size={block_size} is larger than the KV capacity of {capacity_tokens:,} "
                          f"tokens: not one block fits; lower it (or give the KV more memory)")
    return KVPool(capacity_tokens // block_size, unit_tokens=block_size)
