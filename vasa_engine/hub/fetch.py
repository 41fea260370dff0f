"""Fetching the published files with huggingface_hub (imported in `fetch_file` and nowhere else), asking first
where the licence forbids commercial use or is unknown, then checking and converting what is complete."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import InputError
from ..errors import first_line
from .catalogue import DEFAULT_GROUPS, HubFile, select
from .conversion import GroupResult, check_and_convert
from .paths import check_cache_dir, group_dir, offline_requested, resolve_cache_dir
from .state import file_state


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
    check_cache_dir(cache)
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
            report.failed.append((spec, first_line(exc)))
            say(f"failed: {spec.name}: {first_line(exc)}")
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
