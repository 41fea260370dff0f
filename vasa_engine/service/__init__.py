"""`vasa-engine serve`: the engine as a network service.

HTTP: `/healthz`, `/metrics` (Prometheus), `/v1/avatars` (portraits prepared once and kept on disk). WebSocket
`/v1/sessions`: 16 kHz 16-bit mono PCM in, frames out over the WebSocket or WebRTC, with control messages (start,
controls, interrupt, end). A page at `/` to try it from a browser. The README's "Service" section is the protocol's
reference.

Where the code is: config.py (ServiceConfig), protocol.py (messages, close codes), avatar_store.py (the store),
session.py (one client's stream: feed and output threads), app.py (the Starlette app and the WebSocket handler),
webrtc.py (media out over WebRTC, aiortc), page.py (the page), metrics.py (Prometheus), server.py (uvicorn),
load.py (the load test), scaleout/ (`serve --ray`: Ray Serve deployments).
"""

from .config import ServiceConfig
from .server import BackgroundServer, serve


def create_app(engine, config: ServiceConfig | None = None):
    from .app import create_app as build

    return build(engine, config)


__all__ = ["BackgroundServer", "ServiceConfig", "create_app", "serve"]
