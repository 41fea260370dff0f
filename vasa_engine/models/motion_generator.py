"""Motion generator: a diffusion transformer over a window of motion frames (JoyVASA's layer structure).

Tokens are the previous window's last Lp motion frames followed by the L noisy frames of this window, projected
to width d, plus a sinusoidal position table, plus per-window condition embeddings (diffusion step, and where
the config has them VASA-1's gaze direction, head distance and emotion offset). Each post-norm decoder layer runs
bidirectional self-attention over all Lp + L tokens, then a frame-aligned cross-attention to the audio features,
then an MLP. Token i may only see audio frame i, so the cross-attention is exactly out_proj(v_proj(audio_i)): two
linear maps, no softmax. The head predicts the clean motion x0 for every token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..config import _Config

CONDITIONS = ("audio", "gaze", "distance", "emotion")
CONDITION_INPUT_SCALE = {"gaze": 1 / 90.0, "distance": 1.0, "emotion": 1.0}  # gaze in degrees -> about [-1, 1]


@dataclass(frozen=True)
class MotionGeneratorConfig(_Config):
    motion_dim: int = 70  # LivePortrait expression 63, scale 1, translation 3, pitch/yaw/roll 3
    feature_dim: int = 512  # transformer width d
    n_layers: int = 8
    n_heads: int = 8
    mlp_ratio: int = 4
    n_motions: int = 100  # L, frames per window (25 fps)
    n_prev_motions: int = 25  # Lp, frames of context from the previous window
    n_diff_steps: int = 50  # T
    step_table_rows: int = 501  # rows of the step sinusoid table (JoyVASA sizes it for 500 steps)
    position_table_rows: int = 600
    gaze: bool = True  # VASA-1's main gaze direction (theta, phi) in degrees
    distance: bool = True  # head-to-camera distance (relative; 1.0 = the portrait's)
    emotion_dim: int = 8  # emotion offset vector; 0 = no emotion condition

    @property
    def conditions(self) -> tuple[str, ...]:
        flags = {"audio": True, "gaze": self.gaze, "distance": self.distance, "emotion": self.emotion_dim > 0}
        return tuple(c for c in CONDITIONS if flags[c])

    @property
    def window(self) -> int:
        return self.n_prev_motions + self.n_motions


def sinusoid_table(rows: int, dim: int) -> torch.Tensor:
    """(1, rows, dim): S[p, 2i] = sin(p w_i), S[p, 2i+1] = cos(p w_i), w_i = exp(-2i ln(10000) / dim)."""
    pos = torch.arange(rows, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(rows, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table[None]


class SinusoidTable(nn.Module):
    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(rows, dim))


class Attention(nn.Module):
    """Multi-head attention with PyTorch's packed in_proj layout ([q; k; v] rows) and out_proj."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def self_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = ops.attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))

    def aligned_cross_attention(self, memory: torch.Tensor) -> torch.Tensor:
        """Attention where query i sees only memory i: the softmax weight is 1, so it is out_proj(v_proj(m_i))."""
        d = memory.shape[-1]
        v = F.linear(memory, self.in_proj_weight[2 * d :], self.in_proj_bias[2 * d :])
        return self.out_proj(v)


class DecoderLayer(nn.Module):
    """Post-norm: x = LN1(x + SelfAttn(x)); x = LN2(x + CrossAttn(x, memory)); x = LN3(x + MLP(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.multihead_attn = Attention(dim, heads)
        self.linear1 = nn.Linear(dim, mlp_ratio * dim)
        self.linear2 = nn.Linear(mlp_ratio * dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = ops.add_layer_norm(x, self.self_attn.self_attention(x), self.norm1)
        x = ops.add_layer_norm(x, self.multihead_attn.aligned_cross_attention(memory), self.norm2)
        return ops.add_layer_norm(x, self.linear2(F.gelu(self.linear1(x))), self.norm3)


def _embedding_mlp(in_dim: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Linear(dim, dim))


class DenoisingNetwork(nn.Module):
    """x_t (N, L, M), audio (N, L, d), previous motion (N, Lp, M), previous audio (N, Lp, d), step (N,)
    -> x0 prediction (N, Lp + L, M). Optional per-window conditions (configs that have them): gaze (N, 2),
    distance (N, 1), emotion (N, E)."""

    def __init__(self, cfg: MotionGeneratorConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.feature_dim
        self.TE = SinusoidTable(cfg.step_table_rows, d)
        self.diff_step_map = _embedding_mlp(d, d)
        self.PE = SinusoidTable(cfg.position_table_rows, d)
        self.feature_proj = nn.Linear(cfg.motion_dim, d)
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(DecoderLayer(d, cfg.n_heads, cfg.mlp_ratio) for _ in range(cfg.n_layers))
        self.motion_dec = nn.Sequential(nn.Linear(d, d // 2), nn.GELU(), nn.Linear(d // 2, cfg.motion_dim))
        mask = ~torch.eye(cfg.window, dtype=torch.bool)  # True = may not attend: query i sees memory i only
        self.register_buffer("alignment_mask", mask)
        if cfg.gaze:
            self.gaze_map = _embedding_mlp(2, d)
        if cfg.distance:
            self.distance_map = _embedding_mlp(1, d)
        if cfg.emotion_dim:
            self.emotion_map = _embedding_mlp(cfg.emotion_dim, d)

    def condition_embedding(self, step: torch.Tensor, conditions: dict | None = None) -> torch.Tensor:
        """(N, 1, d): the step embedding plus each condition's embedding. conditions: name -> values (N, k), or
        name -> (values, present) with present (N,) bool; a dropped condition (absent, or present False) adds 0."""
        e = self.diff_step_map(self.TE.pe[0, step.long()])
        for name, item in (conditions or {}).items():
            values, present = item if isinstance(item, tuple) else (item, None)
            if values is None:
                continue
            emb = getattr(self, f"{name}_map")(values.to(e.dtype) * CONDITION_INPUT_SCALE[name])
            e = e + (emb if present is None else emb * present.to(emb.dtype)[:, None])
        return e[:, None, :]

    def forward(self, motion_feat, audio_feat, prev_motion_feat, prev_audio_feat, step, indicator=None,
                conditions: dict | None = None) -> torch.Tensor:
        """indicator is accepted for the reference's signature and has no effect (as there)."""
        x = self.feature_proj(torch.cat([prev_motion_feat, motion_feat], dim=1))
        x = ops.add_embeddings(x, self.PE.pe[0], self.condition_embedding(step, conditions).to(x.dtype))
        memory = torch.cat([prev_audio_feat, audio_feat], dim=1)
        for layer in self.transformer.layers:
            x = layer(x, memory)
        return self.motion_dec(x)


class DiffusionBuffers(nn.Module):
    """The noise schedule as stored in the checkpoint (length T + 1, index 0 = clean)."""

    def __init__(self, steps: int):
        super().__init__()
        from ..sampling import DiffusionSchedule

        with torch.device("cpu"):  # real values even when the module is built on the meta device
            sched = DiffusionSchedule.cosine(steps)
        self.register_buffer("betas", sched.betas.float())
        self.register_buffer("alphas", sched.alphas.float())
        self.register_buffer("alpha_bars", sched.alpha_bars.float())
        self.register_buffer("sigmas_flex", sched.betas.float().sqrt())
        self.register_buffer("sigmas_inflex", sched.sigmas.float())

    def schedule(self):
        from ..sampling import DiffusionSchedule

        return DiffusionSchedule.from_buffers(self.betas, self.alphas, self.alpha_bars, self.sigmas_inflex)


class MotionGenerator(nn.Module):
    """The denoiser with its learned start context and null audio feature, and the stored noise schedule.

    State dict keys are JoyVASA's (`denoising_net.*`, `start_audio_feat`, `start_motion_feat`,
    `null_audio_feat`, `diffusion_sched.*`); its audio encoder and `audio_feature_map` live in the audio stage.
    """

    def __init__(self, cfg: MotionGeneratorConfig):
        super().__init__()
        self.cfg = cfg
        d, lp = cfg.feature_dim, cfg.n_prev_motions
        self.start_audio_feat = nn.Parameter(torch.randn(1, lp, d))
        self.start_motion_feat = nn.Parameter(torch.randn(1, lp, cfg.motion_dim))
        self.null_audio_feat = nn.Parameter(torch.randn(1, 1, d))
        self.denoising_net = DenoisingNetwork(cfg)
        self.diffusion_sched = DiffusionBuffers(cfg.n_diff_steps)

    def context(self, batch: int, prev_motion=None, prev_audio=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The previous-window context, or the learned start context for a first window."""
        if prev_motion is None:
            prev_motion = self.start_motion_feat.expand(batch, -1, -1)
        if prev_audio is None:
            prev_audio = self.start_audio_feat.expand(batch, -1, -1)
        return prev_motion, prev_audio
