import numpy as np
import pytest

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import GpuSpec, get_gpu
from s3sim.hardware.models import get_model
from s3sim.latency import LatencyModel, RooflineLatency


@pytest.fixture
def lat():
    return RooflineLatency(get_model("gpt-j-6b"), get_gpu("a100-80gb-pcie"))


def test_is_a_latency_model(lat):
    assert isinstance(lat, LatencyModel)


@pytest.mark.parametrize("batch,ctx0,k", [(1, 0, 1), (8, 800, 50), (37, 12345, 200), (512, 256 * 512, 64)])
def test_decode_run_equals_step_by_step(lat, batch, ctx0, k):
    run = lat.decode_run(batch, ctx0, k)
    steps = [lat.iteration_time(0, 0, batch, ctx0 + i * batch) for i in range(k)]
    assert run.shape == (k,)
    assert run.tolist() == steps  # exact float equality


def test_decode_run_empty(lat):
    assert lat.decode_run(4, 100, 0).shape == (0,)
    assert lat.decode_run(0, 0, 3).tolist() == [0.0, 0.0, 0.0]


def test_vectorised_matches_scalar(lat):
    rng = np.random.default_rng(0)
    p = rng.integers(0, 4000, 100)
    sq = p * rng.integers(0, 2000, 100)
    d = rng.integers(0, 300, 100)
    ctx = d * rng.integers(0, 2000, 100)
    vec = lat.iteration_time(p, sq, d, ctx)
    assert vec.shape == (100,)
    assert vec.tolist() == [lat.iteration_time(int(a), int(b), int(c), int(e)) for a, b, c, e in zip(p, sq, d, ctx)]
    assert isinstance(lat.iteration_time(10, 100, 2, 50), float)
    assert isinstance(lat.iteration_time(np.int64(10), 100, 2, 50), float)


def test_monotone_in_each_argument(lat):
    base = np.array([0, 0, 1, 100])
    grid = np.concatenate([[0], np.unique(np.geomspace(1, 1e8, 60).astype(np.int64))])
    for i in range(4):
        args = [np.full(grid.shape, v) for v in base]
        args[i] = grid
        t = lat.iteration_time(*args)
        assert np.all(np.diff(t) >= 0), f"not monotone in argument {i}"


def test_batch_one_decode_is_memory_bound(lat):
    m, g = lat.model, lat.gpu
    t = lat.iteration_time(0, 0, 1, 100)
    expected = m.weight_bytes / (g.mem_bandwidth * 0.8) + 0.002
    assert t == pytest.approx(expected, rel=0.01)


def test_large_batch_decode_is_compute_bound(lat):
    m, g = lat.model, lat.gpu
    batch = 4096
    ctx = batch * 8
    flops = 2 * m.n_params * batch + 4 * m.n_layers * m.q_dim * ctx
    bytes_ = m.weight_bytes + m.kv_bytes_per_token * (ctx + batch)
    compute_s = flops / (g.peak_flops * 0.6)
    assert compute_s > bytes_ / (g.mem_bandwidth * 0.8)
    assert lat.iteration_time(0, 0, batch, ctx) == pytest.approx(0.002 + compute_s, rel=1e-12)


def test_prefill_attention_is_quadratic(lat):
    one_long = lat.iteration_time(8192, 8192**2, 0, 0)
    many_short = lat.iteration_time(8192, 16 * 512**2, 0, 0)
    assert one_long > many_short


def test_empty_iteration_takes_no_time(lat):
    assert lat.iteration_time(0, 0, 0, 0) == 0.0
    assert lat.iteration_time(np.zeros(3), 0, 0, 0).tolist() == [0.0, 0.0, 0.0]


def test_swap_time_is_linear(lat):
    one = lat.swap_time(1000)
    assert one == pytest.approx(1000 * lat.model.kv_bytes_per_token / lat.gpu.host_link_bandwidth)
    assert lat.swap_time(4000) == pytest.approx(4 * one)
    assert lat.swap_time(0) == 0.0
    assert lat.swap_time(np.array([1000, 2000])).tolist() == pytest.approx([one, 2 * one])


def test_more_gpus_is_faster():
    m, g = get_model("llama-2-13b"), get_gpu("a100-40gb-pcie")
    assert RooflineLatency(m, g, num_gpus=2).iteration_time(0, 0, 8, 800) < \
        RooflineLatency(m, g).iteration_time(0, 0, 8, 800)


@pytest.mark.parametrize("kwargs", [{"compute_efficiency": 0}, {"compute_efficiency": 1.5},
                                    {"memory_efficiency": 0}, {"overhead_s": -1e-3}, {"num_gpus": 0}])
def test_rejects_bad_parameters(kwargs):
    with pytest.raises(ConfigError):
        RooflineLatency(get_model("tiny-llama"), get_gpu("h100-sxm"), **kwargs)


def test_rejects_negative_inputs(lat):
    with pytest.raises(ConfigError, match="decode_ctx"):
        lat.iteration_time(0, 0, 1, -5)
    with pytest.raises(ConfigError, match="prefill_tokens"):
        lat.iteration_time(np.array([1, -1]), 0, 0, 0)
    with pytest.raises(ConfigError, match="k must"):
        lat.decode_run(1, 0, -1)


def test_tensor_parallelism_pays_two_all_reduces_per_layer():
    """The all-reduce term grows with the TP degree and the tokens; `none` keeps the old ideal scaling; a
    measured table (the shared A100 NVLink one) is interpolated by message size."""
    from pathlib import Path

    from s3sim.hardware.network import MeasuredAllReduce, RingAllReduce
    from s3sim.hardware.network import all_reduce_model

    model, gpu = get_model("llama-65b"), get_gpu("a100-80gb-sxm")
    ideal = RooflineLatency(model, gpu, num_gpus=2)
    ring = {g: RooflineLatency(model, gpu, num_gpus=g, all_reduce=all_reduce_model("ring", gpu)) for g in (2, 4, 8)}
    extra = {g: ring[g].iteration_time(0, 0, 64, 64 * 500) - RooflineLatency(model, gpu, num_gpus=g)
             .iteration_time(0, 0, 64, 64 * 500) for g in (2, 4, 8)}
    assert 0 < extra[2] < extra[4] < extra[8]
    r = RingAllReduce(300e9, 5e-6)
    nbytes = 64 * model.hidden_size * 2
    assert extra[2] == pytest.approx(2 * model.n_layers * (2 * 5e-6 + nbytes / 300e9), rel=1e-9)
    assert float(r.time_s(1, nbytes)) == 0.0
    assert ring[2].iteration_time(0, 0, 64, 64 * 500) > ideal.iteration_time(0, 0, 64, 64 * 500)
    assert np.all(np.diff(ring[2].decode_run(64, 64 * 500, 5)) > 0)
    with pytest.raises(ConfigError, match="no interconnect bandwidth"):
        all_reduce_model("ring", GpuSpec("bare", 10**10, 1e12, 1e14, 1e10))
    shared = Path(__file__).resolve().parents[2] / "shared/data/gpu_profiles/network/a100_dgx/all_reduce.csv"
    if shared.is_file():
        m = MeasuredAllReduce.from_csv(shared)
        small, big = (float(m.time_s(8, b)) for b in (2048, 64 * 2**20))
        assert 0 < small < big and float(m.time_s(4, 2048)) > 0
        with pytest.raises(ConfigError, match="no measurement for 3 GPUs"):
            m.time_s(3, 2048)


def test_all_reduce_priced_from_the_measured_pcie_pair_with_its_latency_floor():
    """The RTX PRO 6000 preset names the NCCL all-reduce measured between the two PCIe GPUs of the shared runs:
    a small message costs its measured floor (about 13 us), not a ring's 2 x 5 us; a large one the table's time."""
    import pandas as pd
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.network import SHARED_DATA_DIR, MeasuredAllReduce, all_reduce_model
    gpu = get_gpu("rtx-pro-6000")
    table = SHARED_DATA_DIR / gpu.measured_all_reduce
    if not table.is_file():
        pytest.skip("the shared data folder is not beside the repository")
    model = all_reduce_model("measured", gpu)
    assert isinstance(model, MeasuredAllReduce) and "measured" in model.source
    rows = pd.read_csv(table).query("collective == 'all_reduce'")
    smallest = rows.sort_values("bytes").iloc[0]
    assert model.time_s(2, 10.0) == pytest.approx(smallest.time_us * 1e-6)  # below the table: the floor
    for r in rows.itertuples():
        assert model.time_s(2, r.bytes) == pytest.approx(r.time_us * 1e-6)
    assert all_reduce_model("auto", gpu, 2).source == model.source
    fallback = all_reduce_model("auto", gpu, 4)  # four PRO 6000 were never measured: the ring, said so
    assert "fallback" in fallback.source and fallback.time_s(4, 1e6) > 0


def test_the_measured_all_gather_is_priced_by_the_gathered_size_its_rows_give_per_gpu():
    """An all-gather row's `bytes` is each GPU's share (at equal bytes it takes about an all-reduce's time, which
    moves that many bytes per GPU): the model is asked for the gathered output, `bytes` x GPUs, as a ring's is."""
    import pandas as pd
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.network import SHARED_DATA_DIR, RingAllGather, all_gather_model
    gpu = get_gpu("rtx-pro-6000")
    table = SHARED_DATA_DIR / gpu.measured_all_reduce
    if not table.is_file():
        pytest.skip("the shared data folder is not beside the repository")
    model = all_gather_model(gpu, 2)
    rows = pd.read_csv(table).query("collective == 'all_gather' and num_gpus == 2")
    for r in rows.itertuples():
        assert model.time_s(2, 2 * r.bytes) == pytest.approx(r.time_us * 1e-6)
    ring = RingAllGather(30e9)  # the fallback takes the gathered size too: (g - 1) / g of it crosses each link
    assert float(ring.time_s(2, 2e6)) == pytest.approx(5e-6 + 1e6 / 30e9)


@pytest.mark.parametrize("spec, message", [
    ("link:x", "expected link:<GB/s>:<us>"), ("link:16", "expected link:<GB/s>:<us>"),
    ("link:16:20:1", "expected link:<GB/s>:<us>"), ("link:0:20", "bandwidth of at least 0.001 GB/s"),
    ("link:16:2000000", "latency of 0 to 1e.06 us"),
])
def test_a_bad_all_reduce_spec_is_one_line(spec, message):
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.network import all_reduce_model
    with pytest.raises(ConfigError, match=message) as e:
        all_reduce_model(spec, get_gpu("rtx-pro-6000"))
    assert "\n" not in str(e.value)


def test_a_bad_collective_csv_names_the_setting_that_chose_it(tmp_path):
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.network import all_reduce_model, send_recv_model
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match=r"^latency\.all_reduce: all-reduce profile .*missing column"):
        all_reduce_model(str(bad), get_gpu("rtx-pro-6000"))
    with pytest.raises(ConfigError, match=r"^latency\.send_recv: send/recv profile: no file"):
        send_recv_model(str(tmp_path / "none.csv"), get_gpu("rtx-pro-6000"))


def test_a_link_all_reduce_is_its_latency_plus_bytes_over_bandwidth_and_measured_needs_a_table():
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.network import all_reduce_model
    link = all_reduce_model("link:16:20", get_gpu("rtx-pro-6000"))
    assert link.time_s(2, 16e6) == pytest.approx(20e-6 + 1e-3) and link.time_s(1, 16e6) == 0
    with pytest.raises(ConfigError, match="names no measured all-reduce"):
        all_reduce_model("measured", get_gpu("rtx-4090"))
