"""Streaming: speech chunks in, 25 fps frames out, with bounded latency.

`Engine.stream(avatar, controls, **settings)` returns a `StreamSession`::

    with engine.stream(avatar, chunk_ms=200, lookahead_ms=80) as session:
        for pcm in microphone_chunks():           # any length, any rate (fixed per utterance), mono or (n, ch)
            show(session.push(pcm, 48000))        # the frames that are ready now (a list of StreamFrame)
        show(session.flush())                     # end of the utterance: the rest
    print(session.report())                       # latency p50 / p95 / max, with chunk size and look-ahead

Time line. Everything runs in JoyVASA's padded clip coordinates: each utterance starts with 1280 zero samples
(two lead-in frames), and padded frame j (640 samples at 16 kHz) shows original audio frame i = j - 2, exactly as
offline generation (`Engine.generate_motion`) lays out a clip. The lead-in frames are generated, used as context
and as the reference of the relative driving parameters, and never returned. An utterance of S samples yields
max(1, round(S / 640)) frames once flushed, the offline count.

Audio features for new audio only. The audio encoder (HuBERT / wav2vec2, bidirectional) runs per chunk on a span
of `past_ms` of audio before the new frames, the new frames, and `lookahead_ms` after them, padded as JoyVASA pads
a window (`AudioFeatureEncoder.window_features`); only the 25 fps features of the new frames (and of the look-ahead
frames, see below) are kept. Offline, each 4 s window is encoded on its own, so the offline features themselves
have edges; the streamed features differ from them most at the newest frames, whose right context is the
look-ahead only. tests/test_streaming.py measures the difference against the offline features; the default past
(1000 ms) is where a longer past stops helping on the reduced encoder (numbers in that test's docstring).

Motion per chunk. A frame is ready when its audio and its look-ahead have arrived. Every `chunk_ms` of ready frames
(n frames) the generator runs one window placed so that the new frames sit right after the context: Lp context
frames (the last committed motion and its audio features; while fewer than Lp frames exist, the learned start
context fills the slots before frame 0, as it does for a first window offline), then L frames whose audio features
are the new frames' and the look-ahead frames' (the audio heard so far) followed by the model's null audio feature
(`null_audio_feat`: what "no audio" means to this model) for the future not heard yet. The window is sampled with a
few-step sampler (DPM-Solver++(2M), 5 steps unless the controls say otherwise), and only the n new frames are
committed: they become the next window's context, so
consecutive chunks join the way consecutive offline windows do. Every window commits exactly n frames (the last
one of a flushed utterance fewer), whatever the sizes of the pushes. Start noise: the first window uses offline's
(`controls.seed`); each later window draws its own from (seed, its first frame), so the result depends on the
audio and the seed only, never on timing. Offline reuses one noise for every window; streaming cannot, because
its windows overlap: re-using it makes every chunk's new frames follow the same noise rows (the streamed motion
then collapses towards a repeating pattern), and a noise rolled along with the window is rougher than offline; a
fresh draw per window makes each chunk an exact conditional sample given its context (tests/test_streaming.py
compares the frame-to-frame jumps of streamed and offline motion from an exact Gaussian-process predictor). The
window is sampled by the engine's motion sampler (`vasa_engine.generation.MotionSampler`), whose CUDA graph of the
sampler loop is shared with offline generation and every other session.

Driving parameters. Each utterance has its own driving stage (`vasa_engine.driving.Driving`), called once per chunk
on the chunk's new frames: the same object offline generation calls once on the whole clip, so the moving average,
the first frame the motion is relative to, and every control are the offline ones.

Renderer. Frames are drawn by the engine's one frame renderer (`vasa_engine.frames.FrameRenderer`), which every
session and offline rendering share, CUDA graphs included (captured once per batch shape, not per session). On
CUDA a chunk's frames are launched on the frame renderer's stream (ordered after the motion by an event) and copied
to pinned memory, and the next chunk's features and motion are launched before the worker waits for that render,
so rendering chunk k overlaps sampling chunk k+1. On the CPU the same code runs sequentially.

Threads and back-pressure. One worker thread per session does the compute. `push` validates and resamples the
chunk in the caller's thread (so a bad chunk raises there and changes nothing), queues it, and returns the frames
finished so far. Audio accepted but not yet turned into frames is bounded by `max_pending_ms`: beyond it `push`
blocks until the worker catches up (with `block=False` it raises `StreamBusy` instead); finished frames not yet
taken are bounded by `max_ready_frames` (the worker waits for the consumer). A push that blocks with `collect=True`
keeps taking finished frames while it waits, so a single thread never deadlocks. One producer thread (`push`,
`flush`, `interrupt` with `collect=False`) and one consumer thread (`get`, `frames`, `poll`) may share a session:
one lock (a condition variable) guards the queues and counters. `apush`, `aflush`, `aget`, `aframes` and
`async with` are the asyncio forms; they run the blocking calls in the loop's default executor.

Idle frames and interruptions. With `idle=True` the session keeps a 25 fps clock from its creation: when the
worker has nothing to compute and the frames produced fall more than `idle_slack_ms` behind the clock, it produces
frames of the face at rest (the portrait's own pose and expression) with a blink every `blink_period_s` (the eye
retargeting ratio dipping to closed, as `motion_script` does), so a real-time consumer never stalls; an utterance
whose audio stops for `end_after_ms` is finished as if flushed. `interrupt()` (or `push(..., new_utterance=True)`)
drops the audio and unreturned frames of the current utterance; the next audio starts a new utterance. Every change
between utterances and idle frames is cross-faded over `crossfade_frames` frames (raised cosine, from the last
frame shown), so the motion joins smoothly.

Latency. Each speech frame records when its own audio reached the engine (the push holding its last sample), when
the audio it depends on, look-ahead included, had arrived (or the utterance was flushed), when its chunk's compute
started and finished, and when it was returned. `StreamFrame.latency_s` = returned - own audio in, split into
`lookahead_s` (waiting for the look-ahead: algorithmic) and `compute_s` (chunking, queueing, compute, hand-out).
`LatencyReport` gives p50 / p95 / max of each, always with the chunk size and look-ahead used, and the sustained
frame rate.

Many streams on one device. With `batched=True` a session keeps its worker thread for the audio, the planning,
driving, idle frames and cross-fades, and hands its motion windows and frames to the engine's device scheduler
(vasa_engine.scheduler), which batches the work of every batched session; each frame is due `latency_budget_ms`
after its audio arrived, and `StreamFrame.steps` records the sampler steps its window ran with (fewer when the
scheduler degraded a window that would have missed its deadline). Without the setting nothing changes.

Where the code is: settings.py (settings, frames, report), audio_input.py (chunks, resampling, utterance buffers and
the chunk planning: pure and synchronous), compute.py (one chunk on the engine's stages), effects.py (idle frames,
cross-fade), worker.py (the worker thread), session.py (`StreamSession`).
"""

from .audio_input import ChunkPlan, Resampler, Utterance, check_chunk, plan_chunk
from .compute import StreamCompute
from .session import StreamSession
from .settings import (DEFAULT_STREAM_STEPS, FPS, FRAME_MS, LatencyReport, StreamBusy, StreamClosed, StreamFrame,
                       StreamSettings)

__all__ = ["DEFAULT_STREAM_STEPS", "FPS", "FRAME_MS", "ChunkPlan", "LatencyReport", "Resampler", "StreamBusy",
           "StreamClosed", "StreamCompute", "StreamFrame", "StreamSession", "StreamSettings", "Utterance",
           "check_chunk", "plan_chunk"]
