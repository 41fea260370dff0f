"""`vasa-engine gpu-suite`: on a GPU machine, build the native extension, run the GPU-marked tests, check the
full-size engine against eager PyTorch, and (`--mode full`) run the bench and the kernel benchmarks; every step's
result written into --out as soon as it ends. The suite itself is vasa_engine.gpu_suite.

It uses only what a stock CUDA PyTorch image has (torch, triton, pybind11, cmake, nvcc, pytest; pytest-xdist when
present): no PyAV, no network.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def add_parser(sub) -> None:
    from ..cli import float_in
    from ..gpu_suite import BUDGETS, MODES

    p = sub.add_parser("gpu-suite", help="on a GPU machine: build, GPU-marked tests, the engine against eager, "
                                         "benchmarks; each step's result written into --out as it ends")
    p.add_argument("--mode", choices=MODES, default="first-contact",
                   help=f"first-contact (default, about {BUDGETS['first-contact'] / 60:.1f} min): build, GPU "
                        "tests, the full-size engine against eager; full (about "
                        f"{BUDGETS['full'] / 60:.1f} min): adds the bench (quick and full) and the kernel benchmarks")
    p.add_argument("--out", default=str(REPO / "benches" / "results"), help="output folder (default: benches/results)")
    p.add_argument("--budget", type=float_in(30, 3600),
                   help="seconds for the whole suite (default: the mode's); steps are cut to what is left")
    p.add_argument("--skip-build", action="store_true", help="use the extension as it is (still checked)")
    p.add_argument("--commit", default=None, help="commit to record (default: $VASA_COMMIT, else git, else unknown)")
    p.set_defaults(func=run)


def _device_facts() -> dict:
    import torch

    from ..bench.peaks import tf32_state

    facts = {"device": torch.cuda.get_device_name(), "capability": "sm_%d%d" % torch.cuda.get_device_capability(),
             "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    tf32 = tf32_state()
    facts["tf32"] = "on" if tf32["matmul"] and tf32["cudnn"] else "off" if not any(tf32.values()) else str(tf32)
    try:
        import triton

        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = None
    return facts


def run(args) -> int:
    import torch

    from ..bench import git_commit
    from ..errors import InputError
    from ..gpu_suite import BUDGETS, Suite, header, plan
    from ..runtime import resolve_dtype

    out = Path(args.out)
    if not out.is_dir():
        raise InputError(f"output folder does not exist: {out}")
    if not torch.cuda.is_available():
        raise InputError("gpu-suite needs a CUDA device; none is available here")
    if args.commit:
        os.environ["VASA_COMMIT"] = args.commit  # the bench's processes record it where there is no git checkout
    commit = args.commit or git_commit()["commit"]
    budget = args.budget or BUDGETS[args.mode]
    kernel_dtype = str(resolve_dtype("auto", torch.device("cuda"))).removeprefix("torch.")
    suite = Suite(out, header(args.mode, budget, commit, _device_facts()), budget,
                  plan(args.mode, skip_build=args.skip_build, kernel_dtype=kernel_dtype))
    passed = suite.run()
    print((out / "suite.md").read_text(), end="")
    print(f"gpu-suite: {'passed' if passed else 'FAILED'}; results in {out}", file=sys.stderr)
    return 0 if passed else 1
