"""CUDA graphs: the captured sampler loop and renderer equal the eager paths. Without a GPU the graphed code path
runs eagerly, which still checks that it hands the same inputs to the same computation. Capture under threads and
failures: tests/test_graph_capture.py."""

import numpy as np
import pytest
import torch

from conftest import rel_err, tiny_motion_config
from vasa_engine import Engine
from vasa_engine.generation import Controls, MotionSampler, generate_windows
from vasa_engine.graphs import GraphCache
from vasa_engine.models.motion_generator import MotionGenerator
from vasa_engine.weights import seeded

CUDA = torch.cuda.is_available()


def _read_wav(path) -> np.ndarray:
    import wave

    with wave.open(str(path)) as f:
        assert f.getframerate() == 16000 and f.getnchannels() == 1 and f.getsampwidth() == 2
        return np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16).astype(np.float32) / 32768


@pytest.fixture(scope="module")
def generator():
    with seeded(4):
        return MotionGenerator(tiny_motion_config()).eval()


@pytest.mark.parametrize("controls", [Controls(steps=4), Controls(sampler="ddim", steps=3),
                                      Controls(sampler="ddpm"), Controls(steps=2, audio_scale=1.0)],
                         ids=["dpmpp", "ddim", "ddpm", "one-branch"])
def test_graphed_loop_hands_the_same_inputs(generator, controls):
    feats = torch.randn(3, 20, 32, generator=torch.Generator().manual_seed(1))
    conditions = {"gaze": torch.tensor([[8.0, -3.0]]), "emotion": torch.randn(1, 4)}
    with torch.no_grad():
        ref = generate_windows(generator, feats, controls, conditions)
        cache = GraphCache("sampler loop")  # CPU tensors: it runs the graph's function eagerly
        got = MotionSampler(generator, cache).sample_windows(feats, controls, conditions)
    assert not cache.calls and rel_err(got, ref) < 1e-6


def test_cache_runs_eagerly_without_cuda():
    cache = GraphCache("test")
    x = torch.arange(4.0)
    assert torch.equal(cache.run("k", lambda t: t * 2, [x]), x * 2) and not cache.calls and not cache.failed


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_graph_replay_equals_eager(tiny_full_weights, sample_image, sample_speech, dtype):
    graphed = Engine(tiny_full_weights, device="cuda", dtype=dtype)
    eager = Engine(tiny_full_weights, device="cuda", dtype=dtype, cuda_graphs=False)
    bound = 1e-5 if dtype == "float32" else 2e-2
    a_g, a_e = graphed.prepare(sample_image), eager.prepare(sample_image)
    speech = _read_wav(sample_speech)  # 16 kHz samples: no PyAV needed (GPU machines may lack it)
    for controls in (Controls(steps=5), Controls(sampler="ddpm"), Controls(steps=3, audio_scale=1.0)):
        m_g = graphed.generate_motion(a_g, speech, controls, sample_rate=16000)
        m_e = eager.generate_motion(a_e, speech, controls, sample_rate=16000)
        assert rel_err(m_g.exp, m_e.exp) < bound and rel_err(m_g.yaw, m_e.yaw) < bound
    assert graphed.sampler_graphs.calls and not graphed.sampler_graphs.failed
    f_g = graphed.render(a_g, m_g, batch_size=4).astype(np.float64)
    f_e = eager.render(a_e, m_g, batch_size=4).astype(np.float64)
    assert graphed.render_graphs.calls and not graphed.render_graphs.failed
    assert np.linalg.norm(f_g - f_e) / np.linalg.norm(f_e) < (1e-5 if dtype == "float32" else 2e-2)
    # a second portrait replays the same graphs with its own source
    other = graphed.prepare(np.ascontiguousarray(np.flip(a_g.image, axis=1)))
    f_o = graphed.render(other, m_g[:4], batch_size=4).astype(np.float64)
    f_oe = eager.render(eager.prepare(np.ascontiguousarray(np.flip(a_e.image, axis=1))), m_g[:4], batch_size=4)
    assert np.linalg.norm(f_o - f_oe) / np.linalg.norm(f_oe) < (1e-5 if dtype == "float32" else 2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_replays_are_copied_out():
    cache = GraphCache("test")
    x = torch.arange(6.0, device="cuda")
    first = cache.run("k", lambda t: t * 2, [x], copy=True)
    second = cache.run("k", lambda t: t * 2, [x + 1], copy=True)
    assert "k" in cache.calls and torch.equal(first, x * 2) and torch.equal(second, (x + 1) * 2)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_threads_sharing_one_engine_get_their_own_frames(tiny_full_weights, sample_image):
    """Two threads render two portraits through the same captured graphs (shared source buffers and outputs):
    each gets the frames the eager engine gives for its own portrait. A graph captured under one backend is not
    replayed under another."""
    import threading

    from vasa_engine.motion_script import scripted_motion

    graphed = Engine(tiny_full_weights, device="cuda", dtype="float32")
    eager = Engine(tiny_full_weights, device="cuda", dtype="float32", cuda_graphs=False)
    image = graphed.prepare(sample_image).image
    images = [image, np.ascontiguousarray(np.flip(image, axis=1))]
    avatars = [graphed.prepare(i) for i in images]
    motions = [scripted_motion(a, 12) for a in avatars]
    expected = [eager.render(eager.prepare(i), m, batch_size=4).astype(np.float64) for i, m in zip(images, motions)]
    results: dict[int, list] = {0: [], 1: []}

    def work(i):
        for _ in range(5):
            results[i].append(graphed.render(avatars[i], motions[i], batch_size=4).astype(np.float64))

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        for got in results[i]:
            assert np.linalg.norm(got - expected[i]) / np.linalg.norm(expected[i]) < 1e-5
    keys = set(graphed.render_graphs.calls)
    reference = graphed.variant(backend="reference")
    reference.render(avatars[0], motions[0][:4], batch_size=4)
    assert set(graphed.render_graphs.calls) == keys and reference.render_graphs.calls
    assert all(key[-1] == "reference" for key in reference.render_graphs.calls)
