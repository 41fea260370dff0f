"""`vasa-engine gpu-check`: the engine's full-size CUDA path traced on fake tensors, with no GPU needed.

Every stage of one engine runs on fake tensors on "cuda:0" (vasa_engine.tracing): it prints what each stage produced
(shape, dtype, device), the kernels it ran and an estimate of the device memory of one engine and of each additional
stream. Exit code 0 when every stage traces cleanly; 1 with one line naming the stage and the problem when one does
not; 2 on bad arguments.
"""

from __future__ import annotations

import sys

DTYPE_CHOICES = ("float16", "bfloat16", "float32")
CUDA_BATCH = 8  # frames an engine renders per batch on CUDA by default


def add_parser(subparsers) -> None:
    from ..cli import positive_int
    from ..tracing.stages import STAGE_NAMES

    p = subparsers.add_parser(
        "gpu-check", help="trace the full-size CUDA path on fake tensors, without a GPU: devices, dtypes, shapes, "
                          "kernels and device memory",
        description="Run every stage of one engine at full size (portrait preparation, a batch of audio windows and "
                    "one streaming chunk, a motion window with every guidance branch and a chained one, a batch of "
                    "frames) on PyTorch's fake tensors on device cuda:0, in the CUDA dtype and under the kernels "
                    "backend. No GPU is used and nothing is computed. Prints each stage's outputs with their shape, "
                    "dtype and device, the kernels each stage ran, and the estimated device memory of one engine "
                    "and of each additional stream. Exit code 1, with one line naming the stage and the problem, "
                    "when a stage mixes devices or dtypes, reads a device value on the host, falls back from a "
                    "kernel to the reference, or leaves an output off the device or in the wrong dtype.")
    p.add_argument("--batch-size", type=positive_int, default=CUDA_BATCH,
                   help=f"frames per rendered batch (default: {CUDA_BATCH}, the engine's default on CUDA)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="float16",
                   help="the engine's CUDA dtype (default: float16, what dtype auto gives on CUDA)")
    p.add_argument("--only", action="append", choices=STAGE_NAMES, metavar="STAGE",
                   help=f"trace only this stage and those it takes inputs from; repeat for several (stages: "
                        f"{', '.join(STAGE_NAMES)}; default: all, and only then is the memory estimated)")
    p.set_defaults(func=cmd_gpu_check)


def cmd_gpu_check(args) -> int:
    from ..runtime import DTYPES
    from ..tracing.check import GpuCheckError, run_check
    from ..tracing.report import format_report

    try:
        result = run_check(args.batch_size, DTYPES[args.dtype], only=args.only or ())
    except GpuCheckError as exc:
        print(f"vasa-engine gpu-check: {exc}", file=sys.stderr)
        return 1
    print(format_report(result))
    return 0
