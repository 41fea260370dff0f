"""HuBERT / wav2vec2 audio encoder: parity fixtures, Hugging Face transformers with random weights, checkpoint
keys, loading errors, JoyVASA's padding and windowing."""

import csv
import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import DATA, rel_err, require_parity_dir
from vasa_engine.audio_features import (
    AudioFeatureEncoder, clip_layout, clip_windows, features_25fps, joyvasa_hidden, pad_audio, resample_time)
from vasa_engine.checkpoints import (
    audio_config_from_state, audio_feature_encoder_from_state, hf_body_state, load_hf_audio_encoder)
from vasa_engine.compat import run_fixture
from vasa_engine.errors import CheckpointError, InputError
from vasa_engine.models.audio_encoder import AudioEncoder, AudioEncoderConfig

TOL = 1e-5
SMALL = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96, conv_dim=[24] * 7,
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
# the large models' variant: pre-LN layers, LayerNorm in every conv layer, conv biases; a non-default eps
STABLE = dict(SMALL, num_hidden_layers=2, do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True,
              layer_norm_eps=1e-6)


def transformers_or_skip():
    if os.environ.get("CI", "").lower() == "true":
        import transformers
        return transformers
    return pytest.importorskip("transformers")


# ---------------------------------------------------------------- parity fixtures


@pytest.mark.parametrize("name", ["hubert_model", "joyvasa_audio_feature"])
def test_parity_fixture(name):
    path = require_parity_dir() / f"{name}.safetensors"
    meta = json.loads(path.with_suffix(".json").read_text())
    ref = load_file(str(path))
    out = run_fixture(path)
    assert sorted(out) == sorted(meta["outputs"])
    for key, value in out.items():
        expected = ref[f"outputs.{key}"]
        assert value.shape == expected.shape, key
        err = rel_err(value, expected)
        assert err <= TOL, f"{name}.{key}: rel err {err:.2e}"


# ---------------------------------------------------------------- against transformers, random weights


def _hf_model(kind: str, overrides: dict, attn: str, seed: int, ctc: bool = False):
    tf = transformers_or_skip()
    if kind == "hubert":
        cfg_cls, model_cls = tf.HubertConfig, (tf.HubertForCTC if ctc else tf.HubertModel)
    else:
        cfg_cls, model_cls = tf.Wav2Vec2Config, (tf.Wav2Vec2ForCTC if ctc else tf.Wav2Vec2Model)
    torch.manual_seed(seed)
    model = model_cls._from_config(cfg_cls(vocab_size=11, **overrides), attn_implementation=attn).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                module.weight.copy_(1 + 0.3 * torch.randn_like(module.weight))
                module.bias.copy_(0.2 * torch.randn_like(module.bias))
        for name, p in model.named_parameters():
            if "pos_conv_embed.conv.parametrizations.weight.original0" in name:
                p.copy_(p * (0.5 + torch.rand_like(p)))
    return model


def _compare(engine: AudioEncoder, hf_model, seed: int):
    gen = torch.Generator().manual_seed(seed)
    body = getattr(hf_model, "hubert", None) or getattr(hf_model, "wav2vec2", None) or hf_model
    for length in (16001, 8123):
        x = torch.randn(2, length, generator=gen) * 0.3
        with torch.no_grad():
            ref = body(x, output_hidden_states=True)
            ref_feat = body.feature_extractor(x).transpose(1, 2)
            out = engine(x, output_hidden_states=True)
        assert out["last_hidden_state"].shape == ref.last_hidden_state.shape
        assert rel_err(out["extract_features"], ref_feat) <= TOL
        assert rel_err(out["last_hidden_state"], ref.last_hidden_state) <= TOL
        if not engine.cfg.do_stable_layer_norm:
            assert out["hidden_states"][-1] is out["last_hidden_state"]
        assert len(out["hidden_states"]) == len(ref.hidden_states) == engine.cfg.num_hidden_layers + 1
        for i, (a, b) in enumerate(zip(out["hidden_states"], ref.hidden_states)):
            err = rel_err(a, b)
            assert err <= TOL, f"length {length} hidden_states.{i}: rel err {err:.2e}"


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2"])
@pytest.mark.parametrize("variant", ["base", "stable"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_matches_transformers_safetensors(tmp_path, kind, variant, attn):
    model = _hf_model(kind, SMALL if variant == "base" else STABLE, attn, seed=11)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    engine = load_hf_audio_encoder(tmp_path)
    assert engine.cfg.model_type == kind and engine.cfg.do_stable_layer_norm == (variant == "stable")
    _compare(engine, model, seed=12)


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2"])
def test_matches_transformers_ctc_bin_old_names(tmp_path, kind):
    """A *ForCTC pytorch_model.bin: body under `hubert.`/`wav2vec2.`, an `lm_head`, weight norm as weight_g/_v."""
    model = _hf_model(kind, SMALL, "sdpa", seed=21, ctc=True)
    model.config.to_json_file(tmp_path / "config.json")
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        state[key] = value.clone()
    assert any(k.endswith("pos_conv_embed.conv.weight_g") for k in state) and "lm_head.weight" in state
    torch.save(state, tmp_path / "pytorch_model.bin")
    _compare(load_hf_audio_encoder(tmp_path), model, seed=22)


def test_features_25fps_matches_transformers():
    model = _hf_model("hubert", SMALL, "sdpa", seed=31)
    engine = AudioEncoder(AudioEncoderConfig.from_hf_config(model.config.to_dict())).eval()
    engine.load_state_dict(model.state_dict())
    x = torch.randn(2, 9000, generator=torch.Generator().manual_seed(32)) * 0.3
    with torch.no_grad():
        out = features_25fps(engine, x)
        padded = pad_audio(torch.nn.functional.pad(x, (0, 15 * 640 - 9000)))
        ref = model(padded).last_hidden_state
    assert out.shape == (2, 15, 48) and ref.shape[1] == 30
    assert rel_err(out, 0.5 * (ref[:, 0::2] + ref[:, 1::2])) <= TOL


# ---------------------------------------------------------------- keys and shapes at the base config


def _tsv(module_name: str) -> dict[str, tuple[int, ...]]:
    with open(DATA / "hubert_keys.tsv") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["module"] == module_name]
    return {r["key"]: tuple(int(s) for s in r["shape"].split("x")) for r in rows}


@pytest.mark.parametrize("kind,module_name", [("hubert", "HubertModel_base"), ("wav2vec2", "Wav2Vec2Model_base")])
def test_base_keys_match_checkpoint(kind, module_name):
    expected = _tsv(module_name)
    assert len(expected) == 211
    with torch.device("meta"):
        module = AudioEncoder(AudioEncoderConfig(model_type=kind))
    got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert list(got) == list(expected)
    assert got == expected
    assert sum(v.numel() for v in module.state_dict().values()) == 94_371_712


def test_config_from_state_roundtrip():
    with torch.device("meta"):
        base = AudioEncoder()
    assert audio_config_from_state(base.state_dict()) == AudioEncoderConfig()
    small = AudioEncoderConfig.from_hf_config(dict(SMALL, mask_time_prob=0.0))
    module = AudioEncoder(small)
    state = hf_body_state({k.replace("parametrizations.weight.original0", "weight_g"): v
                           for k, v in module.state_dict().items()})[0]
    assert audio_config_from_state(state, num_attention_heads=4) == small
    assert not small.masked_spec_embed and "masked_spec_embed" not in state


def test_joyvasa_module_from_state():
    cfg = AudioEncoderConfig.from_hf_config(dict(SMALL, num_attention_heads=1))  # 48 / 64 -> 1 head inferred
    torch.manual_seed(41)
    src = AudioFeatureEncoder(cfg, feature_dim=20).eval()
    state = {k.replace("parametrizations.weight.original1", "weight_v"): v for k, v in src.state_dict().items()}
    module = audio_feature_encoder_from_state(state)
    assert module.audio_encoder.cfg == cfg and module.feature_dim == 20
    audio = torch.randn(1, 3 * 640, generator=torch.Generator().manual_seed(42)) * 0.3
    with torch.no_grad():
        out = module.window_features(audio)
        ref = src.audio_feature_map(resample_time(joyvasa_hidden(src.audio_encoder, pad_audio(audio), 6), 3))
    assert out.shape == (1, 3, 20) and rel_err(out, ref) <= TOL
    del state["audio_feature_map.bias"]
    with pytest.raises(CheckpointError, match="missing.*audio_feature_map.bias"):
        audio_feature_encoder_from_state(state)


# ---------------------------------------------------------------- loading errors


def _small_folder(path, state=None, config=None):
    path.mkdir(parents=True, exist_ok=True)
    cfg = dict(SMALL, model_type="hubert") if config is None else config
    (path / "config.json").write_text(json.dumps(cfg))
    if state is None:
        torch.manual_seed(51)
        state = AudioEncoder(AudioEncoderConfig.from_hf_config(cfg)).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    return path


def test_loading_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_hf_audio_encoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="config.json"):
        load_hf_audio_encoder(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps(SMALL))
    with pytest.raises(InputError, match="model.safetensors or pytorch_model.bin"):
        load_hf_audio_encoder(tmp_path / "empty")

    good = _small_folder(tmp_path / "good")
    assert isinstance(load_hf_audio_encoder(good), AudioEncoder)
    state = load_file(str(good / "model.safetensors"))

    missing = dict(state)
    del missing["encoder.layers.1.attention.k_proj.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing: encoder\.layers\.1\.attention\.k_proj\.bias") as info:
        load_hf_audio_encoder(_small_folder(tmp_path / "missing", missing))
    assert "\n" not in str(info.value)

    bad = dict(state, **{"feature_projection.projection.weight": torch.zeros(48, 23)})
    with pytest.raises(CheckpointError, match=r"mis-shaped: feature_projection\.projection\.weight \(48, 23\)"):
        load_hf_audio_encoder(_small_folder(tmp_path / "misshaped", bad))

    extra = dict(state, **{"encoder.layers.3.attention.q_proj.bias": torch.zeros(48)})
    with pytest.raises(CheckpointError, match="unexpected"):
        load_hf_audio_encoder(_small_folder(tmp_path / "extra", extra))

    old = {k.replace("parametrizations.weight.original0", "weight_g")
            .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    loaded = load_hf_audio_encoder(_small_folder(tmp_path / "old", old))
    torch.testing.assert_close(loaded.encoder.pos_conv_embed.conv.parametrizations.weight.original1,
                               state["encoder.pos_conv_embed.conv.parametrizations.weight.original1"], rtol=0, atol=0)

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_hf_audio_encoder(tmp_path / "broken")
    with pytest.raises(CheckpointError, match="hidden_act 'relu'"):
        load_hf_audio_encoder(_small_folder(tmp_path / "relu", state, dict(SMALL, hidden_act="relu")))
    with pytest.raises(CheckpointError, match="model_type 'data2vec-audio'"):
        load_hf_audio_encoder(_small_folder(tmp_path / "d2v", state, dict(SMALL, model_type="data2vec-audio")))


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_pickle_with_code_is_refused(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMALL))
    marker = tmp_path / "executed"
    torch.save({"masked_spec_embed": torch.zeros(48), "x": _Payload(marker)}, folder / "pytorch_model.bin")
    with open(folder / "pytorch_model.bin", "rb") as f:
        assert b"exec" in f.read()
    with pytest.raises(CheckpointError, match="objects other than tensors") as info:
        load_hf_audio_encoder(folder)
    assert not marker.exists()
    assert "\n" not in str(info.value)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"a": 1}, protocol=2) + b"junk")
    with pytest.raises(CheckpointError):
        load_hf_audio_encoder(folder)


def test_unsupported_config_values():
    with pytest.raises(CheckpointError, match="hidden_act 'gelu_new'"):
        AudioEncoderConfig.from_hf_config(dict(hidden_act="gelu_new"))
    with pytest.raises(CheckpointError, match="conv_pos_batch_norm"):
        AudioEncoderConfig.from_hf_config(dict(conv_pos_batch_norm=True))
    with pytest.raises(CheckpointError, match="add_adapter"):
        AudioEncoderConfig.from_hf_config(dict(model_type="wav2vec2", add_adapter=True))
    with pytest.raises(CheckpointError, match="not divisible"):
        AudioEncoderConfig.from_hf_config(dict(hidden_size=50))
    with pytest.raises(ValueError, match="hidden_act"):
        AudioEncoderConfig(hidden_act="relu")
    cfg = AudioEncoderConfig.from_hf_config(dict(model_type="wav2vec2", feat_proj_layer_norm=False, vocab_size=32,
                                                 architectures=["Wav2Vec2ForCTC"]))
    assert cfg.feat_proj_layer_norm and cfg == AudioEncoderConfig(model_type="wav2vec2")
    assert AudioEncoderConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------- JoyVASA padding and windowing


def _pad_reference(x: np.ndarray) -> np.ndarray:
    n = len(x) // 320
    side = int(np.ceil((320 * n + 80 - len(x)) / 2))
    if side >= 0:
        r = side // 2
        x = np.pad(np.pad(x, (r, r), mode="reflect"), (r, r), mode="reflect")
        if side % 2:
            x = np.pad(x, (1, 1), mode="edge")
    return x


@pytest.mark.parametrize("length", [12800, 16001, 16079, 16081, 16100, 640, 1000, 8123])
def test_pad_audio(length):
    x = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
    out = pad_audio(x)
    for b in range(2):
        np.testing.assert_array_equal(out[b].numpy(), _pad_reference(x[b].numpy()))
    assert torch.equal(pad_audio(x[0]), out[0])
    if length == 12800:
        assert out.shape == (2, 12880) and torch.equal(out[:, 40:-40], x)
        assert torch.equal(out[:, 20:40], x[:, 1:21].flip(1))


def test_clip_layout_and_windows():
    lay = clip_layout(16000 * 4, 100)  # 4 s + 1920 zeros -> 103 frames -> 2 windows, 97 padded frames
    assert (lay.clip_frames, lay.windows, lay.pad_frames, lay.frames) == (103, 2, 97, 103)
    lay = clip_layout(640 * 100 - 1920, 100)  # exactly one window
    assert (lay.windows, lay.pad_frames, lay.frames) == (1, 0, 100)
    lay = clip_layout(640 * 100 - 1920 + 300, 100)  # a tail shorter than a frame is dropped
    assert (lay.clip_frames, lay.windows, lay.pad_frames, lay.frames) == (100, 1, 0, 100)
    audio = torch.arange(1, 7001, dtype=torch.float32)[None].repeat(2, 1)
    windows, frames = clip_windows(audio, 5)
    assert windows.shape == (2, 3, 3200) and frames == clip_layout(7000, 5).frames == 13  # 8920 samples: 13 frames
    flat = windows.reshape(2, -1)
    assert torch.equal(flat[:, :1280], torch.zeros(2, 1280)) and torch.equal(flat[:, 1280:8280], audio)
    assert not flat[:, 8280:].any()
