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
from dataclasses import dataclass, field

import numpy as np

from s3exec.progress import Progress
from s3sim.core.errors import ConfigError, InvariantViolation
from s3sim.core.output import SchedulerOutput, StepOutcome
from s3sim.core.policies.base import Scheduler
from s3sim.core.predictors.reprediction import hidden_state_probe
from s3sim.core.request import Phase, Request
from s3sim.core.results import IterationLog, RunResult, Step
from s3sim.core.serving import Inbox, drive, serve

MODES = ("fixed", "natural")


def check_mode(mode: str, eos_ids=None) -> None:
    """`executor.mode` is known, and natural mode has an end-of-sequence token to stop at (when known)."""
    if mode not in MODES:
        raise ConfigError(f"executor.mode '{mode}' is unknown; valid: {', '.join(MODES)}")
    if mode == "natural" and eos_ids is not None and not eos_ids:
        raise ConfigError("executor.mode=natural needs an end-of-sequence token, and the model has none")


@dataclass
class Seq:
    """What the engine keeps of a request: its tokens, when each generated one appeared, and its cap."""
    tokens: list[int]
    prompt_len: int
    cap: int  # most output tokens it may generate (natural mode)
    times: list[float] = field(default_factory=list)
    feed: int = -1  # the next decode input: its last token (padding, once a static-batch member is done)

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    @property
    def count(self) -> int:
        return len(self.tokens) - self.prompt_len


def wait_until(clock, sleep, when: float, spin: float = 0.002) -> None:
    """Idle until `clock()` reads `when`: sleep, then spin for the last `spin` seconds, since a sleep
    overshoots by a tenth of a millisecond or more, which would delay every request arriving at an idle
    engine (the simulator starts its iteration at the arrival itself)."""
    left = when - clock()
    if left > spin:
        sleep(left - spin)
    while clock() < when:
        pass


def make_seqs(requests: list[Request], prompts: list[list[int]], caps=None) -> dict[int, Seq]:
    """Each request's sequence: its prompt tokens (which must be as many as its prompt_len) and its cap
    (default: its output_len)."""
    caps = [r.output_len for r in requests] if caps is None else caps
    seqs = {r.id: Seq(list(map(int, p)), len(p), int(c)) for r, p, c in zip(requests, prompts, caps)}
    for r, s in zip(requests, seqs.values()):
        if s.prompt_len != r.prompt_len:
            raise InvariantViolation(f"request {r.id} has {s.prompt_len} prompt tokens but prompt_len {r.prompt_len}")
    return seqs


@dataclass
class ExecResult(RunResult):
    outputs: dict[int, list[int]] = field(default_factory=dict)  # request id -> generated tokens
    token_times: dict[int, list[float]] = field(default_factory=dict)  # seconds from the start, per token
    peak_kv_blocks: int = 0
    peak_kv_tokens: int = 0  # the cache's peak in token slots (whole blocks)


class Executor:
    def __init__(self, runner, scheduler: Scheduler, mode: str = "fixed", eos_ids=(), progress: bool = False,
                 clock=time.perf_counter, sleep=time.sleep, warmup: bool = True):
        check_mode(mode, eos_ids)
        if getattr(scheduler, "prefix_caching", False):
            raise ConfigError("policy.prefix_caching=true (vllm's default, as vLLM V1's): the executor keeps no prefix "
                              "cache (a preempted request's KV is dropped), so it cannot run what the simulator would "
                              "assume; run it with policy.prefix_caching=false")
        self.runner, self.cache, self.sched = runner, runner.cache, scheduler
        pool, cache = scheduler.pool, self.cache
        paged = pool.unit_tokens > 1
        if (paged and (cache.block_size != pool.unit_tokens or cache.num_blocks != pool.capacity)) or (
                not paged and (cache.num_blocks - cache.slack_blocks) * cache.block_size < pool.capacity):
            raise InvariantViolation(
                f"KV cache of {cache.num_blocks} blocks of {cache.block_size} tokens does not match the "
                f"core pool of {pool.capacity} units of {pool.unit_tokens} tokens")
        self.mode = mode
        self.eos = set(int(e) for e in eos_ids)
        # a re-predictor of remaining lengths that reads the served model's hidden states (predictor.repredict=hidden)
        self.probe = hidden_state_probe(scheduler)
        runner.keep_hidden = self.probe is not None
        self.progress = progress
        self.clock, self.sleep = clock, sleep
        self.warmup = warmup

    def run(self, requests: list[Request], prompts: list[list[int]], caps=None) -> ExecResult:
        """Serve `requests` (sorted by arrival, ids 0..n-1) whose prompt tokens are `prompts`; `caps` bounds
        each request's output in natural mode (default: its output_len)."""
        n = len(requests)
        self.seqs = make_seqs(requests, prompts, caps)
        if self.warmup:
            self.warm_up(prompts)
        self._bar = Progress(n, self.progress)
        self._inbox, log = Inbox(requests, predict_s=self.sched.predict_s), IterationLog()
        self._t0 = self.clock()
        end, steps = drive(serve(self.sched, self, self._inbox, log))
        self._bar.close()
        self.cache.check_empty()
        for r in requests:
            if self.seqs[r.id].count != r.output_len:
                raise InvariantViolation(f"request {r.id} finished with {self.seqs[r.id].count} tokens "
                                         f"generated, the core counted {r.output_len}")
        pool = self.sched.pool
        return ExecResult(requests, log, self.sched, end, steps, pool.capacity * pool.unit_tokens,
                          outputs={i: s.generated for i, s in self.seqs.items()},
                          token_times={i: s.times for i, s in self.seqs.items()},
                          peak_kv_blocks=self.cache.peak_blocks,
                          peak_kv_tokens=self.cache.peak_blocks * self.cache.block_size)

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

    def wait(self, step: Step) -> Step:
        return step  # the forward pass took the time already

    def idle(self, t: float) -> float:
        wait_until(self.clock, self.sleep, self._t0 + self._inbox.next_arrival)
        return self.clock() - self._t0

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
