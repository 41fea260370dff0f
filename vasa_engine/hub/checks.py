"""Checks of downloaded files before they are used: published size and SHA-256, and ONNX files read to the end."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import CheckpointError, InputError
from .catalogue import HubFile

_REDOWNLOAD = "delete it and run `vasa-engine download` again"
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}  # ModelProto: field -> wire type


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_published(spec: HubFile, path: Path) -> None:
    """Size and SHA-256 against the published values, where known. One-line CheckpointError otherwise."""
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise CheckpointError(f"{path} is {size} bytes, the published {spec.path} is {spec.size}: truncated or a "
                              f"different file ({_REDOWNLOAD})")
    if spec.sha256 is not None:
        digest = sha256_of(path)
        if digest != spec.sha256:
            raise CheckpointError(f"SHA-256 of {path} is {digest[:16]}..., the published {spec.path} has "
                                  f"{spec.sha256[:16]}...: corrupt or a different file ({_REDOWNLOAD})")


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("ends inside a field header")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def check_onnx(path: str | os.PathLike) -> None:
    """A complete ONNX model file: its top-level protobuf fields are those of an ONNX ModelProto, with a graph and
    an IR version, and the last field ends exactly at the end of the file (a truncated file fails)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    with open(path, "rb") as f:
        data = memoryview(f.read())
    seen = set()
    pos = 0
    try:
        if not len(data):
            raise ValueError("empty file")
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if _ONNX_FIELDS.get(number) != wire:
                raise ValueError(f"field {number} of wire type {wire} is not part of an ONNX model")
            if wire == 0:
                _, pos = _varint(data, pos)
            else:
                length, pos = _varint(data, pos)
                pos += length
                if pos > len(data):
                    raise ValueError("the last field runs past the end of the file")
            seen.add(number)
        if 7 not in seen or 1 not in seen:
            raise ValueError("no graph" if 7 not in seen else "no IR version")
    except ValueError as exc:
        raise CheckpointError(f"not a complete ONNX model ({exc}; truncated or a different file): {path}") from None
