"""At the default config, every renderer module's state_dict equals the public checkpoints' keys and shapes."""

import pytest
import torch

from conftest import DATA
from vasa_engine.config import RendererConfig
from vasa_engine.models.renderer import RETARGET_CHECKPOINT_NAMES, FaceRenderer


def spec() -> dict[str, dict[str, tuple[str, str]]]:
    table: dict[str, dict[str, tuple[str, str]]] = {}
    lines = (DATA / "liveportrait_keys.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["module", "key", "shape", "dtype"]
    for line in lines[1:]:
        module, key, shape, dtype = line.split("\t")
        table.setdefault(module, {})[key] = (shape, dtype)
    return table


@pytest.fixture(scope="module")
def renderer():
    with torch.device("meta"):
        return FaceRenderer(RendererConfig())


def engine_module_name(spec_module: str) -> str:
    if spec_module.startswith("stitching_retargeting_module."):
        ckpt = spec_module.split(".", 1)[1]
        return {v: k for k, v in RETARGET_CHECKPOINT_NAMES.items()}[ckpt]
    return spec_module


@pytest.mark.parametrize("spec_module", sorted(spec()))
def test_state_dict_matches_public_checkpoint(renderer, spec_module):
    expected = spec()[spec_module]
    got = {k: ("x".join(map(str, v.shape)) if v.dim() else "scalar", str(v.dtype).removeprefix("torch."))
           for k, v in getattr(renderer, engine_module_name(spec_module)).state_dict().items()}
    assert set(got) == set(expected), (
        f"missing {sorted(set(expected) - set(got))[:5]}, unexpected {sorted(set(got) - set(expected))[:5]}")
    assert got == expected


def test_every_module_is_covered(renderer):
    assert {engine_module_name(m) for m in spec()} == {name for name, _ in renderer.named_children()}
