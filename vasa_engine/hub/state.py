"""What the weights cache holds: files present or not, converted engine weights, checked groups. Reads only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..weights import FORMAT, config_path
from .catalogue import ENGINE_FILES, HubFile, select
from .paths import engine_dir, group_dir, resolve_cache_dir

STAMP = ".checked"  # written in a group's download folder once its files passed the checks (groups not converted)


def file_state(spec: HubFile, cache_dir: str | os.PathLike) -> str:
    """'present', 'missing', or 'wrong size' (differs from the published size)."""
    path = spec.local_path(cache_dir)
    if not path.is_file():
        return "missing"
    if spec.size is not None and path.stat().st_size != spec.size:
        return "wrong size"
    return "present"


def fresh(target: Path, sources: Iterable[Path], also: Iterable[Path] = ()) -> bool:
    """target (and every path in `also`) exists and is not older than any source."""
    if not target.is_file() or not all(p.is_file() for p in also):
        return False
    stamp = target.stat().st_mtime_ns
    return all(p.stat().st_mtime_ns <= stamp for p in sources)


def _valid_engine_pair(path: Path) -> bool:
    cfg = config_path(path)
    if not (path.is_file() and cfg.is_file()):
        return False
    try:
        doc = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def engine_weights(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The converted engine weights present in the cache (each with its .json), renderer first."""
    root = engine_dir(resolve_cache_dir(cache_dir))
    return [root / name for name in ENGINE_FILES.values() if _valid_engine_pair(root / name)]


def faces_folder(cache_dir: str | os.PathLike | None = None, manifest: Sequence[HubFile] | None = None) -> Path | None:
    """The folder holding the face models (public layout: insightface/models/buffalo_l/, liveportrait/landmark.onnx)
    when every one of them is there and passed its check (`check_and_convert`) since it last changed, else None."""
    cache = resolve_cache_dir(cache_dir)
    paths = [f.local_path(cache) for f in select(["faces"], manifest)]
    folder = group_dir(cache, "faces")
    if paths and all(p.is_file() for p in paths) and fresh(folder / STAMP, paths):
        return folder
    return None


def find_weights(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The converted engine weights in the cache (`<cache>/engine/*.safetensors`, complete with their .json), then
    the face models folder when it is complete. Reads the cache only."""
    found = engine_weights(cache_dir)
    faces = faces_folder(cache_dir)
    return found + ([faces] if faces is not None else [])


def weights_for_engine(given: Sequence[str | os.PathLike] | None, cache_dir: str | os.PathLike | None = None
                       ) -> tuple[list[str] | None, str | None]:
    """The weights an engine should load and a line saying where they come from: `given` (--weights) when given
    (no line), else the converted weights in the cache (a line naming them), else (None, None): seeded random
    weights, which the engine itself warns about. Reads the cache only, never the network."""
    if given:
        return [os.fspath(p) for p in given], None
    cache = resolve_cache_dir(cache_dir)
    found = engine_weights(cache)
    if found:
        names = ", ".join(p.name for p in found)
        return [os.fspath(p) for p in found], (f"weights: {names} from the download cache {engine_dir(cache)} "
                                               "(--weights overrides)")
    return None, None
