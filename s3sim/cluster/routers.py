"""Routers: which replica serves an arriving request, decided at its arrival from what each replica shows.

Each router sees the replicas' `ReplicaState` (see `s3sim.simulator.engine`) as they stand at the request's
arrival, as if every replica stepped one iteration at a time (a replica inside a multi-iteration jump shows
the iterations that have ended by then), and picks one; ties go to the lowest index, so every decision is
deterministic and does not depend on `max_jump`.
- `round_robin`: replica 0, 1, ..., N-1, 0, ...;
- `least_outstanding`: the fewest requests routed there and not finished;
- `least_kv`: the smallest fraction of its KV pool reserved, then the fewest outstanding (a full cluster
  under overload ties on memory, and the queue lengths decide);
- `predicted`: the smallest predicted KV footprint per pool token: each outstanding request counts its
  prompt plus its predicted output (the middle of its predicted bucket, from the configured predictor,
  the same predictions S3's scheduler makes), this request included, over the replica's capacity, so a
  replica holding few long requests looks as loaded as one holding many short ones and a larger GPU takes
  proportionally more.
"""
from __future__ import annotations

ROUTERS: dict[str, type] = {}


def register(cls):
    ROUTERS[cls.name] = cls
    return cls


class Router:
    name = "base"
    uses_predictor = False

    def __init__(self, predictor=None, max_seq_len: int | None = None):
        self.predictor, self.max_seq_len = predictor, max_seq_len

    def place(self, request, replicas, footprint: int) -> int:
        """The index of the replica `request` goes to (`footprint`: its `footprint`)."""
        raise NotImplementedError

    def footprint(self, request) -> int:
        """KV tokens the request is expected to hold at its end (the predicted router's measure)."""
        return request.prompt_len


@register
class RoundRobin(Router):
    name = "round_robin"

    def __init__(self, predictor=None, max_seq_len=None):
        super().__init__(predictor, max_seq_len)
        self._next = 0

    def place(self, request, replicas, footprint: int) -> int:
        i = self._next % len(replicas)
        self._next += 1
        return i


@register
class LeastOutstanding(Router):
    name = "least_outstanding"

    def place(self, request, replicas, footprint: int) -> int:
        return min(range(len(replicas)), key=lambda i: (replicas[i].outstanding, i))


@register
class LeastKv(Router):
    name = "least_kv"

    def place(self, request, replicas, footprint: int) -> int:
        return min(range(len(replicas)), key=lambda i: (replicas[i].kv_load, replicas[i].outstanding, i))


@register
class Predicted(Router):
    name = "predicted"
    uses_predictor = True

    def footprint(self, request) -> int:
        bucket = int(self.predictor.predict([request])[0])
        expected = int(self.predictor.buckets.midpoint(bucket))
        return request.prompt_len + min(max(expected, 1), self.max_seq_len)

    def place(self, request, replicas, footprint: int) -> int:
        return min(range(len(replicas)),
                   key=lambda i: ((replicas[i].predicted_tokens + footprint) / replicas[i].capacity_tokens, i))


class VllmDataParallel(Router):
    """vLLM's data-parallel load balancer over a dense model's ranks (independent engines): the rank with the
    lowest 4 x waiting + running, a request routed there and not yet taken in counting as waiting; the lowest
    index on a tie. `s3sim-validate` replays such a run with it; it is not one of the cluster's routers."""
    name = "vllm_dp"

    def place(self, request, replicas, footprint: int) -> int:
        return min(range(len(replicas)), key=lambda i: (replicas[i].dp_load, i))
