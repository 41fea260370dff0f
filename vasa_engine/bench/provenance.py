"""Where a report came from: the commit, the versions of the software, a file-name slug of the device."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def git_commit(folder: Path | None = None) -> dict:
    """{"commit": short hash, "dirty": tracked files changed}; outside a checkout (a copied tree on a GPU machine)
    $VASA_COMMIT when set, else "unknown", and dirty None."""
    folder = folder or REPO
    outside = {"commit": os.environ.get("VASA_COMMIT") or "unknown", "dirty": None}
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True,
                             timeout=10)
        if sha.returncode != 0:
            return outside
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return outside


def slug(name: str) -> str:
    """A device name as a file-name word: lower case, runs of other characters as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-device"


def device_slug(device: torch.device) -> str:
    return "cpu" if device.type != "cuda" else slug(torch.cuda.get_device_name(device))


def versions() -> dict:
    from .. import __version__

    out = {"vasa_engine": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "cuda": torch.version.cuda}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out
