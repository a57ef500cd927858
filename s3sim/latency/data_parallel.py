"""A step of data-parallel, expert-parallel MoE ranks in lockstep (`s3sim.core.data_parallel`), priced from one
rank's operator profile. (Data parallelism without expert parallelism shards every expert over the ranks in
vLLM, which no profile here measures: both s3sim and s3sim-validate refuse it before pricing.)

Each rank's batch costs what the operator model says for everything but the experts (`dense_base`, attention,
with its own decodes' uneven contexts where the profile measured their cost, LM head and sampler); a rank with
nothing scheduled runs a dummy batch of one token (vLLM keeps every rank of an MoE model stepping). The step
takes the slowest rank's time plus, in every layer, the experts: each rank holds 1/ranks of them, gathers every
rank's tokens (an all-gather of their hidden states), computes its experts' share of the token-expert pairs of the
whole batch (`ExpertTable.seconds_expert_parallel`), and hands the results back (priced as a second all-gather of
the hidden states' bytes, for the reduce-scatter nobody measured here). vLLM's default exchange
(`allgather_reducescatter`) gathers each token's router logits with its hidden states (one group of NCCL calls:
`dispatch_router_logits`), so the first carries n_experts more values a token. Each exchange is priced at ranks x
the largest rank's tokens (every GPU sends its own share at once, so the largest share sets the time), by `gather`
(`s3sim.latency.operators.priced_exchanges`), whose `source` says how.

Padding across ranks (vLLM V1's `coordinate_batch_across_dp`): where every rank's batch fits a CUDA graph (at
most `graph_tokens`, vLLM's largest captured size), all ranks run the largest rank's token count, so each
rank's dense operators and the expert layer's tokens are the padded ones (ranks x the largest); where one
rank's batch is beyond it, every rank runs eagerly and unpadded. `graph_tokens=0` leaves padding out.
"""
from __future__ import annotations

import numpy as np

from s3sim.core.errors import ConfigError


class DataParallelLatency:
    def __init__(self, inner, ranks: int, gather, source: str = "", graph_tokens: int = 0):
        if getattr(inner, "experts", None) is None:
            raise ConfigError("data-parallel ranks stepping together are modelled for a mixture-of-experts model "
                              "priced by its operator profile (latency=operators with a moe.csv)")
        if gather is None:
            raise ConfigError("expert parallelism needs a price for its all-gathers")
        self.inner, self.ranks, self.gather = inner, int(ranks), gather
        self.model = inner.model
        self.source = source
        self.graph_tokens = int(graph_tokens)
        # uneven decode contexts, priced per rank as the profile measured them: the engine then hands
        # `batch_time` each rank's longest context (`DataParallelScheduler.max_context`)
        self.skew_alpha = inner.skew_alpha

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _rank(self, out, max_ctx: int = 0) -> tuple[float, int]:
        """(seconds of one rank's batch, its tokens): everything but the experts (priced for the whole group in
        `batch_time`); a dummy token when idle.
        `max_ctx`: the rank's longest decode context, for uneven contexts (0: its decodes at their mean)."""
        lat = self.inner
        tokens = out.prefill_tokens + out.decode_n
        if tokens <= 0:
            return lat.overhead_s + lat.dense_base.at(1.0), 1
        return lat.batch_time(out, max_ctx=max_ctx, experts=False), tokens

    def batch_time(self, out, max_ctx: tuple = ()) -> float:
        """The step of every rank's part of `out`; `max_ctx`: each rank's longest decode context (empty: every
        rank's decodes at their mean context)."""
        if out.is_empty:
            return 0.0
        ranks = [self._rank(p, m) for p, m in zip(out.parts, max_ctx or [0] * len(out.parts))]
        most = max(n for _, n in ranks)
        if most <= self.graph_tokens:  # padded to the largest rank's tokens: each rank's dense operators run them
            dense = self.inner.dense_base
            t = max(s + dense.at(float(most)) - dense.at(float(n)) for s, n in ranks)
            total = most * len(ranks)
        else:
            t = max(s for s, _ in ranks)
            total = sum(n for _, n in ranks)
        lat = self.inner
        m = self.model
        share = len(ranks) * most * m.dtype_bytes  # per value of a token: the largest share sets the time
        exchange = (float(np.asarray(self.gather.time_s(self.ranks, share * (m.hidden_size + m.n_experts))))  # + logits
                    + float(np.asarray(self.gather.time_s(self.ranks, share * m.hidden_size))))
        return t + lat.layers * (lat.experts.seconds_expert_parallel(float(total), self.ranks) + exchange)

    def decode_run(self, decode_tokens, decode_ctx_start, k: int):
        raise ConfigError("data-parallel ranks are priced step by step (no multi-iteration jump)")
