"""The engine's weights format: one .safetensors file of tensors and one .json config beside it.

Tensor names are `<component>.<module>.<key>` with `<key>` the public checkpoint's own state_dict key, e.g.
`renderer.warping_module.third.conv.weight`. The JSON file (same stem) holds:

    {"format": "vasa-engine-weights", "format_version": 1,
     "components": {"renderer": {"config": {...RendererConfig...}, "source": "...", "licence": "..."}}}

Loading reads the JSON and the safetensors file only: nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, InputError

FORMAT = "vasa-engine-weights"
FORMAT_VERSION = 1
RANDOM_WEIGHTS_WARNING = ("no weights given: using seeded random weights, so the output will not look like a face "
                          "(run `vasa-engine download`, or convert checkpoints with `vasa-engine convert` and pass --weights)")


def config_path(weights_path: str | os.PathLike) -> Path:
    return Path(weights_path).with_suffix(".json")


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over the target."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], components: dict[str, dict]) -> Path:
    """Write `path` (.safetensors) and its .json config. Returns the .safetensors path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"weights file must end in .safetensors: {path}")
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "components": components}
    _atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata={"format": FORMAT}))
    _atomic_write(config_path(path), lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2) + "\n"))
    return path


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an engine weights file and its config. Raises CheckpointError / InputError with one-line messages."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    cfg_file = config_path(path)
    if not cfg_file.is_file():
        raise CheckpointError(f"config not found beside the weights: {cfg_file}")
    try:
        doc = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"config is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}): {cfg_file}")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"not a vasa-engine weights config (format field missing or wrong): {cfg_file}")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"weights format version {doc['format_version']} is newer than this engine "
                              f"understands ({FORMAT_VERSION}): {cfg_file}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors file ({str(exc).splitlines()[0]}): {path}")
    return tensors, doc


def component_state(tensors: dict[str, torch.Tensor], component: str) -> dict[str, torch.Tensor]:
    prefix = component + "."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def check_state(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Raise CheckpointError, one line naming the first missing, unexpected or mis-shaped tensors, unless `state`
    has exactly the module's keys and shapes. Works on modules built on the meta device."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if problems:
        raise CheckpointError(f"{what}: {'; '.join(problems)}")


def load_state_checked(module: nn.Module, state: dict[str, torch.Tensor], what: str, assign: bool = False) -> None:
    """check_state, then a strict load (assign=True adopts the tensors, for modules built on the meta device)."""
    check_state(module, state, what)
    module.load_state_dict(state, strict=True, assign=assign)


@contextlib.contextmanager
def seeded(seed: int):
    """Build modules inside this block to get PyTorch's default init drawn from a fixed seed (CPU RNG only)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
