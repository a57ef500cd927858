"""The executor: the simulator's loop (`s3sim/engine/simulator.py`) with a real forward pass and the wall
clock instead of a latency model.

At each iteration boundary the requests that have arrived are handed to the scheduler, which returns a
batch; the engine makes the KV cache agree with the scheduler's decisions (frees what finished, drops or
swaps out what was preempted, swaps back in what resumes), runs one forward pass over the batch, records
each new token with its time, and calls `advance` with the time the iteration ended. Policies,
predictor and supervisor are the very objects the simulator drives; only time and tokens are real.

Fixed mode generates exactly each request's `output_len` tokens, ignoring end-of-sequence (how serving
benchmarks replay a data set). Natural mode lets the model decide: a request ends at an end-of-sequence
token or at its cap; its workload length is only what predictors see at arrival.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from s3sim.simulator.engine import IterationLog, SimResult, check_all_finished, stalled
from s3sim.core.errors import ConfigError, InvariantViolation
from s3sim.core.request import Phase, Request
from s3sim.core.policies.base import Scheduler

MODES = ("fixed", "natural")


@dataclass
class Seq:
    """What the engine keeps of a request: its tokens, when each generated one appeared, and its cap."""
    tokens: list[int]
    prompt_len: int
    cap: int  # most output tokens it may generate (natural mode)
    times: list[float] = field(default_factory=list)
    preemptions: int = 0  # the request's count when its KV was last made to agree
    feed: int = -1  # the next decode input: its last token (padding, once a static-batch member is done)

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    @property
    def count(self) -> int:
        return len(self.tokens) - self.prompt_len


@dataclass
class ExecResult(SimResult):
    outputs: dict[int, list[int]] = field(default_factory=dict)  # request id -> generated tokens
    token_times: dict[int, list[float]] = field(default_factory=dict)  # seconds from the start, per token
    peak_kv_blocks: int = 0


class Executor:
    def __init__(self, runner, scheduler: Scheduler, mode: str = "fixed", eos_ids=(), progress: bool = False,
                 clock=time.perf_counter, sleep=time.sleep, warmup: bool = True):
        if mode not in MODES:
            raise ConfigError(f"executor.mode '{mode}' is unknown; valid: {', '.join(MODES)}")
        if mode == "natural" and not eos_ids:
            raise ConfigError("executor.mode=natural needs an end-of-sequence token, and the model has none")
        self.runner, self.cache, self.sched = runner, runner.cache, scheduler
        if self.cache.block_size != scheduler.pool.unit_tokens or self.cache.num_blocks != scheduler.pool.capacity:
            raise InvariantViolation(
                f"KV cache of {self.cache.num_blocks} blocks of {self.cache.block_size} tokens does not match the "
                f"core pool of {scheduler.pool.capacity} units of {scheduler.pool.unit_tokens} tokens")
        self.mode = mode
        self.eos = set(int(e) for e in eos_ids)
        self.progress = progress
        self.clock, self.sleep = clock, sleep
        self.warmup = warmup

    def run(self, requests: list[Request], prompts: list[list[int]], caps=None) -> ExecResult:
        """Serve `requests` (sorted by arrival, ids 0..n-1) whose prompt tokens are `prompts`; `caps` bounds
        each request's output in natural mode (default: its output_len)."""
        from tqdm.auto import tqdm

        n = len(requests)
        caps = [r.output_len for r in requests] if caps is None else caps
        self.reqs = {r.id: r for r in requests}
        self.seqs = {r.id: Seq(list(map(int, p)), len(p), int(c)) for r, p, c in zip(requests, prompts, caps)}
        for r, s in zip(requests, self.seqs.values()):
            if s.prompt_len != r.prompt_len:
                raise InvariantViolation(f"request {r.id} has {s.prompt_len} prompt tokens but prompt_len "
                                         f"{r.prompt_len}")
        arrivals = np.fromiter((r.arrival for r in requests), float, n)
        if self.warmup:
            self.warm_up(prompts)
        sched, log = self.sched, IterationLog()
        bar = tqdm(total=n, disable=not self.progress, desc="requests", unit="req", leave=False)
        nxt, steps, t0, t = 0, 0, self.clock(), 0.0
        while len(sched.finished) < n:  # t: this iteration's start, the previous one's end (no gaps but idle ones)
            upto = int(np.searchsorted(arrivals, t, side="right"))
            if upto > nxt:
                sched.add(requests[nxt:upto])
                nxt = upto
            batch = sched.schedule(t)
            if batch.is_empty:
                if nxt >= n:
                    raise stalled(sched, n, t)
                self._wait_until(t0 + float(arrivals[nxt]))
                t = self.clock() - t0
                continue
            self._sync()
            reserved = sched.kv_reserved_profile(1)
            fed = self._iterate(batch)
            end = self.clock() - t0
            log.start.append(t)
            log.steps.append(1)
            log.batch.append(batch.size)
            log.decode.append(batch.decode_n)
            log.itl_tokens.append(batch.itl_tokens)
            log.prefill_tokens.append(batch.prefill_tokens)
            log.used0.append(int(self.cache.length.sum()))
            log.waiting.append(len(sched.waiting))
            log.durations.append(np.array([end - t]))
            log.reserved.append(reserved)
            for s in fed:
                s.times.append(end)
            done = len(sched.finished)
            sched.advance(batch, 1, end)
            self._check(batch)
            self._sync()
            self._check_memory(end)
            bar.update(len(sched.finished) - done)
            steps += 1
            t = end
        bar.close()
        check_all_finished(requests, sched, t)
        self.cache.check_empty()
        for r in requests:
            if self.seqs[r.id].count != r.output_len:
                raise InvariantViolation(f"request {r.id} finished with {self.seqs[r.id].count} tokens "
                                         f"generated, the core counted {r.output_len}")
        cap = self.cache.capacity_tokens
        return ExecResult(requests, log, sched, t, steps, cap,
                          outputs={i: s.generated for i, s in self.seqs.items()},
                          token_times={i: s.times for i, s in self.seqs.items()},
                          peak_kv_blocks=self.cache.peak_blocks)

    def _wait_until(self, when: float, spin: float = 0.002) -> None:
        """Idle until the clock reads `when`: sleep, then spin for the last `spin` seconds, since a sleep
        overshoots by a tenth of a millisecond or more, which would delay every request arriving at an idle
        engine (the simulator starts its iteration at the arrival itself)."""
        left = when - self.clock()
        if left > spin:
            self.sleep(left - spin)
        while self.clock() < when:
            pass

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
        sched, cache = self.sched, self.cache
        padding = self._padding()
        order = list(sched.running.values())
        for r in batch.resumed:
            if r.id not in cache.host:
                raise InvariantViolation(f"request {r.id} resumes from host memory it was never swapped to")
            cache.swap_in(r.id)
        order += batch.resumed
        decode = [(r.id, self.seqs[r.id].feed) for r in order]
        prefill = [(r.id, self.seqs[r.id].tokens) for r in batch.prefill]
        out = self.runner.step(decode, prefill)
        fed = []
        for r, tok in zip(order + batch.prefill, out):
            s = self.seqs[r.id]
            s.feed = tok
            if r.id in padding:
                continue
            s.tokens.append(tok)
            fed.append(s)
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

    def _padding(self) -> set[int]:
        """Static-batch members that already finished and compute padding until their batch does."""
        return {m.id for m in getattr(self.sched, "done", ())}

    # ---- keeping the cache and the core in agreement ----------------------------------------
    def _sync(self) -> None:
        """Free the KV of finished requests; drop (recompute) or swap out (swap) that of preempted ones."""
        cache, sched = self.cache, self.sched
        for rid in list(cache.row):
            r, s = self.reqs[rid], self.seqs[rid]
            if r.phase is Phase.FINISHED:
                cache.release(rid)
            elif r.preemptions != s.preemptions:
                s.preemptions = r.preemptions
                if sched.preemption_mode == "swap":
                    cache.swap_out(rid)
                else:
                    cache.release(rid)
            elif rid not in sched.running:
                raise InvariantViolation(f"request {rid} holds KV but is neither running, finished nor preempted")

    def _check(self, batch) -> None:
        """Tokens are conserved: the engine holds exactly as many generated tokens as the core counts."""
        sched, padding = self.sched, self._padding()
        for r in list(sched.running.values()) + batch.prefill + batch.resumed:
            g = sched.generated(r) if r.id in sched.running else r.generated
            have = self.seqs[r.id].count
            if have != g and not (r.phase is Phase.FINISHED or r.id in padding):
                raise InvariantViolation(f"t={sched.now:.6f}s request {r.id} has {have} generated tokens but the "
                                         f"core counts {g}")

    def _check_memory(self, now: float) -> None:
        used, pool = self.cache.used_blocks, self.sched.pool
        if used > pool.used:
            raise InvariantViolation(f"t={now:.6f}s the KV cache holds {used} blocks but the core pool accounts for "
                                     f"only {pool.used} units")
