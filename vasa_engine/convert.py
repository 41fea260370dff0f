"""Converters from the public checkpoints to the engine's weights format.

Pickled checkpoints are read only with `torch.load(..., weights_only=True)`, which admits tensors and plain
containers and refuses any other object.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import RendererConfig
from .errors import CheckpointError, InputError
from .models.renderer import IMAGE_MODULES, RETARGET_CHECKPOINT_NAMES, FaceRenderer
from .pickles import load_torch_checkpoint
from .weights import check_state, save_weights

LIVEPORTRAIT_FILES = {name: f"base_models/{name}.pth" for name in IMAGE_MODULES}
LIVEPORTRAIT_RETARGET_FILE = "retargeting_models/stitching_retargeting_module.pth"
LIVEPORTRAIT_LICENCE = "MIT (KwaiVGI/LivePortrait)"


def read_torch_checkpoint(path: str | os.PathLike, allow_namespace: bool = False) -> dict:
    """A torch-saved dict, read with weights_only=True; one-line CheckpointError on anything else."""
    obj = load_torch_checkpoint(path, allow_namespace=allow_namespace)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint is a {type(obj).__name__}, expected a dict of tensors: {path}")
    return obj


def _tensors_only(state: dict, path: Path) -> dict[str, torch.Tensor]:
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint entry {bad[0]!r} is not a tensor: {path}")
    return dict(state)


def _strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("module.", ""): v for k, v in state.items()}


def find_liveportrait_root(folder: str | os.PathLike) -> Path:
    """The folder holding base_models/ and retargeting_models/ (the given one, or its liveportrait/ child)."""
    folder = Path(folder)
    for candidate in (folder, folder / "liveportrait"):
        if (candidate / "base_models").is_dir():
            return candidate
    raise InputError(f"no LivePortrait checkpoints (base_models/ folder) in {folder}")


def liveportrait_state(folder: str | os.PathLike, config: RendererConfig | None = None) -> dict[str, torch.Tensor]:
    """Every renderer tensor under `<module>.<key>`, checked against the keys and shapes of `config` (default:
    the public human model's)."""
    root = find_liveportrait_root(folder)
    with torch.device("meta"):
        reference = FaceRenderer(config or RendererConfig())
    out: dict[str, torch.Tensor] = {}
    for name, rel in LIVEPORTRAIT_FILES.items():
        path = root / rel
        state = _tensors_only(read_torch_checkpoint(path), path)
        check_state(getattr(reference, name), state, str(path))
        out.update({f"{name}.{k}": v for k, v in state.items()})
    path = root / LIVEPORTRAIT_RETARGET_FILE
    bundle = read_torch_checkpoint(path)
    for name, ckpt_name in RETARGET_CHECKPOINT_NAMES.items():
        if not isinstance(bundle.get(ckpt_name), dict):
            raise CheckpointError(f"retargeting checkpoint has no {ckpt_name!r} state dict: {path}")
        state = _strip_module_prefix(_tensors_only(bundle[ckpt_name], path))
        check_state(getattr(reference, name), state, f"{path} [{ckpt_name}]")
        out.update({f"{name}.{k}": v for k, v in state.items()})
    return out


def convert_liveportrait(folder: str | os.PathLike, out_path: str | os.PathLike,
                         config: RendererConfig | None = None) -> Path:
    """LivePortrait's human checkpoints (base_models/*.pth, retargeting_models/*.pth) -> one engine weights file."""
    config = config or RendererConfig()
    state = liveportrait_state(folder, config)
    component = {"config": config.to_dict(), "source": f"LivePortrait human model ({Path(folder)})",
                 "licence": LIVEPORTRAIT_LICENCE}
    tensors = {f"renderer.{k}": v.float() if v.is_floating_point() else v for k, v in state.items()}
    return save_weights(out_path, tensors, {"renderer": component})


# ------------------------------------------------------------------------------------------------- JoyVASA

JOYVASA_LICENCE = "MIT (jdh-algo/JoyVASA)"
TEMPLATE_KEYS = ("mean_exp", "std_exp") + tuple(f"{s}_{k}" for s in ("min", "max")
                                                for k in ("scale", "t", "pitch", "yaw", "roll"))
AUDIO_PREFIXES = ("audio_encoder.", "audio_feature_map.")


def motion_config_from_state(state: dict[str, torch.Tensor]):
    """The motion generator's sizes, read from its tensors (heads are fixed at 8 by JoyVASA's code)."""
    from .models.motion_generator import MotionGeneratorConfig

    try:
        d, motion_dim = state["denoising_net.feature_proj.weight"].shape
        lp = state["start_motion_feat"].shape[1]
        window = state["denoising_net.alignment_mask"].shape[0]
        steps = state["diffusion_sched.betas"].shape[0] - 1
        mlp = state["denoising_net.transformer.layers.0.linear1.weight"].shape[0] // d
        positions = state["denoising_net.PE.pe"].shape[1]
    except KeyError as exc:
        raise CheckpointError(f"not a motion-generator state dict: tensor {exc.args[0]} missing") from None
    layers = len({k.split(".")[3] for k in state if k.startswith("denoising_net.transformer.layers.")})
    emotion = state.get("denoising_net.emotion_map.0.weight")
    return MotionGeneratorConfig(
        motion_dim=motion_dim, feature_dim=d, n_layers=layers, n_heads=8, mlp_ratio=mlp, n_motions=window - lp,
        n_prev_motions=lp, n_diff_steps=steps, step_table_rows=max(501, steps + 1), position_table_rows=positions,
        gaze="denoising_net.gaze_map.0.weight" in state, distance="denoising_net.distance_map.0.weight" in state,
        emotion_dim=0 if emotion is None else emotion.shape[1])


def _json_safe(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def joyvasa_state(checkpoint: str | os.PathLike, template: str | os.PathLike):
    """JoyVASA's motion generator (.pt) and motion template (.pkl) -> (tensors by component, components)."""
    import numpy as np

    from .audio_features import AudioFeatureEncoder
    from .models.motion_generator import MotionGenerator, sinusoid_table
    from .pickles import load_plain_pickle

    checkpoint = Path(checkpoint)
    ckpt = read_torch_checkpoint(checkpoint, allow_namespace=True)
    model = ckpt.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"not a JoyVASA motion-generator checkpoint (no 'model' state dict): {checkpoint}")
    model = _tensors_only(model, checkpoint)
    audio = {k: v for k, v in model.items() if k.startswith(AUDIO_PREFIXES)}
    motion = {k: v for k, v in model.items() if not k.startswith(AUDIO_PREFIXES)}
    # As the reference: the step table is rebuilt at the size the code fixes, whatever the file holds.
    motion.pop("denoising_net.TE.pe", None)
    motion_cfg = motion_config_from_state(motion)
    motion["denoising_net.TE.pe"] = sinusoid_table(motion_cfg.step_table_rows, motion_cfg.feature_dim)
    with torch.device("meta"):
        generator = MotionGenerator(motion_cfg)
    check_state(generator, motion, f"{checkpoint} [motion generator]")
    if "audio_encoder.feature_extractor.conv_layers.0.conv.weight" not in audio:
        raise CheckpointError(f"checkpoint has no audio_encoder.* tensors: {checkpoint}")
    encoder = AudioFeatureEncoder.from_state_dict(audio, what=f"{checkpoint} [audio encoder]")
    if encoder.feature_dim != motion_cfg.feature_dim:
        raise CheckpointError(f"audio_feature_map maps to {encoder.feature_dim}-d, the denoiser takes "
                              f"{motion_cfg.feature_dim}-d: {checkpoint}")
    audio = encoder.state_dict()  # the checked tensors under the current weight-norm names

    raw = load_plain_pickle(template)
    if not isinstance(raw, dict) or any(k not in raw for k in TEMPLATE_KEYS):
        missing = [k for k in TEMPLATE_KEYS if not isinstance(raw, dict) or k not in raw]
        raise CheckpointError(f"motion template lacks {', '.join(missing[:4])}: {template}")
    template_tensors = {k: torch.from_numpy(np.asarray(raw[k], dtype=np.float32).reshape(-1).copy())
                        for k in TEMPLATE_KEYS}
    args = ckpt.get("args")
    args = _json_safe(vars(args)) if hasattr(args, "__dict__") else _json_safe(args)
    tensors = {**{f"audio.{k}": v for k, v in audio.items()},
               **{f"motion_generator.{k}": v for k, v in motion.items()},
               **{f"motion_template.{k}": v for k, v in template_tensors.items()}}
    source = f"JoyVASA motion generator ({checkpoint.name}, {Path(template).name})"
    components = {
        "audio": {"config": {"encoder": encoder.audio_encoder.cfg.to_dict(), "feature_dim": encoder.feature_dim},
                  "source": source,
                  "licence": JOYVASA_LICENCE},
        "motion_generator": {"config": motion_cfg.to_dict(), "source": source, "licence": JOYVASA_LICENCE,
                             "training_args": args},
        "motion_template": {"source": source, "licence": JOYVASA_LICENCE},
    }
    return tensors, components


def convert_joyvasa(checkpoint: str | os.PathLike, template: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """JoyVASA's motion generator and motion template -> one engine weights file (audio encoder included)."""
    tensors, components = joyvasa_state(checkpoint, template)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    return save_weights(out_path, tensors, components)
