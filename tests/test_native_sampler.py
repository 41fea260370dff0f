"""The fused sampler step of the native extension (guidance over every branch + the update in one pass) against
the PyTorch sampler: the guided combination of vasa_engine.generation and the step functions of
vasa_engine.sampling, on the real coefficients of every sampler."""

import pytest
import torch

from conftest import rel_err
from vasa_engine import native
from vasa_engine.sampling import (DiffusionSchedule, ddim_plan, ddim_step, ddpm_plan, ddpm_step, dpmpp_2m_plan,
                                  dpmpp_2m_step)

SCHEDULE = DiffusionSchedule.cosine(50)
SHAPES = [(1, 1, 1), (1, 100, 70), (3, 7, 5), (2, 63, 13)]


def _ext():
    ext = native.cpu_module()
    if ext is None:
        if __import__("os").environ.get("CI", "").lower() == "true":
            pytest.fail("the native extension must be built in CI")
        pytest.skip("native extension not built")
    return ext


@pytest.fixture(autouse=True)
def no_reference_fallback(monkeypatch):
    """Every call here must run the extension, never the PyTorch fallback."""
    def refuse(*args, **kwargs):
        raise AssertionError("sampler_step fell back to the PyTorch reference")

    monkeypatch.setattr(native, "sampler_step_reference", refuse)


def _guided(branches: torch.Tensor, scales) -> torch.Tensor:
    """The combination GuidedDenoiser makes, in float64."""
    out = branches.double()
    x0 = out[0]
    for k, s in enumerate(scales, start=1):
        x0 = x0 + s * (out[k] - out[k - 1])
    return x0


def _inputs(shape, nb, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    branches = torch.randn(nb, *shape, generator=g).to(dtype)
    scales = (torch.rand(nb - 1, generator=g) * 3).tolist()
    x_t, x0_prev, z = (torch.randn(*shape, generator=g) for _ in range(3))
    return branches, scales, x_t, x0_prev, z


def _nan(shape):
    return torch.full(shape, float("nan"))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("nb", [1, 2, 5])
def test_ddpm_steps(shape, nb):
    _ext()
    for i, step in enumerate(ddpm_plan(SCHEDULE)[::7]):
        branches, scales, x_t, _, z = _inputs(shape, nb, torch.float32, seed=100 * nb + i)
        out, x0_out = _nan(shape), _nan(shape)
        native.sampler_step(branches, scales, x_t, None, z, a=step.c0, b0=step.c1, sigma=step.sigma, out=out,
                            x0_out=x0_out)
        x0 = _guided(branches, scales)
        ref = ddpm_step(x_t.double(), x0, step.c0, step.c1, step.sigma, z.double())
        assert rel_err(out, ref) <= 1e-6 and rel_err(x0_out, x0) <= 1e-6


@pytest.mark.parametrize("steps", [1, 5, 10])
@pytest.mark.parametrize("nb", [1, 3])
def test_ddim_steps(steps, nb):
    _ext()
    for i, step in enumerate(ddim_plan(SCHEDULE, steps)):
        branches, scales, x_t, _, _ = _inputs((2, 100, 70), nb, torch.float32, seed=7 * steps + i)
        out, x0_out = native.sampler_step(branches, scales, x_t, a=step.a, b0=step.b)
        ref = ddim_step(x_t.double(), _guided(branches, scales), step.a, step.b)
        assert rel_err(out, ref) <= 1e-6


@pytest.mark.parametrize("steps", [2, 5, 10])
def test_dpmpp_2m_steps_carry_the_previous_x0(steps):
    _ext()
    x = torch.randn(1, 100, 70, generator=torch.Generator().manual_seed(steps))
    x_ref = x.double()
    prev = prev_ref = None
    for i, step in enumerate(dpmpp_2m_plan(SCHEDULE, steps)):
        branches, scales, _, _, _ = _inputs((1, 100, 70), 2, torch.float32, seed=31 * steps + i)
        x, x0 = native.sampler_step(branches, scales, x, prev, a=step.a, b0=step.b0, b1=step.b1)
        x0_ref = _guided(branches, scales)
        x_ref = dpmpp_2m_step(x_ref, x0_ref, prev_ref, step.a, step.b0, step.b1)
        prev, prev_ref = x0.clone(), x0_ref
        assert rel_err(x, x_ref) <= 1e-6, i


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_branches_convert_exactly(dtype):
    _ext()
    branches, scales, x_t, x0_prev, z = _inputs((3, 7, 5), 3, dtype, seed=9)
    out, x0 = native.sampler_step(branches, scales, x_t, x0_prev, z, a=0.9, b0=0.3, b1=-0.1, sigma=0.05)
    ref_x0 = _guided(branches, scales)  # from the exactly upcast values
    ref = ((0.9 * x_t.double() + 0.3 * ref_x0) + -0.1 * x0_prev.double()) + 0.05 * z.double()
    assert rel_err(x0, ref_x0) <= 1e-6 and rel_err(out, ref) <= 1e-6


def test_special_half_values():
    """Subnormals, infinities, NaN and signed zeros of float16 and bfloat16 reach the step exactly."""
    _ext()
    for dtype, values in ((torch.float16, [0.0, -0.0, 6e-8, -3e-6, 6.1e-5, 65504.0, float("inf"), float("-inf")]),
                          (torch.bfloat16, [0.0, -0.0, 1e-40, 3.0e38, float("inf"), -1.5])):
        branches = torch.tensor(values, dtype=dtype)[None]
        x_t = torch.zeros(len(values))
        out, x0 = native.sampler_step(branches, [], x_t, a=0.0, b0=1.0)
        assert torch.equal(x0, branches[0].float()), dtype
        assert torch.equal(torch.signbit(x0), torch.signbit(branches[0].float()))
    nan = native.sampler_step(torch.tensor([[float("nan")]], dtype=torch.float16), [], torch.zeros(1),
                              a=0.0, b0=1.0)[1]
    assert torch.isnan(nan).all()


def test_bad_arguments():
    ext = _ext()
    b = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="2 branches need 1 scales"):
        native.sampler_step(b, [], torch.zeros(5), a=1.0, b0=0.0)
    with pytest.raises(ValueError, match="x_t must be float32"):
        native.sampler_step(b, [1.0], torch.zeros(4), a=1.0, b0=0.0)
    with pytest.raises(ValueError, match="branches must have shape"):
        ext.sampler_step(torch.zeros(5).numpy(), 0, [], torch.zeros(5).numpy(), None, None, 1.0, 0.0, 0.0, 0.0,
                         torch.zeros(5).numpy(), None)
    with pytest.raises(ValueError, match="at most|need 1 to 8"):
        ext.sampler_step(torch.zeros(9, 5).numpy(), 0, [1.0] * 8, torch.zeros(5).numpy(), None, None, 1.0, 0.0, 0.0,
                         0.0, torch.zeros(5).numpy(), None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    if native.cuda_module() is None:
        pytest.fail("the CUDA extension must be built on a machine with a GPU")
    branches, scales, x_t, x0_prev, z = _inputs((4, 100, 70), 4, dtype, seed=3)
    ref0 = _guided(branches, scales)
    ref = ((0.9 * x_t.double() + 0.3 * ref0) + -0.1 * x0_prev.double()) + 0.05 * z.double()
    dev = [t.cuda() for t in (branches, x_t, x0_prev, z)]
    out, x0 = native.sampler_step(dev[0], scales, dev[1], dev[2], dev[3], a=0.9, b0=0.3, b1=-0.1, sigma=0.05)
    torch.cuda.synchronize()
    assert rel_err(out.cpu(), ref) <= 1e-6 and rel_err(x0.cpu(), ref0) <= 1e-6


def test_usage_records_the_native_step(monkeypatch):
    """The step's implementation is recorded per call, so a benchmark can say what it timed."""
    _ext()
    monkeypatch.setattr(native, "_usage", {})
    branches, scales, x_t, x0_prev, _ = _inputs((2, 9, 5), 2, torch.float16, seed=21)
    native.sampler_step(branches, scales, x_t, x0_prev, a=0.5, b0=0.4, b1=0.1)
    assert native.usage() == {"sampler_step": [native.NATIVE_CPU]}
