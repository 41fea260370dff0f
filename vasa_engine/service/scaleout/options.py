"""How the service is laid out on Ray Serve: replicas (fixed or autoscaled), sessions per replica, devices. No Ray
import here: the options are checked before Ray is touched."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ...errors import InputError
from ..config import ServiceConfig

APP_NAME = "vasa-engine"
AUTOSCALE_TARGET = 0.75  # autoscaling aims at this fraction of --max-sessions live sessions per replica
INGRESS_HEADROOM = 64  # ongoing requests the ingress takes beyond the sessions (uploads, health, metrics)
DEFAULT_ADMISSION_WAIT_S = 2.0
DEFAULT_DRAIN_S = 300.0  # a replica being stopped (scale-down, upgrade) lets its sessions run this long


@dataclass
class RayOptions:
    """address: the Ray cluster (None: start one on this machine; "auto": the one this machine belongs to).
    replicas: a fixed number of engine replicas; or min_replicas .. max_replicas, autoscaled on live sessions.
    max_sessions: live sessions per replica (Serve's max_ongoing_requests of the engine deployment).
    replicas_per_gpu: engine replicas sharing one GPU (num_gpus = 1 / this); cpus_per_replica: num_cpus of a
    replica without a GPU. use_gpus: None decides from the cluster's resources and the engine's device.
    engine: Engine keyword arguments (weights paths must be readable on every node). admission_wait_s: how long a
    new session waits for a replica with room before it is refused with 1013."""

    address: str | None = None
    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    max_sessions: int = 8
    replicas_per_gpu: int = 1
    cpus_per_replica: float = 1.0
    use_gpus: bool | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    admission_wait_s: float = DEFAULT_ADMISSION_WAIT_S
    health_check_period_s: float = 2.0
    drain_s: float = DEFAULT_DRAIN_S

    def check(self) -> "RayOptions":
        autoscaled = self.min_replicas is not None or self.max_replicas is not None
        if self.replicas is not None and autoscaled:
            raise InputError("give --replicas N or --min-replicas A --max-replicas B, not both")
        if autoscaled and (self.min_replicas is None or self.max_replicas is None):
            raise InputError("autoscaling needs both --min-replicas and --max-replicas")
        for name in ("replicas", "max_replicas", "max_sessions", "replicas_per_gpu"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputError(f"{name.replace('_', ' ')} must be a positive integer, got {value!r}")
        if self.min_replicas is not None and (not isinstance(self.min_replicas, int) or self.min_replicas < 0):
            raise InputError(f"min replicas must be a non-negative integer, got {self.min_replicas!r}")
        if autoscaled and self.min_replicas > self.max_replicas:
            raise InputError(f"min replicas ({self.min_replicas}) is above max replicas ({self.max_replicas})")
        if not self.cpus_per_replica > 0:
            raise InputError(f"cpus per replica must be positive, got {self.cpus_per_replica!r}")
        device = str(self.engine.get("device", "auto"))
        if device.startswith("cuda:"):
            raise InputError(f"--device {device}: on Ray each replica is given its own GPU; use --device cuda or auto")
        if not self.admission_wait_s > 0:
            raise InputError(f"admission wait must be positive, got {self.admission_wait_s!r}")
        return self

    @property
    def autoscaled(self) -> bool:
        return self.max_replicas is not None

    @property
    def most_replicas(self) -> int:
        return self.max_replicas if self.autoscaled else (self.replicas or 1)

    @property
    def capacity(self) -> int:
        """Live sessions the whole deployment holds at its largest."""
        return self.most_replicas * self.max_sessions

    def engine_deployment(self, use_gpus: bool) -> dict[str, Any]:
        """The engine deployment's Serve options."""
        scale: dict[str, Any]
        if self.autoscaled:
            scale = {"autoscaling_config": {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                            "initial_replicas": max(1, self.min_replicas),
                                            "target_ongoing_requests": AUTOSCALE_TARGET * self.max_sessions}}
        else:
            scale = {"num_replicas": self.replicas or 1}
        device = {"num_gpus": 1.0 / self.replicas_per_gpu} if use_gpus else {"num_cpus": self.cpus_per_replica}
        return {**scale, "max_ongoing_requests": self.max_sessions, "ray_actor_options": device,
                "health_check_period_s": self.health_check_period_s, "graceful_shutdown_timeout_s": self.drain_s}

    def engine_kwargs(self, use_gpus: bool) -> dict[str, Any]:
        """Engine arguments on a replica: "cuda" is the replica's own GPU (Ray sets CUDA_VISIBLE_DEVICES)."""
        device = self.engine.get("device", "auto")
        return {**self.engine, "device": ("cuda" if device == "auto" else device) if use_gpus else "cpu"}

    def ingress_config(self, config: ServiceConfig) -> ServiceConfig:
        """The ingress's ServiceConfig: its session bound is the whole deployment's."""
        return replace(config, max_sessions=self.capacity).check()


def wants_gpus(options: RayOptions, cluster_gpus: float) -> bool:
    if options.use_gpus is not None:
        return options.use_gpus
    device = str(options.engine.get("device", "auto"))
    if device == "cpu":
        return False
    if device.startswith("cuda") and cluster_gpus <= 0:
        raise InputError(f"--device {device} on Ray needs GPUs in the cluster, and it has none")
    return cluster_gpus > 0
