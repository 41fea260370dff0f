"""LivePortrait's human model (base_models/*.pth and the stitching/retargeting bundle) -> engine weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import RendererConfig
from ..errors import CheckpointError, InputError
from ..models.renderer import IMAGE_MODULES, RETARGET_CHECKPOINT_NAMES, FaceRenderer
from ..weights import check_state, save_weights
from .files import float32, read_torch_checkpoint, tensors_only
from .licences import LIVEPORTRAIT_LICENCE

LIVEPORTRAIT_FILES = {name: f"base_models/{name}.pth" for name in IMAGE_MODULES}
LIVEPORTRAIT_RETARGET_FILE = "retargeting_models/stitching_retargeting_module.pth"


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
        state = tensors_only(read_torch_checkpoint(path), path)
        check_state(getattr(reference, name), state, str(path))
        out.update({f"{name}.{k}": v for k, v in state.items()})
    path = root / LIVEPORTRAIT_RETARGET_FILE
    bundle = read_torch_checkpoint(path)
    for name, ckpt_name in RETARGET_CHECKPOINT_NAMES.items():
        if not isinstance(bundle.get(ckpt_name), dict):
            raise CheckpointError(f"retargeting checkpoint has no {ckpt_name!r} state dict: {path}")
        state = _strip_module_prefix(tensors_only(bundle[ckpt_name], path))
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
    return save_weights(out_path, float32({f"renderer.{k}": v for k, v in state.items()}), {"renderer": component})
