"""Audio to motion, window by window: guidance branches, window chaining, and generated motion turned into the
renderer's absolute driving parameters.

The clip is cut the way the reference does it: 1280 zero samples before and 640 after, windows of L frames
(640 samples each at 16 kHz), each window conditioned on the last Lp generated frames and audio features of the
previous one, all windows starting from the same noise. Frame j of the padded clip shows the audio around
original frame j - 2, so the two lead-in frames are dropped and the motion is cut to the audio's length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import backend
from .audio_features import JOYVASA_CLIP_PAD, SAMPLES_PER_VIDEO_FRAME
from .errors import InputError
from .models.keypoints import rotation_matrix
from .models.motion_generator import MotionGenerator
from .sampling import sample, sample_ddpm

LEAD_IN_FRAMES = JOYVASA_CLIP_PAD[0] // SAMPLES_PER_VIDEO_FRAME
LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)  # keep the generated (absolute) expression of these keypoints
SAMPLERS = ("dpmpp_2m", "ddim", "ddpm")


@dataclass
class Controls:
    """What a caller can set for one generation. Ranges are documented in the README and the CLI help.

    steps / sampler: sampler steps (1..T; "ddpm" always runs all T, as the reference) and method.
    audio_scale, gaze_scale, distance_scale, emotion_scale: classifier-free guidance weight per condition
    (incremental: each scale weighs the change its condition adds on top of the ones before it).
    gaze (theta, phi) degrees, distance (relative, 1 = as in the portrait), emotion (vector of the model's
    emotion size): model conditions; a model without them refuses them, except distance, which then scales the head.
    head_pitch, head_yaw, head_roll: degrees added to the generated head pose.
    eye_openness, lip_openness: fixed target ratios for the retargeting MLPs (override the generated eyes/mouth).
    smoothing: weight of the previous value in the moving average of pose, scale and translation (0 = none).
    """

    steps: int = 10
    sampler: str = "dpmpp_2m"
    audio_scale: float = 2.8
    gaze_scale: float = 1.0
    distance_scale: float = 1.0
    emotion_scale: float = 1.0
    seed: int = 0
    gaze: tuple[float, float] | None = None
    distance: float | None = None
    emotion: Sequence[float] | None = None
    head_pitch: float = 0.0
    head_yaw: float = 0.0
    head_roll: float = 0.0
    eye_openness: float | None = None
    lip_openness: float | None = None
    smoothing: float = 0.99
    driving_multiplier: float = 1.10
    stitching: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class MotionTemplate:
    """Statistics that map the 70-d normalized motion to LivePortrait's parameters (JoyVASA's motion template).

    exp: (x - mean) / (std + 1e-9); scale, t, pitch, yaw, roll: (x - min) / (max - min + 1e-9).
    """

    mean_exp: torch.Tensor
    std_exp: torch.Tensor
    minimum: torch.Tensor  # (7,): scale, tx, ty, tz, pitch, yaw, roll
    maximum: torch.Tensor

    KEYS = ("scale", "t", "pitch", "yaw", "roll")

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "MotionTemplate":
        def cat(prefix):
            return torch.cat([t[f"{prefix}_{k}"].reshape(-1).float() for k in cls.KEYS])

        return cls(t["mean_exp"].reshape(-1).float(), t["std_exp"].reshape(-1).float(), cat("min"), cat("max"))

    @classmethod
    def neutral(cls) -> "MotionTemplate":
        """Plausible ranges for a model without a template (random weights): small expression, +-20 degrees."""
        low = torch.tensor([0.9, -0.05, -0.05, -0.05, -20.0, -20.0, -20.0])
        high = torch.tensor([1.1, 0.05, 0.05, 0.05, 20.0, 20.0, 20.0])
        return cls(torch.zeros(63), torch.full((63,), 0.02), low, high)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {"mean_exp": self.mean_exp, "std_exp": self.std_exp}
        sizes = (1, 3, 1, 1, 1)
        offsets = [0, 1, 4, 5, 6]
        for key, off, n in zip(self.KEYS, offsets, sizes):
            out[f"min_{key}"] = self.minimum[off : off + n].clone()
            out[f"max_{key}"] = self.maximum[off : off + n].clone()
        return out

    def denormalize(self, m: torch.Tensor) -> dict[str, torch.Tensor]:
        """(F, 70) -> exp (F, 21, 3), scale (F, 1), t (F, 3), pitch, yaw, roll (F,)."""
        m = m.float()
        exp = m[:, :63] * self.std_exp.to(m) + self.mean_exp.to(m)
        lo, hi = self.minimum.to(m), self.maximum.to(m)
        rest = m[:, 63:70] * (hi - lo) + lo
        return {"exp": exp.view(-1, 21, 3), "scale": rest[:, 0:1], "t": rest[:, 1:4], "pitch": rest[:, 4],
                "yaw": rest[:, 5], "roll": rest[:, 6]}

    def normalize(self, exp, scale, t, pitch, yaw, roll) -> torch.Tensor:
        lo, hi = self.minimum, self.maximum
        rest = torch.cat([scale.reshape(-1, 1), t.reshape(-1, 3), pitch.reshape(-1, 1), yaw.reshape(-1, 1),
                          roll.reshape(-1, 1)], dim=1)
        return torch.cat([(exp.reshape(-1, 63) - self.mean_exp) / (self.std_exp + 1e-9),
                          (rest - lo) / (hi - lo + 1e-9)], dim=1)


def output_frames(num_samples: int) -> int:
    """Video frames for an audio clip: its duration at 25 fps, rounded to the nearest frame."""
    return round(num_samples / SAMPLES_PER_VIDEO_FRAME)


# --------------------------------------------------------------------------------------------------- guidance


class GuidedDenoiser:
    """x0_fn for the samplers: every guidance branch of one step in ONE batched forward, combined incrementally.

    Branch 0 has every condition dropped (the audio replaced by the learned null feature); branch k adds the
    k-th active condition (order: audio, gaze, distance, emotion). x0 = b0 + sum_k s_k (b_k - b_{k-1}).
    When every scale is 1 this is just the last branch, and only that one runs.
    """

    def __init__(self, model: MotionGenerator, audio: torch.Tensor, prev_motion: torch.Tensor | None,
                 prev_audio: torch.Tensor | None, conditions: dict[str, torch.Tensor], scales: dict[str, float]):
        net = model.denoising_net
        self.net = net
        n = audio.shape[0]
        prev_motion, prev_audio = model.context(n, prev_motion, prev_audio)
        active = ["audio"] + [c for c in ("gaze", "distance", "emotion") if conditions.get(c) is not None]
        self.scales = [float(scales.get(c, 1.0)) for c in active]
        self.single = all(s == 1.0 for s in self.scales)
        nb = 1 if self.single else len(active) + 1
        self.n, self.nb = n, nb
        null = model.null_audio_feat.expand(n, audio.shape[1], -1)
        audios, conds = [], {c: [] for c in ("gaze", "distance", "emotion")}
        for b in range(nb):
            k = len(active) if self.single else b  # conditions present in this branch: the first k
            audios.append(audio if k >= 1 else null)
            for c in conds:
                value = conditions.get(c)
                present = value is not None and c in active[:k]
                conds[c].append(value.expand(n, -1) if present else None)
        self.audio = torch.cat(audios).to(net.feature_proj.weight.dtype)
        self.prev_motion = prev_motion.repeat(nb, 1, 1).to(self.audio.dtype)
        self.prev_audio = prev_audio.repeat(nb, 1, 1).to(self.audio.dtype)
        self.conds = {}
        for c, values in conds.items():
            if any(v is not None for v in values):
                ref = next(v for v in values if v is not None)
                # rows of branches that drop the condition get a zero value and a False presence flag
                # built with device fills (no host copy), so the denoiser can be made inside a CUDA-graph capture
                present = torch.zeros(nb * n, dtype=torch.bool, device=ref.device)
                for b, v in enumerate(values):
                    if v is not None:
                        present[b * n : (b + 1) * n] = True
                self.conds[c] = (torch.cat([v if v is not None else torch.zeros_like(ref) for v in values]), present)
        self.n_prev = prev_motion.shape[1]
        self.step_scales = [] if self.single else self.scales  # weights of b_k - b_{k-1}, k = 1 .. nb - 1

    def branch_outputs(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """(nb, *x_t.shape) x0 predictions of every branch, one batched forward, in the model's dtype. The fused
        sampler step (vasa_engine.native.sampler_step) combines them with `step_scales` and updates x_t."""
        x = x_t.to(self.audio.dtype).repeat(self.nb, 1, 1)
        step = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = self.net(x, self.audio, self.prev_motion, self.prev_audio, step, conditions=self.conds)
        return out[:, self.n_prev :].reshape(self.nb, *x_t.shape)

    def __call__(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        out = self.branch_outputs(x_t, t).float()
        x0 = out[0]
        for k, s in enumerate(self.step_scales, start=1):
            x0 = x0 + s * (out[k] - out[k - 1])
        return x0


DenoiserFactory = Callable[[int, torch.Tensor, torch.Tensor | None, torch.Tensor | None], Callable]


def guidance_scales(controls: Controls) -> dict[str, float]:
    """The classifier-free guidance weight of each condition, as GuidedDenoiser takes them."""
    return {"audio": controls.audio_scale, "gaze": controls.gaze_scale, "distance": controls.distance_scale,
            "emotion": controls.emotion_scale}


def model_conditions(controls: Controls, cfg, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The per-window model conditions the controls ask for (gaze; distance where the model has it; emotion)."""
    conditions = {}
    if controls.gaze is not None:
        conditions["gaze"] = torch.tensor([list(controls.gaze)], dtype=torch.float32, device=device)
    if controls.distance is not None and cfg.distance:
        conditions["distance"] = torch.tensor([[controls.distance]], dtype=torch.float32, device=device)
    if controls.emotion is not None:
        conditions["emotion"] = torch.tensor([list(controls.emotion)], dtype=torch.float32, device=device)
    return conditions


def start_noise(cfg, seed: int) -> torch.Tensor:
    """The start noise (1, L, M) every window is sampled from, drawn on the CPU from `seed`."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(1, cfg.n_motions, cfg.motion_dim, generator=gen)


def sample_window(model: MotionGenerator, audio: torch.Tensor, prev_motion: torch.Tensor | None,
                  prev_audio: torch.Tensor | None, controls: Controls, x_T: torch.Tensor, *,
                  conditions: dict[str, torch.Tensor] | None = None, x0_fn: Callable | None = None,
                  ddpm_generator: torch.Generator | None = None, schedule=None,
                  ddpm_noise: torch.Tensor | None = None) -> torch.Tensor:
    """One window: audio features (1, L, d) and the previous frames' motion (1, Lp, M) and audio (1, Lp, d) (None:
    the learned start context) -> normalized motion (1, L, M), sampled from the start noise x_T (1, L, M, fp32).

    x0_fn replaces the guided transformer. The "ddpm" sampler takes its per-step noise from ddpm_noise (T - 1,
    1, L, M), else draws it from ddpm_generator (CPU). With a schedule and ddpm_noise given, nothing here copies
    between host and device, so the call can be captured in a CUDA graph.
    """
    schedule = schedule if schedule is not None else model.diffusion_sched.schedule()
    if x0_fn is None:
        x0_fn = GuidedDenoiser(model, audio, prev_motion, prev_audio, conditions or {}, guidance_scales(controls))
    if controls.sampler == "ddpm":
        z = ddpm_noise if ddpm_noise is not None else ddpm_window_noise(schedule, x_T, ddpm_generator, controls)
        return sample_ddpm(x0_fn, x_T, schedule, noise=z)
    return sample(x0_fn, x_T, schedule, method=controls.sampler, steps=controls.steps)


def ddpm_window_noise(schedule, x_T: torch.Tensor, generator: torch.Generator | None, controls: Controls):
    """The ancestral sampler's per-step noise for one window (T - 1, *x_T.shape), drawn on the CPU."""
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(controls.seed + 1)
    return torch.randn(max(schedule.T - 1, 0), *x_T.shape, generator=generator).to(x_T.device)


def generate_windows(model: MotionGenerator, features: torch.Tensor, controls: Controls,
                     conditions: dict[str, torch.Tensor] | None = None,
                     denoiser_factory: DenoiserFactory | None = None, noise: torch.Tensor | None = None,
                     progress: Callable[[int], None] | None = None, graphs=None) -> torch.Tensor:
    """Audio features of every window (W, L, d) -> normalized motion (W * L, M), windows chained in order.

    denoiser_factory(window, audio, prev_motion, prev_audio) -> x0_fn replaces the guided transformer (tests use
    exact predictors of known distributions). noise: the start noise (1, L, M), shared by every window.
    graphs: a vasa_engine.graphs.GraphCache: on CUDA the whole sampler loop of a window (every step, every
    guidance branch, the fused step kernel) is captured once and replayed for each window.
    """
    if graphs is not None and denoiser_factory is None:
        return _generate_windows_graphed(model, features, controls, conditions or {}, noise, progress, graphs)
    cfg = model.cfg
    device = features.device
    schedule = model.diffusion_sched.schedule()
    if noise is None:
        noise = start_noise(cfg, controls.seed)
    x_T = noise.to(device=device, dtype=torch.float32)
    ddpm_gen = torch.Generator(device="cpu").manual_seed(controls.seed + 1)
    prev_motion = prev_audio = None
    windows = []
    for w in range(features.shape[0]):
        audio = features[w : w + 1]
        x0_fn = denoiser_factory(w, audio, prev_motion, prev_audio) if denoiser_factory is not None else None
        motion = sample_window(model, audio, prev_motion, prev_audio, controls, x_T, conditions=conditions,
                               x0_fn=x0_fn, ddpm_generator=ddpm_gen, schedule=schedule)
        windows.append(motion[0])
        prev_motion, prev_audio = motion[:, -cfg.n_prev_motions :], audio[:, -cfg.n_prev_motions :]
        if progress is not None:
            progress(w + 1)
    return torch.cat(windows)


def _generate_windows_graphed(model, features, controls, conditions, noise, progress, graphs) -> torch.Tensor:
    """generate_windows with one captured graph for the sampler loop: the window's audio, context, start noise,
    condition values and (ddpm) step noise are its inputs; everything else is fixed by the key."""
    cfg = model.cfg
    device = features.device
    schedule = model.diffusion_sched.schedule()  # host floats, computed outside the capture
    x_T = (noise if noise is not None else start_noise(cfg, controls.seed)).to(device=device, dtype=torch.float32)
    ddpm_gen = torch.Generator(device="cpu").manual_seed(controls.seed + 1)
    names = sorted(conditions)
    key = ("window", controls.sampler, controls.steps, tuple(sorted(guidance_scales(controls).items())), tuple(names),
           tuple(features.shape[1:]), features.dtype, backend.current())  # a graph replays the kernels it captured

    def window(audio, prev_motion, prev_audio, x_t, *rest):
        conds = dict(zip(names, rest[: len(names)]))
        z = rest[len(names)] if controls.sampler == "ddpm" else None
        return sample_window(model, audio, prev_motion, prev_audio, controls, x_t, conditions=conds,
                             schedule=schedule, ddpm_noise=z)

    prev_motion, prev_audio = model.context(1)
    windows = []
    for w in range(features.shape[0]):
        audio = features[w : w + 1]
        inputs = [audio, prev_motion.to(audio.dtype), prev_audio.to(audio.dtype), x_T] + [conditions[n] for n in names]
        if controls.sampler == "ddpm":
            inputs.append(ddpm_window_noise(schedule, x_T, ddpm_gen, controls))
        motion = graphs.run(key, window, inputs, copy=True)  # a replay's output buffer is reused by the next one
        windows.append(motion[0])
        prev_motion, prev_audio = motion[:, -cfg.n_prev_motions :], audio[:, -cfg.n_prev_motions :]
        if progress is not None:
            progress(w + 1)
    return torch.cat(windows)


# --------------------------------------------------------------------------------------------------- driving


def euler_from_rotation(rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of keypoints.rotation_matrix: (N, 3, 3) R = (Rz Ry Rx)^T -> pitch, yaw, roll in degrees."""
    deg = 180.0 / math.pi
    yaw = torch.asin((-rot[:, 0, 2]).clamp(-1.0, 1.0))
    pitch = torch.atan2(rot[:, 1, 2], rot[:, 2, 2])
    roll = torch.atan2(rot[:, 0, 1], rot[:, 0, 0])
    return pitch * deg, yaw * deg, roll * deg


def ema(values: torch.Tensor, keep: float) -> torch.Tensor:
    """y_0 = v_0, y_i = (1 - keep) v_i + keep y_{i-1}, along the first axis."""
    if keep <= 0 or values.shape[0] < 2:
        return values
    out = values.clone()
    for i in range(1, values.shape[0]):
        out[i] = (1 - keep) * values[i] + keep * out[i - 1]
    return out


def relative_driving(params: dict[str, torch.Tensor], source, smoothing: float = 0.99) -> dict[str, torch.Tensor]:
    """Generated absolute parameters -> the portrait's driving parameters, relative to the first frame.

    R = R_i R_0^T R_s; exp = exp_s + (exp_i - exp_0) except the lip keypoints, which take exp_i;
    scale = scale_s scale_i / scale_0; t = t_s + (t_i - t_0) with t_z = 0. Pose, scale and translation are
    smoothed first (moving average, `smoothing` = weight of the previous value).
    """
    pose = torch.cat([params["scale"], params["t"], params["pitch"][:, None], params["yaw"][:, None],
                      params["roll"][:, None]], dim=1)
    pose = ema(pose, smoothing)
    scale, t = pose[:, 0:1], pose[:, 1:4]
    rot = rotation_matrix(pose[:, 4], pose[:, 5], pose[:, 6])
    rot_s = rotation_matrix(source.pitch, source.yaw, source.roll).to(rot)
    rot_new = rot @ rot[:1].transpose(1, 2) @ rot_s
    exp = params["exp"]
    exp_new = source.exp.to(exp) + (exp - exp[:1])
    lips = list(LIP_KEYPOINTS)
    exp_new[:, lips] = exp[:, lips]
    scale_new = source.scale.to(scale) * scale / scale[:1]
    t_new = source.t.to(t) + (t - t[:1])
    t_new[:, 2] = 0
    pitch, yaw, roll = euler_from_rotation(rot_new)
    return {"pitch": pitch, "yaw": yaw, "roll": roll, "exp": exp_new, "t": t_new, "scale": scale_new}


def check_controls(controls: Controls, cfg, emotion_dim: int) -> None:
    """Refuse what the loaded model cannot honour, with one clear line."""
    if controls.sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {controls.sampler!r} (use {', '.join(SAMPLERS)})")
    if controls.sampler != "ddpm" and not 1 <= controls.steps <= cfg.n_diff_steps:
        raise InputError(f"steps must be between 1 and {cfg.n_diff_steps} for this model, got {controls.steps}")
    if controls.gaze is not None and not cfg.gaze:
        raise InputError("this motion generator has no gaze condition (JoyVASA's weights condition on audio "
                         "alone); drop --gaze")
    if controls.emotion is not None:
        if not emotion_dim:
            raise InputError("this motion generator has no emotion condition (JoyVASA's weights condition on "
                             "audio alone); drop --emotion")
        if len(controls.emotion) != emotion_dim:
            raise InputError(f"emotion needs {emotion_dim} values for this model, got {len(controls.emotion)}")
    if controls.gaze is not None:
        theta, phi = controls.gaze
        if not (-90 <= theta <= 90 and -90 <= phi <= 90):
            raise InputError(f"gaze angles must lie in [-90, 90] degrees, got ({theta}, {phi})")
    if controls.distance is not None and not 0.25 <= controls.distance <= 4.0:
        raise InputError(f"distance must lie in [0.25, 4] (1 = as in the portrait), got {controls.distance}")
    for name in ("eye_openness", "lip_openness"):
        value = getattr(controls, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise InputError(f"{name.replace('_', ' ')} must lie in [0, 1], got {value}")
    if not 0.0 <= controls.smoothing < 1.0:
        raise InputError(f"smoothing must lie in [0, 1), got {controls.smoothing}")
