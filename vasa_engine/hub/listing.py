"""Lines describing the weights cache for `vasa-engine info` and `vasa-engine download --list`. Reads only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..weights import config_path
from .catalogue import HubFile, select
from .paths import CACHE_ENV, cache_dir_origin, resolve_cache_dir
from .state import engine_weights, faces_folder, file_state


def _size_text(path: Path) -> str:
    size = path.stat().st_size
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def file_lines(cache_dir: str | os.PathLike | None = None, groups: Iterable[str] | None = None,
               manifest: Sequence[HubFile] | None = None) -> list[str]:
    """One line per published file: group, repository and path, size, licence, commercial use, local state."""
    cache = resolve_cache_dir(cache_dir)
    lines = []
    for spec in select(groups, manifest):
        commercial = {True: "yes", False: "NO", None: "unknown"}[spec.commercial]
        lines.append(f"  {spec.group:<12} {spec.name}  ({spec.approx_size})  licence: {spec.licence}; "
                     f"commercial use: {commercial}; {file_state(spec, cache)}")
    return lines


def engine_lines(cache_dir: str | os.PathLike | None = None) -> list[str]:
    """One line per converted engine weights file: path, size, components and their licences."""
    lines = []
    for path in engine_weights(cache_dir):
        try:
            components = json.loads(config_path(path).read_text()).get("components", {})
        except (OSError, ValueError):
            components = {}
        licences = sorted({str(c.get("licence", "licence not recorded")) for c in components.values()
                           if isinstance(c, dict)})
        lines.append(f"  {path} ({_size_text(path)}): {', '.join(components) or 'no components'}; "
                     f"licence: {'; '.join(licences) or 'not recorded'}")
    return lines


def cache_report_lines(cache_dir: str | os.PathLike | None = None) -> list[str]:
    """What `vasa-engine info` prints about the weights cache: the folder, the engine weights found (used by
    generate, demo and render when no --weights is given), the face models, and every published file with its
    licence and whether it is present. Reads the cache only."""
    cache, origin = cache_dir_origin(cache_dir)
    hint = f"; --cache-dir or ${CACHE_ENV} sets it" if origin.startswith("default") else ""
    lines = [f"weights cache: {cache} ({origin}{hint})"]
    engines = engine_lines(cache)
    if engines:
        lines.append("engine weights (used when no --weights is given):")
        lines += engines
    else:
        lines.append("engine weights: none (`vasa-engine download` fetches and converts them)")
    faces = faces_folder(cache)
    lines.append(f"face models: {faces if faces is not None else 'not downloaded'}")
    lines.append("published files:")
    lines += file_lines(cache)
    return lines
