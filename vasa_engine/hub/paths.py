"""Where the weights cache is and whether the network may be used: options, environment variables, defaults."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

CACHE_ENV = "VASA_ENGINE_CACHE"
OFFLINE_ENV = "VASA_ENGINE_OFFLINE"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: `cache_dir` (the --cache-dir option) > $VASA_ENGINE_CACHE > $XDG_CACHE_HOME/vasa-engine >
    ~/.cache/vasa-engine. Not created here."""
    return cache_dir_origin(cache_dir)[0]


def cache_dir_origin(cache_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The cache folder and where the setting came from (for messages)."""
    if cache_dir:
        return Path(os.path.expanduser(os.fspath(cache_dir))), "--cache-dir"
    if os.environ.get(CACHE_ENV):
        return Path(os.path.expanduser(os.environ[CACHE_ENV])), f"${CACHE_ENV}"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "vasa-engine", "default ($XDG_CACHE_HOME/vasa-engine)"
    return Path.home() / ".cache" / "vasa-engine", "default"


def offline_requested(flag: bool = False) -> bool:
    """--offline, $VASA_ENGINE_OFFLINE or huggingface_hub's own $HF_HUB_OFFLINE set to 1/true/yes/on."""
    return bool(flag) or _truthy(os.environ.get(OFFLINE_ENV)) or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def group_dir(cache_dir: str | os.PathLike, group: str) -> Path:
    return Path(cache_dir) / "downloads" / group


def engine_dir(cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / "engine"


def check_cache_dir(cache_dir: Path) -> None:
    if cache_dir.exists() and not cache_dir.is_dir():
        raise InputError(f"cache folder is not a folder: {cache_dir}")
