"""`vasa-engine serve --ray`: the same HTTP and WebSocket service, scaled out on Ray Serve.

Two deployments: `Ingress` runs the service's Starlette app (HTTP, the session WebSocket, the avatar store) and
`Engine` holds one engine per replica (one GPU each, or CPUs) with up to `max_sessions` live sessions. A session
is one long streaming call of an engine replica, so it stays where it was accepted; Serve's router places new
sessions on replicas with room, and autoscaling follows live sessions. Avatars live in the shared store folder
(every replica reads it; on a cluster, a volume mounted at the same path on every node).

Where the code is: options.py (RayOptions: replicas, sessions per replica, devices; no Ray import), wire.py
(what a replica streams back), remote.py (the ingress side: RayHost, RaySession), deployments.py (the Serve
deployments, `build_app`, and `app_builder` for Serve config files and KubeRay), launch.py (the command's
deploy-and-wait). Ray is the `ray` extra; nothing outside this package imports it.
"""

from .options import APP_NAME, RayOptions

__all__ = ["APP_NAME", "RayOptions"]
