"""LivePortrait checkpoints (synthetic, in the public file layout) -> engine weights -> the same outputs."""

import os

import numpy as np
import pytest
import torch

from conftest import rel_err
from vasa_engine import Engine
from vasa_engine.checkpoints import LIVEPORTRAIT_RETARGET_FILE, convert_liveportrait
from vasa_engine.config import RendererConfig
from vasa_engine.errors import CheckpointError, InputError
from vasa_engine.models.renderer import IMAGE_MODULES, RETARGET_CHECKPOINT_NAMES
from vasa_engine.motion_script import scripted_motion


def write_layout(root, renderer, ddp_prefix=True):
    """base_models/<module>.pth (plain state dicts) and the retargeting bundle, keys with a DDP `module.` prefix."""
    (root / "base_models").mkdir(parents=True)
    (root / "retargeting_models").mkdir()
    for name in IMAGE_MODULES:
        torch.save(getattr(renderer, name).state_dict(), root / "base_models" / f"{name}.pth")
    bundle = {ckpt: {("module." if ddp_prefix else "") + k: v for k, v in getattr(renderer, name).state_dict().items()}
              for name, ckpt in RETARGET_CHECKPOINT_NAMES.items()}
    torch.save(bundle, root / LIVEPORTRAIT_RETARGET_FILE)
    return root


@pytest.fixture(scope="module")
def original():
    return Engine(None, device="cpu", config=RendererConfig.tiny(), seed=11)


@pytest.fixture
def layout(tmp_path, original):
    return write_layout(tmp_path / "liveportrait", original.renderer)


def test_converted_weights_give_the_same_frames(tmp_path, layout, original, sample_image):
    out = convert_liveportrait(tmp_path, tmp_path / "lp.safetensors", config=RendererConfig.tiny())
    assert out.exists() and out.with_suffix(".json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    converted = Engine(out, device="cpu")
    for key, value in original.renderer.state_dict().items():
        assert torch.equal(converted.renderer.state_dict()[key], value), key

    a_ref, a_new = original.prepare(sample_image), converted.prepare(sample_image)
    assert rel_err(a_new.source.feature_3d, a_ref.source.feature_3d) < 1e-6
    motion = scripted_motion(a_ref, 4)
    ref = original.render(a_ref, motion).astype(int)
    new = converted.render(a_new, motion).astype(int)
    assert np.abs(ref - new).max() <= 1  # the same floats up to the last bit, truncated to uint8


def test_without_ddp_prefix(tmp_path, original):
    write_layout(tmp_path / "lp", original.renderer, ddp_prefix=False)
    convert_liveportrait(tmp_path / "lp", tmp_path / "w.safetensors", config=RendererConfig.tiny())


def _expect_error(tmp_path, layout, match, cls=CheckpointError):
    target = tmp_path / "out.safetensors"
    with pytest.raises(cls, match=match) as info:
        convert_liveportrait(layout, target, config=RendererConfig.tiny())
    assert "\n" not in str(info.value)
    assert not target.exists() and not target.with_suffix(".json").exists()
    return str(info.value)


def test_missing_tensor(tmp_path, layout):
    path = layout / "base_models" / "warping_module.pth"
    state = torch.load(path, weights_only=True)
    del state["third.conv.weight"]
    torch.save(state, path)
    assert "third.conv.weight" in _expect_error(tmp_path, layout, "1 missing")


def test_misshaped_tensor(tmp_path, layout):
    path = layout / "base_models" / "spade_generator.pth"
    state = torch.load(path, weights_only=True)
    state["fc.bias"] = torch.zeros(3)
    torch.save(state, path)
    assert "fc.bias (3,)" in _expect_error(tmp_path, layout, "mis-shaped")


def test_checkpoint_of_the_wrong_model(tmp_path, layout):
    base = layout / "base_models"
    os.replace(base / "warping_module.pth", base / "tmp.pth")
    os.replace(base / "spade_generator.pth", base / "warping_module.pth")
    _expect_error(tmp_path, layout, "missing")


def test_truncated_checkpoint(tmp_path, layout):
    path = layout / "base_models" / "motion_extractor.pth"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path, layout, "truncated or not a PyTorch file")


class _Payload:
    def __reduce__(self):
        return (os.mkdir, (str(_Payload.marker),))


def test_pickled_code_is_refused_not_run(tmp_path, layout):
    _Payload.marker = tmp_path / "payload_ran"
    path = layout / "base_models" / "appearance_feature_extractor.pth"
    state = torch.load(path, weights_only=True)
    state["extra"] = _Payload()
    torch.save(state, path)
    _expect_error(tmp_path, layout, "objects other than tensors")
    assert not _Payload.marker.exists()


def test_missing_retargeting_bundle_entry(tmp_path, layout):
    path = layout / LIVEPORTRAIT_RETARGET_FILE
    bundle = torch.load(path, weights_only=True)
    del bundle["retarget_eye"]
    torch.save(bundle, path)
    _expect_error(tmp_path, layout, "retarget_eye")


def test_folder_without_checkpoints(tmp_path):
    _expect_error(tmp_path, tmp_path, "no LivePortrait checkpoints", cls=InputError)
