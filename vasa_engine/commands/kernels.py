"""`vasa-engine kernels`: the compile gate of the Triton kernels, with no GPU needed.

Every spec a kernel module declares (`aot_specs()`, see kernels/_aot.py) is compiled ahead of time for sm_90a and
sm_89 at the engine's real shapes (vasa_engine.kernel_shapes) and block settings, and checked: no register spills,
shared memory and registers within what a block may use, HGMMA (Hopper warpgroup MMA) in the sm_90a SASS of the
attention kernel, and every module that registers an operation declares specs. Exit code 0 when every check passes,
1 when one fails, 2 on bad arguments.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from ..errors import InputError

ARCH_CHOICES = ("sm_90a", "sm_89")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "kernels", help="compile every Triton kernel ahead of time for sm_90a and sm_89 and check it (no GPU needed)",
        description="Compile every Triton kernel spec for sm_90a and sm_89 without a GPU; print registers, spills, "
                    "shared memory and tensor-core instructions per kernel. Fails (exit 1) on any spill, a module "
                    "registering an op without AOT specs, an attention build for sm_90a without HGMMA, shared memory "
                    "or registers beyond what one block may use, or a compile error.")
    p.add_argument("--json", metavar="PATH", help="also write the whole report as JSON to PATH")
    p.add_argument("--arch", action="append", choices=ARCH_CHOICES,
                   help="target architecture; repeat for several (default: both)")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="only the kernel module (or its file name), op or spec of this name; repeat for several")
    p.add_argument("--extra-module", action="append", default=[], metavar="PATH",
                   help="also gate the kernel module in this Python file (its ops and aot_specs)")
    p.set_defaults(func=cmd_kernels)


def _check_args(args) -> None:
    for path in args.extra_module:
        if not Path(path).is_file():
            raise InputError(f"--extra-module {path}: no such file")
        if not path.endswith(".py"):
            raise InputError(f"--extra-module {path}: not a .py file")
    if args.json:
        target = Path(args.json)
        if target.is_dir():
            raise InputError(f"--json {args.json}: is a folder")
        parent = target.parent if str(target.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"--json {args.json}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise InputError(f"--json {args.json}: folder {parent} is not writable")


def write_json_atomic(path: str | Path, data: dict) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _kb(n) -> str:
    return "-" if n is None else (f"{n / 1024:.1f}K" if n >= 1024 else str(n))


def format_table(rows: list[dict]) -> str:
    head = ["module/op", "spec", "arch", "warps", "regs", "spill st/ld", "dyn smem", "smem", "stack", "HGMMA",
            "HMMA", "result", "shape"]
    lines = []
    for r in rows:
        label = r["label"] + (f"/{','.join(r['ops'])}" if r.get("ops") else "")
        if r.get("error"):
            cells = [label, r["spec"], r["arch"], str(r.get("num_warps", "")), "-", "-", "-", "-", "-", "-", "-",
                     "ERROR", r.get("shapes", "")]
        else:
            cells = [label, r["spec"], r["arch"], str(r["num_warps"]), str(r["registers"]),
                     f"{r['spill_stores']}/{r['spill_loads']}", _kb(r["dynamic_smem"]), _kb(r["static_smem"]),
                     str(r["stack"]), str(r["hgmma"]), str(r["hmma"]), "FAIL" if r.get("failed") else "ok",
                     r.get("shapes", "")]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]
    widths[-1] = 0  # the shape runs to the end of the line

    def fmt(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([fmt(head), fmt(["-" * w for w in widths[:-1]] + ["-----"]), *map(fmt, lines)])


GATE_PACKAGE = "_vasa_kernel_gate"


def load_gate(module: str = "_aot"):
    """A module of the compile gate (kernels/_aot*.py), imported from the kernel folder as a package of its own:
    importing vasa_engine.kernels would import (and, under TRITON_INTERPRET, interpret) every kernel in this
    process, and a broken kernel module would stop the gate. The gate's compiler processes load theirs the same way."""
    import importlib
    import importlib.util
    import types

    if GATE_PACKAGE not in sys.modules:
        spec = importlib.util.find_spec("vasa_engine.kernels")
        if spec is None or not spec.submodule_search_locations:
            raise InputError("vasa_engine.kernels is not installed: reinstall the package (pip install -e .)")
        package = types.ModuleType(GATE_PACKAGE)
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules[GATE_PACKAGE] = package
    return importlib.import_module(f"{GATE_PACKAGE}.{module}")


def _triton_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def cmd_kernels(args) -> int:
    _check_args(args)
    if not _triton_installed():
        raise InputError("triton is not installed: the kernel gate needs it (pip install triton)")
    aot = load_gate()
    archs = args.arch or list(ARCH_CHOICES)

    def progress(done, total, row):
        if sys.stderr.isatty():
            print(f"\rcompiled {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    try:
        report = aot.run_gate(archs=archs, only=args.only, extra_modules=args.extra_module,
                              jobs=min(2, os.cpu_count() or 1), progress=progress)
    except LookupError as exc:
        raise InputError(str(exc).strip('"')) from None
    failed = {(v["module"], v["spec"], v["arch"]) for v in report["verdicts"]}
    for row in report["rows"]:
        row["failed"] = (row["label"], row["spec"], row["arch"]) in failed
    if args.json:
        write_json_atomic(args.json, report)

    tools = ", ".join(f"{k} {v}" for k, v in report["tools"].items())
    specs = len({(r["module"], r["spec"]) for r in report["rows"]})
    print(f"triton {report['triton'] or '?'}; ptxas and nvdisasm: {tools or '?'}")
    ops = ", ".join(f"{op} ({owner})" for op, owner in sorted(report["ops"].items())) or "none"
    print(f"registered ops: {ops}")
    print(f"{specs} specs x {len(report['archs'])} archs ({', '.join(report['archs'])}) = {len(report['rows'])} "
          f"builds in {report['elapsed_s']:.1f} s with {report['jobs']} processes")
    fails = [v for v in report["verdicts"] if v["status"] == "FAIL"]
    for v in fails:
        where = " ".join(x for x in (v["module"], v["spec"], v["arch"]) if x)
        print(f"FAIL {where}: {v['reason']}")
    print(f"{'PASS' if report['passed'] else 'FAIL'}: {len(fails)} failed checks"
          + (f"; report written to {args.json}" if args.json else ""))
    print()
    print(format_table(report["rows"]) if report["rows"] else "(nothing compiled)")
    return 0 if report["passed"] else 1
