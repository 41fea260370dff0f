"""The frame stage: driving parameters -> 512x512 uint8 images, owned once per engine.

`FrameRenderer.launch(avatar, motion)` runs the per-frame path (driving keypoints with eye and lip retargeting and
an optional blink, stitching, the driving multiplier, warp, decode, uint8 conversion) for one batch of frames. On
CUDA it replays the renderer's graph for that batch shape: the graphs and their static buffers (the avatar's
feature volume and keypoints among them) belong to the frame renderer, so every caller of an engine (offline
rendering, every stream) shares one set, and their memory does not grow with the number of streams. All launches
go through one CUDA stream of the frame renderer's own, ordered after the caller's work by an event, so replays of
the shared graphs never overlap on the device; the caller gets the frames and an event that marks them done.
`launch_rows(avatars, motion)` renders frames of several avatars (several streams) in one batch, each row with
its own avatar's source tensors; on CUDA padded to a row bucket, whose graph reads per-row static source slots.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch

from .backend import use as use_backend
from .driving import Motion
from .graphs import GraphCache
from .models.renderer import FaceRenderer, SourceState
from .runtime import device_context


ROW_BUCKETS = (1, 2, 4, 8, 16)


def row_bucket(n: int) -> int:
    """The batch size a row batch of n frames is padded to under CUDA graphs (n itself beyond the last bucket)."""
    return next((b for b in ROW_BUCKETS if b >= n), n)


def pad_rows(value: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """value (B, ...) -> (n, ...), its last row repeated."""
    if value is None or value.shape[0] == n:
        return value
    return torch.cat([value, value[-1:].expand(n - value.shape[0], *value.shape[1:])])


def _motion_inputs(m: Motion) -> list:
    return [m.pitch, m.yaw, m.roll, m.exp, m.t, m.scale, m.eye, m.lip, m.blink]


def _motion_key(m: Motion, rows: int) -> tuple:
    """What fixes a frame batch's kernels: its row count, the renderer settings and which of eye, lip and blink
    it has."""
    return (rows, m.stitching, m.driving_multiplier, m.eye is not None, m.lip is not None, m.blink is not None)


def frame_key(m: Motion) -> tuple:
    """What frames of different streams must share to be rendered in one batch."""
    return _motion_key(m, 0)[1:]


def stacked_source(avatars: list) -> dict:
    """The per-frame path's source tensors of each row's avatar, stacked along the batch."""
    state = SourceState(**{f.name: torch.cat([getattr(a.source, f.name) for a in avatars])
                           for f in fields(SourceState)})
    return {"state": state, "eye": torch.cat([a.eye_ratio for a in avatars]),
            "lip": torch.cat([a.lip_ratio for a in avatars])}


def copy_source(static: dict, source: dict) -> None:
    """Copy the source tensors `source` (state, eye, lip) into the static buffers `static` a graph reads."""
    for f in fields(static["state"]):
        getattr(static["state"], f.name).copy_(getattr(source["state"], f.name))
    static["eye"].copy_(source["eye"])
    static["lip"].copy_(source["lip"])


class Cancelled(Exception):
    """Work given up because the caller that asked for it has gone away (a closed stream)."""


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
        self._row_sources: dict[int, dict] = {}  # static stacked sources of the row graphs, per bucket
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
    def launch(self, avatar, motion: Motion, *, to_host: bool = False,
               cancelled: Callable[[], bool] | None = None) -> RenderedFrames:
        """Start rendering a batch; to_host: copy the frames into pinned host memory on the renderer's stream.
        cancelled: asked once the renderer is free (every caller shares it): True raises `Cancelled` instead of
        rendering for a caller that has gone away meanwhile."""
        with device_context(self.device):
            return self._launch(avatar, motion, to_host, cancelled)

    def _launch(self, avatar, motion: Motion, to_host: bool, cancelled=None) -> RenderedFrames:
        m = motion.to(self.device)
        inputs = _motion_inputs(m)
        # the backend is part of the key: a graph replays the kernels it was captured with
        key = _motion_key(m, len(m)) + (self.backend,)
        return self._render(key, lambda: self._source_for(avatar), m, inputs, len(m), to_host, cancelled)

    def _render(self, key, source_fn, m: Motion, inputs: list, rows: int, to_host: bool,
                cancelled=None) -> RenderedFrames:
        """The first `rows` frames of the batch `inputs`, on the renderer's stream, with the source tensors
        `source_fn()` gives under the lock (a graph replayed where one is captured for `key`)."""
        with self._lock, self._on_own_stream(inputs) as done:
            if cancelled is not None and cancelled():
                raise Cancelled("the frames' requester went away")
            frames = self.graphs.run(key, self._frame_fn(source_fn(), m), inputs, copy=True)[:rows]
            if to_host:
                frames = self._to_host(frames)
            if done is None:
                return RenderedFrames(frames)
            done.record(self._stream)
            return RenderedFrames(frames, done)

    def _frame_fn(self, source: dict, m: Motion):
        image_fn = self._image_fn(source, m)

        def frame_fn(*inputs):
            # As the reference: clip to [0, 1], scale to 255 and truncate.
            return (image_fn(*inputs).float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)

        return frame_fn

    def _image_fn(self, source: dict, m: Motion):
        renderer, backend = self.renderer, self.backend
        stitching, multiplier = m.stitching, m.driving_multiplier

        def image_fn(pitch, yaw, roll, exp, t, scale, eye, lip, blink):
            with use_backend(backend):
                x_d = renderer.driving_keypoints(
                    source["state"], pitch, yaw, roll, exp, t, scale, eye_ratio=eye, lip_ratio=lip,
                    source_eye_ratio=source["eye"], source_lip_ratio=source["lip"], blink=blink,
                    stitching=stitching, driving_multiplier=multiplier)
                return renderer.warp_decode(source["state"].feature_3d, source["state"].x_s, x_d)

        return image_fn

    # ------------------------------------------------------------------------------------- rows of many avatars

    @torch.no_grad()
    def launch_rows(self, avatars: Sequence, motion: Motion, *, to_host: bool = False) -> RenderedFrames:
        """Start rendering B frames of several avatars in one batch: row i is motion[i] on avatars[i] (its own
        feature volume, keypoints and eye/lip ratios). With CUDA graphs the batch is padded to the next size of
        `ROW_BUCKETS` (one graph per bucket and setting, whose static source buffers hold one slot per row)."""
        if len(avatars) != len(motion):
            raise ValueError(f"launch_rows: {len(avatars)} avatars for {len(motion)} frames")
        with device_context(self.device):
            m = motion.to(self.device)
            n = len(m)
            bucket = row_bucket(n) if self.graphs.enabled else n
            rows = list(avatars) + [avatars[-1]] * (bucket - n)
            inputs = [pad_rows(v, bucket) for v in _motion_inputs(m)]
            key = ("rows",) + _motion_key(m, bucket) + (self.backend,)
            return self._render(key, lambda: self._rows_source(rows), m, inputs, n, to_host)

    @torch.no_grad()
    def images_rows(self, avatars: Sequence, motion: Motion) -> torch.Tensor:
        """The float images (B, 3, S, S) in [0, 1] of `launch_rows`, before the uint8 conversion, run eagerly."""
        with device_context(self.device):
            m = motion.to(self.device)
            return self._image_fn(stacked_source(list(avatars)), m)(*_motion_inputs(m))

    @contextmanager
    def _on_own_stream(self, inputs):
        """Run the block on the frame renderer's stream (CUDA), ordered after the caller's work; yields the event
        to record when done (None on the CPU)."""
        if self._stream is None:
            yield None
            return
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(ready)
            for v in inputs:
                if v is not None:
                    v.record_stream(self._stream)
            yield torch.cuda.Event()

    def _to_host(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.device.type != "cuda":
            return frames.cpu()
        host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(frames, non_blocking=True)
        return host

    def _rows_source(self, rows: list) -> dict:
        """The rows' stacked source tensors; with CUDA graphs copied into the bucket's static buffers."""
        stacked = stacked_source(rows)
        if not self.graphs.enabled:
            return stacked
        static = self._row_sources.get(len(rows))
        if static is None:
            self._row_sources[len(rows)] = stacked
            return stacked
        copy_source(static, stacked)
        return static

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
            copy_source(self._source, own)
        self._source_avatar = avatar
        return self._source

    def clear(self) -> None:
        with self._lock:
            self.graphs.clear()
            self._source = self._source_avatar = None
            self._row_sources.clear()
