"""`DeviceScheduler`: one thread per engine that runs the motion windows and frames of every batched session as
batched steps, earliest deadline first."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import replace
from typing import Callable

import torch

from ..driving import Motion
from ..frames import RenderedFrames, frame_key
from ..generation import WindowRequest, batch_key
from ..streaming.settings import FPS, StreamBusy
from .jobs import Job, RateMeter, Slot

log = logging.getLogger("vasa_engine")
_CREATE_LOCK = threading.Lock()


class EngineStages:
    """The batched stages of an engine the scheduler runs: its motion sampler's `windows` and its frame
    renderer's `launch_rows` (to pinned host memory), under the engine's backend and device."""

    def __init__(self, engine):
        self.engine = engine

    def windows(self, requests: list[WindowRequest]) -> list[torch.Tensor]:
        return self.engine.motion_sampler.windows(requests)

    def frames(self, avatars: list, motion: Motion) -> RenderedFrames:
        return self.engine.frame_renderer.launch_rows(avatars, motion, to_host=True)

    def context(self) -> ExitStack:
        from ..backend import use as use_backend
        from ..runtime import device_context

        stack = ExitStack()
        stack.enter_context(use_backend(self.engine.backend))
        stack.enter_context(device_context(self.engine.device))
        return stack


class DeviceScheduler:
    """Gathers the queued work of every session that opted in (`Engine.stream(..., batched=True)`) and runs it in
    rounds: each round takes everything queued, runs the motion windows (rows grouped by what must be equal to
    share a forward, up to `max_rows` a batch) and then the frames (one renderer batch per group of up to
    `max_rows` frames, each row on its own session's avatar), earliest deadline first, and hands each job's
    result back to its session.

    A window that would miss its deadline at the measured cost of a sampler step runs with fewer steps (at least
    one; the job's `steps` says how many). `open_slot` admits a new session only while the frame rate the scheduler
    has sustained when busy (measured over its recent rounds) covers every open session plus the new one.
    `clock` is injectable (tests drive the scheduler with `run_round` on a fake clock, without the thread).
    """

    def __init__(self, stages, *, clock: Callable[[], float] = time.perf_counter, max_rows: int = 16,
                 threaded: bool = True):
        self.stages = stages
        self.clock = clock
        self.max_rows = max_rows
        self.threaded = threaded
        self.admission = True  # refuse sessions beyond the measured capacity
        self.meter = RateMeter()
        self.step_cost: float | None = None  # seconds of one batched sampler step (moving average)
        self.rounds = 0
        self._cond = threading.Condition()
        self._pending: list[Job] = []
        self._slots: dict[int, Slot] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def of(cls, engine) -> "DeviceScheduler":
        """The engine's one scheduler, created on first use."""
        with _CREATE_LOCK:
            if getattr(engine, "_scheduler", None) is None:
                engine._scheduler = cls(EngineStages(engine))
            return engine._scheduler

    # ------------------------------------------------------------------------------------------ sessions

    def open_slot(self, fps: float = FPS) -> Slot:
        """A place for one more session producing `fps` frames a second; StreamBusy when the measured capacity
        cannot take it next to the sessions already open."""
        with self._cond:
            capacity = self.meter.fps()
            demand = sum(s.fps for s in self._slots.values()) + fps
            # the first session is always admitted: alone, it runs as fast as the device allows
            if self.admission and capacity is not None and demand > capacity and self._slots:
                raise StreamBusy(f"the device scheduler sustains {capacity:.1f} fps, {len(self._slots)} open "
                                 f"session(s) need {demand - fps:.1f}: no room for one more {fps:g} fps stream")
            slot = Slot(next(self._ids), fps)
            self._slots[slot.sid] = slot
            if self.threaded and self._thread is None:
                self._closed = False
                self._thread = threading.Thread(target=self._loop, name="vasa-scheduler", daemon=True)
                self._thread.start()
            return slot

    def close_slot(self, slot: Slot) -> None:
        """The session is gone: its queued jobs are cancelled (a batch already running drops its results)."""
        with self._cond:
            slot.open = False
            self._slots.pop(slot.sid, None)
            for job in self._pending:
                if job.slot is slot:
                    job.cancel()
            self._pending = [j for j in self._pending if j.slot is not slot]
            self._cond.notify_all()

    @property
    def open_slots(self) -> int:
        return len(self._slots)

    @property
    def queued(self) -> int:
        return len(self._pending)

    def capacity_fps(self) -> float | None:
        """Frames a second the scheduler has sustained while busy (None before it has rendered any)."""
        with self._cond:
            return self.meter.fps()

    # ------------------------------------------------------------------------------------------ work

    def submit_window(self, slot: Slot, request: WindowRequest, deadline: float) -> Job:
        return self._submit(Job("window", slot, request, deadline, self.clock(), steps=request.controls.steps))

    def submit_frames(self, slot: Slot, avatar, motion: Motion, deadline: float) -> Job:
        return self._submit(Job("frames", slot, (avatar, motion), deadline, self.clock(), rows_left=len(motion)))

    def _submit(self, job: Job) -> Job:
        with self._cond:
            if not job.slot.open:
                job.cancel()
                return job
            job.seq = next(self._ids)
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def run_round(self) -> int:
        """Run everything queued now (windows, then frames); -> the number of jobs taken."""
        with self._cond:
            jobs, self._pending = self._pending, []
        if not jobs:
            return 0
        start = self.clock()
        order = sorted(jobs, key=lambda j: (j.deadline, j.seq))
        self._windows([j for j in order if j.kind == "window"])
        rendered = self._frames([j for j in order if j.kind == "frames"])
        with self._cond:
            self.meter.add(rendered, self.clock() - start)
            self.rounds += 1
        return len(jobs)

    def _windows(self, jobs: list[Job]) -> None:
        groups: dict[tuple, list[tuple[Job, WindowRequest]]] = {}
        for job in jobs:
            request = self._within_deadline(job)
            groups.setdefault(batch_key(request), []).append((job, request))
        for rows in groups.values():
            for a in range(0, len(rows), self.max_rows):
                batch = rows[a : a + self.max_rows]
                started = self.clock()
                for job, _ in batch:
                    job.started = started
                try:
                    motion = self.stages.windows([r for _, r in batch])
                except Exception as exc:  # noqa: BLE001 - handed to the sessions of this batch
                    for job, _ in batch:
                        job.finish(error=exc, at=self.clock())
                    continue
                now = self.clock()
                steps = batch[0][1].controls.steps
                if steps and now > started:
                    cost = (now - started) / steps
                    self.step_cost = cost if self.step_cost is None else 0.8 * self.step_cost + 0.2 * cost
                for (job, _), m in zip(batch, motion):
                    job.finish(m, at=now)

    def _within_deadline(self, job: Job) -> WindowRequest:
        """The job's request, with fewer sampler steps when its full steps would end after its deadline."""
        request: WindowRequest = job.payload
        controls = request.controls
        if self.step_cost is None or controls.sampler == "ddpm" or not controls.steps:
            return request
        left = job.deadline - self.clock()
        if self.step_cost * controls.steps <= left:
            return request
        steps = max(1, min(controls.steps - 1, int(left / self.step_cost)))
        job.steps = steps
        return replace(request, controls=replace(controls, steps=steps))

    def _frames(self, jobs: list[Job]) -> int:
        groups: dict[tuple, list[tuple[Job, int]]] = {}
        for job in jobs:
            _, motion = job.payload
            groups.setdefault(frame_key(motion), []).extend((job, i) for i in range(len(motion)))
        rendered = 0
        for rows in groups.values():
            for a in range(0, len(rows), self.max_rows):
                rendered += self._frame_batch(rows[a : a + self.max_rows])
        return rendered

    def _frame_batch(self, rows: list[tuple[Job, int]]) -> int:
        segments: list[tuple[Job, int, int]] = []  # (job, first row, stop) in batch order
        for job, i in rows:
            if segments and segments[-1][0] is job and segments[-1][2] == i:
                segments[-1] = (job, segments[-1][1], i + 1)
            else:
                segments.append((job, i, i + 1))
        avatars = [job.payload[0] for job, _ in rows]
        motion = Motion.cat([job.payload[1][a:b] for job, a, b in segments])
        started = self.clock()
        for job, _, _ in segments:
            job.started = job.started if job.started is not None else started
        try:
            out = self.stages.frames(avatars, motion)
        except Exception as exc:  # noqa: BLE001 - handed to the sessions of this batch
            for job, _, _ in segments:
                job.finish(error=exc, at=self.clock())
            return 0
        now, offset = self.clock(), 0
        for job, a, b in segments:
            job.parts.append(RenderedFrames(out.frames[offset : offset + b - a], out.done))
            offset += b - a
            job.rows_left -= b - a
            if job.rows_left == 0:
                job.finish(job.parts, at=now)
        return len(rows)

    # ------------------------------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        with torch.no_grad(), self.stages.context():
            while True:
                with self._cond:
                    while not self._pending and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                try:
                    self.run_round()
                except Exception:  # noqa: BLE001 - keep serving the other sessions
                    log.exception("device scheduler round failed")

    def close(self) -> None:
        """Stop the thread; queued jobs are cancelled."""
        with self._cond:
            self._closed = True
            for job in self._pending:
                job.cancel()
            self._pending = []
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
