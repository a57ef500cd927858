"""GPU datasheet numbers: memory size, HBM bandwidth, dense tensor throughput and the host link used to
swap KV cache. These are peak figures; the latency model applies efficiency factors on top."""

from __future__ import annotations

from dataclasses import dataclass, replace

from s3sim.core.errors import ConfigError

GiB = 1024**3


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator. Bandwidths are bytes/s, ``peak_flops`` is dense fp16/bf16 tensor FLOP/s."""

    name: str
    memory_bytes: int
    mem_bandwidth: float
    peak_flops: float
    host_link_bandwidth: float
    source: str = ""
    interconnect_bandwidth: float = 0.0  # bytes/s per direction between two GPUs of a server (tensor parallelism)
    # what a kernel reaches of the peaks, fitted to measured operators (`make calibrate`) for `latency=datasheet`:
    # fractions of peak_flops and mem_bandwidth, a fixed cost per operator launch, and where the fit comes from
    compute_efficiency: float = 0.0
    memory_efficiency: float = 0.0
    launch_s: float = 0.0
    attention_prefill_efficiency: float = 0.0  # prefill attention's fraction of peak_flops
    attention_decode_efficiency: float = 0.0  # decode attention's fraction of mem_bandwidth
    calibration: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"gpu name must be a non-empty string, got {self.name!r}")
        for field in ("memory_bytes", "mem_bandwidth", "peak_flops", "host_link_bandwidth"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"gpu '{self.name}': {field} must be a positive number, got {value!r}")


_A100 = "NVIDIA A100 Tensor Core GPU datasheet (2021): 312 TFLOP/s dense FP16/BF16 tensor"
_PCIE4 = "host link PCIe Gen4 x16, 32 GB/s peak, ~25 GB/s effective"
_PCIE5 = "host link PCIe Gen5 x16, 64 GB/s peak, ~50 GB/s effective"
_NVLINK3 = "GPUs linked by NVLink 3 (SXM4): 600 GB/s bidirectional, 300 GB/s each way"
_NVLINK4 = "GPUs linked by NVLink 4 (SXM5): 900 GB/s bidirectional, 450 GB/s each way"
_PCIE_TP4 = "GPUs talk over PCIe Gen4 only (no NVLink bridge assumed): ~25 GB/s each way"
_PCIE_TP5 = "GPUs talk over PCIe Gen5 only: ~50 GB/s each way"

GPU_PRESETS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        GpuSpec("a100-40gb-pcie", 40 * GiB, 1555e9, 312e12, 25e9, f"{_A100}; 40GB HBM2 (40 GiB), 1,555 GB/s; {_PCIE4}; {_PCIE_TP4}", 25e9),
        GpuSpec("a100-40gb-sxm", 40 * GiB, 1555e9, 312e12, 25e9, f"{_A100}; 40GB HBM2 (40 GiB), 1,555 GB/s; {_PCIE4}; {_NVLINK3}",
                300e9),
        GpuSpec("a100-80gb-pcie", 80 * GiB, 1935e9, 312e12, 25e9,
                f"{_A100}; 80GB HBM2e (80 GiB), 1,935 GB/s; {_PCIE4}; {_PCIE_TP4}", 25e9),
        GpuSpec("a100-80gb-sxm", 80 * GiB, 2039e9, 312e12, 25e9,
                f"{_A100}; 80GB HBM2e (80 GiB), 2,039 GB/s; {_PCIE4}; {_NVLINK3}", 300e9),
        GpuSpec("h100-sxm", 80 * GiB, 3.35e12, 989e12, 50e9,
                f"NVIDIA H100 datasheet: SXM5 80GB HBM3 (80 GiB), 3.35 TB/s, 989 TFLOP/s dense BF16; {_PCIE5}; {_NVLINK4}",
                450e9),
        GpuSpec("h200", 141 * 10**9, 4.8e12, 989e12, 50e9,
                "NVIDIA H200 datasheet: 141GB HBM3e taken as 141e9 bytes (nvidia-smi shows ~140 GiB, so this is"
                f" conservative), 4.8 TB/s, 989 TFLOP/s dense BF16; {_PCIE5}; {_NVLINK4}", 450e9),
        GpuSpec("a40", 48 * GiB, 696e9, 149.7e12, 25e9,
                "NVIDIA A40 datasheet: 48GB GDDR6 with ECC (48 GiB), 696 GB/s, 149.7 TFLOP/s dense FP16/BF16 tensor"
                f" (299.4 with sparsity); {_PCIE4}; {_PCIE_TP4} (NVLink bridges for pairs exist, not assumed)", 25e9),
        GpuSpec("rtx-4090", 25_250_627_584, 1008e9, 165.2e12, 25e9,
                "NVIDIA Ada GPU architecture whitepaper (RTX 4090): 24GB GDDR6X taken as 25,250,627,584 bytes, the"
                " total torch reported on the card of the vLLM run in ../shared/data/vllm_runs/rtx4090-llama-3.1-8b"
                " (meta.json); 1,008 GB/s; 165.2 TFLOP/s dense BF16 tensor with FP32 accumulate, as vLLM runs it (about"
                " 330 with sparsity; GeForce parts do FP32 accumulate at half their FP16-accumulate rate);"
                f" {_PCIE4}; {_PCIE_TP4}", 25e9),
        GpuSpec("rtx-pro-6000", 96 * GiB, 1792e9, 503.8e12, 50e9,
                "NVIDIA RTX PRO 6000 Blackwell Server Edition datasheet: 96GB GDDR7 with ECC (taken as 96 GiB; the"
                " device's usable total is a little lower and was not measured here), 1,792 GB/s (NVIDIA's figure;"
                " other sources say 1.6-1.8 TB/s); dense FP16/BF16 tensor 503.8 TFLOP/s is the best-known reading"
                " of the datasheet's tensor table, which headlines 4 PFLOPS FP4 with sparsity: UNCERTAIN, not"
                f" measured; {_PCIE5}; {_PCIE_TP5}", 50e9),
    )
}


# `make calibrate` (results/calibration/operators.csv): each layer's non-attention operators at their own bound,
# fitted per GPU to operators measured on it (compute and memory efficiency, launch seconds), and attention:
# prefill at a fraction of peak FLOP/s, decode at a fraction of peak bandwidth, fitted where a profile times
# attention (the two vLLM runs' GPUs). Elsewhere attention takes the mean ratio of those fits to their GPU's
# dense fit (prefill 0.598 x compute, decode 0.832 x memory efficiency), and a GPU without profiles borrows a
# dense fit; each says so.
_FIT = "fitted by make calibrate to {} (results/calibration/operators.csv)"
_ATT = "; attention at the measured GPUs' mean ratio to their dense fit (not measured here)"


def _borrowed_attention(ce: float, me: float, launch: float, how: str) -> tuple:
    return ce, me, launch, round(0.598 * ce, 4), round(0.832 * me, 4), how + _ATT


_A100_FIT = (0.6707, 0.7670, 7.32e-6)
_A100_HOW = "borrowed from a100-80gb-sxm (same GA100 chip; " + _FIT.format("A100 profiles") + ")"
_BORROWED = "NOT MEASURED on this GPU: the A100's dense fit borrowed (no {} profile is shared)"
CALIBRATION: dict[str, tuple[float, float, float, float, float, str]] = {
    "a100-80gb-sxm": _borrowed_attention(*_A100_FIT, _FIT.format("the A100 operator profiles of 8 models "
                                                                 "(gpu_profiles/compute/a100)")),
    "a100-80gb-pcie": _borrowed_attention(*_A100_FIT, _A100_HOW),
    "a100-40gb-pcie": _borrowed_attention(*_A100_FIT, _A100_HOW),
    "a100-40gb-sxm": _borrowed_attention(*_A100_FIT, _A100_HOW),
    "a40": _borrowed_attention(0.7162, 0.7670, 7.60e-6, _FIT.format("the A40 operator profiles of 6 models "
                                                                    "(gpu_profiles/compute/a40)")),
    "rtx-4090": (1.0, 1.0, 10.36e-6, 0.700, 0.872,
                 _FIT.format("the RTX 4090 vLLM run's Llama 3.1 8B profile (vllm_runs/rtx4090-llama-3.1-8b/profile); "
                             "both dense efficiencies reach the fit's bound of 1")),
    "rtx-pro-6000": (0.7670, 0.9365, 6.16e-6, 0.380, 0.742,
                     _FIT.format("the RTX PRO 6000 vLLM run's Llama 3.1 8B profile, tp1 and tp2 "
                                 "(vllm_runs/rtxpro6000-llama-3.1-8b/profile)")),
    "h100-sxm": _borrowed_attention(*_A100_FIT, _BORROWED.format("H100")),
    "h200": _borrowed_attention(*_A100_FIT, _BORROWED.format("H200")),
}
GPU_PRESETS = {name: replace(g, **dict(zip(("compute_efficiency", "memory_efficiency", "launch_s",
                                            "attention_prefill_efficiency", "attention_decode_efficiency",
                                            "calibration"), CALIBRATION[name])))
               for name, g in GPU_PRESETS.items()}


# The names GPUs give themselves (torch.cuda.get_device_name, nvidia-smi; lower case) -> preset: how a
# profile or a run that records its device is matched to a preset.
DEVICE_NAMES = {
    "nvidia geforce rtx 4090": "rtx-4090",
    "nvidia rtx pro 6000 blackwell server edition": "rtx-pro-6000",
    "nvidia h100 80gb hbm3": "h100-sxm",
    "nvidia h200": "h200",
    "nvidia a100-sxm4-80gb": "a100-80gb-sxm",
    "nvidia a100-sxm4-40gb": "a100-40gb-sxm",
    "nvidia a100 80gb pcie": "a100-80gb-pcie",
    "nvidia a100-pcie-40gb": "a100-40gb-pcie",
}


def preset_of_device(device) -> str | None:
    """The preset a recorded device name stands for, or None (a CPU, a GPU without a preset)."""
    return DEVICE_NAMES.get(str(device).strip().lower()) if device else None


def get_gpu(name: str) -> GpuSpec:
    if name in GPU_PRESETS:
        return GPU_PRESETS[name]
    raise ConfigError(f"unknown gpu {name!r}: valid names are {', '.join(sorted(GPU_PRESETS))}")
