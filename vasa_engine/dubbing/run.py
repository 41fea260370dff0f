"""A dub end to end: the source video and new speech in, the video's frames with the face following the speech
out, with the driving parameters of every frame and a report (see vasa_engine.dubbing)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..controls import Controls
from ..driving import Motion
from ..errors import InputError
from ..io.audio import DEFAULT_MAX_SECONDS, SAMPLE_RATE, load_audio
from ..runtime import device_context
from .schedule import MODES, Schedule, dub_motion, plan, resample
from .sources import align_frames, encode_frames, scene_cuts, source_parameters
from .video_input import SourceVideo, read_source_video


@dataclass
class DubReport:
    """What a dub did: output frames, how many show the dubbed face (cross-fades included), how many the source
    frame unchanged (no face, or after the speech), the scene cuts found, and the timing inputs."""

    frames: int
    dubbed: int
    passed_through: int
    scene_cuts: int
    fps: float
    rotation: int
    speech_seconds: float
    video_seconds: float
    looped: bool

    def line(self) -> str:
        loop = "; the video plays back and forth to the speech's length" if self.looped else ""
        turn = f"; display rotation {self.rotation} degrees applied" if self.rotation % 360 else ""
        return (f"{self.frames} frames at {self.fps:g} fps: {self.dubbed} dubbed, {self.passed_through} passed "
                f"through, {self.scene_cuts} scene cut{'s' if self.scene_cuts != 1 else ''}{loop}{turn}")


@dataclass
class DubResult:
    """frames: uint8 (N, H, W, 3) at the source's size and fps; audio: the speech, 16 kHz mono float32; driving[i]:
    the one-frame Motion output frame i was rendered with (None where the source frame passed through);
    schedule: the source frame and dub weight of each output frame."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray
    report: DubReport
    schedule: Schedule
    driving: list = field(default_factory=list)


def _checked(controls: Controls, mode: str, strength: float, fade_frames: int) -> None:
    if controls.relative_motion:
        raise InputError("relative motion does not apply to dubbing: each frame keeps its own pose and keypoints")
    if mode not in MODES:
        raise InputError(f"dub mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not 0.0 <= float(strength) <= 1.0:
        raise InputError(f"dub strength must lie in [0, 1], got {strength!r}")
    if isinstance(fade_frames, bool) or not isinstance(fade_frames, int) or fade_frames < 0:
        raise InputError(f"fade frames must be a non-negative integer, got {fade_frames!r}")


@torch.no_grad()
def dub(engine, video, audio, controls: Controls | None = None, *, mode: str = "lips", on_long: str = "error",
        strength: float = 1.0, fade_frames: int = 6, max_frames: int | None = None, sample_rate: int | None = None,
        max_seconds: float | None = DEFAULT_MAX_SECONDS, encode_batch: int = 8) -> DubResult:
    """See Engine.dub."""
    controls = controls or Controls()
    _checked(controls, mode, strength, fade_frames)
    engine.check_controls(controls)
    source = video if isinstance(video, SourceVideo) else read_source_video(os.fspath(video))
    samples = load_audio(audio, sample_rate, max_seconds=max_seconds)
    if max_frames is not None:  # the first max_frames frames and the speech they show
        samples = samples[: max(1, round(max_frames / source.fps * SAMPLE_RATE))]
    speech_seconds = len(samples) / SAMPLE_RATE
    schedule = plan(len(source), source.fps, speech_seconds, on_long=on_long, fade_frames=fade_frames)
    if max_frames is not None:
        schedule = Schedule(*(v[:max_frames] for v in (schedule.source, schedule.weight, schedule.motion_time)))
    shown = sorted({int(i) for i, w in zip(schedule.source, schedule.weight) if w > 0})
    alignments = align_frames(engine.face_aligner, source.frames, shown, source.name)
    faces = [i for i in shown if alignments[i] is not None]
    with device_context(engine.device):
        encoded = encode_frames(engine.renderer, [source.frames[i] for i in faces], [alignments[i] for i in faces],
                                device=engine.device, backend=engine.backend, batch_size=encode_batch)
    avatars = dict(zip(faces, encoded))
    driving: list[Motion | None] = [None] * len(schedule)
    out = np.stack([source.frames[int(i)] for i in schedule.source])
    if avatars:
        reference = avatars[faces[0]]
        generated = engine.generate_motion(reference, samples, controls, sample_rate=SAMPLE_RATE, max_seconds=None)
        expression = resample(generated.exp, schedule.motion_time)
        params = {i: source_parameters([a]) for i, a in avatars.items()}
        for j, (i, w) in enumerate(zip(schedule.source.tolist(), schedule.weight.tolist())):
            if w <= 0 or i not in avatars:
                continue
            motion = dub_motion(params[i], expression[j : j + 1], reference.source.exp, mode,
                                torch.tensor([float(strength)]), controls)
            driving[j] = motion
            out[j] = _dubbed_frame(engine, avatars[i], motion, w)
    dubbed = sum(m is not None for m in driving)
    report = DubReport(frames=len(schedule), dubbed=dubbed, passed_through=len(schedule) - dubbed,
                       scene_cuts=len(scene_cuts(source.frames)), fps=source.fps, rotation=source.rotation,
                       speech_seconds=speech_seconds, video_seconds=source.duration,
                       looped=len(schedule) > len(source))
    return DubResult(out, source.fps, samples, report, schedule, driving)


def _dubbed_frame(engine, avatar, motion: Motion, weight: float) -> np.ndarray:
    """The frame rendered from its own source with the dub's motion, pasted back into it at full resolution;
    weight < 1 cross-fades towards the source frame."""
    from ..faces import paste_back

    rendered = engine.render_on_device(avatar, motion)
    pasted = paste_back(avatar.photo, rendered, avatar.alignment, device=engine.device)[0].cpu().numpy()
    if weight >= 1:
        return pasted
    blend = weight * pasted.astype(np.float32) + (1 - weight) * avatar.photo.astype(np.float32)
    return np.clip(np.floor(blend + 0.5), 0, 255).astype(np.uint8)
