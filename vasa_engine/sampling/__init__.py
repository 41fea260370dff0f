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

The package: `schedule` (the schedule and the visited timesteps), `steps` (per-step coefficient plans and the update
of one step) and `samplers` (the sampling loops).
"""

from .samplers import METHODS, Noise, X0Fn, sample, sample_ddim, sample_ddpm, sample_dpmpp_2m
from .schedule import SPACINGS, DiffusionSchedule, timesteps
from .steps import (DDIMStep, DDPMStep, DPMStep, ddim_coefficients, ddim_plan, ddim_step, ddpm_plan, ddpm_step,
                    dpmpp_2m_plan, dpmpp_2m_step)

__all__ = ["METHODS", "SPACINGS", "DDIMStep", "DDPMStep", "DPMStep", "DiffusionSchedule", "Noise", "X0Fn",
           "ddim_coefficients", "ddim_plan", "ddim_step", "ddpm_plan", "ddpm_step", "dpmpp_2m_plan", "dpmpp_2m_step",
           "sample", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m", "timesteps"]
