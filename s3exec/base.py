"""What both executors share: the requests' sequences, the run around the core's serving loop (`ExecutorBase.run`:
warm-up, the clock, the loop driven to its end, every token counted as the core counted it) and the backend
verbs that only wait on the wall clock. `s3exec.engine.Executor` runs the model over a paged KV cache;
`s3exec.generate.GenerateExecutor` lets `transformers`' `generate` serve `policy=hf`'s batches.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from s3exec.progress import Progress
from s3sim.core.errors import ConfigError, InvariantViolation
from s3sim.core.request import Request
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


class ExecutorBase:
    """The run and the waiting verbs of an executor; a subclass gives `execute`, `settle`, `warm_up` and the
    cache's peaks (`peaks`), and may check its cache at the end (`check_drained`)."""

    def __init__(self, scheduler, mode: str = "fixed", eos_ids=(), progress: bool = False,
                 clock=time.perf_counter, sleep=time.sleep, warmup: bool = True):
        check_mode(mode, eos_ids)
        self.sched, self.mode = scheduler, mode
        self.progress = progress
        self.clock, self.sleep = clock, sleep
        self.warmup = warmup

    def run(self, requests: list[Request], prompts: list[list[int]], caps=None) -> ExecResult:
        """Serve `requests` (sorted by arrival, ids 0..n-1) whose prompt tokens are `prompts`; `caps` bounds
        each request's output in natural mode (default: its output_len)."""
        self.seqs = make_seqs(requests, prompts, caps)
        if self.warmup:
            self.warm_up(prompts)
        self._bar = Progress(len(requests), self.progress)
        self._inbox, log = Inbox(requests, predict_s=self.sched.predict_s), IterationLog()
        self.begin()
        self._t0 = self.clock()
        end, steps = drive(serve(self.sched, self, self._inbox, log))
        self._bar.close()
        self.check_drained()
        for r in requests:
            if self.seqs[r.id].count != r.output_len:
                raise InvariantViolation(f"request {r.id} finished with {self.seqs[r.id].count} tokens "
                                         f"generated, the core counted {r.output_len}")
        pool = self.sched.pool
        return ExecResult(requests, log, self.sched, end, steps, pool.capacity * pool.unit_tokens,
                          outputs={i: s.generated for i, s in self.seqs.items()},
                          token_times={i: s.times for i, s in self.seqs.items()}, **self.peaks())

    def warm_up(self, prompts) -> None:
        """Untimed work before the clock starts (none here)."""

    def begin(self) -> None:
        """Set up what one run keeps, just before the clock starts (nothing here)."""

    def check_drained(self) -> None:
        """At the end of a run: the engine's own memory holds nothing (nothing to check here)."""

    def peaks(self) -> dict:
        """`peak_kv_blocks` and `peak_kv_tokens` of the run."""
        raise NotImplementedError

    # ---- the backend verbs that only wait (see s3sim.core.serving) -----------------------------
    def wait(self, step: Step) -> Step:
        return step  # the work took the time already

    def idle(self, t: float) -> float:
        wait_until(self.clock, self.sleep, self._t0 + self._inbox.next_arrival)
        return self.clock() - self._t0
