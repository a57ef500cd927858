"""The executor's KV cache: one preallocated tensor of fixed-size blocks, a block table per request, and
host memory for swapped-out requests.

Every policy runs on blocks of the same size (16 tokens by default, as the profile is measured). For
paged policies a block is a core pool unit, one for one. For reservation policies, whose pool counts single
tokens, the cache holds the pool's tokens in whole blocks plus one partial block for each request that may
hold KV at once (`slack_blocks`: the rounding a block layout costs, which the core's accounting does not
see). Blocks are taken only as a request's KV really grows, which never exceeds what the core reserved for
it. So the core's accounting alone decides admission, and a failed allocation here means the core was
wrong: an `InvariantViolation`. One more block, `scratch`, is never handed out: padded rows of a captured
decode step write there.
"""
from __future__ import annotations

import numpy as np
import torch

from s3sim.core.errors import InvariantViolation


class KVCache:
    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, num_blocks: int, block_size: int,
                 max_tokens_per_seq: int, dtype=torch.float32, device="cpu", slack_blocks: int = 0):
        self.block_size = int(block_size)
        self.slack_blocks = int(slack_blocks)
        self.num_blocks = int(num_blocks) + self.slack_blocks
        self.scratch = self.num_blocks
        self.max_blocks = -(-int(max_tokens_per_seq) // self.block_size)
        self.data = torch.zeros(num_layers, 2, self.num_blocks + 1, self.block_size, kv_heads, head_dim,
                                dtype=dtype, device=device)
        self.free = np.arange(self.num_blocks - 1, -1, -1, dtype=np.int64)  # a stack: pop from the end
        self.nfree = self.num_blocks
        self.table = np.zeros((0, self.max_blocks), dtype=np.int64)  # row -> physical blocks
        self.nblocks = np.zeros(0, dtype=np.int64)
        self.length = np.zeros(0, dtype=np.int64)  # tokens written per row
        self.row: dict[int, int] = {}
        self._free_rows: list[int] = []
        self.host: dict[int, tuple[torch.Tensor, int]] = {}  # swapped out: (KV, tokens)
        self.peak_blocks = 0

    @classmethod
    def for_pool(cls, pool, num_layers: int, kv_heads: int, head_dim: int, max_tokens_per_seq: int,
                 max_holders: int, block_size: int = 16, **kw) -> "KVCache":
        """The cache of a core pool: its own blocks for a paged pool; for a token pool, its tokens in blocks
        of `block_size` plus one partial block per request that may hold KV at once (`max_holders`)."""
        if pool.unit_tokens > 1:
            return cls(num_layers, kv_heads, head_dim, pool.capacity, pool.unit_tokens, max_tokens_per_seq, **kw)
        return cls(num_layers, kv_heads, head_dim, -(-pool.capacity // block_size), block_size, max_tokens_per_seq,
                   slack_blocks=max(1, int(max_holders)), **kw)

    # ---- sizes ------------------------------------------------------------------------------
    @property
    def used_blocks(self) -> int:
        return self.num_blocks - self.nfree

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def tokens(self, rid: int) -> int:
        """KV entries written for `rid` (0 if it holds none)."""
        r = self.row.get(rid)
        return 0 if r is None else int(self.length[r])

    def holds(self, rid: int) -> bool:
        return rid in self.row

    # ---- allocation -------------------------------------------------------------------------
    def _row(self, rid: int) -> int:
        r = self.row.get(rid)
        if r is not None:
            return r
        if not self._free_rows:
            n = len(self.nblocks)
            grow = max(16, n)
            self.table = np.concatenate([self.table, np.zeros((grow, self.max_blocks), np.int64)])
            self.nblocks = np.concatenate([self.nblocks, np.zeros(grow, np.int64)])
            self.length = np.concatenate([self.length, np.zeros(grow, np.int64)])
            self._free_rows.extend(range(n + grow - 1, n - 1, -1))
        r = self._free_rows.pop()
        self.row[rid] = r
        return r

    def _take(self, n: int, why: str) -> np.ndarray:
        if n > self.nfree:
            raise InvariantViolation(
                f"KV cache out of blocks: {why} needs {n} but {self.nfree} of {self.num_blocks} are free, "
                f"although the core pool admitted it")
        self.nfree -= n
        out = self.free[self.nfree:self.nfree + n][::-1].copy()
        self.peak_blocks = max(self.peak_blocks, self.used_blocks)
        return out

    def ensure(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        """Give each row enough blocks for `tokens` slots (vectorised: decode grows every row by one)."""
        need = -(-tokens // self.block_size)
        if (need > self.max_blocks).any():
            i = int(np.argmax(need > self.max_blocks))
            raise InvariantViolation(f"a request needs {int(tokens[i])} KV slots, more than the "
                                     f"{self.max_blocks * self.block_size} a sequence may hold")
        extra = need - self.nblocks[rows]
        grow = extra > 0
        if not grow.any():
            return
        rows, extra, start = rows[grow], extra[grow], self.nblocks[rows[grow]]
        blocks = self._take(int(extra.sum()), f"growing {len(rows)} requests")
        owner = np.repeat(np.arange(len(rows)), extra)
        col = np.repeat(start - np.cumsum(extra) + extra, extra) + np.arange(len(owner))
        self.table[rows[owner], col] = blocks
        self.nblocks[rows] += extra

    def allocate(self, rid: int, tokens: int) -> int:
        """Row of `rid`, with blocks for `tokens` slots."""
        r = self._row(rid)
        self.ensure(np.array([r]), np.array([tokens]))
        return r

    def release(self, rid: int) -> None:
        r = self.row.pop(rid)
        n = int(self.nblocks[r])
        self.free[self.nfree:self.nfree + n] = self.table[r, :n][::-1]
        self.nfree += n
        self.table[r, :n] = 0
        self.nblocks[r] = self.length[r] = 0
        self._free_rows.append(r)

    # ---- slots ------------------------------------------------------------------------------
    def slots(self, row: int, start: int, stop: int) -> np.ndarray:
        """Flat slot indices of positions start..stop-1 of a row."""
        pos = np.arange(start, stop)
        return self.table[row, pos // self.block_size] * self.block_size + pos % self.block_size

    # ---- swap -------------------------------------------------------------------------------
    def swap_out(self, rid: int) -> int:
        """Copy `rid`'s KV to host memory and free its blocks; returns the tokens moved."""
        r = self.row[rid]
        n, tokens = int(self.nblocks[r]), int(self.length[r])
        idx = torch.from_numpy(self.table[r, :n].copy()).to(self.data.device)
        kv = self.data.index_select(2, idx)
        host = kv.to("cpu", copy=True)
        if host.device != kv.device and torch.cuda.is_available():
            host = host.pin_memory()
        self.host[rid] = (host, tokens)
        self.release(rid)
        return tokens

    def swap_in(self, rid: int) -> int:
        """Copy `rid`'s KV back from host memory into fresh blocks; returns the tokens moved."""
        host, tokens = self.host.pop(rid)
        r = self.allocate(rid, tokens)
        self.length[r] = tokens
        n = int(self.nblocks[r])
        idx = torch.from_numpy(self.table[r, :n].copy()).to(self.data.device)
        self.data.index_copy_(2, idx, host[:, :, :n].to(self.data.device, non_blocking=True))
        return tokens

    def drop_host(self, rid: int) -> None:
        self.host.pop(rid, None)

    def check_empty(self) -> None:
        if self.row or self.nfree != self.num_blocks or self.host:
            raise InvariantViolation(
                f"run ended with KV blocks still held: {len(self.row)} requests on the device "
                f"({self.num_blocks - self.nfree} blocks), {len(self.host)} in host memory")
