"""Peak compute and memory bandwidth of the device (vendors' dense figures per GPU, an estimate for a CPU), and
the peak that applies to a dtype."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

from .figures import not_measured

# Dense peaks (no sparsity). TFLOP/s per dtype; bandwidth in TB/s. fp32: the non-tensor-core rate; tf32: tensor cores.
DEVICE_PEAKS = (
    {"match": ("H200",), "device": "NVIDIA H200 SXM", "fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4,
     "bandwidth": 4.8, "source": "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM; dense = half the sparse figures)"},
    {"match": ("H100", "PCIE"), "device": "NVIDIA H100 PCIe", "fp32": 51.0, "tf32": 378.0, "bf16": 756.0,
     "fp16": 756.0, "bandwidth": 2.0, "source": "NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe)"},
    {"match": ("H100", "NVL"), "device": "NVIDIA H100 NVL", "fp32": 60.0, "tf32": 417.5, "bf16": 835.5,
     "fp16": 835.5, "bandwidth": 3.9, "source": "NVIDIA H100 Tensor Core GPU datasheet (H100 NVL)"},
    {"match": ("H100",), "device": "NVIDIA H100 SXM5", "fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4,
     "bandwidth": 3.35, "source": "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM)"},
    {"match": ("A100", "80GB"), "device": "NVIDIA A100 SXM 80GB", "fp32": 19.5, "tf32": 156.0, "bf16": 312.0,
     "fp16": 312.0, "bandwidth": 2.039, "source": "NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM)"},
    {"match": ("A100",), "device": "NVIDIA A100 SXM 40GB", "fp32": 19.5, "tf32": 156.0, "bf16": 312.0,
     "fp16": 312.0, "bandwidth": 1.555, "source": "NVIDIA A100 Tensor Core GPU datasheet (A100 40GB SXM)"},
    {"match": ("RTX 4090",), "device": "NVIDIA GeForce RTX 4090", "fp32": 82.6, "tf32": 82.6, "bf16": 165.2,
     "fp16": 165.2, "bandwidth": 1.008,
     "source": "NVIDIA Ada Lovelace GPU architecture whitepaper (GeForce RTX 4090; tensor figures with FP32 "
               "accumulate, dense)"},
)


def device_peak(device: torch.device) -> dict:
    """The device's peak table row (matched on torch.cuda.get_device_name), or a CPU estimate, or a reason."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        upper = name.upper()
        for row in DEVICE_PEAKS:
            if all(m.upper() in upper for m in row["match"]):
                return {"measured": True, "estimate": False, "name": name,
                        **{k: v for k, v in row.items() if k != "match"}}
        return not_measured(f"no peak figures for {name!r} in vasa_engine.bench.DEVICE_PEAKS")
    return _cpu_peak_estimate()


def _cpu_peak_estimate() -> dict:
    flags, mhz = set(), None
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        flags = set(m.group(1).split()) if m else set()
        m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
        mhz = float(m.group(1)) if m else None
    except OSError:
        pass
    if not mhz or "fma" not in flags:
        return not_measured("unknown peak: no published figures for CPUs, and /proc/cpuinfo gives no clock or FMA")
    per_cycle = 64 if "avx512f" in flags else 32 if "avx2" in flags else 16  # fp32 FLOPs: 2 FMA units x lanes x 2
    threads = torch.get_num_threads()
    fp32 = threads * mhz * 1e6 * per_cycle / 1e12
    return {"measured": True, "estimate": True, "name": platform.processor() or platform.machine(), "fp32": fp32,
            "tf32": None, "bf16": None, "fp16": None, "bandwidth": None,
            "source": f"estimate, not a published figure: {threads} threads x {mhz:.0f} MHz x {per_cycle} fp32 "
                      "FLOP/cycle (2 FMA units); bf16 and memory bandwidth unknown"}


def tf32_state() -> dict:
    """Whether float32 matrix products and convolutions may use TF32 tensor cores (process-wide switches, set by
    vasa_engine.runtime.configure_cuda: off in the `vasa-engine` command)."""
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32)}


def _tf32_on() -> bool:
    state = tf32_state()
    return state["matmul"] and state["cudnn"]


def fp32_peak_words(peak: dict) -> str:
    """Which float32 peak percentages of float32 figures are taken against, and why."""
    if not peak.get("measured"):
        return f"none ({peak.get('reason')})"
    tflops, key = compute_peak(peak, torch.float32)
    state = "on" if _tf32_on() else "off"
    kind = "TF32 tensor-core" if key == "tf32" else "non-tensor FP32"
    value = f"{tflops:g} TFLOP/s" if tflops else "unknown"
    return f"{kind} peak, {value} (TF32 {state} for matrix products and convolutions)"


def compute_peak(peak: dict, dtype: torch.dtype) -> tuple[float | None, str]:
    """(TFLOP/s, the peak row's key) for `dtype`: float32 counts tensor cores only when TF32 is on for both matmuls
    and convolutions."""
    if dtype == torch.float32:
        key = "tf32" if _tf32_on() and peak.get("tf32") else "fp32"
    else:
        key = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    return peak.get(key), key
