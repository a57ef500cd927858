"""GPU datasheet numbers: memory size, HBM bandwidth, dense tensor throughput and the host link used to
swap KV cache. These are peak figures; the latency model applies efficiency factors on top."""

from __future__ import annotations

from dataclasses import dataclass

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


def get_gpu(name: str) -> GpuSpec:
    if name in GPU_PRESETS:
        return GPU_PRESETS[name]
    raise ConfigError(f"unknown gpu {name!r}: valid names are {', '.join(sorted(GPU_PRESETS))}")
