"""The public checkpoints: where they are published, their licences, the local cache, and the one-time conversion.

`vasa-engine download` fetches the files of `MANIFEST` with huggingface_hub into a cache folder, checks them (size
and SHA-256 where published, then every key and shape through the converters of `vasa_engine.convert`) and
converts them once into engine weights under `<cache>/engine/`. Nothing in this module touches the network except
`fetch_file`, which only `download(..., offline=False)` calls; huggingface_hub is imported there and nowhere else.

Cache layout (`resolve_cache_dir`: `--cache-dir` > $VASA_ENGINE_CACHE > $XDG_CACHE_HOME/vasa-engine >
~/.cache/vasa-engine):

    <cache>/downloads/<group>/<path in the repository>   the files as published (public layout)
    <cache>/engine/liveportrait.safetensors (+ .json)   renderer, from the `liveportrait` group
    <cache>/engine/joyvasa.safetensors (+ .json)        audio encoder, motion generator, motion template
    <cache>/downloads/faces/                            face detector and landmark models (ONNX, not converted)
    <cache>/downloads/hubert/                           chinese-hubert-base in Hugging Face layout

The HuBERT group: JoyVASA's checkpoint carries its own fine-tuned HuBERT (`audio_encoder.*`), which is what the
engine uses. chinese-hubert-base (the encoder JoyVASA was initialised from) is fetched too, checked, and kept in
Hugging Face layout (`vasa_engine.audio_features.load_hf_audio_encoder` loads it) for building other models; the
conversion takes its weights only for a JoyVASA checkpoint that lacks `audio_encoder.*` tensors, as the reference
does (it loads chinese-hubert-base first and the checkpoint over it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .errors import CheckpointError, InputError

CACHE_ENV = "VASA_ENGINE_CACHE"
OFFLINE_ENV = "VASA_ENGINE_OFFLINE"
GROUPS = ("liveportrait", "joyvasa", "faces", "hubert")
DEFAULT_GROUPS = GROUPS  # what `download` fetches without --only
GROUP_HELP = {
    "liveportrait": "LivePortrait's human renderer (base models and stitching/retargeting), converted to "
                    "engine/liveportrait.safetensors",
    "joyvasa": "JoyVASA's motion generator (with its fine-tuned HuBERT) and motion template, converted to "
               "engine/joyvasa.safetensors",
    "faces": "the face detector (insightface buffalo_l) and landmark models of LivePortrait's release (ONNX)",
    "hubert": "chinese-hubert-base, the audio encoder JoyVASA was initialised from (Hugging Face layout)",
}
ENGINE_FILES = {"liveportrait": "liveportrait.safetensors", "joyvasa": "joyvasa.safetensors"}
STAMP = ".checked"  # written in a group's download folder once its files passed the checks (groups not converted)

MIT_LIVEPORTRAIT = "MIT (KwaiVGI/LivePortrait)"
INSIGHTFACE_MODELS = "insightface pretrained models: non-commercial research use only"


@dataclass(frozen=True)
class HubFile:
    """One published file. size and sha256: as published (None where not known: then only the checks of its
    contents apply). commercial: True allowed, False forbidden, None unknown (both ask before fetching)."""

    group: str
    repo: str
    path: str
    licence: str
    commercial: bool | None
    size: int | None = None
    sha256: str | None = None
    approx_size: str = "?"
    revision: str | None = None  # None: the repository's default branch

    @property
    def name(self) -> str:
        return f"{self.repo}/{self.path}"

    @property
    def needs_confirmation(self) -> bool:
        return self.commercial is not True

    def local_path(self, cache_dir: str | os.PathLike) -> Path:
        return group_dir(cache_dir, self.group) / self.path

    def prompt(self) -> str:
        if self.commercial is False:
            return f"{self.name} is licensed for non-commercial use only ({self.licence}). Download it? [y/N] "
        return f"{self.name} has no licence this tool knows ({self.licence}). Download it? [y/N] "


_LP = "KwaiVGI/LivePortrait"
_JV = "jdh-algo/JoyVASA"
_HB = "TencentGameMate/chinese-hubert-base"

# Sizes and SHA-256 digests as shown on the Hugging Face file pages (Git LFS pointers); None where not known.
MANIFEST: tuple[HubFile, ...] = (
    HubFile("liveportrait", _LP, "liveportrait/base_models/appearance_feature_extractor.pth", MIT_LIVEPORTRAIT, True,
            3387959, "5279bb8654293dbdf327030b397f107237dd9212fb11dd75b83dfb635211ceb5", "3.4 MB"),
    HubFile("liveportrait", _LP, "liveportrait/base_models/motion_extractor.pth", MIT_LIVEPORTRAIT, True,
            112545506, "251e6a94ad667a1d0c69526d292677165110ef7f0cf0f6d199f0e414e8aa0ca5", "113 MB"),
    HubFile("liveportrait", _LP, "liveportrait/base_models/warping_module.pth", MIT_LIVEPORTRAIT, True,
            182180086, "2f61a6f265fe344f14132364859a78bdbbc2068577170693da57fb96d636e282", "182 MB"),
    HubFile("liveportrait", _LP, "liveportrait/base_models/spade_generator.pth", MIT_LIVEPORTRAIT, True,
            221813590, "4780afc7909a9f84e24c01d73b31a555ef651521a1fe3b2429bd04534d992aee", "222 MB"),
    HubFile("liveportrait", _LP, "liveportrait/retargeting_models/stitching_retargeting_module.pth", MIT_LIVEPORTRAIT,
            True, None, "3652d5a3f95099141a56986aaddec92fadf0a73c87a20fac9a2c07c32b28b611", "2.4 MB"),
    HubFile("faces", _LP, "liveportrait/landmark.onnx", MIT_LIVEPORTRAIT, True,
            None, "31d22a5041326c31f19b78886939a634a5aedcaa5ab8b9b951a1167595d147db", "115 MB"),
    HubFile("faces", _LP, "insightface/models/buffalo_l/det_10g.onnx", INSIGHTFACE_MODELS, False,
            16923827, "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91", "17 MB"),
    HubFile("faces", _LP, "insightface/models/buffalo_l/2d106det.onnx", INSIGHTFACE_MODELS, False,
            5030888, "f001b856447c413801ef5c42091ed0cd516fcd21f2d6b79635b1e733a7109dbf", "5 MB"),
    HubFile("joyvasa", _JV, "motion_generator/motion_generator_hubert_chinese.pt", "MIT (jdh-algo/JoyVASA)", True,
            None, None, "414 MB"),
    HubFile("joyvasa", _JV, "motion_template/motion_template.pkl", "MIT (jdh-algo/JoyVASA)", True,
            None, None, "4 kB"),
    HubFile("hubert", _HB, "config.json", "MIT (TencentGameMate/chinese-hubert-base)", True, None, None, "2 kB"),
    HubFile("hubert", _HB, "pytorch_model.bin", "MIT (TencentGameMate/chinese-hubert-base)", True,
            None, None, "380 MB"),
)


# ------------------------------------------------------------------------------------------ settings and paths


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


def _check_cache_dir(cache_dir: Path) -> None:
    if cache_dir.exists() and not cache_dir.is_dir():
        raise InputError(f"cache folder is not a folder: {cache_dir}")


def select(groups: Iterable[str] | None = None, manifest: Sequence[HubFile] | None = None) -> list[HubFile]:
    """The manifest's files of `groups` (all groups when None or empty)."""
    manifest = MANIFEST if manifest is None else manifest
    groups = list(groups or GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise InputError(f"unknown group {unknown[0]!r} (choose from {', '.join(GROUPS)})")
    return [f for f in manifest if f.group in groups]


def file_state(spec: HubFile, cache_dir: str | os.PathLike) -> str:
    """'present', 'missing', or 'wrong size' (differs from the published size)."""
    path = spec.local_path(cache_dir)
    if not path.is_file():
        return "missing"
    if spec.size is not None and path.stat().st_size != spec.size:
        return "wrong size"
    return "present"


def _valid_engine_pair(path: Path) -> bool:
    from .weights import FORMAT, config_path

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
    if paths and all(p.is_file() for p in paths) and _fresh(folder / STAMP, paths):
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


# ------------------------------------------------------------------------------------------ file checks


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_REDOWNLOAD = "delete it and run `vasa-engine download` again"


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


_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}  # ModelProto: field -> wire type


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


# ------------------------------------------------------------------------------------------ check and convert


@dataclass
class GroupResult:
    group: str
    status: str  # converted | up to date | checked | incomplete | failed
    outputs: list[Path] = field(default_factory=list)
    missing: list[HubFile] = field(default_factory=list)
    error: str | None = None


def _fresh(target: Path, sources: Iterable[Path], also: Iterable[Path] = ()) -> bool:
    """target (and every path in `also`) exists and is not older than any source."""
    if not target.is_file() or not all(p.is_file() for p in also):
        return False
    stamp = target.stat().st_mtime_ns
    return all(p.stat().st_mtime_ns <= stamp for p in sources)


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
    from .weights import config_path

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


def _joyvasa_checkpoint_with_hubert(checkpoint: Path, hubert: Path, staging: Path) -> Path | None:
    """When `checkpoint` has no audio_encoder.* tensors: a copy of it in `staging` with chinese-hubert-base's
    weights as `audio_encoder.*` under the checkpoint's own tensors (the reference's loading order). None when the
    checkpoint has them (it is then used as it is)."""
    import torch

    from .audio_features import hf_body_state, read_hf_folder
    from .convert import read_torch_checkpoint

    ckpt = read_torch_checkpoint(checkpoint, allow_namespace=True)
    model = ckpt.get("model")
    if not isinstance(model, dict) or any(str(k).startswith("audio_encoder.") for k in model):
        return None
    _, state, _ = read_hf_folder(hubert)
    state, _ = hf_body_state(state)
    ckpt["model"] = {**{f"audio_encoder.{k}": v for k, v in state.items()}, **model}
    out = staging / checkpoint.name
    torch.save(ckpt, out)
    return out


def _hubert_checked(cache: Path, manifest: Sequence[HubFile], result: GroupResult | None) -> bool:
    """chinese-hubert-base is in the cache and passed its check (in this run, or in an earlier one)."""
    if result is not None:
        return result.status in ("checked", "up to date")
    files = select(["hubert"], manifest)
    return all(file_state(f, cache) == "present" for f in files) and _fresh(
        group_dir(cache, "hubert") / STAMP, [f.local_path(cache) for f in files])


def _check_group_files(files: Sequence[HubFile], cache: Path) -> None:
    for spec in files:
        check_published(spec, spec.local_path(cache))


def check_and_convert(cache_dir: str | os.PathLike | None = None, groups: Iterable[str] | None = None, *,
                      renderer_config=None, manifest: Sequence[HubFile] | None = None, force: bool = False,
                      strict: bool = True, out: Callable[[str], None] | None = None) -> list[GroupResult]:
    """Check every complete group in the cache and convert it once into engine weights (atomically: a failed
    conversion leaves nothing in `<cache>/engine/`). A group whose outputs are newer than its files is skipped
    unless `force`. `renderer_config`: the renderer config the LivePortrait files are checked against (default:
    the public human model's). Never touches the network. With `strict`, raises the first problem as a one-line
    CheckpointError / InputError after every group was tried; otherwise the results carry it."""
    from .convert import convert_joyvasa, convert_liveportrait
    from .weights import config_path

    say = out or (lambda line: None)
    cache = resolve_cache_dir(cache_dir)
    _check_cache_dir(cache)
    wanted = list(groups or GROUPS)
    files = select(wanted, manifest)
    results: dict[str, GroupResult] = {}
    errors: list[Exception] = []
    if engine_dir(cache).is_dir():
        _clean_stale_staging(engine_dir(cache))
    # hubert before joyvasa: a JoyVASA checkpoint without its audio encoder takes chinese-hubert-base's weights
    order = [g for g in ("liveportrait", "faces", "hubert", "joyvasa") if g in wanted]
    for group in order:
        members = [f for f in files if f.group == group]
        missing = [f for f in members if file_state(f, cache) == "missing"]
        if missing:
            results[group] = GroupResult(group, "incomplete", missing=missing)
            continue
        sources = [f.local_path(cache) for f in members]
        try:
            if group in ENGINE_FILES:
                target = engine_dir(cache) / ENGINE_FILES[group]
                if not force and _fresh(target, sources, [config_path(target)]):
                    results[group] = GroupResult(group, "up to date", [target])
                    say(f"{group}: {target} is up to date")
                    continue
                _check_group_files(members, cache)
                say(f"{group}: checking and converting {group_dir(cache, group)} ...")
                t0 = time.perf_counter()
                if group == "liveportrait":
                    written = _convert_into(engine_dir(cache), target.name, lambda staged: convert_liveportrait(
                        group_dir(cache, group), staged, config=renderer_config))
                else:
                    ckpt = next(f.local_path(cache) for f in members if f.path.endswith(".pt"))
                    template = next(f.local_path(cache) for f in members if f.path.endswith(".pkl"))
                    hubert = group_dir(cache, "hubert")
                    use_hubert = _hubert_checked(cache, manifest, results.get("hubert"))

                    def convert(staged: Path) -> Path:
                        source = ckpt
                        if use_hubert:
                            merged = _joyvasa_checkpoint_with_hubert(ckpt, hubert, staged.parent)
                            if merged is not None:
                                say(f"{group}: the checkpoint has no audio encoder; taking chinese-hubert-base's")
                                source = merged
                        return convert_joyvasa(source, template, staged)

                    written = _convert_into(engine_dir(cache), target.name, convert)
                results[group] = GroupResult(group, "converted", [written])
                say(f"{group}: wrote {written} and {written.with_suffix('.json').name} "
                    f"in {time.perf_counter() - t0:.1f} s")
            else:
                stamp = group_dir(cache, group) / STAMP
                if not force and _fresh(stamp, sources):
                    results[group] = GroupResult(group, "up to date", [group_dir(cache, group)])
                    continue
                if stamp.exists():
                    stamp.unlink()
                _check_group_files(members, cache)
                if group == "faces":
                    for path in sources:
                        check_onnx(path)
                else:
                    from .audio_features import load_hf_audio_encoder

                    load_hf_audio_encoder(group_dir(cache, group))
                stamp.write_text("checked\n")
                results[group] = GroupResult(group, "checked", [group_dir(cache, group)])
                say(f"{group}: checked {group_dir(cache, group)}")
        except (CheckpointError, InputError) as exc:
            results[group] = GroupResult(group, "failed", error=str(exc))
            errors.append(exc)
    ordered = [results[g] for g in wanted if g in results]
    if strict and errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise type(first)(f"{first}{more}")
    return ordered


# ------------------------------------------------------------------------------------------ download


@dataclass
class DownloadReport:
    cache_dir: Path
    offline: bool
    present: list[HubFile] = field(default_factory=list)
    fetched: list[HubFile] = field(default_factory=list)
    declined: list[HubFile] = field(default_factory=list)
    missing: list[HubFile] = field(default_factory=list)  # offline: not in the cache and not fetched
    failed: list[tuple[HubFile, str]] = field(default_factory=list)
    not_tried: list[HubFile] = field(default_factory=list)  # after a failure for want of a connection
    results: list[GroupResult] = field(default_factory=list)


def fetch_file(spec: HubFile, cache_dir: Path, force: bool = False) -> Path:
    """Download one file with huggingface_hub into `<cache>/downloads/<group>/<path>` (its own progress bar)."""
    try:
        import huggingface_hub
    except ImportError:
        raise InputError("downloading needs huggingface_hub: pip install 'vasa-engine[download]' "
                         "(or pip install huggingface_hub)") from None
    target_dir = group_dir(cache_dir, spec.group)
    target_dir.mkdir(parents=True, exist_ok=True)
    got = huggingface_hub.hf_hub_download(repo_id=spec.repo, filename=spec.path, revision=spec.revision,
                                          local_dir=str(target_dir), force_download=force)
    path = spec.local_path(cache_dir)
    if Path(got).resolve() != path.resolve():
        if not Path(got).is_file():
            raise InputError(f"download of {spec.name} left no file")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(got, path)
    return path


def ask_yes_no(prompt: str) -> bool:
    """Ask on the terminal; no answer (end of input) counts as no."""
    try:
        answer = input(prompt)
    except EOFError:
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "") or type(exc).__name__


_CONNECTION_ERRORS = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectTimeout",
                      "ConnectionError", "Timeout", "ReadTimeout"}


def _no_connection(exc: BaseException) -> bool:
    """The error (or one it was raised from) says the hub cannot be reached at all, not that one file is wrong."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__name__ in _CONNECTION_ERRORS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def download(cache_dir: str | os.PathLike | None = None, groups: Iterable[str] | None = None, *,
             offline: bool = False, yes: bool = False, confirm: Callable[[str], bool] = ask_yes_no,
             renderer_config=None, manifest: Sequence[HubFile] | None = None,
             out: Callable[[str], None] | None = None) -> DownloadReport:
    """Fetch what the cache lacks (every file of `groups`; files present with the published size are not fetched
    again), asking `confirm(prompt)` before each file whose licence forbids commercial use or is unknown (unless
    `yes`), then `check_and_convert`. Offline: nothing is fetched and huggingface_hub is not imported; the report
    lists what is missing. Fetch failures are collected and raised (InputError, one line) after the conversion of
    what is complete; a bad checkpoint raises CheckpointError."""
    say = out or (lambda line: None)
    cache = resolve_cache_dir(cache_dir)
    _check_cache_dir(cache)
    offline = offline_requested(offline)
    report = DownloadReport(cache, offline)
    groups = list(groups or DEFAULT_GROUPS)
    wanted = select(groups, manifest)
    for index, spec in enumerate(wanted):
        state = file_state(spec, cache)
        if state == "present":
            report.present.append(spec)
            continue
        if offline:
            report.missing.append(spec)
            continue
        if spec.needs_confirmation and not yes and not confirm(spec.prompt()):
            report.declined.append(spec)
            say(f"skipped {spec.name} (not confirmed; --yes fetches it without asking)")
            continue
        say(f"fetching {spec.name} ({spec.approx_size}; {spec.licence})")
        try:
            fetch_file(spec, cache, force=state == "wrong size")
        except InputError:
            raise
        except Exception as exc:  # network and hub errors of any kind: reported as one line after the rest
            report.failed.append((spec, _first_line(exc)))
            say(f"failed: {spec.name}: {_first_line(exc)}")
            if _no_connection(exc):
                report.not_tried = [f for f in wanted[index + 1:] if file_state(f, cache) != "present"]
                if report.not_tried:
                    say(f"no connection: not trying the other {len(report.not_tried)} file(s)")
                break
            continue
        report.fetched.append(spec)
    if report.missing:
        say(f"offline: {len(report.missing)} file(s) not in the cache, not fetched")
    report.results = check_and_convert(cache, groups, renderer_config=renderer_config, manifest=manifest, out=out)
    if report.failed:
        spec, message = report.failed[0]
        others = len(report.failed) - 1 + len(report.not_tried)
        more = f" (and {others} more file{'s' if others > 1 else ''} not fetched)" if others else ""
        raise InputError(f"cannot download {spec.name}: {message}{more}; run `vasa-engine download` again to resume, "
                         "or --offline to use what is in the cache")
    return report


# ------------------------------------------------------------------------------------------ listing


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
        from .weights import config_path

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
