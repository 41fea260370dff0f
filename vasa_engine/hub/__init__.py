"""The public checkpoints: where they are published, their licences, the local cache, and the one-time conversion.

`vasa-engine download` fetches the files of `MANIFEST` (`catalogue`) with huggingface_hub into a cache folder
(`fetch`), checks them (size and SHA-256 where published, `checks`; then every key and shape through the converters
of `vasa_engine.checkpoints`) and converts them once into engine weights under `<cache>/engine/` (`conversion`).
Nothing in this package touches the network except `fetch_file`, which only `download(..., offline=False)` calls;
huggingface_hub is imported there and nowhere else.

Cache layout (`resolve_cache_dir`: `--cache-dir` > $VASA_ENGINE_CACHE > $XDG_CACHE_HOME/vasa-engine >
~/.cache/vasa-engine):

    <cache>/downloads/<group>/<path in the repository>   the files as published (public layout)
    <cache>/engine/liveportrait.safetensors (+ .json)   renderer, from the `liveportrait` group
    <cache>/engine/joyvasa.safetensors (+ .json)        audio encoder, motion generator, motion template
    <cache>/downloads/faces/                            face detector and landmark models (ONNX, not converted)
    <cache>/downloads/hubert/                           chinese-hubert-base in Hugging Face layout

The HuBERT group: JoyVASA's checkpoint carries its own fine-tuned HuBERT (`audio_encoder.*`), which is what the
engine uses. chinese-hubert-base (the encoder JoyVASA was initialised from) is fetched too, checked, and kept in
Hugging Face layout (`vasa_engine.checkpoints.load_hf_audio_encoder` loads it) for building other models; the
conversion takes its weights only for a JoyVASA checkpoint that lacks `audio_encoder.*` tensors, as the reference
does (it loads chinese-hubert-base first and the checkpoint over it).
"""

from .catalogue import DEFAULT_GROUPS, ENGINE_FILES, GROUP_HELP, GROUPS, MANIFEST, HubFile, select
from .checks import check_onnx, check_published, sha256_of
from .conversion import GroupResult, check_and_convert
from .fetch import DownloadReport, ask_yes_no, download, fetch_file
from .listing import cache_report_lines, engine_lines, file_lines
from .paths import CACHE_ENV, OFFLINE_ENV, cache_dir_origin, engine_dir, group_dir, offline_requested, resolve_cache_dir
from .state import STAMP, engine_weights, faces_folder, file_state, find_weights, weights_for_engine

__all__ = [
    "CACHE_ENV", "DEFAULT_GROUPS", "ENGINE_FILES", "GROUPS", "GROUP_HELP", "MANIFEST", "OFFLINE_ENV", "STAMP",
    "DownloadReport", "GroupResult", "HubFile", "ask_yes_no", "cache_dir_origin", "cache_report_lines",
    "check_and_convert", "check_onnx", "check_published", "download", "engine_dir", "engine_lines", "engine_weights",
    "faces_folder", "fetch_file", "file_lines", "file_state", "find_weights", "group_dir", "offline_requested",
    "resolve_cache_dir", "select", "sha256_of", "weights_for_engine",
]
