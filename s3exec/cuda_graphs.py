"""Decode steps replayed from CUDA graphs, captured at a ladder of batch sizes as serving engines do.

A decode step of a small model on a GPU is mostly the CPU launching kernels one by one from Python: for
a 7B model eager `transformers` costs more than the step's own memory traffic. So each decode batch size
of the ladder (1, 2, 4, 8, then steps of 16 and 32 up to 256) is captured once into a CUDA graph over
static input buffers: token ids, positions, the cache slot each new token writes, the block table
(`max_blocks` wide) and the sequence lengths. A step of n decodes is padded to the next captured size:
the padding rows write their keys into the cache's scratch block and read only it, and their outputs are
dropped. Steps with prefill tokens, and batches larger than the top of the ladder, run eagerly.

The capture itself goes through a small backend (`CudaGraphBackend`), so the logic here (sizes, buffers,
padding, replay) is tested on a CPU with a backend that replays by running the captured function again.
"""
from __future__ import annotations

import numpy as np
import torch

from s3exec.attention import StepLayout

LADDER = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 224, 256)


def ladder(max_batch: int = 256, sizes=LADDER) -> tuple[int, ...]:
    """The captured sizes up to `max_batch` (and `max_batch` itself when it falls between two)."""
    out = [s for s in sizes if s < max_batch]
    return tuple(out + [max_batch]) if max_batch > 0 else ()


def padded_size(n: int, sizes) -> int | None:
    """The smallest captured size that holds `n` decodes (None: run eagerly)."""
    for s in sizes:
        if s >= n:
            return s
    return None


class CudaGraphBackend:
    """Capture with `torch.cuda.graph` (after warm-up runs on a side stream), sharing one memory pool."""

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self.pool = None

    def capture(self, fn):
        """Returns (graph, outputs of `fn` inside the graph): `graph.replay()` reruns it on the same buffers."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn()
        self.pool = graph.pool()
        return graph, out


class Buffers:
    """The static inputs of one captured size."""

    def __init__(self, size: int, max_blocks: int, scratch: int, block_size: int, device):
        z = dict(dtype=torch.int64, device=device)
        self.size = size
        self.ids = torch.zeros(size, **z)
        self.pos = torch.zeros(size, **z)
        self.slots = torch.full((size,), scratch * block_size, **z)
        self.table = torch.full((size, max_blocks), scratch, **z)
        self.nblocks = torch.ones(size, **z)
        self.keep = torch.arange(size, **z)

    def fill(self, ids, pos, slots, table, nblocks, scratch: int, block_size: int) -> None:
        """Copy one step's inputs in (n rows) and reset the padding rows to the scratch block."""
        n = len(ids)
        put = lambda buf, a: buf[:n].copy_(torch.from_numpy(np.ascontiguousarray(a)), non_blocking=True)  # noqa: E731
        put(self.ids, ids)
        put(self.pos, pos)
        put(self.slots, slots)
        put(self.table[:, :table.shape[1]], table)
        self.table[:n, table.shape[1]:] = scratch
        put(self.nblocks, nblocks)
        if n < self.size:
            self.ids[n:] = 0
            self.pos[n:] = 0
            self.slots[n:] = scratch * block_size
            self.table[n:] = scratch
            self.nblocks[n:] = 1


class DecodeGraphs:
    """Captured decode steps of one `ModelRunner` (see the module doc)."""

    def __init__(self, runner, sizes=None, backend=None):
        cache = runner.cache
        self.runner = runner
        self.sizes = tuple(sorted(sizes or ladder()))
        self.backend = backend or CudaGraphBackend()
        self.bs, self.scratch, self.max_blocks = cache.block_size, cache.scratch, cache.max_blocks
        self.graphs: dict[int, tuple[object, torch.Tensor, Buffers]] = {}
        self.replays = 0
        self.padded_rows = 0

    def fits(self, n: int) -> bool:
        return padded_size(n, self.sizes) is not None

    def _forward(self, buf: Buffers) -> torch.Tensor:
        """One decode step over the static buffers; the mask is made inside, from the lengths in `buf`."""
        runner = self.runner
        step = StepLayout(cache=runner.cache, slots=buf.slots, n_decode=buf.size, kernel=runner.kernel)
        runner.decode_attention(step, buf.table, buf.nblocks, buf.pos)
        out = runner.model(input_ids=buf.ids[None], position_ids=buf.pos[None], logits_to_keep=buf.keep,
                           use_cache=False, s3exec_step=step)
        return out.logits[0].argmax(-1)

    def capture(self, size: int) -> None:
        buf = Buffers(size, self.max_blocks, self.scratch, self.bs, self.runner.device)
        with torch.inference_mode():
            graph, tokens = self.backend.capture(lambda: self._forward(buf))
        self.graphs[size] = (graph, tokens, buf)

    def capture_all(self) -> None:
        """Capture every size, largest first (the smaller ones then reuse its memory pool)."""
        for size in sorted(self.sizes, reverse=True):
            if size not in self.graphs:
                self.capture(size)

    def run(self, decode: list[tuple[int, int]]) -> list[int]:
        """Next greedy token of each (request id, last token): the step padded to a captured size and replayed."""
        n = len(decode)
        size = padded_size(n, self.sizes)
        if size not in self.graphs:
            self.capture(size)
        graph, tokens, buf = self.graphs[size]
        rows, pos, slots = self.runner.grow_decodes(decode)
        cache = self.runner.cache
        nb = int(cache.nblocks[rows].max())
        buf.fill(np.fromiter((t for _, t in decode), np.int64, n), pos, slots, cache.table[rows, :nb],
                 cache.nblocks[rows], self.scratch, self.bs)
        graph.replay()
        self.replays += 1
        self.padded_rows += size - n
        return tokens[:n].tolist()
