"""Who pays when memory is short, worked out by hand: S3's supervisor making room (which running requests are
preempted, in what order), a reservation grown in place to the token, and the order a released request's
blocks join the free queue (which cached block is evicted first)."""
import numpy as np

from s3sim.core.kv_pool import KVPool
from s3sim.core.policies.s3 import S3Scheduler
from s3sim.core.policies.supervisor import Supervisor
from s3sim.core.predictors import Buckets
from s3sim.core.predictors.base import Predictor
from s3sim.core.prefix_cache import FreeQueue, PrefixCache, _Run
from s3sim.core.request import Phase, Request, make_requests

BUCKETS = Buckets([10, 40, 100])  # output buckets: 1-10, 11-40, 41-100 tokens


class ByRow(Predictor):
    """Predicts bucket `rows[id]` for each request."""
    name = "by-row"

    def __init__(self, rows):
        super().__init__(BUCKETS)
        self.rows = rows

    def predict(self, requests):
        return np.array([self.rows[r.id] for r in requests], dtype=np.int64)


def s3(capacity, rows, make_room=True):
    pred = ByRow(rows)
    return S3Scheduler(KVPool(capacity), 100, pred, Supervisor(pred, grow="next", in_place=True),
                       make_room=make_room)


def step(sched, now):
    """One iteration as the serving loop runs it, 1 s long; returns (its end, what advance reported)."""
    out = sched.schedule(now)
    assert not out.is_empty
    return now + 1.0, sched.advance(out, 1, now + 1.0)


def test_make_room_preempts_the_newest_requests_newest_first():
    """Request 0 (prompt 20, predicted 1-10 tokens, really 30) is admitted first; requests 1-4 (prompt 2,
    predicted and really 10 tokens) join at the next iteration, in that order (equal reservations: the earliest
    first). The pool is 6 tokens larger than the five reservations (30 + 4 x 12 = 78):
        iteration 0: prefill 0                      -> 0 has 1 token
        iteration 1: decode 0, prefill 1, 2, 3, 4   -> 0 has 2, the others 1
        iteration 9: decode all                     -> 0 has 10 = its reservation; the others 9 (due at 10)
    0 outgrows its bucket: the next one (11-40) needs 40 - 10 = 30 more tokens, and only 6 are free.
    Preempting 0 recomputes 20 + 10 = 30 tokens. The newest first: 4 frees 12 (6 + 12 = 18 < 30) at a cost
    of 2 + 9 = 11; then 3 frees 12 more (30: enough) at 11 more (22 < 30): 4 and 3 are preempted, in that
    order, and 0 grows in place to 20 + 40 = 60 tokens, leaving nothing free. (The oldest first would have
    taken 1 and 2.)"""
    sched = s3(78 + 6, {0: 0, 1: 0, 2: 0, 3: 0, 4: 0})
    reqs = make_requests([20, 2, 2, 2, 2], [30, 10, 10, 10, 10], [0.0] * 5)
    r = {q.id: q for q in reqs}
    sched.add([r[0]])
    now, _ = step(sched, 0.0)
    sched.add([r[i] for i in (1, 2, 3, 4)])
    now, _ = step(sched, now)
    assert list(sched.running) == [0, 1, 2, 3, 4]
    assert sched.pool.held == {0: 30, 1: 12, 2: 12, 3: 12, 4: 12} and sched.pool.free == 6
    for _ in range(7):  # iterations 2..8
        now, outcome = step(sched, now)
        assert not outcome.preempted and not outcome.finished
    now, outcome = step(sched, now)  # iteration 9: 0 reaches its reservation
    assert [v.id for v in outcome.preempted] == [4, 3]
    assert list(sched.running) == [0, 1, 2]
    assert r[3].phase is Phase.WAITING and r[4].phase is Phase.WAITING
    assert r[3].generated == r[4].generated == 9
    assert sched.by_cause["memory"]["preemptions"] == 2 and sched.by_cause["overflow"]["preemptions"] == 0
    # 0 grew in place by exactly 30 tokens: prompt 20 + the 40 output tokens of bucket 1
    assert r[0].bucket == 1 and r[0].reserved_out == 40
    assert sched.pool.held == {0: 60, 1: 12, 2: 12} and sched.pool.free == 0
    assert sched.supervisor.grown_in_place == 1
    # iteration 10: 1 and 2 finish (10 tokens), freeing 24; iteration 11: 3 then 4 are re-admitted, each
    # recomputing its 2 + 9 = 11 tokens, and finish with their 10th token; 0 runs on to 30 tokens
    while not sched.is_idle():
        now, _ = step(sched, now)
    assert [q.recomputed_tokens for q in reqs] == [0, 0, 0, 11, 11]
    assert [q.preemptions for q in reqs] == [0, 0, 0, 1, 1]
    assert [q.finished for q in reqs] == [30.0, 11.0, 11.0, 12.0, 12.0]
    assert sched.pool.used == 0 and not sched.pool.held


def test_make_room_passes_over_a_newest_request_due_this_iteration():
    """As above, but the newest request (4) has 9 tokens to give and is due at the very iteration 0
    overflows (it finishes there): it is not a victim. 3 and 2 are, in that order."""
    sched = s3(78 + 6, {0: 0, 1: 0, 2: 0, 3: 0, 4: 0})
    reqs = make_requests([20, 2, 2, 2, 2], [30, 10, 10, 10, 9], [0.0] * 5)
    r = {q.id: q for q in reqs}
    sched.add([r[0]])
    now, _ = step(sched, 0.0)
    sched.add([r[i] for i in (1, 2, 3, 4)])
    for _ in range(9):  # iterations 1..9
        now, outcome = step(sched, now)
    assert [v.id for v in outcome.preempted] == [3, 2]
    assert [v.id for v in outcome.finished] == [4]
    assert sched.pool.held == {0: 60, 1: 12} and sched.pool.free == 0 + 12  # 4's 12 came back as it finished


def test_in_place_growth_adds_exactly_the_next_buckets_tokens():
    """Prompt 5, predicted 1-10 tokens, really 50: at 10 tokens the reservation grows to 5 + 40 = 45, at 40
    tokens to 5 + 100 = 105, the request never leaves the GPU, and 200 - 105 = 95 stay free."""
    sched = s3(200, {0: 0})
    (q,) = make_requests([5], [50], [0.0])
    sched.add([q])
    now, seen = 0.0, []
    while not sched.is_idle():
        now, _ = step(sched, now)
        if q.phase is Phase.RUNNING:
            seen.append((sched.generated(q), sched.pool.held[q.id], q.reserved_out))
    assert seen[0] == (1, 15, 10)
    assert seen[9] == (10, 45, 40)   # grown when the 10th token filled the 10 reserved
    assert seen[39] == (40, 105, 100)
    assert max(h for _, h, _ in seen) == 105 and 200 - 105 == 95
    assert sched.supervisor.grown_in_place == 2 and sched.preemptions == 0
    assert q.finished == 50.0 and sched.pool.used == 0


# ---- the free queue -------------------------------------------------------------------------------------
def queue_of(pool):
    """The free queue head to tail: a key, or ('run', n) for n unkeyed blocks."""
    return [("run", n) if type(k) is _Run else k for k, n in pool.free_queue.q.items()]


def test_release_appends_its_ordered_blocks_to_the_tail_in_that_order_then_the_rest():
    """8 free blocks; request 1 takes the first 5, and frees them with order ["a", None, "b"]: the queue's tail
    gets "a", one unkeyed block, "b", then the 5 - 3 = 2 others, after the 3 blocks never taken. Allocation
    takes the head, so "a" is evicted before "b"."""
    evicted = []
    pool = KVPool(8, unit_tokens=16)
    pool.free_queue = FreeQueue(8, evicted.append)
    pool.reserve(1, 5)
    assert queue_of(pool) == [("run", 3)]
    assert pool.release(1, order=["a", None, "b"]) == 5
    assert queue_of(pool) == [("run", 3), "a", ("run", 1), "b", ("run", 2)]
    pool.reserve(2, 4)  # the 3 at the head, then "a"
    assert evicted == ["a"]
    pool.reserve(3, 2)  # the unkeyed one, then "b"
    assert evicted == ["a", "b"]
    assert queue_of(pool) == [("run", 2)]
    pool.check()


def test_a_preempted_requests_last_block_is_evicted_first():
    """A request of 13 context tokens in 4-token blocks (4 blocks, 3 of them full) is preempted: its
    partly-filled block joins the free queue's tail first (unkeyed), then its full blocks last first, 2, 1, 0,
    kept findable by it. Allocating the 6 blocks never used plus that partial one evicts nothing; the next 3
    allocations evict block 2, then 1, then 0."""
    pool = KVPool(10, unit_tokens=4)
    cache = PrefixCache(pool)
    r = Request(7, 10, 20, 0.0)
    r.generated = 3
    cache.admit(r, 4)
    cache.release(r, 4, r.context - 1, preempted=True)  # 12 tokens computed: 3 full blocks
    own = [("own", 7, 1, j) for j in (2, 1, 0)]  # (request, its preemption, block index)
    assert queue_of(pool) == [("run", 7)] + own
    pool.reserve(100, 7)
    assert sorted(cache.entries) == sorted(own) and cache.evictions == 0
    for j in range(3):
        pool.reserve(101 + j, 1)
        assert sorted(cache.entries) == sorted(own[j + 1:])  # the last block first
    assert cache.evictions == 3
