"""The published files the `download` command fetches, by group: repository, path, licence, size and digest."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..checkpoints.licences import (
    COMMERCIAL_USE, HUBERT_LICENCE, INSIGHTFACE_LICENCE, JOYVASA_LICENCE, LIVEPORTRAIT_LICENCE)
from ..errors import InputError
from .paths import group_dir

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


def _published(group: str, repo: str, path: str, licence: str, size: int | None, sha256: str | None,
               approx_size: str) -> HubFile:
    return HubFile(group, repo, path, licence, COMMERCIAL_USE.get(licence), size, sha256, approx_size)


_LP = "KwaiVGI/LivePortrait"
_JV = "jdh-algo/JoyVASA"
_HB = "TencentGameMate/chinese-hubert-base"

# Sizes and SHA-256 digests as shown on the Hugging Face file pages (Git LFS pointers); None where not known.
MANIFEST: tuple[HubFile, ...] = (
    _published("liveportrait", _LP, "liveportrait/base_models/appearance_feature_extractor.pth", LIVEPORTRAIT_LICENCE,
               3387959, "5279bb8654293dbdf327030b397f107237dd9212fb11dd75b83dfb635211ceb5", "3.4 MB"),
    _published("liveportrait", _LP, "liveportrait/base_models/motion_extractor.pth", LIVEPORTRAIT_LICENCE,
               112545506, "251e6a94ad667a1d0c69526d292677165110ef7f0cf0f6d199f0e414e8aa0ca5", "113 MB"),
    _published("liveportrait", _LP, "liveportrait/base_models/warping_module.pth", LIVEPORTRAIT_LICENCE,
               182180086, "2f61a6f265fe344f14132364859a78bdbbc2068577170693da57fb96d636e282", "182 MB"),
    _published("liveportrait", _LP, "liveportrait/base_models/spade_generator.pth", LIVEPORTRAIT_LICENCE,
               221813590, "4780afc7909a9f84e24c01d73b31a555ef651521a1fe3b2429bd04534d992aee", "222 MB"),
    _published("liveportrait", _LP, "liveportrait/retargeting_models/stitching_retargeting_module.pth",
               LIVEPORTRAIT_LICENCE, None, "3652d5a3f95099141a56986aaddec92fadf0a73c87a20fac9a2c07c32b28b611",
               "2.4 MB"),
    _published("faces", _LP, "liveportrait/landmark.onnx", LIVEPORTRAIT_LICENCE,
               None, "31d22a5041326c31f19b78886939a634a5aedcaa5ab8b9b951a1167595d147db", "115 MB"),
    _published("faces", _LP, "insightface/models/buffalo_l/det_10g.onnx", INSIGHTFACE_LICENCE,
               16923827, "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91", "17 MB"),
    _published("faces", _LP, "insightface/models/buffalo_l/2d106det.onnx", INSIGHTFACE_LICENCE,
               5030888, "f001b856447c413801ef5c42091ed0cd516fcd21f2d6b79635b1e733a7109dbf", "5 MB"),
    _published("joyvasa", _JV, "motion_generator/motion_generator_hubert_chinese.pt", JOYVASA_LICENCE,
               None, None, "414 MB"),
    _published("joyvasa", _JV, "motion_template/motion_template.pkl", JOYVASA_LICENCE, None, None, "4 kB"),
    _published("hubert", _HB, "config.json", HUBERT_LICENCE, None, None, "2 kB"),
    _published("hubert", _HB, "pytorch_model.bin", HUBERT_LICENCE, None, None, "380 MB"),
)


def select(groups: Iterable[str] | None = None, manifest: Sequence[HubFile] | None = None) -> list[HubFile]:
    """The manifest's files of `groups` (all groups when None or empty)."""
    manifest = MANIFEST if manifest is None else manifest
    groups = list(groups or GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise InputError(f"unknown group {unknown[0]!r} (choose from {', '.join(GROUPS)})")
    return [f for f in manifest if f.group in groups]
