"""ONNX export of the renderer and the motion generator, for deployment on other runtimes.

Four graphs, each a small module around the engine's own modules and keypoint steps (the ones the renderer runs,
from vasa_engine.models.keypoints), exported with PyTorch's dynamo-based exporter
(`torch.onnx.export(..., dynamo=True)`) in float32 on the reference path of every operation (plain PyTorch ops;
the keypoint transform too, where the engine runs its fused native version):

- "renderer": the per-frame path, warp + decode. feature_3d (N, C, D, h, w), kp_source (N, K, 3), kp_driving
  (N, K, 3) -> image (N, 3, 2S, 2S) in [0, 1]. The warp's 5-D trilinear grid sample is ONNX GridSample with a
  5-D input, which needs opset 20 or later.
- "source": the per-portrait encoder (appearance extractor + motion extractor + source keypoints). image
  (N, 3, S, S) in [0, 1] -> feature_3d, kp (canonical keypoints), pitch, yaw, roll (degrees), exp, t, scale and
  x_s (the source's implicit keypoints, the renderer's kp_source).
- "keypoints": driving parameters -> driving keypoints with the stitching MLP. kp (1, K, 3), x_s (1, K, 3),
  pitch, yaw, roll (N,) degrees, exp (N, K, 3), t (N, 3), scale (N, 1), driving_multiplier (1,) -> kp_driving
  (N, K, 3) = x_s + (stitch(scale * (kp @ R + exp) + t_xy) - x_s) * driving_multiplier. (The eye and lip
  retargeting MLPs are not in it.)
- "motion": the motion generator's denoiser. x_t (N, L, M), audio (N, L, d), prev_motion (N, Lp, M),
  prev_audio (N, Lp, d), step (N,) int64, and per condition the model has: its values (N, k) and a presence
  flag (N,) (1 kept, 0 dropped) -> x0 (N, Lp + L, M). The guidance branches of a step go in as one batch.

The batch axis N is dynamic unless a fixed batch is asked for. The spectral-normalized convolutions of the SPADE
decoder are exported with their effective weights (weight_orig / sigma, computed once at export), so the graph
holds plain convolutions. onnx, onnxscript and onnxruntime are optional dependencies (the `onnx` extra), imported
only here and only when used.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import backend
from .errors import InputError
from .models.keypoints import driving_keypoints, source_keypoints
from .models.spade import SpectralNormConv2d

MIN_OPSET = 20  # GridSample on 5-D inputs (the warp's trilinear sample) first exists in opset 20
DEFAULT_OPSET = 20
TARGETS = ("renderer", "source", "keypoints", "motion")
EXAMPLE_BATCH = 2  # the batch traced when the batch axis is dynamic (1 would be specialized away by the tracer)
SINGLE_FILE_LIMIT = 2**31 - 1  # protobuf's limit on one message: larger models would need external data


def _require_onnx():
    """Import onnx, onnxscript and onnxruntime, or say in one line how to install them."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise InputError(f"ONNX export needs onnx and onnxscript ({exc.name} is missing): "
                         "pip install 'vasa-engine[onnx]'") from None
    return onnx


# ------------------------------------------------------------------------------------------- spectral norm


def fold_spectral_norm(module: nn.Module) -> nn.Module:
    """A deep copy of `module` whose SpectralNormConv2d layers are plain Conv2d with the effective weight.

    The effective weight weight_orig / sigma (sigma = u . (W v) with the stored u and v) is computed once, with
    the same arithmetic the module runs per call, so the copy's outputs equal the module's.
    """
    if isinstance(module, SpectralNormConv2d):
        raise TypeError("fold_spectral_norm folds the layers inside a module; pass their parent")
    # The effective weights come from the module itself, not from the copy: the reduction in sigma depends (in
    # its last bits) on the memory alignment of weight_orig, and the copy's is not the original's.
    with torch.no_grad():
        weights = {name: m.weight().detach().clone() for name, m in module.named_modules()
                   if isinstance(m, SpectralNormConv2d)}
    folded = copy.deepcopy(module)
    for name, weight in weights.items():
        snconv = folded.get_submodule(name)
        out_ch, in_ch, kh, kw = weight.shape
        conv = nn.Conv2d(in_ch, out_ch, (kh, kw), padding=snconv.padding, bias=snconv.bias is not None,
                         device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if snconv.bias is not None:
                conv.bias.copy_(snconv.bias.detach())
        parent_name, _, child = name.rpartition(".")
        setattr(folded.get_submodule(parent_name) if parent_name else folded, child, conv)
    return folded


# ------------------------------------------------------------------------------------------- graph modules


def _export_copy(module: nn.Module) -> nn.Module:
    """A float32 CPU copy in eval mode, spectral norms folded."""
    return fold_spectral_norm(module).float().cpu().eval()


class _Graph(nn.Module):
    """An export module: names of its inputs and outputs, which inputs carry the batch axis, example inputs."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    batched_inputs: tuple[str, ...] = ()

    def dynamic_shapes(self, batch) -> tuple:
        """torch.export's dynamic_shapes, one entry per positional input: axis 0 of the batched inputs."""
        return tuple({0: batch} if n in self.batched_inputs else None for n in self.input_names)

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError


class RendererGraph(_Graph):
    """Warp + decode: feature_3d (N, C, D, h, w), kp_source, kp_driving (N, K, 3) -> image (N, 3, 2S, 2S)."""

    input_names = ("feature_3d", "kp_source", "kp_driving")
    output_names = ("image",)
    batched_inputs = input_names

    def __init__(self, renderer):
        super().__init__()
        self.cfg = renderer.cfg
        self.warping_module = _export_copy(renderer.warping_module)
        self.spade_generator = _export_copy(renderer.spade_generator)

    def forward(self, feature_3d, kp_source, kp_driving):
        warped = self.warping_module(feature_3d, kp_source=kp_source, kp_driving=kp_driving)["out"]
        return self.spade_generator(warped)

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        wc = self.cfg.warping_module
        ac = self.cfg.appearance_feature_extractor
        side = self.cfg.input_size // 2**ac.num_down_blocks
        k = wc.num_kp
        feature = torch.randn(batch, wc.reshape_channel, ac.reshape_depth, side, side, generator=generator)
        kp_s = 0.3 * torch.randn(batch, k, 3, generator=generator)
        kp_d = kp_s + 0.05 * torch.randn(batch, k, 3, generator=generator)
        return feature, kp_s, kp_d


class SourceGraph(_Graph):
    """Per-portrait encoder: image (N, 3, S, S) in [0, 1] -> feature volume and keypoint parameters."""

    input_names = ("image",)
    output_names = ("feature_3d", "kp", "pitch", "yaw", "roll", "exp", "t", "scale", "x_s")
    batched_inputs = input_names

    def __init__(self, renderer):
        super().__init__()
        self.cfg = renderer.cfg
        self.appearance_feature_extractor = _export_copy(renderer.appearance_feature_extractor)
        self.motion_extractor = _export_copy(renderer.motion_extractor)

    def forward(self, image):
        feature_3d = self.appearance_feature_extractor(image)
        k = source_keypoints(self.motion_extractor(image))
        return feature_3d, k.kp, k.pitch, k.yaw, k.roll, k.exp, k.t, k.scale, k.x_s

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        s = self.cfg.input_size
        return (torch.rand(batch, 3, s, s, generator=generator),)


class KeypointsGraph(_Graph):
    """Driving parameters -> driving keypoints, with the stitching MLP (the transform in plain PyTorch ops)."""

    input_names = ("kp", "x_s", "pitch", "yaw", "roll", "exp", "t", "scale", "driving_multiplier")
    output_names = ("kp_driving",)
    batched_inputs = ("pitch", "yaw", "roll", "exp", "t", "scale")

    def __init__(self, renderer):
        super().__init__()
        self.num_kp = renderer.cfg.motion_extractor.num_kp
        self.stitching = copy.deepcopy(renderer.stitching).float().cpu().eval()

    def forward(self, kp, x_s, pitch, yaw, roll, exp, t, scale, driving_multiplier):
        return driving_keypoints(kp, x_s, pitch, yaw, roll, exp, t, scale, stitching=self.stitching,
                                 multiplier=driving_multiplier)

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        k = self.num_kp

        def rnd(*shape, scale=1.0):
            return scale * torch.randn(*shape, generator=generator)

        return (rnd(1, k, 3, scale=0.3), rnd(1, k, 3, scale=0.3), rnd(batch, scale=10.0), rnd(batch, scale=10.0),
                rnd(batch, scale=10.0), rnd(batch, k, 3, scale=0.02), rnd(batch, 3, scale=0.05),
                1.0 + rnd(batch, 1, scale=0.1), torch.tensor([1.1]))


class MotionGraph(_Graph):
    """The denoiser's forward: noisy window and context -> x0 prediction for every token of the window."""

    output_names = ("x0",)

    def __init__(self, generator):
        super().__init__()
        self.cfg = generator.cfg
        self.denoising_net = copy.deepcopy(generator.denoising_net).float().cpu().eval()
        self.conditions = tuple(c for c in self.cfg.conditions if c != "audio")
        names = ["x_t", "audio", "prev_motion", "prev_audio", "step"]
        for c in self.conditions:
            names += [c, f"{c}_present"]
        self.input_names = tuple(names)
        self.batched_inputs = self.input_names

    def dynamic_shapes(self, batch) -> tuple:
        # forward takes the conditions (values and presence flags) as *args: one nested entry for all of them
        conditions = tuple({0: batch} for _ in range(2 * len(self.conditions)))
        return ({0: batch},) * 5 + ((conditions,) if conditions else ())

    def condition_sizes(self) -> dict[str, int]:
        sizes = {"gaze": 2, "distance": 1, "emotion": self.cfg.emotion_dim}
        return {c: sizes[c] for c in self.conditions}

    def forward(self, x_t, audio, prev_motion, prev_audio, step, *conditions):
        cond = {name: (conditions[2 * i], conditions[2 * i + 1]) for i, name in enumerate(self.conditions)}
        return self.denoising_net(x_t, audio, prev_motion, prev_audio, step, conditions=cond)

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        c = self.cfg
        out = [torch.randn(batch, c.n_motions, c.motion_dim, generator=generator),
               torch.randn(batch, c.n_motions, c.feature_dim, generator=generator),
               torch.randn(batch, c.n_prev_motions, c.motion_dim, generator=generator),
               torch.randn(batch, c.n_prev_motions, c.feature_dim, generator=generator),
               torch.randint(0, c.n_diff_steps + 1, (batch,), generator=generator)]
        for size in self.condition_sizes().values():
            out.append(torch.randn(batch, size, generator=generator))
            out.append((torch.arange(batch) % 2 == 0).float())
        return tuple(out)


def build_graph(engine, what: str) -> _Graph:
    """The export module of one target, built from the engine's modules (float32 CPU copies)."""
    if what == "renderer":
        return RendererGraph(engine.renderer)
    if what == "source":
        return SourceGraph(engine.renderer)
    if what == "keypoints":
        return KeypointsGraph(engine.renderer)
    if what == "motion":
        return MotionGraph(engine.motion_stack.generator)
    raise InputError(f"unknown export target {what!r} (use {', '.join(TARGETS)} or all)")


# ------------------------------------------------------------------------------------------- export


@dataclass
class ExportedGraph:
    """One written ONNX file: where, what goes in and out (name, dtype, shape), its size and export time."""

    name: str
    path: Path
    inputs: list[tuple[str, str, str]] = field(default_factory=list)
    outputs: list[tuple[str, str, str]] = field(default_factory=list)
    size_bytes: int = 0
    seconds: float = 0.0
    opset: int = 0


def check_opset(opset: int) -> int:
    onnx = _require_onnx()
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise InputError(f"--opset {opset} is outside {MIN_OPSET}..{newest} (5-D GridSample needs opset {MIN_OPSET} "
                         f"or later; the installed onnx {onnx.__version__} knows up to {newest})")
    return opset


def check_output_dir(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"output folder {folder} does not exist" if not folder.exists()
                         else f"output path {folder} is not a folder")
    if not os.access(folder, os.W_OK):
        raise InputError(f"output folder {folder} is not writable")
    return folder


def _value_info(values) -> list[tuple[str, str, str]]:
    from onnx import TensorProto

    out = []
    for v in values:
        t = v.type.tensor_type
        dims = ",".join(d.dim_param if d.HasField("dim_param") else str(d.dim_value) for d in t.shape.dim)
        out.append((v.name, TensorProto.DataType.Name(t.elem_type).lower(), f"({dims})"))
    return out


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress warnings (training-mode, deprecation, optional torchvision ops)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def export_graph(graph: _Graph, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                 batch: int | None = None, name: str | None = None) -> ExportedGraph:
    """Export one graph module to `path` (written atomically: a temporary file in the same folder, renamed into
    place), check it with onnx.checker and return what was written. batch None: the batch axis is dynamic;
    an integer fixes it."""
    onnx = _require_onnx()
    check_opset(opset)
    path = Path(path)
    check_output_dir(path.parent if str(path.parent) else ".")
    if batch is not None and batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    graph.eval()
    example = graph.example_inputs(batch or EXAMPLE_BATCH, torch.Generator().manual_seed(0))
    dynamic_shapes = None if batch is not None else graph.dynamic_shapes(torch.export.Dim("batch"))
    t0 = time.perf_counter()
    with backend.use("reference"), torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(graph, example, dynamo=True, opset_version=opset,
                                    input_names=list(graph.input_names), output_names=list(graph.output_names),
                                    dynamic_shapes=dynamic_shapes, optimize=True, verbose=False)
    weights = sum(v.const_value.nbytes for v in program.model.graph.initializers.values() if v.const_value is not None)
    if weights > SINGLE_FILE_LIMIT:  # the exporter would write external data; no graph here comes near
        raise InputError(f"{path.name}: {weights / 2**30:.1f} GB of weights do not fit in one ONNX file (2 GB)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        program.save(tmp, external_data=False)  # one self-contained file: no external-data file to keep in step
        onnx.checker.check_model(tmp)
        model = onnx.load(tmp, load_external_data=False)
        got = {o.domain: o.version for o in model.opset_import}.get("", 0)
        if got != opset:
            raise RuntimeError(f"{path.name}: the exporter wrote opset {got}, not the requested {opset}")
        info = ExportedGraph(name or path.stem, path, _value_info(model.graph.input), _value_info(model.graph.output),
                             os.path.getsize(tmp), time.perf_counter() - t0, got)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return info


def export(engine, what: str, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
           batch: int | None = None) -> ExportedGraph:
    """Export one target ("renderer", "source", "keypoints" or "motion") of `engine` to `path`."""
    return export_graph(build_graph(engine, what), path, opset=opset, batch=batch, name=what)


def export_renderer(engine, path, **options) -> ExportedGraph:
    return export(engine, "renderer", path, **options)


def export_source(engine, path, **options) -> ExportedGraph:
    return export(engine, "source", path, **options)


def export_keypoints(engine, path, **options) -> ExportedGraph:
    return export(engine, "keypoints", path, **options)


def export_motion(engine, path, **options) -> ExportedGraph:
    return export(engine, "motion", path, **options)


# ------------------------------------------------------------------------------------------- verification


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


def run_onnx(path: str | os.PathLike, graph: _Graph, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Run an exported graph in onnxruntime on the CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("checking an exported graph needs onnxruntime: pip install 'vasa-engine[onnx]'") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    feed = {name: x.numpy() for name, x in zip(graph.input_names, inputs)}
    return [torch.from_numpy(o) for o in session.run(list(graph.output_names), feed)]


def compare_onnx(path: str | os.PathLike, graph: _Graph, batch: int = 3, seed: int = 1) -> dict[str, float]:
    """Relative error ||onnx - torch|| / ||torch|| per output, on fresh random inputs of the given batch."""
    inputs = graph.example_inputs(batch, torch.Generator().manual_seed(seed))
    with backend.use("reference"), torch.no_grad():
        ref = graph(*inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = run_onnx(path, graph, inputs)
    return {name: _rel_err(o, r) for name, o, r in zip(graph.output_names, got, ref)}
