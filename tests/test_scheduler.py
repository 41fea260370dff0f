"""Many streams on one device: the batched stage functions (motion windows and frames of several sessions in one
batch) against the per-session ones, and the device scheduler that runs them for every live session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import rel_err
from vasa_engine.driving import Motion
from vasa_engine.generation import Controls, WindowRequest, model_conditions

# --------------------------------------------------------------------------------------------- batched stages


def _request(engine, seed: int, controls: Controls, context: bool) -> WindowRequest:
    sampler = engine.motion_sampler
    cfg = sampler.cfg
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(1, cfg.n_motions, cfg.feature_dim, generator=gen)
    prev_m = torch.randn(1, cfg.n_prev_motions, cfg.motion_dim, generator=gen) if context else None
    prev_a = torch.randn(1, cfg.n_prev_motions, cfg.feature_dim, generator=gen) if context else None
    x_T = torch.randn(1, cfg.n_motions, cfg.motion_dim, generator=gen)
    return WindowRequest(audio, prev_m, prev_a, controls, x_T, model_conditions(controls, cfg),
                         sampler.ddpm_generator(controls))


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "ddim"])
def test_batched_windows_equal_one_window_each(engine, sampler):
    """Five windows of different streams (mixed guidance, conditions and start contexts) sampled together equal
    each one sampled alone."""
    with_gaze = Controls(steps=3, sampler=sampler, gaze=(5.0, -3.0), gaze_scale=1.5, seed=2)
    plain = Controls(steps=3, sampler=sampler, seed=1)
    controls = [plain, with_gaze, plain, plain, with_gaze]
    requests = [_request(engine, 10 + i, c, context=i != 2) for i, c in enumerate(controls)]
    sampler_ = engine.motion_sampler
    batched = sampler_.windows(requests)
    for i, r in enumerate(requests):
        alone = sampler_.window(r.audio, r.prev_motion, r.prev_audio, r.controls, r.x_T, r.conditions)
        assert batched[i].shape == alone.shape
        assert rel_err(batched[i], alone) < 1e-5, i


def test_batched_ddpm_windows_draw_each_streams_own_noise(engine):
    """The ancestral sampler's step noise of each row comes from that stream's own generator."""
    requests = [_request(engine, 30 + i, Controls(sampler="ddpm", seed=4 + i), True) for i in range(3)]
    batched = engine.motion_sampler.windows(requests)
    for i in range(3):
        r = _request(engine, 30 + i, Controls(sampler="ddpm", seed=4 + i), True)
        alone = engine.motion_sampler.window(r.audio, r.prev_motion, r.prev_audio, r.controls, r.x_T,
                                             ddpm_generator=r.ddpm_generator)
        assert rel_err(batched[i], alone) < 1e-5, i


@pytest.fixture(scope="module")
def avatars(engine, sample_image):
    from vasa_engine.io.image import load_image

    photo = load_image(sample_image)
    return [engine.prepare(photo), engine.prepare(np.ascontiguousarray(photo[:, ::-1])),
            engine.prepare(np.ascontiguousarray(photo[::-1]))]


def _motion(n: int, seed: int, eye: bool, lip: bool, blink: bool) -> Motion:
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    return Motion(pitch=r(n, scale=5), yaw=r(n, scale=5), roll=r(n, scale=5), exp=r(n, 21, 3, scale=0.02),
                  t=r(n, 3, scale=0.01), scale=1 + r(n, 1, scale=0.05),
                  eye=0.3 + r(n, scale=0.02) if eye else None, lip=0.2 + r(n, scale=0.02) if lip else None,
                  blink=torch.rand(n, generator=gen) if blink else None)


@pytest.mark.parametrize("eye,lip,blink", [(False, False, False), (True, True, False), (False, False, True),
                                           (True, False, True)])
def test_frame_rows_of_different_avatars_equal_one_avatar_each(engine, avatars, eye, lip, blink):
    """Five frames, each of its own avatar (rows cycling through three portraits): the batched float images equal
    each row rendered with its avatar alone, and the uint8 frames are those images converted."""
    frames = engine.frame_renderer
    rows = [avatars[i % 3] for i in range(5)]
    motion = _motion(5, seed=3, eye=eye, lip=lip, blink=blink)
    images = frames.images_rows(rows, motion)
    for i, avatar in enumerate(rows):
        alone = frames.images_rows([avatar], motion[i : i + 1])
        assert rel_err(images[i : i + 1], alone) < 1e-5, i
    launched = torch.full((5, *images.shape[2:], 3), 7, dtype=torch.uint8)
    launched[:] = frames.launch_rows(rows, motion).wait()
    expected = (images.float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(launched, expected)
    single = frames.launch(rows[1], motion[1:2]).wait()
    assert (single.int() - launched[1:2].int()).abs().max() <= 1


def test_frame_rows_refuse_mismatched_counts(engine, avatars):
    with pytest.raises(ValueError, match="2 avatars for 3 frames"):
        engine.frame_renderer.launch_rows(avatars[:2], _motion(3, 0, False, False, False))


# --------------------------------------------------------------------------------------------- the scheduler


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeStages:
    """Stages whose cost is charged to a fake clock: a window batch 2 ms + 0.3 ms per row a step, a frame batch
    2 ms + 1 ms a row. A window returns its start noise plus its audio's mean; a frame row is (avatar id, pitch)."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.batches: list[tuple[str, int]] = []

    def windows(self, requests):
        steps = requests[0].controls.steps
        self.clock.t += steps * (0.002 + 0.0003 * len(requests))
        self.batches.append(("windows", len(requests)))
        return [r.x_T + r.audio.mean() for r in requests]

    def frames(self, avatars, motion):
        from vasa_engine.frames import RenderedFrames

        self.clock.t += 0.002 + 0.001 * len(motion)
        self.batches.append(("frames", len(motion)))
        return RenderedFrames(torch.stack([torch.tensor([float(a), 0.0]) for a in avatars]) + torch.stack(
            [torch.zeros(len(motion)), motion.pitch], dim=1))


def _fake_request(seed: int, steps: int = 5) -> WindowRequest:
    gen = torch.Generator().manual_seed(seed)
    return WindowRequest(torch.randn(1, 6, 4, generator=gen), None, None, Controls(steps=steps),
                         torch.randn(1, 6, 3, generator=gen))


def _fake_motion(first: int, n: int, seed: int) -> Motion:
    m = _motion(n, seed, eye=False, lip=False, blink=False)
    m.pitch = torch.arange(first, first + n, dtype=torch.float32)
    return m


class SimulatedStream:
    """A session on the fake clock: 25 fps audio from `start`, arriving in pieces of `piece` frames, planned in
    chunks of `chunk` frames; each chunk is a window job, then a frames job once the window is back."""

    def __init__(self, sid: int, chunk: int, piece: int, start: float, frames: int, budget: float):
        self.sid, self.chunk, self.piece, self.start, self.total, self.budget = sid, chunk, piece, start, frames, budget
        self.planned = 0
        self.window = self.frames = None
        self.out: list[tuple[float, float]] = []  # (avatar id, pitch) per frame, in the order handed back
        self.late: list[float] = []

    def arrived(self, now: float) -> int:
        """Frames whose audio has arrived by `now` (audio arrives a piece at a time)."""
        whole = int((now - self.start) / 0.04 + 1e-9)
        return min(self.total, max(0, whole // self.piece * self.piece))

    def audio_in(self, frame: int) -> float:
        return self.start + ((frame // self.piece) + 1) * self.piece * 0.04

    def next_arrival(self, now: float) -> float | None:
        if self.planned >= self.total:
            return None
        need = min(self.total, self.planned + self.chunk)
        return self.audio_in(need - 1)

    def poll(self, sched, slot, now: float) -> None:
        if self.frames is not None and self.frames.done:
            first = self.frames.payload[1].pitch[0].item()
            rows = torch.cat([p.frames for p in self.frames.wait()])
            self.out += [tuple(r.tolist()) for r in rows]
            if self.frames.finished > self.frames.deadline + 1e-9:
                self.late.append(first)
            self.frames = None
        if self.window is not None and self.window.done:
            self.window.wait()
            a, n = self.window_first, self.window_frames
            self.frames = sched.submit_frames(slot, self.sid, _fake_motion(a, n, self.sid), self.window.deadline)
            self.window = None
        if self.window is None and self.frames is None and self.planned < self.total:
            ready = self.arrived(now)
            n = min(self.chunk, self.total - self.planned)
            if ready >= self.planned + n:
                self.window_first, self.window_frames = self.planned, n
                deadline = self.audio_in(self.planned) + self.budget
                self.window = sched.submit_window(slot, _fake_request(self.sid * 100 + self.planned), deadline)
                self.planned += n


def _simulate(streams, sched, clock) -> None:
    from vasa_engine.scheduler import DeviceScheduler

    assert isinstance(sched, DeviceScheduler)
    slots = [sched.open_slot() for _ in streams]
    for _ in range(10_000):
        for s, slot in zip(streams, slots):
            s.poll(sched, slot, clock.t)
        if sched.run_round() == 0:
            if all(s.planned >= s.total and s.window is None and s.frames is None for s in streams):
                break
            upcoming = [t for s in streams if (t := s.next_arrival(clock.t)) is not None and t > clock.t]
            clock.t = min(upcoming) if upcoming else clock.t + 0.001
    for slot in slots:
        sched.close_slot(slot)


def test_scheduler_keeps_order_and_deadlines_on_a_fake_clock():
    """Four streams with different chunk sizes, audio piece sizes and start times on a fake clock: every stream
    gets exactly its own frames, in order; the load is feasible, so every frame is on time; work is batched."""
    from vasa_engine.scheduler import DeviceScheduler

    clock = FakeClock()
    stages = FakeStages(clock)
    sched = DeviceScheduler(stages, clock=clock, threaded=False)
    streams = [SimulatedStream(sid, chunk, piece, 100.0 + start, frames, budget=(chunk + 5) * 0.04)
               for sid, chunk, piece, start, frames in [(1, 5, 1, 0.0, 53), (2, 3, 2, 0.013, 40),
                                                        (3, 8, 3, 0.031, 61), (4, 5, 5, 0.2, 37)]]
    _simulate(streams, sched, clock)
    for s in streams:
        assert s.out == [(float(s.sid), float(i)) for i in range(s.total)]
        assert s.late == []
    assert max(n for kind, n in stages.batches if kind == "frames") > 5  # frames of several streams in one batch
    assert max(n for kind, n in stages.batches if kind == "windows") > 1
    assert sched.open_slots == 0 and sched.queued == 0


def test_scheduler_degrades_a_window_that_would_be_late():
    """A window whose deadline its full steps cannot meet runs with fewer steps (recorded in the job); the
    on-time window beside it keeps its steps."""
    from vasa_engine.scheduler import DeviceScheduler

    clock = FakeClock()
    sched = DeviceScheduler(FakeStages(clock), clock=clock, threaded=False)
    slot_a, slot_b = sched.open_slot(), sched.open_slot()
    sched.submit_window(slot_a, _fake_request(1), clock.t + 1.0)
    sched.run_round()  # measures the cost of a step
    late = sched.submit_window(slot_a, _fake_request(2), clock.t + 0.004)
    on_time = sched.submit_window(slot_b, _fake_request(3), clock.t + 1.0)
    sched.run_round()
    assert on_time.steps == 5 and on_time.finished <= on_time.deadline
    assert 1 <= late.steps < 5
    assert late.wait().shape == (1, 6, 3)


def test_admission_uses_the_measured_frame_rate(engine, avatar):
    """With a measured 60 fps, two 25 fps streams fit and a third is refused with one clear line, through
    Engine.stream(..., batched=True) too; closing one makes room again. Nothing is refused before a measurement."""
    from vasa_engine.scheduler import DeviceScheduler, RateMeter
    from vasa_engine.streaming import StreamBusy

    clock = FakeClock()
    sched = DeviceScheduler(FakeStages(clock), clock=clock, threaded=False)
    slots = [sched.open_slot() for _ in range(5)]  # nothing measured yet
    for slot in slots:
        sched.close_slot(slot)
    sched.meter.add(60, 1.0)
    a, b = sched.open_slot(), sched.open_slot()
    with pytest.raises(StreamBusy, match="sustains 60.0 fps"):
        sched.open_slot()
    sched.close_slot(a)
    sched.close_slot(sched.open_slot())
    sched.close_slot(b)

    real = engine.scheduler
    saved = real.meter
    real.meter = RateMeter()
    real.meter.add(30, 1.0)
    try:
        with engine.stream(avatar, batched=True, render=False):
            with pytest.raises(StreamBusy, match="no room for one more 25 fps stream"):
                engine.stream(avatar, batched=True, render=False)
        assert real.open_slots == 0
    finally:
        real.meter = saved


# --------------------------------------------------------------------------------------------- batched sessions

SR = 16000


def _noise(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(round(seconds * SR))).astype(np.float32)


def _run_session(engine, avatar, audio, controls, piece, **settings):
    with engine.stream(avatar, controls, **settings) as session:
        frames = []
        for a in range(0, len(audio), piece):
            frames += session.push(audio[a : a + piece], SR)
        return frames + session.flush()


@pytest.fixture
def open_admission(engine):
    """The real scheduler admits every session (the CPU's measured rate is far below 25 fps a stream)."""
    sched = engine.scheduler
    sched.admission = False
    yield sched
    sched.admission = True


def test_batched_sessions_equal_sessions_run_alone(engine, avatars, open_admission):
    """Three sessions (own portraits, seeds, chunk sizes and push sizes) through the scheduler at the same time
    give the frames the same sessions give one at a time on their own."""
    import threading

    cases = [(avatars[0], Controls(steps=3, seed=1), 0.7, 1500, {"chunk_ms": 120}),
             (avatars[1], Controls(steps=3, seed=2, gaze=(4.0, 2.0)), 0.5, 2300, {"chunk_ms": 200}),
             (avatars[2], Controls(steps=3, seed=3), 0.6, 640, {"chunk_ms": 80, "lookahead_ms": 40})]
    alone = [_run_session(engine, av, _noise(sec, i), c, piece, **kw)
             for i, (av, c, sec, piece, kw) in enumerate(cases)]
    together: list = [None] * len(cases)

    def run(i):
        av, c, sec, piece, kw = cases[i]
        together[i] = _run_session(engine, av, _noise(sec, i), c, piece, batched=True, latency_budget_ms=60_000,
                                   **kw)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for i, (ref, got) in enumerate(zip(alone, together)):
        assert got is not None and len(got) == len(ref) > 0, i
        assert [f.frame for f in got] == [f.frame for f in ref]
        assert rel_err(torch.stack([f.generated for f in got]), torch.stack([f.generated for f in ref])) < 1e-5
        for key in ref[0].driving:
            a = torch.cat([f.driving[key] for f in got])
            assert rel_err(a, torch.cat([f.driving[key] for f in ref])) < 1e-5, key
        img, ref_img = np.stack([f.image for f in got]).astype(int), np.stack([f.image for f in ref]).astype(int)
        assert np.abs(img - ref_img).max() <= 1 and (img != ref_img).mean() < 1e-3
        assert all(f.steps == 3 for f in got if f.kind == "speech")
    assert engine.scheduler.open_slots == 0


def test_open_close_cycles_leak_nothing(engine, avatar, open_admission):
    """1,000 batched sessions opened and closed: no thread, slot or queued job is left behind."""
    import threading

    with engine.stream(avatar, batched=True, render=False):
        pass  # the scheduler's thread starts here
    threads = len(threading.enumerate())
    for _ in range(1000):
        engine.stream(avatar, batched=True, render=False).close()
    sched = engine.scheduler
    assert sched.open_slots == 0 and sched.queued == 0
    assert len(threading.enumerate()) == threads


class HeldStages:
    """The engine's stages, with every window batch held until `go` is set (to close a session mid-batch)."""

    def __init__(self, stages):
        self.stages, self.go, self.entered = stages, __import__("threading").Event(), __import__("threading").Event()

    def windows(self, requests):
        self.entered.set()
        self.go.wait(60)
        return self.stages.windows(requests)

    def frames(self, avatars, motion):
        return self.stages.frames(avatars, motion)

    def context(self):
        return self.stages.context()


def test_close_and_interrupt_mid_batch_touch_no_other_session(engine, avatars, open_admission):
    """One session closed and another interrupted while their windows are in a running batch: the third session's
    frames are those it gives alone, the interrupted one goes on with its next utterance, and the closed one's
    slot is freed."""
    import threading

    sched = engine.scheduler
    controls = Controls(steps=2, seed=5)
    audio = _noise(0.5, 9)
    alone = _run_session(engine, avatars[2], audio, controls, 2000, render=False)
    held = HeldStages(sched.stages)
    sched.stages = held
    try:
        closed = engine.stream(avatars[0], controls, batched=True, render=False)
        interrupted = engine.stream(avatars[1], controls, batched=True, render=False)
        other: list = []
        worker = threading.Thread(target=lambda: other.extend(
            _run_session(engine, avatars[2], audio, controls, 2000, batched=True, render=False,
                     latency_budget_ms=60_000)))
        worker.start()
        closed.push(_noise(0.4, 1), SR)
        interrupted.push(_noise(0.4, 2), SR)
        assert held.entered.wait(60)
        closed.close()
        interrupted.interrupt()
        held.go.set()
        again = interrupted.push(_noise(0.3, 3), SR) + interrupted.flush()
        interrupted.close()
        worker.join(120)
    finally:
        sched.stages = held.stages
    assert {f.utterance for f in again} == {1} and len(again) == 8
    assert [f.frame for f in other] == [f.frame for f in alone]
    assert rel_err(torch.stack([f.generated for f in other]), torch.stack([f.generated for f in alone])) < 1e-5
    assert sched.open_slots == 0 and sched.queued == 0


# --------------------------------------------------------------------------------------------- CUDA graphs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_rows_and_windows_match_eager(tiny_full_weights, sample_image):
    """Row batches of 3 and 5 frames (padded to the buckets 4 and 8) and batched windows replayed from CUDA
    graphs equal the eager ones; a bucket's graph is captured once and replayed for other avatars and motion."""
    from vasa_engine import Engine
    from vasa_engine.io.image import load_image

    eng = Engine(tiny_full_weights, device="cuda", dtype="float32")
    eager = eng.variant(cuda_graphs=False)
    photo = load_image(sample_image)
    avs = [eng.prepare(photo), eng.prepare(np.ascontiguousarray(photo[:, ::-1]))]
    for n, seed in ((3, 1), (5, 2), (3, 3)):
        rows = [avs[(i + seed) % 2] for i in range(n)]
        motion = _motion(n, seed, eye=True, lip=seed == 2, blink=seed == 3)
        graphed = eng.frame_renderer.launch_rows(rows, motion).wait().double()
        ref = eager.frame_renderer.launch_rows(rows, motion).wait().double()
        assert graphed.shape == ref.shape and rel_err(graphed, ref) < 1e-3
    keys = list(eng.render_graphs.calls)
    assert len(keys) == 3 and not eng.render_graphs.failed  # (4, eye), (8, eye + lip), (4, eye + blink)
    controls = Controls(steps=3, seed=1)
    requests = [_request(eng, i, controls, context=i % 2 == 0) for i in range(3)]
    for r in requests:
        r.audio, r.x_T = r.audio.cuda(), r.x_T.cuda()
        r.prev_motion = r.prev_motion.cuda() if r.prev_motion is not None else None
        r.prev_audio = r.prev_audio.cuda() if r.prev_audio is not None else None
    graphed = eng.motion_sampler.windows(requests)
    ref = eager.motion_sampler.windows(requests)
    assert eng.sampler_graphs.calls and not eng.sampler_graphs.failed
    for a, b in zip(graphed, ref):
        assert rel_err(a, b) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_sessions_on_cuda(tiny_full_weights, sample_image):
    """Four batched sessions at once on a CUDA engine give the frames each gives on its own, unbatched."""
    import threading

    from vasa_engine import Engine

    eng = Engine(tiny_full_weights, device="cuda", dtype="float32")
    eng.scheduler.admission = False
    av = eng.prepare(sample_image)
    audio = [_noise(0.8, i) for i in range(4)]
    alone = [_run_session(eng, av, a, Controls(steps=3, seed=i), 1600) for i, a in enumerate(audio)]
    together: list = [None] * 4

    def run(i):
        together[i] = _run_session(eng, av, audio[i], Controls(steps=3, seed=i), 1600, batched=True,
                                   latency_budget_ms=60_000)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for ref, got in zip(alone, together):
        assert got is not None and [f.frame for f in got] == [f.frame for f in ref]
        assert rel_err(torch.stack([f.generated for f in got]), torch.stack([f.generated for f in ref])) < 1e-4
        images = [torch.from_numpy(np.stack([f.image for f in x])).double() for x in (got, ref)]
        assert rel_err(*images) < 1e-3
    assert eng.scheduler.open_slots == 0


@pytest.mark.parametrize("settings,message", [({"batched": "yes"}, "batched must be True or False"),
                                              ({"batched": True, "latency_budget_ms": 0}, "latency_budget_ms"),
                                              ({"batched": True, "denoiser_factory": lambda *a: None},
                                               "denoiser_factory is not supported")])
def test_bad_batched_settings(engine, avatar, settings, message):
    from vasa_engine import InputError

    slots = engine.scheduler.open_slots
    with pytest.raises(InputError, match=message):
        engine.stream(avatar, **settings)
    assert engine.scheduler.open_slots == slots


def test_bucket_padding_of_the_graph_paths_changes_no_row(engine, avatars):
    """The paths CUDA graphs take (rows padded to the bucket, the renderer's static per-bucket source buffers),
    run here eagerly (a graph cache on CPU tensors runs its function): 3 windows (ddpm, padded to 4) and batches of
    3, 5 and 3 frames (padded to 4 and 8, the bucket buffers refilled with other avatars) equal the plain ones
    (frames: to a level of the uint8 image)."""
    from vasa_engine.frames import FrameRenderer
    from vasa_engine.generation import MotionSampler
    from vasa_engine.graphs import GraphCache

    padded = MotionSampler(engine.motion_sampler.model, GraphCache("sampler loop", enabled=True))
    requests = [_request(engine, 50 + i, Controls(sampler="ddpm", seed=i), i != 1) for i in range(3)]
    again = [_request(engine, 50 + i, Controls(sampler="ddpm", seed=i), i != 1) for i in range(3)]
    for a, b in zip(padded.windows(requests), engine.motion_sampler.windows(again)):
        assert a.shape == b.shape and rel_err(a, b) < 1e-5
    plain = engine.frame_renderer
    bucketed = FrameRenderer(plain.renderer, plain.device, plain.backend, cuda_graphs=False)
    bucketed.graphs = GraphCache("renderer", enabled=True)
    for n, seed in ((3, 1), (5, 2), (3, 3)):
        rows = [avatars[(i + seed) % 3] for i in range(n)]
        motion = _motion(n, seed, eye=seed != 2, lip=True, blink=seed == 3)
        got = bucketed.launch_rows(rows, motion).wait().int()
        ref = plain.launch_rows(rows, motion).wait().int()
        # a convolution over 8 rows may round differently from one over 5: a level at most, on a few pixels
        assert got.shape == ref.shape and (got - ref).abs().max() <= 1 and (got != ref).float().mean() < 1e-3
    assert sorted(bucketed._row_sources) == [4, 8]


def test_a_session_that_cannot_keep_its_budget_is_degraded_visibly(engine, avatar, open_admission):
    """A batched session with a 1 ms latency budget: once the scheduler has measured a step, its windows run with
    fewer steps than asked, and its frames say so; every frame still comes, in order."""
    sched = open_admission
    slot = sched.open_slot()
    sched.submit_window(slot, _request(engine, 1, Controls(steps=4), True), 0.0).wait(60)  # measures a step
    sched.close_slot(slot)
    assert sched.step_cost is not None
    with engine.stream(avatar, Controls(steps=4, seed=1), batched=True, latency_budget_ms=1, render=False,
                       chunk_ms=120) as session:
        audio = _noise(0.5, 4)
        frames = [f for a in range(0, len(audio), 1600) for f in session.push(audio[a : a + 1600], SR)]
        frames += session.flush()
        report = session.report()
    assert [f.frame for f in frames] == list(range(len(frames))) and len(frames) == 12
    assert all(1 <= f.steps < 4 for f in frames)
    assert report.degraded_frames == 12 and "12 with fewer sampler steps" in report.summary()
    assert sched.open_slots == 0
