"""Work per unit of each stage, counted on the meta device (no weights, no compute): FLOPs with
`torch.utils.flop_counter.FlopCounterMode`, bytes moved by one formula (`ByteCounter`); and what a timed figure
reaches with it: FLOP/s, bytes/s, percent of the device's peak."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..io.audio import SAMPLE_RATE
from .figures import is_measured, not_measured
from .peaks import compute_peak
from .sizes import FPS

E2E_STEPS = 10  # the motion generator's steps counted in the end-to-end work


class ByteCounter:
    """Counts bytes moved, on the meta device, by one formula:

    bytes = weights (every parameter and buffer an operation reads, once per call, i.e. once per batch)
          + activations: the tensor inputs and outputs of each major operation (convolutions, matrix products,
            grid_sample, attention, normalizations, up-sampling, pooling), each read or written once.

    Element-wise operations are assumed fused into their neighbours (the lower bound a fused engine aims at);
    `unfused` also counts every other non-view operation's inputs and outputs (what plain eager PyTorch moves).
    """

    MAJOR = ("convolution", "mm", "addmm", "bmm", "baddbmm", "linear", "grid_sampler", "attention", "norm",
             "upsample", "pool")

    def __init__(self, weights):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.weight_ids = {id(w) for w in weights}
        self._keep = list(weights)
        self.weights_seen: dict[int, int] = {}
        self.activations = 0
        self.unfused = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                counter._count(func, args, kwargs or {}, out)
                return out

        self.mode = Mode()

    @staticmethod
    def _tensors(tree):
        from torch.utils._pytree import tree_flatten

        return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]

    def _count(self, func, args, kwargs, out):
        ins, outs = self._tensors((args, kwargs)), self._tensors(out)
        is_view = any(r.alias_info is not None for r in func._schema.returns)
        if is_view:  # a view of a weight is a weight (linear's transposed weight, a sliced projection)
            if any(id(t) in self.weight_ids for t in ins):
                for t in outs:
                    self.weight_ids.add(id(t))
                    self._keep.append(t)
            return
        name = func.__name__ if hasattr(func, "__name__") else str(func)
        major = any(k in name for k in self.MAJOR)
        act = 0
        for t in ins:
            nbytes = t.numel() * t.element_size()
            if id(t) in self.weight_ids:
                self.weights_seen[id(t)] = nbytes
            else:
                act += nbytes
        act += sum(t.numel() * t.element_size() for t in outs)
        self.unfused += act
        if major:
            self.activations += act

    @property
    def weight_bytes(self) -> int:
        return sum(self.weights_seen.values())


def count_work(fn: Callable, modules) -> dict:
    """FLOPs and bytes of one call of `fn` (on meta tensors) through `modules`' weights."""
    from torch.utils.flop_counter import FlopCounterMode

    weights = [t for m in modules for t in list(m.parameters()) + list(m.buffers())]
    counter = ByteCounter(weights)
    flops = FlopCounterMode(display=False)
    with flops, counter.mode:  # grad mode on: FlopCounterMode's module tracker hooks need it
        fn()
    w = counter.weight_bytes
    return {"flops": int(flops.get_total_flops()), "weight_bytes": w, "activation_bytes": counter.activations,
            "bytes": w + counter.activations, "bytes_unfused": w + counter.unfused}


def _per_frame(w: dict, counted: str) -> dict:
    """A per-frame stage's counted work (`count_work` at batch 1): weights read once per batch, the rest per frame."""
    return {"unit": "frame", "flops_per_unit": w["flops"], "weight_bytes_per_batch": w["weight_bytes"],
            "activation_bytes_per_unit": w["activation_bytes"], "bytes_per_unit_at_batch_1": w["bytes"],
            "bytes_unfused_per_unit_at_batch_1": w["bytes_unfused"], "counted": counted}


def work_per_unit(cfgs: dict, dtype: torch.dtype, branches: int) -> dict:
    """Counted work of each stage at `dtype`, per its unit, for the configs `cfgs` ("renderer", "audio", "motion").
    Modules are built on the meta device (no weights)."""
    from ..audio_features import AudioFeatureEncoder
    from ..models.motion_generator import MotionGenerator
    from ..models.renderer import FaceRenderer

    out: dict[str, Any] = {}
    rcfg, acfg, mcfg = cfgs["renderer"], cfgs["audio"], cfgs["motion"]
    with torch.device("meta"):
        renderer = FaceRenderer(rcfg).set_image_dtype(dtype)
        image = torch.empty(1, 3, rcfg.input_size, rcfg.input_size, dtype=dtype)
        feature = renderer.appearance_feature_extractor(image)
        kp = torch.empty(1, rcfg.motion_extractor.num_kp, 3)
        w = count_work(lambda: renderer.warp_decode(feature, kp, kp), [renderer.warping_module,
                                                                      renderer.spade_generator])
        out["renderer"] = _per_frame(w, "warping module + SPADE decoder at batch 1 (the keypoint MLPs are negligible)")

        w = count_work(lambda: renderer.encode_source(image), [renderer.appearance_feature_extractor,
                                                                renderer.motion_extractor])
        out["source_encoding"] = _per_frame(w, "appearance + motion extractors at batch 1 (the crop's warp and "
                                               "resize are not counted)")

        audio = AudioFeatureEncoder(acfg, mcfg.feature_dim).to(dtype)
        window_samples = mcfg.n_motions * SAMPLE_RATE // FPS
        seconds = window_samples / SAMPLE_RATE
        x = torch.empty(1, window_samples, dtype=dtype)
        w = count_work(lambda: audio.window_features(x), [audio])
        out["audio_encoder"] = {"unit": "second of audio", "flops_per_unit": w["flops"] / seconds,
                                "bytes_per_unit": w["bytes"] / seconds,
                                "bytes_unfused_per_unit": w["bytes_unfused"] / seconds,
                                "counted": f"one {seconds:g} s window, divided by {seconds:g}"}

        net = MotionGenerator(mcfg).denoising_net.to(dtype)
        n, lp, md, d = branches, mcfg.n_prev_motions, mcfg.motion_dim, mcfg.feature_dim
        args = (torch.empty(n, mcfg.n_motions, md, dtype=dtype), torch.empty(n, mcfg.n_motions, d, dtype=dtype),
                torch.empty(n, lp, md, dtype=dtype), torch.empty(n, lp, d, dtype=dtype),
                torch.zeros(n, dtype=torch.long))
        w = count_work(lambda: net(*args), [net])
        out["motion_generator"] = {"unit": "window", "flops_per_step": w["flops"], "bytes_per_step": w["bytes"],
                                   "bytes_unfused_per_step": w["bytes_unfused"], "frames_per_window": mcfg.n_motions,
                                   "counted": f"one denoiser forward of {branches} guidance branches per step "
                                              "(DPM-Solver++(2M): one forward per step)"}
    return out


def work_for(stage: str, work: dict, units: float, batch: int = 1, steps: int = 1) -> tuple[float, float]:
    """(FLOPs, bytes) per call of `stage` doing `units` units (frames end to end: the three stages' work, the
    motion generator at E2E_STEPS)."""
    if stage in ("renderer", "source_encoding"):  # weights read once per batch, activations per frame
        r = work[stage]
        return r["flops_per_unit"] * units, r["weight_bytes_per_batch"] * units / batch + r[
            "activation_bytes_per_unit"] * units
    if stage == "audio_encoder":
        a = work["audio_encoder"]
        return a["flops_per_unit"] * units, a["bytes_per_unit"] * units
    m = work["motion_generator"]
    if stage == "end_to_end":
        parts = (work_for("renderer", work, units, batch=batch), work_for("audio_encoder", work, units / FPS),
                 work_for("motion_generator", work, units / m["frames_per_window"], steps=E2E_STEPS))
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    return m["flops_per_step"] * steps * units, m["bytes_per_step"] * steps * units


def attach_work(fig: dict, flops: float, nbytes: float, units: float, peak: dict, dtype: torch.dtype) -> None:
    """Adds to a measured figure its work per unit, achieved FLOP/s and bytes/s, and their percent of `peak`."""
    seconds = fig["ms"]["median"] / 1000.0
    fig["flops_per_unit"] = flops / units
    fig["bytes_per_unit"] = nbytes / units
    fig["tflops_per_s"] = flops / seconds / 1e12
    fig["gbytes_per_s"] = nbytes / seconds / 1e9
    if not is_measured(peak):
        fig["pct_peak_compute"] = fig["pct_peak_bandwidth"] = not_measured(peak["reason"])
        return
    tflops, key = compute_peak(peak, dtype)
    label = " (of an estimated peak)" if peak.get("estimate") else ""
    fig["pct_peak_compute"] = (100 * fig["tflops_per_s"] / tflops if tflops else
                               not_measured(f"no {key} peak for this device"))
    fig["peak_used"] = f"{key}{label}"
    bw = peak.get("bandwidth")
    fig["pct_peak_bandwidth"] = (100 * fig["gbytes_per_s"] / (bw * 1000) if bw else
                                 not_measured("unknown peak memory bandwidth for this device"))
