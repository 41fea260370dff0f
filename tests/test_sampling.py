"""Diffusion schedule and samplers (vasa_engine.sampling)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import rel_err, require_parity_dir
from vasa_engine.sampling import (
    DiffusionSchedule,
    ddim_coefficients,
    ddim_plan,
    ddim_step,
    ddpm_plan,
    dpmpp_2m_plan,
    dpmpp_2m_step,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    timesteps,
)

T = 50
SCHED_KEYS = ("betas", "alphas", "alpha_bars", "sigmas_inflex")


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are small: one intra-op thread is as fast and does not stall when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fixture_tensors() -> dict[str, torch.Tensor]:
    return load_file(str(require_parity_dir() / "joyvasa_sample_first.safetensors"))


def smooth_x0_fn(dim: int, seed: int = 0):
    """x0_fn(x, t) = tanh(x A + b_t): a smooth, deterministic stand-in for the denoiser, in the dtype of x."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    b = torch.randn(T + 1, dim, generator=g, dtype=torch.float64) * 0.3

    def x0_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        return torch.tanh(x @ A.to(x.dtype) + b[t % (T + 1)].to(x.dtype))
    return x0_fn


# ---------------------------------------------------------------------------------------------------------------
# Schedule


def test_cosine_schedule_equals_reference_buffers():
    ref = fixture_tensors()
    sched = DiffusionSchedule.cosine(T)
    assert sched.T == T and sched.dtype == torch.float32
    ours = {"betas": sched.betas, "alphas": sched.alphas, "alpha_bars": sched.alpha_bars,
            "sigmas_inflex": sched.sigmas}
    for key in SCHED_KEYS:
        stored = ref[f"weights.diffusion_sched.{key}"]
        assert ours[key].dtype == stored.dtype and ours[key].shape == stored.shape, key
        # Same float32 arithmetic in the same order. PyTorch's vectorized exp differs by an ulp between CPU
        # instruction sets (AVX2, AVX-512), and sigma's ratio (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) magnifies
        # that near t = 1: within 8 ulp (2^-20 relative) of the stored buffers, float32 precision still.
        assert torch.allclose(ours[key], stored, rtol=2 ** -20, atol=0), key
    # sigmas_flex (flexibility 1, not used) is sqrt(beta).
    assert torch.allclose(sched.betas.sqrt(), ref["weights.diffusion_sched.sigmas_flex"], rtol=2 ** -23, atol=0)


@pytest.mark.parametrize("n_steps", [1, 10, 50, 1000])
def test_cosine_schedule_properties(n_steps):
    sched = DiffusionSchedule.cosine(n_steps)
    ab, betas, sig = sched.alpha_bars.double(), sched.betas.double(), sched.sigmas.double()
    assert sched.T == n_steps and len(ab) == n_steps + 1
    assert ab[0] == 1 and betas[0] == 0 and sig[0] == 0
    assert bool((ab[1:] < ab[:-1]).all()), "alpha_bar must decrease strictly"
    assert bool(((ab[1:] > 0) & (ab[1:] < 1)).all())
    assert bool(((betas[1:] >= 1e-4 * (1 - 1e-6)) & (betas[1:] <= 0.999 * (1 + 1e-6))).all())
    assert bool(torch.isfinite(sig).all()) and bool((sig[1:] >= 0).all())
    # alpha_bar is the running product of alpha; sigma_t^2 <= beta_t (posterior variance below the forward one).
    assert torch.allclose(ab, torch.cumprod(sched.alphas.double(), 0), rtol=1e-5)
    assert bool((sig[1:] ** 2 <= betas[1:] * (1 + 1e-5)).all())
    f64 = DiffusionSchedule.cosine(n_steps, dtype=torch.float64)
    assert f64.dtype == torch.float64
    # float32 rounds 1 - beta to about 1e-7 absolute, i.e. 1e-4 relative where beta is clipped at 0.999.
    assert torch.allclose(f64.alpha_bars, ab, rtol=2e-4, atol=1e-9)


def test_from_buffers_keeps_buffers_and_add_noise():
    ref = fixture_tensors()
    sched = DiffusionSchedule.from_buffers(*[ref[f"weights.diffusion_sched.{k}"] for k in SCHED_KEYS])
    assert sched.T == T and torch.equal(sched.sigmas, ref["weights.diffusion_sched.sigmas_inflex"])
    x0 = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(2))
    ab = sched.alpha_bars.double()
    for t in (0, 1, 25, T):
        expected = ab[t].sqrt() * x0.double() + (1 - ab[t]).sqrt() * eps.double()
        assert rel_err(sched.add_noise(x0, t, eps), expected) < 1e-6
    t_batch = torch.tensor([1, 20, T])
    out = sched.add_noise(x0, t_batch, eps)
    for i, t in enumerate(t_batch.tolist()):
        assert rel_err(out[i], sched.add_noise(x0[i], t, eps[i])) < 1e-7
    with pytest.raises(ValueError, match="0..50"):
        sched.add_noise(x0, T + 1, eps)
    with pytest.raises(ValueError, match="same|length|differ"):
        DiffusionSchedule.from_buffers(sched.betas, sched.alphas[:-1], sched.alpha_bars, sched.sigmas)
    with pytest.raises(ValueError, match="clean"):
        DiffusionSchedule.from_buffers(sched.betas[1:], sched.alphas[1:], sched.alpha_bars[1:], sched.sigmas[1:])


# ---------------------------------------------------------------------------------------------------------------
# Timesteps


@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading"])
def test_timesteps_shape(spacing):
    for steps in range(1, T + 1):
        ts = timesteps(T, steps, spacing)
        assert len(ts) == steps and all(1 <= t <= T for t in ts)
        assert all(a > b for a, b in zip(ts, ts[1:])), ts
        if spacing != "leading" and steps > 1:
            assert ts[0] == T
    assert timesteps(T, T, spacing) == list(range(T, 0, -1))
    if spacing == "trailing":
        assert timesteps(T, 10, spacing) == list(range(50, 0, -5))
        assert timesteps(T, 1, spacing) == [T]
        assert timesteps(T, 4, spacing) == [50, 38, 25, 12]  # 37.5 and 12.5: exact halves round to even
    if spacing == "linspace":
        assert timesteps(T, 3, spacing) == [50, 25, 1]  # 24.5 + 1
    if spacing == "leading":
        assert timesteps(T, 10, spacing) == list(range(46, 0, -5))


# ---------------------------------------------------------------------------------------------------------------
# DDPM (the reference ancestral sampler)


def ddpm_reference_f64(x0_fn, x_T, sched, noise):
    """The ancestral loop written directly from the formulas, in float64; returns the T + 1 states."""
    a, ab, sig = sched.alphas.double(), sched.alpha_bars.double(), sched.sigmas.double()
    x = x_T.double()
    traj = [x]
    for t in range(sched.T, 0, -1):
        x0 = x0_fn(x, t)
        c0 = (1 - ab[t - 1]) * a[t].sqrt() / (1 - ab[t])
        c1 = (1 - a[t]) * ab[t - 1].sqrt() / (1 - ab[t])
        x = c0 * x + c1 * x0 + (sig[t] * noise[sched.T - t].double() if t > 1 else 0)
        traj.append(x)
    return torch.stack(traj)


def test_ddpm_float32_matches_float64_reference():
    sched = DiffusionSchedule.cosine(T)
    g = torch.Generator().manual_seed(11)
    x_T = torch.randn(2, 20, 70, generator=g)
    noise = torch.randn(T - 1, 2, 20, 70, generator=g)
    x0_fn = smooth_x0_fn(70)
    out, traj = sample_ddpm(x0_fn, x_T, sched, noise=noise, return_trajectory=True)
    ref = ddpm_reference_f64(x0_fn, x_T, sched, noise)
    assert out.dtype == torch.float32 and traj.dtype == torch.float32
    assert traj.shape == (T + 1, 2, 20, 70)
    assert torch.equal(traj[0], x_T) and torch.equal(traj[-1], out)
    assert rel_err(out, ref[-1]) <= 1e-6
    assert max(rel_err(traj[j], ref[j]) for j in range(T + 1)) <= 1e-6
    # A float64 x_T runs the loop in float64 (the coefficients stay those of the float32 schedule, hence 1e-6);
    # with a float64 schedule it is the reference to rounding.
    out64 = sample_ddpm(x0_fn, x_T.double(), sched, noise=noise)
    assert out64.dtype == torch.float64 and rel_err(out64, ref[-1]) <= 1e-6
    sched64 = DiffusionSchedule.from_buffers(sched.betas.double(), sched.alphas.double(), sched.alpha_bars.double(),
                                             sched.sigmas.double())
    ref64 = ddpm_reference_f64(x0_fn, x_T, sched64, noise)
    assert rel_err(sample_ddpm(x0_fn, x_T.double(), sched64, noise=noise), ref64[-1]) <= 1e-12


def test_ddpm_replays_reference_trajectory():
    """Teacher-forced replay of the stored JoyVASA run: the model output of each step is recovered from the stored
    trajectory (x0_hat = (x_{t-1} - c0 x_t - sigma z) / c1, float64), so the loop's arithmetic is checked against
    the reference implementation without the denoiser."""
    ref = fixture_tensors()
    sched = DiffusionSchedule.from_buffers(*[ref[f"weights.diffusion_sched.{k}"] for k in SCHED_KEYS])
    traj, noise = ref["outputs.trajectory"], ref["inputs.noise"]
    assert noise.shape[0] == T - 1 and traj.shape[0] == T + 1
    x0_hat = {}
    for step in ddpm_plan(sched):
        t = step.t
        z = noise[T - t].double() if t > 1 else 0.0
        x0_hat[t] = (traj[T - t + 1].double() - step.c0 * traj[T - t].double() - step.sigma * z) / step.c1
    out, ours = sample_ddpm(lambda x, t: x0_hat[t].float(), ref["inputs.motion_at_T"], sched, noise=noise,
                            return_trajectory=True)
    assert max(rel_err(ours[j], traj[j]) for j in range(T + 1)) <= 1e-6
    assert rel_err(out, ref["outputs.motion"]) <= 1e-6


def test_ddpm_generator_noise_order_and_half_model():
    sched = DiffusionSchedule.cosine(T)
    x_T = torch.randn(4, 70, generator=torch.Generator().manual_seed(5))
    x0_fn = smooth_x0_fn(70)
    g = torch.Generator().manual_seed(123)
    drawn = [torch.randn(4, 70, generator=g) for _ in range(T - 1)]
    by_gen = sample_ddpm(x0_fn, x_T, sched, generator=torch.Generator().manual_seed(123))
    by_noise = sample_ddpm(x0_fn, x_T, sched, noise=drawn)
    assert torch.equal(by_gen, by_noise)
    # A half-precision model output does not make the trajectory half precision.
    out = sample_ddpm(lambda x, t: x0_fn(x, t).half(), x_T, sched, noise=drawn)
    assert out.dtype == torch.float32 and rel_err(out, by_noise) < 1e-2
    with pytest.raises(ValueError, match="noise or a torch.Generator"):
        sample_ddpm(x0_fn, x_T, sched)
    with pytest.raises(ValueError, match="49"):
        sample_ddpm(x0_fn, x_T, sched, noise=drawn[:-1])


def test_ddim_eta1_all_steps_is_ddpm():
    sched = DiffusionSchedule.cosine(T, dtype=torch.float64)
    g = torch.Generator().manual_seed(8)
    x_T = torch.randn(16, 70, generator=g, dtype=torch.float64)
    noise = torch.randn(T - 1, 16, 70, generator=g, dtype=torch.float64)
    x0_fn = smooth_x0_fn(70)
    a = sample_ddpm(x0_fn, x_T, sched, noise=noise)
    b = sample_ddim(x0_fn, x_T, sched, T, eta=1.0, noise=noise)
    assert rel_err(b, a) < 1e-10


# ---------------------------------------------------------------------------------------------------------------
# Agreement with diffusers' schedulers, fed the same model output at every step


def import_diffusers():
    if os.environ.get("CI", "").lower() == "true":
        import diffusers  # must be installed under CI
        return diffusers
    return pytest.importorskip("diffusers")


def diffusers_schedule(scheduler) -> DiffusionSchedule:
    """Our schedule built from the scheduler's own float32 alphas_cumprod, so that both sides use the same
    alpha_bar values and the comparison measures the update rules only. diffusers indexes training steps
    0..T-1; its step k is our t = k + 1 (our t = 0 is the clean end, diffusers' final_alpha_cumprod = 1)."""
    ab = torch.cat([torch.ones(1, dtype=torch.float64), scheduler.alphas_cumprod.double()])
    return DiffusionSchedule.from_alpha_bars(ab)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_ddim_agrees_with_diffusers(spacing):
    diffusers = import_diffusers()
    ours_cos = DiffusionSchedule.cosine(T)
    x0_fn = smooth_x0_fn(70, seed=3)
    x_T = torch.randn(32, 70, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    checked = 0
    for steps in (1, 5, 7, 10, 25, T):
        for eta in (0.0, 1.0):
            sch = diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=ours_cos.betas[1:].double().numpy(),
                                          prediction_type="sample", timestep_spacing=spacing, steps_offset=0,
                                          set_alpha_to_one=True, clip_sample=False)
            sch.set_timesteps(steps)
            ts = timesteps(T, steps, spacing)
            # Same visited steps (ours = diffusers + 1); these step counts avoid the exact-half cases where
            # diffusers' floating-point rounding differs (see `timesteps`).
            assert [int(k) + 1 for k in sch.timesteps] == ts
            sched = diffusers_schedule(sch)
            # diffusers' DDIM steps from training step k to k - T // steps, not to the next visited step. That is
            # the next visited step for "leading" always, and for "trailing" when steps divides T; otherwise
            # (trailing with 7 steps, linspace with 5 to 25 steps) its chain differs from the DDIM subsequence
            # sampler. There the per-step update is compared with ddim_coefficients/ddim_step given diffusers'
            # previous step (our plan's previous step is the next visited one).
            stride = T // steps
            same_chain = all(max(t - stride, 0) == t_prev for t, t_prev in zip(ts, ts[1:] + [0]))
            assert same_chain == (spacing == "leading" or (spacing == "trailing" and T % steps == 0)
                                  or steps in (1, T))
            plan = ddim_plan(sched, steps, eta, spacing)
            assert [p.t_prev for p in plan] == ts[1:] + [0]
            noise_g = torch.Generator().manual_seed(steps)
            x_d = x_T.clone()
            x_o = x_T.clone()
            zs = []
            for i, (k, step) in enumerate(zip(sch.timesteps, plan)):
                t_prev = step.t - stride if not same_chain else step.t_prev
                a, b, sigma = ddim_coefficients(sched.alpha_bars[step.t].item(),
                                                sched.alpha_bars[max(t_prev, 0)].item(), eta)
                if same_chain:
                    assert (a, b, sigma) == (step.a, step.b, step.sigma)
                z = torch.randn(x_T.shape, generator=noise_g, dtype=torch.float64)
                zs.append(z)
                x_d = sch.step(x0_fn(x_d, step.t), k, x_d, eta=eta,
                               variance_noise=z if eta > 0 else None).prev_sample
                x_o = ddim_step(x_o, x0_fn(x_o, step.t), a, b, sigma, z)
                assert rel_err(x_o, x_d) <= 1e-5, (spacing, steps, eta, i)
                checked += 1
            if same_chain:
                kw = {"noise": zs[: steps - 1]} if eta > 0 else {}
                full = sample_ddim(x0_fn, x_T, sched, steps, eta=eta, spacing=spacing, **kw)
                assert rel_err(full, x_d) <= 1e-5, (spacing, steps, eta)
    assert checked > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_dpmpp_2m_agrees_with_diffusers(spacing):
    """DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
    prediction_type="sample", lower_order_final=True, final_sigmas_type="zero"): first order on the first step
    (no history) and on the final step into sigma = 0 (final_sigmas_type "zero" forces it for any number of steps),
    second order in between, ending at the model's x0 estimate. Its "trailing" timesteps equal ours; its
    "linspace"/"leading" differ from the DDIM ones (they drop an end point of steps + 1 points), so for those the
    visited steps are given explicitly (set_timesteps(timesteps=...)), which takes the sigmas at exactly those
    steps. diffusers computes in float32 whatever the input dtype, hence agreement at float32 rounding."""
    diffusers = import_diffusers()
    ours_cos = DiffusionSchedule.cosine(T)
    x0_fn = smooth_x0_fn(70, seed=6)
    x_T = torch.randn(32, 70, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for steps in (1, 2, 3, 7, 10, 14, 15, 25, T):
        sch = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=T, trained_betas=ours_cos.betas[1:].double().numpy(), prediction_type="sample",
            algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
            final_sigmas_type="zero", timestep_spacing=spacing, thresholding=False)
        ts = timesteps(T, steps, spacing)

        def reset():  # set_timesteps also clears the solver's history
            if spacing == "trailing":
                sch.set_timesteps(steps)
            else:
                sch.set_timesteps(timesteps=[t - 1 for t in ts])  # diffusers' step k is our t = k + 1
        reset()
        assert [int(k) + 1 for k in sch.timesteps] == ts
        # Our cosine buffers (diffusers' float32 cumprod of the same betas differs from exp(sum log alpha) by
        # float32 rounding), then a schedule built from diffusers' own alphas_cumprod.
        for sched in (ours_cos, diffusers_schedule(sch)):
            reset()
            plan = dpmpp_2m_plan(sched, steps, spacing)
            assert [p.order for p in plan] == [1] + [2] * (steps - 2) + [1] * (steps > 1)
            x_d, x_o, prev = x_T.clone(), x_T.clone(), None
            traj_d = [x_T]
            for i, (k, step) in enumerate(zip(sch.timesteps, plan)):
                assert int(k) + 1 == step.t
                x_d = sch.step(x0_fn(x_d, step.t), k, x_d).prev_sample
                m = x0_fn(x_o, step.t)
                x_o = dpmpp_2m_step(x_o, m, prev, step.a, step.b0, step.b1)
                prev = m
                traj_d.append(x_d)
                assert rel_err(x_o, x_d) <= 1e-5, (spacing, steps, i)
            out, traj = sample_dpmpp_2m(x0_fn, x_T, sched, steps, spacing=spacing, return_trajectory=True)
            assert traj.shape[0] == steps + 1
            assert max(rel_err(traj[j], traj_d[j]) for j in range(steps + 1)) <= 1e-5


def test_dpmpp_2m_final_step_is_x0_estimate():
    sched = DiffusionSchedule.cosine(T)
    x0_fn = smooth_x0_fn(70, seed=9)
    x_T = torch.randn(8, 70, generator=torch.Generator().manual_seed(10))
    for steps in (1, 2, 10):
        plan = dpmpp_2m_plan(sched, steps)
        assert plan[-1].t_prev == 0 and plan[-1].a == 0.0 and plan[-1].b0 == 1.0 and plan[-1].b1 == 0.0
        out, traj = sample_dpmpp_2m(x0_fn, x_T, sched, steps, return_trajectory=True)
        assert torch.isfinite(traj).all()
        assert torch.equal(out, x0_fn(traj[-2], plan[-1].t))
    assert torch.equal(sample_dpmpp_2m(x0_fn, x_T, sched, 1), x0_fn(x_T, T))
    for steps in (1, 10, 25):
        last = ddim_plan(sched, steps)[-1]
        assert (last.a, last.b, last.sigma) == (0.0, 1.0, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Correctness on a known distribution
#
# Data x0 ~ N(mu, diag(s^2)). Then x_t ~ N(sqrt(ab) mu, ab s^2 + 1 - ab) and the exact x0 predictor is
# E[x0 | x_t] = mu + g_t (x_t - sqrt(ab) mu), g_t = sqrt(ab) s^2 / (ab s^2 + 1 - ab). With it every sampler here is
# affine in x_T and its noise, so its output is exactly Gaussian, with a mean and variance per dimension that a
# scalar recursion gives (`expected_moments`, written from the formulas independently of the module).
#
# None of the samplers is exact at finite steps, and on this 50-step cosine schedule the error is large:
# - DDPM uses the posterior std sigma_t but ignores the uncertainty of x0 given x_t (the true reverse kernel has
#   variance sigma_t^2 + c1^2 Var[x0 | x_t]), so its output variance falls 8-24% short for s in [0.2, 2];
# - DDIM (eta = 0) shrinks the variance too: for s = 1 each step from alpha_bar = cos^2(theta) to cos^2(theta')
#   multiplies x by cos(theta - theta') < 1 where the exact flow is the identity (25 steps: -9 to -24%,
#   10 steps: -22 to -51%);
# - DDIM with eta = 1 on 25 steps (ancestral on a subsequence) combines both: -15 to -37%;
# - DPM++(2M) is second order: 25 steps between +0.3% and -10%, 10 steps up to -44% (at the small-s end, where the
#   final jump from t = 5 to the posterior mean removes most of the spread).
# The means are off by at most 0.002 s (x_T ~ N(0, I) rather than the exact N(sqrt(alpha_bar_T) mu, ...)).
#
# So the test checks the empirical moments against the exact output moments within 5 standard errors (per
# dimension, and a chi-square over the 70 dimensions), which implies |mean - mu| <= 5 SE + |bias_mean| and
# |var - s^2| <= 5 SE + |bias_var| (also asserted), and bounds the biases (GAUSSIAN_CASES, worst case over
# mu in [-2, 2], s in [0.2, 2]). The deterministic samplers are also checked pointwise against the affine map.
# A test on a fine schedule (T = 1000) checks that DPM++(2M) reaches (mu, s^2) without the recursion, and negative
# controls show that one wrong coefficient fails the check.

N_SAMPLES, DIM = 20000, 70
Z_MAX = 5.0
CHI2_MAX = DIM + 6.0 * math.sqrt(2.0 * DIM)  # chi-square(70) mean + 6 sd: a false alarm rate below 1e-5


def gaussian_problem(seed: int):
    g = np.random.default_rng(seed)
    mu = g.uniform(-2.0, 2.0, DIM)
    s = g.uniform(0.2, 2.0, DIM)
    return mu, s * s


def exact_x0_fn(sched: DiffusionSchedule, mu: np.ndarray, s2: np.ndarray):
    ab = sched.alpha_bars.double()
    mu_t, s2_t = torch.from_numpy(mu), torch.from_numpy(s2)

    def x0_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        a = ab[t].item()
        gain = math.sqrt(a) * s2_t / (a * s2_t + 1 - a)
        return mu_t + gain * (x - math.sqrt(a) * mu_t)
    return x0_fn


def expected_moments(method: str, ab_visits: list[float], mu, s2, eta: float = 0.0, m_T=0.0, v_T=1.0):
    """Exact mean and variance of the output for x_T ~ N(m_T, v_T), given alpha_bar at the visited steps
    (descending, ending with 1.0 for the clean end), and the affine map: output = K x_T + c + (independent noise
    of variance w, zero for the deterministic samplers). Returns (mean, var, K, c)."""
    ab = list(ab_visits)
    K, c, w = np.ones_like(mu), np.zeros_like(mu), np.zeros_like(mu)
    lam = [math.inf if a >= 1 else 0.5 * math.log(a / (1 - a)) for a in ab]
    hist = None
    for i in range(len(ab) - 1):
        a_t, a_p = ab[i], ab[i + 1]
        gain = math.sqrt(a_t) * s2 / (a_t * s2 + 1 - a_t)
        K0, c0 = gain * K, mu + gain * (c - math.sqrt(a_t) * mu)
        if method in ("ddpm", "ddim"):
            var_z = eta ** 2 * (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
            # x_prev = sqrt(a_p) x0 + sqrt(1 - a_p - var_z) eps_hat + sqrt(var_z) z, eps_hat from (x_t, x0)
            d = math.sqrt(max(1 - a_p - var_z, 0.0) / (1 - a_t))
            px, p0 = d, math.sqrt(a_p) - d * math.sqrt(a_t)
            K, c, w = px * K + p0 * K0, px * c + p0 * c0, (px + p0 * gain) ** 2 * w + var_z
        else:  # DPM-Solver++(2M), first order on the first and the last step
            h = lam[i + 1] - lam[i]
            coef = math.sqrt(a_p) * (1 - math.exp(-h))
            DK, Dc = K0, c0
            if 0 < i < len(ab) - 2:
                r = (lam[i] - lam[i - 1]) / h
                DK = (1 + 1 / (2 * r)) * K0 - hist[0] / (2 * r)
                Dc = (1 + 1 / (2 * r)) * c0 - hist[1] / (2 * r)
            ratio = math.sqrt((1 - a_p) / (1 - a_t))
            K, c = ratio * K + coef * DK, ratio * c + coef * Dc
            hist = (K0, c0)
    return K * m_T + c, K * K * v_T + w, K, c


def moment_z_scores(x: torch.Tensor, mean: np.ndarray, var: np.ndarray):
    x = x.double().numpy()
    n = x.shape[0]
    z_mean = (x.mean(0) - mean) / np.sqrt(var / n)
    z_var = (x.var(0, ddof=1) - var) / (var * math.sqrt(2.0 / (n - 1)))
    return z_mean, z_var


def moments_ok(x, mean, var) -> tuple[bool, str]:
    z_mean, z_var = moment_z_scores(x, mean, var)
    stats = (np.abs(z_mean).max(), np.abs(z_var).max(), (z_mean ** 2).sum(), (z_var ** 2).sum())
    ok = stats[0] <= Z_MAX and stats[1] <= Z_MAX and stats[2] <= CHI2_MAX and stats[3] <= CHI2_MAX
    return ok, "max|z_mean| %.2f max|z_var| %.2f chi2_mean %.1f chi2_var %.1f (limits %.1f, %.1f)" % (
        *stats, Z_MAX, CHI2_MAX)


def run_gaussian(method: str, steps: int, seed: int, sched: DiffusionSchedule, eta: float = 0.0):
    mu, s2 = gaussian_problem(seed)
    g = torch.Generator().manual_seed(seed + 1)
    x_T = torch.randn(N_SAMPLES, DIM, generator=g, dtype=torch.float64)
    x0_fn = exact_x0_fn(sched, mu, s2)
    if method == "ddpm":
        out = sample_ddpm(x0_fn, x_T, sched, generator=g)
        visits = list(range(sched.T, 0, -1))
        eta = 1.0
    else:
        kw = {"eta": eta, "generator": g} if (method == "ddim" and eta > 0) else {}
        out = sample(x0_fn, x_T, sched, method=method, steps=steps, **kw)
        visits = timesteps(sched, steps)
    ab = sched.alpha_bars.double()
    mean, var, K, c = expected_moments(method, [ab[t].item() for t in visits] + [1.0], mu, s2, eta)
    return out, mu, s2, mean, var, x_T.numpy() * K + c


# (method, steps, eta): bounds on the discretisation bias |E mean - mu| / s and |E var / s^2 - 1| for s in
# [0.2, 2] on the 50-step cosine schedule (measured maxima: see the comment above).
GAUSSIAN_CASES = {
    ("ddpm", T, 1.0): (1e-3, 0.25),
    ("ddim", 10, 0.0): (3e-3, 0.52),
    ("ddim", 25, 0.0): (3e-3, 0.25),
    ("ddim", 25, 1.0): (1e-3, 0.38),
    ("dpmpp_2m", 10, 0.0): (3e-3, 0.45),
    ("dpmpp_2m", 25, 0.0): (3e-3, 0.11),
}


@pytest.mark.parametrize("case", list(GAUSSIAN_CASES), ids=lambda c: f"{c[0]}-{c[1]}-eta{c[2]:g}")
def test_gaussian_data_moments(case):
    method, steps, eta = case
    seed = 1000 + list(GAUSSIAN_CASES).index(case)
    sched = DiffusionSchedule.cosine(T)
    out, mu, s2, mean, var, affine = run_gaussian(method, steps, seed, sched, eta)
    ok, report = moments_ok(out, mean, var)
    assert ok, f"{case}: {report}"
    if eta == 0:
        # Deterministic: the output is the affine image of this very x_T, so the check can be pointwise.
        assert rel_err(out, torch.from_numpy(affine)) <= 1e-10
    bias_mean, bias_var = GAUSSIAN_CASES[case]
    assert np.all(np.abs(mean - mu) <= bias_mean * np.sqrt(s2)), np.abs(mean - mu).max()
    assert np.all(np.abs(var / s2 - 1) <= bias_var), np.abs(var / s2 - 1).max()
    # Hence, against the data distribution itself: mean within 5 SE + bias, variance within 5 SE + bias.
    x = out.double().numpy()
    se_mean, se_var = np.sqrt(var / N_SAMPLES), var * math.sqrt(2.0 / (N_SAMPLES - 1))
    assert np.all(np.abs(x.mean(0) - mu) <= Z_MAX * se_mean + np.abs(mean - mu))
    assert np.all(np.abs(x.var(0, ddof=1) - s2) <= Z_MAX * se_var + np.abs(var - s2))


def test_gaussian_data_fine_schedule_reaches_target():
    """Without the recursion: DPM++(2M) with 100 steps of a 1000-step cosine schedule has a variance bias below 2%
    for s in [0.2, 2] (0.4% for s >= 0.4) and a mean bias below 1e-3 s."""
    sched = DiffusionSchedule.cosine(1000, dtype=torch.float64)
    mu, s2 = gaussian_problem(77)
    x_T = torch.randn(N_SAMPLES, DIM, generator=torch.Generator().manual_seed(78), dtype=torch.float64)
    x = sample_dpmpp_2m(exact_x0_fn(sched, mu, s2), x_T, sched, 100).numpy()
    se_mean, se_var = np.sqrt(s2 / N_SAMPLES), s2 * math.sqrt(2.0 / (N_SAMPLES - 1))
    assert np.all(np.abs(x.mean(0) - mu) <= Z_MAX * se_mean + 1e-3 * np.sqrt(s2))
    assert np.all(np.abs(x.var(0, ddof=1) - s2) <= Z_MAX * se_var + 0.02 * s2)
    # Averaged over the dimensions the variance error is far smaller than the per-dimension allowance.
    assert abs(np.mean(x.var(0, ddof=1) / s2 - 1)) <= Z_MAX * math.sqrt(2.0 / N_SAMPLES / DIM) + 0.005


def test_gaussian_check_catches_a_wrong_coefficient():
    """Negative controls: the same check fails for samplers with one coefficient wrong."""
    sched = DiffusionSchedule.cosine(T)
    mu, s2 = gaussian_problem(2024)
    x0_fn = exact_x0_fn(sched, mu, s2)
    ab = sched.alpha_bars.double()
    g = torch.Generator().manual_seed(2025)
    x_T = torch.randn(N_SAMPLES, DIM, generator=g, dtype=torch.float64)

    # DPM++(2M) with the second-order weight 1/r in place of 1/(2r).
    steps = 10
    plan = dpmpp_2m_plan(sched, steps)
    x, prev = x_T.clone(), None
    for step in plan:
        m = x0_fn(x, step.t)
        b0, b1 = step.b0, step.b1
        if step.order == 2:
            k = -b1 / (b0 + b1)  # = 1/(2r), since b0 + b1 = alpha (1 - e^{-h})
            b0, b1 = (b0 + b1) * (1 + 2 * k), -(b0 + b1) * 2 * k
        x, prev = dpmpp_2m_step(x, m, prev, step.a, b0, b1), m
    mean, var, _, _ = expected_moments("dpmpp_2m", [ab[t].item() for t in timesteps(sched, steps)] + [1.0], mu, s2)
    ok, report = moments_ok(x, mean, var)
    assert not ok, report
    # The correct sampler passes on the same problem.
    assert moments_ok(sample_dpmpp_2m(x0_fn, x_T, sched, steps), mean, var)[0]

    # DDPM with sigma_t = sqrt(beta_t) (the "flexible" upper-bound variance) instead of the posterior std.
    flex = DiffusionSchedule.from_buffers(sched.betas, sched.alphas, sched.alpha_bars, sched.betas.sqrt())
    out = sample_ddpm(x0_fn, x_T, flex, generator=torch.Generator().manual_seed(2026))
    mean, var, _, _ = expected_moments("ddpm", [ab[t].item() for t in range(T, 0, -1)] + [1.0], mu, s2, 1.0)
    ok, report = moments_ok(out, mean, var)
    assert not ok, report

    # DDIM whose x0 coefficient is 1% too large on every step.
    x = x_T.clone()
    for step in ddim_plan(sched, 25):
        x = ddim_step(x, x0_fn(x, step.t), step.a, step.b * 1.01)
    mean, var, _, _ = expected_moments("ddim", [ab[t].item() for t in timesteps(sched, 25)] + [1.0], mu, s2)
    ok, report = moments_ok(x, mean, var)
    assert not ok, report


# ---------------------------------------------------------------------------------------------------------------
# Arguments


def test_bad_arguments():
    sched = DiffusionSchedule.cosine(T)
    x_T = torch.zeros(2, 70)
    x0_fn = smooth_x0_fn(70)
    for steps in (0, -1, T + 1):
        with pytest.raises(ValueError, match=r"steps must be in 1\.\.50"):
            timesteps(sched, steps)
        with pytest.raises(ValueError, match=r"steps must be in 1\.\.50"):
            sample(x0_fn, x_T, sched, method="dpmpp_2m", steps=steps)
        with pytest.raises(ValueError, match=r"steps must be in 1\.\.50"):
            sample(x0_fn, x_T, sched, method="ddim", steps=steps)
    with pytest.raises(ValueError, match="integer"):
        timesteps(sched, 2.5)
    with pytest.raises(ValueError, match="unknown sampling method 'euler'"):
        sample(x0_fn, x_T, sched, method="euler")
    with pytest.raises(ValueError, match="unknown timestep spacing 'uniform'"):
        timesteps(sched, 10, spacing="uniform")
    with pytest.raises(ValueError, match="unknown timestep spacing"):
        sample(x0_fn, x_T, sched, method="ddim", steps=10, spacing="uniform")
    with pytest.raises(ValueError, match="ddpm visits every step"):
        sample(x0_fn, x_T, sched, method="ddpm", steps=10, generator=torch.Generator())
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(x0_fn, x_T, sched, 10, eta=-0.5)
    with pytest.raises(ValueError, match="shape"):
        sample_dpmpp_2m(lambda x, t: x[:1], x_T, sched, 5)


def test_dispatcher_matches_samplers():
    sched = DiffusionSchedule.cosine(T)
    x0_fn = smooth_x0_fn(70)
    x_T = torch.randn(3, 70, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample(x0_fn, x_T, sched), sample_dpmpp_2m(x0_fn, x_T, sched, 10))
    assert torch.equal(sample(x0_fn, x_T, sched, method="ddim", steps=7),
                       sample_ddim(x0_fn, x_T, sched, 7))
    assert torch.equal(sample(x0_fn, x_T, sched, method="ddpm", generator=torch.Generator().manual_seed(2)),
                       sample_ddpm(x0_fn, x_T, sched, generator=torch.Generator().manual_seed(2)))
