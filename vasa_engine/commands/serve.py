"""`vasa-engine serve`: the engine as a network service (HTTP, the session WebSocket, WebRTC, the page at `/`)."""

from __future__ import annotations

import os
import sys

from ..cli import add_engine_options, add_face_options, engine_from_args, positive_int
from ..errors import InputError


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the engine over HTTP, WebSocket and WebRTC (sessions, avatars, metrics, "
                                     "a page at /)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    p.add_argument("--token", default=os.environ.get("VASA_ENGINE_TOKEN"),
                   help="bearer token every /v1 route and session needs (default: $VASA_ENGINE_TOKEN; none: open, "
                        "loopback only)")
    p.add_argument("--max-sessions", type=positive_int, default=8,
                   help="live sessions at once (with --ray: per engine replica); one more is refused with close code "
                        "1013 (default 8)")
    p.add_argument("--avatars", metavar="DIR", default=None,
                   help="avatar store folder (default: $VASA_ENGINE_AVATARS, else ~/.cache/vasa-engine/avatars)")
    p.add_argument("--max-upload-mb", type=positive_int, default=16, help="largest portrait upload (default 16 MiB)")
    p.add_argument("--max-message-kb", type=positive_int, default=1024,
                   help="largest WebSocket message (default 1024 KiB: 32 s of 16 kHz audio)")
    p.add_argument("--replica", default=None, help="the name `ready` messages carry (default host:port; with --ray "
                                                   "the ingress's name in /healthz: `ready` names the engine replica)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    add_ray_options(p)
    add_face_options(p)
    add_engine_options(p)
    p.set_defaults(func=cmd_serve)


def add_ray_options(p) -> None:
    g = p.add_argument_group("scale-out on Ray Serve (the `ray` extra: pip install 'vasa-engine[ray]')")
    g.add_argument("--ray", action="store_true",
                   help="serve through Ray Serve: engine replicas, one device each, with --max-sessions live sessions "
                        "per replica")
    g.add_argument("--address", default=None,
                   help="the Ray cluster to join (auto: the one this machine belongs to; default: start one here)")
    g.add_argument("--replicas", type=positive_int, help="a fixed number of engine replicas (default 1)")
    g.add_argument("--min-replicas", type=int, help="autoscaling on live sessions: fewest engine replicas")
    g.add_argument("--max-replicas", type=positive_int, help="autoscaling on live sessions: most engine replicas")
    g.add_argument("--replicas-per-gpu", type=positive_int, default=1,
                   help="engine replicas sharing one GPU (default 1)")
    g.add_argument("--cpus-per-replica", type=float, default=1.0,
                   help="CPUs reserved by an engine replica without a GPU (default 1)")


RAY_ONLY = ("address", "replicas", "min_replicas", "max_replicas")


def ray_options_from_args(args):
    from ..hub import faces_folder, weights_for_engine
    from ..service.scaleout.options import RayOptions

    options = RayOptions(address=args.address, replicas=args.replicas, min_replicas=args.min_replicas,
                         max_replicas=args.max_replicas, max_sessions=args.max_sessions,
                         replicas_per_gpu=args.replicas_per_gpu, cpus_per_replica=args.cpus_per_replica).check()
    weights, note = weights_for_engine(args.weights, args.cache_dir)
    if note:
        print(note, file=sys.stderr)
    face_models = args.face_models or faces_folder(args.cache_dir)
    # replicas run elsewhere (other working folders, other nodes): paths are made absolute here
    options.engine = {"weights": weights and [os.path.abspath(w) for w in weights], "device": args.device,
                      "dtype": args.dtype, "seed": args.seed, "batch_size": args.batch_size, "backend": args.backend,
                      "face_models": None if face_models is None else os.path.abspath(face_models)}
    return options.check()


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
    if args.ray:
        from ..service.scaleout.launch import serve_on_ray

        serve_on_ray(ray_options_from_args(args), config, log_level=args.log_level)
        print("stopped", file=sys.stderr)
        return 0
    given = [f"--{name.replace('_', '-')}" for name in RAY_ONLY if getattr(args, name) is not None]
    if given:
        raise InputError(f"{', '.join(given)} only apply with --ray")
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
