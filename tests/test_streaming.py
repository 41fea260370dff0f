"""Streaming sessions on reduced sizes: no seams against offline generation, the streamed audio features against the
offline ones, incremental driving, bad input with no leaks, threads and asyncio, back-pressure, idle frames and
interruptions, and the `stream` command."""

import asyncio
import math
import os
import threading
import time

import numpy as np
import pytest
import torch

from conftest import rel_err
from test_cli import run
from vasa_engine import Engine, InputError
from vasa_engine.audio_features import clip_layout, clip_windows
from vasa_engine.driving import Driving
from vasa_engine.generation import Controls, MotionTemplate, generate_windows
from vasa_engine.streaming import StreamBusy, StreamClosed, StreamCompute, StreamSettings, plan_chunk

SR = 16000


def noise_audio(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(round(seconds * SR))).astype(np.float32)


def push_all(session, audio, piece: int = 3200, **kw):
    frames = []
    for a in range(0, len(audio), piece):
        frames += session.push(audio[a : a + piece], SR, **kw)
    return frames + session.flush()


# ------------------------------------------------------------------------------------------------ seams


class ConditionedGaussianProcess:
    """Clean motion frames from a smooth Gaussian process in time (squared-exponential kernel over the Lp context
    slots and the L window frames), each dimension independent. predictor(...) is the exact x0 predictor of the
    window given its noisy frames and the c <= Lp real context frames (placed in the last c context slots)."""

    def __init__(self, length_scale: float, lp: int, n: int):
        idx = torch.arange(lp + n, dtype=torch.float64)
        self.k = torch.exp(-0.5 * (idx[:, None] - idx[None, :]) ** 2 / length_scale**2) + 1e-6 * torch.eye(lp + n)
        self.lp, self.n = lp, n

    def predictor(self, schedule, prev: torch.Tensor | None):
        lp, n = self.lp, self.n
        cur = slice(lp, lp + n)
        if prev is None or prev.shape[1] == 0:
            mean, cov = torch.zeros(n, 1, dtype=torch.float64), self.k[cur, cur]
        else:
            c = prev.shape[1]
            ctx = slice(lp - c, lp)
            gain = self.k[cur, ctx] @ torch.linalg.inv(self.k[ctx, ctx])
            mean = gain @ prev[0].double()
            cov = self.k[cur, cur] - gain @ self.k[cur, ctx].T

        def x0_fn(x_t: torch.Tensor, t: int) -> torch.Tensor:
            a = schedule.alpha_bars[t].double().sqrt()
            s2 = 1 - schedule.alpha_bars[t].double()
            gain_t = a * cov @ torch.linalg.inv(a * a * cov + s2 * torch.eye(n, dtype=torch.float64))
            return (mean + gain_t @ (x_t[0].double() - a * mean))[None].float()

        return x0_fn


def max_jump(motion: torch.Tensor) -> float:
    return (motion[1:] - motion[:-1]).abs().max().item()


def _gp_streamed(engine, avatar, audio, prior, use_context: bool, chunk_ms: int = 200) -> torch.Tensor:
    schedule = engine.motion_stack.generator.diffusion_sched.schedule()

    def factory(w, window_audio, prev_motion, prev_audio):
        return prior.predictor(schedule, prev_motion if use_context else None)

    with engine.stream(avatar, Controls(steps=10), render=False, denoiser_factory=factory,
                       chunk_ms=chunk_ms) as session:
        frames = push_all(session, audio, piece=4000)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(f.kind == "speech" for f in frames)
    return torch.stack([f.generated for f in frames])


def test_streamed_motion_has_no_seams(engine, avatar):
    """With the exact predictor of a smooth Gaussian-process prior plugged in (conditioned on the context frames),
    40 s streamed in 200 ms chunks jump from frame to frame no more than offline generation of the same audio, and
    the frame count is the audio's duration in frames. The control, streaming without the previous frames as
    context, shows a seam at every chunk."""
    cfg = engine.motion_stack.generator.cfg
    prior = ConditionedGaussianProcess(6.0, cfg.n_prev_motions, cfg.n_motions)
    audio = noise_audio(40.0)
    frames = round(len(audio) / 640)

    layout = clip_layout(len(audio), cfg.n_motions)
    model = engine.motion_stack.generator
    schedule = model.diffusion_sched.schedule()
    features = torch.zeros(layout.windows, cfg.n_motions, cfg.feature_dim)
    offline = generate_windows(model, features, Controls(steps=10),
                               denoiser_factory=lambda w, a, pm, pa: prior.predictor(schedule, pm))
    offline = offline[2 : 2 + frames]  # the two lead-in frames are dropped, as Engine.generate_motion does

    streamed = _gp_streamed(engine, avatar, audio, prior, use_context=True)
    assert streamed.shape == (frames, cfg.motion_dim)
    assert max_jump(streamed) <= max_jump(offline), (max_jump(streamed), max_jump(offline))
    # and the joins between chunks (output frame 5k + 2 -> 5k + 3, after the two lead-in frames) jump no more than
    # frames inside chunks
    jumps = (streamed[1:] - streamed[:-1]).abs().max(dim=1).values
    join = torch.zeros_like(jumps, dtype=torch.bool)
    join[2::5] = True
    assert jumps[join].max() <= jumps[~join].max(), (jumps[join].max(), jumps[~join].max())

    control = _gp_streamed(engine, avatar, audio, prior, use_context=False)
    assert control.shape == (frames, cfg.motion_dim)
    assert max_jump(control) > 2 * max_jump(offline), (max_jump(control), max_jump(offline))


@pytest.mark.parametrize("seconds", [0.03, 0.5, 1.37])
def test_frame_count_matches_offline(engine, avatar, seconds):
    audio = noise_audio(seconds, seed=1)
    with engine.stream(avatar, render=False) as session:
        frames = push_all(session, audio, piece=1111)
    assert len(frames) == len(engine.generate_motion(avatar, audio, sample_rate=SR)) == max(1, round(seconds * 25))
    n = min(len(audio), 640 * len(frames))
    assert np.concatenate([f.audio for f in frames])[:n].tolist() == audio[:n].tolist()


def test_result_does_not_depend_on_push_sizes(engine, avatar):
    audio = noise_audio(1.3, seed=2)
    results = []
    for piece in (160, 3200, len(audio)):
        with engine.stream(avatar, render=False) as session:
            results.append(torch.stack([f.generated for f in push_all(session, audio, piece)]))
    assert rel_err(results[1], results[0]) < 1e-5 and rel_err(results[2], results[0]) < 1e-5


# ------------------------------------------------------------------------------------------------ features


def _streamed_features(engine, avatar, padded: np.ndarray, frames: int, past: int, lookahead: int, chunk: int = 5):
    """The session's own feature step (StreamCompute.features) over chunks planned by the session's planner."""
    compute = StreamCompute(engine, avatar, Controls(steps=1), StreamSettings(lookahead_ms=40 * lookahead,
                                                                              past_ms=40 * past))
    out = []
    committed = 0
    while (plan := plan_chunk(committed, frames, frames, chunk, lookahead, past)) is not None:
        samples = padded[plan.span_start * 640 : plan.span_stop * 640]
        out.append(compute.features(samples, plan)[0, : plan.frames])
        committed = plan.stop
    return torch.cat(out)


def test_chunk_planning():
    """The planner waits for a whole chunk of ready frames, then commits it; once flushed it commits the rest."""
    assert plan_chunk(0, 4, None, 5, 2, 25) is None
    p = plan_chunk(0, 5, None, 5, 2, 25)
    assert (p.first, p.stop, p.span_start, p.span_stop, p.frames) == (0, 5, 0, 7, 5)
    p = plan_chunk(30, 41, None, 5, 2, 25)
    assert (p.first, p.stop, p.span_start, p.span_stop) == (30, 35, 5, 37)
    assert plan_chunk(35, 38, None, 5, 2, 25) is None
    p = plan_chunk(35, 38, 38, 5, 2, 25)  # flushed: the last 3 frames
    assert (p.first, p.stop) == (35, 38)
    assert plan_chunk(38, 38, 38, 5, 2, 25) is None


def test_streamed_features_against_offline(engine, avatar, sample_speech):
    """The encoder run per 200 ms chunk on past + chunk + 80 ms look-ahead, against the offline features (each
    window encoded on its own) of the 4.8 s speech clip. The reduced random encoder attends over its whole input,
    so features depend on the span they are computed in; offline features change too when the windows move.
    Measured (relative error of all features; reduced encoder, seeded random weights):
      offline vs offline with its windows shifted by half a window: 0.31
      streamed, look-ahead 80 ms, past 0 / 400 / 1000 / 2000 / 4000 ms: 0.34 / 0.22 / 0.22 / 0.22 / 0.23
      streamed, past 1000 ms, look-ahead 0 / 120 / 200 / 1000 ms: 0.26 / 0.21 / 0.21 / 0.21
    Per frame (look-ahead 80 ms, past 1000 ms): median 0.19, p95 0.36, max 0.42; the largest at the newest frames
    of a chunk (least right context). Overall no larger than offline's own dependence on where its windows fall;
    some past is needed (none is clearly worse), more than about 400 ms does not help this encoder."""
    from vasa_engine.io.audio import load_audio

    module = engine.motion_stack.audio
    L = engine.motion_stack.generator.cfg.n_motions
    x = load_audio(sample_speech)
    with torch.no_grad():
        windows, frames = clip_windows(torch.from_numpy(x)[None], L)
        offline = torch.cat([module.window_features(windows[:, w]) for w in range(windows.shape[1])], 1)[0, :frames]
        h = L // 2
        shifted_w, _ = clip_windows(torch.from_numpy(np.concatenate([np.zeros(640 * h, np.float32), x]))[None], L)
        shifted = torch.cat([module.window_features(shifted_w[:, w]) for w in range(shifted_w.shape[1])],
                            1)[0, h : h + frames]
        padded = np.concatenate([np.zeros(1280, np.float32), x, np.zeros(640 * 40, np.float32)])
        no_past = _streamed_features(engine, avatar, padded, frames, past=0, lookahead=2)
        streamed = _streamed_features(engine, avatar, padded, frames, past=25, lookahead=2)
    window_dependence = rel_err(shifted, offline)
    err = rel_err(streamed, offline)
    assert err <= window_dependence, (err, window_dependence)
    assert err < rel_err(no_past, offline)
    assert err < 0.3


# ------------------------------------------------------------------------------------------------ driving


def test_driving_stage_block_by_block_equals_one_call():
    """Offline generation calls the driving stage once on the whole clip; a stream calls it once per chunk: the
    moving average and the first frame carry over, so the results are the same."""
    from vasa_engine.models.renderer import SourceState

    g = torch.Generator().manual_seed(4)
    src = SourceState(feature_3d=torch.zeros(1), kp=torch.randn(1, 21, 3, generator=g), pitch=torch.tensor([4.0]),
                      yaw=torch.tensor([-8.0]), roll=torch.tensor([1.0]), exp=torch.randn(1, 21, 3, generator=g) * .02,
                      t=torch.tensor([[0.01, -0.02, 0.3]]), scale=torch.tensor([[1.2]]), x_s=torch.zeros(1, 21, 3))
    src.x_s = src.kp * src.scale  # any keypoints with a non-degenerate hull
    motion = torch.rand(47, 70, generator=g)
    for controls in (Controls(smoothing=0.9), Controls(smoothing=0.5, relative_motion=True, head_yaw=5.0,
                                                       distance=1.5, eye_openness=0.2, stitching=True)):
        offline = Driving(src, MotionTemplate.neutral(), controls)(motion)
        stage = Driving(src, MotionTemplate.neutral(), controls)
        parts = [stage(motion[a:b]) for a, b in ((0, 1), (1, 6), (6, 30), (30, 47))]
        for key in ("pitch", "yaw", "roll", "exp", "t", "scale") + (("eye",) if offline.eye is not None else ()):
            assert rel_err(torch.cat([getattr(p, key) for p in parts]), getattr(offline, key)) < 1e-6, key
        assert all(p.stitching == controls.stitching for p in parts)


def test_streamed_driving_follows_offline_layout(engine, avatar):
    """A flushed utterance that fits one chunk, with the look-ahead reaching exactly to the end of the window, is
    encoded on the span offline encodes and sampled in the one window offline samples: the same motion, the same
    driving parameters."""
    cfg = engine.motion_stack.generator.cfg
    audio = noise_audio(0.5, seed=5)  # 2 lead-in + 12 frames; offline: one window of L = 20 frames
    frames_padded = 2 + round(len(audio) / 640)
    controls = Controls(steps=4, seed=3)
    offline = engine.generate_motion(avatar, audio, controls, sample_rate=SR)
    with engine.stream(avatar, controls, render=False, chunk_ms=40 * cfg.n_motions,
                       lookahead_ms=40 * (cfg.n_motions - frames_padded)) as session:
        frames = session.push(audio, SR) + session.flush()
    for key in ("pitch", "yaw", "roll", "exp", "t", "scale"):
        assert rel_err(torch.cat([f.driving[key] for f in frames]), getattr(offline, key)) < 1e-4, key


# ------------------------------------------------------------------------------------------------ one frame renderer


@pytest.mark.parametrize("controls", [Controls(steps=2), Controls(steps=2, stitching=True, driving_multiplier=1.3,
                                                                  eye_openness=0.2, head_yaw=-6.0)],
                         ids=["defaults", "stitching-eye-pose"])
def test_stream_frames_equal_engine_render_of_their_driving(engine, avatar, controls):
    """The session draws its frames with the engine's one frame renderer: Engine.render of the driving parameters a
    session returns gives the session's images exactly."""
    from vasa_engine import Motion

    with engine.stream(avatar, controls, chunk_ms=120) as session:
        frames = push_all(session, noise_audio(0.6, seed=21), piece=2000)
        assert session._compute.engine.frame_renderer is engine.frame_renderer
    d = {k: torch.cat([f.driving[k] for f in frames]) for k in frames[0].driving}
    motion = Motion(**d, stitching=controls.stitching, driving_multiplier=controls.driving_multiplier)
    rendered = engine.render(avatar, motion, batch_size=engine.batch_size)
    assert np.array_equal(rendered, np.stack([f.image for f in frames]))


def test_sessions_share_the_engine_stages(engine, avatar):
    """Every session of an engine runs on the engine's own stages (one frame renderer, one motion sampler and their
    graph caches); turning graphs off for a session gives it an engine variant instead."""
    with engine.stream(avatar, render=False) as a, engine.stream(avatar, render=False) as b:
        for s in (a, b):
            assert s._compute.engine is engine
            assert s._compute.sampler is engine.motion_sampler
    cuda = Engine.__new__(Engine)  # graphs on without a GPU is not possible: check the variant rule on a stand-in
    cuda.__dict__.update(engine.__dict__, cuda_graphs=True)
    with cuda.stream(avatar, render=False, cuda_graphs=False) as c:
        assert c._compute.engine is not cuda and not c._compute.engine.cuda_graphs


# ------------------------------------------------------------------------------------------------ bad input, leaks


def _resources():
    fds = len(os.listdir("/proc/self/fd"))
    cuda = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    return len(threading.enumerate()), fds, cuda


def _settle(expected, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while _resources() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return _resources()


def test_bad_input_clear_errors_session_usable_no_leaks(engine, avatar):
    with engine.stream(avatar, render=False) as warm:  # imports and first-use allocations happen here
        push_all(warm, noise_audio(0.3))
        warm.push(noise_audio(0.1).astype(np.float64) * 1.0, 44100)
        warm.flush()
    before = _resources()
    good = noise_audio(0.4, seed=7)
    bad_cases = [
        (np.zeros(100, dtype=np.complex64), "dtype"),
        (np.zeros(100, dtype=bool), "dtype"),
        (np.array(["a", "b"]), "dtype"),
        (np.zeros((2, 3, 100), np.float32), "1-D"),
        (np.zeros((100, 20), np.float32), "channels"),
        (np.array([0.0, np.nan, 0.1], np.float32), "NaN or Inf"),
        (np.array([0.0, np.inf], np.float64), "NaN or Inf"),
        ([0.1, 0.2], "numpy array or torch tensor"),
    ]
    for _ in range(2):
        session = engine.stream(avatar, render=False)
        first = session.push(good[:3200], SR)
        for chunk, message in bad_cases:
            with pytest.raises(InputError, match=message):
                session.push(chunk, SR)
        for rate in (0, -5, 16000.0, True):
            with pytest.raises(InputError, match="sample_rate"):
                session.push(good[:100], rate)
        with pytest.raises(InputError, match="sample rate changed from 16000 Hz to 8000 Hz"):
            session.push(good[:100], 8000)
        # still usable: the rest of the utterance is streamed as if nothing had happened
        frames = first + session.push(good[3200:], SR) + session.flush()
        assert len(frames) == round(len(good) / 640) and [f.frame for f in frames] == list(range(len(frames)))
        # a new utterance may change the rate
        more = session.push(noise_audio(0.2)[:1600], 8000, new_utterance=True) + session.flush()
        assert len(more) == 5 and all(f.utterance > frames[-1].utterance for f in more)
        session.close()
        session.close()  # idempotent
        for call in (lambda: session.push(good, SR), session.flush, session.interrupt):
            with pytest.raises(StreamClosed, match="closed"):
                call()
        assert session.get(timeout=0.1) is None
        # a session closed in the middle of an utterance, with audio queued
        s2 = engine.stream(avatar, render=False)
        s2.push(noise_audio(1.0), SR, collect=False)
        s2.close()
        # a session whose compute fails: the error surfaces at the next call and the session closes
        def broken(*args):
            raise ValueError("broken denoiser")

        s3 = engine.stream(avatar, render=False, denoiser_factory=broken)
        with pytest.raises(RuntimeError, match="broken denoiser"):
            push_all(s3, noise_audio(0.5))
        assert s3.closed
        s3.close()
    assert _settle(before) == before  # threads, file descriptors, CUDA memory


def test_bad_settings(engine, avatar):
    for settings, message in (({"chunk_ms": 50}, "chunk_ms"), ({"chunk_ms": 40 * 1000}, "chunk_ms"),
                              ({"lookahead_ms": 30}, "lookahead_ms"), ({"past_ms": -1}, "past_ms"),
                              ({"max_pending_ms": 100}, "max_pending_ms"), ({"bogus": 1}, "unknown stream setting")):
        with pytest.raises(InputError, match=message):
            engine.stream(avatar, **settings)
    with pytest.raises(InputError, match="steps"):
        engine.stream(avatar, Controls(steps=0))


# ------------------------------------------------------------------------------------------------ threads, asyncio


def test_one_producer_one_consumer_thread(engine, avatar):
    audio = noise_audio(2.0, seed=8)
    expected = round(len(audio) / 640)
    got: list = []
    session = engine.stream(avatar, render=False)

    def consume():
        while len(got) < expected:
            frame = session.get(timeout=10)
            if frame is None:
                return
            got.append(frame)

    def produce():
        for a in range(0, len(audio), 1600):
            assert session.push(audio[a : a + 1600], SR, collect=False) == []
        session.flush(collect=False)

    threads = [threading.Thread(target=consume), threading.Thread(target=produce)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    session.close()
    assert [f.index for f in got] == list(range(expected))
    assert [f.frame for f in got] == list(range(expected))
    report = session.report()
    assert report.speech_frames == expected and report.chunk_ms == 200 and report.lookahead_ms == 80
    assert all(f.latency_s >= 0 and f.lookahead_s >= 0 and f.compute_s >= 0 for f in got)
    assert all(abs(f.latency_s - f.lookahead_s - f.compute_s) < 1e-6 for f in got)


def test_asyncio_form(engine, avatar):
    audio = noise_audio(1.0, seed=9)
    expected = round(len(audio) / 640)

    async def main():
        got = []
        async with engine.stream(avatar, render=False) as session:
            async def consume():
                async for frame in session.aframes():
                    got.append(frame)
                    if len(got) == expected:
                        return

            consumer = asyncio.create_task(consume())
            for a in range(0, len(audio), 3200):
                await session.apush(audio[a : a + 3200], SR, collect=False)
            await session.aflush(collect=False)
            await asyncio.wait_for(consumer, 30)
        return got, session

    got, session = asyncio.run(main())
    assert session.closed and [f.frame for f in got] == list(range(expected))


def test_back_pressure(engine, avatar):
    """A compute slower than the pushes: push(block=False) refuses audio beyond max_pending_ms, a blocking push
    waits, and nothing is lost."""
    def slow(w, audio, prev_motion, prev_audio):
        def x0_fn(x_t, t):
            time.sleep(0.02)
            return torch.zeros_like(x_t)
        return x0_fn

    audio = noise_audio(1.6, seed=10)
    with engine.stream(avatar, Controls(steps=5), render=False, denoiser_factory=slow,
                       max_pending_ms=400) as session:
        refused = 0
        for a in range(0, len(audio), 1600):
            try:
                session.push(audio[a : a + 1600], SR, block=False, collect=False)
            except StreamBusy as exc:
                refused += 1
                assert "max_pending_ms" in str(exc)
                session.push(audio[a : a + 1600], SR, collect=False)  # blocks until there is room
            assert session._pending <= 400 * 16 + 1600
        frames = session.flush()
    assert refused > 0
    assert len(frames) == round(len(audio) / 640)


# ------------------------------------------------------------------------------------------------ idle, interrupt


def test_idle_frames_keep_coming_and_blink(engine, avatar):
    """Audio runs short: the utterance ends by itself, then frames of the face at rest keep coming at the 25 fps
    clock, blinking once per period; the step from speech to rest is cross-faded."""
    session = engine.stream(avatar, render=False, idle=True, idle_slack_ms=400, end_after_ms=200,
                            blink_period_s=1.0, crossfade_frames=4)
    try:
        session.push(noise_audio(0.4, seed=11), SR, collect=False)
        frames = []
        deadline = time.monotonic() + 60
        while sum(f.kind == "idle" for f in frames) < 60 and time.monotonic() < deadline:
            frame = session.get(timeout=5)
            assert frame is not None, "the stream stalled"
            frames.append(frame)
    finally:
        session.close()
    kinds = [f.kind for f in frames]
    first_idle = kinds.index("idle")
    assert sum(k == "speech" for k in kinds) == 10 and set(kinds[first_idle:]) == {"idle"}
    assert [f.index for f in frames] == list(range(len(frames)))
    rest = avatar.rest_motion(1)
    settled = frames[first_idle + 4 :]
    for f in settled:
        assert torch.allclose(f.driving["yaw"], rest.yaw) and torch.allclose(f.driving["exp"], rest.exp)
    eye = torch.cat([f.driving["eye"] for f in frames[first_idle:]])
    open_ratio = float(avatar.eye_ratio.mean())
    assert eye.max().item() == pytest.approx(open_ratio) and eye.min().item() < 0.5 * open_ratio
    for start in range(0, len(eye) - 25, 25):  # one blink per second
        assert eye[start : start + 25].min().item() < 0.5 * open_ratio
    # cross-fade: the first idle frames move from the last speech frame towards rest gradually
    yaw = torch.cat([f.driving["yaw"] for f in frames])
    gap = (yaw[first_idle - 1] - rest.yaw).abs().item()
    assert (yaw[first_idle] - yaw[first_idle - 1]).abs().item() <= 0.5 * gap + 1e-6


def _interrupted(engine, avatar, crossfade: int):
    session = engine.stream(avatar, render=False, crossfade_frames=crossfade)
    try:
        session.push(noise_audio(3.0, seed=12), SR, collect=False)
        old = [session.get(timeout=30) for _ in range(8)]
        session.interrupt()
        new = session.push(noise_audio(0.6, seed=13), SR) + session.flush()
    finally:
        session.close()
    return old, new


def test_interrupt_starts_a_new_utterance(engine, avatar):
    """interrupt() drops the rest of the utterance; the next audio is a new utterance whose start is cross-faded
    from the last frame shown (against the same stream without the cross-fade, where the join is a jump)."""
    joins = []
    for crossfade in (6, 0):
        old, new = _interrupted(engine, avatar, crossfade)
        assert all(f.utterance == 0 for f in old) and len(new) == 15
        assert all(f.utterance == 1 and f.kind == "speech" for f in new)
        assert [f.index for f in new] == list(range(new[0].index, new[0].index + 15))
        exp = torch.cat([f.driving["exp"] for f in old[-1:] + new])
        yaw = torch.cat([f.driving["yaw"] for f in old[-1:] + new])
        joins.append(((exp[1] - exp[0]).abs().max().item(), (yaw[1] - yaw[0]).abs().item()))
    (exp_faded, yaw_faded), (exp_cut, yaw_cut) = joins
    assert exp_faded < 0.25 * exp_cut and yaw_faded < 0.25 * yaw_cut + 1e-6, joins


# ------------------------------------------------------------------------------------------------ rendering, CLI


def test_rendered_frames_and_latency_report(engine, avatar):
    audio = noise_audio(0.2, seed=14)
    with engine.stream(avatar) as session:
        frames = push_all(session, audio)
        report = session.report()
    assert len(frames) == 5
    assert all(f.image.shape == (engine.output_size, engine.output_size, 3) and f.image.dtype == np.uint8
               for f in frames)
    still = engine.render(avatar, avatar.rest_motion(1))
    assert still.shape[1:] == frames[0].image.shape
    text = report.summary()
    for word in ("chunk 200 ms", "look-ahead 80 ms", "p50", "p95", "max", "fps"):
        assert word in text
    assert report.speech_frames == 5 and math.isfinite(report.total["max"])


@pytest.mark.parametrize("extra", [[], ["--batched"]], ids=["threads", "batched"])
def test_stream_cli_writes_video_and_audio(tmp_path, tiny_full_weights, sample_image, sample_speech, extra):
    from vasa_engine.io.video import read_video_info

    out = tmp_path / "live.mp4"
    res = run("stream", "--image", sample_image, "--audio", sample_speech, "--weights", tiny_full_weights,
              "-o", out, "--frames", 8, "--fast", "--chunk-ms", 160, "--lookahead-ms", 40, *extra)
    assert res.returncode == 0, res.stderr
    for words in ("streamed 8 frames", "chunk 160 ms", "look-ahead 40 ms", "p50", "p95", "max", "sustained",
                  "fps"):
        assert words in res.stdout, res.stdout
    info = read_video_info(out)
    assert info["frames"] == 8 and info["has_audio"] and info["codec"] == "h264" and info["audio_codec"] == "aac"
    import av

    with av.open(str(out)) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.mp4"]


def test_stream_cli_bad_settings(tmp_path, tiny_full_weights, sample_image, sample_speech):
    from test_cli import _assert_clean_failure

    res = run("stream", "--image", sample_image, "--audio", sample_speech, "--weights", tiny_full_weights,
              "-o", tmp_path / "x.mp4", "--chunk-ms", 50)
    _assert_clean_failure(res, "chunk_ms must be a whole number of 40 ms", tmp_path)


# ------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_sessions_share_the_renderer_graphs(tiny_full_weights, sample_image):
    """Two sessions on one CUDA engine, one after the other and at once: the renderer's and the sampler's graphs
    are captured once per shape for the engine, not per session."""
    eng = Engine(tiny_full_weights, device="cuda", dtype="float32")
    av = eng.prepare(sample_image)
    audio = noise_audio(1.2, seed=16)
    with eng.stream(av, chunk_ms=200) as first:
        push_all(first, audio)
    renders, samplers = len(eng.render_graphs.calls), len(eng.sampler_graphs.calls)
    assert renders and samplers
    results = {}

    def run(i):
        with eng.stream(av, chunk_ms=200) as session:
            results[i] = push_all(session, audio)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(eng.render_graphs.calls) == renders and len(eng.sampler_graphs.calls) == samplers
    assert all(len(results[i]) == round(len(audio) / 640) for i in range(2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_sampler_matches_eager(tiny_full_weights, sample_image):
    eng = Engine(tiny_full_weights, device="cuda", dtype="float32")
    av = eng.prepare(sample_image)
    audio = noise_audio(1.2, seed=15)
    motions, images = [], []
    for graphs in (False, True):
        with eng.stream(av, render=True, cuda_graphs=graphs) as session:
            frames = push_all(session, audio)
            motions.append(torch.stack([f.generated for f in frames]))
            images.append(torch.from_numpy(np.stack([f.image for f in frames])).double())
            used = session._compute.engine
            assert bool(used.render_graphs.calls) == graphs and not used.render_graphs.failed
            assert bool(used.sampler_graphs.calls) == graphs and not used.sampler_graphs.failed
    assert rel_err(motions[1], motions[0]) < 1e-4
    assert images[0].shape == images[1].shape and rel_err(images[1], images[0]) < 1e-3
    # idle frames (blinks) through the captured renderer equal the eager ones
    idle = []
    for graphs in (False, True):
        with eng.stream(av, idle=True, idle_slack_ms=0, blink_period_s=1.0, cuda_graphs=graphs) as session:
            frames = [session.get(timeout=10) for _ in range(40)]  # a blink at frames 15 to 22
        assert all(f is not None and f.kind == "idle" for f in frames)
        idle.append(torch.from_numpy(np.stack([f.image for f in frames])).double())
    assert rel_err(idle[1], idle[0]) < 1e-3 and (idle[0][15:23] != idle[0][0]).any()

    def session_memory() -> int:
        with eng.stream(av) as session:
            push_all(session, audio)
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    # No growth per session. The first session may allocate for good (graphs of new shapes in the engine's shared
    # pools, cuBLAS workspaces); the sessions after it must not add to that, beyond allocator rounding.
    after_first = session_memory()
    for _ in range(3):
        assert session_memory() <= after_first + (1 << 20)
