"""A dub end to end: the source video and new speech in, the video's frames with the face following the speech
out, with the driving parameters of every frame and a report (see vasa_engine.dubbing).

The frames are rendered in batches of `render_batch` dubbed frames, each row from its own source frame's encoding
(`FrameRenderer.launch_rows`); a batch's source frames are encoded just before it, so only the encodings of about one
batch are held at a time, whatever the video's length."""

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
from .tracking import CropSmoothing, smoothed_crops
from .video_input import SourceVideo, read_source_video


@dataclass
class DubReport:
    """What a dub did: output frames, how many show the dubbed face (cross-fades included), how many the source
    frame unchanged (no face, or after the speech), the scene cuts and face tracks found, and the timing inputs."""

    frames: int
    dubbed: int
    passed_through: int
    scene_cuts: int
    fps: float
    rotation: int
    speech_seconds: float
    video_seconds: float
    looped: bool
    face_tracks: int = 0

    def line(self) -> str:
        loop = "; the video plays back and forth to the speech's length" if self.looped else ""
        turn = f"; display rotation {self.rotation} degrees applied" if self.rotation % 360 else ""
        return (f"{self.frames} frames at {self.fps:g} fps: {self.dubbed} dubbed, {self.passed_through} passed "
                f"through, {self.scene_cuts} scene cut{'s' if self.scene_cuts != 1 else ''}, {self.face_tracks} "
                f"face track{'s' if self.face_tracks != 1 else ''}{loop}{turn}")


@dataclass
class DubResult:
    """frames: uint8 (N, H, W, 3) at the source's size and fps; audio: the speech, 16 kHz mono float32; driving[i]:
    the one-frame Motion output frame i was rendered with (None where the source frame passed through);
    schedule: the source frame and dub weight of each output frame; crops: source frame -> the 2x3 photo-to-crop
    matrix of its face crop (after smoothing), for the frames with a face that the speech covers."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray
    report: DubReport
    schedule: Schedule
    driving: list = field(default_factory=list)
    crops: dict = field(default_factory=dict)


def _checked(controls: Controls, mode: str, strength: float, fade_frames: int, batches: dict) -> None:
    if controls.relative_motion:
        raise InputError("relative motion does not apply to dubbing: each frame keeps its own pose and keypoints")
    if mode not in MODES:
        raise InputError(f"dub mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not 0.0 <= float(strength) <= 1.0:
        raise InputError(f"dub strength must lie in [0, 1], got {strength!r}")
    if isinstance(fade_frames, bool) or not isinstance(fade_frames, int) or fade_frames < 0:
        raise InputError(f"fade frames must be a non-negative integer, got {fade_frames!r}")
    for name, value in batches.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be a positive integer, got {value!r}")


class FaceSources:
    """The faces of the source frames: detected, their crops tracked (vasa_engine.dubbing.tracking), and encoded on
    demand; the encodings of the last request are kept for the next (a looped video revisits frames)."""

    def __init__(self, engine, source: SourceVideo, indices: list[int], smoothing: CropSmoothing | None,
                 encode_batch: int):
        self.engine, self.source, self.encode_batch = engine, source, encode_batch
        self.cuts = scene_cuts(source.frames)
        self.detected = align_frames(engine.face_aligner, source.frames, indices, source.name)
        matrices = {i: None if a is None else a.image_to_crop for i, a in self.detected.items()}
        size = engine.face_aligner.crop_spec.size
        self.crops, self.tracks = smoothed_crops(matrices, self.cuts, source.fps, size, smoothing)
        self._encoded: dict = {}

    def avatars(self, indices) -> dict:
        """Source frame -> Avatar of its tracked face crop, for the frames in `indices` (each with a face)."""
        wanted = list(dict.fromkeys(int(i) for i in indices))
        new = [i for i in wanted if i not in self._encoded]
        engine = self.engine
        with device_context(engine.device):
            encoded = encode_frames(engine.renderer, engine.face_aligner, [self.source.frames[i] for i in new],
                                    [self.detected[i] for i in new], [self.crops[i] for i in new],
                                    device=engine.device, backend=engine.backend, batch_size=self.encode_batch)
        found = {**self._encoded, **dict(zip(new, encoded))}
        self._encoded = {i: found[i] for i in wanted}
        return self._encoded


@torch.no_grad()
def dub(engine, video, audio, controls: Controls | None = None, *, mode: str = "lips", on_long: str = "error",
        strength: float = 1.0, fade_frames: int = 6, max_frames: int | None = None, sample_rate: int | None = None,
        max_seconds: float | None = DEFAULT_MAX_SECONDS, encode_batch: int | None = None,
        render_batch: int | None = None, smoothing: CropSmoothing | None = CropSmoothing()) -> DubResult:
    """See Engine.dub. encode_batch, render_batch: face crops through the extractors at once, dubbed frames rendered
    at once (both by default the engine's batch size: 8 on CUDA, 1 on a CPU, where larger batches run no faster);
    smoothing: how the face crop follows the face (vasa_engine.dubbing.tracking; None: the crop as detected on each
    frame)."""
    controls = controls or Controls()
    _checked(controls, mode, strength, fade_frames, {"encode batch": encode_batch, "render batch": render_batch})
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
    faces = FaceSources(engine, source, shown, smoothing, encode_batch or engine.batch_size)
    driving: list[Motion | None] = [None] * len(schedule)
    out = np.stack([source.frames[int(i)] for i in schedule.source])
    jobs = [(j, i, w) for j, (i, w) in enumerate(zip(schedule.source.tolist(), schedule.weight.tolist()))
            if w > 0 and i in faces.crops]
    if jobs:
        first = min(faces.crops)
        reference = faces.avatars([first])[first]
        generated = engine.generate_motion(reference, samples, controls, sample_rate=SAMPLE_RATE, max_seconds=None)
        expression = resample(generated.exp, schedule.motion_time)
        batch = render_batch or engine.batch_size
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            avatars = faces.avatars([i for _, i, _ in chunk])
            rows = [avatars[i] for _, i, _ in chunk]
            motion = dub_motion(source_parameters(rows), expression[[j for j, _, _ in chunk]],
                                reference.source.exp, mode, torch.full((len(chunk),), float(strength)), controls)
            rendered = _render_rows(engine, rows, motion)
            for k, (j, _, w) in enumerate(chunk):
                driving[j] = motion[k : k + 1]
                out[j] = _pasted(engine, rows[k], rendered[k : k + 1], w)
    dubbed = sum(m is not None for m in driving)
    report = DubReport(frames=len(schedule), dubbed=dubbed, passed_through=len(schedule) - dubbed,
                       scene_cuts=len(faces.cuts), fps=source.fps, rotation=source.rotation,
                       speech_seconds=speech_seconds, video_seconds=source.duration,
                       looped=len(schedule) > len(source), face_tracks=faces.tracks)
    return DubResult(out, source.fps, samples, report, schedule, driving, faces.crops)


def _render_rows(engine, avatars: list, motion: Motion) -> torch.Tensor:
    """Row k: motion[k] on avatars[k], in one batch of the engine's frame renderer; uint8 (n, S, S, 3) frames on the
    engine's device, ready for the caller's stream."""
    out = engine.frame_renderer.launch_rows(avatars, motion)
    if out.done is not None:
        caller = torch.cuda.current_stream(engine.device)
        caller.wait_event(out.done)
        out.frames.record_stream(caller)  # allocated on the renderer's stream, used on the caller's
    return out.frames


def _pasted(engine, avatar, rendered: torch.Tensor, weight: float) -> np.ndarray:
    """A rendered face crop (1, S, S, 3) pasted back into its source frame at full resolution; weight < 1
    cross-fades towards the source frame."""
    from ..faces import paste_back

    pasted = paste_back(avatar.photo, rendered, avatar.alignment, device=engine.device)[0].cpu().numpy()
    if weight >= 1:
        return pasted
    blend = weight * pasted.astype(np.float32) + (1 - weight) * avatar.photo.astype(np.float32)
    return np.clip(np.floor(blend + 0.5), 0, 255).astype(np.uint8)
