"""What a caller can set for one generation or stream: `Controls`, with every field's default and range in one table.

The table (`RANGES`) is what `Controls` checks when it is built and whenever the engine uses it, and what the
command line builds its options from, so a value the CLI refuses is refused by the library too, with the same
one-line `InputError`. Checks that depend on the loaded motion generator (step count, which conditions it has, the
emotion size) are in `check_for_model`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Sequence

from .errors import InputError

SAMPLERS = ("dpmpp_2m", "ddim", "ddpm")


@dataclass(frozen=True)
class Range:
    """A closed interval [low, high], or half-open [low, high) with high_open; unit for messages."""

    low: float
    high: float
    high_open: bool = False
    unit: str = ""

    def contains(self, value: float) -> bool:
        return self.low <= value and (value < self.high if self.high_open else value <= self.high)

    def words(self) -> str:
        end = ")" if self.high_open else "]"
        unit = f" {self.unit}" if self.unit else ""
        return f"[{_num(self.low)}, {_num(self.high)}{end}{unit}"


def _num(x: float) -> str:
    return f"{x:g}"


# field -> range of its value (of each value, for gaze); fields not listed take any value of their type
RANGES: dict[str, Range] = {
    "audio_scale": Range(0, 10),
    "gaze_scale": Range(0, 10),
    "distance_scale": Range(0, 10),
    "emotion_scale": Range(0, 10),
    "gaze": Range(-90, 90, unit="degrees"),
    "distance": Range(0.25, 4),
    "head_pitch": Range(-45, 45, unit="degrees"),
    "head_yaw": Range(-45, 45, unit="degrees"),
    "head_roll": Range(-45, 45, unit="degrees"),
    "eye_openness": Range(0, 1),
    "lip_openness": Range(0, 1),
    "smoothing": Range(0, 1, high_open=True),
    "driving_multiplier": Range(0, 3),
}
MAX_STEPS = 1000  # a model's own diffusion-step count bounds it further (check_for_model)
RENDER_FIELDS = ("head_pitch", "head_yaw", "head_roll", "distance", "eye_openness", "lip_openness", "smoothing",
                 "driving_multiplier", "stitching", "relative_motion")


@dataclass
class Controls:
    """What a caller can set for one generation (ranges: `RANGES`; the README's option table says the same).

    steps / sampler: sampler steps (1..T; "ddpm" always runs all T, as the reference) and method.
    audio_scale, gaze_scale, distance_scale, emotion_scale: classifier-free guidance weight per condition
    (incremental: each scale weighs the change its condition adds on top of the ones before it).
    gaze (theta, phi) degrees, distance (relative, 1 = as in the portrait), emotion (vector of the model's
    emotion size): model conditions; a model without them refuses them, except distance, which then scales the head.
    head_pitch, head_yaw, head_roll: degrees added to the generated head pose.
    eye_openness, lip_openness: fixed target ratios for the retargeting MLPs (override the generated eyes/mouth).
    smoothing: weight of the previous value in the moving average of pose, scale and translation (0 = none).
    driving_multiplier: scales the motion of the keypoints around the portrait's. stitching: apply the stitching MLP.
    relative_motion: the reference UI's expression-friendly relative mode: the keypoints move relative to the first
    generated frame's, scaled by the square root of the ratio of the hulls of the portrait's and that frame's
    keypoints (off: the reference command line's mode).
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
    relative_motion: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def validate(self) -> "Controls":
        """Refuse a value out of its range, with one line naming the field, the value and the range."""
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {self.sampler!r} (use {', '.join(SAMPLERS)})")
        _integer("steps", self.steps, 1, MAX_STEPS)
        _integer("seed", self.seed, -(2**63), 2**63 - 1)
        for name in ("stitching", "relative_motion"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in RANGES:
            value = getattr(self, name)
            if value is not None or name not in OPTIONAL:
                check_range(name, value)
        if self.emotion is not None:
            if isinstance(self.emotion, (str, bytes)) or not hasattr(self.emotion, "__len__") \
                    or not all(_is_number(v) for v in self.emotion):
                raise InputError(f"emotion must be a sequence of finite numbers, got {self.emotion!r}")
        if not isinstance(self.extra, dict):
            raise InputError(f"extra must be a dict, got {type(self.extra).__name__}")
        return self

    def render_settings(self) -> dict:
        """The fields applied after motion generation (pose offsets, distance, openness, smoothing, multiplier,
        stitching, relative mode), by name."""
        return {name: getattr(self, name) for name in RENDER_FIELDS}

    @classmethod
    def field_default(cls, name: str):
        f = next(f for f in fields(cls) if f.name == name)
        return f.default


OPTIONAL = ("gaze", "distance", "eye_openness", "lip_openness")


def check_range(name: str, value) -> None:
    """Refuse a value of field `name` outside its range in `RANGES`, with one line naming the field, the value and
    the range (gaze: each of its two values)."""
    rng = RANGES[name]
    for v in _pair(name, value) if name == "gaze" else (value,):
        if not _is_number(v) or not rng.contains(float(v)):
            raise InputError(f"{name.replace('_', ' ')} must lie in {rng.words()}, got {_shown(value)}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        or type(v).__module__ == "numpy" and hasattr(v, "item") and _is_number(v.item())


def _integer(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) and not (
            type(value).__module__ == "numpy" and isinstance(getattr(value, "item", lambda: None)(), int)):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise InputError(f"{name} must lie in [{low}, {high}], got {value}")


def _pair(name: str, value) -> tuple:
    try:
        values = tuple(value)
    except TypeError:
        raise InputError(f"{name} must be two numbers (theta, phi), got {value!r}") from None
    if len(values) != 2:
        raise InputError(f"{name} must be two numbers (theta, phi), got {len(values)}")
    return values


def _shown(value) -> str:
    return f"({', '.join(_num(float(v)) for v in value)})" if isinstance(value, (tuple, list)) else repr(value)


def check_for_model(controls: Controls, cfg) -> None:
    """Refuse, with one clear line, what the loaded motion generator (its config `cfg`) cannot honour."""
    controls.validate()
    if controls.sampler != "ddpm" and not 1 <= controls.steps <= cfg.n_diff_steps:
        raise InputError(f"steps must be between 1 and {cfg.n_diff_steps} for this model, got {controls.steps}")
    if controls.gaze is not None and not cfg.gaze:
        raise InputError("this motion generator has no gaze condition (JoyVASA's weights condition on audio "
                         "alone); drop --gaze")
    if controls.emotion is not None:
        if not cfg.emotion_dim:
            raise InputError("this motion generator has no emotion condition (JoyVASA's weights condition on "
                             "audio alone); drop --emotion")
        if len(controls.emotion) != cfg.emotion_dim:
            raise InputError(f"emotion needs {cfg.emotion_dim} values for this model, got {len(controls.emotion)}")
