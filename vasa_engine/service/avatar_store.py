"""The service's avatars: portraits prepared once (alignment, source encoding) and kept on disk.

Layout of the store folder, one folder per avatar::

    <root>/<id>/portrait.<png|jpg|webp>   the uploaded bytes, unchanged
    <root>/<id>/avatar.safetensors        the prepared tensors (image, feature volume, keypoint parameters, eye and
                                          lip openness) with the avatar's metadata in the header
    <root>/<id>/avatar.json               id, width, height, aligned, method, warnings, created, engine

Nothing is pickled: the tensors load with safetensors and the metadata is JSON. Every file is written to a temporary
name and renamed, and the folder itself appears only once complete (it is built under a temporary name), so a
crash never leaves half an avatar. The id is the first 16 hex digits of the portrait's SHA-256: uploading the same
picture again finds the avatar already there.

The feature volume depends on the weights that computed it. Each avatar records the fingerprint of the engine that
prepared it (`engine_fingerprint`: a hash of the appearance and motion extractors' parameters, the dtype and the
input size); an avatar prepared by another engine is prepared again from its stored portrait when first used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..avatar import Avatar
from ..errors import InputError
from ..io.image import decode_image
from ..models.renderer import SourceState

CONTENT_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/jpg": "jpg", "image/webp": "webp"}
SOURCE_KEYS = tuple(SourceState.__dataclass_fields__)
ID_LENGTH = 16


class AvatarNotFound(InputError):
    """No avatar with that id in the store."""


def engine_fingerprint(engine) -> str:
    """What an avatar's tensors depend on: the source encoders' weights, the dtype and the input size."""
    cached = getattr(engine, "_avatar_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    renderer = engine.renderer
    for module in (renderer.appearance_feature_extractor, renderer.motion_extractor):
        for name, value in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(f"{engine.dtype}|{renderer.cfg.input_size}".encode())
    fingerprint = h.hexdigest()[:16]
    engine._avatar_fingerprint = fingerprint
    return fingerprint


def avatar_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:ID_LENGTH]


def check_id(avatar: Any) -> str:
    if not isinstance(avatar, str) or len(avatar) != ID_LENGTH or any(c not in "0123456789abcdef" for c in avatar):
        raise AvatarNotFound(f"unknown avatar {avatar!r}")
    return avatar


class AvatarStore:
    """Prepared avatars on disk under `root`, with the `cache_size` most recently used kept in memory."""

    def __init__(self, root: str | os.PathLike, engine, *, cache_size: int = 16):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.engine = engine
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Avatar] = OrderedDict()
        self._lock = threading.Lock()
        self._preparing: dict[str, threading.Lock] = {}

    # ------------------------------------------------------------------------------------------ queries

    def list(self) -> list[dict[str, Any]]:
        out = []
        for folder in sorted(self.root.iterdir()):
            meta = folder / "avatar.json"
            if folder.is_dir() and not folder.name.startswith(".") and meta.is_file():
                out.append(self._public(json.loads(meta.read_text())))
        return out

    def info(self, avatar: str) -> dict[str, Any]:
        meta = self.root / check_id(avatar) / "avatar.json"
        if not meta.is_file():
            raise AvatarNotFound(f"unknown avatar {avatar!r}")
        return self._public(json.loads(meta.read_text()))

    def __contains__(self, avatar: str) -> bool:
        try:
            return (self.root / check_id(avatar) / "avatar.json").is_file()
        except AvatarNotFound:
            return False

    @staticmethod
    def _public(meta: dict[str, Any]) -> dict[str, Any]:
        return {k: meta[k] for k in ("id", "width", "height", "aligned", "method", "warnings", "created")}

    # ------------------------------------------------------------------------------------------ add, load, delete

    def add(self, data: bytes, content_type: str | None) -> tuple[dict[str, Any], bool]:
        """Prepare and store a portrait (PNG, JPEG or WebP bytes). Returns (its info, whether it was new)."""
        kind = (content_type or "").split(";", 1)[0].strip().lower()
        if kind not in CONTENT_TYPES:
            raise InputError(f"unsupported Content-Type {content_type!r}: image/png, image/jpeg or image/webp needed")
        ident = avatar_id(data)
        with self._prepare_lock(ident):
            if ident in self:
                return self.info(ident), False
            photo = decode_image(data, "the uploaded portrait")
            avatar = self.engine.prepare(photo)
            meta = {"id": ident, "width": int(photo.shape[1]), "height": int(photo.shape[0]),
                    "aligned": avatar.alignment is not None and avatar.alignment.method != "center",
                    "method": getattr(avatar.alignment, "method", None),
                    "warnings": list(getattr(avatar.alignment, "warnings", [])), "created": time.time(),
                    "portrait": f"portrait.{CONTENT_TYPES[kind]}", "engine": engine_fingerprint(self.engine)}
            self._write(ident, data, avatar, meta)
            self._remember(ident, avatar)
        return self._public(meta), True

    def get(self, avatar: str) -> Avatar:
        """The prepared avatar (from memory, from disk, or prepared again when another engine made it)."""
        ident = check_id(avatar)
        with self._lock:
            if ident in self._cache:
                self._cache.move_to_end(ident)
                return self._cache[ident]
        folder = self.root / ident
        if not (folder / "avatar.json").is_file():
            raise AvatarNotFound(f"unknown avatar {avatar!r}")
        with self._prepare_lock(ident):
            meta = json.loads((folder / "avatar.json").read_text())
            if meta.get("engine") == engine_fingerprint(self.engine):
                loaded = self._read(folder)
            else:  # prepared by other weights: prepare again from the stored portrait
                data = (folder / meta["portrait"]).read_bytes()
                loaded = self.engine.prepare(decode_image(data, "the stored portrait"))
                meta["engine"] = engine_fingerprint(self.engine)
                self._write(ident, data, loaded, meta)
            self._remember(ident, loaded)
        return loaded

    def delete(self, avatar: str) -> None:
        ident = check_id(avatar)
        folder = self.root / ident
        if not folder.is_dir():
            raise AvatarNotFound(f"unknown avatar {avatar!r}")
        with self._prepare_lock(ident):
            gone = self.root / f".deleted-{ident}-{os.getpid()}-{threading.get_ident()}"
            os.replace(folder, gone)  # atomically out of sight, then removed
            shutil.rmtree(gone, ignore_errors=True)
            with self._lock:
                self._cache.pop(ident, None)

    # ------------------------------------------------------------------------------------------ internals

    def _prepare_lock(self, ident: str) -> threading.Lock:
        with self._lock:
            return self._preparing.setdefault(ident, threading.Lock())

    def _remember(self, ident: str, avatar: Avatar) -> None:
        with self._lock:
            self._cache[ident] = avatar
            self._cache.move_to_end(ident)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _write(self, ident: str, data: bytes, avatar: Avatar, meta: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        tensors = {f"source.{k}": getattr(avatar.source, k).detach().cpu().contiguous() for k in SOURCE_KEYS}
        tensors["image"] = torch.from_numpy(np.ascontiguousarray(avatar.image))
        tensors["eye_ratio"] = avatar.eye_ratio.detach().cpu().contiguous()
        tensors["lip_ratio"] = avatar.lip_ratio.detach().cpu().contiguous()
        folder = self.root / ident
        build = Path(tempfile.mkdtemp(prefix=f".new-{ident}-", dir=self.root))
        try:
            (build / meta["portrait"]).write_bytes(data)
            save_file(tensors, str(build / "avatar.safetensors"), metadata={"id": ident, "engine": meta["engine"]})
            (build / "avatar.json").write_text(json.dumps(meta, indent=1))
            if folder.exists():  # re-prepared for other weights: swap the whole folder
                old = self.root / f".old-{ident}-{os.getpid()}-{threading.get_ident()}"
                os.replace(folder, old)
                os.replace(build, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                try:
                    os.replace(build, folder)
                except OSError:
                    if not (folder / "avatar.json").is_file():
                        raise
                    shutil.rmtree(build, ignore_errors=True)  # another process sharing the store wrote it first
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise

    def _read(self, folder: Path) -> Avatar:
        from safetensors.torch import load_file

        device = self.engine.device
        tensors = load_file(str(folder / "avatar.safetensors"))
        source = SourceState(**{k: tensors[f"source.{k}"].to(device) for k in SOURCE_KEYS})
        return Avatar(image=tensors["image"].numpy().copy(), source=source,
                      eye_ratio=tensors["eye_ratio"].to(device), lip_ratio=tensors["lip_ratio"].to(device))
