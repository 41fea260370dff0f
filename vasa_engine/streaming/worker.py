"""A session's worker thread: it takes the queued audio and control events, plans chunks, runs their compute
(compute.py), makes idle frames, and publishes finished frames under the session's lock."""

from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np
import torch

from ..audio_features import SAMPLES_PER_VIDEO_FRAME
from ..backend import use as use_backend
from ..driving import Motion
from ..generation import LEAD_IN_FRAMES
from ..runtime import device_context
from .audio_input import ChunkPlan, Utterance
from .settings import FPS, StreamFrame

log = logging.getLogger("vasa_engine")


class SessionWorker:
    """The worker half of `StreamSession` (which holds the state both halves share)."""

    def _run(self) -> None:
        try:
            with torch.no_grad(), use_backend(self.engine.backend), device_context(self.device):
                while True:
                    with self._cond:
                        while True:
                            if self._closed:
                                return
                            events = list(self._events)
                            self._events.clear()
                            if events:
                                self._busy = True
                                break
                            if self._computable() and len(self._out) < self.settings.max_ready_frames:
                                self._busy = True
                                break
                            wait = self._idle_due()
                            if wait == 0.0 and len(self._out) < self.settings.max_ready_frames:
                                self._busy = True
                                break
                            self._cond.wait(0.1 if wait is None else min(0.1, max(wait, 0.005)))
                    try:
                        for ev in events:
                            self._handle(ev)
                        self._work()
                    finally:
                        with self._cond:
                            self._busy = False
                            self._cond.notify_all()
        except BaseException as exc:  # surfaced to the caller by the next call
            log.debug("stream worker failed", exc_info=True)
            with self._cond:
                if not self._closed:  # a session closed mid-batch: its cancelled work is no failure
                    self._error = exc
                self._closed = True
                self._events.clear()
                self._cond.notify_all()

    def _handle(self, ev) -> None:
        kind, uid, t = ev[0], ev[1], ev[-1]
        utt = self._utt
        if kind == "controls":
            self._compute.set_controls(ev[2], utt.driving if utt is not None else None)
            return
        if kind == "drop":
            self._flush_inflight()
            if utt is not None and utt.uid == uid:
                self._finish(utt)
            with self._cond:
                self._out = deque(f for f in self._out if not (f.kind == "speech" and f.utterance == uid))
                self._done_uid = max(self._done_uid, uid)
                last = self._last_taken
            if last is not None:  # what follows fades from the last frame the caller got, not from dropped ones
                self._compute.crossfade.restart_from(last, self.device)
            return
        if utt is None or utt.uid != uid:
            if utt is not None and utt.uid > uid:
                return  # stale
            self._utt = utt = Utterance(uid, self._compute.driving())
        if kind == "audio":
            utt.append(ev[2], t)
        elif kind == "end":
            utt.end(t)
            with self._cond:
                self._queued_ends -= 1

    def _next_chunk(self) -> ChunkPlan | None:
        s = self.settings
        return None if self._utt is None else self._utt.next_chunk(s.chunk_frames, s.lookahead_frames, s.past_frames)

    def _computable(self) -> bool:
        return self._next_chunk() is not None

    def _idle_due(self) -> float | None:
        """With idle frames on: 0 when an idle frame (or an utterance end) is due now, else seconds until one is;
        None without idle frames."""
        s = self.settings
        if not s.idle:
            return None
        now = time.perf_counter()
        utt = self._utt
        if utt is not None and utt.total is None and s.end_after_ms is not None:
            left = utt.last_audio + s.end_after_ms / 1000 - now
            if left <= 0:
                return 0.0
        slack = s.idle_slack_ms if s.idle_slack_ms is not None else s.chunk_ms + s.lookahead_ms + 200
        due_time = self._t0 + self._emitted / FPS + slack / 1000
        return max(0.0, due_time - now)

    def _work(self) -> None:
        s = self.settings
        while True:
            with self._cond:
                if self._closed:
                    return
                room = s.max_ready_frames - len(self._out)
                events_waiting = bool(self._events)
            if room <= 0 or events_waiting:
                break  # new audio or an interrupt is taken before more work (idle frames must not hold it back)
            plan = self._next_chunk()
            if plan is not None:
                self._speech_chunk(plan)
                continue
            utt = self._utt
            if utt is not None and utt.total is not None and utt.committed >= utt.total:
                self._finish(utt)
                continue
            if s.idle and self._idle_due() == 0.0:
                if utt is not None and utt.total is None and s.end_after_ms is not None \
                        and time.perf_counter() - utt.last_audio >= s.end_after_ms / 1000:
                    utt.end(time.perf_counter())
                    continue
                self._flush_inflight()
                self._idle_frames(min(room, 4))
                continue
            break
        self._flush_inflight()

    # ---------------------------------------------------------------- one chunk of speech

    def _speech_chunk(self, plan: ChunkPlan) -> None:
        s, utt = self.settings, self._utt
        started = time.perf_counter()
        first, stop = plan.first, plan.stop
        generated, motion = self._compute.chunk(utt, plan)
        generated = generated.detach().cpu()
        keep = [j for j in range(first, stop) if j >= LEAD_IN_FRAMES]
        meta = []
        for j in keep:
            i = j - LEAD_IN_FRAMES
            own_end = min((j + 1) * SAMPLES_PER_VIDEO_FRAME, utt.padded) - 1
            need = (j + 1 + s.lookahead_frames) * SAMPLES_PER_VIDEO_FRAME - 1
            audio_in = utt.arrival(own_end) if utt.received else utt.ended
            ready_t = utt.arrival(need) if need < utt.padded else utt.ended
            if ready_t is None:  # frame computable without its look-ahead: only once the utterance ended
                ready_t = utt.ended
            audio_in = audio_in if audio_in is not None else ready_t
            meta.append({"kind": "speech", "utterance": utt.uid, "frame": i, "audio_in": audio_in,
                         "ready": max(ready_t, audio_in), "started": started,
                         "audio": utt.samples(j * SAMPLES_PER_VIDEO_FRAME, (j + 1) * SAMPLES_PER_VIDEO_FRAME),
                         "generated": generated[j - first], "steps": self._compute.last_steps})
        utt.trim(max(0, stop - s.past_frames) * SAMPLES_PER_VIDEO_FRAME)
        # audio of committed frames is no longer pending (all of it once the utterance is complete)
        complete = utt.total is not None and stop >= utt.total
        self._settle(utt, utt.received if complete else (stop - LEAD_IN_FRAMES) * SAMPLES_PER_VIDEO_FRAME)
        if keep:
            self._emit(motion[keep[0] - first :], meta, uid=utt.uid)

    def _settle(self, utt: Utterance, upto: int) -> None:
        upto = min(utt.received, max(0, upto))
        if upto > utt.settled:
            with self._cond:
                self._pending = max(0, self._pending - (upto - utt.settled))
                self._cond.notify_all()
            utt.settled = upto

    def _finish(self, utt: Utterance) -> None:
        """The utterance is complete or dropped: publish what is in flight, release its pending audio."""
        self._flush_inflight()
        self._settle(utt, utt.received)
        if self._utt is utt:
            self._utt = None
        with self._cond:
            self._done_uid = max(self._done_uid, utt.uid)
            self._cond.notify_all()

    # ---------------------------------------------------------------- idle frames, render, publish

    def _idle_frames(self, count: int) -> None:
        now = time.perf_counter()
        uid = self._compute.crossfade.last_kind[1] if self._compute.crossfade.last_kind is not None else -1
        meta = [{"kind": "idle", "utterance": uid, "frame": None, "audio_in": None, "ready": None, "started": now,
                 "audio": np.zeros(SAMPLES_PER_VIDEO_FRAME, np.float32), "generated": None} for _ in range(count)]
        self._emit(self._compute.idle_motion(self._emitted, count), meta, uid=uid)

    def _emit(self, motion: Motion, meta: list[dict], uid: int) -> None:
        motion = self._compute.shown(motion, (meta[0]["kind"], uid))
        arrived = [m["audio_in"] for m in meta if m["audio_in"] is not None]
        deadline = self._compute.deadline(min(arrived) if arrived else None)
        rendered = self._compute.render(motion, deadline) if self.settings.render else None
        host = {k: v.detach().cpu() for k, v in motion.params().items()}
        if motion.blink is not None:
            host["eye"] = (self._compute.eye_open() * (1 - motion.blink)).cpu()
        elif motion.eye is not None:
            host["eye"] = motion.eye.cpu()
        frames = []
        for i, m in enumerate(meta):
            driving = {k: v[i : i + 1] for k, v in host.items()}
            frames.append(StreamFrame(index=-1, kind=m["kind"], utterance=m["utterance"], frame=m["frame"],
                                      image=None, audio=m["audio"], driving=driving, generated=m["generated"],
                                      audio_in=m["audio_in"], ready=m["ready"], started=m["started"],
                                      steps=m.get("steps")))
        self._flush_inflight()
        self._inflight = (frames, rendered)
        if self.device.type != "cuda":
            self._flush_inflight()

    def _flush_inflight(self) -> None:
        """Wait for the block being rendered and publish its frames."""
        if self._inflight is None:
            return
        frames, rendered = self._inflight
        self._inflight = None
        if rendered is not None:
            arr = torch.cat([r.wait() for r in rendered]).numpy()
            for i, f in enumerate(frames):
                f.image = arr[i].copy()
        finished = time.perf_counter()
        with self._cond:
            for f in frames:
                if f.kind == "speech" and f.utterance in self._dropped:
                    continue  # interrupted while rendering
                f.finished = finished
                f.index = self._emitted
                self._emitted += 1
                self._out.append(f)
            self._cond.notify_all()
