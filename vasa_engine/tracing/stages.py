"""The engine's full-size CUDA path, stage by stage, on fake tensors: what `vasa-engine gpu-check` traces.

The models are the engine's defaults (the LivePortrait renderer, HuBERT base, the VASA-1-size motion generator with
gaze, distance and emotion conditions), built on the meta device and given the dtypes and layouts an Engine gives
them on CUDA (image modules in the CUDA dtype with channels-last convolution weights, keypoint MLPs in fp32, the audio
encoder and motion generator in the CUDA dtype with the noise schedule in fp32), then made fake tensors on "cuda:0".
Each stage calls the engine's own code under the kernels backend:

    preparation     FaceRenderer.encode_source on a 256x256 portrait, and the avatar's default eye and lip ratios
    audio-window    AudioStage.window_features on a batch of 4 s windows (offline generation's batch)
    audio-chunk     the same on one streaming span (past + chunk + look-ahead at the default stream settings)
    motion-window   MotionSampler.window: every guidance branch (audio, gaze, distance, emotion: 5 in one batched
                    forward), the few-step sampler loop
    motion-chained  the same on the first window's context, as windows chain offline and in a stream
    frames          the function the frame renderer captures in a CUDA graph (FrameRenderer._frame_fn: driving
                    keypoints with eye, lip and blink retargeting and stitching, warp, decode, uint8), one batch

CUDA runtime calls (streams, events, graph capture, synchronize) are not traced; the functions they wrap are.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

import torch

from .. import ops
from ..audio_features import SAMPLES_PER_VIDEO_FRAME, AudioFeatureEncoder
from ..avatar import DEFAULT_SOURCE_EYE_RATIO, DEFAULT_SOURCE_LIP_RATIO
from ..config import RendererConfig
from ..controls import Controls, check_for_model
from ..driving import Motion
from ..engine import AUDIO_WINDOWS_PER_BATCH, AudioStage
from ..frames import FrameRenderer
from ..generation import MotionSampler, model_conditions
from ..graphs import GraphCache
from ..models.audio_encoder import AudioEncoderConfig
from ..models.motion_generator import MotionGenerator, MotionGeneratorConfig
from ..models.renderer import FaceRenderer, SourceState
from ..runtime import to_channels_last
from ..streaming.settings import StreamSettings
from .fake_cuda import DEVICE, fake_module

BACKEND = "kernels"  # what "auto" runs on CUDA; named, so the trace runs the kernels whatever TRITON_INTERPRET says


@dataclass
class Models:
    """One engine's models at full size, as fake tensors on the device, and the motion sampler over them."""

    renderer: FaceRenderer
    audio: AudioFeatureEncoder
    generator: MotionGenerator
    sampler: MotionSampler
    dtype: torch.dtype

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"renderer": self.renderer, "audio encoder": self.audio, "motion generator": self.generator}


def build_models(mode, dtype: torch.dtype) -> Models:
    """The default models, placed and typed as Engine and WeightSet.motion_stack place them on CUDA."""
    with torch.device("meta"):
        renderer = FaceRenderer(RendererConfig())
        generator = MotionGenerator(MotionGeneratorConfig())
        audio = AudioFeatureEncoder(AudioEncoderConfig(), generator.cfg.feature_dim)
    renderer.eval().set_image_dtype(dtype)
    to_channels_last(renderer)
    # The schedule's buffers hold real values even on the meta device; they stay exact fp32.
    schedule = {k: v.float().clone() for k, v in generator.diffusion_sched.named_buffers()}
    for module in (audio, generator):
        module.eval().to(dtype)
    for name, value in schedule.items():
        setattr(generator.diffusion_sched, name, value)
    # The sampler's step plans are host floats read from the schedule once, before anything is fake.
    sampler = MotionSampler(generator, GraphCache("sampler loop", enabled=False), BACKEND)
    for module in (renderer, audio, generator):
        fake_module(module, mode)
    return Models(renderer, audio, generator, sampler, dtype)


MODEL_DTYPE = "model"  # in Stage.dtypes: the engine's CUDA dtype
PREPARATION, AUDIO_WINDOW, AUDIO_CHUNK = "preparation", "audio-window", "audio-chunk"
MOTION_WINDOW, MOTION_CHAINED, FRAMES = "motion-window", "motion-chained", "frames"


@dataclass
class Stage:
    """A traced stage: its name, the stage of `vasa_engine.ops.OPERATIONS` whose kernels it must run, a function of
    the outputs of the stages before it (stage name -> outputs) returning its own (name -> tensor), and the dtype the
    engine keeps each output in (MODEL_DTYPE: the CUDA dtype)."""

    name: str
    ops_stage: str | None
    run: Callable[[dict], dict]
    description: str
    dtypes: dict = field(default_factory=dict)
    graph: str | None = None  # the engine's CUDA graph that captures it on a GPU (None: it runs eagerly)
    needs: tuple[str, ...] = ()  # the stages whose outputs it takes


def _portrait(models: Models, _: dict) -> dict:
    size = models.renderer.cfg.input_size
    image = torch.rand(1, 3, size, size).to(DEVICE)  # io.image.to_tensor(net_image).to(device)
    source = models.renderer.encode_source(image)
    # the Avatar's device tensors: the SourceState's fields, and the default eye and lip ratios (no landmarks)
    return {**{f.name: getattr(source, f.name) for f in fields(source)},
            "eye_ratio": torch.full((1, 2), DEFAULT_SOURCE_EYE_RATIO).to(DEVICE),
            "lip_ratio": torch.full((1, 1), DEFAULT_SOURCE_LIP_RATIO).to(DEVICE)}


def _audio(models: Models, windows: int, frames: int) -> dict:
    stage = AudioStage(models.audio, DEVICE, models.dtype, BACKEND)
    return {"features": stage.window_features(torch.rand(windows, frames * SAMPLES_PER_VIDEO_FRAME) - 0.5)}


def guided_controls(cfg: MotionGeneratorConfig) -> Controls:
    """Controls with every condition the model has on (gaze, distance, emotion), so every guidance branch runs."""
    controls = Controls(gaze=(5.0, -3.0), distance=1.1, emotion=tuple([0.1] * cfg.emotion_dim) or None)
    check_for_model(controls, cfg)
    return controls


def _motion(models: Models, before: dict, chained: bool) -> dict:
    cfg = models.generator.cfg
    controls = guided_controls(cfg)
    audio = before[AUDIO_WINDOW]["features"][:1]
    prev_motion = prev_audio = None
    if chained:
        prev_motion = before[MOTION_WINDOW]["motion"][:, -cfg.n_prev_motions:]
        prev_audio = audio[:, -cfg.n_prev_motions:]
    x_T = models.sampler.start_noise(controls, DEVICE)
    motion = models.sampler.window(audio, prev_motion, prev_audio, controls, x_T,
                                   model_conditions(controls, cfg, DEVICE))
    return {"motion": motion, "start_noise": x_T}


def frame_motion(batch: int, keypoints: int) -> Motion:
    """A batch of driving parameters with eye, lip and blink targets and stitching on (every branch of the path)."""
    return Motion(pitch=torch.rand(batch) * 20 - 10, yaw=torch.rand(batch) * 20 - 10, roll=torch.rand(batch) * 10 - 5,
                  exp=torch.randn(batch, keypoints, 3) * 0.01, t=torch.randn(batch, 3) * 0.01,
                  scale=torch.rand(batch) * 0.2 + 1.0, eye=torch.rand(batch) * 0.4, lip=torch.rand(batch) * 0.5,
                  blink=torch.rand(batch), stitching=True)


def _frames(models: Models, before: dict, batch: int) -> dict:
    prepared = before[PREPARATION]
    renderer = FrameRenderer(models.renderer, torch.device("cpu"), BACKEND, cuda_graphs=False)
    state = SourceState(**{f.name: prepared[f.name] for f in fields(SourceState)})
    source = {"state": state, "eye": prepared["eye_ratio"], "lip": prepared["lip_ratio"]}
    m = frame_motion(batch, models.renderer.cfg.motion_extractor.num_kp)
    inputs = [None if v is None else v.to(DEVICE) for v in (m.pitch, m.yaw, m.roll, m.exp, m.t, m.scale, m.eye,
                                                               m.lip, m.blink)]
    return {"frames": renderer._frame_fn(source, m)(*inputs)}


def stages(models: Models, batch: int, settings: StreamSettings | None = None) -> list[Stage]:
    """The stages in the order they run, each a function of the outputs before it."""
    settings = settings or StreamSettings()
    cfg = models.generator.cfg
    fp32 = torch.float32
    span = settings.past_frames + settings.chunk_frames + settings.lookahead_frames
    return [
        Stage(PREPARATION, None, lambda before: _portrait(models, before),
              f"encode_source, one {models.renderer.cfg.input_size}x{models.renderer.cfg.input_size} portrait",
              {name: MODEL_DTYPE if name == "feature_3d" else fp32
               for name in [f.name for f in fields(SourceState)] + ["eye_ratio", "lip_ratio"]}),
        Stage(AUDIO_WINDOW, "audio encoder", lambda before: _audio(models, AUDIO_WINDOWS_PER_BATCH, cfg.n_motions),
              f"window_features, {AUDIO_WINDOWS_PER_BATCH} windows of {cfg.n_motions} frames",
              {"features": MODEL_DTYPE}),
        Stage(AUDIO_CHUNK, "audio encoder", lambda before: _audio(models, 1, span),
              f"window_features, one stream span of {span} frames ({settings.past_ms} ms past, {settings.chunk_ms} "
              f"ms chunk, {settings.lookahead_ms} ms look-ahead)", {"features": MODEL_DTYPE}),
        Stage(MOTION_WINDOW, "motion generator", lambda before: _motion(models, before, chained=False),
              "MotionSampler.window, start context, every guidance branch", {"motion": fp32, "start_noise": fp32},
              graph="sampler loop", needs=(AUDIO_WINDOW,)),
        Stage(MOTION_CHAINED, "motion generator", lambda before: _motion(models, before, chained=True),
              "MotionSampler.window on the previous window's context", {"motion": fp32, "start_noise": fp32},
              graph="sampler loop", needs=(AUDIO_WINDOW, MOTION_WINDOW)),
        Stage(FRAMES, "renderer", lambda before: _frames(models, before, batch),
              f"FrameRenderer._frame_fn, batch {batch}, eye/lip/blink retargeting and stitching",
              {"frames": torch.uint8}, graph="renderer", needs=(PREPARATION,)),
    ]


STAGE_NAMES = (PREPARATION, AUDIO_WINDOW, AUDIO_CHUNK, MOTION_WINDOW, MOTION_CHAINED, FRAMES)


def wanted(all_stages: list[Stage], only) -> list[Stage]:
    """The stages named in `only` and those they need, in order (every stage when `only` is empty)."""
    if not only:
        return all_stages
    by_name = {stage.name: stage for stage in all_stages}
    names, todo = set(), list(only)
    while todo:
        name = todo.pop()
        if name not in names:
            names.add(name)
            todo.extend(by_name[name].needs)
    return [stage for stage in all_stages if stage.name in names]


def stream_context_bytes(models: Models, allocated: Callable[[int], int]) -> int:
    """Device bytes of one stream's own sampling state (vasa_engine.streaming.compute): its start noise (1, L, M)
    fp32, and its context, the last Lp frames of motion (fp32) and of audio features (the CUDA dtype)."""
    cfg = models.generator.cfg
    item = torch.finfo(models.dtype).bits // 8
    return (allocated(cfg.n_motions * cfg.motion_dim * 4) + allocated(cfg.n_prev_motions * cfg.motion_dim * 4)
            + allocated(cfg.n_prev_motions * cfg.feature_dim * item))


def expected_kernels(stage: Stage) -> set[str]:
    """The library operators (vasa_engine::<op>) a stage must run: every operation of its models' stage."""
    if stage.ops_stage is None:
        return set()
    return set(ops.stage_operations()[stage.ops_stage]) & set(ops.registered_kernels())
