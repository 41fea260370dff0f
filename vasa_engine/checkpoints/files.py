"""Reading the public checkpoint files: torch pickles (weights-only unpickling, see `vasa_engine.pickles`) and
safetensors files, each failure a one-line CheckpointError / InputError naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..errors import first_line
from ..pickles import load_torch_checkpoint


def read_torch_checkpoint(path: str | os.PathLike, allow_namespace: bool = False) -> dict:
    """A torch-saved dict, read with weights_only=True; one-line CheckpointError on anything else."""
    obj = load_torch_checkpoint(path, allow_namespace=allow_namespace)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint is a {type(obj).__name__}, expected a dict of tensors: {path}")
    return obj


def tensors_only(state: dict, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """`state` when every value is a tensor, else a CheckpointError naming the first entry that is not."""
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint entry {bad[0]!r} is not a tensor: {path}")
    return dict(state)


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(Path(path)))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors file ({first_line(exc)}): {path}") from None


def float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors as float32, the others as they are: the dtype of the engine's weights files."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
