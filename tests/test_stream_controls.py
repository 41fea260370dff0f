"""A stream's controls changed mid-stream, and idle frames that can never catch up with the clock (a device slower
than real time) not holding back the speech or the end of an utterance."""

import numpy as np
import pytest
import torch

from vasa_engine.controls import Controls
from vasa_engine.errors import InputError

SR = 16000


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * SR)).astype(np.float32)


def yaw(frames) -> np.ndarray:
    return np.array([float(f.driving["yaw"][0]) for f in frames])


def test_set_controls_applies_from_the_next_chunk(engine, avatar):
    pcm = noise(0.96, 1)
    base = Controls(steps=3)
    with engine.stream(avatar, base, chunk_ms=120, lookahead_ms=40) as plain:
        a = plain.push(pcm[:6400], SR) + plain.flush()
    with engine.stream(avatar, base, chunk_ms=120, lookahead_ms=40) as changed:
        first = changed.push(pcm[:6400], SR)
        assert changed.wait_idle(60)
        first += changed.poll()
        changed.set_controls(Controls(steps=3, head_yaw=20.0))
        rest = changed.flush()
    b = first + rest
    assert len(a) == len(b) == 10
    n = len(first)
    assert 0 < n < 10
    assert np.allclose(yaw(a[:n]), yaw(b[:n]), atol=1e-5)  # before the change: the same frames
    assert np.allclose(yaw(b[n:]) - yaw(a[n:]), 20.0, atol=1e-3)  # after it: the offset, nothing else
    assert changed.controls.head_yaw == 20.0


def test_set_controls_refuses_bad_values_and_changes_nothing(engine, avatar):
    with engine.stream(avatar, Controls(steps=3)) as session:
        with pytest.raises(InputError, match="steps must be between 1 and"):
            session.set_controls(Controls(steps=999))
        with pytest.raises(InputError, match="controls must be a Controls"):
            session.set_controls({"head_yaw": 3})
        assert session.controls.steps == 3


def test_flush_finishes_while_idle_frames_are_always_due(engine, avatar):
    """idle_slack_ms=0 on a CPU slower than 25 fps: an idle frame is due at every moment, yet the utterance's frames
    come first and flush returns them all."""
    with engine.stream(avatar, Controls(steps=2), chunk_ms=120, lookahead_ms=40, idle=True, idle_slack_ms=0,
                       end_after_ms=None) as session:
        assert session.get(30) is not None  # the idle clock is running
        frames = session.push(noise(0.4, 2), SR) + session.flush(timeout=120)
        speech = [f for f in frames if f.kind == "speech"]
        assert len(speech) == 10 and [f.frame for f in speech] == list(range(10))
        assert torch.isfinite(torch.tensor([float(f.driving["pitch"][0]) for f in speech])).all()
