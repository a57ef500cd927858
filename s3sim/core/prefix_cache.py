"""vLLM's automatic prefix cache over a paged KV pool: full blocks of computed KV found again by content.

A block is keyed (findable) when it is full and its content is known to repeat:
- a prompt block inside the region its workload marks as shared (`Request.prefix`: a trace's chain of block
  hashes, or a system prompt several requests begin with), keyed by the chain entry covering its last token
  and its index, so equal keys mean equal tokens from the prompt's start to the block's end;
- a preempted request's own full blocks (KV up to its last sampled token), keyed by the request and the
  preemption, so that it finds what survived when it is admitted again.
Keyed blocks in use are shared, counted once: the pool holds them for `CACHE`, reference counted here.
Free blocks form vLLM's free queue (`FreeQueue`): allocation takes its head, evicting a cached block it
reaches; a hit takes a cached block out of its middle; a request's freed blocks are appended in reverse
order (its last blocks are evicted first). A hit covers at most the first `context - 1` tokens (the last is
always computed, to sample from), and a block a request registered is found only once the chunk that
computes it was scheduled (vLLM hashes a block when its step is scheduled; a layer writes the batch's KV
before its attention reads it). A block already cached under another request's registration that is not
computed yet is computed again, privately, as vLLM does.
"""
from __future__ import annotations

from collections import OrderedDict

from s3sim.core.errors import InvariantViolation

CACHE = -1  # the pool holder of the keyed blocks running requests share


class _Run:
    """A run of unkeyed free blocks: one queue entry, keyed by identity."""
    __slots__ = ()


class FreeQueue:
    """The pool's free blocks in allocation order (vLLM's `FreeKVCacheBlockQueue`): keyed blocks one entry
    each, unkeyed ones in runs. `evict(key)` is told of every cached block an allocation reaches."""

    def __init__(self, units: int, evict):
        self.q: OrderedDict = OrderedDict()
        self.total = 0
        self.evict = evict
        self.append(units, ())

    def pop_head(self, n: int) -> None:
        q = self.q
        while n > 0:
            if not q:
                raise InvariantViolation(f"the free queue ran out with {n} blocks still to allocate")
            key, count = next(iter(q.items()))
            if type(key) is _Run:
                m = min(n, count)
                if m == count:
                    q.popitem(last=False)
                else:
                    q[key] = count - m
            else:
                m = 1
                q.popitem(last=False)
                self.evict(key)
            n -= m
            self.total -= m

    def take(self, key) -> None:
        """A hit: the cached block `key` leaves the queue from wherever it is."""
        del self.q[key]
        self.total -= 1

    def append(self, units: int, order) -> None:
        """`units` freed blocks join the tail: first those `order` lists (a key, or None for an unkeyed block),
        in its order, then the rest, unkeyed."""
        rest = units - len(order)
        if rest < 0:
            raise InvariantViolation(f"{len(order)} blocks freed in order among only {units}")
        for key in order:
            if key is None:
                self._append_unkeyed(1)
            else:
                self.q[key] = 1
        if rest:
            self._append_unkeyed(rest)
        self.total += units

    def _append_unkeyed(self, n: int) -> None:
        q = self.q
        last = next(reversed(q)) if q else None
        if type(last) is _Run:
            q[last] += n
        else:
            q[_Run()] = n


class PrefixCache:
    """The keyed blocks of one pool: which exist, how many running requests share each, which are computed."""

    def __init__(self, pool):
        self.pool = pool
        self.bs = pool.unit_tokens
        self.entries: dict = {}  # key -> [requests sharing it, computed (findable)]; free ones are in the queue
        self.shared: dict[int, dict[int, object]] = {}  # request id -> {block index: key} of the keyed blocks it shares
        self.evictions = 0
        self.duplicates = 0  # sum over blocks in use of (requests sharing it - 1): KV counted in contexts, not held
        self.found_shared = 0  # blocks found by content (a prompt prefix some request computed)
        self.found_own = 0  # blocks a preempted request found of its own
        self._version = 0  # bumped by every change to `entries`: a lookup stands until then
        # a preempted request's own blocks, per (request, preemption): how many it registered, and the lowest index
        # evicted since (its blocks are found up to there), so a request outside any shared region is looked up
        # without a walk over its blocks
        self._own_full: dict[tuple, int] = {}
        self._own_lost: dict[tuple, int] = {}
        self._last_lookup = (None, None)  # (what it was asked, its answer): a waiting head is looked up every step
        pool.free_queue = FreeQueue(pool.free, self._evict)

    def _evict(self, key) -> None:
        self._version += 1
        del self.entries[key]
        self.evictions += 1
        if key[0] == "own":
            epoch = key[1], key[2]
            if epoch in self._own_full and key[3] < self._own_lost.get(epoch, key[3] + 1):
                self._own_lost[epoch] = key[3]

    # ---- keys ---------------------------------------------------------------------------------
    def shared_blocks(self, r) -> int:
        """Full blocks of `r`'s prompt inside the region its workload marks as shared."""
        if r.prefix is None:
            return 0
        unit, chain = r.prefix
        return min(r.prompt_len, unit * len(chain)) // self.bs

    def _content_key(self, r, j: int):
        unit, chain = r.prefix
        return chain[((j + 1) * self.bs - 1) // unit], j

    # ---- the verbs a scheduler calls -----------------------------------------------------------
    def lookup(self, r) -> tuple[list, int]:
        """The keys of `r`'s leading blocks found computed (at most its first context - 1 tokens), and how
        many of them are free (in the queue) rather than shared with a running request."""
        n_sh = self.shared_blocks(r)
        own = r.preemptions > 0
        if not n_sh and not own:
            return [], 0
        asked = (r.id, r.preemptions, r.context, self._version)
        if self._last_lookup[0] == asked:
            return self._last_lookup[1]
        answer = self._lookup(r, n_sh, own)
        self._last_lookup = (asked, answer)
        return answer

    def _lookup(self, r, n_sh: int, own: bool) -> tuple[list, int]:
        if not n_sh:  # its own blocks alone: found from the first up to the first evicted (all free)
            epoch = r.id, r.preemptions
            full = self._own_full.get(epoch, 0)
            n = min((r.context - 1) // self.bs, self._own_lost.get(epoch, full), full)
            return [("own", r.id, r.preemptions, j) for j in range(n)], n
        entries, hits, free = self.entries, [], 0
        for j in range((r.context - 1) // self.bs):
            e = None
            if j < n_sh:
                key = self._content_key(r, j)
                e = entries.get(key)
                if e is not None and not e[1]:
                    e = None
            if e is None and own:
                key = ("own", r.id, r.preemptions, j)
                e = entries.get(key)
            if e is None:
                break
            hits.append(key)
            free += e[0] == 0
        return hits, free

    def free_blocks_needed(self, r, blocks: int) -> int:
        """Free blocks admitting `r` with `blocks` blocks in all takes: all but the hits shared with running
        requests (a free hit leaves the queue; a new block comes from its head)."""
        hits, free = self.lookup(r)
        return blocks - (len(hits) - free)

    def admit(self, r, blocks: int, hits: list | None = None) -> int:
        """Take `r`'s first `blocks` blocks (at least its hits and its shared region): its hits (out of the queue
        where free), its shared blocks not cached yet (registered; found by others once computed), and the rest
        held by `r`. `hits`: `lookup(r)`'s, if the caller has them. Returns the tokens found."""
        if hits is None:
            hits, _ = self.lookup(r)
        self._version += 1
        if r.preemptions:  # its own blocks of the last preemption are taken now or never found again
            self._own_full.pop((r.id, r.preemptions), None)
            self._own_lost.pop((r.id, r.preemptions), None)
        queue, entries = self.pool.free_queue, self.entries
        mine: dict[int, object] = {}
        revived_shared = revived_own = 0
        for j, key in enumerate(hits):
            if key[0] == "own":
                queue.take(key)
                del entries[key]
                revived_own += 1
                self.found_own += 1
                continue
            self.found_shared += 1
            e = entries[key]
            if e[0] == 0:
                queue.take(key)
                revived_shared += 1
            else:
                self.duplicates += 1
            e[0] += 1
            mine[j] = key
        new = 0
        for j in range(len(hits), self.shared_blocks(r)):
            key = self._content_key(r, j)
            if key not in entries:
                entries[key] = [1, False]
                mine[j] = key
                new += 1
        if revived_shared + new:
            self.pool.hold(CACHE, revived_shared + new, reused=revived_shared)
        self.pool.reserve(r.id, blocks - len(mine), reused=revived_own)
        self.shared[r.id] = mine
        return len(hits) * self.bs

    def private_blocks(self, r, blocks: int) -> int:
        """Of the `blocks` blocks `r`'s context spans, those it holds alone."""
        return blocks - len(self.shared.get(r.id, ()))

    def computed(self, r, tokens: int) -> None:
        """`r`'s first `tokens` context tokens are scheduled: the blocks it registered within them are found."""
        for j, key in self.shared.get(r.id, {}).items():
            if (j + 1) * self.bs <= tokens:
                e = self.entries[key]
                if not e[1]:
                    e[1] = True
                    self._version += 1

    def release(self, r, blocks: int, computed: int, preempted: bool) -> None:
        """`r` frees its `blocks` blocks (those it holds alone are settled in the pool): a preempted request's
        own full blocks of `computed` tokens stay findable by it; a shared block no one else uses joins the
        queue."""
        self._version += 1
        mine = self.shared.pop(r.id, {})
        order = []
        if preempted:  # vLLM frees a request's blocks last first: a partly computed block, then the full ones
            epoch = r.preemptions + 1  # counted once the preemption is done
            full = computed // self.bs
            own = []
            for j in reversed(range(full)):
                if j not in mine:
                    key = ("own", r.id, epoch, j)
                    self.entries[key] = [0, True]
                    own.append(key)
            if full:
                self._own_full[r.id, epoch] = full
            # the unkeyed blocks come first: its partly computed block, and any block allocated a step ahead
            # of vLLM (which never took it, so it stays ahead of the freed ones in its queue)
            private = blocks - len(mine)
            order = [None] * (private - len(own)) + own
        self.pool.release(r.id, order=order)
        freed, unkeyed = [], 0
        for j in sorted(mine, reverse=True):
            e = self.entries[mine[j]]
            e[0] -= 1
            if e[0]:
                self.duplicates -= 1
            else:
                if e[1]:
                    freed.append(mine[j])
                else:  # registered, never computed: nothing to find
                    del self.entries[mine[j]]
                    unkeyed += 1
        if freed or unkeyed:
            self.pool.give_back(CACHE, len(freed) + unkeyed, order=freed)

    def check(self) -> None:
        """Every keyed block is either shared by running requests or free in the queue, and the pool holds
        exactly the shared ones for `CACHE`."""
        in_use = sum(1 for e in self.entries.values() if e[0] > 0)
        if in_use != self.pool.held.get(CACHE, 0):
            raise InvariantViolation(f"t={self.pool.now:.6f}s the prefix cache shares {in_use} blocks but the pool "
                                     f"holds {self.pool.held.get(CACHE, 0)} for it")
        duplicates = sum(e[0] - 1 for e in self.entries.values() if e[0] > 1)
        if duplicates != self.duplicates:
            raise InvariantViolation(f"t={self.pool.now:.6f}s the prefix cache counts {self.duplicates} shared uses "
                                     f"beyond the first but its blocks have {duplicates}")
        queued = sum(1 for k in self.pool.free_queue.q if type(k) is not _Run)
        if queued != len(self.entries) - in_use:
            raise InvariantViolation(f"t={self.pool.now:.6f}s {len(self.entries) - in_use} cached blocks are free but "
                                     f"the free queue has {queued}")
