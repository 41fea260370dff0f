"""`vasa-engine load-test`: N clients stream speech in real time to a running service; latency, late frames and lost
audio, measured at the clients (vasa_engine.service.load)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ..cli import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("load-test", help="drive a running `vasa-engine serve` with N real-time clients and report "
                                         "latency, late frames and lost audio")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default http://127.0.0.1:8000)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--avatar", help="id of an avatar the service already has")
    who.add_argument("--image", help="portrait to upload first (PNG, JPEG or WebP)")
    p.add_argument("--clients", type=positive_int, default=4, help="concurrent sessions (default 4)")
    p.add_argument("--seconds", type=float, default=20.0, help="speech each client streams (default 20)")
    p.add_argument("--chunk-ms", type=positive_int, help="the sessions' chunk_ms setting (default: the server's)")
    p.add_argument("--lookahead-ms", type=int, help="the sessions' lookahead_ms setting (default: the server's)")
    p.add_argument("--batched", action="store_true",
                   help="the sessions' batched setting: their work goes through the server's device scheduler")
    p.add_argument("--token", default=os.environ.get("VASA_ENGINE_TOKEN"), help="bearer token (default: "
                                                                               "$VASA_ENGINE_TOKEN)")
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    p.set_defaults(func=cmd_load_test)


def cmd_load_test(args) -> int:
    import asyncio

    from ..client import ServiceClient, ServiceError
    from ..errors import InputError
    from ..service.load import run_load, summary

    if not 0 < args.seconds <= 3600:
        raise InputError(f"--seconds must lie in (0, 3600], got {args.seconds:g}")
    settings = {k: v for k, v in (("chunk_ms", args.chunk_ms), ("lookahead_ms", args.lookahead_ms)) if v is not None}
    if args.batched:
        settings["batched"] = True
    client = ServiceClient(args.url, token=args.token)
    try:
        avatar = args.avatar or client.upload_avatar(args.image)["id"]
    except ServiceError as exc:
        raise InputError(f"the service refused the portrait ({exc})") from None
    except OSError as exc:
        raise InputError(f"cannot reach {args.url} or read the portrait: {exc}") from None
    server = client.health()
    result = asyncio.run(run_load(args.url, avatar, clients=args.clients, seconds=args.seconds, token=args.token,
                                  settings=settings))
    result["server"] = {k: server.get(k) for k in ("device", "replica", "max_sessions")}
    result["settings"] = settings
    result["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["load_average"] = os.getloadavg()
    print(summary(result))
    if args.json:
        out = Path(args.json)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, out)
    if result["errors"]:
        print("errors: " + "; ".join(result["errors"]), file=sys.stderr)
    return 1 if result["errors"] or result["lost_audio_ms"] else 0
