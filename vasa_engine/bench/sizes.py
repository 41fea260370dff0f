"""What each bench mode measures: module sizes, batch sizes, steps, repeats, and the reduced configs."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

STEPS = (1, 5, 10)
FPS = 25


@dataclass(frozen=True)
class Sizes:
    """What a mode measures, and how often."""

    mode: str
    renderer: str  # "full" | "tiny"
    audio: str  # "full" | "reduced" | "tiny"
    motion: str  # "full" | "reduced" | "tiny"
    audio_windows: int  # windows (4 s each at the default config) per audio-encoder call
    batches: tuple[int, ...]
    steps: tuple[int, ...]
    e2e_seconds: float
    warmup: int
    repeats: int
    e2e_repeats: int
    repeat_seconds: float  # stop repeating a measurement once its repeats took this long (1 repeat at least)
    compile_mode: str  # "max-autotune" | "default" | "dynamo-only" (torch.compile with backend="eager")
    quick: bool = False
    compile_all: bool = True  # False: torch.compile only on the first shape of each stage, no end to end
    stream_seconds: float = 4.0  # speech pushed in real time for the streaming latency
    stream_counts: tuple[int, ...] = (1, 2)  # concurrent streams tried, in order, until one count falls behind
    # CPU threads of the run (None: torch's default). One in smoke mode: on a shared CI machine a pool of every core
    # stalls at each barrier while another process holds a core (slow-downs of 10-100x were seen), one thread is
    # only time-sliced, so the noise between runs stays within what `vasa-engine compare` can allow for.
    cpu_threads: int | None = None


MODES = {
    "gpu": Sizes("gpu", "full", "full", "full", audio_windows=8, batches=(1, 2, 4, 8, 16, 32), steps=STEPS,
                 e2e_seconds=10.0, warmup=3, repeats=20, e2e_repeats=3, repeat_seconds=10.0,
                 compile_mode="max-autotune", stream_seconds=10.0, stream_counts=(1, 2, 4, 8, 12, 16)),
    "cpu": Sizes("cpu", "tiny", "reduced", "reduced", audio_windows=1, batches=(1, 2, 4, 8), steps=STEPS,
                 e2e_seconds=1.0, warmup=1, repeats=3, e2e_repeats=1, repeat_seconds=4.0, compile_mode="default",
                 stream_seconds=2.0),
    "smoke": Sizes("smoke", "tiny", "tiny", "tiny", audio_windows=1, batches=(1, 2), steps=STEPS, e2e_seconds=0.12,
                   warmup=1, repeats=5, e2e_repeats=3, repeat_seconds=1.0, compile_mode="dynamo-only",
                   stream_seconds=0.5, cpu_threads=1),
}
QUICK_GPU = dict(batches=(1, 8, 32), e2e_seconds=8.0, warmup=2, repeats=10, e2e_repeats=2, repeat_seconds=3.0,
                 quick=True, stream_seconds=6.0, stream_counts=(1, 4, 8))


def sizes_for(mode: str, device: torch.device, *, quick: bool = False, full_size: bool = False,
              batches: tuple[int, ...] | None = None, steps: tuple[int, ...] | None = None) -> Sizes:
    """The sizes of `mode` ("auto": gpu on CUDA, cpu otherwise), with the command's overrides applied."""
    if mode == "auto":
        mode = "gpu" if device.type == "cuda" else "cpu"
    sizes = MODES[mode]
    if quick and mode == "gpu":
        sizes = replace(sizes, **QUICK_GPU)
    elif quick:
        sizes = replace(sizes, quick=True, repeats=min(sizes.repeats, 2))
    if full_size:
        sizes = replace(sizes, renderer="full", audio="full", motion="full")
    if device.type != "cuda" and sizes.compile_mode == "max-autotune":
        sizes = replace(sizes, compile_mode="default")  # max-autotune only on a GPU
    if batches:
        sizes = replace(sizes, batches=tuple(batches))
    if steps:
        sizes = replace(sizes, steps=tuple(steps))
    return sizes


def renderer_config(size: str):
    from ..config import RendererConfig

    return RendererConfig() if size == "full" else RendererConfig.tiny()


def audio_config(size: str):
    from ..models.audio_encoder import AudioEncoderConfig

    if size == "full":
        return AudioEncoderConfig()  # HuBERT base
    if size == "reduced":
        return AudioEncoderConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                                  conv_dim=(128,) * 7, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8)
    return AudioEncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                              conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def motion_config(size: str):
    from ..models.motion_generator import MotionGeneratorConfig

    if size == "full":
        return MotionGeneratorConfig()  # VASA-1 size: 8 layers, width 512, 8 heads, windows of 100 + 25 frames
    if size == "reduced":
        return MotionGeneratorConfig(feature_dim=256, n_layers=4, n_heads=4)
    return MotionGeneratorConfig(feature_dim=32, n_layers=2, n_heads=4, n_motions=20, n_prev_motions=5, emotion_dim=4)


SIZE_WORDS = {
    "renderer": {"full": "full size (LivePortrait's default config, 512x512 output)",
                 "tiny": "RendererConfig.tiny() (every layer type, reduced widths, 128x128 output): the full-size "
                         "renderer costs about 10 s per frame on a 2-core CPU"},
    "audio": {"full": "HuBERT base (12 layers, width 768)",
              "reduced": "HuBERT layout reduced to 4 layers, width 256, conv width 128",
              "tiny": "HuBERT layout reduced to 2 layers, width 32 (smoke sizes)"},
    "motion": {"full": "VASA-1 size (8 layers, width 512, 8 heads, windows of 100 frames + 25 of context)",
               "reduced": "4 layers, width 256, 4 heads, windows of 100 frames + 25 of context",
               "tiny": "2 layers, width 32, windows of 20 frames + 5 of context (smoke sizes)"},
}
