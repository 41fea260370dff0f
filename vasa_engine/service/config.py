"""What `vasa-engine serve` is configured with."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

DEFAULT_AVATARS = Path(os.environ.get("VASA_ENGINE_AVATARS", Path.home() / ".cache" / "vasa-engine" / "avatars"))


@dataclass
class ServiceConfig:
    """token: every /v1 route and the session WebSocket need it (Bearer header, or ?token= on the WebSocket);
    required to bind anything but a loopback address. max_sessions: live sessions at once (one more is refused
    with close code 1013). avatars: the avatar store's folder. max_upload_bytes: largest portrait body (413
    beyond). max_message_bytes: largest WebSocket message (audio or JSON; the connection closes with 1009 beyond,
    before the message is buffered). start_timeout_s: a connection that sends no start message in this time is
    closed (4408). max_buffered_s: audio a client may send ahead of what its stream has taken. replica: the name
    `ready` reports (this process: host:port)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_sessions: int = 8
    avatars: Path = DEFAULT_AVATARS
    max_upload_bytes: int = 16 << 20
    max_message_bytes: int = 1 << 20
    start_timeout_s: float = 10.0
    max_buffered_s: float = 120.0
    replica: str | None = None

    def check(self) -> "ServiceConfig":
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InputError(f"port must be an integer in [0, 65535], got {self.port!r}")
        if not isinstance(self.max_sessions, int) or self.max_sessions < 1:
            raise InputError(f"max sessions must be a positive integer, got {self.max_sessions!r}")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise InputError("the token must be a non-empty string without white space")
        if self.token is None and not is_loopback(self.host):
            raise InputError(f"binding {self.host} (not a loopback address) needs --token: without it anyone who can "
                             "reach the port could use the service")
        for name in ("max_upload_bytes", "max_message_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1024:
                raise InputError(f"{name.replace('_', ' ')} must be an integer of at least 1024, got {value!r}")
        return self


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False
