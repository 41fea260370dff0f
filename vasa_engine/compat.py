"""Parity with the public reference implementations, through their fixture files.

A fixture is `<name>.safetensors` (tensors `weights.*`, `inputs.*`, `outputs.*`) with `<name>.json` beside it
(module config and the call to make). `run_fixture` builds the engine's own module from the config, loads the
weights under their public checkpoint keys, makes the call and returns the outputs by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from .config import AppearanceConfig, MLPConfig, MotionExtractorConfig, SpadeConfig, WarpingConfig
from .models import AppearanceFeatureExtractor, MotionExtractor, RetargetMLP, SPADEDecoder, WarpingNetwork
from .models.keypoints import bins_to_degrees, rotation_matrix, transform_keypoints
from .models.retarget import apply_stitching
from .weights import component_state, load_state_checked

# Config entries of the fixtures that describe the reference but configure nothing at inference.
_INFORMATIONAL = {"note", "backbone", "drop_path_rate"}


def _config(cls, data: dict):
    return cls.from_dict({k: v for k, v in data.items() if k not in _INFORMATIONAL})


def _module(cls, cfg, state: dict[str, torch.Tensor], what: str):
    module = cls(cfg).eval()
    load_state_checked(module, state, what)
    return module


def _appearance(cfg, w, x):
    m = _module(AppearanceFeatureExtractor, _config(AppearanceConfig, cfg), w, "appearance_feature_extractor")
    return {"feature_3d": m(x["source_image"])}


def _motion_extractor(cfg, w, x):
    m = _module(MotionExtractor, _config(MotionExtractorConfig, cfg), w, "motion_extractor")
    return m(x["image"])


def _warping(cfg, w, x):
    m = _module(WarpingNetwork, _config(WarpingConfig, cfg), w, "warping_module")
    return m(x["feature_3d"], kp_source=x["kp_source"], kp_driving=x["kp_driving"])


def _spade(cfg, w, x):
    return {"image": _module(SPADEDecoder, _config(SpadeConfig, cfg), w, "spade_generator")(x["feature"])}


def _render(cfg, w, x):
    warp = _module(WarpingNetwork, _config(WarpingConfig, cfg["warping_module"]),
                   component_state(w, "warping_module"), "warping_module")
    spade = _module(SPADEDecoder, _config(SpadeConfig, cfg["spade_generator"]),
                    component_state(w, "spade_generator"), "spade_generator")
    ret = warp(x["feature_3d"], kp_source=x["kp_source"], kp_driving=x["kp_driving"])
    return {"occlusion_map": ret["occlusion_map"], "deformation": ret["deformation"], "warped_feature": ret["out"],
            "image": spade(ret["out"])}


def _mlp(cfg, w, x):
    return {"y": _module(RetargetMLP, _config(MLPConfig, cfg), w, "retargeting MLP")(x["x"])}


def _keypoint_math(cfg, w, x):
    stitching = _module(RetargetMLP, _config(MLPConfig, cfg["stitching"]), component_state(w, "stitching"),
                        "stitching")
    pitch, yaw, roll = (bins_to_degrees(x[f"{n}_logits"]) for n in ("pitch", "yaw", "roll"))
    rot = rotation_matrix(pitch, yaw, roll)
    x_s = transform_keypoints(x["kp"], rot, x["exp"], x["t"], x["scale"])
    return {"pitch_deg": pitch, "yaw_deg": yaw, "roll_deg": roll, "rot": rot, "x_s": x_s,
            "x_d_stitched": apply_stitching(stitching, x_s, x["x_d"])}


_RUNNERS: dict[str, Callable] = {
    "lp_appearance_feature_extractor": _appearance,
    "lp_motion_extractor": _motion_extractor,
    "lp_warping_module": _warping,
    "lp_spade_generator": _spade,
    "lp_render": _render,
    "lp_retarget_stitching": _mlp,
    "lp_retarget_lip": _mlp,
    "lp_retarget_eye": _mlp,
    "lp_keypoint_math": _keypoint_math,
}


def fixture_names() -> list[str]:
    return sorted(_RUNNERS)


@torch.no_grad()
def run_fixture(path: str | Path) -> dict[str, torch.Tensor]:
    """Run one parity fixture (its .safetensors path; the .json beside it) and return its outputs by name."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    name = meta.get("name", path.stem)
    runner = _RUNNERS.get(name)
    if runner is None:
        raise NotImplementedError(f"run_fixture: no engine module for fixture {name!r} "
                                  f"(module: {meta.get('module', 'unknown')})")
    tensors = load_file(str(path))
    weights = component_state(tensors, "weights")
    inputs = {k: tensors[f"inputs.{k}"] for k, spec in meta.get("inputs", {}).items() if spec is not None}
    return dict(runner(meta["config"], weights, inputs))
