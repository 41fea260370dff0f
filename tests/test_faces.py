"""Face alignment: the crop from landmarks, paste-back, the centre-crop fallback, and the detector -> landmarks ->
crop path through small stand-in ONNX models with the real models' input and output signatures."""

import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from vasa_engine.errors import InputError
from vasa_engine.faces import (LANDMARKS_106, LANDMARKS_203, MASK, SOURCE_CROP, FaceAligner, crop_transform,
                               feather_mask, invert_affine, nms, paste_back)
from vasa_engine.models.keypoints import eye_ratios, lip_ratio

# Measured by hand on vasa_engine/assets/astronaut.png (pixel centres at integers): eye centres (the image's
# left eye first), nose tip, mouth corners.
ASTRONAUT_POINTS = np.array([(204.0, 101.5), (245.0, 103.0), (225.0, 128.0), (204.5, 141.0), (243.5, 142.0)])
BACKGROUND = (90, 96, 104)


@pytest.fixture(scope="module")
def astronaut(sample_image):
    return np.array(Image.open(sample_image).convert("RGB"))


def similarity(angle_deg: float, scale: float, t) -> np.ndarray:
    """2x3 photo -> transformed-photo matrix: rotate by angle (counter-clockwise on screen), scale, then shift."""
    a = math.radians(angle_deg)
    r = scale * np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    return np.concatenate([r, np.asarray(t, np.float64)[:, None]], axis=1)


def pil_warp(image: np.ndarray, m: np.ndarray, size_wh) -> np.ndarray:
    """The image moved by m (pixel centres at integers), made with Pillow (independently of the code under test)."""
    inv = invert_affine(m)
    # Pillow samples the input at A (x + 0.5) + c in coordinates where pixel i spans [i, i + 1].
    c = inv[:, 2] + 0.5 - inv[:, :2] @ np.array([0.5, 0.5])
    data = (inv[0, 0], inv[0, 1], c[0], inv[1, 0], inv[1, 1], c[1])
    out = Image.fromarray(image).transform(size_wh, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR,
                                           fillcolor=BACKGROUND)
    return np.array(out)


def apply(m, p):
    return p @ m[:, :2].T + m[:, 2]


def phase_shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sub-pixel (dx, dy) such that b(x) ~ a(x - d), by phase correlation with a parabolic peak fit."""
    a = a - a.mean()
    b = b - b.mean()
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa, fb = np.fft.fft2(a * win), np.fft.fft2(b * win)
    r = fb * np.conj(fa)
    corr = np.fft.ifft2(r / (np.abs(r) + 1e-9)).real
    iy, ix = np.unravel_index(np.argmax(corr), corr.shape)
    out = []
    for axis, i in ((1, ix), (0, iy)):
        n = corr.shape[axis]
        def c(k):
            return corr[(iy, (i + k) % n)] if axis == 1 else corr[((i + k) % n, ix)]
        denom = c(-1) - 2 * c(0) + c(1)
        frac = 0.5 * (c(-1) - c(1)) / denom if denom != 0 else 0.0
        v = i + frac
        out.append(v - n if v > n / 2 else v)
    return np.array(out)


def gray(x):
    return x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


# --------------------------------------------------------------------------------------------- geometry


def test_crop_transform_frames_the_face_upright():
    # a symmetric face, 40 px between the eyes, rolled by 10 degrees: the crop puts the eyes level, the mouth
    # straight below them, and 2.3 x the estimated extent across
    upright = np.array([(-20.0, 0.0), (20.0, 0.0), (0.0, 22.0), (-17.0, 40.0), (17.0, 40.0)])
    roll = similarity(10.0, 1.0, (300.0, 200.0))
    pts = apply(roll, upright)
    m = crop_transform(pts)
    crop = apply(m, pts)
    assert abs(crop[0, 1] - crop[1, 1]) < 1e-9 and crop[0, 0] < crop[1, 0]
    eye_mid, mouth_mid = crop[:2].mean(0), crop[3:].mean(0)
    assert abs(eye_mid[0] - mouth_mid[0]) < 1e-9 and mouth_mid[1] > eye_mid[1]
    assert abs(eye_mid[0] - 256) < 1e-9  # centred horizontally
    # the face box (2.4 x 40 px, 0.75 x 40 px below the eyes) moved up by 0.125 of the crop
    assert eye_mid[1] == pytest.approx(256 - (0.75 * 40 - 0.125 * 2.3 * 96) * 512 / (2.3 * 96), abs=1e-9)
    assert np.linalg.norm(crop[1] - crop[0]) == pytest.approx(40 * 512 / (2.3 * 96), rel=1e-12)
    # no rotation when asked
    m0 = crop_transform(pts, SOURCE_CROP.__class__(rotate=False))
    assert abs(m0[0, 1]) < 1e-12 and abs(m0[1, 0]) < 1e-12


def test_crop_transform_106_and_203_layouts_follow_the_eyes_and_mouth():
    rng = np.random.default_rng(1)
    for n, (left, right, mouth) in ((106, ((33, 35, 40, 39), (87, 89, 94, 93), (52, 61))),
                                    (203, ((0, 6, 12, 18), (24, 30, 36, 42), (48, 66)))):
        pts = rng.uniform(300, 420, (n, 2))
        pts[list(left)] = [300, 330] + rng.normal(0, 2, (len(left), 2))
        pts[list(right)] = [380, 330] + rng.normal(0, 2, (len(right), 2))
        pts[list(mouth)] = [[320, 400], [360, 400]]
        m = crop_transform(pts)
        crop = apply(m, pts)
        down = crop[list(mouth)].mean(0) - (crop[list(left)].mean(0) + crop[list(right)].mean(0)) / 2
        assert abs(down[0]) < 1e-6 * abs(down[1]) and down[1] > 0
        # the points' extent in the crop is 512 / 2.3 wide (square box of the rotated points)
        ext = (crop.max(0) - crop.min(0)).max()
        assert ext == pytest.approx(512 / 2.3, rel=1e-9)


def test_bad_landmarks_are_one_line_input_errors(astronaut):
    aligner = FaceAligner.from_folder(None)
    for bad, text in ((np.zeros((7, 2)), re.escape("expected (203, 2), (106, 2) or (5, 2)")),
                      (np.full((5, 2), np.nan), "NaN"), (np.zeros((5, 2)), "degenerate"), ("eyes", "landmarks")):
        with pytest.raises(InputError, match=text) as e:
            aligner.align(astronaut, bad)
        assert "\n" not in str(e.value)


CASES = {
    # name: (angle degrees, scale, shift, canvas (w, h))
    "shift": (0.0, 1.0, (230.0, 95.0), (900, 700)),
    "scale_up": (0.0, 1.7, (-60.0, 40.0), (900, 800)),
    "scale_down": (0.0, 0.5, (400.0, 300.0), (800, 640)),
    "rotate": (12.0, 1.0, (-40.0, 60.0), (620, 640)),
    "rotate_scale_shift": (-8.0, 1.3, (310.0, 170.0), (1000, 850)),
    "near_border": (5.0, 1.2, (-180.0, -60.0), (520, 480)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_crop_of_moved_photo_matches_crop_of_original(astronaut, case):
    angle, scale, shift, size = CASES[case]
    m = similarity(angle, scale, shift)
    moved = pil_warp(astronaut, m, size)
    moved_points = apply(m, ASTRONAUT_POINTS)
    aligner = FaceAligner.from_folder(None)
    ref = aligner.align(astronaut, ASTRONAUT_POINTS)
    got = aligner.align(moved, moved_points)
    assert got.method == "landmarks" and got.crop.shape == (512, 512, 3)

    # the landmarks land where the unmoved photo's crop puts them
    err = np.linalg.norm(got.landmarks - ref.landmarks, axis=1).max()
    assert err < 0.01, f"landmark error {err:.4f} px"
    # ... and the pictures agree: same face at the same place (sub-pixel), similar pixels, where the moved photo
    # has pixels (eyes to chin, less what fell off its edge)
    h, w = moved.shape[:2]
    ys, xs = np.mgrid[0:512, 0:512].astype(np.float64)
    px = apply(got.crop_to_image, np.stack([xs.ravel(), ys.ravel()], 1)).reshape(512, 512, 2)
    inside = (px[..., 0] >= 0) & (px[..., 0] <= w - 1) & (px[..., 1] >= 0) & (px[..., 1] <= h - 1)
    r0, r1, c0, c1 = 150, 420, 150, 400
    r0 = max(r0, int(np.argmax(inside[:, c0:c1].all(1))))
    c0 = max(c0, int(np.argmax(inside[r0:r1].all(0))))
    face = np.s_[r0:r1, c0:c1]
    assert inside[face].all() and r1 - r0 >= 200 and c1 - c0 >= 200
    d = phase_shift(gray(ref.crop[face]), gray(got.crop[face]))
    crop_per_photo_px = math.sqrt(abs(np.linalg.det(got.image_to_crop[:, :2])))
    assert np.abs(d).max() / crop_per_photo_px < 0.2, f"content shift {d} crop px"
    diff = np.abs(got.crop[face].astype(np.float64) - ref.crop[face]).mean()
    assert diff < (9.0 if scale < 1 else 4.0), f"mean abs difference {diff:.2f}"
    if case == "near_border":
        assert any("lies outside the photo" in w for w in got.warnings)
    else:
        assert not any("outside" in w for w in got.warnings)
    assert any("small" in w for w in got.warnings) == (case == "scale_down")


# --------------------------------------------------------------------------------------------- paste-back


def crop_coords(alignment, h, w):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    m = alignment.image_to_crop
    return m[0, 0] * xs + m[0, 1] * ys + m[0, 2], m[1, 0] * xs + m[1, 1] * ys + m[1, 2]


@pytest.mark.parametrize("case", ["rotate_scale_shift", "scale_down", "near_border"])
def test_paste_back_restores_the_photo(astronaut, case):
    angle, scale, shift, size = CASES[case]
    m = similarity(angle, scale, shift)
    photo = pil_warp(astronaut, m, size)
    a = FaceAligner.from_folder(None).align(photo, apply(m, ASTRONAUT_POINTS))
    h, w = photo.shape[:2]
    xc, yc = crop_coords(a, h, w)
    outside = (xc < -0.5) | (xc > 511.5) | (yc < -0.5) | (yc > 511.5)
    core = (np.abs(xc - 255.5) < 150) & (np.abs(yc - 255.5) < 150)

    # the unmodified crop comes back as the photo: exactly outside, within resampling error inside
    out = paste_back(photo, a.crop[None], a)
    assert isinstance(out, np.ndarray) and out.shape == (1, h, w, 3) and out.dtype == np.uint8
    assert outside.any() and np.array_equal(out[0][outside], photo[outside])
    err = np.abs(out[0].astype(np.int16) - photo)[core]
    # resampling twice blurs: more where the face is small (an enlarged crop) and detailed
    assert err.mean() < (5.0 if scale < 1 else 3.5), f"mean error {err.mean():.2f}"
    assert np.percentile(err, 99) < 32

    # a different frame: the photo is untouched outside the face region, the frame is there inside it
    frame = 255 - a.crop
    out = paste_back(photo, frame, a)
    assert np.array_equal(out[0][outside], photo[outside])
    inv_err = np.abs(out[0].astype(np.int16) - (255 - photo.astype(np.int16)))[core]
    assert inv_err.mean() < (5.0 if scale < 1 else 3.5)


def test_paste_back_torch_batch_any_frame_size(astronaut):
    a = FaceAligner.from_folder(None).align(astronaut, ASTRONAUT_POINTS)
    frames = torch.stack([torch.from_numpy(a.crop), torch.full((512, 512, 3), 200, dtype=torch.uint8)])
    out = paste_back(torch.from_numpy(astronaut), frames, a)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 512, 512, 3) and out.dtype == torch.uint8
    xc, yc = crop_coords(a, 512, 512)
    weight = feather_mask(torch.from_numpy(xc), torch.from_numpy(yc), 512).numpy()
    zero, one = weight == 0, weight == 1
    assert zero.any() and one.any()
    assert torch.equal(out[1][torch.from_numpy(zero)], torch.from_numpy(astronaut[zero]))
    assert (out[1][torch.from_numpy(one)] == 200).all()
    # a 256 frame (a reduced renderer) pastes into the same place
    small = torch.from_numpy(np.array(Image.fromarray(a.crop).resize((256, 256), Image.Resampling.BOX)))
    out_small = paste_back(astronaut, small[None], a)
    core = one & (np.abs(xc - 255.5) < 120) & (np.abs(yc - 255.5) < 120)
    assert np.abs(out_small[0].numpy().astype(np.int16) - astronaut)[core].mean() < 6


def test_mask_is_exactly_zero_outside_one_inside_and_smooth():
    s = 512
    x = torch.linspace(-10, s + 10, 2001, dtype=torch.float64)
    row = feather_mask(x, torch.full_like(x, 255.5), s)
    diag = feather_mask(x, x, s)
    assert row.min() == 0 and row.max() == 1
    inset = MASK.margin * s - 0.5
    assert (row[(x < inset) | (x > s - 1 - inset)] == 0).all()
    assert (row[(x > inset + MASK.feather * s) & (x < s - 1 - inset - MASK.feather * s)] == 1).all()
    assert diag[0] == 0 and diag[1000] == 1  # corners are rounded off, the middle is opaque
    left = row[x < 255.5]
    assert (left[1:] >= left[:-1]).all()  # monotone rise
    step = (x[1] - x[0]).item()
    assert (row[1:] - row[:-1]).abs().max() < 3.0 * step / (MASK.feather * s)  # no jumps


# --------------------------------------------------------------------------------------------- fallback


def test_centre_crop_fallback_says_so(astronaut, tmp_path):
    from vasa_engine.io.image import center_square, resize

    for aligner, reason in ((FaceAligner.from_folder(None), "no face models folder"),
                            (FaceAligner.from_folder(tmp_path / "missing"), "not found"),
                            (FaceAligner.from_folder(tmp_path), "no face detector")):
        assert aligner.fallback and reason in aligner.fallback_reason
        assert "centre-cropped" in aligner.fallback_reason
    photo = np.concatenate([astronaut, astronaut[:, :100]], axis=1)  # 512 x 612
    a = aligner.align(photo)
    assert a.method == "center" and a.landmarks is None and a.warnings == [aligner.fallback_reason]
    assert np.array_equal(a.crop, resize(center_square(photo), 512))
    assert np.allclose(apply(a.image_to_crop, np.array([[50.0, 0.0], [561.0, 511.0]])), [[0, 0], [511, 511]])
    out = paste_back(photo, a.crop[None], a)
    assert np.array_equal(out[0][:, :50], photo[:, :50]) and np.array_equal(out[0][:, 562:], photo[:, 562:])
    assert np.abs(out[0].astype(int) - photo)[100:400, 150:450].max() == 0
    # given landmarks still align, without any model
    b = aligner.align(astronaut, ASTRONAUT_POINTS)
    assert b.method == "landmarks"


@pytest.mark.gpu
def test_gpu_matches_cpu(astronaut):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    m = similarity(-8.0, 1.3, (310.0, 170.0))
    photo = pil_warp(astronaut, m, (1000, 850))
    pts = apply(m, ASTRONAUT_POINTS)
    cpu = FaceAligner.from_folder(None, device="cpu").align(photo, pts)
    gpu = FaceAligner.from_folder(None, device="cuda").align(photo, pts)
    assert np.abs(cpu.crop.astype(int) - gpu.crop).max() <= 1
    frames = torch.from_numpy(np.stack([cpu.crop, 255 - cpu.crop]))
    out_gpu = paste_back(torch.from_numpy(photo).cuda(), frames.cuda(), gpu)
    assert out_gpu.is_cuda and out_gpu.dtype == torch.uint8
    out_cpu = paste_back(photo, frames.numpy(), cpu)
    assert np.abs(out_gpu.cpu().numpy().astype(int) - out_cpu).max() <= 1


# --------------------------------------------------------------------------------------------- models


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 4]], float)
    scores = np.array([0.6, 0.9, 0.7, 0.8])
    assert nms(boxes, scores, 0.4) == [1, 3, 2]


def _templates():
    """Stand-in landmark layouts: mean zero, symmetric, with eyes and mouth where the crop rule looks for them."""
    t = np.linspace(0, 2 * np.pi, 106, endpoint=False)
    p106 = np.stack([0.5 * np.sin(t), 0.6 * np.cos(t)], 1)
    p106[[33, 35, 40, 39]] = [[-0.22, -0.15], [-0.18, -0.15], [-0.22, -0.11], [-0.18, -0.11]]
    p106[[87, 89, 94, 93]] = [[0.22, -0.15], [0.18, -0.15], [0.22, -0.11], [0.18, -0.11]]
    p106[[52, 61]] = [[-0.15, 0.25], [0.15, 0.25]]
    p106 -= p106.mean(0)
    t = np.linspace(0, 2 * np.pi, 203, endpoint=False)
    p203 = np.stack([0.22 * np.sin(t), 0.26 * np.cos(t)], 1)
    k = np.arange(24) * 2 * np.pi / 24
    for first, cx in ((0, -0.1), (24, 0.1)):  # eye outlines: corners at 0 and 12, lids at 6 and 18
        p203[first:first + 24] = np.stack([cx + 0.04 * np.cos(k), -0.06 + 0.015 * np.sin(k)], 1)
    p203[[48, 66, 90, 102]] = [[-0.07, 0.1], [0.07, 0.1], [0.0, 0.09], [0.0, 0.11]]
    p203 -= p203.mean(0)
    return p106, p203


KPS_PATTERN = np.array([-0.35, -0.3, 0.35, -0.3, 0.0, 0.05, -0.3, 0.35, 0.3, 0.35])


def _build_models(folder, *, with106=True, with203=True):
    """Write stand-in det_10g.onnx / 2d106det.onnx / landmark.onnx under folder (in the cache's layout).

    Detector: the score of each stride-8 anchor is sigmoid(20 (R - 0.5)) of the mean normalised red over its 8x8
    cell (other strides never fire); its box reaches (4 + 4 G) strides each way (G the cell's mean normalised
    green) and its 5 points sit at KPS_PATTERN times that. Landmark models: the template, centred on the red
    channel's centroid in their input crop (106: in [-1, 1], 203: in [0, 1] of the crop)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value, dtype=np.float32 if np.asarray(value).dtype.kind == "f"
                                                  else np.int64), name)

    def save(graph, path):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))

    # detector
    nodes, inits = [], [const("half", 0.5), const("twenty", 20.0), const("zero", 0.0), const("minus30", -30.0),
                        const("four", 4.0), const("shape3", [-1, 3]), const("shape1", [-1, 1]),
                        const("shape4", [-1, 4]), const("shape10", [-1, 10]), const("s0", [0]), const("s1", [1]),
                        const("s2", [2]), const("ax1", [1]), const("pattern", KPS_PATTERN[None])]
    outs = {"score": [], "bbox": [], "kps": []}
    for s in (8, 16, 32):
        n = lambda k: f"{k}{s}"  # noqa: E731
        nodes += [helper.make_node("AveragePool", ["input.1"], [n("pool")], kernel_shape=[s, s], strides=[s, s]),
                  helper.make_node("Transpose", [n("pool")], [n("nhwc")], perm=[0, 2, 3, 1]),
                  helper.make_node("Reshape", [n("nhwc"), "shape3"], [n("flat")]),
                  helper.make_node("Slice", [n("flat"), "s0", "s1", "ax1"], [n("r")]),
                  helper.make_node("Slice", [n("flat"), "s1", "s2", "ax1"], [n("g")])]
        if s == 8:
            nodes += [helper.make_node("Sub", [n("r"), "half"], [n("a")]),
                      helper.make_node("Mul", [n("a"), "twenty"], [n("b")])]
        else:
            nodes += [helper.make_node("Mul", [n("r"), "zero"], [n("a")]),
                      helper.make_node("Add", [n("a"), "minus30"], [n("b")])]
        nodes += [helper.make_node("Sigmoid", [n("b")], [n("sc")]),
                  helper.make_node("Concat", [n("sc"), n("sc")], [n("sc2")], axis=1),
                  helper.make_node("Reshape", [n("sc2"), "shape1"], [n("score")]),
                  helper.make_node("Mul", [n("g"), "four"], [n("g4")]),
                  helper.make_node("Add", [n("g4"), "four"], [n("d")]),
                  helper.make_node("Concat", [n("d")] * 8, [n("d8")], axis=1),
                  helper.make_node("Reshape", [n("d8"), "shape4"], [n("bbox")]),
                  helper.make_node("Mul", [n("d"), "pattern"], [n("k")]),
                  helper.make_node("Concat", [n("k"), n("k")], [n("k2")], axis=1),
                  helper.make_node("Reshape", [n("k2"), "shape10"], [n("kps")])]
        for key in outs:
            outs[key].append(n(key))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width])
               for key, width in (("score", 1), ("bbox", 4), ("kps", 10)) for name in outs[key]]
    graph = helper.make_graph(nodes, "scrfd_standin",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])],
                              outputs, inits)
    save(graph, folder / "insightface" / "models" / "buffalo_l" / "det_10g.onnx")

    p106, p203 = _templates()

    def centroid_graph(name, input_name, size, to_unit, template, extra_outputs):
        """Output = tile(centroid of red, in the model's units) + template."""
        grid = np.arange(size, dtype=np.float32)
        inits = [const("X", np.broadcast_to(grid[None, :], (size, size))[None, None]),
                 const("Y", np.broadcast_to(grid[:, None], (size, size))[None, None]),
                 const("scale", to_unit[0]), const("offset", to_unit[1]), const("s0", [0]), const("s1", [1]),
                 const("axes", [2, 3]), const("reps", [1, len(template)]),
                 const("template", template.reshape(1, -1))]
        nodes = [helper.make_node("Slice", ["x", "s0", "s1", "s1"], ["r"]),
                 helper.make_node("ReduceSum", ["r", "axes"], ["sr"], keepdims=0),
                 helper.make_node("Mul", ["r", "X"], ["rx"]), helper.make_node("Mul", ["r", "Y"], ["ry"]),
                 helper.make_node("ReduceSum", ["rx", "axes"], ["srx"], keepdims=0),
                 helper.make_node("ReduceSum", ["ry", "axes"], ["sry"], keepdims=0),
                 helper.make_node("Div", ["srx", "sr"], ["cx"]), helper.make_node("Div", ["sry", "sr"], ["cy"]),
                 helper.make_node("Concat", ["cx", "cy"], ["c"], axis=1),
                 helper.make_node("Mul", ["c", "scale"], ["cs"]), helper.make_node("Add", ["cs", "offset"], ["cu"]),
                 helper.make_node("Tile", ["cu", "reps"], ["tiled"]),
                 helper.make_node("Add", ["tiled", "template"], ["pts"])]
        nodes.insert(0, helper.make_node("Identity", [input_name], ["x"]))
        outputs = []
        for i, width in enumerate(extra_outputs):
            inits.append(const(f"e{i}", np.zeros((1, width))))
            nodes.append(helper.make_node("Identity", [f"e{i}"], [f"extra{i}"]))
            outputs.append(helper.make_tensor_value_info(f"extra{i}", TensorProto.FLOAT, [1, width]))
        outputs.append(helper.make_tensor_value_info("pts", TensorProto.FLOAT, [1, 2 * len(template)]))
        inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, size, size])]
        return helper.make_graph(nodes, name, inputs, outputs, inits)

    if with106:  # crop pixel c -> c / 96 - 1
        save(centroid_graph("lmk106_standin", "data", 192, (1 / 96, -1.0), p106, []),
             folder / "insightface" / "models" / "buffalo_l" / "2d106det.onnx")
    if with203:  # crop pixel c -> c / 224; the points are the third output
        save(centroid_graph("lmk203_standin", "input", 224, (1 / 224, 0.0), p203, [214, 3]),
             folder / "liveportrait" / "landmark.onnx")
    return folder


def blob_photo(size_wh, faces):
    """Dark blue photo with red/green Gaussian blobs standing in for faces: (cx, cy, sigma, green peak)."""
    w, h = size_wh
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    img[..., 2] = 90
    for cx, cy, sigma, green in faces:
        g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
        img[..., 0] += 255 * g
        img[..., 1] += green * g
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def red_centroid(img):
    r = img[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:r.shape[0], 0:r.shape[1]]
    return np.array([(r * xs).sum(), (r * ys).sum()]) / r.sum()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("face_models")
    return {"all": _build_models(root / "all"),
            "det106": _build_models(root / "det106", with203=False),
            "det": _build_models(root / "det", with106=False, with203=False)}


BIG = (430.0, 330.0, 30.0, 255)
SMALL = (120.0, 130.0, 16.0, 100)


def test_detector_landmarks_crop_path(models):
    aligner = FaceAligner.from_folder(models["all"])
    assert not aligner.fallback and aligner.fallback_reason is None
    assert aligner.landmarks106 is not None and aligner.landmarks203 is not None
    photo = blob_photo((800, 620), [BIG])
    a = aligner.align(photo, name="blob.png")
    assert a.method == "detector" and a.warnings == []
    centre = np.array(BIG[:2])
    box_centre = (a.box[:2] + a.box[2:]) / 2
    assert np.abs(box_centre - centre).max() < 8 / (512 / 800) + 1  # within one stride-8 cell
    assert 150 < a.box[2] - a.box[0] < 220  # green 255 -> (4 + 4 * ~0.95) * 8 px each way, / (512 / 800)
    # 203 points: centred on the face, back in the photo through the crop's own inverse
    assert a.landmarks.shape == (203, 2) and a.landmarks203 is a.landmarks
    assert np.abs(a.image_landmarks.mean(0) - centre).max() < 1.0
    assert np.allclose(apply(a.crop_to_image, a.landmarks), a.image_landmarks, atol=1e-6)
    lm = torch.tensor(a.landmarks[None], dtype=torch.float32)
    assert eye_ratios(lm)[0].tolist() == pytest.approx([0.375, 0.375], abs=2e-3)
    assert lip_ratio(lm)[0, 0].item() == pytest.approx(0.02 / 0.14, abs=2e-3)
    # the crop shows the face where the landmarks say it is
    assert np.abs(red_centroid(a.crop) - a.landmarks.mean(0)).max() < 2.0
    # the crop is made from the 106 points (LivePortrait's rule): the stand-in 106 layout spans 0.5 x 1.5 x box
    side = 512 / math.sqrt(abs(np.linalg.det(a.image_to_crop[:, :2])))
    extent_106 = 1.2 * 0.75 * max(a.box[2] - a.box[0], a.box[3] - a.box[1])  # 1.2 = 2 x 0.6 (template's y span)
    assert side == pytest.approx(2.3 * extent_106, rel=0.02)


def test_detector_with_106_points_only(models):
    a = FaceAligner.from_folder(models["det106"]).align(blob_photo((640, 700), [(300.0, 380.0, 26.0, 255)]))
    assert a.landmarks.shape == (106, 2) and a.landmarks203 is None
    assert np.abs(a.image_landmarks.mean(0) - [300, 380]).max() < 1.0
    assert np.allclose(apply(a.image_to_crop, a.image_landmarks), a.landmarks, atol=1e-6)


def test_detector_five_points_only(models):
    aligner = FaceAligner.from_folder(models["det"])
    assert aligner.landmarks106 is None and aligner.landmarks203 is None
    a = aligner.align(blob_photo((700, 560), [(350.0, 250.0, 28.0, 255)]))
    assert a.landmarks.shape == (5, 2)
    # the five points follow the pattern around the detector's anchor, the crop follows the points
    d = a.box[2] - a.box[0]
    anchor = (a.box[:2] + a.box[2:]) / 2
    assert np.allclose(a.image_landmarks, anchor + KPS_PATTERN.reshape(5, 2) * d / 2, atol=0.1)  # x, y rescaled apart
    assert np.abs(anchor - [350, 250]).max() < 8 / (512 / 700) + 1


def test_two_faces_use_the_largest_and_say_so(models):
    photo = blob_photo((800, 620), [SMALL, BIG])
    a = FaceAligner.from_folder(models["all"]).align(photo)
    assert a.warnings == ["2 faces found in the photo; using the largest"]
    assert np.abs(a.image_landmarks.mean(0) - BIG[:2]).max() < 1.0


def test_no_face_is_a_one_line_input_error(models, tmp_path):
    empty = blob_photo((640, 480), [])
    aligner = FaceAligner.from_folder(models["all"])
    with pytest.raises(InputError, match=r"^no face found in the photo: portrait\.jpg$"):
        aligner.align(empty, name="portrait.jpg")
    path = tmp_path / "empty.png"
    Image.fromarray(empty).save(path)
    with pytest.raises(InputError, match=f"no face found in the photo: {path}"):
        aligner.align(path)


def test_broken_or_foreign_models_are_input_errors(models, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "det_10g.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="cannot load face model"):
        FaceAligner.from_folder(bad)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    # a landmark model where the detector should be: wrong outputs
    (foreign / "det_10g.onnx").write_bytes((models["all"] / "liveportrait" / "landmark.onnx").read_bytes())
    with pytest.raises(InputError, match="face detector has"):
        FaceAligner.from_folder(foreign)


def test_table_values_are_the_documented_ones():
    # the numbers other code relies on; a change here is a deliberate change of the models' contract
    assert (SOURCE_CROP.size, SOURCE_CROP.scale, SOURCE_CROP.vx_ratio, SOURCE_CROP.vy_ratio) == (512, 2.3, 0, -0.125)
    assert (LANDMARKS_106.input_size, LANDMARKS_106.points, LANDMARKS_203.input_size, LANDMARKS_203.points) == \
        (192, 106, 224, 203)
