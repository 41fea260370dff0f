"""Every module against the outputs of the public reference implementations (random weights), per output."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import rel_err, require_parity_dir
from vasa_engine.compat import run_fixture

FIXTURES = [
    "lp_appearance_feature_extractor", "lp_motion_extractor", "lp_warping_module", "lp_spade_generator",
    "lp_render", "lp_retarget_stitching", "lp_retarget_lip", "lp_retarget_eye", "lp_keypoint_math",
    "hubert_model", "joyvasa_audio_feature", "joyvasa_denoiser", "joyvasa_sample_first", "joyvasa_sample_next",
]


def test_every_fixture_is_covered():
    present = {p.stem for p in require_parity_dir().glob("*.safetensors")}
    assert present == set(FIXTURES)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture(name):
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
