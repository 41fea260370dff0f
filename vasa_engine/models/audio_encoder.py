"""HuBERT / wav2vec2 speech encoder with the Hugging Face state_dict layout.

At the default config (HuBERT base: 768-d, 12 layers, 12 heads, 7 conv layers of 512 channels) the state_dict keys
and shapes are those of `HubertModel` / `Wav2Vec2Model` checkpoints, including `masked_spec_embed` (unused at
inference) and the positional conv's weight norm as `encoder.pos_conv_embed.conv.parametrizations.weight.original0`
(g, per kernel tap) / `original1` (v).

Input: raw 16 kHz mono samples (B, S), float32. The conv feature encoder gives T = floor((S - 400) / 320) + 1 frames
(50 Hz) at the base geometry; the transformer keeps T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..config import _Config
from ..errors import CheckpointError

MODEL_TYPES = ("hubert", "wav2vec2")
FEAT_EXTRACT_NORMS = ("group", "layer")


@dataclass(frozen=True)
class AudioEncoderConfig(_Config):
    """Sizes and variant flags of the encoder. Defaults are HuBERT base (also wav2vec2 base's geometry).

    do_stable_layer_norm True is the pre-LN variant of the large models (pre-LN layers, LayerNorm after the last
    layer instead of before the first). feat_proj_layer_norm False (HuBERT only) drops the LayerNorm of the feature
    projection. masked_spec_embed: whether the (hidden,) SpecAugment vector exists (HF creates it when
    mask_time_prob > 0 or mask_feature_prob > 0); it does not take part in inference.
    """

    model_type: str = "hubert"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    do_stable_layer_norm: bool = False
    feat_proj_layer_norm: bool = True
    hidden_act: str = "gelu"
    masked_spec_embed: bool = True

    def __post_init__(self):
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        problems = []
        if self.model_type not in MODEL_TYPES:
            problems.append(f"model_type {self.model_type!r} (supported: {', '.join(MODEL_TYPES)})")
        if self.hidden_act != "gelu":
            problems.append(f"hidden_act {self.hidden_act!r} (only 'gelu', the exact erf GELU, is supported)")
        if self.feat_extract_norm not in FEAT_EXTRACT_NORMS:
            problems.append(f"feat_extract_norm {self.feat_extract_norm!r} (supported: group, layer)")
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) >= 1):
            problems.append(f"conv_dim/conv_kernel/conv_stride lengths {len(self.conv_dim)}/{len(self.conv_kernel)}/"
                            f"{len(self.conv_stride)} differ")
        if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} not divisible by {self.num_attention_heads} heads")
        if self.num_conv_pos_embedding_groups < 1 or self.hidden_size % self.num_conv_pos_embedding_groups:
            problems.append(f"hidden_size {self.hidden_size} not divisible by "
                            f"{self.num_conv_pos_embedding_groups} positional conv groups")
        if self.model_type == "wav2vec2" and not self.feat_proj_layer_norm:
            problems.append("feat_proj_layer_norm False (wav2vec2's feature projection always has its LayerNorm)")
        if problems:
            raise ValueError(f"AudioEncoderConfig: unsupported {'; '.join(problems)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def num_frames(self, num_samples: int) -> int:
        """Frames the conv feature encoder gives for `num_samples` input samples (0 if too short)."""
        n = int(num_samples)
        for k, s in zip(self.conv_kernel, self.conv_stride):
            n = (n - k) // s + 1 if n >= k else 0
        return n

    @classmethod
    def from_hf_config(cls, data: dict[str, Any]) -> "AudioEncoderConfig":
        """From a Hugging Face `config.json` dict of a HuBERT or wav2vec2 model. Keys that do not change the
        encoder (dropouts, heads, CTC and pre-training options, ...) are ignored; values this module does not
        implement raise CheckpointError."""
        if not isinstance(data, dict):
            raise CheckpointError(f"config.json holds a {type(data).__name__}, expected an object")
        model_type = data.get("model_type", "hubert")
        base = cls()
        problems = []
        if model_type not in MODEL_TYPES:
            problems.append(f"model_type {model_type!r} (supported: {', '.join(MODEL_TYPES)})")
        for key in ("hidden_act", "feat_extract_activation"):
            if data.get(key, "gelu") != "gelu":
                problems.append(f"{key} {data[key]!r} (only 'gelu' is supported)")
        if data.get("conv_pos_batch_norm", False):
            problems.append("conv_pos_batch_norm True")
        if data.get("add_adapter", False):
            problems.append("add_adapter True")
        if data.get("adapter_attn_dim") is not None:
            problems.append("adapter_attn_dim (attention adapters)")
        if data.get("feat_extract_norm", "group") not in FEAT_EXTRACT_NORMS:
            problems.append(f"feat_extract_norm {data['feat_extract_norm']!r}")
        if problems:
            raise CheckpointError(f"unsupported audio encoder config: {'; '.join(problems)}")
        mask = float(data.get("mask_time_prob", 0.05) or 0.0) > 0 or float(data.get("mask_feature_prob") or 0.0) > 0
        kwargs: dict[str, Any] = {"model_type": model_type, "masked_spec_embed": mask}
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim",
                     "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "num_conv_pos_embeddings",
                     "num_conv_pos_embedding_groups", "layer_norm_eps", "do_stable_layer_norm", "hidden_act"):
            value = data.get(name, getattr(base, name))
            kwargs[name] = tuple(value) if isinstance(value, list) else value
        # wav2vec2's feature projection always has its LayerNorm, whatever the config says
        kwargs["feat_proj_layer_norm"] = model_type != "hubert" or bool(data.get("feat_proj_layer_norm", True))
        if "num_feat_extract_layers" in data and data["num_feat_extract_layers"] != len(kwargs["conv_dim"]):
            raise CheckpointError(f"unsupported audio encoder config: num_feat_extract_layers "
                                  f"{data['num_feat_extract_layers']} != {len(kwargs['conv_dim'])} conv layers")
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"unsupported audio encoder config: {exc}") from None


# ---------------------------------------------------------------- conv feature encoder


class ConvLayer(nn.Module):
    """Conv1d -> [GroupNorm (group variant, first layer only) | LayerNorm over channels (layer variant)] -> GELU."""

    def __init__(self, cfg: AudioEncoderConfig, index: int):
        super().__init__()
        c_in = cfg.conv_dim[index - 1] if index else 1
        c_out = cfg.conv_dim[index]
        self.conv = nn.Conv1d(c_in, c_out, cfg.conv_kernel[index], stride=cfg.conv_stride[index], bias=cfg.conv_bias)
        self.norm_kind = None
        if cfg.feat_extract_norm == "layer":
            self.layer_norm = nn.LayerNorm(c_out, eps=1e-5)
            self.norm_kind = "layer"
        elif index == 0:
            # one group per channel: each channel is normalized over time, per sample
            self.layer_norm = nn.GroupNorm(c_out, c_out, eps=1e-5, affine=True)
            self.norm_kind = "group"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        elif self.norm_kind == "group":
            x = self.layer_norm(x)
        return F.gelu(x)


class FeatureEncoder(nn.Module):
    """(B, S) samples -> (B, conv_dim[-1], T) features."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.conv_layers = nn.ModuleList(ConvLayer(cfg, i) for i in range(len(cfg.conv_dim)))

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        x = input_values[:, None, :]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nn.Module):
    """(B, T, conv_dim[-1]) -> [LayerNorm] -> Linear -> (B, T, hidden)."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        if cfg.feat_proj_layer_norm:
            self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
        else:
            self.layer_norm = None
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.layer_norm is not None:
            features = self.layer_norm(features)
        return self.projection(features)


# ---------------------------------------------------------------- positional conv with weight norm


class WeightNormParams(nn.Module):
    """g (`original0`, shape (1, 1, K)) and v (`original1`, shape (C_out, C_in/groups, K)) of a weight norm over
    the kernel axis: W[:, :, k] = g[k] * v[:, :, k] / ||v[:, :, k]||."""

    def __init__(self, v_shape: tuple[int, int, int]):
        super().__init__()
        self.original0 = nn.Parameter(torch.empty(1, 1, v_shape[2]))
        self.original1 = nn.Parameter(torch.empty(v_shape))

    def reset_parameters(self, fan_in: int) -> None:
        with torch.no_grad():
            nn.init.normal_(self.original1, std=(2.0 / fan_in) ** 0.5)
            self.original0.copy_(torch.linalg.vector_norm(self.original1, dim=(0, 1), keepdim=True))

    def weight(self) -> torch.Tensor:
        v, g = self.original1, self.original0
        return v * (g / torch.linalg.vector_norm(v, dim=(0, 1), keepdim=True))


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d whose weight is stored as (g, v) under `parametrizations.weight.original0/1`."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.kernel_size, self.padding, self.groups = kernel, kernel // 2, groups
        self.parametrizations = nn.Module()
        self.parametrizations.weight = WeightNormParams((channels, channels // groups, kernel))
        self.bias = nn.Parameter(torch.empty(channels))
        if not self.bias.is_meta:
            fan_in = channels // groups * kernel
            self.parametrizations.weight.reset_parameters(fan_in)
            nn.init.uniform_(self.bias, -fan_in ** -0.5, fan_in ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.parametrizations.weight.weight(), self.bias, padding=self.padding, groups=self.groups)


class PositionalConvEmbedding(nn.Module):
    """GELU(grouped conv over time), cut to the input length (an even kernel gives one extra step: the last is
    dropped). Works on (B, T, H)."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.conv = WeightNormConv1d(cfg.hidden_size, cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.conv(h.transpose(1, 2))
        x = x[:, :, : h.shape[1]]
        return F.gelu(x).transpose(1, 2)


# ---------------------------------------------------------------- transformer


class Attention(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(h, h) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, self.num_heads, h // self.num_heads).transpose(1, 2)

        o = ops.attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.out_proj(o.transpose(1, 2).reshape(b, t, h))


class FeedForward(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """Post-LN: h = LN(h + Attn(h)); h = LN'(h + FFN(h)). Pre-LN (stable): h += Attn(LN(h)); h += FFN(LN'(h))."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.pre_norm = cfg.do_stable_layer_norm
        self.attention = Attention(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            h = h + self.attention(self.layer_norm(h))
            return h + self.feed_forward(self.final_layer_norm(h))
        h = ops.add_layer_norm(h, self.attention(h), self.layer_norm)
        return ops.add_layer_norm(h, self.feed_forward(h), self.final_layer_norm)


class Encoder(nn.Module):
    """(B, T, H) projected features -> (last_hidden_state, hidden_states or None).

    hidden_states[0] is the input of layer 0 (post-LN: after the positional conv add and `layer_norm`; pre-LN: after
    the positional conv add), hidden_states[i] the output of layer i. Post-LN: the last entry equals
    last_hidden_state. Pre-LN: last_hidden_state is the final `layer_norm` of the last layer's output, while the
    last hidden_states entry is that output before the norm (transformers 5.x semantics)."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.pre_norm = cfg.do_stable_layer_norm
        self.pos_conv_embed = PositionalConvEmbedding(cfg)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, h: torch.Tensor, output_hidden_states: bool = False):
        h = h + self.pos_conv_embed(h)
        if not self.pre_norm:
            h = self.layer_norm(h)
        states = [h] if output_hidden_states else None
        for layer in self.layers:
            h = layer(h)
            if states is not None:
                states.append(h)
        if self.pre_norm:
            h = self.layer_norm(h)
        return h, (tuple(states) if states is not None else None)


class AudioEncoder(nn.Module):
    """HuBERT / wav2vec2 model body (no task head). Eval-mode forward with no attention mask: every sample of the
    batch is a full-length clip."""

    def __init__(self, cfg: AudioEncoderConfig | None = None):
        super().__init__()
        cfg = cfg or AudioEncoderConfig()
        self.cfg = cfg
        if cfg.masked_spec_embed:
            self.masked_spec_embed = nn.Parameter(torch.empty(cfg.hidden_size))
            if not self.masked_spec_embed.is_meta:
                nn.init.uniform_(self.masked_spec_embed)
        self.feature_extractor = FeatureEncoder(cfg)
        self.feature_projection = FeatureProjection(cfg)
        self.encoder = Encoder(cfg)

    def conv_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """(B, S) samples -> (B, conv_dim[-1], T) conv features (channels first, before any LayerNorm)."""
        if input_values.dim() != 2:
            raise ValueError(f"input_values must be (batch, samples), got shape {tuple(input_values.shape)}")
        if input_values.shape[1] < self.cfg.conv_kernel[0] or self.cfg.num_frames(input_values.shape[1]) < 1:
            raise ValueError(f"audio of {input_values.shape[1]} samples is too short for one encoder frame")
        return self.feature_extractor(input_values)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, conv_dim[-1]) conv features (time-major) -> (B, T, hidden)."""
        return self.feature_projection(features)

    def encode(self, hidden: torch.Tensor, output_hidden_states: bool = False):
        """(B, T, hidden) projected features -> (last_hidden_state, hidden_states tuple or None)."""
        return self.encoder(hidden, output_hidden_states=output_hidden_states)

    def forward(self, input_values: torch.Tensor, output_hidden_states: bool = False) -> dict:
        """Returns `last_hidden_state` (B, T, H), `extract_features` (B, T, conv_dim[-1]: the conv feature encoder's
        output transposed, before the projection's LayerNorm) and, when asked, `hidden_states` (num_layers + 1)."""
        features = self.conv_features(input_values).transpose(1, 2)
        last, states = self.encode(self.project(features), output_hidden_states)
        out = {"last_hidden_state": last, "extract_features": features}
        if output_hidden_states:
            out["hidden_states"] = states
        return out
