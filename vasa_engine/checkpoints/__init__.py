"""The public checkpoints -> the engine's weights: LivePortrait's renderer, JoyVASA's motion generator and motion
template, Hugging Face HuBERT / wav2vec2 audio encoders, and the licences recorded with them.

Pickled files are read only with weights-only unpickling or `vasa_engine.pickles`' restricted unpickler.
"""

from .files import read_safetensors, read_torch_checkpoint, tensors_only
from .hf_audio import (
    HF_BODY_PREFIXES, HF_WEIGHT_FILES, audio_config_from_state, hf_audio_encoder_state, hf_body_state,
    load_hf_audio_encoder, read_hf_folder, rename_old_weight_norm)
from .joyvasa import (
    AUDIO_PREFIXES, TEMPLATE_KEYS, audio_feature_encoder_from_state, convert_joyvasa, joyvasa_state,
    motion_config_from_state, read_motion_template)
from .licences import COMMERCIAL_USE, HUBERT_LICENCE, INSIGHTFACE_LICENCE, JOYVASA_LICENCE, LIVEPORTRAIT_LICENCE
from .liveportrait import (
    LIVEPORTRAIT_FILES, LIVEPORTRAIT_RETARGET_FILE, convert_liveportrait, find_liveportrait_root, liveportrait_state)

__all__ = [
    "AUDIO_PREFIXES", "COMMERCIAL_USE", "HF_BODY_PREFIXES", "HF_WEIGHT_FILES", "HUBERT_LICENCE", "INSIGHTFACE_LICENCE",
    "JOYVASA_LICENCE", "LIVEPORTRAIT_FILES", "LIVEPORTRAIT_LICENCE", "LIVEPORTRAIT_RETARGET_FILE", "TEMPLATE_KEYS",
    "audio_config_from_state", "audio_feature_encoder_from_state", "convert_joyvasa", "convert_liveportrait",
    "find_liveportrait_root", "hf_audio_encoder_state", "hf_body_state", "joyvasa_state", "liveportrait_state",
    "load_hf_audio_encoder", "motion_config_from_state", "read_hf_folder", "read_motion_template",
    "read_safetensors", "read_torch_checkpoint", "rename_old_weight_norm", "tensors_only",
]
