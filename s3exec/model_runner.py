"""One forward pass of an iteration: batched prefill and batched decode over the paged cache, greedy.

The caller says which sequences decode (their last token, at the next position of their cached context)
and which prefill: all their tokens from an empty cache (new requests and recomputed ones), or, with
chunked prefill, the next chunk of a prompt whose first tokens are already cached (`(id, tokens, prefix)`). The runner
takes the cache blocks they need, lays the step out for the attention function and returns the next
token of every sequence, decode ones first. Prefills beyond `max_batch_tokens` tokens go through further
forward passes of the same iteration, which bounds activation memory when hundreds of requests join at once.
With `cuda_graphs`, a decode-only step whose batch fits the captured ladder replays a CUDA graph
(`s3exec.cuda_graphs`); everything else runs eagerly. With `keep_hidden` (a re-predictor reading the served
model's states), every step runs eagerly and `hidden` holds the final norm's output for each returned token,
in the same order.
"""
from __future__ import annotations

import numpy as np
import torch

from s3exec.attention import StepLayout, pool_block_mask, register
from s3exec.kv_cache import KVCache
from s3sim.core.errors import ConfigError, InvariantViolation


class ModelRunner:
    def __init__(self, model, cache: KVCache, max_batch_tokens: int | None = None, kernel: str = "sdpa",
                 cuda_graphs: bool = False, graph_sizes=None):
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.cache = cache
        self.device = cache.data.device
        self.kernel = kernel
        self.attn = register()
        self.graphs = None
        self.keep_hidden = False  # also return the last layer's state of each row (`hidden`): a re-predictor reads it
        self.hidden: list = []
        self._norm_out = None
        self._hooked = False
        if cuda_graphs:
            from s3exec.cuda_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(self, graph_sizes)

    def _tensor(self, a, dtype=torch.int64) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=self.device, dtype=dtype)

    def layout(self, decode: list[tuple[int, int]], prefill: list[tuple[int, list[int]]]):
        """Inputs of one step: token ids, positions, the last position of each sequence and the layout."""
        c = self.cache
        bs = c.block_size
        ids, pos, slots = [], [], []
        step = StepLayout(cache=c, slots=None, n_decode=len(decode), kernel=self.kernel)
        if decode:
            rows, p, s = self.grow_decodes(decode)
            ids.append(np.fromiter((t for _, t in decode), np.int64, len(decode)))
            pos.append(p)
            slots.append(s)
            nb = int(c.nblocks[rows].max())
            self.decode_attention(step, self._tensor(c.table[rows, :nb]), self._tensor(c.nblocks[rows]),
                                  self._tensor(p))
        if prefill:
            lens = np.array([len(p[1]) for p in prefill], dtype=np.int64)
            prefix = np.array([p[2] if len(p) > 2 else 0 for p in prefill], dtype=np.int64)
            rows = np.empty(len(prefill), dtype=np.int64)
            for i, (p, n, k) in enumerate(zip(prefill, lens, prefix)):
                rid, toks = p[0], p[1]
                if k and rid not in c.row:
                    raise InvariantViolation(f"request {rid} continues a prefill at token {k} but holds no KV")
                r = c.allocate(rid, int(k + n))
                c.length[r] = k + n
                rows[i] = r
                ids.append(np.asarray(toks, dtype=np.int64))
                pos.append(np.arange(k, k + n))
                slots.append(c.slots(r, int(k), int(k + n)))
            starts = np.cumsum(lens) - lens
            whole = prefix == 0
            if whole.any():
                step.pre_index, step.pre_valid, valid = self._packed(starts[whole], lens[whole])
                ar = np.arange(int(lens[whole].max()))
                causal = ar[None, :] <= ar[:, None]
                step.pre_mask = self._tensor(causal[None] & valid[:, None, :], torch.bool)[:, None]
            if not whole.all():
                part = ~whole
                step.ctx_index, step.ctx_valid, valid = self._packed(starts[part], lens[part])
                r, k = rows[part], prefix[part]
                nb = int(c.nblocks[r].max())
                qpos = k[:, None] + np.arange(valid.shape[1])[None, :]  # [C, L] position of each query
                if self.kernel == "flex":
                    step.ctx_flex = pool_block_mask(self._tensor(c.table[r, :nb]), self._tensor(c.nblocks[r]),
                                                    self._tensor(np.where(valid, qpos, -1)), c.data.shape[2], bs)
                else:
                    step.ctx_blocks = self._tensor(c.table[r, :nb])
                    keys = np.arange(nb * bs)
                    mask = (keys[None, None, :] <= qpos[:, :, None]) | ~valid[:, :, None]  # padding rows see all
                    step.ctx_mask = self._tensor(mask, torch.bool)[:, None]
        step.slots = self._tensor(np.concatenate(slots))
        ids = np.concatenate(ids)
        pos = np.concatenate(pos)
        last = np.arange(len(decode))
        if prefill:
            last = np.concatenate([last, len(decode) + np.cumsum(lens) - 1])
        return ids, pos, last, step

    def decode_attention(self, step: StepLayout, table: torch.Tensor, nblocks: torch.Tensor,
                         pos: torch.Tensor) -> None:
        """Where each decode reads its keys: `table` [n, blocks] of physical blocks, `nblocks` [n] of them in
        use and `pos` [n], the position of its new token (it sees keys up to there). Tensor operations only,
        so a captured decode step makes the same layout from its static buffers."""
        bs = self.cache.block_size
        if self.kernel == "flex":
            step.dec_flex = pool_block_mask(table, nblocks, pos[:, None], self.cache.data.shape[2], bs)
        else:
            step.dec_blocks = table
            keys = torch.arange(table.shape[1] * bs, device=pos.device)
            step.dec_mask = (keys[None, :] <= pos[:, None])[:, None, None, :]

    def grow_decodes(self, decode: list[tuple[int, int]]):
        """Each decoding sequence's row, the position its token takes and that position's cache slot (taking a
        block where a sequence crosses into a new one)."""
        c = self.cache
        rows = np.fromiter((c.row[rid] for rid, _ in decode), np.int64, len(decode))
        p = c.length[rows].copy()
        c.ensure(rows, p + 1)
        c.length[rows] = p + 1
        return rows, p, c.table[rows, p // c.block_size] * c.block_size + p % c.block_size

    def _packed(self, starts: np.ndarray, lens: np.ndarray):
        """Padded [n, longest] indices of sequences laid side by side in the packed prefill part."""
        ar = np.arange(int(lens.max()))
        valid = ar[None, :] < lens[:, None]
        index = np.where(valid, starts[:, None] + ar[None, :], 0)
        return self._tensor(index), self._tensor(valid, torch.bool), valid

    @torch.inference_mode()
    def step(self, decode: list[tuple[int, int]], prefill: list[tuple[int, list[int]]]) -> list[int]:
        """Next greedy token for each (request id, last token) in `decode`, then each (request id,
        tokens[, cached prefix]) in `prefill`."""
        if self.model.config._attn_implementation != self.attn:  # the model may be shared with generate()
            self.model.set_attn_implementation(self.attn)
        limit = self.max_batch_tokens or float("inf")
        chunks, size = [[]], len(decode)
        for seq in prefill:
            if chunks[-1] and size + len(seq[1]) > limit:
                chunks.append([])
                size = 0
            chunks[-1].append(seq)
            size += len(seq[1])
        self.hidden = []
        if self.keep_hidden:
            self._hook_final_norm()
        elif self.graphs is not None and decode and not prefill and self.graphs.fits(len(decode)):
            return self.graphs.run(decode)
        out = self._forward(decode, chunks[0]) if decode or chunks[0] else []
        for chunk in chunks[1:]:
            out += self._forward([], chunk)
        return out

    def _forward(self, decode, prefill) -> list[int]:
        ids, pos, last, layout = self.layout(decode, prefill)
        keep = self._tensor(last)
        out = self.model(input_ids=self._tensor(ids)[None], position_ids=self._tensor(pos)[None],
                         logits_to_keep=keep, use_cache=False, s3exec_step=layout)
        if self.keep_hidden:
            self.hidden.extend(self._norm_out[0, keep].float().cpu().numpy())
        return out.logits[0].argmax(-1).tolist()

    def _hook_final_norm(self) -> None:
        """Keep the output of the model's final norm (the state its head reads) at every forward."""
        if self._hooked:
            return
        norm = getattr(getattr(self.model, "model", None), "norm", None)
        if norm is None:
            raise ConfigError(f"{type(self.model).__name__} has no model.norm whose output a re-predictor could read")

        def keep(_module, _inputs, output):
            self._norm_out = output

        norm.register_forward_hook(keep)
        self._hooked = True
