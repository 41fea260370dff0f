"""`vasa-engine download` without a network: a synthetic checkpoint set in the public file layout (reduced sizes)
served by a stand-in for huggingface_hub's downloader, checked and converted into the cache, with the same outputs
from the converted engine weights as from the originals; licence prompts, offline mode, and bad checkpoints."""

import argparse
import dataclasses
import io
import json
import os
import pathlib
import pickle
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, tiny_audio_config, tiny_motion_config
from vasa_engine import Engine, cli, hub
from vasa_engine.audio_features import AudioFeatureEncoder
from vasa_engine.checkpoints import (
    INSIGHTFACE_LICENCE, LIVEPORTRAIT_FILES, LIVEPORTRAIT_RETARGET_FILE, TEMPLATE_KEYS)
from vasa_engine.config import RendererConfig
from vasa_engine.errors import CheckpointError, InputError
from vasa_engine.generation import Controls, generate_windows
from vasa_engine.hub import catalogue
from vasa_engine.models.audio_encoder import AudioEncoder
from vasa_engine.models.motion_generator import MotionGenerator
from vasa_engine.models.renderer import IMAGE_MODULES, RETARGET_CHECKPOINT_NAMES
from vasa_engine.motion_script import scripted_motion
from vasa_engine.weights import seeded

MOTION_CFG = tiny_motion_config(gaze=False, distance=False, emotion_dim=0, n_heads=8)  # JoyVASA fixes 8 heads
# The synthetic files are smaller than the published ones: same entries, without the published sizes and digests.
SYNTHETIC_MANIFEST = tuple(dataclasses.replace(f, size=None, sha256=None) for f in hub.MANIFEST)
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
ENV.pop(hub.OFFLINE_ENV, None)


class NetworkUsed(BaseException):
    """Not an Exception: no `except Exception` on the way can swallow it."""


ATTEMPTS: list[str] = []


def _refuse(*args, **kwargs):
    ATTEMPTS.append(repr(args[1:] if args else kwargs))
    raise NetworkUsed(f"network access attempted: {ATTEMPTS[-1]}")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here fails on any attempt to open a connection or resolve a host name, even one caught."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    monkeypatch.delenv(hub.OFFLINE_ENV, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    ATTEMPTS.clear()
    yield
    assert not ATTEMPTS, f"network access attempted: {ATTEMPTS}"


def test_the_network_guard_works():
    with pytest.raises(NetworkUsed):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    assert ATTEMPTS
    ATTEMPTS.clear()


# ------------------------------------------------------------------------------------------ the synthetic set


def _onnx_bytes(payload: bytes = b"graph") -> bytes:
    """A minimal ONNX ModelProto: ir_version, producer_name, graph (opaque here), opset_import."""
    def field(number, data):
        return bytes([number << 3 | 2, len(data)]) + data

    return b"\x08\x08" + field(2, b"synthetic") + field(7, payload * 8) + field(8, b"\x10\x11")


def _hf_hubert_files(folder: pathlib.Path, encoder: AudioEncoder) -> None:
    """config.json and pytorch_model.bin as a Hugging Face HuBERT folder (old weight-norm names, as published)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tiny_audio_config()
    config = {"model_type": "hubert", "architectures": ["HubertModel"], "mask_time_prob": 0.05,
              **{k: v for k, v in cfg.to_dict().items() if k not in ("model_type", "masked_spec_embed",
                                                                       "feat_proj_layer_norm")}}
    (folder / "config.json").write_text(json.dumps(config))
    state = {}
    for key, value in encoder.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v")
        state[key] = value.clone()
    torch.save(state, folder / "pytorch_model.bin")


def _joyvasa_files(root: pathlib.Path, generator, audio, with_audio_encoder=True) -> tuple:
    state = {**audio.state_dict(), **generator.state_dict()}
    if not with_audio_encoder:
        state = {k: v for k, v in state.items() if not k.startswith("audio_encoder.")}
    for new, old in (("parametrizations.weight.original0", "weight_g"),
                     ("parametrizations.weight.original1", "weight_v")):
        key = f"audio_encoder.encoder.pos_conv_embed.conv.{new}"
        if key in state:
            state[key.replace(new, old)] = state.pop(key)
    args = argparse.Namespace(n_motions=MOTION_CFG.n_motions, n_prev_motions=MOTION_CFG.n_prev_motions, fps=25,
                              audio_model="hubert_zh", exp_dir=pathlib.PosixPath("/experiments/joyvasa"))
    ckpt = root / "motion_generator" / "motion_generator_hubert_chinese.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"args": args, "model": state, "iter": 1}, ckpt)
    rng = np.random.default_rng(4)
    template = {k: rng.uniform(0.5, 1.0, size=(63,) if "exp" in k else (3,) if k.endswith("_t") else (1,))
                .astype(np.float32) for k in TEMPLATE_KEYS}
    for k in ("scale", "t", "pitch", "yaw", "roll"):
        template[f"max_{k}"] = template[f"min_{k}"] + 1.0
    template["mean_R"] = np.eye(3, dtype=np.float32).reshape(-1)
    path = root / "motion_template" / "motion_template.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(template))
    return ckpt, path


@dataclasses.dataclass
class PublicSet:
    root: pathlib.Path  # <root>/<owner>/<name>/<path in the repository>
    renderer_engine: Engine
    generator: MotionGenerator
    audio: AudioFeatureEncoder
    hubert: AudioEncoder


@pytest.fixture(scope="module")
def public_set(tmp_path_factory) -> PublicSet:
    root = tmp_path_factory.mktemp("hub")
    original = Engine(None, device="cpu", config=RendererConfig.tiny(), seed=11)
    lp = root / "KwaiVGI" / "LivePortrait"
    (lp / "liveportrait" / "base_models").mkdir(parents=True)
    (lp / "liveportrait" / "retargeting_models").mkdir()
    for name in IMAGE_MODULES:
        torch.save(getattr(original.renderer, name).state_dict(), lp / "liveportrait" / "base_models" / f"{name}.pth")
    bundle = {ckpt: {"module." + k: v for k, v in getattr(original.renderer, name).state_dict().items()}
              for name, ckpt in RETARGET_CHECKPOINT_NAMES.items()}
    torch.save(bundle, lp / "liveportrait" / LIVEPORTRAIT_RETARGET_FILE)
    (lp / "liveportrait" / "landmark.onnx").write_bytes(_onnx_bytes(b"landmark"))
    (lp / "insightface" / "models" / "buffalo_l").mkdir(parents=True)
    for name in ("det_10g.onnx", "2d106det.onnx"):
        (lp / "insightface" / "models" / "buffalo_l" / name).write_bytes(_onnx_bytes(name.encode()))
    with seeded(21):
        generator = MotionGenerator(MOTION_CFG).eval()
        audio = AudioFeatureEncoder(tiny_audio_config(), MOTION_CFG.feature_dim).eval()
        hubert = AudioEncoder(tiny_audio_config()).eval()
    _joyvasa_files(root / "jdh-algo" / "JoyVASA", generator, audio)
    _hf_hubert_files(root / "TencentGameMate" / "chinese-hubert-base", hubert)
    return PublicSet(root, original, generator, audio, hubert)


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: copies from the synthetic set into local_dir."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.calls: list[str] = []

    def __call__(self, repo_id, filename, *, revision=None, local_dir=None, force_download=False, **kwargs):
        self.calls.append(f"{repo_id}/{filename}")
        target = pathlib.Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / repo_id / filename, target)
        return str(target)


@pytest.fixture
def fake_hub(monkeypatch, public_set) -> FakeHub:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    fake = FakeHub(public_set.root)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    return fake


@pytest.fixture
def synthetic_manifest(monkeypatch):
    monkeypatch.setattr(catalogue, "MANIFEST", SYNTHETIC_MANIFEST)


def _fill_cache(cache: pathlib.Path, public_set: PublicSet, groups=hub.GROUPS) -> None:
    """Put the synthetic files where a download leaves them."""
    for spec in hub.select(groups):
        target = spec.local_path(cache)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(public_set.root / spec.repo / spec.path, target)


def _engine_files(cache: pathlib.Path) -> list[str]:
    folder = hub.engine_dir(cache)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------------ the main path


def test_download_converts_once_and_gives_the_same_outputs(tmp_path, public_set, fake_hub, sample_image):
    cache = tmp_path / "cache"
    lines = []
    report = hub.download(cache, yes=True, manifest=SYNTHETIC_MANIFEST, renderer_config=RendererConfig.tiny(),
                          out=lines.append)
    assert sorted(fake_hub.calls) == sorted(f.name for f in hub.MANIFEST)
    assert {r.group: r.status for r in report.results} == {
        "liveportrait": "converted", "joyvasa": "converted", "faces": "checked", "hubert": "checked"}
    engine = hub.engine_dir(cache)
    assert _engine_files(cache) == ["joyvasa.json", "joyvasa.safetensors", "liveportrait.json",
                                    "liveportrait.safetensors"]
    assert hub.find_weights(cache) == [engine / "liveportrait.safetensors", engine / "joyvasa.safetensors",
                                       hub.group_dir(cache, "faces")]
    assert (hub.group_dir(cache, "faces") / "insightface/models/buffalo_l/det_10g.onnx").is_file()

    converted = Engine(hub.engine_weights(cache), device="cpu")
    assert converted.random_components == []
    # renderer: the same frames, up to the last bit of the floats (truncated to uint8)
    original = public_set.renderer_engine
    a_ref, a_new = original.prepare(sample_image), converted.prepare(sample_image)
    motion = scripted_motion(a_ref, 3)
    assert np.abs(original.render(a_ref, motion).astype(int) - converted.render(a_new, motion).astype(int)).max() <= 1
    # motion generator: the same outputs
    stack = converted.motion_stack
    feats = torch.randn(2, MOTION_CFG.n_motions, MOTION_CFG.feature_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = generate_windows(public_set.generator, feats, Controls(steps=4))
        new = generate_windows(stack.generator, feats, Controls(steps=4))
    assert torch.equal(ref, new)
    for key, value in public_set.audio.state_dict().items():
        assert torch.equal(stack.audio.state_dict()[key], value), key
    doc = json.loads((engine / "joyvasa.json").read_text())
    assert doc["components"]["motion_generator"]["training_args"]["exp_dir"] == "/experiments/joyvasa"

    # once: a second run fetches nothing and converts nothing
    before = (engine / "liveportrait.safetensors").stat().st_mtime_ns
    report = hub.download(cache, manifest=SYNTHETIC_MANIFEST, renderer_config=RendererConfig.tiny(),
                          confirm=lambda prompt: pytest.fail(f"asked again: {prompt}"))
    assert len(fake_hub.calls) == len(hub.MANIFEST)
    assert {r.status for r in report.results} == {"up to date"}
    assert (engine / "liveportrait.safetensors").stat().st_mtime_ns == before


def test_offline_uses_only_the_cache(tmp_path, public_set, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("fetcher called offline"))
    cache = tmp_path / "cache"
    report = hub.download(cache, offline=True, manifest=SYNTHETIC_MANIFEST)
    assert len(report.missing) == len(hub.MANIFEST) and not report.fetched
    assert {r.status for r in report.results} == {"incomplete"}
    assert not cache.exists()
    # the environment variable alone also means offline; what the cache holds is checked and converted
    _fill_cache(cache, public_set, ["liveportrait", "faces"])
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    report = hub.download(cache, manifest=SYNTHETIC_MANIFEST, renderer_config=RendererConfig.tiny())
    statuses = {r.group: r.status for r in report.results}
    assert statuses == {"liveportrait": "converted", "joyvasa": "incomplete", "faces": "checked",
                        "hubert": "incomplete"}
    assert [f.group for f in report.missing] == ["joyvasa"] * 2 + ["hubert"] * 2
    assert hub.engine_weights(cache) == [hub.engine_dir(cache) / "liveportrait.safetensors"]


def test_offline_command_does_not_import_the_downloader(tmp_path):
    """The command in a fresh interpreter with connections refused: huggingface_hub is never imported."""
    code = (
        "import socket, sys, json\n"
        "def refuse(*a, **k): raise SystemExit('network access attempted')\n"
        "socket.socket.connect = refuse; socket.getaddrinfo = refuse\n"
        "from vasa_engine import cli\n"
        f"rc = cli.main(['download', '--offline', '--cache-dir', {str(tmp_path / 'c')!r}])\n"
        "print(json.dumps({'rc': rc, 'hub': 'huggingface_hub' in sys.modules}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"rc": 0, "hub": False}
    assert "run `vasa-engine download` without --offline" in res.stdout


# ------------------------------------------------------------------------------------------ licences


def test_licence_prompt(tmp_path, fake_hub, synthetic_manifest, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\nn\n"))
    assert cli.main(["download", "--cache-dir", str(cache), "--only", "faces"]) == 0
    out = capsys.readouterr().out
    for name in ("det_10g.onnx", "2d106det.onnx"):
        assert (f"KwaiVGI/LivePortrait/insightface/models/buffalo_l/{name} is licensed for non-commercial use "
                f"only ({INSIGHTFACE_LICENCE}). Download it? [y/N]") in out
    assert "skipped (licence not confirmed): det_10g.onnx, 2d106det.onnx" in out
    assert fake_hub.calls == ["KwaiVGI/LivePortrait/liveportrait/landmark.onnx"]  # MIT: no question
    assert hub.faces_folder(cache) is None

    # "y" fetches the one asked about; --yes fetches without asking (an empty stdin would answer no)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    assert cli.main(["download", "--cache-dir", str(cache), "--only", "faces"]) == 0
    assert fake_hub.calls[-1].endswith("det_10g.onnx")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli.main(["download", "--cache-dir", str(cache), "--only", "faces", "--yes"]) == 0
    out = capsys.readouterr().out
    assert fake_hub.calls[-1].endswith("2d106det.onnx") and "face models:" in out
    assert hub.faces_folder(cache) == hub.group_dir(cache, "faces")


def test_list_shows_licences_and_presence(tmp_path, public_set, capsys):
    cache = tmp_path / "cache"
    _fill_cache(cache, public_set, ["joyvasa"])
    assert cli.main(["download", "--list", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[1]: line for line in out if line.startswith("  ")}
    assert len(rows) == len(hub.MANIFEST)
    det = rows["KwaiVGI/LivePortrait/insightface/models/buffalo_l/det_10g.onnx"]
    assert "non-commercial" in det and "commercial use: NO" in det and det.endswith("missing")
    assert rows["jdh-algo/JoyVASA/motion_template/motion_template.pkl"].endswith("present")
    assert "MIT" in rows["KwaiVGI/LivePortrait/liveportrait/base_models/spade_generator.pth"]


def test_manifest():
    groups = {f.group for f in hub.MANIFEST}
    assert groups == set(hub.GROUPS)
    assert len({f.name for f in hub.MANIFEST}) == len(hub.MANIFEST)
    for spec in hub.MANIFEST:
        assert spec.licence and spec.repo.count("/") == 1
        assert spec.sha256 is None or (len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0)
    asking = {f.path.rsplit("/", 1)[-1] for f in hub.MANIFEST if f.needs_confirmation}
    assert asking == {"det_10g.onnx", "2d106det.onnx"}
    lp = sorted(f.path for f in hub.MANIFEST if f.group == "liveportrait")
    assert lp == sorted([f"liveportrait/{p}" for p in LIVEPORTRAIT_FILES.values()]
                        + [f"liveportrait/{LIVEPORTRAIT_RETARGET_FILE}"])


# ------------------------------------------------------------------------------------------ settings


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(hub.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.resolve_cache_dir() == tmp_path / "home" / ".cache" / "vasa-engine"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.resolve_cache_dir() == tmp_path / "xdg" / "vasa-engine"
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "env"))
    assert hub.resolve_cache_dir() == tmp_path / "env"
    assert hub.resolve_cache_dir(tmp_path / "option") == tmp_path / "option"
    assert hub.cache_dir_origin("~/w")[0] == tmp_path / "home" / "w"
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv(hub.OFFLINE_ENV, value)
        assert hub.offline_requested() is expected
    assert hub.offline_requested(True)


def test_weights_for_engine(tmp_path, public_set):
    cache = tmp_path / "cache"
    assert hub.weights_for_engine(None, cache) == (None, None)
    assert hub.weights_for_engine(["a.safetensors"], cache) == (["a.safetensors"], None)
    _fill_cache(cache, public_set, ["liveportrait"])
    hub.check_and_convert(cache, renderer_config=RendererConfig.tiny(), manifest=SYNTHETIC_MANIFEST)
    weights, note = hub.weights_for_engine([], cache)
    assert weights == [str(hub.engine_dir(cache) / "liveportrait.safetensors")]
    assert "liveportrait.safetensors" in note and "--weights overrides" in note
    lines = hub.cache_report_lines(cache)
    assert any("liveportrait.safetensors" in line and "MIT" in line for line in lines)
    assert sum("licence:" in line for line in lines) >= len(hub.MANIFEST)
    # a weights file without its .json is not used
    os.unlink(hub.engine_dir(cache) / "liveportrait.json")
    assert hub.engine_weights(cache) == []


# ------------------------------------------------------------------------------------------ checks and bad input


def _run_guarded(*args):
    """The command in a fresh interpreter whose sockets refuse to connect."""
    code = ("import socket, runpy, sys\n"
            "def refuse(*a, **k): raise SystemExit('network access attempted')\n"
            "socket.socket.connect = refuse; socket.getaddrinfo = refuse\n"
            f"sys.argv = ['vasa-engine'] + {[str(a) for a in args]!r}\n"
            "runpy.run_module('vasa_engine.cli', run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)


def _assert_one_line_error(res, message):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vasa-engine: error:"), res.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in res.stderr


def test_bad_checkpoints_on_the_command_line(tmp_path, public_set):
    cache = tmp_path / "cache"
    _fill_cache(cache, public_set, ["joyvasa", "liveportrait"])
    ckpt = hub.select(["joyvasa"])[0].local_path(cache)
    good = ckpt.read_bytes()

    ckpt.write_bytes(good[: len(good) // 3])
    res = _run_guarded("download", "--offline", "--cache-dir", cache, "--only", "joyvasa")
    _assert_one_line_error(res, "truncated")
    assert _engine_files(cache) == []

    torch.save({"third.conv.weight": torch.zeros(3)}, ckpt)  # a LivePortrait file as JoyVASA's checkpoint
    res = _run_guarded("download", "--offline", "--cache-dir", cache, "--only", "joyvasa")
    _assert_one_line_error(res, "not a JoyVASA motion-generator checkpoint")
    assert _engine_files(cache) == []

    # the published LivePortrait files have known sizes: a truncated one is caught before it is read
    path = cache / "downloads/liveportrait/liveportrait/base_models/motion_extractor.pth"
    path.write_bytes(path.read_bytes()[:1000])
    res = _run_guarded("download", "--offline", "--cache-dir", cache, "--only", "liveportrait")
    _assert_one_line_error(res, "truncated or a different file")
    assert _engine_files(cache) == []


def test_wrong_model_and_truncated_files_at_reduced_size(tmp_path, public_set):
    cache = tmp_path / "cache"
    _fill_cache(cache, public_set)
    base = cache / "downloads/liveportrait/liveportrait/base_models"
    shutil.copyfile(base / "spade_generator.pth", base / "warping_module.pth")  # the wrong module's file
    with pytest.raises(CheckpointError, match="warping_module.pth.*missing") as info:
        hub.check_and_convert(cache, renderer_config=RendererConfig.tiny(), manifest=SYNTHETIC_MANIFEST)
    assert "\n" not in str(info.value)
    # every group was tried: the rest converted, nothing of the failed one written
    assert _engine_files(cache) == ["joyvasa.json", "joyvasa.safetensors"]

    onnx = hub.group_dir(cache, "faces") / "insightface/models/buffalo_l/det_10g.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match="not a complete ONNX model"):
        hub.check_and_convert(cache, ["faces"], manifest=SYNTHETIC_MANIFEST)


def test_an_interrupted_conversion_leaves_nothing(tmp_path, public_set, monkeypatch):
    """The conversion dies after writing the weights but before the .json: the engine folder stays clean."""
    from vasa_engine.checkpoints import liveportrait
    from vasa_engine.weights import save_weights

    def dies_half_way(path, tensors, components):
        save_weights(path, tensors, components)
        os.unlink(pathlib.Path(path).with_suffix(".json"))
        raise KeyboardInterrupt

    cache = tmp_path / "cache"
    _fill_cache(cache, public_set, ["liveportrait"])
    monkeypatch.setattr(liveportrait, "save_weights", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        hub.check_and_convert(cache, ["liveportrait"], renderer_config=RendererConfig.tiny(),
                              manifest=SYNTHETIC_MANIFEST)
    assert _engine_files(cache) == []
    assert hub.find_weights(cache) == []


def test_published_size_and_digest(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    spec = hub.HubFile("faces", "o/r", "f.bin", "MIT", True, size=3,
                       sha256="ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    hub.check_published(spec, path)
    with pytest.raises(CheckpointError, match="is 3 bytes, the published f.bin is 4"):
        hub.check_published(dataclasses.replace(spec, size=4), path)
    with pytest.raises(CheckpointError, match="SHA-256 of .* corrupt or a different file"):
        hub.check_published(dataclasses.replace(spec, sha256="0" * 64), path)


def test_onnx_check(tmp_path, public_set):
    good = tmp_path / "m.onnx"
    good.write_bytes(_onnx_bytes())
    hub.check_onnx(good)
    for name, data in (("cut", _onnx_bytes()[:-2]), ("empty", b""), ("text", b"not a model at all"),
                       ("pth", (public_set.root / "KwaiVGI/LivePortrait/liveportrait" /
                                LIVEPORTRAIT_RETARGET_FILE).read_bytes())):
        bad = tmp_path / f"{name}.onnx"
        bad.write_bytes(data)
        with pytest.raises(CheckpointError, match="not a complete ONNX model"):
            hub.check_onnx(bad)


def test_onnx_check_accepts_a_real_onnx_file(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, producer_name="test")
    model.metadata_props.add(key="k", value="v")
    onnx.save(model, tmp_path / "relu.onnx")
    hub.check_onnx(tmp_path / "relu.onnx")


def test_hubert_fills_a_checkpoint_without_audio_encoder(tmp_path, public_set):
    cache = tmp_path / "cache"
    _fill_cache(cache, public_set, ["hubert", "joyvasa"])
    jv = hub.group_dir(cache, "joyvasa")
    _joyvasa_files(jv, public_set.generator, public_set.audio, with_audio_encoder=False)
    results = hub.check_and_convert(cache, ["joyvasa", "hubert"], manifest=SYNTHETIC_MANIFEST)
    assert [r.status for r in results] == ["converted", "checked"]
    engine = Engine(hub.engine_weights(cache), device="cpu", config=RendererConfig.tiny())
    audio = engine.motion_stack.audio
    for key, value in public_set.hubert.state_dict().items():
        assert torch.equal(audio.audio_encoder.state_dict()[key], value), key
    assert torch.equal(audio.audio_feature_map.weight, public_set.audio.audio_feature_map.weight)

    # without chinese-hubert-base the same checkpoint is refused
    shutil.rmtree(hub.group_dir(cache, "hubert"))
    os.unlink(hub.engine_dir(cache) / "joyvasa.json")
    with pytest.raises(CheckpointError, match="no audio_encoder"):
        hub.check_and_convert(cache, ["joyvasa"], manifest=SYNTHETIC_MANIFEST)


def test_failed_fetches_are_reported_after_the_rest(tmp_path, fake_hub, monkeypatch):
    import huggingface_hub

    def fetch(repo_id, filename, **kwargs):
        if filename.endswith("config.json"):
            raise RuntimeError("404 Client Error: Entry Not Found\nmore detail")
        return fake_hub(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fetch)
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match=r"cannot download TencentGameMate/chinese-hubert-base/config.json: "
                                         r"404 Client Error: Entry Not Found; run") as info:
        hub.download(cache, ["joyvasa", "hubert"], manifest=SYNTHETIC_MANIFEST)
    assert "\n" not in str(info.value)
    assert fake_hub.calls[-1].endswith("pytorch_model.bin")  # one missing file does not stop the others
    assert hub.engine_weights(cache) == [hub.engine_dir(cache) / "joyvasa.safetensors"]


def test_no_connection_stops_after_the_first_file(tmp_path, fake_hub, monkeypatch):
    import huggingface_hub

    calls = []

    def fetch(repo_id, filename, **kwargs):
        calls.append(filename)
        try:
            raise ConnectionError("[Errno -3] Temporary failure in name resolution")
        except ConnectionError as exc:
            raise RuntimeError("An error happened while trying to locate the file on the Hub") from exc

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fetch)
    with pytest.raises(InputError, match=r"motion_generator_hubert_chinese.pt: An error happened .*\(and 3 more "
                                         r"files not fetched\)"):
        hub.download(tmp_path / "cache", ["joyvasa", "hubert"], manifest=SYNTHETIC_MANIFEST)
    assert calls == ["motion_generator/motion_generator_hubert_chinese.pt"]
