"""The session protocol of `/v1/sessions`: the client's messages parsed and checked, the close codes, the limits.

Every check raises `ProtocolError` with the one-line message the client gets back as
`{"type": "error", "message": ...}`; the README's protocol section is the reference a client is written from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from ..controls import Controls
from ..errors import InputError, VasaError, one_line

SAMPLE_RATE = 16000
FPS = 25

# close codes (RFC 6455 and the private 4000-4999 range)
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003  # first message not a JSON text message
CLOSE_POLICY = 1008  # first message malformed, or a start the server cannot honour (unknown avatar, bad controls)
CLOSE_TOO_BIG = 1009  # a message over the size limit
CLOSE_INTERNAL = 1011  # the session failed on the server
CLOSE_TRY_AGAIN = 1013  # no room: --max-sessions sessions are live
CLOSE_UNAUTHORIZED = 4401  # no or wrong token
CLOSE_IDLE_TIMEOUT = 4408  # no start message in time

# settings a client may give in its start message (the others are the server's: rendering, graphs, test hooks)
CLIENT_SETTINGS = ("chunk_ms", "lookahead_ms", "past_ms", "max_pending_ms", "idle_slack_ms", "end_after_ms",
                   "blink_period_s", "crossfade_frames", "batched", "latency_budget_ms")
OUTPUTS = ("websocket", "webrtc")
IMAGE_FORMATS = ("jpeg", "png")
CONTROL_FIELDS = tuple(f.name for f in fields(Controls) if f.name != "extra")


class ProtocolError(VasaError):
    """A client message the server cannot accept; the message is what the client is told."""


class ServiceFull(VasaError):
    """No room for one more session (the client is closed with CLOSE_TRY_AGAIN and this message)."""


@dataclass
class Start:
    avatar: str
    output: str = "websocket"
    controls: Controls = field(default_factory=Controls)
    settings: dict[str, Any] = field(default_factory=dict)
    image_format: str = "jpeg"
    quality: int = 85


def parse_json(text: str) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"malformed message: not JSON ({one_line(exc)})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"malformed message: a JSON object is needed, got {type(message).__name__}")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("malformed message: no \"type\" field")
    return message


def controls_from(fields_given: Any, base: Controls | None, default_steps: int) -> Controls:
    """A controls object (JSON) -> Controls: the fields given over `base` (or the stream defaults)."""
    if not isinstance(fields_given, dict):
        raise ProtocolError(f"controls must be a JSON object, got {type(fields_given).__name__}")
    unknown = sorted(set(fields_given) - set(CONTROL_FIELDS))
    if unknown:
        raise ProtocolError(f"unknown control(s): {', '.join(unknown)} (known: {', '.join(CONTROL_FIELDS)})")
    values = {f: getattr(base, f) for f in CONTROL_FIELDS} if base is not None else {"steps": default_steps}
    values.update(fields_given)
    if isinstance(values.get("gaze"), list):
        values["gaze"] = tuple(values["gaze"])
    try:
        return Controls(**values)
    except InputError as exc:
        raise ProtocolError(str(exc)) from None


def parse_start(message: dict[str, Any], default_steps: int) -> Start:
    if message.get("type") != "start":
        raise ProtocolError(f"the first message must be {{\"type\": \"start\", ...}}, got type {message.get('type')!r}")
    known = {"type", "avatar", "output", "controls", "settings", "image_format", "quality"}
    unknown = sorted(set(message) - known)
    if unknown:
        raise ProtocolError(f"unknown start field(s): {', '.join(unknown)}")
    avatar = message.get("avatar")
    if not isinstance(avatar, str) or not avatar:
        raise ProtocolError("start needs \"avatar\": the id of an avatar (POST /v1/avatars)")
    output = message.get("output", "websocket")
    if output not in OUTPUTS:
        raise ProtocolError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    settings = message.get("settings", {})
    if not isinstance(settings, dict):
        raise ProtocolError(f"settings must be a JSON object, got {type(settings).__name__}")
    refused = sorted(set(settings) - set(CLIENT_SETTINGS))
    if refused:
        raise ProtocolError(f"unknown or server-only setting(s): {', '.join(refused)} "
                            f"(a client may set {', '.join(CLIENT_SETTINGS)})")
    image_format = message.get("image_format", "jpeg")
    if image_format not in IMAGE_FORMATS:
        raise ProtocolError(f"image_format must be jpeg or png, got {image_format!r}")
    quality = message.get("quality", 85)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ProtocolError(f"quality must be an integer in [1, 100], got {quality!r}")
    controls = controls_from(message.get("controls", {}), None, default_steps)
    return Start(avatar, output, controls, dict(settings), image_format, quality)


def audio_samples(data: bytes):
    """A binary message -> float32 samples in [-1, 1) (16-bit little-endian mono PCM at 16 kHz)."""
    import numpy as np

    if len(data) % 2:
        raise ProtocolError(f"audio must be 16-bit PCM: a binary message of an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def error(message: str) -> str:
    return json.dumps({"type": "error", "message": message})
