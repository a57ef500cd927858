"""The executor's GPU paths, checked on the CPU: FlexAttention reading the paged cache in place against
the SDPA reference, one block size for every policy, and the CUDA-graph logic (ladder, static buffers,
padding, replay) with the capture replaced by a backend that reruns the captured function."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from exec_helpers import POLICIES, executor, reference, requests, run, scheduler, workload
from s3exec.attention import paged_attention, pool_block_mask
from s3exec.cuda_graphs import LADDER, Buffers, DecodeGraphs, ladder, padded_size
from s3exec.kv_cache import KVCache
from s3exec.model_runner import ModelRunner
from s3sim.core.errors import ConfigError

PROMPTS, OUTPUTS = workload()


@pytest.fixture(scope="module")
def ref():
    return reference(PROMPTS, OUTPUTS)


# ---- FlexAttention over the pool ------------------------------------------------------------------
def _random_cache(bs=4, blocks=12, kvh=2, d=8, seed=0):
    torch.manual_seed(seed)
    cache = KVCache(1, kvh, d, blocks, bs, 40)
    cache.data.normal_()
    return cache


class _Layer:
    layer_idx = 0


@pytest.mark.parametrize("bs", [1, 4, 16])
def test_flex_equals_sdpa_on_a_mixed_step(bs):
    """Decodes at different contexts, a whole prompt and a chunk over its cached prefix: the same output from
    both kernels, and the keys both write land in the same slots."""
    cache = _random_cache(bs=bs, blocks=-(-120 // bs) + 4)
    fake = type("M", (), {})()
    outs = {}
    for kernel in ("sdpa", "flex"):
        c = KVCache(1, 2, 8, cache.num_blocks, bs, 40)
        c.data.copy_(cache.data)
        runner = ModelRunner(fake, c, kernel=kernel)
        for rid, n in ((0, 7), (1, 13), (2, 1), (3, 5)):  # cached contexts: decodes 0-2, chunk 3's prefix
            r = c.allocate(rid, n)
            c.length[r] = n
        ids, pos, last, step = runner.layout([(0, 1), (1, 2), (2, 3)], [(9, [1, 2, 3, 4, 5, 6]), (3, [7, 8, 9], 5)])
        torch.manual_seed(1)
        t = len(ids)
        q, k, v = torch.randn(1, 4, t, 8), torch.randn(1, 2, t, 8), torch.randn(1, 2, t, 8)
        outs[kernel] = (paged_attention(_Layer(), q, k, v, scaling=0.3, s3exec_step=step)[0], c.data.clone())
    (a, ca), (b, cb) = outs["sdpa"], outs["flex"]
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert torch.equal(ca, cb)


def test_the_block_mask_reads_only_each_sequences_blocks():
    cache = _random_cache(bs=4)
    table = torch.tensor([[3, 7, 1], [5, 0, 0]])
    bm = pool_block_mask(table, torch.tensor([3, 1]), torch.tensor([[9], [2]]), cache.data.shape[2], 4)
    assert bm.kv_num_blocks.flatten().tolist() == [3, 1]
    assert bm.kv_indices[0, 0, 0, :3].tolist() == [3, 7, 1] and bm.kv_indices[1, 0, 0, 0].item() == 5
    m = bm.mask_mod
    # sequence 0, position 9 = logical block 2 (physical 1), offset 1: slot 1 * 4 + 1 is visible, + 2 not
    b0, h = torch.tensor(0), torch.tensor(0)
    assert m(b0, h, torch.tensor(0), torch.tensor(5)).item() and not m(b0, h, torch.tensor(0), torch.tensor(6)).item()
    assert not m(b0, h, torch.tensor(0), torch.tensor(20)).item()  # block 5 is sequence 1's


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_gives_generates_tokens_with_flex_under_preemption(policy, ref):
    res = run(policy, 150, PROMPTS, OUTPUTS, accuracy=0.0, error_shape="under", kernel="flex")
    for i, want in enumerate(ref):
        assert res.outputs[i] == want, f"request {i}"
    if policy in ("s3", "paged"):
        assert res.scheduler.preemptions > 0


def test_flex_chunked_prefill_gives_the_same_tokens(ref):
    res = run("vllm", 150, PROMPTS, OUTPUTS, accuracy=1.0, max_num_batched_tokens=12, max_batch_size=8,
              kernel="flex")
    assert [res.outputs[i] for i in range(len(ref))] == ref


# ---- one block size for every policy --------------------------------------------------------------
def test_a_token_pool_runs_on_blocks_of_16_with_one_partial_block_per_holder():
    sched = scheduler("orca", 150, OUTPUTS)
    ex = executor(sched, holders=5)
    assert ex.cache.block_size == 16 and ex.cache.slack_blocks == 5
    assert ex.cache.num_blocks == -(-150 // 16) + 5
    res = ex.run(requests(PROMPTS, OUTPUTS), PROMPTS)
    assert res.kv_capacity_tokens == 150  # the budget the core accounts, not the cache's rounding
    assert res.peak_kv_tokens == res.peak_kv_blocks * 16


def test_a_paged_pool_keeps_its_own_blocks():
    sched = scheduler("paged", 160, OUTPUTS, block_size=4)
    ex = executor(sched)
    assert (ex.cache.block_size, ex.cache.num_blocks, ex.cache.slack_blocks) == (4, 40, 0)


def test_attention_and_graph_options_are_checked():
    from s3exec.config import attention_kernel, cuda_graphs_enabled

    assert attention_kernel("auto", "cpu") == "sdpa" and attention_kernel("auto", "cuda:0") == "flex"
    assert attention_kernel("flex", "cpu") == "flex"
    with pytest.raises(ConfigError, match="executor.attention='triton' is unknown; valid: auto, sdpa, flex"):
        attention_kernel("triton", "cpu")
    assert cuda_graphs_enabled("auto", "cpu") is False and cuda_graphs_enabled("auto", "cuda") is True
    with pytest.raises(ConfigError, match="cuda_graphs=true needs a CUDA device"):
        cuda_graphs_enabled(True, "cpu")
    with pytest.raises(ConfigError, match="must be auto, true or false"):
        cuda_graphs_enabled("yes", "cuda")


# ---- CUDA graphs: the logic, with the capture mocked -----------------------------------------------
class RerunBackend:
    """Stands in for `torch.cuda.graph`: `replay` reruns the captured function and copies its result into
    the output buffer the capture returned, as a graph writes into its static output."""

    def __init__(self):
        self.captured = []

    def capture(self, fn):
        out = fn()
        backend = self

        class Graph:
            def replay(self):
                out.copy_(fn())

        backend.captured.append(len(out))
        return Graph(), out


def test_ladder_and_padding():
    assert ladder(256) == LADDER
    assert ladder(100) == (1, 2, 4, 8, 16, 32, 48, 64, 96, 100)
    assert ladder(3) == (1, 2, 3)
    assert [padded_size(n, LADDER) for n in (1, 3, 5, 17, 33, 200, 256)] == [1, 4, 8, 32, 48, 224, 256]
    assert padded_size(257, LADDER) is None


def test_buffers_pad_to_the_scratch_block():
    buf = Buffers(8, max_blocks=5, scratch=99, block_size=16, device="cpu")
    assert buf.ids.shape == (8,) and buf.table.shape == (8, 5) and buf.keep.tolist() == list(range(8))
    buf.fill(np.array([3, 4, 5]), np.array([10, 20, 30]), np.array([161, 322, 483]),
             np.array([[10, 0], [20, 21], [30, 31]]), np.array([1, 2, 2]), 99, 16)
    assert buf.ids.tolist() == [3, 4, 5, 0, 0, 0, 0, 0]
    assert buf.slots.tolist() == [161, 322, 483] + [99 * 16] * 5
    assert buf.table[1].tolist() == [20, 21, 99, 99, 99] and (buf.table[3:] == 99).all()
    assert buf.nblocks.tolist() == [1, 2, 2, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_replayed_decode_steps_give_generates_tokens(kernel, ref):
    """The whole executor with decode steps replayed through the graph logic: padded sizes, the scratch
    block, growing block tables and preemption; tokens are still `generate`'s."""
    sched = scheduler("s3", 150, OUTPUTS, accuracy=0.0, error_shape="under")
    ex = executor(sched, kernel=kernel)
    backend = RerunBackend()
    ex.runner.graphs = DecodeGraphs(ex.runner, sizes=(1, 2, 4, 8), backend=backend)
    res = ex.run(requests(PROMPTS, OUTPUTS), PROMPTS)
    for i, want in enumerate(ref):
        assert res.outputs[i] == want, f"request {i}"
    g = ex.runner.graphs
    assert sorted(backend.captured) == [1, 2, 4, 8]  # captured at warm-up, each once
    assert g.replays > 0 and g.padded_rows > 0
    assert res.scheduler.preemptions > 0
    assert (ex.cache.data[:, :, ex.cache.scratch] != 0).any()  # padding rows wrote only there


def test_batches_beyond_the_ladder_run_eagerly(ref):
    sched = scheduler("orca", 4000, OUTPUTS, accuracy=1.0)
    ex = executor(sched)
    ex.runner.graphs = DecodeGraphs(ex.runner, sizes=(1, 2), backend=RerunBackend())
    res = ex.run(requests(PROMPTS, OUTPUTS), PROMPTS)
    assert [res.outputs[i] for i in range(len(ref))] == ref
    assert max(res.log.batch) == len(PROMPTS) > 2  # the big batches ran eagerly, the tail replayed
    assert ex.runner.graphs.replays > 0


@pytest.mark.slow
def test_compiled_flex_equals_sdpa_across_shapes(monkeypatch):
    """The compiled path (what CUDA runs, here through Inductor's CPU backend): equal to sdpa, and one
    compilation serves steps of other shapes (dynamic shapes)."""
    import s3exec.attention as attention
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setitem(attention._FLEX, "cpu", torch.compile(flex_attention, dynamic=True))
    fake = type("M", (), {})()
    for trial in range(3):
        outs = {}
        for kernel in ("sdpa", "flex"):
            torch.manual_seed(trial)
            c = KVCache(1, 2, 16, 40, 16, 200)
            c.data.normal_()
            runner = ModelRunner(fake, c, kernel=kernel)
            for rid, n in ((0, 7 + trial), (1, 33), (2, 1), (3, 20)):
                row = c.allocate(rid, n)
                c.length[row] = n
            decode = [(0, 1), (1, 2), (2, 3)][:3 - trial % 2]
            ids, _, _, step = runner.layout(decode, [(9, list(range(6 + trial))), (3, [7, 8, 9], 20)])
            torch.manual_seed(10)
            t = len(ids)
            q, k, v = torch.randn(1, 4, t, 16), torch.randn(1, 2, t, 16), torch.randn(1, 2, t, 16)
            outs[kernel] = paged_attention(_Layer(), q, k, v, scaling=0.25, s3exec_step=step)[0]
        assert torch.allclose(outs["sdpa"], outs["flex"], atol=1e-5)
