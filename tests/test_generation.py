"""Audio to motion: window chaining without seams, guidance batching, motion to driving parameters."""

import math

import pytest
import torch

from conftest import DATA, rel_err
from vasa_engine.audio_features import AudioFeatureEncoder
from vasa_engine.generation import (Controls, GuidedDenoiser, MotionTemplate, euler_from_rotation,
                                    generate_windows, relative_driving)
from vasa_engine.models.audio_encoder import AudioEncoderConfig
from vasa_engine.models.keypoints import rotation_matrix
from vasa_engine.models.motion_generator import MotionGenerator, MotionGeneratorConfig

TINY = MotionGeneratorConfig(feature_dim=32, n_layers=2, n_heads=4, n_motions=20, n_prev_motions=5, emotion_dim=4)


def test_state_dict_matches_joyvasa_checkpoint():
    """At the sizes joyvasa_keys.tsv states, audio stage + motion generator = the checkpoint's model dict."""
    rows = [line.split("\t") for line in (DATA / "joyvasa_keys.tsv").read_text().splitlines()[1:]]
    expected = {key: shape for _, key, shape, _ in rows}
    cfg = MotionGeneratorConfig(feature_dim=256, gaze=False, distance=False, emotion_dim=0)
    with torch.device("meta"):
        state = {**MotionGenerator(cfg).state_dict(), **AudioFeatureEncoder(AudioEncoderConfig(), 256).state_dict()}
    got = {k: "x".join(map(str, v.shape)) if v.dim() else "scalar" for k, v in state.items()}
    assert set(got) == set(expected), (sorted(set(expected) - set(got))[:5], sorted(set(got) - set(expected))[:5])
    assert got == expected


# ------------------------------------------------------------------------------------------------ seams


class GaussianProcessPrior:
    """Motion whose clean frames follow a smooth Gaussian process in time (squared-exponential kernel), each
    dimension independent; its exact x0 predictor given the noisy window and the previous window's frames."""

    def __init__(self, length_scale: float, lp: int, n: int):
        idx = torch.arange(lp + n, dtype=torch.float64)
        k = torch.exp(-0.5 * (idx[:, None] - idx[None, :]) ** 2 / length_scale**2) + 1e-6 * torch.eye(lp + n)
        self.k, self.lp, self.n = k, lp, n

    def predictor(self, schedule, prev: torch.Tensor | None):
        lp = self.lp
        if prev is None:
            mean, cov = torch.zeros(self.n, 1, dtype=torch.float64), self.k[lp:, lp:]
        else:
            kpp, kcp = self.k[:lp, :lp], self.k[lp:, :lp]
            gain = kcp @ torch.linalg.inv(kpp)
            mean = gain @ prev[0].double()  # (n, dims)
            cov = self.k[lp:, lp:] - gain @ kcp.T

        def x0_fn(x_t: torch.Tensor, t: int) -> torch.Tensor:
            a = schedule.alpha_bars[t].double().sqrt()
            s2 = 1 - schedule.alpha_bars[t].double()
            gain_t = a * cov @ torch.linalg.inv(a * a * cov + s2 * torch.eye(self.n, dtype=torch.float64))
            return (mean + gain_t @ (x_t[0].double() - a * mean))[None].float()

        return x0_fn


def _chain(prior: GaussianProcessPrior, seconds: float, use_context: bool) -> torch.Tensor:
    model = MotionGenerator(TINY).eval()
    frames = int(seconds * 25)
    windows = math.ceil(frames / TINY.n_motions)
    features = torch.zeros(windows, TINY.n_motions, TINY.feature_dim)
    schedule = model.diffusion_sched.schedule()

    def factory(w, audio, prev_motion, prev_audio):
        return prior.predictor(schedule, prev_motion if use_context else None)

    return generate_windows(model, features, Controls(steps=10), denoiser_factory=factory)


@pytest.mark.parametrize("use_context", [True, False])
def test_chained_windows_have_no_seams(use_context):
    """60 s of chained motion from an exact predictor of a smooth prior: the jumps across window boundaries are no
    larger than those inside windows. Without the previous-window context (the control) the seams show."""
    prior = GaussianProcessPrior(length_scale=6.0, lp=TINY.n_prev_motions, n=TINY.n_motions)
    motion = _chain(prior, 60.0, use_context)
    assert motion.shape == (math.ceil(1500 / TINY.n_motions) * TINY.n_motions, TINY.motion_dim)
    jumps = (motion[1:] - motion[:-1]).abs().max(dim=1).values
    boundary = torch.zeros_like(jumps, dtype=torch.bool)
    boundary[TINY.n_motions - 1 :: TINY.n_motions] = True
    worst_boundary, worst_inside = jumps[boundary].max().item(), jumps[~boundary].max().item()
    if use_context:
        assert worst_boundary <= worst_inside, (worst_boundary, worst_inside)
    else:
        assert worst_boundary > 2 * worst_inside, (worst_boundary, worst_inside)


# ------------------------------------------------------------------------------------------------ guidance


def test_guidance_branches_run_in_one_batched_forward():
    torch.manual_seed(0)
    model = MotionGenerator(TINY).eval()
    audio = torch.randn(1, TINY.n_motions, TINY.feature_dim)
    conditions = {"gaze": torch.tensor([[10.0, -5.0]]), "emotion": torch.randn(1, 4)}
    scales = {"audio": 2.5, "gaze": 1.5, "emotion": 0.5}
    den = GuidedDenoiser(model, audio, None, None, conditions, scales)
    calls = []
    handle = model.denoising_net.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    x = torch.randn(1, TINY.n_motions, TINY.motion_dim)
    with torch.no_grad():
        combined = den(x, 7)
    handle.remove()
    assert calls == [4]  # none, +audio, +gaze, +emotion

    # the same combination from four separate calls
    net, step = model.denoising_net, torch.tensor([7])
    pm, pa = model.context(1)
    null = model.null_audio_feat.expand(1, TINY.n_motions, -1)
    with torch.no_grad():
        b0 = net(x, null, pm, pa, step)[:, 5:]
        b1 = net(x, audio, pm, pa, step)[:, 5:]
        b2 = net(x, audio, pm, pa, step, conditions={"gaze": conditions["gaze"]})[:, 5:]
        b3 = net(x, audio, pm, pa, step, conditions=conditions)[:, 5:]
    expected = b0 + 2.5 * (b1 - b0) + 1.5 * (b2 - b1) + 0.5 * (b3 - b2)
    assert rel_err(combined, expected) < 1e-5


def test_unit_scales_run_one_branch():
    model = MotionGenerator(TINY).eval()
    den = GuidedDenoiser(model, torch.randn(1, 20, 32), None, None, {}, {"audio": 1.0})
    assert den.nb == 1


# ------------------------------------------------------------------------------------------------ driving


def test_euler_round_trip():
    g = torch.Generator().manual_seed(1)
    angles = (torch.rand(3, 50, generator=g) - 0.5) * 160  # +-80 degrees, away from gimbal lock
    back = euler_from_rotation(rotation_matrix(*angles))
    for a, b in zip(angles, back):
        assert (a - b).abs().max() < 1e-3


def test_relative_driving_starts_at_the_portrait():
    from vasa_engine.models.renderer import SourceState

    g = torch.Generator().manual_seed(2)
    src = SourceState(feature_3d=torch.zeros(1), kp=torch.randn(1, 21, 3, generator=g), pitch=torch.tensor([5.0]),
                      yaw=torch.tensor([-10.0]), roll=torch.tensor([2.0]), exp=torch.randn(1, 21, 3, generator=g) * .02,
                      t=torch.tensor([[0.01, -0.02, 0.3]]), scale=torch.tensor([[1.3]]), x_s=torch.zeros(1, 21, 3))
    template = MotionTemplate.neutral()
    motion = torch.rand(30, 70, generator=g)
    params = template.denormalize(motion)
    out = relative_driving(params, src, smoothing=0.0)
    assert out["pitch"][0].item() == pytest.approx(5.0, abs=1e-3)
    assert out["yaw"][0].item() == pytest.approx(-10.0, abs=1e-3)
    assert out["scale"][0].item() == pytest.approx(1.3, rel=1e-6)
    assert out["t"][0, :2].tolist() == pytest.approx([0.01, -0.02], abs=1e-7) and out["t"][:, 2].abs().max() == 0
    lips = [6, 12, 14, 17, 19, 20]
    others = [k for k in range(21) if k not in lips]
    assert torch.allclose(out["exp"][0, others], src.exp[0, others], atol=1e-7)
    assert torch.allclose(out["exp"][:, lips], params["exp"][:, lips])
    # every frame turns the portrait by the generated rotation relative to the first frame: R_i R_0^T R_s
    r = rotation_matrix(params["pitch"], params["yaw"], params["roll"])
    expected = r @ r[:1].transpose(1, 2) @ rotation_matrix(src.pitch, src.yaw, src.roll)
    assert rel_err(rotation_matrix(out["pitch"], out["yaw"], out["roll"]), expected) < 1e-5
    smoothed = relative_driving(params, src, smoothing=0.9)
    assert (smoothed["yaw"][1:] - smoothed["yaw"][:-1]).abs().max() < (out["yaw"][1:] - out["yaw"][:-1]).abs().max()


def test_template_round_trip():
    template = MotionTemplate.neutral()
    g = torch.Generator().manual_seed(3)
    m = torch.rand(8, 70, generator=g)
    p = template.denormalize(m)
    back = template.normalize(p["exp"], p["scale"], p["t"], p["pitch"], p["yaw"], p["roll"])
    assert rel_err(back, m) < 1e-5
    assert MotionTemplate.from_tensors(template.to_tensors()).minimum.tolist() == template.minimum.tolist()
