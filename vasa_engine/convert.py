"""Converters from the public checkpoints to the engine's weights format (`vasa-engine convert`); they live in
`vasa_engine.checkpoints`."""

from .checkpoints import (
    JOYVASA_LICENCE, LIVEPORTRAIT_FILES, LIVEPORTRAIT_LICENCE, LIVEPORTRAIT_RETARGET_FILE, TEMPLATE_KEYS,
    convert_joyvasa, convert_liveportrait, joyvasa_state, motion_config_from_state, read_torch_checkpoint)

__all__ = [
    "JOYVASA_LICENCE", "LIVEPORTRAIT_FILES", "LIVEPORTRAIT_LICENCE", "LIVEPORTRAIT_RETARGET_FILE", "TEMPLATE_KEYS",
    "convert_joyvasa", "convert_liveportrait", "joyvasa_state", "motion_config_from_state", "read_torch_checkpoint",
]
