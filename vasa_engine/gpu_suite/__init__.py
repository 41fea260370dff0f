"""`vasa-engine gpu-suite`: everything that needs an NVIDIA GPU, sized for a short lease of a machine with no
network, and honest about what ran.

Two modes: "first-contact" (build the native extension, run every GPU-marked test in parallel, check the full-size
engine against eager PyTorch for a few frames; no torch.compile) and "full" (adds the bench in its quick and full
modes and the kernel benchmarks). Each step runs in a process of its own under its own time limit, inside the
suite's budget, and writes its result file into the output folder the moment it ends; `suite.json` and `suite.md`
are rewritten around every step. A skipped GPU-marked test fails the suite, and so does a native extension that is
not built for this device.

Modules: `runner` (steps, limits, the files), `procs` (a step's process, log and limit), `pytests` (the GPU-marked
tests, the kernel benchmarks), `steps` (build, engine check, bench; the plans), `engine_check` (run in its own
process), `summary` (suite.md).
"""

from .runner import MIN_STEP_S, Step, StepContext, StepFailed, StepTimedOut, Suite, header, read_suite
from .steps import BUDGETS, LIMITS, MODES, plan

__all__ = ["BUDGETS", "LIMITS", "MIN_STEP_S", "MODES", "Step", "StepContext", "StepFailed", "StepTimedOut", "Suite",
           "header", "plan", "read_suite"]
