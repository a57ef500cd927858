"""Attention over the paged KV cache, plugged into `transformers` through its attention interface.

The model runs as usual on one packed row of tokens (every sequence of the iteration side by side), so
every projection and MLP is one batched matmul; only attention needs to know where each sequence's keys
are. For each layer this function writes the new keys and values into the cache, then answers the
decode tokens (one per running sequence, attending to its whole cached context, gathered block by block
and padded), the prefill tokens (whole sequences, causal within themselves, padded) and the chunks that
continue a partly prefilled prompt (attending to its cached prefix and causally to themselves) with one
SDPA call each. The layout of the step travels in the `s3exec_step` keyword argument.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NAME = "s3exec_paged"


@dataclass
class StepLayout:
    """Where the packed tokens of one iteration go: decode tokens first, then prefill sequences."""
    cache: object  # KVCache
    slots: torch.Tensor  # [T] flat cache slot of every new token
    n_decode: int
    dec_blocks: torch.Tensor | None = None  # [n_decode, blocks] physical blocks to read (0-padded)
    dec_mask: torch.Tensor | None = None  # [n_decode, 1, 1, blocks * block_size] keys that exist
    pre_index: torch.Tensor | None = None  # [n_prefill, L] positions in the packed prefill part (padded)
    pre_mask: torch.Tensor | None = None  # [n_prefill, 1, L, L] causal and not padding
    pre_valid: torch.Tensor | None = None  # [n_prefill, L] real (not padding) positions
    # prefill chunks that continue a prompt already partly in the cache (chunked prefill)
    ctx_index: torch.Tensor | None = None  # [n_chunks, L] positions in the packed prefill part (padded)
    ctx_valid: torch.Tensor | None = None  # [n_chunks, L]
    ctx_blocks: torch.Tensor | None = None  # [n_chunks, blocks] physical blocks of prefix and chunk
    ctx_mask: torch.Tensor | None = None  # [n_chunks, 1, L, blocks * block_size] causal over the whole context


def paged_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """query [1, H, T, D], key/value [1, KVH, T, D] -> ([1, T, H, D], None)."""
    step: StepLayout = kwargs["s3exec_step"]
    data = step.cache.data[module.layer_idx]  # [2, blocks, block_size, KVH, D]
    _, kvh, n_tok, d = key.shape
    q = query[0].transpose(0, 1)  # [T, H, D]
    k = key[0].transpose(0, 1)  # [T, KVH, D]
    v = value[0].transpose(0, 1)
    data[0].view(-1, kvh, d).index_copy_(0, step.slots, k.to(data.dtype))
    data[1].view(-1, kvh, d).index_copy_(0, step.slots, v.to(data.dtype))
    out = torch.empty_like(q)
    nd = step.n_decode
    gqa = q.shape[1] != kvh
    if nd:
        b = step.dec_blocks
        kc = data[0].index_select(0, b.reshape(-1)).view(nd, -1, kvh, d).transpose(1, 2)
        vc = data[1].index_select(0, b.reshape(-1)).view(nd, -1, kvh, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(q[:nd].unsqueeze(2), kc.to(q.dtype), vc.to(q.dtype),
                                           attn_mask=step.dec_mask, scale=scaling, enable_gqa=gqa)
        out[:nd] = o.squeeze(2)
    if step.pre_index is not None:
        idx = step.pre_index
        qp = q[nd:][idx].transpose(1, 2)  # [P, H, L, D]
        kp = k[nd:][idx].transpose(1, 2)
        vp = v[nd:][idx].transpose(1, 2)
        o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=step.pre_mask, scale=scaling, enable_gqa=gqa)
        if step.ctx_index is None:
            out[nd:] = o.transpose(1, 2)[step.pre_valid]
        else:
            out[nd + idx[step.pre_valid]] = o.transpose(1, 2)[step.pre_valid]
    if step.ctx_index is not None:  # chunks attend to their cached prefix and, causally, to themselves
        idx, b = step.ctx_index, step.ctx_blocks
        m = b.shape[0]
        qc = q[nd:][idx].transpose(1, 2)  # [C, H, L, D]
        kc = data[0].index_select(0, b.reshape(-1)).view(m, -1, kvh, d).transpose(1, 2)
        vc = data[1].index_select(0, b.reshape(-1)).view(m, -1, kvh, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(qc, kc.to(q.dtype), vc.to(q.dtype), attn_mask=step.ctx_mask,
                                           scale=scaling, enable_gqa=gqa)
        out[nd + idx[step.ctx_valid]] = o.transpose(1, 2)[step.ctx_valid]
    return out.unsqueeze(0), None


def register() -> str:
    """Make the function known to `transformers` (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, paged_attention)
    return NAME
