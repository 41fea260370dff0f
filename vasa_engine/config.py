"""Sizes of the renderer's modules.

The defaults are LivePortrait's human model, so at the default config every module's state_dict has exactly
the keys and shapes of the public checkpoints. Reduced sizes (tests, parity fixtures) change only numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _from_dict(cls, data: dict[str, Any]):
    """Build a config dataclass from a dict, recursing into nested configs; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
    kwargs = {}
    for key, value in data.items():
        ftype = names[key].type
        nested = _NESTED.get(ftype)
        if nested is not None and isinstance(value, dict):
            value = _from_dict(nested, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


class _Config:
    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


@dataclass(frozen=True)
class AppearanceConfig(_Config):
    image_channel: int = 3
    block_expansion: int = 64
    num_down_blocks: int = 2
    max_features: int = 512
    reshape_channel: int = 32
    reshape_depth: int = 16
    num_resblocks: int = 6


@dataclass(frozen=True)
class MotionExtractorConfig(_Config):
    in_chans: int = 3
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    num_kp: int = 21
    num_bins: int = 66


@dataclass(frozen=True)
class DenseMotionConfig(_Config):
    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    reshape_depth: int = 16
    compress: int = 4


@dataclass(frozen=True)
class WarpingConfig(_Config):
    num_kp: int = 21
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    reshape_channel: int = 32
    estimate_occlusion_map: bool = True
    dense_motion_params: DenseMotionConfig = field(default_factory=DenseMotionConfig)


@dataclass(frozen=True)
class SpadeConfig(_Config):
    upscale: int = 2
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    out_channels: int = 64


@dataclass(frozen=True)
class MLPConfig(_Config):
    input_size: int
    hidden_sizes: tuple[int, ...]
    output_size: int


def _stitching() -> MLPConfig:
    return MLPConfig(126, (128, 128, 64), 65)


def _lip() -> MLPConfig:
    return MLPConfig(65, (128, 128, 64), 63)


def _eye() -> MLPConfig:
    return MLPConfig(66, (256, 256, 128, 128, 64), 63)


@dataclass(frozen=True)
class RendererConfig(_Config):
    """Every module of the face renderer, plus the image sizes around them."""

    appearance_feature_extractor: AppearanceConfig = field(default_factory=AppearanceConfig)
    motion_extractor: MotionExtractorConfig = field(default_factory=MotionExtractorConfig)
    warping_module: WarpingConfig = field(default_factory=WarpingConfig)
    spade_generator: SpadeConfig = field(default_factory=SpadeConfig)
    stitching: MLPConfig = field(default_factory=_stitching)
    retarget_lip: MLPConfig = field(default_factory=_lip)
    retarget_eye: MLPConfig = field(default_factory=_eye)
    input_size: int = 256  # the networks see the portrait at this size; the output is 2x with upscale 2

    @property
    def output_size(self) -> int:
        return self.input_size * self.spade_generator.upscale if self.spade_generator.upscale > 1 else self.input_size

    @classmethod
    def tiny(cls) -> "RendererConfig":
        """A reduced config with every layer type of the real one, for tests and quick CPU runs."""
        return cls(
            appearance_feature_extractor=AppearanceConfig(block_expansion=8, max_features=64, reshape_channel=16,
                                                          reshape_depth=4, num_resblocks=2),
            motion_extractor=MotionExtractorConfig(depths=(1, 1, 2, 1), dims=(16, 24, 32, 48)),
            warping_module=WarpingConfig(block_expansion=4, max_features=64, reshape_channel=16,
                                         dense_motion_params=DenseMotionConfig(block_expansion=4, max_features=32,
                                                                               num_blocks=3, reshape_depth=4,
                                                                               compress=2)),
            spade_generator=SpadeConfig(block_expansion=4, max_features=64, out_channels=8),
            input_size=64,
        )


_NESTED = {
    "AppearanceConfig": AppearanceConfig,
    "MotionExtractorConfig": MotionExtractorConfig,
    "DenseMotionConfig": DenseMotionConfig,
    "WarpingConfig": WarpingConfig,
    "SpadeConfig": SpadeConfig,
    "MLPConfig": MLPConfig,
}
