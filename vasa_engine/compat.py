"""Parity with the public reference implementations, through their fixture files.

A fixture is `<name>.safetensors` (tensors `weights.*`, `inputs.*`, `outputs.*`) with `<name>.json` beside it
(module config and the call to make). `run_fixture` builds the engine's own module from the config, loads the
weights under their public checkpoint keys, makes the call and returns the outputs by name.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch

from .config import AppearanceConfig, MLPConfig, MotionExtractorConfig, SpadeConfig, WarpingConfig
from .models import AppearanceFeatureExtractor, MotionExtractor, RetargetMLP, SPADEDecoder, WarpingNetwork
from .models.keypoints import source_keypoints
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


def _appearance(cfg, w, x, call=None):
    m = _module(AppearanceFeatureExtractor, _config(AppearanceConfig, cfg), w, "appearance_feature_extractor")
    return {"feature_3d": m(x["source_image"])}


def _motion_extractor(cfg, w, x, call=None):
    m = _module(MotionExtractor, _config(MotionExtractorConfig, cfg), w, "motion_extractor")
    return m(x["image"])


def _warping(cfg, w, x, call=None):
    m = _module(WarpingNetwork, _config(WarpingConfig, cfg), w, "warping_module")
    return m(x["feature_3d"], kp_source=x["kp_source"], kp_driving=x["kp_driving"])


def _spade(cfg, w, x, call=None):
    return {"image": _module(SPADEDecoder, _config(SpadeConfig, cfg), w, "spade_generator")(x["feature"])}


def _render(cfg, w, x, call=None):
    warp = _module(WarpingNetwork, _config(WarpingConfig, cfg["warping_module"]),
                   component_state(w, "warping_module"), "warping_module")
    spade = _module(SPADEDecoder, _config(SpadeConfig, cfg["spade_generator"]),
                    component_state(w, "spade_generator"), "spade_generator")
    ret = warp(x["feature_3d"], kp_source=x["kp_source"], kp_driving=x["kp_driving"])
    return {"occlusion_map": ret["occlusion_map"], "deformation": ret["deformation"], "warped_feature": ret["out"],
            "image": spade(ret["out"])}


def _mlp(cfg, w, x, call=None):
    return {"y": _module(RetargetMLP, _config(MLPConfig, cfg), w, "retargeting MLP")(x["x"])}


def _keypoint_math(cfg, w, x, call=None):
    stitching = _module(RetargetMLP, _config(MLPConfig, cfg["stitching"]), component_state(w, "stitching"),
                        "stitching")
    raw = {n: x[f"{n}_logits"] for n in ("pitch", "yaw", "roll")} | {n: x[n] for n in ("kp", "exp", "t", "scale")}
    src = source_keypoints(raw)
    return {"pitch_deg": src.pitch, "yaw_deg": src.yaw, "roll_deg": src.roll, "rot": src.rot, "x_s": src.x_s,
            "x_d_stitched": apply_stitching(stitching, src.x_s, x["x_d"])}


def _hubert_model(cfg, w, x, call=None):
    from .checkpoints import rename_old_weight_norm
    from .models.audio_encoder import AudioEncoder, AudioEncoderConfig

    m = _module(AudioEncoder, AudioEncoderConfig.from_hf_config(cfg["effective"]), rename_old_weight_norm(w),
                "hubert_model")
    ret = m(x["input_values"], output_hidden_states=True)
    out = {"extract_features": ret["extract_features"], "last_hidden_state": ret["last_hidden_state"]}
    out.update({f"hidden_states.{i}": h for i, h in enumerate(ret["hidden_states"])})
    return out


def _joyvasa_audio_feature(cfg, w, x, call=None):
    from .audio_features import AudioFeatureEncoder, joyvasa_hidden, pad_audio, resample_time
    from .checkpoints import rename_old_weight_norm
    from .models.audio_encoder import AudioEncoderConfig

    fmap = cfg["audio_feature_map"]
    m = AudioFeatureEncoder(AudioEncoderConfig.from_hf_config(cfg["hubert_config"]), fmap["out_features"]).eval()
    load_state_checked(m, rename_old_weight_norm(w), "joyvasa_audio_feature")
    n_motions = cfg["dit"]["n_motions"]
    padded = pad_audio(x["audio"])
    hidden = joyvasa_hidden(m.audio_encoder, padded, 2 * n_motions, output_fps=cfg.get("fps", 25))
    return {"padded_audio": padded, "hubert_hidden_2L": hidden,
            "audio_feat": m.audio_feature_map(resample_time(hidden, n_motions))}


def _motion_generator(w):
    """The engine's motion generator from fixture weights, sized from the tensors (step table as stored)."""
    from .checkpoints import motion_config_from_state
    from .models.motion_generator import MotionGenerator

    cfg = dataclasses.replace(motion_config_from_state(w), step_table_rows=w["denoising_net.TE.pe"].shape[1])
    return _module(MotionGenerator, cfg, w, "motion generator")


def _joyvasa_denoiser(cfg, w, x, call=None):
    from .models.motion_generator import DenoisingNetwork, MotionGeneratorConfig

    w = component_state(w, "denoising_net")
    config = MotionGeneratorConfig(
        motion_dim=cfg["motion_feat_dim"], feature_dim=cfg["feature_dim"], n_layers=cfg["n_layers"],
        n_heads=cfg["n_heads"], mlp_ratio=cfg["mlp_ratio"], n_motions=cfg["n_motions"],
        n_prev_motions=cfg["n_prev_motions"], n_diff_steps=cfg["n_diff_steps"], step_table_rows=w["TE.pe"].shape[1],
        position_table_rows=w["PE.pe"].shape[1], gaze=False, distance=False, emotion_dim=0)
    net = _module(DenoisingNetwork, config, w, "denoising_net")
    out = net(x["motion_feat"], x["audio_feat"], x["prev_motion_feat"], x["prev_audio_feat"], x["step"])
    return {"motion_feat_target": out}


def _joyvasa_sample(cfg, w, x, call=None):
    from .generation import GuidedDenoiser
    from .sampling import sample_ddpm

    generator = _motion_generator(w)
    kwargs = call["kwargs"]
    if kwargs.get("cfg_mode", "incremental") not in ("incremental", "independent") or kwargs.get("dynamic_threshold"):
        raise NotImplementedError(f"run_fixture: sampler options {kwargs} are not supported")
    den = GuidedDenoiser(generator, x["audio_feat"], x.get("prev_motion_feat"), x.get("prev_audio_feat"), {},
                         {"audio": kwargs["cfg_scale"]})
    motion, trajectory = sample_ddpm(den, x["motion_at_T"], generator.diffusion_sched.schedule(), noise=x["noise"],
                                     return_trajectory=True)
    return {"motion": motion, "trajectory": torch.stack(list(trajectory))}


# The reference glue's flags that the driving stage reproduces, with the control each one maps to.
_GLUE_FIXED = {"driving_option": "expression-friendly", "flag_normalize_lip": False, "flag_eye_retargeting": False,
               "flag_lip_retargeting": False, "animation_region": "all"}


def _glue_joyvasa(cfg, w, x, call=None):
    """JoyVASA's glue from generated motion to driving keypoints, per case, through the engine's driving stage."""
    from .audio_features import clip_layout
    from .controls import Controls
    from .driving import Driving, MotionTemplate
    from .models.keypoints import driving_keypoints
    from .models.renderer import SourceState

    stitching = _module(RetargetMLP, _config(MLPConfig, cfg["stitching"]), component_state(w, "stitching"),
                        "stitching")
    template = MotionTemplate.from_tensors({k[len("template_"):]: v for k, v in x.items() if k.startswith("template_")})
    raw = {n: x[f"source_{n}_logits"] for n in ("pitch", "yaw", "roll")}
    src = source_keypoints(raw | {n: x[f"source_{n}"] for n in ("kp", "exp", "t", "scale")})
    source = SourceState(torch.zeros(0), src.kp, src.pitch, src.yaw, src.roll, src.exp, src.t, src.scale, src.x_s)
    frames = clip_layout(int(x["num_samples"]), cfg["n_motions"]).frames
    motion = x["motion"][:frames]
    smoothing = 1.0 - cfg["ema_alpha"] if cfg["is_smooth_motion"] else 0.0
    out = {"x_s": src.x_s}
    smoothed = Driving(source, template, Controls(smoothing=smoothing)).smoothed(template.denormalize(motion))
    out |= {f"smoothed_{k}": v.reshape(frames, -1) for k, v in smoothed.items() if k != "rot"}
    out |= {"smoothed_R": smoothed["rot"], "smoothed_exp": template.denormalize(motion)["exp"]}
    for case, flags in cfg["cases"].items():
        unsupported = {k: flags[k] for k, v in _GLUE_FIXED.items() if flags.get(k, v) != v}
        if unsupported:
            raise NotImplementedError(f"run_fixture: glue case {case!r} sets {unsupported}")
        controls = Controls(smoothing=smoothing, stitching=flags["flag_stitching"],
                            driving_multiplier=float(flags["driving_multiplier"]),
                            relative_motion=flags["flag_relative_motion"])
        m = Driving(source, template, controls)(motion)
        out[f"{case}.x_d"] = driving_keypoints(src.kp, src.x_s, m.pitch, m.yaw, m.roll, m.exp, m.t, m.scale,
                                               stitching=stitching if m.stitching else None,
                                               multiplier=m.driving_multiplier)
    return out


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
    "hubert_model": _hubert_model,
    "joyvasa_audio_feature": _joyvasa_audio_feature,
    "joyvasa_denoiser": _joyvasa_denoiser,
    "joyvasa_sample_first": _joyvasa_sample,
    "joyvasa_sample_next": _joyvasa_sample,
    "glue_joyvasa": _glue_joyvasa,
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
    return dict(runner(meta["config"], weights, inputs, meta.get("call")))
