"""Attention over the paged KV cache, plugged into `transformers` through its attention interface.

The model runs as usual on one packed row of tokens (every sequence of the iteration side by side), so
every projection and MLP is one batched matmul; only attention needs to know where each sequence's keys
are. For each layer this function writes the new keys and values into the cache, then answers the
decode tokens (one per running sequence, attending to its whole cached context, gathered block by block
and padded), the prefill tokens (whole sequences, causal within themselves, padded) and the chunks that
continue a partly prefilled prompt (attending to its cached prefix and causally to themselves) with one
SDPA call each. The layout of the step travels in the `s3exec_step` keyword argument.

Two kernels read the cache. `sdpa` (the reference, and the default on CPU) gathers each sequence's blocks
into a padded dense tensor per layer, which reads and writes its KV once more than attention needs.
`flex` (the default on CUDA) runs PyTorch's FlexAttention over the whole pool in place: a block mask made
from the block tables (one row per sequence, its physical blocks in order) tells the kernel which blocks
to read, and a mask on logical positions keeps the last block's unwritten slots and the future out. On
CUDA it is compiled (Triton); on CPU it runs FlexAttention's reference path, which is how the tests check
it against `sdpa`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NAME = "s3exec_paged"
KERNELS = ("sdpa", "flex")


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
    kernel: str = "sdpa"  # how cached keys are read: "sdpa" (gathered) or "flex" (in place)
    dec_flex: object = None  # flex: BlockMask of the decodes over the pool
    ctx_flex: object = None  # flex: BlockMask of the chunks over the pool


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
    if nd and step.kernel == "flex":
        out[:nd] = _flex(q[:nd].unsqueeze(2), data, step.dec_flex, scaling, gqa).squeeze(2)
    elif nd:
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
    if step.ctx_index is not None and step.kernel == "flex":
        idx = step.ctx_index
        o = _flex(q[nd:][idx].transpose(1, 2), data, step.ctx_flex, scaling, gqa)
        out[nd + idx[step.ctx_valid]] = o.transpose(1, 2)[step.ctx_valid]
    elif step.ctx_index is not None:  # chunks attend to their cached prefix and, causally, to themselves
        idx, b = step.ctx_index, step.ctx_blocks
        m = b.shape[0]
        qc = q[nd:][idx].transpose(1, 2)  # [C, H, L, D]
        kc = data[0].index_select(0, b.reshape(-1)).view(m, -1, kvh, d).transpose(1, 2)
        vc = data[1].index_select(0, b.reshape(-1)).view(m, -1, kvh, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(qc, kc.to(q.dtype), vc.to(q.dtype), attn_mask=step.ctx_mask,
                                           scale=scaling, enable_gqa=gqa)
        out[nd + idx[step.ctx_valid]] = o.transpose(1, 2)[step.ctx_valid]
    return out.unsqueeze(0), None


_FLEX = {}


def _flex_fn(device: torch.device):
    """FlexAttention: compiled (Triton kernels) on CUDA, the reference implementation elsewhere."""
    key = device.type
    if key not in _FLEX:
        import warnings

        from torch.nn.attention.flex_attention import flex_attention

        if key == "cuda":
            _FLEX[key] = torch.compile(flex_attention, dynamic=True)
        else:
            def eager(*args, **kwargs):
                with warnings.catch_warnings():  # "flex_attention called without torch.compile()": meant here
                    warnings.simplefilter("ignore")
                    return flex_attention(*args, **kwargs)
            _FLEX[key] = eager
    return _FLEX[key]


def _flex(q, data, block_mask, scaling, gqa):
    """q [B, H, L, D] against the whole pool of one layer, read in place: [B, H, L, D]."""
    _, _, bs, kvh, d = data.shape
    k = data[0].view(1, -1, kvh, d).transpose(1, 2).expand(q.shape[0], -1, -1, -1)
    v = data[1].view(1, -1, kvh, d).transpose(1, 2).expand(q.shape[0], -1, -1, -1)
    # the Triton kernel reads keys in tiles of BLOCK_N, which must divide the cache block
    opts = {"BLOCK_N": bs} if q.is_cuda and bs < 64 else None
    return _flex_fn(q.device)(q, k.to(q.dtype), v.to(q.dtype), block_mask=block_mask, scale=scaling, enable_gqa=gqa,
                              kernel_options=opts)


def pool_block_mask(table: torch.Tensor, nblocks: torch.Tensor, qpos: torch.Tensor, pool_blocks: int,
                    block_size: int):
    """The BlockMask of a batch of sequences over a pool of `pool_blocks` blocks: sequence b reads its
    `nblocks[b]` physical blocks `table[b]` (in logical order), and its query i sees the keys at logical
    positions up to `qpos[b, i]` (-1: a padding query, which sees none). Fixed shapes only (no boolean
    indexing), so a CUDA graph can capture it."""
    from torch.nn.attention.flex_attention import BlockMask

    n, width = table.shape
    device = table.device
    cols = torch.arange(width, device=device)
    held = cols[None, :] < nblocks[:, None]  # [n, width]: the entries that are real blocks
    target = torch.where(held, table, pool_blocks).reshape(-1)  # the rest land on one spare entry
    owner = torch.full((pool_blocks + 1,), -1, dtype=torch.int64, device=device).scatter_(
        0, target, torch.arange(n, device=device)[:, None].expand(n, width).reshape(-1))
    logical = torch.zeros(pool_blocks + 1, dtype=torch.int64, device=device).scatter_(
        0, target, cols[None, :].expand(n, width).reshape(-1))

    def mask_mod(b, h, q_idx, kv_idx):
        blk = kv_idx // block_size
        return (owner[blk] == b) & (logical[blk] * block_size + kv_idx % block_size <= qpos[b, q_idx])

    L = qpos.shape[1]
    q_blocks = -(-L // 128)
    kv_num = nblocks.to(torch.int32).view(n, 1, 1).expand(n, 1, q_blocks).contiguous()
    # as wide as the pool: the compiled kernel checks that the mask covers every key (entries past a
    # sequence's count are never read)
    kv_idx = torch.zeros(n, 1, q_blocks, pool_blocks, dtype=torch.int32, device=device)
    kv_idx[..., :width] = table.to(torch.int32).view(n, 1, 1, width)
    extra = {"compute_q_blocks": False} if _can_skip_q_blocks() else {}  # an older torch always computes them
    return BlockMask.from_kv_blocks(kv_num, kv_idx, BLOCK_SIZE=(128, block_size), mask_mod=mask_mod,
                                    seq_lengths=(L, pool_blocks * block_size), **extra)


@functools.lru_cache(maxsize=1)
def _can_skip_q_blocks() -> bool:
    """Whether this torch's BlockMask.from_kv_blocks can skip the query-side blocks (used by backward only)."""
    import inspect

    from torch.nn.attention.flex_attention import BlockMask

    return "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters


def register() -> str:
    """Make the function known to `transformers` (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, paged_attention)
    return NAME
