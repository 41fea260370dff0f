"""The ingress side: `RayHost` (what app.py's routes call, in place of LocalHost) and `RaySession` (a session whose
stream runs on an engine replica).

Placement is Ray Serve's: a session is one long streaming call of the engine deployment's `session` method, so the
deployment's `max_ongoing_requests` is the bound on live sessions per replica, Serve's router sends a new session
to a replica with room (it probes their ongoing requests), and autoscaling on ongoing requests is autoscaling on
live sessions. `DeploymentHandle.choose_replica` reserves the slot first: when no replica has room within
`admission_wait_s` the session is refused (ServiceFull, close code 1013) instead of waiting in Serve's queue.

The client's messages (audio, controls, interrupt, end) go to the replica that holds the session through that
replica's inbox (a `ray.util.queue.Queue` actor it owns, handed over in `Accepted`), in order; frames come back on the
streaming call. A replica that dies ends the call with an actor error: its sessions get `Failed` (close code 1011,
the reason naming the replica) and the client may reconnect, which lands on a live replica.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from types import SimpleNamespace

from ray import exceptions as ray_errors

from ...errors import one_line
from ..avatar_store import AvatarStore
from ..protocol import SAMPLE_RATE, ServiceFull
from ..session import DEFAULT_MAX_BUFFERED_S, Done, Failed, ServiceSession, SessionStats
from .wire import Accepted, WireEnd, WireFrame

log = logging.getLogger("vasa_engine.service")

PREPARE_WAIT_S = 30.0  # an upload waits this long for a replica with a free slot (then 503)


def unwrapped(exc: BaseException) -> BaseException:
    """The exception the replica raised (a RayTaskError carries it as `cause`), so the client gets its one line."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(exc, ray_errors.RayTaskError) and isinstance(cause, BaseException) else exc


def replica_lost(replica: str, exc: BaseException) -> str:
    return (f"replica {replica} is gone ({type(exc).__name__}): the session ended; reconnect to start a new one "
            "on another replica")


class RayHost:
    """LocalHost's methods over the engine deployment (a DeploymentHandle). The avatar store is the shared folder:
    listed, read and deleted here; portraits are prepared by a replica (which writes them there)."""

    def __init__(self, engines, config, *, admission_wait_s: float, device_name: str, output_size: int,
                 sessions_per_replica: int):
        self.engines = engines
        self.config = config
        self.store = AvatarStore(config.avatars, None)
        self.admission_wait_s = admission_wait_s
        self.device_name = device_name
        self.output_size = output_size
        self.sessions_per_replica = sessions_per_replica

    async def add_avatar(self, data: bytes, content_type: str | None) -> tuple[dict, bool]:
        handle = self.engines.options(method_name="prepare")
        async with self._slot(handle, PREPARE_WAIT_S, "no replica is free to prepare the portrait") as selection:
            try:
                return await handle.dispatch(selection, data, content_type)
            except ray_errors.RayTaskError as exc:
                raise unwrapped(exc) from None

    async def open_session(self, start, replica: str) -> "RaySession":
        handle = self.engines.options(method_name="session", stream=True)
        full = (f"every replica is full ({self.sessions_per_replica} live sessions each): try again later")
        async with self._slot(handle, self.admission_wait_s, full) as selection:
            responses = handle.dispatch(selection, start)
            try:
                accepted = await responses.__anext__()
            except ray_errors.RayTaskError as exc:
                raise unwrapped(exc) from None
            except ray_errors.RayError as exc:  # the chosen replica died on the way: another try may land elsewhere
                raise ServiceFull(replica_lost(getattr(selection, "replica_id", "?"), exc)) from None
        if not isinstance(accepted, Accepted):
            responses.cancel()
            raise ServiceFull(f"the replica answered {type(accepted).__name__} instead of accepting the session")
        self.device_name, self.output_size = accepted.device_name, accepted.output_size
        return RaySession(start, accepted, responses, max_buffered_s=self.config.max_buffered_s)

    def _slot(self, handle, wait_s: float, refusal: str):
        return Reservation(handle, wait_s, refusal)


class Reservation:
    """`async with`: a slot on a replica with room (Serve's router), or ServiceFull after `wait_s` seconds."""

    def __init__(self, handle, wait_s: float, refusal: str):
        self.choosing = handle.choose_replica()
        self.wait_s, self.refusal = wait_s, refusal

    async def __aenter__(self):
        try:
            return await asyncio.wait_for(self.choosing.__aenter__(), self.wait_s)
        except asyncio.TimeoutError:
            raise ServiceFull(self.refusal) from None

    async def __aexit__(self, *exc_info):
        return await self.choosing.__aexit__(*exc_info)


class _RemoteInbox:
    """ServiceSession's feed queue, forwarded to the replica's inbox, each item tagged with the session id. The
    queue actor is asynchronous, so Ray does not keep its calls in order: one call at a time keeps them in order
    (what piles up meanwhile goes in the next call). Controls go as their fields, which the replica checks again."""

    def __init__(self, session: "RaySession", queue):
        self.session, self.actor = session, queue.actor
        self.pending: list = []
        self.ready = asyncio.Event()
        self.sender = asyncio.create_task(self._send(), name=f"vasa-ray-inbox-{session.id}")

    def put(self, item) -> None:
        if item is None:
            return
        kind, _, value = item
        if kind == "controls":
            self.session.stream.controls = value
            value = {name: getattr(value, name) for name in value.__dataclass_fields__ if name != "extra"}
        self.pending.append((self.session.id, kind, value))
        self.ready.set()

    async def _send(self) -> None:
        try:
            while True:
                await self.ready.wait()
                self.ready.clear()
                batch, self.pending = self.pending, []
                await self.actor.put_nowait_batch.remote(batch)
        except ray_errors.RayError as exc:  # the replica (which owns the inbox) is gone: the frames side says so
            log.warning("session %s: its messages cannot reach replica %s: %s", self.session.id,
                        self.session.replica, one_line(exc))

    def close(self) -> None:
        self.sender.cancel()


class RaySession(ServiceSession):
    """A ServiceSession whose stream runs on a replica. The client-side half is ServiceSession's own (the checks
    on audio and controls, interrupt, end, the event queue with its slow-client bound, `sent`, `report`); its
    feed goes to the replica's inbox and its events come from the streaming call. ServiceSession.__init__ is not
    called: there is no engine and no stream here."""

    def __init__(self, start, accepted: Accepted, responses, *, max_buffered_s: float = DEFAULT_MAX_BUFFERED_S):
        self.start = start
        self.engine = None
        self.id = accepted.session
        self.replica = accepted.replica
        self.stream = SimpleNamespace(settings=accepted.settings, controls=start.controls)
        self.latency_budget_s = accepted.latency_budget_s
        self.loop = asyncio.get_running_loop()
        self.max_buffered = int(max_buffered_s * SAMPLE_RATE)
        self.stats = SessionStats()
        self._events: asyncio.Queue = asyncio.Queue()
        self._frames_queued = 0
        self._buffered = 0  # samples sent and not yet taken by the replica's stream (as it last reported)
        self._gen = 0
        self._lock = threading.Lock()
        self._ending = False
        self._closed = False
        self._inbox = _RemoteInbox(self, accepted.inbox)
        self._responses = responses
        self._receiver = asyncio.create_task(self._receive(), name=f"vasa-ray-session-{self.id}")

    async def _receive(self) -> None:
        try:
            async for item in self._responses:
                if isinstance(item, WireFrame):
                    with self._lock:
                        self._buffered = max(0, self.stats.audio_samples - item.taken)
                    if item.kind == "speech" and item.gen < self._gen:
                        continue  # an interrupted utterance's frame, sent before the replica saw the interrupt
                    self._enqueue(item.out_frame())
                elif isinstance(item, WireEnd):
                    self._enqueue(Done() if item.message is None else Failed(item.message))
                    return
            self._enqueue(Failed(f"replica {self.replica} ended the session without finishing it"))
        except asyncio.CancelledError:
            raise
        except ray_errors.RayTaskError as exc:
            self._enqueue(Failed(f"the session failed on replica {self.replica}: {one_line(unwrapped(exc))}"))
        except Exception as exc:  # noqa: BLE001 - the replica (or its node) is gone: the client is told why
            log.warning("session %s: %s", self.id, one_line(exc))
            self._enqueue(Failed(replica_lost(self.replica, exc)))

    async def aclose(self) -> None:
        self.close()
        try:
            await self._receiver
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing: how it ended no longer matters
            pass

    def close(self) -> None:
        """Stop receiving and cancel the streaming call (the replica closes its session). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._inbox.close()
        self._receiver.cancel()
        self._responses.cancel()
