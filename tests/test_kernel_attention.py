"""The attention kernel (kernels/attention.py) against PyTorch's scaled_dot_product_attention in float64.

Without a GPU these run in Triton's interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1);
the same cases run on CUDA in the tests marked gpu. The interpreter computes bf16 dot products wrongly (numpy has
no bf16), so bf16 attention is tested on CUDA only; under the interpreter the kernel declines bf16 and the
reference runs.

Bounds: fp32 relative error <= 1e-5 against fp64; fp16 / bf16: at most twice the error of the PyTorch reference
computed in that dtype, plus a small floor. Outputs are allocated NaN-filled (the `nan_empty` fixture of tests/conftest.py), so an element
the kernel does not write fails.

The baselines here are shared with benches/test_bench_attention.py; the engine's real shapes come from
vasa_engine.kernel_shapes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from helpers import INTERPRET, KERNEL_DEVICES, rel_err
from vasa_engine import backend, ops
from vasa_engine.errors import InputError
from vasa_engine.kernel_shapes import attention_cases, distinct

CUDA = torch.cuda.is_available()
DEVICES = KERNEL_DEVICES
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# The motion transformer's head sizes and window length (its q, k, v come from one packed projection).
MOTION_CASES = [c for c in distinct(attention_cases(), "head_dim", "tokens") if c.name.startswith("motion_")]


def skip_unsupported(device: str, dtype: torch.dtype) -> None:
    if device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter has no bf16 dot product: bf16 attention is tested on CUDA")


def bound(dtype: torch.dtype, ref_in_dtype_err: float, device: str = "cuda") -> float:
    """fp32: 1e-5. fp16 / bf16: twice the reference's own error in that dtype, plus a floor.

    Triton's interpreter converts fp32 to bf16 by truncation (round toward zero; GPUs round to nearest even),
    which about doubles the rounding error of a bf16 output: bf16 on CPU tensors gets twice the factor."""
    if dtype == torch.float32:
        return 1e-5
    factor = 4.0 if (dtype == torch.bfloat16 and str(device).startswith("cpu")) else 2.0
    return factor * ref_in_dtype_err + 1e-5


def qkv(b, h, n_q, n_k, dh, dtype, device, gen, packed=False):
    """Random q, k, v. packed: sliced out of one (B, N, 3, H, Dh) projection as the models do (strided views)."""
    if packed:
        assert n_q == n_k
        x = torch.randn(b, n_q, 3, h, dh, generator=gen).to(dtype).to(device)
        return x.permute(2, 0, 3, 1, 4).unbind(0)
    return tuple(torch.randn(b, h, n, dh, generator=gen).to(dtype).to(device) for n in (n_q, n_k, n_k))


def run_kernel(q, k, v, mask=None):
    with backend.use("kernels"):
        return ops.attention(q, k, v, key_padding_mask=mask)


def reference64(q, k, v, mask=None):
    return ops.attention_reference(q.double().cpu(), k.double().cpu(), v.double().cpu(),
                                   None if mask is None else mask.cpu())


# Baselines the benchmarks time against (kept here so tests and benches use the same callables).
def reference_attention(q, k, v, mask=None):
    """The engine's PyTorch reference (SDPA with a boolean keep-mask)."""
    return ops.attention_reference(q, k, v, mask)


def torch_sdpa(q, k, v, mask=None):
    """PyTorch's own fused attention, with the padding mask as an additive float mask when there is one."""
    bias = None
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(mask, float("-inf"))
        bias = bias[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def padding_mask(lengths, n, device):
    """(B, n) bool, True past each clip's length."""
    return torch.arange(n, device=device)[None, :] >= torch.tensor(lengths, device=device)[:, None]


def check_against_reference(q, k, v, mask=None):
    out = run_kernel(q, k, v, mask)
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    ref = reference64(q, k, v, mask)
    err = rel_err(out.cpu(), ref)
    ref_err = 0.0 if q.dtype == torch.float32 else rel_err(reference_attention(q, k, v, mask).cpu(), ref)
    assert err <= bound(q.dtype, ref_err), (err, ref_err)
    return out


CASES = [  # (B, H, N_q, N_k, Dh)
    (1, 1, 1, 1, 16),
    (2, 3, 7, 7, 32),
    (1, 2, 63, 63, 64),
    (3, 1, 130, 130, 16),
    (2, 1, 7, 63, 32),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_attention_matches_reference(nan_empty, device, dtype, shape):
    skip_unsupported(device, dtype)
    gen = torch.Generator().manual_seed(hash(shape) % 2**31)
    check_against_reference(*qkv(*shape, dtype, device, gen))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MOTION_CASES, ids=lambda c: f"d{c.head_dim}_n{c.tokens}")
def test_attention_packed_projection_layout(nan_empty, device, dtype, case):
    """q, k, v as strided views of one packed projection (the motion transformer's layout), at its window length
    and head sizes (two heads)."""
    skip_unsupported(device, dtype)
    gen = torch.Generator().manual_seed(case.head_dim)
    q, k, v = qkv(1, 2, case.tokens, case.tokens, case.head_dim, dtype, device, gen, packed=True)
    assert not q.is_contiguous()
    out = check_against_reference(q, k, v)
    # The output is (B, N, H, Dh) memory: merging the heads back is a view.
    assert out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_head_dim_128(nan_empty, device, dtype):
    skip_unsupported(device, dtype)
    gen = torch.Generator().manual_seed(128)
    check_against_reference(*qkv(1, 1, 33, 40, 128, dtype, device, gen))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_random_padding_mask(nan_empty, device, dtype):
    skip_unsupported(device, dtype)
    gen = torch.Generator().manual_seed(11)
    q, k, v = qkv(3, 2, 37, 70, 32, dtype, device, gen)
    mask = torch.rand(3, 70, generator=gen) < 0.4
    mask[:, 0] = False  # every row keeps a key
    check_against_reference(q, k, v, mask.to(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_batched_clips_equal_each_clip_alone(nan_empty, device, dtype):
    """Audio-encoder use: clips of different lengths padded to one batch give, on each clip's own queries, what
    the clip gives alone (whole key blocks masked out included: length 5 of 100)."""
    skip_unsupported(device, dtype)
    gen = torch.Generator().manual_seed(5)
    lengths = [100, 41, 5]
    n, h, dh = 100, 1, 16
    q, k, v = qkv(len(lengths), h, n, n, dh, dtype, device, gen)
    batched = run_kernel(q, k, v, padding_mask(lengths, n, device))
    assert not batched.isnan().any()
    for i, length in enumerate(lengths):
        qi, ki, vi = (t[i : i + 1, :, :length] for t in (q, k, v))
        alone = run_kernel(qi, ki, vi)
        err = rel_err(batched[i : i + 1, :, :length].cpu(), alone.cpu())
        ref = reference64(qi, ki, vi)
        err_alone = rel_err(alone.cpu(), ref)
        ref_err = 0.0 if dtype == torch.float32 else rel_err(reference_attention(qi, ki, vi).cpu(), ref)
        assert err_alone <= bound(dtype, ref_err)
        assert err <= 2 * bound(dtype, ref_err), (length, err)


@pytest.mark.parametrize("device", DEVICES)
def test_attention_fully_masked_row_gives_zeros(nan_empty, device):
    """A clip with every key masked is a caller error; the kernel writes zeros there (PyTorch's math path does the
    same; other paths give NaN) and the other clips are unaffected."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = qkv(2, 1, 9, 9, 16, torch.float32, device, gen)
    mask = padding_mask([9, 0], 9, device)
    out = run_kernel(q, k, v, mask)
    assert (out[1] == 0).all()
    assert rel_err(out[:1].cpu(), reference64(q[:1], k[:1], v[:1])) <= 1e-5


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1")
def test_attention_unsupported_arguments_run_the_reference():
    from vasa_engine.kernels import attention as kernel

    gen = torch.Generator().manual_seed(1)
    q, k, v = qkv(1, 2, 5, 5, 24, torch.float32, "cpu", gen)  # Dh = 24: not a power of two
    assert kernel.attention(q, k, v) is NotImplemented
    assert rel_err(run_kernel(q, k, v), reference64(q, k, v)) <= 1e-6
    q64, k64, v64 = (t.double() for t in qkv(1, 1, 5, 5, 16, torch.float32, "cpu", gen))
    assert kernel.attention(q64, k64, v64) is NotImplemented


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1")
def test_attention_shape_errors_are_input_errors():
    gen = torch.Generator().manual_seed(1)
    q, k, v = qkv(2, 2, 5, 6, 16, torch.float32, "cpu", gen)
    with pytest.raises(InputError, match="do not match"):
        run_kernel(q, k[:, :1], v[:, :1])
    with pytest.raises(InputError, match="key_padding_mask"):
        run_kernel(q, k, v, torch.zeros(2, 5, dtype=torch.bool))


def test_nan_empty_fills_allocations(nan_empty):
    assert torch.empty(3).isnan().all() and torch.empty_like(torch.zeros(2)).isnan().all()


# ------------------------------------------------------------------------------------------------ modules


def _count_kernel_calls(monkeypatch, name):
    """Wraps the registered kernel `name`; returns a list that gets one entry per call the kernel handled."""
    ops._load_kernels()
    inner = ops._KERNELS[name]
    handled = []

    def spy(*args, **kwargs):
        out = inner(*args, **kwargs)
        if out is not NotImplemented:
            handled.append(out.dtype)
        return out

    monkeypatch.setitem(ops._KERNELS, name, spy)
    return handled


def module_parity(module, inputs, dtype, device):
    """(err of module with kernels, err of module with the reference) in `dtype`, both against the reference
    in float64."""
    module = module.eval()
    with torch.no_grad(), backend.use("reference"):
        ref = module.double()(*(t.double() for t in inputs))
    module = module.to(device=device, dtype=dtype)
    cast = [t.to(device=device, dtype=dtype) for t in inputs]
    with torch.no_grad():
        with backend.use("kernels"):
            out = module(*cast)
        with backend.use("reference"):
            same_dtype = module(*cast)
    return rel_err(out.cpu(), ref), rel_err(same_dtype.cpu(), ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_motion_transformer_layer_with_kernels(monkeypatch, device, dtype):
    """The motion transformer's decoder layer (self-attention, post-norms) and its input embeddings: width 64,
    2 heads (Dh = 32), window Lp + L = 13."""
    skip_unsupported(device, dtype)
    from vasa_engine.models.motion_generator import DecoderLayer

    calls = {name: _count_kernel_calls(monkeypatch, name) for name in ("attention", "add_layer_norm")}
    torch.manual_seed(0)
    layer = DecoderLayer(64, 2, 4)
    gen = torch.Generator().manual_seed(3)
    x, memory = torch.randn(3, 13, 64, generator=gen), torch.randn(3, 13, 64, generator=gen)
    err, ref_err = module_parity(layer, (x, memory), dtype, device)
    assert err <= bound(dtype, ref_err), (err, ref_err)
    assert calls["attention"] and calls["add_layer_norm"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_motion_denoiser_with_kernels(monkeypatch, device, dtype):
    """The whole (reduced) denoising network, two layers, every kernel of this family in it."""
    from conftest import tiny_motion_config
    from vasa_engine.models.motion_generator import DenoisingNetwork

    calls = {name: _count_kernel_calls(monkeypatch, name) for name in ("attention", "add_layer_norm",
                                                                       "add_embeddings")}
    cfg = tiny_motion_config(feature_dim=64, n_heads=2, n_motions=10, n_prev_motions=3)
    torch.manual_seed(1)
    net = DenoisingNetwork(cfg)
    gen = torch.Generator().manual_seed(4)
    b = 2
    inputs = (torch.randn(b, cfg.n_motions, cfg.motion_dim, generator=gen),
              torch.randn(b, cfg.n_motions, 64, generator=gen),
              torch.randn(b, cfg.n_prev_motions, cfg.motion_dim, generator=gen),
              torch.randn(b, cfg.n_prev_motions, 64, generator=gen))
    step = torch.tensor([3, 17])

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, *args):
            return self.net(*args, step.to(args[0].device))

    err, ref_err = module_parity(Wrapped(), inputs, dtype, device)
    assert err <= bound(dtype, ref_err) * (1 if dtype == torch.float32 else 2), (err, ref_err)
    assert all(calls.values()), {k: len(v) for k, v in calls.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_audio_encoder_layer_with_kernels(monkeypatch, device, dtype):
    """An audio encoder layer (post-norm HuBERT layout), width 48, 3 heads (Dh = 16), 37 frames."""
    skip_unsupported(device, dtype)
    from conftest import tiny_audio_config
    from vasa_engine.models.audio_encoder import EncoderLayer

    calls = _count_kernel_calls(monkeypatch, "attention")
    cfg = dataclasses.replace(tiny_audio_config(), hidden_size=48, num_attention_heads=3, intermediate_size=96)
    torch.manual_seed(2)
    layer = EncoderLayer(cfg)
    gen = torch.Generator().manual_seed(6)
    err, ref_err = module_parity(layer, (torch.randn(2, 37, 48, generator=gen),), dtype, device)
    assert err <= bound(dtype, ref_err), (err, ref_err)
    assert calls
