"""JoyVASA's motion generator checkpoint (.pt, with its fine-tuned HuBERT as `audio_encoder.*`) and motion template
(.pkl) -> engine weights: the `audio`, `motion_generator` and `motion_template` components.

A checkpoint without `audio_encoder.*` tensors takes them from a separately given audio-encoder state (the
Hugging Face encoder JoyVASA was initialised from), under the checkpoint's own tensors, as the reference loads them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..audio_features import AudioFeatureEncoder
from ..errors import CheckpointError
from ..models.motion_generator import MotionGenerator, MotionGeneratorConfig, sinusoid_table
from ..pickles import load_plain_pickle
from ..weights import check_state, save_weights
from .files import float32, read_torch_checkpoint, tensors_only
from .hf_audio import audio_config_from_state, rename_old_weight_norm
from .licences import JOYVASA_LICENCE

TEMPLATE_KEYS = ("mean_exp", "std_exp") + tuple(f"{s}_{k}" for s in ("min", "max")
                                                for k in ("scale", "t", "pitch", "yaw", "roll"))
AUDIO_PREFIXES = ("audio_encoder.", "audio_feature_map.")
AudioEncoderSource = Callable[[], dict[str, torch.Tensor]]  # returns AudioEncoder tensors, keys without prefix


def motion_config_from_state(state: dict[str, torch.Tensor]) -> MotionGeneratorConfig:
    """The motion generator's sizes, read from its tensors (heads are fixed at 8 by JoyVASA's code)."""
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


def audio_feature_encoder_from_state(state: dict[str, torch.Tensor], num_attention_heads: int | None = None,
                                     do_stable_layer_norm: bool = False, what: str = "JoyVASA audio encoder"
                                     ) -> AudioFeatureEncoder:
    """An AudioFeatureEncoder from `audio_encoder.*` + `audio_feature_map.*` tensors (JoyVASA checkpoint keys,
    either weight-norm naming), sizes read from the shapes (`audio_config_from_state`), strict key/shape check."""
    enc = {k[len("audio_encoder."):]: v for k, v in state.items() if k.startswith("audio_encoder.")}
    rest = {k: v for k, v in state.items() if not k.startswith("audio_encoder.")}
    cfg = audio_config_from_state(enc, num_attention_heads=num_attention_heads,
                                  do_stable_layer_norm=do_stable_layer_norm)
    if "audio_feature_map.weight" not in rest:
        raise CheckpointError(f"{what}: missing audio_feature_map.weight")
    full = {**{f"audio_encoder.{k}": v for k, v in rename_old_weight_norm(enc).items()}, **rest}
    with torch.device("meta"):
        module = AudioFeatureEncoder(cfg, rest["audio_feature_map.weight"].shape[0])
    check_state(module, full, what)
    module.load_state_dict(float32(full), strict=True, assign=True)
    return module.eval()


def _json_safe(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def read_motion_template(template: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The motion template's statistics (`TEMPLATE_KEYS`) as flat float32 tensors."""
    raw = load_plain_pickle(template)
    if not isinstance(raw, dict) or any(k not in raw for k in TEMPLATE_KEYS):
        missing = [k for k in TEMPLATE_KEYS if not isinstance(raw, dict) or k not in raw]
        raise CheckpointError(f"motion template lacks {', '.join(missing[:4])}: {template}")
    return {k: torch.from_numpy(np.asarray(raw[k], dtype=np.float32).reshape(-1).copy()) for k in TEMPLATE_KEYS}


def joyvasa_state(checkpoint: str | os.PathLike, template: str | os.PathLike,
                  audio_encoder: AudioEncoderSource | None = None):
    """JoyVASA's motion generator (.pt) and motion template (.pkl) -> (tensors by component, components).

    `audio_encoder`: called only when the checkpoint has no `audio_encoder.*` tensors, it returns an AudioEncoder
    state (keys without prefix, e.g. `vasa_engine.checkpoints.hf_audio_encoder_state` of a Hugging Face folder)
    that the checkpoint's own tensors then go over; without it such a checkpoint is refused."""
    checkpoint = Path(checkpoint)
    ckpt = read_torch_checkpoint(checkpoint, allow_namespace=True)
    model = ckpt.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"not a JoyVASA motion-generator checkpoint (no 'model' state dict): {checkpoint}")
    model = tensors_only(model, checkpoint)
    if audio_encoder is not None and not any(k.startswith("audio_encoder.") for k in model):
        model = {**{f"audio_encoder.{k}": v for k, v in audio_encoder().items()}, **model}
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
    encoder = audio_feature_encoder_from_state(audio, what=f"{checkpoint} [audio encoder]")
    if encoder.feature_dim != motion_cfg.feature_dim:
        raise CheckpointError(f"audio_feature_map maps to {encoder.feature_dim}-d, the denoiser takes "
                              f"{motion_cfg.feature_dim}-d: {checkpoint}")
    audio = encoder.state_dict()  # the checked tensors under the current weight-norm names

    template_tensors = read_motion_template(template)
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


def convert_joyvasa(checkpoint: str | os.PathLike, template: str | os.PathLike, out_path: str | os.PathLike,
                    audio_encoder: AudioEncoderSource | None = None) -> Path:
    """JoyVASA's motion generator and motion template -> one engine weights file (audio encoder included;
    `audio_encoder` as in `joyvasa_state`)."""
    tensors, components = joyvasa_state(checkpoint, template, audio_encoder)
    return save_weights(out_path, float32(tensors), components)
