"""The one-time conversion of the cache: every complete group is checked, and the LivePortrait and JoyVASA groups
are converted into engine weights under `<cache>/engine/`, atomically (a staging folder, then a rename)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..checkpoints import convert_joyvasa, convert_liveportrait, hf_audio_encoder_state, load_hf_audio_encoder
from ..errors import CheckpointError, InputError
from ..weights import config_path
from .catalogue import ENGINE_FILES, GROUPS, HubFile, select
from .checks import check_onnx, check_published
from .paths import check_cache_dir, engine_dir, group_dir, resolve_cache_dir
from .state import STAMP, file_state, fresh

Say = Callable[[str], None]


@dataclass
class GroupResult:
    group: str
    status: str  # converted | up to date | checked | incomplete | failed
    outputs: list[Path] = field(default_factory=list)
    missing: list[HubFile] = field(default_factory=list)
    error: str | None = None


def _clean_stale_staging(folder: Path, max_age_s: float = 3600.0) -> None:
    """Remove staging folders a killed conversion left behind (older than an hour: a running one is younger)."""
    now = time.time()
    for p in folder.glob(".staging-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _publish(staged: Path, target: Path) -> None:
    """Move a staged weights file and its .json over the target pair. The old .json goes first, so an interruption
    leaves a weights file without its .json, which is never used and is converted again on the next run."""
    old_cfg = config_path(target)
    if old_cfg.exists():
        old_cfg.unlink()
    os.replace(staged, target)
    os.replace(config_path(staged), old_cfg)


def _convert_into(out_dir: Path, name: str, convert: Callable[[Path], Path]) -> Path:
    """Run `convert(staged_path)` in a staging folder inside `out_dir`, then publish the pair as `out_dir/name`.
    Nothing is left in `out_dir` when the conversion fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        staged = convert(staging / name)
        target = out_dir / name
        _publish(staged, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _hubert_checked(cache: Path, manifest: Sequence[HubFile] | None, result: GroupResult | None) -> bool:
    """chinese-hubert-base is in the cache and passed its check (in this run, or in an earlier one)."""
    if result is not None:
        return result.status in ("checked", "up to date")
    files = select(["hubert"], manifest)
    return all(file_state(f, cache) == "present" for f in files) and fresh(
        group_dir(cache, "hubert") / STAMP, [f.local_path(cache) for f in files])


def _check_group_files(files: Sequence[HubFile], cache: Path) -> None:
    for spec in files:
        check_published(spec, spec.local_path(cache))


def _joyvasa_converter(cache: Path, members: Sequence[HubFile], use_hubert: bool, say: Say) -> Callable[[Path], Path]:
    """JoyVASA's conversion into a staged path; a checkpoint without its audio encoder takes chinese-hubert-base's
    weights (when that group is checked), as the reference loads it."""
    ckpt = next(f.local_path(cache) for f in members if f.path.endswith(".pt"))
    template = next(f.local_path(cache) for f in members if f.path.endswith(".pkl"))

    def hubert_state():
        say("joyvasa: the checkpoint has no audio encoder; taking chinese-hubert-base's")
        return hf_audio_encoder_state(group_dir(cache, "hubert"))

    return lambda staged: convert_joyvasa(ckpt, template, staged, audio_encoder=hubert_state if use_hubert else None)


def _convert_group(cache: Path, group: str, members: Sequence[HubFile], *, force: bool, say: Say,
                   renderer_config, use_hubert: bool) -> GroupResult:
    target = engine_dir(cache) / ENGINE_FILES[group]
    if not force and fresh(target, [f.local_path(cache) for f in members], [config_path(target)]):
        say(f"{group}: {target} is up to date")
        return GroupResult(group, "up to date", [target])
    _check_group_files(members, cache)
    say(f"{group}: checking and converting {group_dir(cache, group)} ...")
    t0 = time.perf_counter()
    if group == "liveportrait":
        def convert(staged: Path) -> Path:
            return convert_liveportrait(group_dir(cache, group), staged, config=renderer_config)
    else:
        convert = _joyvasa_converter(cache, members, use_hubert, say)
    written = _convert_into(engine_dir(cache), target.name, convert)
    say(f"{group}: wrote {written} and {written.with_suffix('.json').name} in {time.perf_counter() - t0:.1f} s")
    return GroupResult(group, "converted", [written])


def _check_group(cache: Path, group: str, members: Sequence[HubFile], *, force: bool, say: Say) -> GroupResult:
    """The groups kept as published (faces, hubert): checked once, remembered by a stamp file in their folder."""
    folder = group_dir(cache, group)
    sources = [f.local_path(cache) for f in members]
    stamp = folder / STAMP
    if not force and fresh(stamp, sources):
        return GroupResult(group, "up to date", [folder])
    if stamp.exists():
        stamp.unlink()
    _check_group_files(members, cache)
    if group == "faces":
        for path in sources:
            check_onnx(path)
    else:
        load_hf_audio_encoder(folder)
    stamp.write_text("checked\n")
    say(f"{group}: checked {folder}")
    return GroupResult(group, "checked", [folder])


def check_and_convert(cache_dir: str | os.PathLike | None = None, groups: Iterable[str] | None = None, *,
                      renderer_config=None, manifest: Sequence[HubFile] | None = None, force: bool = False,
                      strict: bool = True, out: Say | None = None) -> list[GroupResult]:
    """Check every complete group in the cache and convert it once into engine weights (atomically: a failed
    conversion leaves nothing in `<cache>/engine/`). A group whose outputs are newer than its files is skipped
    unless `force`. `renderer_config`: the renderer config the LivePortrait files are checked against (default:
    the public human model's). Never touches the network. With `strict`, raises the first problem as a one-line
    CheckpointError / InputError after every group was tried; otherwise the results carry it."""
    say = out or (lambda line: None)
    cache = resolve_cache_dir(cache_dir)
    check_cache_dir(cache)
    wanted = list(groups or GROUPS)
    files = select(wanted, manifest)
    results: dict[str, GroupResult] = {}
    errors: list[Exception] = []
    if engine_dir(cache).is_dir():
        _clean_stale_staging(engine_dir(cache))
    # hubert before joyvasa: a JoyVASA checkpoint without its audio encoder takes chinese-hubert-base's weights
    for group in [g for g in ("liveportrait", "faces", "hubert", "joyvasa") if g in wanted]:
        members = [f for f in files if f.group == group]
        missing = [f for f in members if file_state(f, cache) == "missing"]
        if missing:
            results[group] = GroupResult(group, "incomplete", missing=missing)
            continue
        try:
            if group in ENGINE_FILES:
                use_hubert = group == "joyvasa" and _hubert_checked(cache, manifest, results.get("hubert"))
                results[group] = _convert_group(cache, group, members, force=force, say=say,
                                                renderer_config=renderer_config, use_hubert=use_hubert)
            else:
                results[group] = _check_group(cache, group, members, force=force, say=say)
        except (CheckpointError, InputError) as exc:
            results[group] = GroupResult(group, "failed", error=str(exc))
            errors.append(exc)
    ordered = [results[g] for g in wanted if g in results]
    if strict and errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise type(first)(f"{first}{more}")
    return ordered
