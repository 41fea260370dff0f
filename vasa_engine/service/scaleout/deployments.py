"""The two Ray Serve deployments and the application built from them.

`Engine`: one engine per replica (its own GPU, or CPUs), up to `max_sessions` live sessions, each one streaming
call of `session` (a ServiceSession on this replica, its frames yielded as `WireFrame`s); the session's messages
arrive through the replica's inbox, a `ray.util.queue.Queue` actor the replica owns (so it ends with the replica).
Portraits are prepared here (`prepare`) into the shared avatar store.

`Ingress`: the service's Starlette app (app.py's create_app) around a `RayHost`: HTTP, the session WebSocket, the
avatar store. Serve's proxy sends it every request; it holds no engine.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from ray import serve

from ...errors import InputError
from ..app import create_app
from ..avatar_store import AvatarNotFound, AvatarStore
from ..config import ServiceConfig
from ..protocol import ProtocolError
from ..session import Done, Failed, OutFrame, ServiceSession
from .options import INGRESS_HEADROOM, RayOptions, wants_gpus
from .remote import RayHost
from .wire import Accepted, WireEnd, WireFrame

log = logging.getLogger("vasa_engine.service")


@serve.deployment(name="Engine")
class EngineReplica:
    async def __init__(self, engine_kwargs: dict[str, Any], avatars: str, max_buffered_s: float):
        from ray.util.queue import Queue

        from ...engine import Engine

        loop = asyncio.get_running_loop()
        self.engine = await loop.run_in_executor(None, lambda: Engine(**engine_kwargs))
        self.store = AvatarStore(avatars, self.engine)
        context = serve.get_replica_context()
        self.name = f"{context.deployment}#{context.replica_tag}"
        self.max_buffered_s = max_buffered_s
        self.inbox = Queue(actor_options={"num_cpus": 0})
        self.sessions: dict[str, ServiceSession] = {}
        # started here, not in a request: Ray cancels the calls a cancelled request made, and sessions end that way
        self._reader = loop.create_task(self._read_inbox())

    def describe(self) -> dict[str, Any]:
        return {"replica": self.name, "device_name": self.engine.device_name, "output_size": self.engine.output_size}

    async def prepare(self, data: bytes, content_type: str | None) -> tuple[dict, bool]:
        return await asyncio.get_running_loop().run_in_executor(None, self.store.add, data, content_type)

    async def session(self, start):
        """One session, start to end: Accepted, the frames, then WireEnd. Cancelled when the client goes."""
        loop = asyncio.get_running_loop()
        if start.avatar not in self.store:  # deleted through the ingress: this replica may still have it cached
            raise AvatarNotFound(f"unknown avatar {start.avatar!r}")
        avatar = await loop.run_in_executor(None, self.store.get, start.avatar)
        session = await loop.run_in_executor(None, lambda: ServiceSession(
            self.engine, avatar, start, loop=loop, max_buffered_s=self.max_buffered_s))
        session.replica = self.name
        self.sessions[session.id] = session
        try:
            yield Accepted(session.id, self.name, self.inbox, session.stream.settings, session.latency_budget_s,
                           self.engine.device_name, self.engine.output_size)
            while True:
                event = await session.next_event(timeout=1.0)
                if isinstance(event, OutFrame):
                    yield WireFrame.of(event, session._gen, session.stats.audio_samples - session._buffered)
                elif isinstance(event, Done):
                    yield WireEnd()
                    return
                elif isinstance(event, Failed):
                    yield WireEnd(event.message)
                    return
        finally:
            self.sessions.pop(session.id, None)
            await session.aclose()

    async def _read_inbox(self) -> None:
        """Hand each message of the inbox to its session, in order (a session already gone drops it)."""
        while True:
            session_id, kind, value = await self.inbox.get_async()
            session = self.sessions.get(session_id)
            if session is None:
                continue
            try:
                if kind in ("audio", "controls"):
                    getattr(session, kind)(value)
                elif kind in ("interrupt", "end"):
                    getattr(session, kind)()
            except ProtocolError as exc:  # the ingress checked it already: only a lost race gets here
                log.warning("session %s: %s", session_id, exc)

    def check_health(self) -> None:
        """Serve restarts a replica whose inbox reader stopped (its sessions could no longer hear the client)."""
        if self._reader.done():
            why = "cancelled" if self._reader.cancelled() else repr(self._reader.exception())
            raise RuntimeError(f"the inbox reader of {self.name} stopped: {why}")


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, engines, config: ServiceConfig, admission_wait_s: float, sessions_per_replica: int):
        self.engines, self.config = engines, config
        self.admission_wait_s, self.sessions_per_replica = admission_wait_s, sessions_per_replica

    async def __serve_build_asgi_app__(self):
        info = await self.engines.options(method_name="describe").remote()
        host = RayHost(self.engines, self.config, admission_wait_s=self.admission_wait_s,
                       device_name=info["device_name"], output_size=info["output_size"],
                       sessions_per_replica=self.sessions_per_replica)
        context = serve.get_replica_context()
        config = replace(self.config, replica=self.config.replica or f"{context.deployment}#{context.replica_tag}")
        return create_app(None, config, host=host)


def build_app(options: RayOptions, config: ServiceConfig, *, use_gpus: bool):
    """The application: the ingress bound to the engine deployment, laid out as `options` say."""
    options.check()
    config = replace(config, avatars=Path(config.avatars).absolute())  # the same path on every replica
    engines = EngineReplica.options(**options.engine_deployment(use_gpus)).bind(
        options.engine_kwargs(use_gpus), str(config.avatars), config.max_buffered_s)
    ingress = Ingress.options(max_ongoing_requests=options.capacity + INGRESS_HEADROOM,
                              ray_actor_options={"num_cpus": 0})
    return ingress.bind(engines, options.ingress_config(config), options.admission_wait_s, options.max_sessions)


def app_builder(args: dict[str, Any]):
    """For Serve config files and KubeRay (`import_path: vasa_engine.service.scaleout.deployments:app_builder`):
    `args` holds RayOptions fields (replicas, min_replicas, max_replicas, max_sessions, replicas_per_gpu,
    cpus_per_replica, use_gpus, engine: the Engine keyword arguments) and ServiceConfig fields (host, token,
    avatars, max_upload_bytes, ...). The token defaults to $VASA_ENGINE_TOKEN."""
    import os

    option_names = set(RayOptions.__dataclass_fields__) - {"address"}
    config_names = set(ServiceConfig.__dataclass_fields__) - {"max_sessions", "port"}
    unknown = sorted(set(args) - option_names - config_names)
    if unknown:
        raise InputError(f"unknown application argument(s): {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(option_names | config_names))})")
    options = RayOptions(**{k: v for k, v in args.items() if k in option_names}).check()
    config = ServiceConfig(**{"token": os.environ.get("VASA_ENGINE_TOKEN"),
                              **{k: v for k, v in args.items() if k in config_names}}).check()
    if options.use_gpus is None:
        import ray

        return build_app(options, config, use_gpus=wants_gpus(options, ray.cluster_resources().get("GPU", 0)))
    return build_app(options, config, use_gpus=options.use_gpus)
