"""Dubbing on reduced sizes: a clip whose face (a stand-in blob the stand-in face models find) moves and changes size,
with a cut to a shot with no face and a cut to another shot; the output's frames, rate and audio, the pixels outside
the pasted face, the driving parameters of every frame against their definition, the timing plan, and bad input."""

import struct
from fractions import Fraction

import numpy as np
import pytest
import torch

from test_cli import _assert_clean_failure, run
from test_faces import _build_models, blob_photo
from vasa_engine import Engine
from vasa_engine.controls import Controls
from vasa_engine.driving import LIP_KEYPOINTS
from vasa_engine.dubbing import CropSmoothing, SourceVideo, dub_expression, plan, read_source_video, resample
from vasa_engine.dubbing import run as dub_run
from vasa_engine.dubbing.run import FaceSources
from vasa_engine.dubbing.schedule import ping_pong
from vasa_engine.dubbing.sources import scene_cuts, tracked_alignment
from vasa_engine.dubbing.tracking import crop_matrix, crop_point, face_tracks, smoothed_crops
from vasa_engine.errors import InputError
from vasa_engine.io.audio import write_wav
from vasa_engine.io.video import VideoWriter, read_video_info

FPS = 10
SIZE = (320, 240)
NO_FACE = 7  # the shot of frames 7 and 8 has no face
SECOND_SHOT = 9


def clip_frames() -> list[np.ndarray]:
    """Frames 0-6: the face moves right and grows; 7-8: a grey shot with no face; 9-11: the face elsewhere on a
    brighter background."""
    frames = [blob_photo(SIZE, [(120.0 + 8 * i, 110.0 + 3 * i, 12.0 + 0.6 * i, 255)]) for i in range(NO_FACE)]
    frames += [np.full((SIZE[1], SIZE[0], 3), 160, np.uint8)] * 2
    for i in range(3):
        frame = blob_photo(SIZE, [(200.0 - 5 * i, 140.0, 14.0, 255)])
        frame[..., 2] = np.maximum(frame[..., 2], 200)
        frames.append(frame)
    return frames


def write_clip(path, frames, fps=FPS):
    with VideoWriter(path, fps=fps, crf=10) as writer:
        writer.write(np.stack(frames))
    return path


@pytest.fixture(scope="module")
def face_models(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return _build_models(tmp_path_factory.mktemp("dub_face_models"))


@pytest.fixture(scope="module")
def dub_engine(tiny_full_weights, face_models):
    return Engine(tiny_full_weights, device="cpu", face_models=face_models)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("dub") / "clip.mp4", clip_frames())


def speech(tmp_path, seconds, name="speech.wav"):
    samples = np.random.default_rng(1).normal(0, 0.1, int(seconds * 16000)).astype(np.float32)
    return write_wav(tmp_path / name, samples)


@pytest.fixture(scope="module")
def dub_with_batches(dub_engine, clip, tmp_path_factory):
    """The dub of the clip, and the batches it rendered."""
    audio = speech(tmp_path_factory.mktemp("speech"), 1.0)  # 10 of the 12 frames, then the fade
    return dub_recording_batches(dub_engine, clip, audio, fade_frames=1, encode_batch=3, render_batch=4)


def dub_recording_batches(engine, video, audio, **options):
    """engine.dub(video, audio, **options), and the (source rows, motion, uint8 frames) of every batch it rendered."""
    batches, render_rows = [], dub_run._render_rows

    def recorded(engine, rows, motion):
        frames = render_rows(engine, rows, motion)
        batches.append((rows, motion, frames.clone()))
        return frames

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dub_run, "_render_rows", recorded)
        return engine.dub(video, audio, **options), batches


@pytest.fixture(scope="module")
def dubbed(dub_with_batches):
    return dub_with_batches[0]


def test_frames_rate_and_report(dubbed, clip):
    source = read_source_video(clip)
    assert dubbed.frames.shape == (12, SIZE[1], SIZE[0], 3) and dubbed.fps == pytest.approx(FPS)
    r = dubbed.report
    # faces in frames 0-6 and 9-11; frame 10 cross-fades, frame 11 is after the speech and its fade
    assert (r.frames, r.dubbed, r.passed_through, r.scene_cuts, r.face_tracks) == (12, 9, 3, 2, 2)
    assert [m is None for m in dubbed.driving] == [False] * 7 + [True] * 2 + [False] * 2 + [True]
    for j in (NO_FACE, NO_FACE + 1, 11):  # passed through: the decoded frame itself
        assert np.array_equal(dubbed.frames[j], source.frames[j])
    assert dubbed.schedule.weight.tolist() == [1.0] * 10 + [0.5, 0.0]


def test_outside_the_face_is_the_source_frame(dubbed, dub_engine, clip):
    from vasa_engine.faces import MASK, feather_mask

    source = read_source_video(clip)
    assert sorted(dubbed.crops) == [j for j, m in enumerate(dubbed.driving) if m is not None]
    for j, motion in enumerate(dubbed.driving):
        if motion is None:
            continue
        ys, xs = np.mgrid[0 : SIZE[1], 0 : SIZE[0]].astype(np.float64)
        m = dubbed.crops[j]  # the frame's face crop, as tracked
        size = dub_engine.face_aligner.crop_spec.size
        weight = feather_mask(torch.from_numpy(m[0, 0] * xs + m[0, 1] * ys + m[0, 2]),
                              torch.from_numpy(m[1, 0] * xs + m[1, 1] * ys + m[1, 2]), size, MASK).numpy()
        outside = weight == 0
        assert outside.mean() > 0.2
        assert np.array_equal(dubbed.frames[j][outside], source.frames[j][outside])
        assert not np.array_equal(dubbed.frames[j][~outside], source.frames[j][~outside])


def test_driving_follows_its_definition(dubbed, dub_engine, clip):
    from vasa_engine.io.image import resize, to_tensor

    source = read_source_video(clip)
    pose = {name: ([], []) for name in ("pitch", "yaw", "roll", "t", "scale")}
    others = [k for k in range(21) if k not in LIP_KEYPOINTS]
    lips = list(LIP_KEYPOINTS)
    own_exp, got_exp = [], []
    for j, motion in enumerate(dubbed.driving):
        if motion is None:
            continue
        # the frame's own parameters, its tracked crop encoded alone (the dub encodes in batches of 3)
        aligner = dub_engine.face_aligner
        detected = aligner.align(source.frames[j])
        crop = tracked_alignment(aligner, source.frames[j], detected, dubbed.crops[j]).crop
        own = dub_engine.renderer.encode_source(to_tensor(resize(crop, dub_engine.renderer.cfg.input_size)))
        for name, (want, got) in pose.items():
            want.append(getattr(own, name).double().reshape(-1))
            got.append(getattr(motion, name).double().reshape(-1))
        own_exp.append(own.exp.double()[0])
        got_exp.append(motion.exp.double()[0])
    # batched and single encodings agree to float32 rounding, summed over the frames
    for name, (want, got) in pose.items():
        want, got = torch.cat(want), torch.cat(got)
        assert ((got - want).norm() / want.norm()).item() < 1e-4, name
    own_exp, got_exp = torch.stack(own_exp), torch.stack(got_exp)
    assert ((got_exp[:, others] - own_exp[:, others]).norm() / own_exp[:, others].norm()).item() < 1e-4
    # the lips are the generated motion's: not the frame's own, and moving with the speech
    assert ((got_exp[:, lips] - own_exp[:, lips]).norm() / own_exp[:, lips].norm()).item() > 1e-2
    assert not torch.allclose(got_exp[0, lips], got_exp[1, lips])


def test_batched_rendering_equals_per_frame(dub_with_batches, dub_engine):
    """The dub renders 4 frames a batch, each row from its own source frame (a batch spans the scene cut): each row
    equals the frame rendered alone, as float images (float32 rounding: another batch size runs other convolution
    kernels) and as the uint8 frames of the per-frame path."""
    result, batches = dub_with_batches
    assert [len(motion) for _, motion, _ in batches] == [4, 4, 1]  # the 9 dubbed frames
    assert [float(r.photo[..., 2].mean()) > 150 for r in batches[1][0]] == [False] * 3 + [True]  # frames 4-6, 9
    renderer = dub_engine.frame_renderer
    size = dub_engine.output_size
    for rows, motion, frames in batches:
        together = renderer.images_rows(rows, motion)
        alone = torch.full((len(rows), 3, size, size), float("nan"))
        one_by_one = torch.full((len(rows), size, size, 3), float("nan"))
        for k, row in enumerate(rows):
            alone[k] = renderer.images_rows([row], motion[k : k + 1])[0]
            one_by_one[k] = dub_engine.render_on_device(row, motion[k : k + 1])[0].float()
        assert torch.isfinite(alone).all() and torch.isfinite(one_by_one).all()
        assert ((together - alone).double().norm() / alone.double().norm()).item() < 1e-5
        # the uint8 conversion truncates: a float difference of d flips about 255 d of the values by one level
        flips = (frames.double() - one_by_one.double()).abs()
        assert flips.max().item() <= 1 and (flips > 0).double().mean().item() < 2e-3
    assert [m is not None for m in result.driving].count(True) == sum(len(rows) for rows, _, _ in batches)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_batched_rows_replay_graphs_and_match_per_frame(tiny_full_weights):
    """On CUDA (float16, the kernels, the renderer's row graphs) without face models (the centre crop) and without
    PyAV (frames and speech in memory): each batch of 4 rows against the frames rendered one at a time, within the
    float16 bound of the bench's correctness check."""
    from vasa_engine.bench.correctness import BOUNDS

    engine = Engine(tiny_full_weights, device="cuda")
    frames = clip_frames()
    source = SourceVideo(frames, float(FPS), 0, np.arange(len(frames)) / FPS, "clip")
    samples = np.random.default_rng(1).normal(0, 0.1, 16000).astype(np.float32)
    result, batches = dub_recording_batches(engine, source, samples, sample_rate=16000, fade_frames=1, render_batch=4)
    assert result.report.dubbed == 11 and [len(m) for _, m, _ in batches] == [4, 4, 3]
    assert engine.render_graphs.calls and not engine.render_graphs.failed
    for rows, motion, got in batches:
        want = torch.cat([engine.render_on_device(row, motion[k : k + 1]) for k, row in enumerate(rows)])
        err = ((got.double() - want.double()).norm() / want.double().norm()).item()
        assert err < BOUNDS["float16"], err


def static_face_frames(count: int) -> list[np.ndarray]:
    """A face that holds still, each frame with noise of its own (up to 3 levels), as a camera's."""
    rng = np.random.default_rng(3)
    still = blob_photo(SIZE, [(150.0, 120.0, 14.0, 255)]).astype(np.int16)
    return [np.clip(still + rng.integers(-3, 4, still.shape), 0, 255).astype(np.uint8) for _ in range(count)]


def test_a_face_that_holds_still_keeps_one_crop(dub_engine):
    count = 8
    source = SourceVideo(static_face_frames(count), 25.0, 0, np.arange(count) / 25.0, "still")
    faces = FaceSources(dub_engine, source, list(range(count)), CropSmoothing(), 8)
    detected = [faces.detected[i].image_to_crop for i in range(count)]
    assert any(not np.array_equal(detected[0], m) for m in detected[1:])  # the detections jitter
    assert faces.tracks == 1 and sorted(faces.crops) == list(range(count))
    assert all(np.array_equal(faces.crops[i], faces.crops[0]) for i in range(count))  # the crop does not
    # and it is where the face is: within the dead band of the detections' mean
    size = dub_engine.face_aligner.crop_spec.size
    mean = np.mean([crop_point(m, size) for m in detected], axis=0)
    held = crop_point(faces.crops[0], size)
    assert np.hypot(*(held[:2] - mean[:2])) <= 2 * CropSmoothing().hold * np.exp(mean[2])
    avatars = faces.avatars(range(count))
    assert all(np.array_equal(avatars[i].alignment.image_to_crop, faces.crops[0]) for i in range(count))
    unsmoothed, tracks = smoothed_crops(dict(enumerate(detected)), faces.cuts, source.fps, size, None)
    assert tracks == 1 and all(np.array_equal(unsmoothed[i], detected[i]) for i in range(count))


def test_face_tracks_reset_at_a_cut_a_lost_face_and_a_jump():
    size = 512
    rng = np.random.default_rng(4)
    face = np.array([100.0, 80.0, np.log(200.0), 0.05])
    moved = face + [60.0, 10.0, -0.1, -0.08]  # 0.3 of the side away: the same track unless a cut ends it
    far = face + [220.0, 0.0, 0.0, 0.0]  # 1.1 sides away in one frame: another face

    def detections(point, frames):
        return {i: crop_matrix(point + rng.normal(0, [0.4, 0.4, 1e-3, 1e-3]), size) for i in frames}

    matrices = {**detections(face, range(0, 5)), **detections(moved, range(5, 9)), 9: None,
                **detections(moved, range(10, 13)), **detections(far, range(13, 16))}
    crops, tracks = smoothed_crops(matrices, [5], 25.0, size)
    assert tracks == 4
    for frames in (range(0, 5), range(5, 9), range(10, 13), range(13, 16)):
        alone, one = smoothed_crops({i: matrices[i] for i in frames}, [], 25.0, size)
        assert one == 1 and all(np.array_equal(crops[i], alone[i]) for i in frames)  # nothing carried over
        assert all(np.array_equal(crops[i], crops[frames[0]]) for i in frames)  # each shot holds still
    joined, tracks = smoothed_crops(matrices, [], 25.0, size)  # without the cut, 0-8 is one track
    assert tracks == 3 and not np.array_equal(joined[5], crops[5])
    assert face_tracks({i: None if m is None else crop_point(m, size) for i, m in matrices.items()}, [5],
                       CropSmoothing().lost_jump) == [list(range(0, 5)), list(range(5, 9)), [10, 11, 12],
                                                      [13, 14, 15]]


def test_a_moving_face_is_followed_within_the_dead_band():
    size, fps, speed = 512, 25.0, 3.0  # pixels a frame
    smoothing = CropSmoothing()
    side = 200.0
    points = [np.array([50.0 + speed * i, 60.0 + 0.5 * speed * i, np.log(side), 0.02 * i]) for i in range(30)]
    crops, tracks = smoothed_crops({i: crop_matrix(p, size) for i, p in enumerate(points)}, [], fps, size, smoothing)
    assert tracks == 1
    edge = int(np.ceil(3 * smoothing.sigma_seconds * fps))  # the Gaussian is one-sided at the track's ends
    for i in range(edge, 30 - edge):
        got = crop_point(crops[i], size)
        assert np.hypot(*(got[:2] - points[i][:2])) <= smoothing.hold * side * (1 + 1e-9)
        assert abs(got[3] - points[i][3]) <= smoothing.hold + 1e-9
    assert crop_point(crops[29], size)[0] > crop_point(crops[0], size)[0] + 20 * speed
    with pytest.raises(InputError, match="crop smoothing hold"):
        CropSmoothing(hold=-0.1)


def test_expression_definition_on_random_values():
    g = torch.Generator().manual_seed(0)
    frame, gen, ref = (torch.randn(5, 21, 3, generator=g, dtype=torch.float64) for _ in range(3))
    ref = ref[:1]
    weight = torch.rand(5, generator=g, dtype=torch.float64)
    lips = list(LIP_KEYPOINTS)
    others = [k for k in range(21) if k not in lips]
    out = torch.full_like(frame, float("nan"))
    out[:] = dub_expression(frame, gen, ref, "lips", torch.ones(5, dtype=torch.float64))
    assert torch.equal(out[:, others], frame[:, others])
    assert ((out[:, lips] - gen[:, lips]).norm() / gen[:, lips].norm()).item() < 1e-12
    full = dub_expression(frame, gen, ref, "expression", weight)
    target = frame + gen - ref
    target[:, lips] = gen[:, lips]
    want = frame + weight[:, None, None] * (target - frame)
    assert ((full - want).norm() / want.norm()).item() < 1e-12 and torch.isfinite(full).all()
    with pytest.raises(InputError, match="dub mode"):
        dub_expression(frame, gen, ref, "face", weight)


def test_plan_and_resampling():
    # 10 fps video of 7 frames, 1.03 s of speech: 11 frames, back and forth
    p = plan(7, 10.0, 1.03, on_long="loop", fade_frames=2)
    assert p.source.tolist() == [0, 1, 2, 3, 4, 5, 6, 5, 4, 3, 2]
    assert ping_pong(5, 1).tolist() == [0] * 5
    with pytest.raises(InputError, match=r"longer than the video .*--on-long loop"):
        plan(7, 10.0, 1.03)
    short = plan(12, 30.0, 0.2, fade_frames=3)
    assert short.weight.tolist() == [1.0] * 6 + [0.75, 0.5, 0.25] + [0.0] * 3
    assert short.motion_time[:6].tolist() == pytest.approx([k * 25 / 30 for k in range(6)])
    g = torch.Generator().manual_seed(2)
    values = torch.randn(9, 21, 3, generator=g, dtype=torch.float64)
    times = np.array([0.0, 0.4, 2.5, 7.9, 8.0, 12.0])
    got = resample(values, times)
    want = torch.stack([values[0], 0.6 * values[0] + 0.4 * values[1], 0.5 * (values[2] + values[3]),
                        0.1 * values[7] + 0.9 * values[8], values[8], values[8]])
    assert ((got - want).norm() / want.norm()).item() < 1e-12


def test_scene_cuts_on_the_clip():
    assert scene_cuts(clip_frames()) == [NO_FACE, SECOND_SHOT]


@pytest.mark.slow  # the command in a fresh process (the installed entry point), whole clip: about 13 s on 2 cores
def test_command_writes_the_dub_with_the_new_audio(tmp_path, tiny_full_weights, face_models, clip):
    from vasa_engine.io.audio import load_audio

    audio = speech(tmp_path, 0.7)
    out = tmp_path / "dub.mp4"
    res = run("dub", "--video", clip, "--audio", audio, "-o", out, "--weights", tiny_full_weights,
              "--face-models", face_models, "--mode", "expression", "--steps", "2")
    assert res.returncode == 0, res.stderr
    assert "12 frames at 10 fps: 10 dubbed, 2 passed through, 2 scene cuts" in res.stdout
    info = read_video_info(out)
    assert info["frames"] == 12 and info["fps"] == pytest.approx(FPS) and info["has_audio"]
    assert (info["width"], info["height"]) == SIZE
    heard = load_audio(out, max_seconds=None)
    sent = load_audio(audio)
    n = min(len(heard), len(sent))
    assert abs(len(heard) - len(sent)) < 0.1 * 16000
    # AAC is lossy and delayed by its priming: compare the envelope's correlation
    corr = np.corrcoef(np.abs(heard[:n]), np.abs(sent[:n]))[0, 1]
    lagged = max(np.corrcoef(np.abs(heard[k : n]), np.abs(sent[: n - k]))[0, 1] for k in range(0, 2048, 16))
    assert max(corr, lagged) > 0.3


class Finished:
    """The outcome of one in-process `vasa-engine` call, shaped as test_cli's helpers expect."""

    def __init__(self, capsys, args):
        from vasa_engine.cli import main

        self.returncode = main([str(a) for a in args])
        captured = capsys.readouterr()
        self.stdout, self.stderr = captured.out, captured.err


def test_long_speech_loops_or_is_refused(tmp_path, tiny_full_weights, face_models, capsys):
    short = write_clip(tmp_path / "short.mp4", clip_frames()[:3])
    audio = speech(tmp_path, 0.5)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "long.mp4"
    base = ["dub", "--video", short, "--audio", audio, "-o", out, "--weights", tiny_full_weights, "--face-models",
            face_models, "--steps", "1"]
    _assert_clean_failure(Finished(capsys, base), "longer than the video", out.parent)
    res = Finished(capsys, base + ["--on-long", "loop", "--no-crop-smoothing", "--encode-batch", "2"])
    assert res.returncode == 0, res.stderr
    assert "5 frames at 10 fps: 5 dubbed, 0 passed through" in res.stdout and "back and forth" in res.stdout
    assert "1 face track;" in res.stdout
    assert read_video_info(out)["frames"] == 5


def rotated_copy(src, dst):
    """The clip with a 90-degree display matrix in its track header (as a phone writes for a portrait video)."""
    data = bytearray(src.read_bytes())
    i = data.find(b"tkhd")
    version = data[i + 4]
    offset = i + 8 + (28 if version == 1 else 16) + 12 + 8
    data[offset : offset + 36] = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
    dst.write_bytes(bytes(data))
    return dst


def test_rotation_metadata_is_honoured(tmp_path, clip):
    upright = read_source_video(clip)
    turned = read_source_video(rotated_copy(clip, tmp_path / "turned.mp4"))
    assert turned.rotation == -90 and upright.rotation == 0
    assert turned.frames[0].shape == (SIZE[0], SIZE[1], 3)
    assert np.array_equal(turned.frames[3], np.rot90(upright.frames[3], k=-1))


def variable_rate_clip(path):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 100)
        for pts in (0, 4, 8, 20, 24, 40, 44):
            frame = av.VideoFrame.from_ndarray(np.random.default_rng(pts).integers(0, 255, (48, 64, 3), np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 100)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def truncated_clip(path):
    """A clip cut right after its index: a video stream whose frames are all missing."""
    data = write_clip(path, [np.full((48, 64, 3), 90, np.uint8)] * 4).read_bytes()
    path.write_bytes(data[: data.find(b"mdat") + 4])
    return path


def test_bad_videos_are_one_line_errors(tmp_path, tiny_full_weights, face_models, dub_engine, clip, capsys):
    audio = speech(tmp_path, 0.3)
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 300)
    cases = {
        "no video stream": audio,
        "not a video": tmp_path / "junk.mp4",
        "no decodable video frames": truncated_clip(tmp_path / "cut.mp4"),
        "no face found in any frame": write_clip(tmp_path / "empty.mp4", [np.full((48, 64, 3), 70, np.uint8)] * 4),
        "variable frame rate": variable_rate_clip(tmp_path / "vfr.mp4"),
    }
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for message, video in cases.items():
        res = Finished(capsys, ["dub", "--video", video, "--audio", audio, "-o", out_dir / "o.mp4", "--weights",
                                tiny_full_weights, "--face-models", face_models, "--steps", "1"])
        _assert_clean_failure(res, message, out_dir)
    # only the frames the speech covers are dubbed: 2 frames of a 12-frame clip, with 2 s of speech cut to them
    first = dub_engine.dub(clip, speech(tmp_path, 2.0, "long.wav"), max_frames=2, fade_frames=0)
    assert len(first.frames) == 2 and len(first.audio) == 3200 and first.report.dubbed == 2
    for options, message in (({"strength": 2.0}, "dub strength"), ({"mode": "face"}, "dub mode"),
                             ({"on_long": "stretch"}, "on-long must be"), ({"fade_frames": -1}, "fade frames"),
                             ({"controls": Controls(relative_motion=True)}, "relative motion"),
                             ({"render_batch": 0}, "render batch must be a positive integer"),
                             ({"encode_batch": 2.5}, "encode batch must be a positive integer")):
        with pytest.raises(InputError, match=message):
            dub_engine.dub(cases["no face found in any frame"], audio, **options)
