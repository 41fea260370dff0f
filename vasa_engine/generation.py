"""The motion-sampling stage: audio features -> normalized motion, window by window.

The clip is cut the way the reference does it: 1280 zero samples before and 640 after, windows of L frames
(640 samples each at 16 kHz), each window conditioned on the last Lp generated frames and audio features of the
previous one, all windows starting from the same noise. Frame j of the padded clip shows the audio around
original frame j - 2, so the two lead-in frames are dropped after driving (`LEAD_IN_FRAMES`).

`MotionSampler` is the stage an engine owns: one guided window (`window`; every guidance branch of a step in one
batched forward), the windows of several streams in one batch (`windows`, for the device scheduler), or every
window of a clip chained in order (`sample_windows`). On CUDA each window's whole sampler loop is one captured
graph, keyed by what fixes its shape and kernels, and shared by every caller of the engine (offline generation and
every stream).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import backend
from .audio_features import JOYVASA_CLIP_PAD, SAMPLES_PER_VIDEO_FRAME
from .controls import SAMPLERS, Controls, check_for_model
from .driving import LIP_KEYPOINTS, MotionTemplate, euler_from_rotation, relative_driving
from .frames import pad_rows, row_bucket
from .graphs import GraphCache
from .models.motion_generator import MotionGenerator
from .runtime import device_context
from .sampling import sample, sample_ddpm

LEAD_IN_FRAMES = JOYVASA_CLIP_PAD[0] // SAMPLES_PER_VIDEO_FRAME

__all__ = ["LEAD_IN_FRAMES", "LIP_KEYPOINTS", "SAMPLERS", "Controls", "GuidedDenoiser", "MotionSampler",
           "MotionTemplate", "WindowRequest", "batch_key", "check_controls", "clip_motion", "euler_from_rotation",
           "generate_windows", "guidance_scales", "model_conditions", "output_frames", "relative_driving",
           "sample_window", "start_noise"]


def output_frames(num_samples: int) -> int:
    """Video frames for an audio clip: its duration at 25 fps, rounded to the nearest frame."""
    return round(num_samples / SAMPLES_PER_VIDEO_FRAME)


def clip_motion(motion, num_samples: int):
    """A clip's driving parameters (every padded frame, lead-in included) -> the frames the engine returns: the two
    lead-in frames dropped (they show the padding before the speech), as many as the audio lasts."""
    return motion[LEAD_IN_FRAMES : LEAD_IN_FRAMES + max(1, output_frames(num_samples))]


def check_controls(controls: Controls, cfg, emotion_dim: int | None = None) -> None:
    """Refuse what the loaded model (config `cfg`) cannot honour, with one clear line."""
    check_for_model(controls, cfg)


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
                     progress: Callable[[int], None] | None = None, graphs: GraphCache | None = None) -> torch.Tensor:
    """Audio features of every window (W, L, d) -> normalized motion (W * L, M), windows chained in order
    (`MotionSampler.sample_windows` on `model`, with the graph cache `graphs` when given)."""
    sampler = MotionSampler(model, graphs=graphs if graphs is not None else GraphCache("sampler loop", enabled=False))
    return sampler.sample_windows(features, controls, conditions, noise=noise, progress=progress,
                                  denoiser_factory=denoiser_factory)


@dataclass
class WindowRequest:
    """One stream's window for `MotionSampler.windows`: what `MotionSampler.window` takes, as one row."""

    audio: torch.Tensor  # (1, L, d)
    prev_motion: torch.Tensor | None  # (1, Lp, M) or None: the learned start context
    prev_audio: torch.Tensor | None
    controls: Controls
    x_T: torch.Tensor  # (1, L, M) float32
    conditions: dict[str, torch.Tensor] = field(default_factory=dict)
    ddpm_generator: torch.Generator | None = None


def batch_key(request: WindowRequest) -> tuple:
    """What rows must share to run in one batched sampler loop."""
    c = request.controls
    return (c.sampler, c.steps, tuple(sorted(guidance_scales(c).items())), tuple(sorted(request.conditions)),
            tuple(request.audio.shape[1:]), request.audio.dtype, request.audio.device)


class MotionSampler:
    """The motion generator's sampling, owned once per engine with its CUDA-graph cache.

    `window` samples one window given its audio features and context; `sample_windows` chains every window of a
    clip. A window runs as a captured graph when the cache is enabled and no replacement denoiser is given: its
    audio, context, start noise, condition values and (ddpm) step noise are the graph's inputs, and the key holds
    everything else that fixes the kernels (sampler, steps, guidance scales, conditions present, shapes, dtype and
    the backend whose kernels were captured). Its calls run under `backend` when one is given.
    """

    def __init__(self, model: MotionGenerator, graphs: GraphCache, backend: str | None = None):
        self.model = model
        self.backend = backend  # the operations' backend its calls run under (None: the caller's)
        self.cfg = model.cfg
        self.graphs = graphs
        self.schedule = model.diffusion_sched.schedule()  # host floats, computed outside any capture

    def start_noise(self, controls: Controls, device: torch.device) -> torch.Tensor:
        return start_noise(self.cfg, controls.seed).to(device=device, dtype=torch.float32)

    def ddpm_generator(self, controls: Controls) -> torch.Generator:
        """The ancestral sampler's step-noise generator of one clip or stream (drawn from in window order)."""
        return torch.Generator(device="cpu").manual_seed(controls.seed + 1)

    def window(self, audio: torch.Tensor, prev_motion: torch.Tensor | None, prev_audio: torch.Tensor | None,
               controls: Controls, x_T: torch.Tensor, conditions: dict[str, torch.Tensor] | None = None, *,
               ddpm_generator: torch.Generator | None = None, x0_fn: Callable | None = None) -> torch.Tensor:
        """audio (1, L, d), context (1, Lp, .) or None (the learned start context), start noise x_T (1, L, M) ->
        normalized motion (1, L, M) in fp32. x0_fn replaces the guided transformer (and runs eagerly)."""
        with backend.use(self.backend or backend.current()), device_context(audio.device):
            return self._window(audio, prev_motion, prev_audio, controls, x_T, conditions or {}, ddpm_generator, x0_fn)

    def _window(self, audio, prev_motion, prev_audio, controls, x_T, conditions, ddpm_generator, x0_fn):
        z = None
        if controls.sampler == "ddpm":
            z = ddpm_window_noise(self.schedule, x_T, ddpm_generator, controls)
        if x0_fn is not None or not self.graphs.enabled:
            return sample_window(self.model, audio, prev_motion, prev_audio, controls, x_T, conditions=conditions,
                                 x0_fn=x0_fn, schedule=self.schedule, ddpm_noise=z)
        prev_motion, prev_audio = self.model.context(audio.shape[0], prev_motion, prev_audio)
        return self._graphed(audio, prev_motion, prev_audio, controls, x_T, conditions, z)

    def _graphed(self, audio, prev_motion, prev_audio, controls, x_T, conditions, z):
        """n windows (n, L, .) with their context as one captured sampler loop (one graph per row count)."""
        names = sorted(conditions)
        key = ("window", controls.sampler, controls.steps, tuple(sorted(guidance_scales(controls).items())),
               tuple(names), tuple(audio.shape), audio.dtype, backend.current())

        def run(audio, prev_motion, prev_audio, x_t, *rest):
            conds = dict(zip(names, rest[: len(names)]))
            noise = rest[len(names)] if z is not None else None
            return sample_window(self.model, audio, prev_motion, prev_audio, controls, x_t, conditions=conds,
                                 schedule=self.schedule, ddpm_noise=noise)

        inputs = [audio, prev_motion.to(audio.dtype), prev_audio.to(audio.dtype), x_T]
        inputs += [conditions[n] for n in names] + ([z] if z is not None else [])
        return self.graphs.run(key, run, inputs, copy=True)  # a replay's output buffer is reused by the next one

    @torch.no_grad()
    def windows(self, requests: Sequence[WindowRequest]) -> list[torch.Tensor]:
        """Windows of several streams, each as `window` would sample it -> their normalized motion (1, L, M) each,
        in request order. Rows that can share a forward (same sampler, steps, guidance scales, conditions present,
        shapes and dtype) run as one batch: one denoiser forward per step for every branch of every row, each row
        with its own start noise, context, audio, condition values and (ddpm) step noise. With CUDA graphs a batch
        is padded to the next row bucket (`frames.ROW_BUCKETS`) and replayed from that bucket's graph."""
        out: list[torch.Tensor | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(batch_key(r), []).append(i)
        for rows in groups.values():
            batch = [requests[i] for i in rows]
            with backend.use(self.backend or backend.current()), device_context(batch[0].audio.device):
                motion = self._rows(batch)
            for k, i in enumerate(rows):
                out[i] = motion[k : k + 1]
        return out

    def _rows(self, batch: list[WindowRequest]) -> torch.Tensor:
        controls = batch[0].controls
        contexts = [self.model.context(1, r.prev_motion, r.prev_audio) for r in batch]
        audio = torch.cat([r.audio for r in batch])
        prev_motion = torch.cat([m.to(audio.dtype) for m, _ in contexts])
        prev_audio = torch.cat([a.to(audio.dtype) for _, a in contexts])
        x_T = torch.cat([r.x_T for r in batch])
        names = sorted(batch[0].conditions)
        conditions = {n: torch.cat([r.conditions[n].reshape(1, -1) for r in batch]) for n in names}
        z = None
        if controls.sampler == "ddpm":
            z = torch.cat([ddpm_window_noise(self.schedule, r.x_T, r.ddpm_generator, r.controls) for r in batch], 1)
        if not self.graphs.enabled:
            return sample_window(self.model, audio, prev_motion, prev_audio, controls, x_T, conditions=conditions,
                                 schedule=self.schedule, ddpm_noise=z)
        # padded to the row bucket (last row repeated), so a few graphs serve every row count
        n = len(batch)
        rows = row_bucket(n)
        audio, prev_motion, prev_audio, x_T = (pad_rows(v, rows) for v in (audio, prev_motion, prev_audio, x_T))
        conditions = {k: pad_rows(v, rows) for k, v in conditions.items()}
        if z is not None:
            z = pad_rows(z.transpose(0, 1), rows).transpose(0, 1).contiguous()
        return self._graphed(audio, prev_motion, prev_audio, controls, x_T, conditions, z)[:n]

    def sample_windows(self, features: torch.Tensor, controls: Controls,
                       conditions: dict[str, torch.Tensor] | None = None, *, noise: torch.Tensor | None = None,
                       progress: Callable[[int], None] | None = None,
                       denoiser_factory: DenoiserFactory | None = None) -> torch.Tensor:
        """Audio features of every window (W, L, d) -> normalized motion (W * L, M), windows chained in order.

        denoiser_factory(window, audio, prev_motion, prev_audio) -> x0_fn replaces the guided transformer (tests use
        exact predictors of known distributions). noise: the start noise (1, L, M), shared by every window.
        """
        lp = self.cfg.n_prev_motions
        x_T = (noise if noise is not None else start_noise(self.cfg, controls.seed)).to(features.device, torch.float32)
        ddpm_gen = self.ddpm_generator(controls)
        prev_motion = prev_audio = None
        windows = []
        for w in range(features.shape[0]):
            audio = features[w : w + 1]
            x0_fn = denoiser_factory(w, audio, prev_motion, prev_audio) if denoiser_factory is not None else None
            motion = self.window(audio, prev_motion, prev_audio, controls, x_T, conditions,
                                 ddpm_generator=ddpm_gen, x0_fn=x0_fn)
            windows.append(motion[0])
            prev_motion, prev_audio = motion[:, -lp:], audio[:, -lp:]
            if progress is not None:
                progress(w + 1)
        return torch.cat(windows)
