"""Helpers the test modules share, kept out of conftest.py so that benches/ can import the test modules too."""

import os

import pytest
import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, in float64 on the CPU; NaN anywhere in out gives NaN (which fails any bound)."""
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm()).item()


# Where a Triton kernel can run here: CPU tensors in Triton's interpreter, CUDA tensors on a GPU (marked gpu).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
KERNEL_DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                     reason="needs a CUDA device")]),
]


def launch_headless_chromium(binary: str, url: str, profile, *extra_flags: str):
    """Headless Chromium on `url` in its own process group (stop it with test_preview.stop_process), with a fresh
    profile, no GPU, no background traffic, autoplay allowed, sRGB output, and `extra_flags`."""
    import subprocess

    args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
            "--force-color-profile=srgb", f"--user-data-dir={profile}", *extra_flags, url]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
