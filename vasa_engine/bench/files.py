"""Report files: their default folder and names, the JSON text, and atomic writes (readers never see a partial
file)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path

import torch

from .provenance import REPO, device_slug


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, default=str) + "\n"


def default_results_dir() -> Path:
    folder = REPO / "benches" / "results"
    return folder if folder.is_dir() else Path.cwd()


def default_stem(device: torch.device, mode: str, date: str | None = None) -> str:
    date = date or _dt.date.today().isoformat()
    slug = device_slug(device)
    return f"{slug}-smoke-{date}" if mode == "smoke" else f"{slug}-{date}"
