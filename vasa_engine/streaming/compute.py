"""One stream's work on the engine's stages, chunk by chunk: audio features of the new span, one motion window
placed after the committed context, driving, and frames launched on the engine's shared frame renderer. The
session (session.py) decides when; this decides what."""

from __future__ import annotations

import time
from typing import Callable
from dataclasses import replace

import numpy as np
import torch

from ..audio_features import SAMPLES_PER_VIDEO_FRAME
from ..controls import Controls
from ..driving import PARAM_KEYS, Driving, Motion, apply_controls
from ..generation import WindowRequest, model_conditions
from ..scheduler.jobs import FramesResult
from .audio_input import ChunkPlan, Utterance
from .effects import Crossfade, idle_blink
from .settings import StreamSettings


class StreamCompute:
    """The stages one session runs, on its engine (the engine's own stages and graphs, shared with every other
    session and with offline generation; an engine variant without graphs when the settings turn them off)."""

    def __init__(self, engine, avatar, controls: Controls, settings: StreamSettings, *,
                 cancelled: Callable[[], bool] = lambda: False):
        if not settings.cuda_graphs and engine.cuda_graphs:
            engine = engine.variant(cuda_graphs=False)
        self.engine, self.avatar, self.controls, self.settings = engine, avatar, controls, settings
        self.device = engine.device
        stack = engine.motion_stack
        self.cfg = stack.generator.cfg
        self.sampler = engine.motion_sampler
        self.conditions = model_conditions(controls, self.cfg, self.device)
        self.x_T = self.sampler.start_noise(controls, self.device)
        self.ddpm_gen = self.sampler.ddpm_generator(controls)
        self.windows = 0
        self.batch = settings.batch_size or engine.batch_size
        self.rest = {k: getattr(avatar.source, k).float().to(self.device) for k in PARAM_KEYS}
        self.crossfade = Crossfade(settings.crossfade_frames)
        self.last_steps: int | None = None  # sampler steps of the last window (batched: as the scheduler ran it)
        # batched: the engine's device scheduler runs this session's windows and frames (admission first)
        self.scheduler = engine.scheduler if settings.batched else None
        self.slot = self.scheduler.open_slot() if settings.batched else None
        self.cancelled = cancelled  # the session's: True once it is closed (its renders are skipped)

    def set_controls(self, controls: Controls, utterance_driving: Driving | None) -> None:
        """New controls from the next chunk on: the sampler's conditions and steps, and the driving of the current
        utterance (its smoothing state is kept, so the motion does not jump); a new seed applies to the next
        utterance's first window."""
        self.controls = controls
        self.conditions = model_conditions(controls, self.cfg, self.device)
        self.x_T = self.sampler.start_noise(controls, self.device)
        self.ddpm_gen = self.sampler.ddpm_generator(controls)
        if utterance_driving is not None:
            utterance_driving.controls = controls
            utterance_driving.keep = float(controls.smoothing)

    def eye_open(self) -> float:
        """The eye openness idle blinks close from: the controls' target, else the portrait's own."""
        c = self.controls
        return float(c.eye_openness if c.eye_openness is not None else self.avatar.eye_ratio.float().mean())

    def release(self) -> None:
        """Leave the device scheduler (batched sessions): queued work is cancelled, the slot freed."""
        if self.slot is not None:
            self.scheduler.close_slot(self.slot)

    def driving(self) -> Driving:
        return self.engine.driving(self.avatar, self.controls)

    # ------------------------------------------------------------------------------------------ one chunk

    def chunk(self, utt: Utterance, plan: ChunkPlan) -> tuple[torch.Tensor, Motion]:
        """The window of `plan`: -> the normalized motion (n, M) of its n new frames and their Motion (every padded
        frame, lead-in included); the utterance's context (motion, features) and committed count move on."""
        samples = utt.samples(plan.span_start * SAMPLES_PER_VIDEO_FRAME, plan.span_stop * SAMPLES_PER_VIDEO_FRAME)
        heard = self.features(samples, plan)  # (1, n + lookahead, d)
        n = plan.frames
        deadline = self.deadline(utt.arrival(min((plan.first + 1) * SAMPLES_PER_VIDEO_FRAME, utt.padded) - 1))
        motion = self.sample(heard, utt.motion, utt.feats, plan.first, deadline)[:, :n].float()  # (1, n, M)
        lp = self.cfg.n_prev_motions
        utt.motion = (motion if utt.motion is None else torch.cat([utt.motion, motion], dim=1))[:, -lp:]
        new_feats = heard[:, :n]
        utt.feats = (new_feats if utt.feats is None else torch.cat([utt.feats, new_feats], dim=1))[:, -lp:]
        utt.committed = plan.stop
        return motion[0], utt.driving(motion[0])

    def features(self, samples: np.ndarray, plan: ChunkPlan) -> torch.Tensor:
        """The span's audio -> features (1, n, d) of frames [first, stop + lookahead): the new frames, then the
        look-ahead frames. The span is padded as JoyVASA pads a window (`AudioFeatureEncoder.window_features`)."""
        feats = self.engine.audio_stage.window_features(torch.from_numpy(samples)[None])
        lookahead = self.settings.lookahead_frames
        return feats[:, plan.first - plan.span_start : plan.stop + lookahead - plan.span_start]

    def window_audio(self, heard: torch.Tensor) -> torch.Tensor:
        """(1, h, d) features of the frames heard -> (1, L, d): them, then the null audio feature."""
        L = self.cfg.n_motions
        heard = heard[:, :L]
        null = self.sampler.model.null_audio_feat.to(heard.dtype).expand(1, L - heard.shape[1], -1)
        return torch.cat([heard, null], dim=1)

    def full_context(self, motion: torch.Tensor | None, audio: torch.Tensor | None):
        """Real context frames (1, c, .) -> (1, Lp, .): the start context's last Lp - c slots before them."""
        lp = self.cfg.n_prev_motions
        model = self.sampler.model
        start_m, start_a = model.start_motion_feat, model.start_audio_feat
        c = 0 if motion is None else motion.shape[1]
        if c >= lp:
            return motion[:, -lp:], audio[:, -lp:]
        if c == 0:
            return start_m, start_a
        return (torch.cat([start_m[:, c:].to(motion.dtype), motion], dim=1),
                torch.cat([start_a[:, c:].to(audio.dtype), audio], dim=1))

    def noise(self, first: int) -> torch.Tensor:
        """The start noise of the window whose first frame is padded frame `first`: offline's for the first window,
        then noise drawn from (seed, first), so every window is a fresh conditional draw given its context and the
        result depends on the audio and the seed only, not on timing."""
        if first == 0:
            return self.x_T
        gen = torch.Generator(device="cpu").manual_seed((self.controls.seed * 1_000_003 + first) % (1 << 62) + 1)
        return torch.randn(self.x_T.shape, generator=gen).to(self.x_T.device)

    def deadline(self, audio_in: float | None) -> float:
        """When a frame whose audio arrived at `audio_in` (None: now) is due: the latency budget later."""
        return (audio_in if audio_in is not None else time.perf_counter()) + self.settings.latency_budget_s

    def _due(self, deadline: float | None) -> float:
        return self.deadline(None) if deadline is None else deadline

    def sample(self, heard: torch.Tensor, ctx_motion: torch.Tensor | None, ctx_audio: torch.Tensor | None,
               first: int = 0, deadline: float | None = None) -> torch.Tensor:
        """-> normalized motion (1, L, M), fp32, of the window starting at padded frame `first` (batched: run by
        the device scheduler, due at `deadline`)."""
        audio = self.window_audio(heard)
        x_T = self.noise(first)
        w = self.windows
        self.windows += 1
        self.last_steps = self.controls.steps
        factory = self.settings.denoiser_factory
        if factory is not None:
            return self.sampler.window(audio, None, None, self.controls, x_T, ddpm_generator=self.ddpm_gen,
                                       x0_fn=factory(w, audio, ctx_motion, ctx_audio))
        prev_m, prev_a = self.full_context(ctx_motion, ctx_audio)
        if self.slot is not None:
            request = WindowRequest(audio, prev_m, prev_a, self.controls, x_T, self.conditions, self.ddpm_gen)
            job = self.scheduler.submit_window(self.slot, request, self._due(deadline))
            motion = job.wait()
            self.last_steps = job.steps
            return motion
        return self.sampler.window(audio, prev_m, prev_a, self.controls, x_T, self.conditions,
                                   ddpm_generator=self.ddpm_gen)

    # ------------------------------------------------------------------------------------------ idle frames

    def idle_motion(self, first_index: int, n: int) -> Motion:
        """n frames of the face at rest (the portrait's own parameters, the controls applied), blinking."""
        rest = {k: v.expand(n, *v.shape[1:]).clone() for k, v in self.rest.items()}
        motion = apply_controls(rest, self.controls, distance_is_condition=self.cfg.distance)
        return replace(motion, blink=idle_blink(first_index, n, self.settings.blink_period_s).to(self.device))

    # ------------------------------------------------------------------------------------------ frames

    def shown(self, motion: Motion, kind: tuple[str, int]) -> Motion:
        """The motion as it is shown: cross-faded from the last frame shown when the kind of frames changes."""
        d = self.crossfade({k: v.float() for k, v in motion.params().items()}, kind)
        return replace(motion, **d)

    def render(self, motion: Motion, deadline: float | None = None) -> list:
        """Launch the frames of `motion`, batch by batch, on the engine's frame renderer (to host memory); batched:
        queue them on the device scheduler, due at `deadline`. -> objects whose `wait()` gives the uint8 frames."""
        if self.slot is not None:
            job = self.scheduler.submit_frames(self.slot, self.avatar, motion, self._due(deadline))
            return [FramesResult(job)]
        frames = self.engine.frame_renderer
        return [frames.launch(self.avatar, motion[a : a + self.batch], to_host=True, cancelled=self.cancelled)
                for a in range(0, len(motion), self.batch)]

