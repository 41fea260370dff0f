"""`vasa-engine export-onnx`: the renderer and the motion generator as ONNX graphs, for other runtimes.

Writes DIR/<target>.onnx for each target (renderer, source, keypoints, motion; `all` for the four), each checked
with onnx.checker and written atomically, and prints its inputs, outputs and size. Needs the `onnx` extra.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import InputError

WHAT_CHOICES = ("renderer", "source", "keypoints", "motion", "all")


def add_parser(subparsers) -> None:
    from ..cli import positive_int
    from ..export import DEFAULT_OPSET, MIN_OPSET

    p = subparsers.add_parser(
        "export-onnx", help="export the renderer and the motion generator as ONNX graphs",
        description="Export ONNX graphs (float32, PyTorch's dynamo exporter, opset 20 or later for the 5-D "
                    "GridSample of the warp): renderer (warp + decode per frame), source (per-portrait encoder), "
                    "keypoints (driving parameters -> driving keypoints with stitching), motion (the motion "
                    "generator's denoiser). Writes DIR/<target>.onnx; needs pip install 'vasa-engine[onnx]'.")
    p.add_argument("--what", choices=WHAT_CHOICES, default="all",
                   help="which graph: renderer, source, keypoints, motion, or all (default: all)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="existing folder for the .onnx files")
    p.add_argument("--weights", action="append",
                   help="engine weights (.safetensors with its .json); repeat to combine files (a renderer and a "
                        "motion generator); default: seeded random weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights where none are given")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, at least {MIN_OPSET} (default: {DEFAULT_OPSET})")
    p.add_argument("--batch", type=positive_int,
                   help="fix the batch size of every graph to N (default: a dynamic batch axis)")
    p.add_argument("--verify", action="store_true",
                   help="also run each graph in onnxruntime on random inputs and print its relative error against "
                        "PyTorch (slow for the renderer on a CPU: about 20 s a frame)")
    p.set_defaults(func=cmd_export_onnx)


def _targets(what: str) -> list[str]:
    from ..export import TARGETS

    if what == "all":
        return list(TARGETS)
    if what not in TARGETS:
        raise InputError(f"unknown export target {what!r} (use {', '.join(WHAT_CHOICES)})")
    return [what]


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB"


def cmd_export_onnx(args) -> int:
    from .. import export as ex
    from ..engine import Engine

    targets = _targets(args.what)
    folder = ex.check_output_dir(args.output)
    ex.check_opset(args.opset)
    if args.verify:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise InputError("--verify needs onnxruntime: pip install 'vasa-engine[onnx]'") from None
    # Random weights where --weights gives none: the engine says so in one warning line per component.
    engine = Engine(args.weights, device="cpu", dtype="float32", seed=args.seed, backend="reference")
    if "motion" in targets:
        engine.motion_stack  # build (or load) the motion generator now, so its warning comes before the export
    batch = f"batch {args.batch}" if args.batch else "dynamic batch"
    print(f"exporting {', '.join(targets)} (float32, opset {args.opset}, {batch}) to {folder}")
    t_start = time.perf_counter()
    for target in targets:
        info = ex.export(engine, target, Path(folder) / f"{target}.onnx", opset=args.opset, batch=args.batch)
        print(f"{info.path}: {_megabytes(info.size_bytes)}, opset {info.opset}, exported in {info.seconds:.1f} s")
        for kind, values in (("in ", info.inputs), ("out", info.outputs)):
            for name, dtype, shape in values:
                print(f"  {kind} {name}: {dtype} {shape}")
        if args.verify:
            errors = ex.compare_onnx(info.path, ex.build_graph(engine, target), batch=args.batch or 3)
            worst = max(errors.values())
            print(f"  onnxruntime vs PyTorch: max relative error {worst:.2e} over {len(errors)} output(s)")
    print(f"done in {time.perf_counter() - t_start:.1f} s")
    return 0
