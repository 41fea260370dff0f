"""Running the service on uvicorn: in the foreground (`serve`, what the CLI calls) or on a thread of its own
(`BackgroundServer`, for embedding and for tests: a real server on a real port)."""

from __future__ import annotations

import asyncio
import threading

from ..errors import InputError
from .config import ServiceConfig


def uvicorn_config(app, config: ServiceConfig, *, log_level: str = "info"):
    import uvicorn

    # the protocol stacks are named, not "auto": what is installed beside (uvloop, httptools) must not change them
    return uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level, lifespan="off",
                          loop="asyncio", http="h11", ws="websockets-sansio", ws_max_size=config.max_message_bytes, ws_ping_interval=10.0,
                          ws_ping_timeout=10.0, timeout_graceful_shutdown=5, access_log=False)


def serve(engine, config: ServiceConfig, *, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    import uvicorn

    from .app import create_app

    uvicorn.Server(uvicorn_config(create_app(engine, config), config, log_level=log_level)).run()


class BackgroundServer:
    """The service on a thread of its own; `port=0` in the config picks a free port (see `.port`, `.url`)."""

    def __init__(self, engine, config: ServiceConfig | None = None, *, log_level: str = "warning", app=None):
        import uvicorn

        from .app import create_app

        self.config = config or ServiceConfig(port=0)
        self.app = app if app is not None else create_app(engine, self.config)
        self.server = uvicorn.Server(uvicorn_config(self.app, self.config, log_level=log_level))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def state(self):
        return self.app.state.service

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.port}/v1/sessions"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), name="vasa-server",
                                        daemon=True)
        self._thread.start()
        waited = 0.0
        while not self.server.started:
            if not self._thread.is_alive() or waited > timeout:
                raise InputError(f"the service did not start on {self.config.host}:{self.config.port}")
            self._thread.join(0.05)
            waited += 0.05
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        if self.config.replica is None:
            self.state.replica = f"{self.config.host}:{self.port}"
        return self

    def close(self) -> None:
        if self._thread is None:
            return
        self.server.should_exit = True
        self._thread.join(30)
        self._thread = None

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
