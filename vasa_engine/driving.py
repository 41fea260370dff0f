"""The driving stage: generated (normalized) motion -> the portrait's absolute driving parameters (`Motion`).

Per frame, as the reference glue does: the 70 values are de-normalized with the motion template (`MotionTemplate`);
pose, scale and translation are smoothed by a causal moving average; then everything is taken relative to the first
frame the stage has seen (R = R_i R_0^T R_s; exp = exp_s + (exp_i - exp_0) except the lip keypoints, which take
exp_i; scale = scale_s scale_i / scale_0; t = t_s + (t_i - t_0), t_z = 0). `Driving` keeps the moving average and
the first frame between calls, so offline generation is one call of what a stream calls per chunk. Then the
controls are applied in one place (`apply_controls`, after the relative mode in `Driving.controls_applied`): the expression-friendly relative mode, head-pose
offsets, distance, eye and lip openness, and the renderer settings (stitching, driving multiplier) the frames are
drawn with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from .controls import Controls, check_range
from .errors import InputError
from .models.keypoints import rotation_matrix, transform_keypoints

LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)  # keep the generated (absolute) expression of these keypoints
PARAM_KEYS = ("pitch", "yaw", "roll", "exp", "t", "scale")
_TENSOR_FIELDS = PARAM_KEYS + ("eye", "lip", "blink")


@dataclass
class Motion:
    """A batch of N absolute driving parameters in LivePortrait's space, and how to draw them.

    pitch, yaw, roll: (N,) degrees. exp: (N, 21, 3) expression offsets. t: (N, 3) translation (z unused).
    scale: (N,) or (N, 1). eye, lip: optional (N,) target openness ratios for the retargeting MLPs (eye: lid
    distance over eye width, about 0 closed to 0.4 wide open; lip: lip distance over mouth width, 0 closed to
    about 0.8 wide open). blink: optional (N,) in [0, 1], how far the eyes close from their open ratio (the eye
    control, else the portrait's own). stitching, driving_multiplier: the renderer settings (defaults: `Controls`').
    """

    pitch: torch.Tensor
    yaw: torch.Tensor
    roll: torch.Tensor
    exp: torch.Tensor
    t: torch.Tensor
    scale: torch.Tensor
    eye: torch.Tensor | None = None
    lip: torch.Tensor | None = None
    blink: torch.Tensor | None = None
    stitching: bool = Controls.field_default("stitching")
    driving_multiplier: float = Controls.field_default("driving_multiplier")

    def __post_init__(self):
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            value = torch.as_tensor(value, dtype=torch.float32)
            if value.dim() == 0:
                value = value.reshape(1)
            setattr(self, name, value)
        n = self.pitch.shape[0]
        expected = {"pitch": (n,), "yaw": (n,), "roll": (n,), "t": (n, 3), "eye": (n,), "lip": (n,), "blink": (n,)}
        self.scale = self.scale.reshape(-1, 1) if self.scale.numel() == n else self.scale
        self.exp = self.exp.reshape(n, -1, 3) if self.exp.numel() % 3 == 0 and self.exp.shape[0] == n else self.exp
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise InputError(f"motion field {name} has shape {tuple(value.shape)}, expected {shape}")
        if self.scale.shape != (n, 1):
            raise InputError(f"motion field scale has shape {tuple(self.scale.shape)}, expected ({n},) or ({n}, 1)")
        if self.exp.dim() != 3 or self.exp.shape[0] != n or self.exp.shape[2] != 3:
            raise InputError(f"motion field exp has shape {tuple(self.exp.shape)}, expected ({n}, K, 3)")
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            # values are checked where callers make them, on the host; on a device the check would stall the
            # stream for every batch (the engine's own stages only move checked motion there)
            if value is not None and value.device.type == "cpu" and not torch.isfinite(value).all():
                raise InputError(f"motion field {name} contains NaN or Inf")
        if not isinstance(self.stitching, bool):
            raise InputError(f"motion stitching must be True or False, got {self.stitching!r}")
        check_range("driving_multiplier", self.driving_multiplier)  # the control's own range

    def __len__(self) -> int:
        return self.pitch.shape[0]

    def _map(self, fn) -> "Motion":
        return Motion(**{f.name: (fn(getattr(self, f.name)) if f.name in _TENSOR_FIELDS
                                  and getattr(self, f.name) is not None else getattr(self, f.name))
                         for f in fields(self)})

    def __getitem__(self, index: slice) -> "Motion":
        return self._map(lambda v: v[index])

    def to(self, device: torch.device) -> "Motion":
        return self._map(lambda v: v.to(device))

    def params(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in PARAM_KEYS}

    @classmethod
    def cat(cls, parts: list["Motion"]) -> "Motion":
        first = parts[0]
        out = {}
        for name in _TENSOR_FIELDS:
            values = [getattr(p, name) for p in parts]
            out[name] = None if any(v is None for v in values) else torch.cat(values)
        return cls(**out, stitching=first.stitching, driving_multiplier=first.driving_multiplier)


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


def euler_from_rotation(rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of keypoints.rotation_matrix: (N, 3, 3) R = (Rz Ry Rx)^T -> pitch, yaw, roll in degrees."""
    deg = 180.0 / math.pi
    yaw = torch.asin((-rot[:, 0, 2]).clamp(-1.0, 1.0))
    pitch = torch.atan2(rot[:, 1, 2], rot[:, 2, 2])
    roll = torch.atan2(rot[:, 0, 1], rot[:, 0, 0])
    return pitch * deg, yaw * deg, roll * deg


def hull_volume(points: torch.Tensor) -> float:
    """Volume of the convex hull of (K, 3) points (scipy's Qhull)."""
    from scipy.spatial import ConvexHull

    return float(ConvexHull(points.detach().double().cpu().numpy()).volume)


class Driving:
    """Generated motion -> driving parameters for one utterance, block by block (see the module docstring).

    source: the portrait's SourceState (its pose, expression, translation, scale, keypoints). template: the
    motion template. controls: smoothing, the pose offsets, distance, openness, relative mode and renderer settings.
    distance_is_condition: the motion generator conditions on distance itself (then the head is not rescaled).
    """

    def __init__(self, source, template: MotionTemplate, controls: Controls, *, distance_is_condition: bool = False):
        self.template = template
        self.controls = controls
        self.keep = float(controls.smoothing)
        self.distance_is_condition = distance_is_condition
        self.src = {k: getattr(source, k).float() for k in ("kp", "pitch", "yaw", "roll", "exp", "t", "scale", "x_s")}
        self.rot_s = rotation_matrix(self.src["pitch"], self.src["yaw"], self.src["roll"])
        self.last: torch.Tensor | None = None  # the previous frame's smoothed pose (7,)
        self.first: dict[str, torch.Tensor] | None = None  # the first frame's smoothed pose, as rotation etc.
        self.fold: tuple[float, torch.Tensor] | None = None  # relative mode: (hull factor f, offset (1, K, 3))

    def __call__(self, motion: torch.Tensor) -> Motion:
        """(n, 70) normalized motion of the next n frames -> their Motion, controls applied."""
        return self.controls_applied(self.relative(self.template.denormalize(motion)))

    def smooth(self, pose: torch.Tensor) -> torch.Tensor:
        """(n, 7) pose -> its causal moving average, continuing from the previous call's last frame."""
        out = pose.clone()
        prev = self.last
        for i in range(pose.shape[0]):
            if prev is not None and self.keep > 0:
                out[i] = (1 - self.keep) * pose[i] + self.keep * prev
            prev = out[i]
        self.last = prev.clone()
        return out

    def smoothed(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """De-normalized parameters -> their smoothed scale (n, 1), t (n, 3), pitch, yaw, roll (n,) and the rotation
        (n, 3, 3) of the smoothed angles (the expression is not smoothed)."""
        pose = torch.cat([params["scale"], params["t"], params["pitch"][:, None], params["yaw"][:, None],
                          params["roll"][:, None]], dim=1)
        pose = self.smooth(pose)
        return {"scale": pose[:, 0:1], "t": pose[:, 1:4], "pitch": pose[:, 4], "yaw": pose[:, 5], "roll": pose[:, 6],
                "rot": rotation_matrix(pose[:, 4], pose[:, 5], pose[:, 6])}

    def relative(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """De-normalized parameters -> the portrait's parameters relative to the first frame (no controls)."""
        sm = self.smoothed(params)
        scale, t, rot, exp = sm["scale"], sm["t"], sm["rot"], params["exp"]
        if self.first is None:
            self.first = {"rot": rot[:1].clone(), "exp": exp[:1].clone(), "scale": scale[:1].clone(),
                          "t": t[:1].clone()}
        ref, src = self.first, self.src
        rot_new = rot @ ref["rot"].transpose(1, 2) @ self.rot_s.to(rot)
        exp_new = src["exp"].to(exp) + (exp - ref["exp"])
        lips = list(LIP_KEYPOINTS)
        exp_new[:, lips] = exp[:, lips]
        scale_new = src["scale"].to(scale) * scale / ref["scale"]
        t_new = src["t"].to(t) + (t - ref["t"])
        t_new[:, 2] = 0
        pitch, yaw, roll = euler_from_rotation(rot_new)
        return {"pitch": pitch, "yaw": yaw, "roll": roll, "exp": exp_new, "t": t_new, "scale": scale_new}

    def controls_applied(self, d: dict[str, torch.Tensor]) -> Motion:
        """Relative parameters -> Motion with every control applied: the expression-friendly relative mode (which
        needs the first frame, so it lives here), then `apply_controls`."""
        if self.controls.validate().relative_motion:
            d = self._expression_friendly(d)
        return apply_controls(d, self.controls, distance_is_condition=self.distance_is_condition)

    def _expression_friendly(self, d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """x_d' = x_s + (x_d - x_d_0) f, f = sqrt(hull(x_s) / hull(x_d_0)), x_d_0 the first frame's keypoints.

        x_d' = f x_d + (x_s - f x_d_0) is affine in x_d = scale (kp R + exp) + t_xy, so it is folded into the
        parameters: scale' = f scale, t' = f t, exp' = exp + (x_s - f x_d_0) / (f scale)."""
        if self.fold is None:
            src = self.src
            x_d0 = transform_keypoints(src["kp"].to(d["exp"]), rotation_matrix(d["pitch"][:1], d["yaw"][:1],
                                       d["roll"][:1]), d["exp"][:1], d["t"][:1], d["scale"][:1])
            x_s = src["x_s"].to(x_d0)
            f = math.sqrt(hull_volume(x_s[0])) / math.sqrt(hull_volume(x_d0[0]))
            self.fold = (f, x_s - f * x_d0)
        f, offset = self.fold
        scale = d["scale"] * f
        return {**d, "scale": scale, "t": d["t"] * f, "exp": d["exp"] + offset.to(d["exp"]) / scale[:, :, None]}


def apply_controls(d: dict[str, torch.Tensor], controls: Controls, *, distance_is_condition: bool = False) -> Motion:
    """Driving parameters -> Motion with the controls applied: head-pose offsets, distance (as the head's scale
    unless the motion generator conditions on it), eye and lip openness, and the renderer settings."""
    c = controls.validate()
    d = dict(d)
    d["pitch"] = d["pitch"] + c.head_pitch
    d["yaw"] = d["yaw"] + c.head_yaw
    d["roll"] = d["roll"] + c.head_roll
    if c.distance is not None and not distance_is_condition:
        d["scale"] = d["scale"] / c.distance
    n = d["pitch"].shape[0]
    device = d["pitch"].device
    eye = None if c.eye_openness is None else torch.full((n,), float(c.eye_openness), device=device)
    lip = None if c.lip_openness is None else torch.full((n,), float(c.lip_openness), device=device)
    return Motion(**d, eye=eye, lip=lip, stitching=c.stitching, driving_multiplier=c.driving_multiplier)


def relative_driving(params: dict[str, torch.Tensor], source, smoothing: float = 0.99) -> dict[str, torch.Tensor]:
    """Generated absolute parameters of a whole clip -> the portrait's driving parameters relative to its first
    frame (one call of `Driving.relative`)."""
    return Driving(source, MotionTemplate.neutral(), Controls(smoothing=smoothing)).relative(params)
