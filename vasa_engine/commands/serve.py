"""`vasa-engine serve`: the engine as a network service (HTTP, the session WebSocket, WebRTC, the page at `/`)."""

from __future__ import annotations

import os
import sys

from ..cli import add_engine_options, add_face_options, engine_from_args, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the engine over HTTP, WebSocket and WebRTC (sessions, avatars, metrics, "
                                     "a page at /)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    p.add_argument("--token", default=os.environ.get("VASA_ENGINE_TOKEN"),
                   help="bearer token every /v1 route and session needs (default: $VASA_ENGINE_TOKEN; none: open, "
                        "loopback only)")
    p.add_argument("--max-sessions", type=positive_int, default=8,
                   help="live sessions at once; one more is refused with close code 1013 (default 8)")
    p.add_argument("--avatars", metavar="DIR", default=None,
                   help="avatar store folder (default: $VASA_ENGINE_AVATARS, else ~/.cache/vasa-engine/avatars)")
    p.add_argument("--max-upload-mb", type=positive_int, default=16, help="largest portrait upload (default 16 MiB)")
    p.add_argument("--max-message-kb", type=positive_int, default=1024,
                   help="largest WebSocket message (default 1024 KiB: 32 s of 16 kHz audio)")
    p.add_argument("--replica", default=None, help="the name `ready` messages carry (default host:port)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    add_face_options(p)
    add_engine_options(p)
    p.set_defaults(func=cmd_serve)


def config_from_args(args):
    from ..service import ServiceConfig
    from ..service.config import DEFAULT_AVATARS

    return ServiceConfig(host=args.host, port=args.port, token=args.token or None, max_sessions=args.max_sessions,
                         avatars=args.avatars or DEFAULT_AVATARS, max_upload_bytes=args.max_upload_mb << 20,
                         max_message_bytes=args.max_message_kb << 10, replica=args.replica).check()


def cmd_serve(args) -> int:
    from ..cli import device_line
    from ..service import serve

    config = config_from_args(args)  # refused before the weights load: a bad option costs nothing
    engine = engine_from_args(args)
    print(device_line(engine), file=sys.stderr)
    where = f"http://{config.host if ':' not in config.host else f'[{config.host}]'}:{config.port}/"
    print(f"serving on {where} (avatars: {config.avatars}; at most {config.max_sessions} live sessions"
          f"{'; token required' if config.token else ''})", file=sys.stderr, flush=True)
    try:
        serve(engine, config, log_level=args.log_level)
    except KeyboardInterrupt:  # Ctrl-C after a graceful shutdown: the normal way to stop a server
        pass
    print("stopped", file=sys.stderr)
    return 0
