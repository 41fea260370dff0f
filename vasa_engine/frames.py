"""The frame stage: driving parameters -> 512x512 uint8 images, owned once per engine.

`FrameRenderer.launch(avatar, motion)` runs the per-frame path (driving keypoints with eye and lip retargeting and
an optional blink, stitching, the driving multiplier, warp, decode, uint8 conversion) for one batch of frames. On
CUDA it replays the renderer's graph for that batch shape: the graphs and their static buffers (the avatar's
feature volume and keypoints among them) belong to the frame renderer, so every caller of an engine (offline
rendering, every stream) shares one set, and their memory does not grow with the number of streams. All launches
go through one CUDA stream of the frame renderer's own, ordered after the caller's work by an event, so replays of
the shared graphs never overlap on the device; the caller gets the frames and an event that marks them done.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields

import torch

from .backend import use as use_backend
from .driving import Motion
from .graphs import GraphCache
from .models.renderer import FaceRenderer, SourceState
from .runtime import device_context


@dataclass
class RenderedFrames:
    """A launched batch: uint8 (B, S, S, 3) frames (on the device, or in pinned host memory with to_host), and the
    CUDA event recorded after them (None on the CPU, where they are ready on return)."""

    frames: torch.Tensor
    done: torch.cuda.Event | None = None

    def wait(self) -> torch.Tensor:
        if self.done is not None:
            self.done.synchronize()
        return self.frames


class FrameRenderer:
    """The per-frame path of one engine's renderer, with its CUDA graphs (one per batch shape and setting)."""

    def __init__(self, renderer: FaceRenderer, device: torch.device, backend: str, cuda_graphs: bool):
        self.renderer = renderer
        self.device = device
        self.backend = backend
        self.graphs = GraphCache("renderer", enabled=cuda_graphs and device.type == "cuda")
        self._source: dict | None = None  # static copies of the current avatar's tensors (graphs read them)
        self._source_avatar = None
        self._stream = None
        if device.type == "cuda":
            with device_context(device):
                self._stream = torch.cuda.Stream(device)
        self._lock = threading.RLock()  # from the source copy until the outputs are copied out

    @property
    def captures(self) -> int:
        """Graphs captured so far (one per batch shape and setting)."""
        return len(self.graphs.calls)

    def render(self, avatar, motion: Motion) -> torch.Tensor:
        """Motion of B frames -> uint8 (B, S, S, 3) frames on the engine's device, ready for the caller's stream."""
        out = self.launch(avatar, motion)
        if out.done is not None:
            caller = torch.cuda.current_stream(self.device)
            caller.wait_event(out.done)
            out.frames.record_stream(caller)  # allocated on the renderer's stream, used on the caller's
        return out.frames

    @torch.no_grad()
    def launch(self, avatar, motion: Motion, *, to_host: bool = False) -> RenderedFrames:
        """Start rendering a batch; to_host: copy the frames into pinned host memory on the renderer's stream."""
        with device_context(self.device):
            return self._launch(avatar, motion, to_host)

    def _launch(self, avatar, motion: Motion, to_host: bool) -> RenderedFrames:
        m = motion.to(self.device)
        inputs = [m.pitch, m.yaw, m.roll, m.exp, m.t, m.scale, m.eye, m.lip, m.blink]
        # the backend is part of the key: a graph replays the kernels it was captured with
        key = (len(m), m.stitching, m.driving_multiplier) + tuple(v is not None for v in inputs[6:]) + (self.backend,)
        stream = self._stream
        with self._lock:
            if stream is None:
                source = self._source_for(avatar)
                frames = self.graphs.run(key, self._frame_fn(source, m), inputs, copy=True)
                return RenderedFrames(frames.cpu() if to_host else frames)
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                stream.wait_event(ready)
                for v in inputs:
                    if v is not None:
                        v.record_stream(stream)
                source = self._source_for(avatar)
                frames = self.graphs.run(key, self._frame_fn(source, m), inputs, copy=True)
                if to_host:
                    host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
                    host.copy_(frames, non_blocking=True)
                    frames = host
                done = torch.cuda.Event()
                done.record(stream)
            return RenderedFrames(frames, done)

    def _frame_fn(self, source: dict, m: Motion):
        renderer, backend = self.renderer, self.backend
        stitching, multiplier = m.stitching, m.driving_multiplier

        def frame_fn(pitch, yaw, roll, exp, t, scale, eye, lip, blink):
            with use_backend(backend):
                x_d = renderer.driving_keypoints(
                    source["state"], pitch, yaw, roll, exp, t, scale, eye_ratio=eye, lip_ratio=lip,
                    source_eye_ratio=source["eye"], source_lip_ratio=source["lip"], blink=blink,
                    stitching=stitching, driving_multiplier=multiplier)
                image = renderer.warp_decode(source["state"].feature_3d, source["state"].x_s, x_d)
            # As the reference: clip to [0, 1], scale to 255 and truncate.
            return (image.float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)

        return frame_fn

    def _source_for(self, avatar) -> dict:
        """The avatar's tensors the per-frame path reads. With CUDA graphs they are copied into buffers of fixed
        address that every captured graph reads, once per change of avatar; otherwise they are the avatar's own."""
        own = {"state": avatar.source, "eye": avatar.eye_ratio, "lip": avatar.lip_ratio}
        if not self.graphs.enabled:
            return own
        if self._source is None:
            self._source = {"state": SourceState(**{f.name: getattr(avatar.source, f.name).clone()
                                                     for f in fields(avatar.source)}),
                            "eye": avatar.eye_ratio.clone(), "lip": avatar.lip_ratio.clone()}
        elif self._source_avatar is not avatar:
            static = self._source
            for f in fields(avatar.source):
                getattr(static["state"], f.name).copy_(getattr(avatar.source, f.name))
            static["eye"].copy_(avatar.eye_ratio)
            static["lip"].copy_(avatar.lip_ratio)
        self._source_avatar = avatar
        return self._source

    def clear(self) -> None:
        with self._lock:
            self.graphs.clear()
            self._source = self._source_avatar = None
