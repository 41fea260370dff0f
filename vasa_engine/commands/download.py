"""`vasa-engine download`: fetch the public checkpoints into the weights cache, check them, convert them once.

The only command that touches the network, and only without --offline ($VASA_ENGINE_OFFLINE=1). Files whose licence
forbids commercial use (insightface's face detector and landmark models) or is unknown are fetched only after a
yes on the prompt, or with --yes. See vasa_engine.hub for the manifest and the cache layout.
"""

from __future__ import annotations

import sys

from .. import hub


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "download", help="fetch the public checkpoints into the weights cache and convert them to engine weights",
        description="Fetch LivePortrait's human model, its face detector and landmark models, JoyVASA's motion "
                    "generator and motion template, and chinese-hubert-base from Hugging Face into the weights "
                    "cache; check them (sizes, digests, every tensor's key and shape) and convert them once into "
                    "engine weights, which generate, demo and render then use when no --weights is given. Files "
                    "already in the cache are not fetched again.")
    p.add_argument("--cache-dir", metavar="DIR",
                   help=f"weights cache (default: ${hub.CACHE_ENV}, else ~/.cache/vasa-engine)")
    p.add_argument("--offline", action="store_true",
                   help=f"never touch the network: check and convert what the cache holds and say what is missing "
                        f"(also ${hub.OFFLINE_ENV}=1)")
    p.add_argument("--yes", "-y", action="store_true",
                   help="fetch files whose licence forbids commercial use (or is unknown) without asking")
    p.add_argument("--only", action="append", choices=hub.GROUPS, metavar="GROUP",
                   help="only this group: " + "; ".join(f"{g}: {h}" for g, h in hub.GROUP_HELP.items())
                        + " (repeat for several; default: all)")
    p.add_argument("--list", action="store_true",
                   help="list each file with its licence and whether it is in the cache, then stop (no network)")
    p.set_defaults(func=cmd_download)


def _names(files) -> str:
    return ", ".join(f.path.rsplit("/", 1)[-1] for f in files)


def cmd_download(args) -> int:
    cache, origin = hub.cache_dir_origin(args.cache_dir)
    if args.list:
        print(f"weights cache: {cache} ({origin})")
        for line in hub.file_lines(cache, args.only):
            print(line)
        engines = hub.engine_lines(cache)
        print("engine weights:" if engines else "engine weights: none yet")
        for line in engines:
            print(line)
        return 0

    offline = hub.offline_requested(args.offline)
    print(f"weights cache: {cache} ({origin}){'; offline: nothing is fetched' if offline else ''}")
    report = hub.download(cache, args.only, offline=offline, yes=args.yes, out=print)
    if report.fetched:
        print(f"fetched {len(report.fetched)} file(s): {_names(report.fetched)}")
    if report.present:
        print(f"already in the cache: {len(report.present)} file(s)")
    if report.declined:
        print(f"skipped (licence not confirmed): {_names(report.declined)}")
    for result in report.results:
        if result.status == "incomplete":
            hint = ("run `vasa-engine download` without --offline to fetch them" if offline
                    else "declined or not fetched")
            print(f"{result.group}: incomplete, missing {_names(result.missing)} ({hint})")

    engines = hub.engine_weights(cache)
    if engines:
        print("engine weights:")
        for line in hub.engine_lines(cache):
            print(line)
        flags = " ".join(f"--weights {p}" for p in engines)
        print(f"`vasa-engine generate`, `demo` and `render` use these when no --weights is given (as {flags})")
    else:
        print("no engine weights yet: generate, demo and render run on seeded random weights", file=sys.stderr)
    faces = hub.faces_folder(cache)
    if faces is not None:
        print(f"face models: {faces}")
    return 0
