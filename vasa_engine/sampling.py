"""Discrete-time diffusion schedule and samplers for an x0-predicting denoiser.

Indexing: the integer step t runs 0..T. Index 0 is the clean sample (beta_0 = 0, alpha_bar_0 = 1, sigma_0 = 0);
t = 1..T are the noisy steps the denoiser was trained on, x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.

Every sampler takes the model as ``x0_fn(x_t, t) -> x0_hat`` (same shape as x_t, t a Python int). Guidance is the
caller's business: batch the guidance branches inside x0_fn and return the combined estimate.

Precision: x_t is carried in float32 (float64 when x_T is float64); the model output is cast to that dtype before
each update, so a half-precision model does not lower the precision of the trajectory. Per-step coefficients are
precomputed as Python floats (``ddpm_plan``, ``ddim_plan``, ``dpmpp_2m_plan``), so the sampling loop is a fixed
sequence of tensor operations on constants, which is what a captured CUDA graph replays. The update of one step
lives in a small pure function (``ddpm_step``, ``ddim_step``, ``dpmpp_2m_step``) that a fused kernel can be
tested against.

Randomness only comes from explicit noise tensors or a passed ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np
import torch

X0Fn = Callable[[torch.Tensor, int], torch.Tensor]
Noise = torch.Tensor | Sequence[torch.Tensor]

SPACINGS = ("trailing", "linspace", "leading")
METHODS = ("ddpm", "ddim", "dpmpp_2m")


# ---------------------------------------------------------------------------------------------------------------
# Schedule


class DiffusionSchedule:
    """Per-step buffers of a discrete diffusion schedule, each a 1-D tensor of length T + 1 indexed by t.

    betas[t], alphas[t] = 1 - betas[t], alpha_bars[t] = prod_{k <= t} alphas[k], and sigmas[t], the standard
    deviation of the posterior q(x_{t-1} | x_t, x0): sigma_t^2 = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t).
    Index 0 is the clean sample: beta_0 = 0, alpha_bar_0 = 1, sigma_0 = 0. The tensors are float32 or float64.
    """

    def __init__(self, betas: torch.Tensor, alphas: torch.Tensor, alpha_bars: torch.Tensor, sigmas: torch.Tensor):
        buffers = {"betas": betas, "alphas": alphas, "alpha_bars": alpha_bars, "sigmas": sigmas}
        n = None
        for name, value in buffers.items():
            if not isinstance(value, torch.Tensor):
                value = torch.as_tensor(value)
            if value.ndim != 1:
                raise ValueError(f"schedule buffer {name!r} must be 1-D (T + 1,), got shape {tuple(value.shape)}")
            if n is None:
                n = value.shape[0]
            elif value.shape[0] != n:
                raise ValueError(f"schedule buffers differ in length: {name!r} has {value.shape[0]}, expected {n}")
            if not value.is_floating_point():
                value = value.to(torch.float64)
            elif value.dtype not in (torch.float32, torch.float64):
                value = value.to(torch.float32)
            buffers[name] = value.detach().cpu()
        if n < 2:
            raise ValueError(f"a schedule needs T >= 1 (buffers of length >= 2), got length {n}")
        ab = buffers["alpha_bars"].double()
        if abs(ab[0].item() - 1.0) > 1e-6 or abs(buffers["betas"][0].item()) > 1e-6:
            raise ValueError("index 0 of the schedule must be the clean sample (beta_0 = 0, alpha_bar_0 = 1), got "
                             f"beta_0 = {buffers['betas'][0].item()}, alpha_bar_0 = {ab[0].item()}")
        if not bool(((ab[1:] > 0) & (ab[1:] < 1)).all()):
            raise ValueError("alpha_bar_t must lie in (0, 1) for t = 1..T")
        if not bool((ab[1:] <= ab[:-1]).all()):
            raise ValueError("alpha_bar_t must not increase with t")
        self.betas: torch.Tensor = buffers["betas"]
        self.alphas: torch.Tensor = buffers["alphas"]
        self.alpha_bars: torch.Tensor = buffers["alpha_bars"]
        self.sigmas: torch.Tensor = buffers["sigmas"]

    @property
    def T(self) -> int:
        """Number of noisy steps; the buffers have T + 1 entries."""
        return self.betas.shape[0] - 1

    @property
    def dtype(self) -> torch.dtype:
        return self.alpha_bars.dtype

    def __repr__(self) -> str:
        return f"DiffusionSchedule(T={self.T}, dtype={self.dtype})"

    @classmethod
    def from_buffers(cls, betas: torch.Tensor, alphas: torch.Tensor, alpha_bars: torch.Tensor,
                     sigmas: torch.Tensor) -> "DiffusionSchedule":
        """Use stored buffers (e.g. a checkpoint's ``diffusion_sched.*``) exactly as they are."""
        return cls(betas, alphas, alpha_bars, sigmas)

    @classmethod
    def from_alpha_bars(cls, alpha_bars: torch.Tensor) -> "DiffusionSchedule":
        """Derive betas, alphas and sigmas from alpha_bar_t (t = 0..T, alpha_bar_0 = 1), in float64."""
        ab = torch.as_tensor(alpha_bars, dtype=torch.float64).detach().cpu()
        alphas = torch.ones_like(ab)
        alphas[1:] = ab[1:] / ab[:-1]
        betas = 1.0 - alphas
        sigmas = torch.zeros_like(ab)
        sigmas[1:] = torch.sqrt(betas[1:] * (1.0 - ab[:-1]) / (1.0 - ab[1:]))
        return cls(betas, alphas, ab, sigmas)

    @classmethod
    def cosine(cls, T: int, s: float = 0.008, dtype: torch.dtype = torch.float32) -> "DiffusionSchedule":
        """Cosine schedule: f(x) = cos(((x / T) + s) / (1 + s) * pi / 2)^2 for x = 0..T, normalised by f(0);
        beta_t = clip(1 - f(t) / f(t - 1), 1e-4, 0.999); alpha_bar = exp(running sum of log alpha), accumulated
        step by step in ``dtype``; sigma_t = sqrt(((1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)) * beta_t).

        With the default float32 the arithmetic follows the reference order so that the result equals the
        buffers stored in JoyVASA checkpoints.
        """
        if not isinstance(T, int) or isinstance(T, bool) or T < 1:
            raise ValueError(f"T must be a positive integer, got {T!r}")
        x = torch.linspace(0, T, T + 1, dtype=dtype)
        f = torch.cos(((x / T) + s) / (1 + s) * math.pi * 0.5) ** 2
        f = f / f[0]
        betas = torch.clip(1 - (f[1:] / f[:-1]), 0.0001, 0.999)
        betas = torch.cat([torch.zeros(1, dtype=dtype), betas])
        alphas = 1 - betas
        log_alphas = torch.log(alphas)
        # A plain running sum in `dtype` (torch.cumsum may accumulate in a wider type on some devices).
        for i in range(1, T + 1):
            log_alphas[i] = log_alphas[i] + log_alphas[i - 1]
        alpha_bars = log_alphas.exp()
        var = torch.zeros_like(betas)
        for i in range(1, T + 1):
            var[i] = ((1 - alpha_bars[i - 1]) / (1 - alpha_bars[i])) * betas[i]
        return cls(betas, alphas, alpha_bars, torch.sqrt(var))

    def add_noise(self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process: sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise.

        t is an int, or an integer tensor of shape (B,) giving one step per leading-dimension row of x0.
        """
        ab = self.alpha_bars
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            if t.ndim != 1 or t.shape[0] != x0.shape[0]:
                raise ValueError(f"t must be an int or a (B,) tensor with B = {x0.shape[0]}, got {tuple(t.shape)}")
            a = ab[t.cpu().long()]
            shape = (-1,) + (1,) * (x0.ndim - 1)
            c0 = torch.sqrt(a).view(shape).to(device=x0.device, dtype=x0.dtype)
            c1 = torch.sqrt(1 - a).view(shape).to(device=x0.device, dtype=x0.dtype)
            return c0 * x0 + c1 * noise
        t = _check_t(self, int(t))
        a = ab[t]
        return torch.sqrt(a).item() * x0 + torch.sqrt(1 - a).item() * noise


def _check_t(schedule: DiffusionSchedule, t: int) -> int:
    if not 0 <= t <= schedule.T:
        raise ValueError(f"step t must be in 0..{schedule.T}, got {t}")
    return t


# ---------------------------------------------------------------------------------------------------------------
# Timesteps


def timesteps(schedule: DiffusionSchedule | int, steps: int, spacing: str = "trailing") -> list[int]:
    """The noisy steps a few-step sampler visits, descending; the sampler then ends at t = 0 (clean).

    ``steps`` is any integer in 1..T; steps == T gives every step T, T-1, ..., 1 for all spacings. The spacings
    follow the names of Lin et al. 2024 ("Common diffusion noise schedules and sample steps are flawed", table 2)
    as diffusers' DDIM/DDPM schedulers use them, shifted by one because those count training steps 0..T-1 where
    this module counts 1..T. Rounding is of the exact rational values, half to even:

    - "trailing": round(T (steps - i) / steps), i = 0..steps-1. Starts at T (pure noise); the last visited step is
      about T / steps. The default: the only variant that always starts from the step x_T belongs to.
    - "linspace": round(i (T - 1) / (steps - 1)) + 1, i = steps-1..0. Starts at T and ends at 1 (steps == 1 gives
      only t = 1).
    - "leading": 1 + i (T // steps), i = steps-1..0. Ends at 1 and starts at 1 + (steps - 1)(T // steps), in
      general below T (T = 50, steps = 10: 46, 41, ..., 1), so it skips the noisiest steps (poor for few steps).

    diffusers computes the first two in floating point, so where a value is an exact half its result can fall on
    either side, and its "trailing" list sometimes gains an extra entry at its step -1 (our 0): T = 50 with 29 or
    31 steps. Elsewhere the lists are the same.
    """
    T = schedule if isinstance(schedule, int) else schedule.T
    _check_steps(T, steps)
    if spacing == "trailing":
        out = [round(Fraction(T * (steps - i), steps)) for i in range(steps)]
    elif spacing == "linspace":
        out = [round(Fraction(i * (T - 1), steps - 1)) + 1 for i in range(steps - 1, -1, -1)] if steps > 1 else [1]
    elif spacing == "leading":
        out = [1 + i * (T // steps) for i in range(steps - 1, -1, -1)]
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    out = [int(v) for v in out]
    if len(out) != steps or out[-1] < 1 or out[0] > T or any(a <= b for a, b in zip(out, out[1:])):
        raise AssertionError(f"internal error: bad timesteps {out} for T={T}, steps={steps}, spacing={spacing}")
    return out


def _check_steps(T: int, steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"steps must be an integer in 1..{T}, got {steps!r}")
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T} (the schedule has T = {T} steps), got {steps}")
    return int(steps)


# ---------------------------------------------------------------------------------------------------------------
# Per-step coefficient plans (Python floats)


@dataclass(frozen=True)
class DDPMStep:
    """x_{t-1} = c0 x_t + c1 x0_hat + sigma z (z = 0 when t = 1)."""
    t: int
    c0: float
    c1: float
    sigma: float


@dataclass(frozen=True)
class DDIMStep:
    """x_{t_prev} = a x_t + b x0_hat + sigma z."""
    t: int
    t_prev: int
    a: float
    b: float
    sigma: float


@dataclass(frozen=True)
class DPMStep:
    """x_{t_prev} = a x_t + b0 x0_hat(t) + b1 x0_hat(previous visited step); b1 = 0 on first-order steps."""
    t: int
    t_prev: int
    a: float
    b0: float
    b1: float
    order: int


def ddpm_plan(schedule: DiffusionSchedule) -> list[DDPMStep]:
    """Coefficients of the ancestral posterior sampler for t = T..1:
    c0 = (1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t), c1 = (1 - alpha_t) sqrt(alpha_bar_{t-1}) /
    (1 - alpha_bar_t), sigma = sigmas[t] (0 at t = 1). Computed in the schedule's dtype, in the reference order."""
    a, ab, sig = schedule.alphas, schedule.alpha_bars, schedule.sigmas
    plan = []
    for t in range(schedule.T, 0, -1):
        c0 = (1 - ab[t - 1]) * torch.sqrt(a[t]) / (1 - ab[t])
        c1 = (1 - a[t]) * torch.sqrt(ab[t - 1]) / (1 - ab[t])
        plan.append(DDPMStep(t, c0.item(), c1.item(), sig[t].item() if t > 1 else 0.0))
    return plan


def ddim_coefficients(ab_t: float, ab_prev: float, eta: float = 0.0) -> tuple[float, float, float]:
    """(a, b, sigma) of one DDIM step from alpha_bar_t to alpha_bar_prev (float64 math).

    With eps_hat = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t), DDIM sets
    x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z with
    sigma = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev); written on (x_t, x0) that is
    a = sqrt(1 - ab_prev - sigma^2) / sqrt(1 - ab_t), b = sqrt(ab_prev) - a sqrt(ab_t).
    eta = 1 on consecutive steps is the ancestral posterior sampler; ab_prev = 1 gives (0, 1, 0).
    """
    if not 0.0 < ab_t < 1.0 or not 0.0 < ab_prev <= 1.0:
        raise ValueError(f"alpha_bar out of range: ab_t = {ab_t}, ab_prev = {ab_prev}")
    var = (1.0 - ab_prev) / (1.0 - ab_t) * max(0.0, 1.0 - ab_t / ab_prev)
    sigma = eta * math.sqrt(var)
    direction = max(0.0, (1.0 - ab_prev) - sigma * sigma)
    a = math.sqrt(direction) / math.sqrt(1.0 - ab_t)
    b = math.sqrt(ab_prev) - a * math.sqrt(ab_t)
    return a, b, sigma


def ddim_plan(schedule: DiffusionSchedule, steps: int, eta: float = 0.0,
              spacing: str = "trailing") -> list[DDIMStep]:
    """DDIM over the visited steps ``timesteps(schedule, steps, spacing)`` followed by t = 0."""
    if not eta >= 0.0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ts = timesteps(schedule, steps, spacing)
    ab = schedule.alpha_bars.double()
    plan = []
    for t, t_prev in zip(ts, ts[1:] + [0]):
        a, b, sigma = ddim_coefficients(ab[t].item(), ab[t_prev].item(), eta)
        plan.append(DDIMStep(t, t_prev, a, b, sigma))
    return plan


def _lambda(ab: float) -> float:
    """Half log-SNR, log(alpha / sigma) with alpha = sqrt(ab), sigma = sqrt(1 - ab); +inf at ab = 1."""
    if ab >= 1.0:
        return math.inf
    return 0.5 * (math.log(ab) - math.log1p(-ab))


def dpmpp_2m_plan(schedule: DiffusionSchedule, steps: int, spacing: str = "trailing") -> list[DPMStep]:
    """DPM-Solver++(2M) (Lu et al. 2022, data prediction, multistep, second order) on the discrete schedule.

    With alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar), lambda = log(alpha / sigma) and, for a step from s
    (the current step) to u (the next visited step, 0 at the end), h = lambda_u - lambda_s:
      first order: x_u = (sigma_u / sigma_s) x_s - alpha_u (e^{-h} - 1) x0(s)            (= DDIM, eta = 0)
      second order, with the previous visited step q, r = (lambda_s - lambda_q) / h:
        x_u = (sigma_u / sigma_s) x_s - alpha_u (e^{-h} - 1) ((1 + 1/(2r)) x0(s) - 1/(2r) x0(q)).
    The first step is first order (no history) and so is the final step into t = 0, where alpha_u = 1, sigma_u = 0,
    lambda_u = +inf: the update is exactly x_0 = x0(s).
    """
    ts = timesteps(schedule, steps, spacing)
    ab = schedule.alpha_bars.double()
    visits = ts + [0]
    lam = [_lambda(ab[t].item()) for t in visits]
    plan = []
    for i, (t, t_prev) in enumerate(zip(ts, visits[1:])):
        ab_s, ab_u = ab[t].item(), ab[t_prev].item()
        alpha_u = math.sqrt(ab_u)
        a = math.sqrt(1.0 - ab_u) / math.sqrt(1.0 - ab_s)
        h = lam[i + 1] - lam[i]
        phi = -math.expm1(-h)  # 1 - e^{-h}; 1 when h = +inf
        last = i == len(ts) - 1
        if i == 0 or last:
            plan.append(DPMStep(t, t_prev, a, alpha_u * phi, 0.0, 1))
        else:
            r = (lam[i] - lam[i - 1]) / h
            k = 1.0 / (2.0 * r)
            plan.append(DPMStep(t, t_prev, a, alpha_u * phi * (1.0 + k), -alpha_u * phi * k, 2))
    return plan


# ---------------------------------------------------------------------------------------------------------------
# Single-step updates (the arithmetic a fused kernel must reproduce)


def ddpm_step(x_t: torch.Tensor, x0: torch.Tensor, c0: float, c1: float, sigma: float,
              z: torch.Tensor | None) -> torch.Tensor:
    """x_{t-1} = c0 x_t + c1 x0 + sigma z, evaluated as ((c0 * x_t) + (c1 * x0)) + (sigma * z); z None = 0."""
    out = c0 * x_t + c1 * x0
    if z is not None:
        out = out + sigma * z
    return out


def ddim_step(x_t: torch.Tensor, x0: torch.Tensor, a: float, b: float, sigma: float = 0.0,
              z: torch.Tensor | None = None) -> torch.Tensor:
    """x_prev = a x_t + b x0 + sigma z (coefficients from ``ddim_coefficients``); z None or sigma 0: no noise."""
    out = a * x_t + b * x0
    if z is not None and sigma != 0.0:
        out = out + sigma * z
    return out


def dpmpp_2m_step(x_t: torch.Tensor, x0: torch.Tensor, x0_prev: torch.Tensor | None, a: float, b0: float,
                  b1: float) -> torch.Tensor:
    """x_prev = a x_t + b0 x0 + b1 x0_prev (coefficients from ``dpmpp_2m_plan``); x0_prev unused when b1 = 0."""
    out = a * x_t + b0 * x0
    if b1 != 0.0:
        if x0_prev is None:
            raise ValueError("a second-order step needs the previous x0 estimate")
        out = out + b1 * x0_prev
    return out


# ---------------------------------------------------------------------------------------------------------------
# Samplers


def _work(x_T: torch.Tensor) -> torch.Tensor:
    if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point():
        raise ValueError("x_T must be a floating-point tensor")
    return x_T.to(torch.float64 if x_T.dtype == torch.float64 else torch.float32).clone()


def _model(x0_fn: X0Fn, x: torch.Tensor, t: int) -> torch.Tensor:
    x0 = x0_fn(x, t)
    if not isinstance(x0, torch.Tensor) or x0.shape != x.shape:
        got = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(f"x0_fn must return a tensor of the shape of x_t {tuple(x.shape)}, got {got}")
    return x0.to(x.dtype)


def _update(x0_fn: X0Fn, x: torch.Tensor, t: int, a: float, b0: float, b1: float = 0.0, sigma: float = 0.0,
            z: torch.Tensor | None = None, x0_prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: x0 = x0_fn(x, t), then x_prev = ((a x + b0 x0) + b1 x0_prev) + sigma z (the step functions above).

    When x0_fn exposes the raw guidance branches (`branch_outputs` and `step_scales`, as
    vasa_engine.generation.GuidedDenoiser does), guidance and update run fused in one pass of the native kernel
    (vasa_engine.native.sampler_step, the same arithmetic in the same order). Returns (x_prev, x0).
    """
    branch_outputs = getattr(x0_fn, "branch_outputs", None)
    if branch_outputs is not None and x.dtype == torch.float32:
        from .native import sampler_step

        branches = branch_outputs(x, t)
        return sampler_step(branches, x0_fn.step_scales, x, x0_prev if b1 != 0.0 else None,
                            z if sigma != 0.0 else None, a=a, b0=b0, b1=b1, sigma=sigma)
    x0 = _model(x0_fn, x, t)
    out = a * x + b0 * x0
    if b1 != 0.0:
        if x0_prev is None:
            raise ValueError("a second-order step needs the previous x0 estimate")
        out = out + b1 * x0_prev
    if z is not None and sigma != 0.0:
        out = out + sigma * z
    return out, x0


def _noise_source(noise: Noise | None, generator: torch.Generator | None, count: int, x: torch.Tensor,
                  what: str) -> Callable[[int], torch.Tensor]:
    """z for the i-th noisy update (i = 0..count-1), from `noise` if given, else drawn from `generator`."""
    if noise is not None:
        if generator is not None:
            raise ValueError("pass either noise or generator, not both")
        if len(noise) != count:
            raise ValueError(f"{what}: noise must hold {count} tensors (one per noisy update), got {len(noise)}")

        def given(i: int) -> torch.Tensor:
            z = noise[i]
            if z.shape != x.shape:
                raise ValueError(f"noise[{i}] has shape {tuple(z.shape)}, expected {tuple(x.shape)}")
            return z.to(device=x.device, dtype=x.dtype)
        return given
    if count > 0 and generator is None:
        raise ValueError(f"{what} is stochastic: pass noise or a torch.Generator")

    def drawn(i: int) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return drawn


def _finish(x: torch.Tensor, traj: list[torch.Tensor] | None, return_trajectory: bool):
    if return_trajectory:
        return x, torch.stack(traj)
    return x


def sample_ddpm(x0_fn: X0Fn, x_T: torch.Tensor, schedule: DiffusionSchedule, noise: Noise | None = None,
                generator: torch.Generator | None = None, return_trajectory: bool = False):
    """Ancestral sampling over every step t = T..1: x0_hat = x0_fn(x_t, t), x_{t-1} = c0 x_t + c1 x0_hat + sigma_t z.

    z at step t is ``noise[T - t]`` when ``noise`` (a (T-1, *x_T.shape) tensor or a sequence of T-1 tensors) is
    given, otherwise drawn with ``torch.randn(..., generator=generator)`` in the order t = T..2; z = 0 at t = 1.
    Returns x_0, or (x_0, trajectory) with trajectory[j] = x_{T-j}, j = 0..T (T + 1 entries, trajectory[0] = x_T).
    """
    x = _work(x_T)
    T = schedule.T
    z_of = _noise_source(noise, generator, T - 1, x, "ddpm")
    traj = [x] if return_trajectory else None
    for step in ddpm_plan(schedule):
        z = z_of(T - step.t) if step.t > 1 else None
        x, _ = _update(x0_fn, x, step.t, step.c0, step.c1, sigma=step.sigma, z=z)
        if traj is not None:
            traj.append(x)
    return _finish(x, traj, return_trajectory)


def sample_ddim(x0_fn: X0Fn, x_T: torch.Tensor, schedule: DiffusionSchedule, steps: int, eta: float = 0.0,
                generator: torch.Generator | None = None, return_trajectory: bool = False,
                spacing: str = "trailing", noise: Noise | None = None):
    """DDIM (Song et al. 2021) over ``timesteps(schedule, steps, spacing)`` then t = 0; deterministic at eta = 0.

    For eta > 0, z of update i (i = 0..steps-2; the last update into t = 0 has sigma = 0) is ``noise[i]`` when
    given, else drawn from ``generator``. With eta = 1 and steps = T this is the ancestral sampler of
    ``sample_ddpm`` (same noise indexing). Returns x_0, or (x_0, trajectory) with the steps + 1 states visited,
    trajectory[0] = x_T.
    """
    plan = ddim_plan(schedule, steps, eta, spacing)
    x = _work(x_T)
    if eta == 0 and noise is not None:
        raise ValueError("ddim with eta = 0 is deterministic and takes no noise")
    z_of = _noise_source(noise, generator, steps - 1 if eta > 0 else 0, x, "ddim with eta > 0")
    traj = [x] if return_trajectory else None
    for i, step in enumerate(plan):
        z = z_of(i) if step.sigma > 0 else None
        x, _ = _update(x0_fn, x, step.t, step.a, step.b, sigma=step.sigma, z=z)
        if traj is not None:
            traj.append(x)
    return _finish(x, traj, return_trajectory)


def sample_dpmpp_2m(x0_fn: X0Fn, x_T: torch.Tensor, schedule: DiffusionSchedule, steps: int,
                    return_trajectory: bool = False, spacing: str = "trailing"):
    """DPM-Solver++(2M) over ``timesteps(schedule, steps, spacing)`` then t = 0 (see ``dpmpp_2m_plan``).

    Deterministic; one model call per visited step. Returns x_0, or (x_0, trajectory) with the steps + 1 states
    visited, trajectory[0] = x_T.
    """
    plan = dpmpp_2m_plan(schedule, steps, spacing)
    x = _work(x_T)
    traj = [x] if return_trajectory else None
    x0_prev = None
    for step in plan:
        x, x0_prev = _update(x0_fn, x, step.t, step.a, step.b0, step.b1, x0_prev=x0_prev)
        if traj is not None:
            traj.append(x)
    return _finish(x, traj, return_trajectory)


def sample(x0_fn: X0Fn, x_T: torch.Tensor, schedule: DiffusionSchedule, method: str = "dpmpp_2m",
           steps: int | None = None, **kw):
    """Run one of the samplers: "ddpm" (every step; steps must be None or T), "ddim" or "dpmpp_2m" (steps
    defaults to 10, capped at T). Extra keywords go to the sampler (noise, generator, eta, spacing,
    return_trajectory)."""
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {', '.join(METHODS)}")
    T = schedule.T
    if method == "ddpm":
        if steps is not None and steps != T:
            raise ValueError(f"ddpm visits every step: steps must be None or T = {T}, got {steps!r} "
                             "(use method='ddim' with eta=1.0 for an ancestral sampler on fewer steps)")
        return sample_ddpm(x0_fn, x_T, schedule, **kw)
    if steps is None:
        steps = min(10, T)
    _check_steps(T, steps)
    if method == "ddim":
        return sample_ddim(x0_fn, x_T, schedule, steps, **kw)
    return sample_dpmpp_2m(x0_fn, x_T, schedule, steps, **kw)
