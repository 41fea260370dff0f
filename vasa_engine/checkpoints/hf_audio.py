"""Hugging Face HuBERT / wav2vec2 checkpoints: a model folder (config.json + model.safetensors or
pytorch_model.bin) -> the engine's AudioEncoder, and the sizes of an encoder read from its tensors.

Task checkpoints (*ForCTC and the like) load too: the model body is taken under its `hubert.` / `wav2vec2.` prefix
and the heads are dropped. Old weight-norm names (`weight_g` / `weight_v`) are renamed to the current ones.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from ..errors import CheckpointError, InputError
from ..models.audio_encoder import AudioEncoder, AudioEncoderConfig
from ..weights import check_state
from .files import read_safetensors, read_torch_checkpoint, tensors_only

log = logging.getLogger("vasa_engine")

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_BODY_PREFIXES = ("hubert.", "wav2vec2.")
_OLD_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def rename_old_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`...conv.weight_g` / `...conv.weight_v` -> `...conv.parametrizations.weight.original0` / `original1`."""
    out = {}
    for key, value in state.items():
        head, _, last = key.rpartition(".")
        if last in _OLD_WEIGHT_NORM and head.endswith("pos_conv_embed.conv"):
            key = f"{head}.{_OLD_WEIGHT_NORM[last]}"
        out[key] = value
    return out


def hf_body_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The model body's tensors under AudioEncoder keys: a `hubert.` / `wav2vec2.` prefix (task checkpoints such as
    *ForCTC) is removed and everything outside it (heads: `lm_head.*`, `quantizer.*`, `project_*`, ...) dropped;
    old weight-norm names are renamed. Returns the state and the sorted top-level names of what was dropped."""
    prefix = next((p for p in HF_BODY_PREFIXES if any(k.startswith(p) for k in state)), None)
    dropped: set[str] = set()
    if prefix is not None:
        body = {}
        for key, value in state.items():
            if key.startswith(prefix):
                body[key[len(prefix):]] = value
            else:
                dropped.add(key.split(".")[0])
        state = body
    return rename_old_weight_norm(state), sorted(dropped)


def read_hf_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """`config.json` (as a dict) and the tensors of `model.safetensors` (preferred) or `pytorch_model.bin`
    (weights-only unpickling) of a Hugging Face model folder, and the weights path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"audio encoder folder not found: {folder}")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"config.json not found in audio encoder folder: {folder}")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"config is not valid JSON ({getattr(exc, 'msg', exc)}): {cfg_path}") from None
    path = next((folder / name for name in HF_WEIGHT_FILES if (folder / name).is_file()), None)
    if path is None:
        raise InputError(f"no {' or '.join(HF_WEIGHT_FILES)} in audio encoder folder: {folder}")
    if path.suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        state = tensors_only(read_torch_checkpoint(path), path)
    return config, state, path


def hf_audio_encoder_state(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model body's tensors of a Hugging Face folder under AudioEncoder keys (`hf_body_state`), unchecked."""
    _, state, _ = read_hf_folder(folder)
    return hf_body_state(state)[0]


def load_hf_audio_encoder(folder: str | os.PathLike, device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32) -> AudioEncoder:
    """A Hugging Face HuBERT / wav2vec2 model folder (config.json + model.safetensors or pytorch_model.bin, body
    or task checkpoint) -> AudioEncoder in eval mode. Strict key and shape check; InputError for a missing folder
    or file, CheckpointError for anything wrong inside."""
    config, state, path = read_hf_folder(folder)
    cfg = AudioEncoderConfig.from_hf_config(config)
    state, dropped = hf_body_state(state)
    if dropped:
        log.info("audio encoder %s: ignoring tensors outside the model body: %s", path, ", ".join(dropped))
    with torch.device("meta"):
        module = AudioEncoder(cfg)
    check_state(module, state, str(path))
    state = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


def audio_config_from_state(state: dict[str, torch.Tensor], model_type: str = "hubert",
                            num_attention_heads: int | None = None, do_stable_layer_norm: bool = False,
                            layer_norm_eps: float = 1e-5) -> AudioEncoderConfig:
    """Sizes of an AudioEncoder read from its tensors (keys without prefix, either weight-norm naming).

    Read from shapes: hidden_size, num_hidden_layers, intermediate_size, conv_dim, conv_kernel, conv_bias,
    feat_extract_norm, num_conv_pos_embeddings and groups, feat_proj_layer_norm, masked_spec_embed. Not
    recoverable from tensors: the conv strides (HuBERT's (5, 2, 2, 2, 2, 2, 2) is assumed; 7 conv layers required),
    the head count (default hidden_size / 64, HuBERT/wav2vec2 base and large use 64-wide heads), the pre-/post-LN
    variant and layer_norm_eps (arguments)."""
    state = rename_old_weight_norm(state)

    def get(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"audio encoder state: missing {key}")
        return state[key]

    hidden = get("feature_projection.projection.weight").shape[0]
    conv_dim, conv_kernel = [], []
    while f"feature_extractor.conv_layers.{len(conv_dim)}.conv.weight" in state:
        w = state[f"feature_extractor.conv_layers.{len(conv_dim)}.conv.weight"]
        conv_dim.append(w.shape[0])
        conv_kernel.append(w.shape[2])
    base = AudioEncoderConfig()
    if len(conv_dim) != len(base.conv_stride):
        raise CheckpointError(f"audio encoder state: {len(conv_dim)} conv layers; the strides of other than "
                              f"{len(base.conv_stride)} layers are unknown")
    layers = 0
    while f"encoder.layers.{layers}.attention.q_proj.weight" in state:
        layers += 1
    v = get("encoder.pos_conv_embed.conv.parametrizations.weight.original1")
    if "feature_extractor.conv_layers.1.layer_norm.weight" in state:
        norm = "layer"
    elif "feature_extractor.conv_layers.0.layer_norm.weight" in state:
        norm = "group"
    else:
        raise CheckpointError("audio encoder state: no conv feature norm (conv_layers.0.layer_norm) found")
    heads = num_attention_heads or max(1, hidden // 64)
    try:
        return AudioEncoderConfig(
            model_type=model_type, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=get("encoder.layers.0.feed_forward.intermediate_dense.weight").shape[0] if layers
            else base.intermediate_size,
            conv_dim=tuple(conv_dim), conv_kernel=tuple(conv_kernel), conv_stride=base.conv_stride,
            conv_bias="feature_extractor.conv_layers.0.conv.bias" in state, feat_extract_norm=norm,
            num_conv_pos_embeddings=v.shape[2], num_conv_pos_embedding_groups=hidden // v.shape[1],
            layer_norm_eps=layer_norm_eps, do_stable_layer_norm=do_stable_layer_norm,
            feat_proj_layer_norm="feature_projection.layer_norm.weight" in state,
            masked_spec_embed="masked_spec_embed" in state)
    except ValueError as exc:
        raise CheckpointError(f"audio encoder state: {exc}") from None
