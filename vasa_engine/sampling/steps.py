"""Per-step coefficient plans (Python floats, so a sampling loop is a fixed sequence of tensor operations on
constants, which is what a captured CUDA graph replays) and the update of one step, the arithmetic a fused kernel
must reproduce."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .schedule import DiffusionSchedule, timesteps


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
