"""Every renderer module against the outputs of the public reference implementation (random weights)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import rel_err, require_parity_dir
from vasa_engine.compat import run_fixture

RENDERER_FIXTURES = [
    "lp_appearance_feature_extractor", "lp_motion_extractor", "lp_warping_module", "lp_spade_generator",
    "lp_render", "lp_retarget_stitching", "lp_retarget_lip", "lp_retarget_eye", "lp_keypoint_math",
]
PENDING_FIXTURES = ["hubert_model", "joyvasa_audio_feature", "joyvasa_denoiser", "joyvasa_sample_first",
                    "joyvasa_sample_next"]


@pytest.mark.parametrize("name", RENDERER_FIXTURES)
def test_renderer_fixture(name):
    path = require_parity_dir() / f"{name}.safetensors"
    ref = load_file(str(path))
    expected = {k.removeprefix("outputs."): v for k, v in ref.items() if k.startswith("outputs.")}
    assert set(expected) == set(json.loads(path.with_suffix(".json").read_text())["outputs"])
    torch.manual_seed(0)
    out = run_fixture(path)
    for key, value in expected.items():
        assert key in out, f"{name}: output {key} missing"
        assert out[key].shape == value.shape, f"{name}.{key}: shape {tuple(out[key].shape)} != {tuple(value.shape)}"
        err = rel_err(out[key], value)
        assert err <= 1e-5, f"{name}.{key}: relative error {err:.3e} > 1e-5"


@pytest.mark.parametrize("name", PENDING_FIXTURES)
def test_unsupported_fixture_names_its_module(name):
    path = require_parity_dir() / f"{name}.safetensors"
    if not path.exists():
        pytest.skip(f"{path} not present")
    try:
        run_fixture(path)
    except NotImplementedError as exc:
        module = json.loads(path.with_suffix(".json").read_text())["module"]
        assert name in str(exc) and module in str(exc)
