"""The sampling loops: ancestral DDPM over every step, DDIM and DPM-Solver++(2M) over a few.

Every sampler takes the model as ``x0_fn(x_t, t) -> x0_hat`` (same shape as x_t, t a Python int). Guidance is the
caller's business: batch the guidance branches inside x0_fn and return the combined estimate. x_t is carried in
float32 (float64 when x_T is float64) and the model output is cast to that dtype before each update. Randomness
only comes from explicit noise tensors or a passed ``torch.Generator``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .schedule import DiffusionSchedule, check_steps
from .steps import ddim_plan, ddpm_plan, dpmpp_2m_plan

X0Fn = Callable[[torch.Tensor, int], torch.Tensor]
Noise = torch.Tensor | Sequence[torch.Tensor]

METHODS = ("ddpm", "ddim", "dpmpp_2m")


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
        from ..native import sampler_step

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
    check_steps(T, steps)
    if method == "ddim":
        return sample_ddim(x0_fn, x_T, schedule, steps, **kw)
    return sample_dpmpp_2m(x0_fn, x_T, schedule, steps, **kw)
