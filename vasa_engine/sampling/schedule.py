"""The discrete-time diffusion schedule, and the noisy steps a few-step sampler visits.

Indexing: the integer step t runs 0..T. Index 0 is the clean sample (beta_0 = 0, alpha_bar_0 = 1, sigma_0 = 0);
t = 1..T are the noisy steps the denoiser was trained on, x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

SPACINGS = ("trailing", "linspace", "leading")


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
    check_steps(T, steps)
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


def check_steps(T: int, steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise ValueError(f"steps must be an integer in 1..{T}, got {steps!r}")
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T} (the schedule has T = {T} steps), got {steps}")
    return int(steps)
