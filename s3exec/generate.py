"""The executor under `policy=hf`: each static batch the scheduler forms is served by `transformers`' own
`model.generate`, with its own KV cache (`DynamicCache`, grown by concatenation), timed on the wall clock.

The scheduler is the very `hf` policy the simulator drives, and the serving loop is the core's: when the
scheduler starts a batch, one `generate` call runs the whole batch (left-padded to its longest prompt,
greedy, as many new tokens as its longest member needs) while a stopping criterion timestamps every step;
the loop then walks through the batch's steps one iteration at a time with those times, so requests,
iterations and summaries are recorded exactly as for the paged executor. Tokens are `generate`'s.

Fixed mode ignores end-of-sequence (every member generates through the batch's longest length; a member's
output is its first `output_len` tokens). Natural mode is `generate` as shipped: a member ends at its first
end-of-sequence token (its row decodes padding after it) or at `max_seq_len`, and the batch when all have.
"""
from __future__ import annotations

import time

import numpy as np

from s3exec.base import ExecutorBase
from s3sim.core.errors import ConfigError, InvariantViolation
from s3sim.core.output import SchedulerOutput, StepOutcome
from s3sim.core.request import Request
from s3sim.core.results import Step

NO_TOKEN = -1  # an end-of-sequence id no vocabulary has: fixed mode never stops early


class GenerateExecutor(ExecutorBase):
    def __init__(self, loaded, scheduler, mode: str = "fixed", eos_ids=(), progress: bool = False,
                 clock=time.perf_counter, sleep=time.sleep, warmup: bool = True):
        from s3sim.core.policies.hf import HfScheduler

        super().__init__(scheduler, mode, eos_ids, progress, clock, sleep, warmup)
        if not isinstance(scheduler, HfScheduler):
            raise ConfigError(f"the generate executor serves policy=hf only, not {scheduler.name}")
        if mode == "natural" and scheduler.sizing == "actual":
            raise ConfigError("executor.mode=natural with policy.sizing=actual: batches would be sized by the "
                              "workload's lengths, not the model's, and could run out of memory; use "
                              "policy.sizing=max_len")
        self.loaded, self.model = loaded, loaded.model
        self.device = next(self.model.parameters()).device
        self.eos = tuple(int(e) for e in eos_ids)
        self.batches: list[dict] = []  # per generate call: rows, width, new tokens, seconds

    def warm_up(self, prompts) -> None:
        self._generate([list(map(int, p)) for p in prompts[:4]], 2)

    def begin(self) -> None:
        self._steps: list[float] = []
        self._tokens = None

    def peaks(self) -> dict:
        pool = self.sched.pool
        return {"peak_kv_blocks": pool.peak, "peak_kv_tokens": pool.peak * pool.unit_tokens}

    # ---- the backend verbs (see s3sim.core.serving) ------------------------------------------
    def execute(self, out: SchedulerOutput, t: float) -> Step:
        if out.prefill:  # a new batch: generate runs it whole; its first step is the prefill
            if self._steps:
                raise InvariantViolation(f"a batch started with {len(self._steps)} steps of the last one left")
            self._run_batch(out.prefill)
            self._rows = list(out.prefill)
            self._step = 0
            used = out.prefill_tokens + len(out.prefill)
        else:
            if not self._steps:
                raise InvariantViolation("a decode step was scheduled after generate returned its batch")
            if [r.id for r in out.decode] != [r.id for r in self._rows]:
                raise InvariantViolation("the scheduler's batch is not the batch generate is running")
            used = out.decode_ctx + out.decode_n
        padding = {m.id for m in out.padding}
        j = self._step
        end = self._steps.pop(0)
        for i, r in enumerate(self._rows):
            if r.id in padding:
                continue
            s = self.seqs[r.id]
            s.tokens.append(int(self._tokens[i, j]))
            s.times.append(end)
        self._step += 1
        return Step(1, np.array([end - t]), end, int(used))

    def settle(self, out: SchedulerOutput, outcome: StepOutcome) -> None:
        """Tokens are conserved: every member holds as many tokens as the core counts for it."""
        padding = {m.id for m in out.padding} | {r.id for r in outcome.finished}
        for r in self._rows:
            if r.id in padding:
                continue
            if self.seqs[r.id].count != self.sched.progress(r):
                raise InvariantViolation(f"t={self.sched.now:.6f}s request {r.id} has {self.seqs[r.id].count} "
                                         f"generated tokens but the core counts {self.sched.progress(r)}")
        if outcome.finished and self._steps:
            raise InvariantViolation(f"the batch returned with {len(self._steps)} steps of generate left over")
        self.sched.pool.check()
        self._bar.update(len(outcome.finished))

    # ---- one batch --------------------------------------------------------------------------
    def _run_batch(self, members: list[Request]) -> None:
        """One `generate` call for the whole batch: its tokens and the end time of each of its steps."""
        prompts = [self.seqs[r.id].tokens for r in members]
        if self.mode == "fixed":
            new = max(r.output_len for r in members)
        else:
            new = max(self.seqs[r.id].cap for r in members)
        tokens, times = self._generate(prompts, new)
        if self.mode == "natural":
            lengths = self._natural_lengths(tokens, [self.seqs[r.id].cap for r in members])
            for r, n in zip(members, lengths):
                self.sched.set_output_len(r, n)
            times = times[:max(lengths)]
        if len(times) != max(r.output_len for r in members):
            raise InvariantViolation(f"generate ran {len(times)} steps for a batch whose longest member needs "
                                     f"{max(r.output_len for r in members)}")
        self._tokens = tokens
        self._steps = [t - self._t0 for t in times]
        self.batches.append({"rows": len(members), "width": max(map(len, prompts)), "steps": len(times),
                             "seconds": times[-1] - times[0] if times else 0.0})

    def _natural_lengths(self, tokens: np.ndarray, caps: list[int]) -> list[int]:
        """Each row's length under generate's own stopping: through its first end-of-sequence token, or its cap."""
        lengths = []
        for row, cap in zip(tokens, caps):
            hits = np.flatnonzero(np.isin(row[:cap], self.eos))
            lengths.append(int(hits[0]) + 1 if len(hits) else min(cap, len(row)))
        return lengths

    def _generate(self, prompts: list[list[int]], new_tokens: int):
        """Greedy `generate` of left-padded `prompts`: ([rows, new_tokens] token ids, the clock after each step)."""
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        clock = self.clock

        class Timestamps(StoppingCriteria):
            """Called once per step, after its tokens are chosen: records when, stops nothing."""

            def __init__(self):
                self.times = []

            def __call__(self, input_ids, scores, **kwargs):
                if input_ids.device.type == "cuda":
                    torch.cuda.synchronize(input_ids.device)
                self.times.append(clock())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        if self.model.config._attn_implementation != "sdpa":  # the paged runner may share this model
            self.model.set_attn_implementation("sdpa")
        width = max(map(len, prompts))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        eos = NO_TOKEN if self.mode == "fixed" else list(self.eos)
        pad = self.eos[0] if self.mode == "natural" else 0
        gc = GenerationConfig(do_sample=False, max_new_tokens=int(new_tokens), eos_token_id=eos, pad_token_id=pad)
        stamps = Timestamps()
        # generate merges the model's own generation settings (sampling, repetition penalty, ...) into unset
        # fields: a blank one during the call keeps decoding greedy and plain, as the paged executor's argmax
        saved, self.model.generation_config = self.model.generation_config, GenerationConfig()
        try:
            with torch.inference_mode():
                out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gc,
                                          stopping_criteria=StoppingCriteriaList([stamps]))
        finally:
            self.model.generation_config = saved
        return out[:, width:].cpu().numpy(), stamps.times


def generate_reference(model, prompts, lengths, eos=None) -> list[list[int]]:
    """`model.generate`'s greedy tokens for each prompt alone (SDPA attention, no paging): the reference the
    executor's tokens must equal. `eos=None` never stops early (fixed lengths)."""
    import torch

    impl, saved = model.config._attn_implementation, model.generation_config.eos_token_id
    model.set_attn_implementation("sdpa")
    model.generation_config.eos_token_id = eos
    device = next(model.parameters()).device
    try:
        refs = []
        with torch.inference_mode():
            for p, n in zip(prompts, lengths):
                ids = torch.tensor([list(p)], device=device)
                out = model.generate(ids, max_new_tokens=int(n), do_sample=False, pad_token_id=0,
                                     attention_mask=torch.ones_like(ids))
                refs.append(out[0, len(p):].tolist())
        return refs
    finally:
        model.set_attn_implementation(impl)
        model.generation_config.eos_token_id = saved
