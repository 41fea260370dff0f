"""The service's Prometheus metrics, all named `vasa_...`, in a registry of their own (one per app, so several
services in one process, as in the tests, do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # no `_created` series beside every counter: scrapers do not need them

# audio in -> frame out, seconds: a real-time stream's frames fall between 0.1 and 1 s
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.live_sessions = Gauge("vasa_live_sessions", "sessions open now", registry=r)
        self.sessions = Counter("vasa_sessions", "sessions accepted", registry=r)
        self.refused_sessions = Counter("vasa_refused_sessions", "sessions refused, by reason", ["reason"],
                                        registry=r)
        self.frames_sent = Counter("vasa_frames_sent", "frames sent to clients, by kind and output",
                                   ["kind", "output"], registry=r)
        self.frames_late = Counter("vasa_frames_late",
                                   "speech frames sent later than the session's latency budget after their audio",
                                   registry=r)
        self.frames_dropped = Counter("vasa_frames_dropped", "frames dropped because the client read too slowly",
                                      registry=r)
        self.audio_received = Counter("vasa_audio_received_seconds", "speech audio received", registry=r)
        self.latency = Histogram("vasa_frame_latency_seconds", "audio in -> frame out, per speech frame",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("vasa_errors", "errors answered to clients, by kind", ["kind"], registry=r)
        self.avatars = Gauge("vasa_avatars", "avatars in the store", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
