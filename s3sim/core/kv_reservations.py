"""The KV managers of the policies that hold memory up front, beside the paged ones of `kv_blocks`.

A policy is an admission order over one KV manager, with a token budget that is a local value of each
iteration's batch (`SchedulerOutput.budget`). Each manager owns its requests' memory in the pool (`KVPool`,
still the one place where capacity is enforced), so a policy asks it what a request needs and has it take,
grow and free that memory, instead of doing the arithmetic itself:

* `Reservations` (ORCA, FasterTransformer, S3, the oracle): an admitted request holds its prompt plus the
  output tokens reserved for it, in tokens (`block_size` 1) or in whole blocks; a reservation grows only when
  the policy grows it (S3's supervisor) and is freed whole.
* `CopiedCache` (transformers' `generate`): a static batch's cache, rows of the padded prompt that grow one
  token a decode step by copying, with one layer's old keys or values held for a moment (`peak_tokens`).
* `kv_blocks.Blocks` and `kv_blocks.CachedBlocks` (paged, vLLM): blocks allocated as a request's context
  grows, without and with the prefix cache.
"""
from __future__ import annotations

import numpy as np

from s3sim.core.errors import InvariantViolation


class Reservations:
    """Each request holds its prompt plus a reserved number of output tokens, rounded up to the pool's units."""

    def __init__(self, pool):
        self.pool = pool
        self._unit = pool.unit_tokens

    @property
    def free(self) -> int:
        return self.pool.free

    def units(self, prompt: int, out: int) -> int:
        """Units holding a prompt of `prompt` tokens and `out` output tokens (the pool's `units_for`, inline: a
        static batch asks it for every member as it forms)."""
        return -(-int(prompt + out) // self._unit)

    def fits(self, units: int) -> bool:
        pool = self.pool
        return units <= pool.capacity - pool.used

    def held(self, r) -> int:
        return self.pool.held[r.id]

    def take(self, r, units: int) -> None:
        self.pool.reserve(r.id, units)

    def grow(self, r, units: int) -> None:
        self.pool.grow(r.id, units)

    def release(self, r, preempted: bool = False) -> None:
        """Free `r`'s reservation as it finishes or is preempted."""
        self.pool.release(r.id)

    def release_partial(self, r) -> None:
        raise InvariantViolation(f"t={self.pool.now:.6f}s request {r.id} was preempted part-way through its prefill, "
                                 f"but its reservation held its whole prompt from admission")

    def shared_blocks(self) -> int:
        return 0


def copy_held(cached: int, layers: int | None) -> int:
    """KV tokens held twice while a cache of `cached` tokens is copied into a longer one: one of its 2 x `layers`
    tensors (a layer's keys or values), rounded up; with no layer count, the whole cache (the bound when it is
    copied at once)."""
    return cached if layers is None else -(-cached // (2 * layers))


def peak_tokens(batch: int, prompt: int, longest: int, layers: int | None = None) -> int:
    """KV tokens a batch of `batch` rows, left-padded to `prompt` tokens, holds at its peak when its longest
    member generates `longest` tokens, on a model of `layers` layers. As for every policy, a row's KV counts the
    token it has just produced (the next step writes it): the prefill leaves prompt + 1 per row; decode step j
    grows every row from prompt + j - 1 cached tokens to prompt + j and counts prompt + j + 1, while the old
    buffer of the layer being copied is held too (`copy_held`); the last step is j = longest - 1, so the peak is
    batch x (prompt + longest) plus one layer's share of batch x (prompt + longest - 2)."""
    if longest <= 1:  # no decode step, no copy
        return batch * (prompt + 1)
    return batch * (prompt + longest) + copy_held(batch * (prompt + longest - 2), layers)


class CopiedCache(Reservations):
    """A static batch's cache as transformers' `DynamicCache` holds it (see the module's docstring): each row
    is a reservation of the batch's padded prompt plus its first token, every decode step grows every row by one
    token (allocated for the batch as a whole, attributed to each row when the batch ends), and the copy's old
    buffer of one layer is held for a moment on top. `layers`: None (built by hand, without a model) takes the
    whole cache to be copied at once."""

    def __init__(self, pool, layers: int | None = None):
        super().__init__(pool)
        self.layers = layers
        self.copied_tokens = 0  # KV tokens copied by growth, over the run

    @property
    def capacity(self) -> int:
        return self.pool.capacity

    def peak(self, rows: int, width: int, longest: int) -> int:
        """Tokens a batch of `rows` rows padded to `width` holds at its peak when its longest output is `longest`."""
        return peak_tokens(rows, width, longest, self.layers)

    def take_row(self, r, width: int) -> None:
        """`r` joins the batch as a row of the padded prompt and its first token."""
        self.pool.reserve(r.id, width + 1)

    def profile(self, k: int, rows: int) -> np.ndarray:
        """Tokens held during each of the next k steps: a decode step grows every row by one token."""
        return self.pool.used * self.pool.unit_tokens + rows * np.arange(1, k + 1, dtype=np.int64)

    def grow_rows(self, rows: int, k: int) -> None:
        """k decode steps of a batch of `rows` rows: each grows every row by one token, copying the cache, with
        one layer's old keys or values held while they are copied (the last step's, the largest)."""
        cached = self.pool.used - rows  # tokens in the cache before the first of these steps
        self.copied_tokens += k * cached + rows * k * (k - 1) // 2
        self.pool.grow_lazily(k * rows)
        self.pool.hold_briefly(copy_held(cached + (k - 1) * rows, self.layers),
                               f"the hf batch of {rows} rows copying its cache")

    def settle(self, r, tokens: int) -> None:
        """The batch ended: row `r` holds `tokens` (its padded prompt, its decode steps and its last token), its
        share of the batch's growth, before it is freed."""
        self.pool.settle(r.id, tokens)
