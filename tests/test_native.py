"""The native driving-keypoint kernel (vasa_engine._C / _C_cuda) against the PyTorch reference."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from vasa_engine import native
from vasa_engine.models.keypoints import rotation_matrix, transform_keypoints

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"
TOL = 1e-6


def _require(mod, what: str):
    """The module, or skip (fail under CI=true, where the build must have produced it)."""
    if mod is not None:
        return mod
    info = native.extension_info()
    reason = info["reason"] if what == "_C" else info["cuda_reason"]
    message = f"vasa_engine.{what} is not built ({reason})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def ext():
    return _require(native.cpu_module(), "_C")


def _rel_err(out, ref) -> float:
    out, ref = torch.as_tensor(out).double(), torch.as_tensor(ref).double()
    return ((out - ref).norm() / ref.norm()).item()


def _inputs(batch: int, num_kp: int, kp_batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    angles = (torch.rand(3, batch, generator=g) * 2 - 1) * 180
    if batch >= 3:  # the extremes and zero, on each angle
        angles[:, :3] = torch.tensor([-180.0, 0.0, 180.0])
    return {
        "kp": torch.randn(kp_batch, num_kp, 3, generator=g) * 0.5,
        "pitch": angles[0].contiguous(),
        "yaw": angles[1].contiguous(),
        "roll": angles[2].contiguous(),
        "exp": torch.randn(batch, num_kp, 3, generator=g) * 0.05,
        "t": torch.randn(batch, 3, generator=g) * 0.1,
        "scale": torch.rand(batch, generator=g) * 1.5 + 0.5,
    }


def _reference64(x: dict[str, torch.Tensor]) -> torch.Tensor:
    """The PyTorch reference in float64, on the float32 inputs."""
    d = {k: v.double() for k, v in x.items()}
    kp = d["kp"].expand(d["exp"].shape[0], -1, -1)
    return transform_keypoints(kp, rotation_matrix(d["pitch"], d["yaw"], d["roll"]), d["exp"], d["t"], d["scale"])


ORDER = ("kp", "pitch", "yaw", "roll", "exp", "t", "scale")
SHAPES = [(b, k, kb) for b in (1, 3, 7) for k in (1, 21, 5) for kb in (1, b)]


@pytest.mark.parametrize("batch,num_kp,kp_batch", SHAPES)
def test_cpu_matches_reference(ext, batch, num_kp, kp_batch):
    x = _inputs(batch, num_kp, kp_batch, seed=1000 * batch + 10 * num_kp + kp_batch)
    out = np.full((batch, num_kp, 3), np.nan, dtype=np.float32)
    ext.driving_keypoints(*(x[k].numpy() for k in ORDER), out)
    assert np.isfinite(out).all(), "some outputs were not written"
    err = _rel_err(out, _reference64(x))
    assert err <= TOL, f"relative error {err:.3g} > {TOL:g}"


def test_cpu_large_angles_and_kp_broadcast(ext):
    """Angles far outside +-180 (reduced exactly), and a shared kp equal to the per-frame copies."""
    x = _inputs(7, 21, 1, seed=7)
    g = torch.Generator().manual_seed(8)
    for name in ("pitch", "yaw", "roll"):
        x[name] = x[name] + 360.0 * torch.randint(-3, 4, (7,), generator=g).float()
    shared = np.full((7, 21, 3), np.nan, dtype=np.float32)
    ext.driving_keypoints(*(x[k].numpy() for k in ORDER), shared)
    assert _rel_err(shared, _reference64(x)) <= TOL
    x["kp"] = x["kp"].expand(7, -1, -1).contiguous()
    per_frame = np.full((7, 21, 3), np.nan, dtype=np.float32)
    ext.driving_keypoints(*(x[k].numpy() for k in ORDER), per_frame)
    np.testing.assert_array_equal(shared, per_frame)


def test_wrapper_cpu_matches_reference():
    """native.driving_keypoints on CPU tensors (extension or fallback), including (B, 3K) layouts."""
    x = _inputs(3, 21, 1, seed=11)
    ref = _reference64(x)
    out = native.driving_keypoints(**x)
    assert out.dtype == torch.float32 and out.shape == (3, 21, 3)
    assert _rel_err(out, ref) <= TOL
    flat = dict(x, kp=x["kp"].reshape(1, -1), exp=x["exp"].reshape(3, -1), scale=x["scale"][:, None])
    assert _rel_err(native.driving_keypoints(**flat), ref) <= TOL
    x64 = {k: v.double() for k, v in x.items()}  # other dtypes are converted to float32
    assert native.driving_keypoints(**x64).dtype == torch.float32


def test_wrapper_keeps_gradients():
    x = _inputs(3, 5, 3, seed=12)
    x["exp"].requires_grad_(True)
    out = native.driving_keypoints(**x)
    out.sum().backward()
    assert x["exp"].grad is not None and torch.isfinite(x["exp"].grad).all()


def _bad_cases():
    b, k = 3, 5
    good = {n: v.numpy() for n, v in _inputs(b, k, b, seed=3).items()}
    out = np.zeros((b, k, 3), np.float32)
    yield "kp last dim", dict(good, kp=np.zeros((b, k, 2), np.float32)), out
    yield "kp batch", dict(good, kp=np.zeros((2, k, 3), np.float32)), out
    yield "kp K", dict(good, kp=np.zeros((b, k + 1, 3), np.float32)), out
    yield "exp 2-d", dict(good, exp=np.zeros((b, 3 * k), np.float32)), out
    yield "pitch length", dict(good, pitch=np.zeros(b + 1, np.float32)), out
    yield "roll 2-d", dict(good, roll=np.zeros((b, 1), np.float32)), out
    yield "t shape", dict(good, t=np.zeros((b, 2), np.float32)), out
    yield "scale length", dict(good, scale=np.zeros(1, np.float32)), out
    yield "out shape", good, np.zeros((b, k, 2), np.float32)
    yield "float64", dict(good, exp=good["exp"].astype(np.float64)), out
    yield "non-contiguous", dict(good, exp=np.asfortranarray(good["exp"])), out
    yield "out float64", good, np.zeros((b, k, 3), np.float64)
    yield "out non-contiguous", good, np.zeros((b, k, 6), np.float32)[..., ::2]
    readonly = np.zeros((b, k, 3), np.float32)
    readonly.flags.writeable = False
    yield "out read-only", good, readonly


@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[0])
def test_cpu_bad_arguments_raise(ext, case):
    _, args, out = case
    with pytest.raises(ValueError, match="driving_keypoints"):
        ext.driving_keypoints(*(args[k] for k in ORDER), out)


def test_build_info(ext):
    info = ext.build_info()
    assert set(info) >= {"compiler", "cuda", "cuda_archs"}
    assert info["cuda"] == (native.cuda_module() is not None)
    summary = native.extension_info()
    assert summary["built"] and summary["reason"] is None


# --- CUDA: compile report (needs only nvcc) and the launch itself (needs a GPU) ---------------------------------

NVCC = shutil.which("nvcc") or next(
    (str(p) for p in (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc",) if p.exists()), None)


CUDA_KERNELS = [("keypoints_cuda.cu", "driving_keypoints_kernel"), ("sampler_step_cuda.cu", "sampler_step_kernel")]


def _ptxas_report(arch: str, tmp_path: Path, source: str = "keypoints_cuda.cu",
                  kernel: str = "driving_keypoints_kernel") -> tuple[int, int, int, int]:
    """(registers, stack bytes, spill store bytes, spill load bytes) of the kernel compiled for `arch`."""
    cubin = tmp_path / f"{Path(source).stem}_{arch}.cubin"
    cmd = [NVCC, "-cubin", f"-arch={arch}", "-O3", "-std=c++17", f"-I{CSRC}", "-Xptxas", "-v",
           str(CSRC / source), "-o", str(cubin)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed for {arch}:\n{report}"
    assert kernel in report, report
    regs = re.search(r"Used (\d+) registers", report)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert regs and frame, f"unexpected ptxas report:\n{report}"
    return int(regs.group(1)), int(frame.group(1)), int(frame.group(2)), int(frame.group(3))


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", ["sm_89", "sm_90a"])
@pytest.mark.parametrize("source,kernel", CUDA_KERNELS, ids=[k for _, k in CUDA_KERNELS])
def test_cuda_kernel_compiles_without_spills(arch, source, kernel, tmp_path):
    regs, stack, spill_st, spill_ld = _ptxas_report(arch, tmp_path, source, kernel)
    print(f"{kernel} {arch}: {regs} registers, {stack} bytes stack, {spill_st}/{spill_ld} bytes spill stores/loads")
    assert spill_st == 0 and spill_ld == 0, f"{arch}: {spill_st} bytes spill stores, {spill_ld} bytes spill loads"
    assert regs <= 64, f"{arch}: {regs} registers, more than a full-occupancy block of 256 threads can hold"


def _cuda_ext():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return _require(native.cuda_module(), "_C_cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("batch,num_kp,kp_batch", [(1, 21, 1), (7, 21, 1), (7, 5, 7), (300, 21, 1), (3, 1, 3)])
def test_cuda_matches_reference(batch, num_kp, kp_batch):
    _cuda_ext()
    x = _inputs(batch, num_kp, kp_batch, seed=500 + batch + num_kp)
    ref = _reference64(x)
    dev = {k: v.cuda() for k, v in x.items()}
    # Through the wrapper (current stream), then a raw launch into a NaN-filled buffer on a side stream.
    out = native.driving_keypoints(**dev)
    assert out.is_cuda and out.dtype == torch.float32
    assert _rel_err(out.cpu(), ref) <= TOL
    raw = torch.full((batch, num_kp, 3), float("nan"), device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        native.cuda_module().driving_keypoints(*(dev[k].data_ptr() for k in ORDER), raw.data_ptr(), batch, num_kp,
                                               kp_batch, stream.cuda_stream)
    stream.synchronize()
    assert torch.isfinite(raw).all(), "some outputs were not written"
    assert _rel_err(raw.cpu(), ref) <= TOL


@pytest.mark.gpu
def test_cuda_bad_arguments_raise():
    ext = _cuda_ext()
    with pytest.raises(ValueError, match="kp_batch"):
        ext.driving_keypoints(1, 1, 1, 1, 1, 1, 1, 1, 3, 21, 2, 0)


# --- which implementation ran: recorded, queryable, and announced on CUDA ----------------------------------------


@pytest.fixture
def fresh_native_state(monkeypatch):
    """native's process-wide records, emptied for one test (and restored after it)."""
    for name, value in (("_usage", {}), ("_cuda_fallbacks", {}), ("_fallback_warned", False),
                        ("_device_support", {}), ("_launch_failures", {}), ("_loaded", dict(native._loaded))):
        monkeypatch.setattr(native, name, value)


class FakeCudaModule:
    def __init__(self, archs, error=None):
        self.archs, self.error, self.launched = archs, error, 0

    def build_info(self):
        return {"cuda_archs": self.archs}

    def driving_keypoints(self, *args):
        self.launched += 1
        if self.error:
            raise RuntimeError(self.error)


@pytest.fixture
def fake_cuda(monkeypatch, fresh_native_state):
    """A CUDA device of capability sm_90 as native sees it (no GPU needed: device, stream and capability stubbed)."""
    import contextlib

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: type("S", (), {"cuda_stream": 0})())

    def install(module, reason=None):
        native._loaded["_C_cuda"] = (module, reason)
        return module

    return install


def test_usage_records_the_implementation_that_ran(fresh_native_state):
    x = _inputs(3, 21, 1, seed=13)
    native.driving_keypoints(**x)
    expected = native.NATIVE_CPU if native.cpu_module() is not None else native.REFERENCE
    assert native.usage() == {"driving_keypoints": [expected]}
    x["exp"].requires_grad_(True)
    native.driving_keypoints(**x)  # gradients: the reference, recorded
    assert native.usage()["driving_keypoints"] == sorted({expected, native.REFERENCE})
    native.reset_usage()
    assert native.usage() == {}
    if expected == native.NATIVE_CPU:
        assert native.implementation("cpu") == native.NATIVE_CPU
    else:
        assert native.implementation("cpu").startswith(f"{native.REFERENCE} (vasa_engine._C is not available")


def test_cuda_status_names_a_missing_module_and_a_missing_architecture(fake_cuda, monkeypatch):
    fake_cuda(None, "ImportError: libcudart.so.13: cannot open shared object file")
    ok, reason = native.cuda_status(torch.device("cuda"))
    assert not ok and "_C_cuda is not available (ImportError: libcudart.so.13" in reason
    assert native.implementation("cuda") == f"{native.REFERENCE} ({reason})"
    fake_cuda(FakeCudaModule(["89-real"]))
    assert native.cuda_status(torch.device("cuda")) == (False, "vasa_engine._C_cuda has no code for sm_90 (built for "
                                                               "89-real)")
    monkeypatch.setattr(native, "_device_support", {})
    fake_cuda(FakeCudaModule(["89-real", "90a-real"]))
    assert native.cuda_status(torch.device("cuda")) == (True, None)
    assert native.implementation("cuda") == native.NATIVE_CUDA


def test_a_cuda_fallback_is_recorded_and_warned_once(fake_cuda):
    fake_cuda(None, "ModuleNotFoundError: No module named 'vasa_engine._C_cuda'")
    launched = []
    with pytest.warns(RuntimeWarning, match="sampler_step on CUDA tensors runs the PyTorch reference") as caught:
        assert not native._cuda_launch("sampler_step", torch.device("cuda"), lambda mod, stream: launched.append(1))
        assert not native._cuda_launch("driving_keypoints", torch.device("cuda"), lambda mod, stream: None)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1 and not launched
    fallbacks = native.cuda_fallbacks()
    assert set(fallbacks) == {"sampler_step", "driving_keypoints"}
    assert "No module named 'vasa_engine._C_cuda'" in fallbacks["sampler_step"]
    assert native.usage() == {"sampler_step": [native.REFERENCE], "driving_keypoints": [native.REFERENCE]}


def test_a_failed_launch_falls_back_and_is_remembered(fake_cuda):
    module = fake_cuda(FakeCudaModule(["90"], error="CUDA driver version is insufficient for CUDA runtime version"))
    with pytest.warns(RuntimeWarning, match="cannot launch on sm_90 \\(CUDA driver version is insufficient"):
        ok = native._cuda_launch("driving_keypoints", torch.device("cuda"),
                                 lambda mod, stream: mod.driving_keypoints(stream))
    assert not ok and module.launched == 1
    assert native.cuda_status(torch.device("cuda"))[0] is False  # no second try on that device
    assert "insufficient" in native.cuda_fallbacks()["driving_keypoints"]
    good = fake_cuda(FakeCudaModule(["90"]))
    native._launch_failures.clear()
    assert native._cuda_launch("driving_keypoints", torch.device("cuda"), lambda mod, stream: mod.driving_keypoints())
    assert good.launched == 1 and native.NATIVE_CUDA in native.usage()["driving_keypoints"]


def test_info_reports_what_runs_on_cuda(fake_cuda, monkeypatch):
    """`vasa-engine info` (runtime.cuda_settings, stage_backends) claims the fused CUDA step only when it runs."""
    from vasa_engine.runtime import cuda_settings, stage_backends

    cuda = torch.device("cuda")
    fake_cuda(None, "ImportError: not built")
    settings, stages = cuda_settings(cuda), stage_backends(cuda)
    assert not any("fused sampler step" in s for s in settings)
    assert any("sampler step and keypoint transform: pytorch reference (vasa_engine._C_cuda is not available "
               "(ImportError: not built))" in s for s in settings)
    assert stages["sampler step"].startswith("pytorch reference (") and "not built" in stages["keypoint transform"]
    fake_cuda(FakeCudaModule(["90"]))
    assert "fused sampler step (native CUDA kernel)" in cuda_settings(cuda)
    assert stage_backends(cuda)["sampler step"] == f"{native.NATIVE_CUDA}: guidance + update fused"
