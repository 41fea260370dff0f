"""Restricted unpickling for the public checkpoints that are pickles.

Only the types those files hold are admitted: tensors and their storages (through torch's weights-only
loader), plain containers, numbers, strings, NumPy arrays and dtypes, `argparse.Namespace` and `pathlib` paths.
Any other global (a function, a class with side effects) is refused before it is called.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import _reconstruct

from .errors import CheckpointError, InputError, first_line

# (module, name) pairs a plain pickle may reference. NumPy moved its internals from numpy.core to numpy._core.
_NUMPY_GLOBALS = {
    (mod, name)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")} | {
    ("numpy", name) for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool_")
}
_PATH_TYPES = (pathlib.PosixPath, pathlib.PurePosixPath, pathlib.WindowsPath, pathlib.PureWindowsPath)
_OTHER_GLOBALS = {("argparse", "Namespace"), ("collections", "OrderedDict")} | {
    ("pathlib", cls.__name__) for cls in _PATH_TYPES
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS or (module, name) in _OTHER_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def load_plain_pickle(path: str | os.PathLike):
    """A plain pickle of containers, numbers, strings and NumPy arrays (e.g. a motion template)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    data = path.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"pickle holds objects this loader does not admit ({first_line(exc)}): {path}")
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise CheckpointError(f"cannot read pickle, truncated or corrupt ({first_line(exc)}): {path}")


def load_torch_checkpoint(path: str | os.PathLike, allow_namespace: bool = False):
    """torch.load(weights_only=True); with allow_namespace, argparse.Namespace, pathlib paths and NumPy arrays
    are admitted too (training arguments saved beside the weights)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    extra: list = []
    if allow_namespace:
        extra = [argparse.Namespace, *_PATH_TYPES, np.ndarray, np.dtype]
        extra += [(_reconstruct, f"{mod}._reconstruct") for mod in ("numpy.core.multiarray", "numpy._core.multiarray")]
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"checkpoint holds objects other than tensors and containers ({first_line(exc)}): "
                              f"{path}")
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"cannot read checkpoint, truncated or not a PyTorch file ({first_line(exc)}): {path}")
