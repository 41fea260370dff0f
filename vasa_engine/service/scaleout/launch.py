"""`vasa-engine serve --ray`: deploy the application on a Ray cluster (started here, or joined) and keep it up until
Ctrl-C or SIGTERM, then take it down."""

from __future__ import annotations

import os
import signal
import sys
import threading

from ...errors import InputError
from ..config import ServiceConfig
from .options import APP_NAME, RayOptions, wants_gpus

# how long Serve's controller waits for a starting HTTP proxy before it restarts it (Ray's default: 5 s)
PROXY_READY_ENV, PROXY_READY_S = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30"


def layout_line(options: RayOptions, use_gpus: bool) -> str:
    replicas = (f"{options.min_replicas}..{options.max_replicas} engine replicas (autoscaled on live sessions)"
                if options.autoscaled else f"{options.replicas or 1} engine replica(s)")
    device = (f"{options.replicas_per_gpu} per GPU" if use_gpus else f"{options.cpus_per_replica:g} CPU(s) each")
    return f"ray serve: {replicas}, {device}, at most {options.max_sessions} live sessions each"


def serve_on_ray(options: RayOptions, config: ServiceConfig, *, log_level: str = "info",
                 stop: threading.Event | None = None) -> None:
    """Deploy, report on stderr, serve until interrupted (or until `stop` is set), then remove the application
    (and shut down the cluster when it was started here)."""
    options.check()
    config.check()
    if config.port == 0:
        raise InputError("--port 0 is not supported with --ray: Serve's proxies need a known port")
    try:
        import ray
        from ray import serve
    except ImportError:
        raise InputError("--ray needs Ray Serve: pip install 'vasa-engine[ray]'") from None
    from .deployments import build_app

    verbose = log_level in ("info", "debug")
    if options.address is None:  # a cluster started here: a busy machine may start Serve's proxy slowly
        os.environ.setdefault(PROXY_READY_ENV, PROXY_READY_S)
    ray.init(address=options.address, log_to_driver=verbose, include_dashboard=False if options.address is None
             else None, logging_level=log_level.upper())
    try:
        use_gpus = wants_gpus(options, ray.cluster_resources().get("GPU", 0))
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(build_app(options, config, use_gpus=use_gpus), name=APP_NAME, route_prefix="/")
        host = config.host if ":" not in config.host else f"[{config.host}]"
        print(f"serving on http://{host}:{config.port}/ (avatars: {config.avatars}; {layout_line(options, use_gpus)}"
              f"{'; token required' if config.token else ''}; ray: {ray.get_runtime_context().gcs_address})",
              file=sys.stderr, flush=True)
        _wait(stop or threading.Event())
    finally:
        try:
            if options.address is None:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()


def _wait(stop: threading.Event) -> None:
    """Until Ctrl-C, SIGTERM or `stop` (SIGINT is handled here too: a shell's background job starts with it
    ignored)."""
    if threading.current_thread() is not threading.main_thread():
        stop.wait()
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
