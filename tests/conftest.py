import os
from pathlib import Path

import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors. It must be chosen before triton is
# imported. (AOT compilation for sm_90a / sm_89 needs the real compiler: those tests run in a subprocess.)
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from helpers import INTERPRET, KERNEL_DEVICES, rel_err  # noqa: E402,F401  (shared with the test modules)

# A developer's download cache must not change what the tests see (the CLI uses it when no --weights is given).
os.environ["VASA_ENGINE_CACHE"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"vasa-engine-test-cache-{os.getpid()}")

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def parity_dir() -> Path:
    """Parity fixtures: $VASA_PARITY_DIR, else ../shared/fixtures/parity beside the repository."""
    return Path(os.environ.get("VASA_PARITY_DIR", REPO.parent / "shared" / "fixtures" / "parity"))


def require_parity_dir() -> Path:
    folder = parity_dir()
    if not folder.is_dir():
        message = f"parity fixtures not found at {folder} (set VASA_PARITY_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty / torch.empty_like give NaN-filled floating tensors: unwritten output elements stay NaN."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))
    yield


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Engine-format weights of the reduced renderer config, seeded random."""
    from vasa_engine import Engine
    from vasa_engine.config import RendererConfig

    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    Engine(None, device="cpu", config=RendererConfig.tiny(), seed=3).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_engine(tiny_weights):
    from vasa_engine import Engine

    return Engine(tiny_weights, device="cpu")


@pytest.fixture(scope="session")
def sample_image() -> Path:
    return REPO / "vasa_engine" / "assets" / "astronaut.png"


def tiny_audio_config():
    from vasa_engine.models.audio_encoder import AudioEncoderConfig

    return AudioEncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                              conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def tiny_motion_config(**changes):
    from vasa_engine.models.motion_generator import MotionGeneratorConfig

    return MotionGeneratorConfig(**{**dict(feature_dim=32, n_layers=2, n_heads=4, n_motions=20, n_prev_motions=5,
                                           emotion_dim=4), **changes})


@pytest.fixture(scope="session")
def tiny_full_weights(tmp_path_factory) -> Path:
    """Engine-format weights of every component (renderer, audio encoder, motion generator) at reduced sizes."""
    from vasa_engine import Engine
    from vasa_engine.config import RendererConfig

    path = tmp_path_factory.mktemp("weights") / "tiny_full.safetensors"
    engine = Engine(None, device="cpu", config=RendererConfig.tiny(), motion_config=tiny_motion_config(),
                    audio_config=tiny_audio_config(), seed=5)
    engine.motion_stack
    engine.save(path)
    return path


@pytest.fixture(scope="module")
def engine(tiny_full_weights):
    """An engine with every component at reduced sizes (seeded random weights), one per test module."""
    from vasa_engine import Engine

    return Engine(tiny_full_weights, device="cpu")


@pytest.fixture(scope="module")
def avatar(engine, sample_image):
    return engine.prepare(sample_image)


@pytest.fixture(scope="session")
def sample_speech() -> Path:
    return REPO / "vasa_engine" / "assets" / "speech.wav"
