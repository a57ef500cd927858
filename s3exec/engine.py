"""The executor: the core's serving loop (`s3sim.core.serving`) with a real forward pass and the wall clock
instead of a latency model.

At each iteration boundary the requests that have arrived are handed to the scheduler, whose output names
what to do; the executor makes the KV cache agree with it (drops or swaps out what was preempted, swaps
back in what resumes), runs one forward pass over the batch, and records each new token with its time.
After `advance`, it frees the KV of what finished and drops or swaps out what the supervisor preempted, as
the outcome names them. Policies, predictor and supervisor are the very objects the simulator drives; only
time and tokens are real.

Fixed mode generates exactly each request's `output_len` tokens, ignoring end-of-sequence (how serving
benchmarks replay a data set). Natural mode lets the model decide: a request ends at an end-of-sequence
token or at its cap; its workload length is only what predictors see at arrival.
"""
from __future__ import annotations

import time

import numpy as np

from s3exec.base import ExecutorBase, Seq
from s3sim.core.errors import ConfigError, InvariantViolation
from s3sim.core.output import SchedulerOutput, StepOutcome
from s3sim.core.policies.base import Scheduler
from s3sim.core.predictors.reprediction import hidden_state_probe
from s3sim.core.request import Phase, Request
from s3sim.core.results import Step


class Executor(ExecutorBase):
    def __init__(self, runner, scheduler: Scheduler, mode: str = "fixed", eos_ids=(), progress: bool = False,
                 clock=time.perf_counter, sleep=time.sleep, warmup: bool = True):
        super().__init__(scheduler, mode, eos_ids, progress, clock, sleep, warmup)
        if getattr(scheduler, "prefix_caching", False):
            raise ConfigError("policy.prefix_caching=true (vllm's default, as vLLM V1's): the executor keeps no prefix "
                              "cache (a preempted request's KV is dropped), so it cannot run what the simulator would "
                              "assume; run it with policy.prefix_caching=false")
        self.runner, self.cache = runner, runner.cache
        pool, cache = scheduler.pool, self.cache
        paged = pool.unit_tokens > 1
        if (paged and (cache.block_size != pool.unit_tokens or cache.num_blocks != pool.capacity)) or (
                not paged and (cache.num_blocks - cache.slack_blocks) * cache.block_size < pool.capacity):
            raise InvariantViolation(
                f"KV cache of {cache.num_blocks} blocks of {cache.block_size} tokens does not match the "
                f"core pool of {pool.capacity} units of {pool.unit_tokens} tokens")
        self.eos = set(int(e) for e in eos_ids)
        # a re-predictor of remaining lengths that reads the served model's hidden states (predictor.repredict=hidden)
        self.probe = hidden_state_probe(scheduler)
        runner.keep_hidden = self.probe is not None

    def check_drained(self) -> None:
        self.cache.check_empty()

    def peaks(self) -> dict:
        return {"peak_kv_blocks": self.cache.peak_blocks,
                "peak_kv_tokens": self.cache.peak_blocks * self.cache.block_size}

    # ---- the backend verbs (see s3sim.core.serving) ------------------------------------------
    def execute(self, out: SchedulerOutput, t: float) -> Step:
        """Drop or swap out what was preempted, run the forward pass, timestamp each new token."""
        self._evict(out.preempted)
        self._check_memory(t)
        fed = self._iterate(out)
        end = self.clock() - self._t0
        for s in fed:
            s.times.append(end)
        return Step(1, np.array([end - t]), end, int(self.cache.length.sum()))

    def settle(self, out: SchedulerOutput, outcome: StepOutcome) -> None:
        """Free the KV of what finished, drop or swap out what the supervisor preempted, then check that the
        engine and the core agree on every token and on memory."""
        for r in outcome.finished:
            self.cache.release(r.id)
        self._evict(outcome.preempted)
        for rid in self.cache.row:
            if rid not in self.sched.running and rid not in self.sched.prefilling:
                raise InvariantViolation(f"request {rid} holds KV but is neither running, part-way through its "
                                         f"prefill, finished nor preempted")
            if rid in self.sched.prefilling and self.cache.tokens(rid) != self.sched.prefilling[rid].progress.prefilled:
                raise InvariantViolation(f"request {rid} has {self.cache.tokens(rid)} tokens of KV but the core counts "
                                         f"{self.sched.prefilling[rid].progress.prefilled} prefilled")
        self._check(out)
        self.sched.pool.check()
        self._check_memory(self.sched.now)
        self._bar.update(len(outcome.finished))

    def warm_up(self, prompts) -> None:
        """One untimed prefill of the first prompts (as many as the KV pool and `max_batch_tokens` take) and one
        decode step of them, before the clock starts, as serving engines do at start-up: the first pass at a
        new largest size pays for growing activation memory, which no request of the run should be charged
        (and which the profile, measured after warm-up, does not contain)."""
        cache, bs = self.cache, self.cache.block_size
        limit = self.runner.max_batch_tokens or float("inf")
        batch, tokens, blocks = [], 0, 0
        for i, p in enumerate(prompts):
            need = -(-(len(p) + 1) // bs)
            if tokens + len(p) > limit or blocks + need > cache.nfree or len(p) + 1 > cache.max_blocks * bs:
                break
            batch.append((-1 - i, [int(t) for t in p]))
            tokens, blocks = tokens + len(p), blocks + need
        if self.runner.graphs is not None:
            self.runner.graphs.capture_all()
        if not batch:
            return
        peak = cache.peak_blocks
        out = self.runner.step([], batch)
        self.runner.step([(rid, tok) for (rid, _), tok in zip(batch, out)], [])
        for rid, _ in batch:
            cache.release(rid)
        cache.peak_blocks = peak

    # ---- one iteration ----------------------------------------------------------------------
    def _iterate(self, batch) -> list[Seq]:
        """Swap in what resumes, run the forward pass, append each sequence's new token; returns the
        sequences that got one (not the padding of finished static-batch members)."""
        cache = self.cache
        padding = {m.id for m in batch.padding}
        order = list(batch.decode)
        for r in batch.resumed:
            if r.id not in cache.host:
                raise InvariantViolation(f"request {r.id} resumes from host memory it was never swapped to")
            cache.swap_in(r.id)
        order += batch.resumed
        decode = [(r.id, self.seqs[r.id].feed) for r in order]
        prefill = [(r.id, self.seqs[r.id].tokens[k:k + n], k)
                   for r, k, n in zip(batch.prefill, batch.prefill_prefix, batch.prefill_lens)]
        out = self.runner.step(decode, prefill)
        fed = []
        partial = {r.id for r in batch.partial}  # chunks that do not finish their prompt: their token is dropped
        for i, (r, tok) in enumerate(zip(order + batch.prefill, out)):
            if r.id in partial:
                continue
            s = self.seqs[r.id]
            s.feed = tok
            if r.id in padding:
                continue
            s.tokens.append(tok)
            fed.append(s)
            if self.probe is not None and self.probe.wants(s.count - 1):  # the state after count - 1 tokens
                self.probe.observe(r.id, s.count - 1, self.runner.hidden[i])
            if self.mode == "natural":
                self._aim(r, s, tok)
        return fed

    def _aim(self, r: Request, s: Seq, tok: int) -> None:
        """Natural mode: end at end-of-sequence or the cap; go past the workload's length otherwise."""
        g = s.count
        if tok in self.eos or g >= s.cap:
            self.sched.set_output_len(r, g)
        elif g >= r.output_len:
            self.sched.set_output_len(r, s.cap)

    # ---- keeping the cache and the core in agreement ----------------------------------------
    def _evict(self, preempted: list[Request]) -> None:
        """Preempted requests leave the GPU: their KV goes to host memory (swap) or is dropped (recompute)."""
        for r in preempted:
            if r.swapped:
                self.cache.swap_out(r.id)
            else:
                self.cache.release(r.id)

    def _check(self, batch: SchedulerOutput) -> None:
        """Tokens are conserved: the engine holds exactly as many generated tokens as the core counts."""
        sched, padding = self.sched, {m.id for m in batch.padding}
        for r in [*batch.decode, *batch.prefill, *batch.resumed]:
            g = sched.progress(r)
            have = self.seqs[r.id].count
            if have != g and not (r.phase is Phase.FINISHED or r.id in padding):
                raise InvariantViolation(f"t={sched.now:.6f}s request {r.id} has {have} generated tokens but the "
                                         f"core counts {g}")

    def _check_memory(self, now: float) -> None:
        """The cache never holds more than the core accounts for: blocks against a paged pool's blocks, tokens
        written against a token pool's tokens."""
        pool, cache = self.sched.pool, self.cache
        used, what = (cache.used_blocks, "blocks") if pool.unit_tokens > 1 else (int(cache.length.sum()), "tokens")
        if used > pool.used:
            raise InvariantViolation(f"t={now:.6f}s the KV cache holds {used} {what} but the core pool accounts for "
                                     f"only {pool.used} units of {pool.unit_tokens} tokens")
