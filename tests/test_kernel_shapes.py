"""vasa_engine.kernel_shapes against the models: at reduced configs, the calls each model makes to the operations
have exactly the shapes kernel_shapes derives from the same configs (so at the default configs its cases are the
engine's real shapes)."""

import pytest
import torch

from conftest import tiny_audio_config, tiny_motion_config
from vasa_engine import backend, kernel_shapes, ops
from vasa_engine.config import RendererConfig


@pytest.fixture
def calls(monkeypatch):
    """Operation name -> the shapes of the first tensor argument of every call the models make."""
    seen: dict[str, list[tuple[int, ...]]] = {}
    for name in ops.OPERATIONS:
        inner = getattr(ops, name)

        def spy(first, *args, _inner=inner, _name=name, **kwargs):
            seen.setdefault(_name, []).append(tuple(first.shape))
            return _inner(first, *args, **kwargs)

        monkeypatch.setattr(ops, name, spy)
    return seen


def test_renderer_calls(calls):
    from vasa_engine.models.appearance import AppearanceFeatureExtractor
    from vasa_engine.models.spade import SPADEDecoder
    from vasa_engine.models.warping import WarpingNetwork

    cfg = RendererConfig.tiny()
    b, k = 2, cfg.warping_module.num_kp
    torch.manual_seed(0)
    appearance = AppearanceFeatureExtractor(cfg.appearance_feature_extractor).eval()
    warping = WarpingNetwork(cfg.warping_module).eval()
    decoder = SPADEDecoder(cfg.spade_generator).eval()
    with torch.no_grad(), backend.use("reference"):
        volume = appearance(torch.rand(1, 3, cfg.input_size, cfg.input_size)).expand(b, -1, -1, -1, -1)
        kp_source = torch.rand(b, k, 3) * 1.6 - 0.8
        decoder(warping(volume, kp_source=kp_source, kp_driving=kp_source + 0.05)["out"])

    (dense,) = kernel_shapes.dense_motion_cases(cfg, (b,))
    assert calls["dense_motion_input"] == [dense.shape]
    # the dense motion input's unfused path samples through the grid-sample operation too
    assert set(calls["grid_sample_3d"]) == {case.shape for case in kernel_shapes.grid_sample_cases(cfg, (b,))}
    assert set(calls["spade_modulate"]) == {case.shape for case in kernel_shapes.spade_cases(cfg, (b,))}


def test_motion_generator_calls(calls):
    from vasa_engine.models.motion_generator import DenoisingNetwork

    cfg = tiny_motion_config()
    b = kernel_shapes.motion_batches(cfg)[-1]
    torch.manual_seed(1)
    net = DenoisingNetwork(cfg).eval()
    d = cfg.feature_dim
    with torch.no_grad(), backend.use("reference"):
        net(torch.randn(b, cfg.n_motions, cfg.motion_dim), torch.randn(b, cfg.n_motions, d),
            torch.randn(b, cfg.n_prev_motions, cfg.motion_dim), torch.randn(b, cfg.n_prev_motions, d),
            torch.zeros(b, dtype=torch.long))

    def case(cases):
        (found,) = [c for c in cases if c.name == f"motion_d{d}_b{b}"]
        return found

    att = case(kernel_shapes.attention_cases((cfg,), tiny_audio_config()))
    assert set(calls["attention"]) == {(att.batch, att.heads, att.tokens, att.head_dim)}
    norm = case(kernel_shapes.add_layer_norm_cases((cfg,), tiny_audio_config()))
    assert {(s[0] * s[1], s[2]) for s in calls["add_layer_norm"]} == {(norm.rows, norm.width)}
    emb = case(kernel_shapes.add_embeddings_cases((cfg,)))
    assert calls["add_embeddings"] == [(emb.batch, emb.tokens, emb.width)]


def test_audio_encoder_calls(calls):
    from vasa_engine.audio_features import SAMPLES_PER_VIDEO_FRAME, AudioFeatureEncoder

    motion, audio = tiny_motion_config(), tiny_audio_config()
    torch.manual_seed(2)
    encoder = AudioFeatureEncoder(audio, motion.feature_dim).eval()
    with torch.no_grad(), backend.use("reference"):
        encoder.window_hidden_2l(torch.randn(1, motion.n_motions * SAMPLES_PER_VIDEO_FRAME))

    (att,) = [c for c in kernel_shapes.attention_cases((motion,), audio) if c.name == "audio_b1"]
    assert set(calls["attention"]) == {(1, att.heads, att.tokens, att.head_dim)}
    assert set(calls["add_layer_norm"]) == {(1, att.tokens, audio.hidden_size)}
