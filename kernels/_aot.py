"""Ahead-of-time compilation of the Triton kernels for sm_90a and sm_89, without a GPU: the compile gate.

Every kernel module may declare the launches it serves with a module-level `aot_specs() -> list[dict]`:

    {"name": str, "kernel": <@triton.jit function>,
     "signature": {arg: "*fp16" | "*bf16" | "*fp32" | "*u8" | "*i1" | "i32" | "i64" | "fp32" | ...},
     "constexprs": {NAME: value}, "num_warps": int, "num_stages": int,
     "shapes": "the real shape this launch serves",
     "expect_hgmma": bool (optional: the sm_90a build must use warpgroup MMA),
     "divisible_by_16": [arg, ...] (optional: the arguments the launch specializes as multiples of 16;
                                    default: every pointer argument, as Triton does for torch allocations)}

The signature names every argument that is not a constexpr (constexprs may also appear there as "constexpr").

`compile_spec(spec, arch)` compiles one spec with `triton.compile` for a `GPUTarget` (no driver is touched), then
reads what the hardware will see: registers, spill stores and loads, stack frame and static shared memory from
`ptxas -v` (the log of Triton's own ptxas run; for a build Triton takes from its cache, its ptxas is run again on the
PTX with Triton's flags and the cubin compared byte for byte with Triton's), the dynamic shared memory Triton
allocates (`metadata.shared`), and the SASS (the nvdisasm Triton ships), where HGMMA (Hopper warpgroup MMA) and HMMA
(Ampere/Ada tensor core MMA) instructions are counted.

`run_gate(...)` runs the whole gate: compiler processes (at most two) with TRITON_INTERPRET removed from their
environment, since the interpreter replaces the jitted functions; one of them discovers the kernel modules, their
registered operations and their specs; then every spec is compiled for every architecture and checked.

This module imports triton only inside functions, and `vasa-engine kernels` loads it by file path
(`vasa_engine.commands.kernels.load_aot`), so the gate still reports when a kernel module fails to import.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

ARCHS = {"sm_90a": 90, "sm_89": 89}

# Shared memory one block may use (opt-in maximum) and registers per SM, per architecture.
MAX_SHARED = {"sm_90a": 232448, "sm_89": 101376}
REGISTERS_PER_SM = 65536

_SPEC_KEYS = ("name", "kernel", "signature", "constexprs", "num_warps", "num_stages", "shapes")
_ATTENTION_OP = "attention"


class AOTError(Exception):
    """A spec that cannot be compiled as given (the message says why)."""


# ------------------------------------------------------------------------------------------------ parsers

_ENTRY_RE = re.compile(r"Compiling entry function '([^']+)'")
_PROPS_RE = re.compile(r"Function properties for (\S+)")
_FRAME_RE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED_RE = re.compile(r"Used (\d+) registers")
_SMEM_RE = re.compile(r"(\d+) bytes smem")
_BARRIERS_RE = re.compile(r"used (\d+) barriers")
_VERSION_RE = re.compile(r"release [\d.]+, V([\d.]+)")


def parse_ptxas_log(text: str) -> dict:
    """Resource usage from the output of `ptxas -v`.

    Returns {"entry", "registers", "spill_stores", "spill_loads", "stack", "static_smem", "barriers", "functions",
    "warnings"}: the numbers of the (last) entry function, except the spill bytes, which are summed over every
    function in the log (a spill in a called function is a spill of the kernel). "functions" maps each function
    to its own numbers. Missing numbers are None (registers) or 0."""
    functions: dict[str, dict] = {}
    entry = None
    current = None
    warnings = []
    for line in text.splitlines():
        if "warning" in line.lower():
            warnings.append(line.strip())
        m = _ENTRY_RE.search(line)
        if m:
            entry = current = m.group(1)
            functions.setdefault(entry, {})
            continue
        m = _PROPS_RE.search(line)
        if m:
            current = m.group(1)
            functions.setdefault(current, {})
            continue
        m = _FRAME_RE.search(line)
        if m and current is not None:
            functions[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                                      spill_loads=int(m.group(3)))
            continue
        m = _USED_RE.search(line)
        if m:
            owner = entry if entry is not None else current
            if owner is None:
                continue
            info = functions.setdefault(owner, {})
            info["registers"] = int(m.group(1))
            smem = _SMEM_RE.search(line)
            info["static_smem"] = int(smem.group(1)) if smem else 0
            bars = _BARRIERS_RE.search(line)
            info["barriers"] = int(bars.group(1)) if bars else 0
    main = functions.get(entry, {}) if entry is not None else {}
    return {
        "entry": entry,
        "registers": main.get("registers"),
        "spill_stores": sum(f.get("spill_stores", 0) for f in functions.values()),
        "spill_loads": sum(f.get("spill_loads", 0) for f in functions.values()),
        "stack": main.get("stack", 0),
        "static_smem": main.get("static_smem", 0),
        "barriers": main.get("barriers", 0),
        "functions": functions,
        "warnings": warnings,
    }


_SASS_RE = re.compile(r"^\s*/\*[0-9a-fA-F]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)[.\s;]")


def count_sass(text: str) -> dict:
    """Counts in SASS text (nvdisasm or cuobjdump -sass): {"instructions", "HGMMA", "HMMA", "local": LDL + STL,
    "opcodes": {opcode: count}} with opcodes without their modifiers (HGMMA.64x64x16.F32 counts as HGMMA)."""
    ops = Counter()
    for line in text.splitlines():
        m = _SASS_RE.match(line)
        if m:
            ops[m.group(1)] += 1
    return {"instructions": sum(ops.values()), "HGMMA": ops.get("HGMMA", 0), "HMMA": ops.get("HMMA", 0),
            "local": ops.get("LDL", 0) + ops.get("STL", 0), "opcodes": dict(sorted(ops.items()))}


_RESOURCE_RE = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def parse_resource_usage(text: str) -> dict:
    """`cuobjdump --dump-resource-usage` output -> {function: {"registers", "stack", "shared", "local"}}."""
    return {m.group(1): {"registers": int(m.group(2)), "stack": int(m.group(3)), "shared": int(m.group(4)),
                         "local": int(m.group(5))} for m in _RESOURCE_RE.finditer(text)}


def parse_tool_version(text: str) -> str:
    """`ptxas --version` (or nvdisasm, cuobjdump) output -> "13.4.59"; the last line when the format is unknown."""
    m = _VERSION_RE.search(text)
    if m:
        return m.group(1)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown"


# ------------------------------------------------------------------------------------------------ tools


def _tool(name: str) -> str:
    from triton import knobs

    attr = name.replace("-", "_")
    tool = getattr(knobs.nvidia, attr).path if hasattr(knobs, "nvidia") else None
    if not tool:
        raise AOTError(f"Triton's {name} was not found")
    return tool


def ptxas_for(capability: int) -> str:
    """The ptxas Triton itself runs for this capability (Triton 3.9 takes its newer ptxas from sm_90 on)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(capability).path
    except ImportError:
        return _tool("ptxas")


def tool_versions(archs=tuple(ARCHS)) -> dict:
    out = {}
    for arch in archs:
        path = ptxas_for(ARCHS[arch])
        text = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        out[arch] = f"{parse_tool_version(text)} ({Path(path).name})"
    for name in ("nvdisasm",):
        text = subprocess.run([_tool(name), "--version"], capture_output=True, text=True).stdout
        out[name] = parse_tool_version(text)
    return out


def _ptxas_flag_sets(metadata) -> list[list[str]]:
    """The flags Triton passes to ptxas (before --gpu-name), most likely first: with and without
    --regAllocOptLevel=2 (Triton 3.9 adds it, 3.6 does not)."""
    from triton import knobs

    if getattr(knobs.compilation, "disable_line_info", False):
        debug = ["-lineinfo", "-suppress-debug-info"]
    elif getattr(knobs.nvidia, "disable_ptxas_opt", False):
        debug = ["-g"]
    else:
        debug = ["-lineinfo"]
    fmad = [] if getattr(metadata, "enable_fp_fusion", True) else ["--fmad=false"]
    no_opt = ["--opt-level", "0"] if getattr(knobs.nvidia, "disable_ptxas_opt", False) else []
    extra = str(getattr(metadata, "ptx_options", None) or "").split()
    base = [*debug, *fmad, "-v", *no_opt]
    with_ra = [*base, "--regAllocOptLevel=2", *extra]
    without = [*base, *extra]
    try:
        import inspect

        from triton.backends.nvidia.compiler import CUDABackend

        first_with = "regAllocOptLevel" in inspect.getsource(CUDABackend.make_cubin)
    except Exception:  # noqa: BLE001 - source unavailable: try both
        first_with = True
    return [with_ra, without] if first_with else [without, with_ra]


def _run_ptxas(ptx: str, cubin: bytes, arch: str, metadata, workdir: Path) -> tuple[str, bool]:
    """Run ptxas -v on Triton's PTX; returns (log, whether the cubin equals Triton's byte for byte)."""
    ptxas = ptxas_for(ARCHS[arch])
    src = workdir / "kernel.ptx"
    src.write_text(ptx)
    first_log = None
    for flags in _ptxas_flag_sets(metadata):
        out = workdir / "kernel.cubin"
        res = subprocess.run([ptxas, *flags, f"--gpu-name={arch}", str(src), "-o", str(out)], capture_output=True,
                             text=True)
        if res.returncode != 0:
            raise AOTError(f"ptxas failed ({res.returncode}): {(res.stderr or res.stdout).strip().splitlines()[-1:]}")
        log = res.stderr + res.stdout
        if out.read_bytes() == cubin:
            return log, True
        if first_log is None:
            first_log = log
    return first_log, False


def disassemble(cubin: bytes, workdir: Path) -> str:
    path = workdir / "sass.cubin"
    path.write_bytes(cubin)
    res = subprocess.run([_tool("nvdisasm"), "-c", "-ndf", str(path)], capture_output=True, text=True)
    if res.returncode != 0 or not res.stdout.strip():
        res = subprocess.run([_tool("nvdisasm"), str(path)], capture_output=True, text=True)
    if res.returncode == 0 and res.stdout.strip():
        return res.stdout
    res = subprocess.run([_tool("cuobjdump"), "-sass", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        raise AOTError(f"neither nvdisasm nor cuobjdump could disassemble the cubin: {res.stderr.strip()[:200]}")
    return res.stdout


def resource_usage(cubin: bytes, workdir: Path) -> dict:
    path = workdir / "usage.cubin"
    path.write_bytes(cubin)
    res = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", str(path)], capture_output=True, text=True)
    return parse_resource_usage(res.stdout)


# ------------------------------------------------------------------------------------------------ compile


def _require_jit(kernel, name: str):
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - layout of other Triton releases
        InterpretedFunction = ()
    if (InterpretedFunction and isinstance(kernel, InterpretedFunction)) or type(kernel).__name__ == \
            "InterpretedFunction":
        raise AOTError(f"spec {name!r}: the kernel is an InterpretedFunction (TRITON_INTERPRET is set); ahead-of-time "
                       "compilation needs TRITON_INTERPRET unset before triton is imported")
    if not hasattr(kernel, "arg_names") or not hasattr(kernel, "cache_key"):
        raise AOTError(f"spec {name!r}: 'kernel' is not a @triton.jit function ({type(kernel).__name__})")


def check_spec(spec) -> str | None:
    """None when the spec has every key with a plausible type, else a one-line reason."""
    if not isinstance(spec, dict):
        return f"a spec must be a dict, got {type(spec).__name__}"
    missing = [k for k in _SPEC_KEYS if k not in spec]
    if missing:
        return f"spec {spec.get('name', '?')!r} lacks {', '.join(missing)}"
    if not isinstance(spec["name"], str) or not spec["name"]:
        return "spec name must be a non-empty string"
    if not isinstance(spec["signature"], dict) or not isinstance(spec["constexprs"], dict):
        return f"spec {spec['name']!r}: signature and constexprs must be dicts"
    for key in ("num_warps", "num_stages"):
        if not isinstance(spec[key], int) or spec[key] < 1:
            return f"spec {spec['name']!r}: {key} must be a positive integer, got {spec[key]!r}"
    return None


def _signature_and_attrs(kernel, spec: dict) -> tuple[dict, dict, list[str]]:
    """Full signature in argument order (constexprs as "constexpr"), Triton's attrs (divisibility by 16), and the
    names those attrs cover."""
    name = spec["name"]
    sig_in, consts = spec["signature"], spec["constexprs"]
    args = list(kernel.arg_names)
    unknown = sorted(set(sig_in) - set(args)) + sorted(set(consts) - set(args))
    if unknown:
        raise AOTError(f"spec {name!r}: {', '.join(unknown)} not arguments of {kernel.__name__}")
    missing = [a for a in args if a not in consts and (a not in sig_in or sig_in[a] == "constexpr")]
    if missing:
        raise AOTError(f"spec {name!r}: no type (or constexpr value) for {', '.join(missing)}")
    signature = {a: ("constexpr" if a in consts else sig_in[a]) for a in args}
    div = spec.get("divisible_by_16")
    if div is None:
        div = [a for a in args if a not in consts and str(signature[a]).startswith("*")]
    bad = [a for a in div if a not in signature or a in consts]
    if bad:
        raise AOTError(f"spec {name!r}: divisible_by_16 names {', '.join(bad)}, not runtime arguments")
    attrs = {(args.index(a),): [["tt.divisibility", 16]] for a in div}
    return signature, attrs, list(div)


def _compile_capturing_ptxas_log(triton, src, target, options):
    """triton.compile, with Triton's own `ptxas -v` log when it runs ptxas (not on a cache hit): Triton prints the
    log on stdout when knobs.nvidia.dump_ptxas_log is set. Returns (compiled, log or None)."""
    import contextlib
    import io

    from triton import knobs

    captured = io.StringIO()
    scope = getattr(knobs.nvidia, "scope", None)
    if scope is None or not hasattr(knobs.nvidia, "dump_ptxas_log"):
        return triton.compile(src, target=target, options=options), None
    with scope(), contextlib.redirect_stdout(captured):
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(src, target=target, options=options)
    text = captured.getvalue()
    return compiled, (text if _ENTRY_RE.search(text) else None)


def compile_spec(spec: dict, arch: str) -> dict:
    """Compile one spec for arch ("sm_90a" or "sm_89") and measure it. Raises AOTError for a spec that cannot be
    compiled as given, and whatever Triton raises for a kernel that does not compile."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if arch not in ARCHS:
        raise AOTError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")
    problem = check_spec(spec)
    if problem:
        raise AOTError(problem)
    kernel = spec["kernel"]
    _require_jit(kernel, spec["name"])
    signature, attrs, divisible = _signature_and_attrs(kernel, spec)
    t0 = time.perf_counter()
    src = ASTSource(fn=kernel, signature=signature, constexprs=dict(spec["constexprs"]), attrs=attrs)
    options = {"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]}
    compiled, triton_log = _compile_capturing_ptxas_log(triton, src, GPUTarget("cuda", ARCHS[arch], 32), options)
    compile_s = time.perf_counter() - t0
    ptx, cubin, md = compiled.asm["ptx"], compiled.asm["cubin"], compiled.metadata
    with tempfile.TemporaryDirectory(prefix="vasa-aot-") as tmp:
        work = Path(tmp)
        if triton_log is not None:  # Triton built it now: its own ptxas log describes this very cubin
            log, identical, source = triton_log, True, "triton"
        else:  # a cached build: run ptxas again on its PTX
            log, identical = _run_ptxas(ptx, cubin, arch, md, work)
            source = "re-run"
        usage = parse_ptxas_log(log)
        notes = list(usage["warnings"])
        if not identical:
            # Registers and stack from the cubin Triton built; spills from the re-run (ptxas -v is the only source).
            actual = resource_usage(cubin, work).get(md.name) or {}
            if actual:
                usage["registers"], usage["stack"] = actual["registers"], actual["stack"]
            notes.append("ptxas re-run differs from Triton's cubin (its line info records the kernel's source file, "
                         "edited since that build, or other flags); registers and stack read from Triton's cubin")
        sass = count_sass(disassemble(cubin, work))
    return {
        "kernel": md.name, "arch": arch, "num_warps": spec["num_warps"], "num_stages": spec["num_stages"],
        "registers": usage["registers"], "spill_stores": usage["spill_stores"], "spill_loads": usage["spill_loads"],
        "stack": usage["stack"], "static_smem": usage["static_smem"], "dynamic_smem": int(md.shared or 0),
        "barriers": usage["barriers"], "hgmma": sass["HGMMA"], "hmma": sass["HMMA"], "local_ld_st": sass["local"],
        "sass_instructions": sass["instructions"], "ptxas_log": source, "ptxas_matches_triton": identical,
        "divisible_by_16": divisible, "compile_s": round(compile_s, 3), "notes": notes,
    }


def error_line(exc: BaseException) -> str:
    """One line for a compile error: Triton's CompilationError puts the source excerpt first and the reason last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if type(exc).__name__ == "CompilationError" and len(lines) > 1:
        text = lines[-1]
        where = lines[0].rstrip(":")
        return f"CompilationError {where}: {text}"[:300]
    return f"{type(exc).__name__}: {lines[0]}"[:300]


# ------------------------------------------------------------------------------------------------ discovery
# (runs in a compiler process)


def _uses_half(spec: dict) -> bool:
    return any(str(t) in ("*fp16", "*bf16") for t in spec.get("signature", {}).values())


class _Catalog:
    """The kernel modules of this process, their registered operations and specs."""

    def __init__(self, extra_modules=()):
        self.modules: dict[str, dict] = {}
        self.specs: dict[tuple[str, str], dict] = {}
        self.import_error: str | None = None
        self._load(list(extra_modules))

    def _load(self, extra_modules):
        from vasa_engine import ops

        names: list[tuple[str, str, str]] = []  # (module name, label, path)
        try:
            import vasa_engine.kernels as pkg

            for short in pkg.KERNEL_MODULES:
                mod = sys.modules[f"{pkg.__name__}.{short}"]
                names.append((mod.__name__, short, getattr(mod, "__file__", "") or ""))
        except Exception as exc:  # noqa: BLE001 - a broken kernel module: report, keep gating the extras
            self.import_error = _import_failure(exc)
        for i, path in enumerate(extra_modules):
            path = str(Path(path).resolve())
            stem = re.sub(r"\W", "_", Path(path).stem)
            modname = f"vasa_aot_extra_{i}_{stem}"
            label = f"{Path(path).name} (extra)"
            try:
                spec = importlib.util.spec_from_file_location(modname, path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {path}")
                mod = importlib.util.module_from_spec(spec)
                sys.modules[modname] = mod
                spec.loader.exec_module(mod)
                names.append((modname, label, path))
            except Exception as exc:  # noqa: BLE001
                self.modules[modname] = dict(module=modname, label=label, path=path, ops=[], specs=[],
                                             declares_specs=False, error=f"import failed: {error_line(exc)}")
        registry = dict(ops._KERNELS)  # already loaded; registered_kernels() would re-import a broken package
        by_module: dict[str, list[str]] = {}
        for op, fn in registry.items():
            by_module.setdefault(getattr(fn, "__module__", "?"), []).append(op)
        self.unowned_ops = {op: getattr(fn, "__module__", "?") for op, fn in registry.items()
                            if getattr(fn, "__module__", "?") not in {n for n, _, _ in names}}
        for modname, label, path in names:
            mod = sys.modules[modname]
            entry = dict(module=modname, label=label, path=path, ops=sorted(by_module.get(modname, [])), specs=[],
                         declares_specs=callable(getattr(mod, "aot_specs", None)), error=None)
            self.modules[modname] = entry
            if not entry["declares_specs"]:
                continue
            try:
                specs = list(mod.aot_specs())
            except Exception as exc:  # noqa: BLE001
                entry["error"] = f"aot_specs() raised {error_line(exc)}"
                continue
            seen = set()
            for spec in specs:
                problem = check_spec(spec)
                name = spec.get("name", "?") if isinstance(spec, dict) else "?"
                if problem is None and name in seen:
                    problem = f"spec name {name!r} declared twice"
                seen.add(name)
                expect = bool(spec.get("expect_hgmma")) if isinstance(spec, dict) else False
                if problem is None and _ATTENTION_OP in entry["ops"] and _uses_half(spec):
                    expect = True
                entry["specs"].append(dict(
                    name=str(name), shapes=str(spec.get("shapes", "")) if isinstance(spec, dict) else "",
                    num_warps=spec.get("num_warps") if isinstance(spec, dict) else None,
                    num_stages=spec.get("num_stages") if isinstance(spec, dict) else None,
                    expect_hgmma=expect, error=problem))
                if problem is None:
                    self.specs[(modname, name)] = spec

    def describe(self) -> dict:
        return {"modules": list(self.modules.values()), "unowned_ops": self.unowned_ops,
                "import_error": self.import_error}


def _import_failure(exc: BaseException) -> str:
    """One line naming the kernel file whose import raised, when the traceback shows it."""
    where = None
    kernels_dir = str(Path(__file__).resolve().parent)
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.startswith(kernels_dir) and not frame.filename.endswith("__init__.py"):
            where = f"{Path(frame.filename).name}:{frame.lineno}"
    return f"importing vasa_engine.kernels failed{f' in {where}' if where else ''}: {error_line(exc)}"


def worker_main(argv: list[str]) -> int:
    """A compiler process: requests on stdin, one JSON line each; one JSON line back per request on the original
    stdout (anything else printed goes to stderr)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    extra = []
    it = iter(argv)
    for arg in it:
        if arg == "--extra-module":
            extra.append(next(it))
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print(json.dumps({"fatal": "TRITON_INTERPRET is set in the compiler process"}), file=out)
        return 1
    import warnings

    warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
    catalog = None
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            if catalog is None:
                catalog = _Catalog(extra)
            if req["cmd"] == "discover":
                import triton

                archs = req.get("archs") or list(ARCHS)
                reply = {"triton": str(triton.__version__), "tools": tool_versions(archs), **catalog.describe()}
            elif req["cmd"] == "compile":
                spec = catalog.specs[(req["module"], req["spec"])]
                reply = {"row": compile_spec(spec, req["arch"])}
            else:
                reply = {"error": f"unknown request {req['cmd']!r}"}
        except Exception as exc:  # noqa: BLE001 - reported per task
            reply = {"error": error_line(exc), "detail": traceback.format_exc()[-4000:]}
        print(json.dumps(reply), file=out)
    return 0


# ------------------------------------------------------------------------------------------------ the gate
# (runs in the calling process: never imports triton or the kernel package)

_BOOT = ("import importlib.util, sys\n"
         "s = importlib.util.spec_from_file_location('_vasa_kernel_aot', sys.argv[1])\n"
         "m = importlib.util.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m)\n"
         "sys.exit(m.worker_main(sys.argv[2:]))\n")


def compiler_env() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return env


class WorkerDied(RuntimeError):
    pass


class _Worker:
    def __init__(self, extra_modules):
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(Path(__file__).resolve()),
                                      *[a for p in extra_modules for a in ("--extra-module", str(p))]],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env=compiler_env(), bufsize=1)

    def request(self, req: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            raise WorkerDied(self.stderr_tail())
        reply = json.loads(line)
        if "fatal" in reply:
            raise WorkerDied(reply["fatal"])
        return reply

    def stderr_tail(self) -> str:
        self.proc.poll()
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().splitlines() if line.strip()]
        code = self.proc.returncode
        last = lines[-1] if lines else "no output"
        return f"compiler process exited ({code}): {last}"[:300]

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _verdict(status, module, reason, spec=None, arch=None) -> dict:
    return {"status": status, "module": module, "spec": spec, "arch": arch, "reason": reason}


def _checks(row: dict, expect_hgmma: bool) -> list[str]:
    """The reasons a compiled spec fails, empty when it passes."""
    reasons = []
    arch = row["arch"]
    if row["spill_stores"] or row["spill_loads"]:
        reasons.append(f"spills: {row['spill_stores']} bytes stored, {row['spill_loads']} bytes loaded "
                       f"({row['registers']} registers)")
    if expect_hgmma and arch == "sm_90a" and not row["hgmma"]:
        reasons.append("no HGMMA (warpgroup MMA) in the sm_90a SASS")
    smem = row["dynamic_smem"] + row["static_smem"]
    if smem > MAX_SHARED[arch]:
        reasons.append(f"needs {smem} bytes of shared memory, {arch} allows {MAX_SHARED[arch]} per block")
    regs = row["registers"] or 0
    threads = row["num_warps"] * 32
    if -(-regs // 8) * 8 * threads > REGISTERS_PER_SM:
        reasons.append(f"{regs} registers x {threads} threads exceed the {REGISTERS_PER_SM} registers of an SM")
    return reasons


def run_gate(archs=tuple(ARCHS), only=None, extra_modules=(), jobs: int = 2, progress=None) -> dict:
    """Discover, compile every spec for every arch, check. Returns the report (see the command for its use):
    {"triton", "tools", "archs", "ops", "modules", "rows", "verdicts", "passed", "elapsed_s", "jobs"}."""
    t0 = time.perf_counter()
    archs = list(dict.fromkeys(archs))
    only = [only] if isinstance(only, str) else (list(only) if only else None)
    extra_modules = [str(Path(p).resolve()) for p in extra_modules]
    jobs = max(1, min(2, int(jobs)))
    workers = [_Worker(extra_modules) for _ in range(jobs)]  # start together: the imports overlap
    report = {"triton": None, "tools": {}, "archs": archs, "only": only, "ops": {}, "modules": [], "rows": [],
              "verdicts": [], "passed": False, "jobs": jobs}
    try:
        try:
            disc = workers[0].request({"cmd": "discover", "archs": archs})
        except WorkerDied as exc:
            report["verdicts"].append(_verdict("FAIL", "vasa_engine.kernels", str(exc)))
            return _finish(report, t0)
        if "error" in disc:
            report["verdicts"].append(_verdict("FAIL", "vasa_engine.kernels", f"discovery failed: {disc['error']}"))
            return _finish(report, t0)
        report["triton"], report["tools"] = disc["triton"], disc["tools"]
        if disc.get("import_error"):
            report["verdicts"].append(_verdict("FAIL", "vasa_engine.kernels", disc["import_error"]))
        for op, owner in sorted(disc.get("unowned_ops", {}).items()):
            report["ops"][op] = owner
        modules = disc["modules"]
        selected = _select(modules, only)
        tasks = []
        for m in modules:
            for op in m["ops"]:
                report["ops"][op] = m["label"]
            if m["module"] not in selected:
                continue
            report["modules"].append({k: m[k] for k in ("module", "label", "path", "ops", "declares_specs", "error")}
                                     | {"specs": [s["name"] for s in m["specs"]]})
            if m["error"]:
                report["verdicts"].append(_verdict("FAIL", m["label"], m["error"]))
            elif m["ops"] and not m["declares_specs"]:
                report["verdicts"].append(_verdict("FAIL", m["label"], "no AOT specs declared (aot_specs() missing)"))
            elif m["ops"] and m["declares_specs"] and not m["specs"]:
                report["verdicts"].append(_verdict("FAIL", m["label"], "aot_specs() returned no specs"))
            for s in m["specs"]:
                if selected[m["module"]] is not None and s["name"] not in selected[m["module"]]:
                    continue
                if s["error"]:
                    report["verdicts"].append(_verdict("FAIL", m["label"], f"bad spec: {s['error']}", s["name"]))
                    continue
                for arch in archs:
                    tasks.append(dict(module=m["module"], label=m["label"], ops=m["ops"], spec=s, arch=arch))
        report["rows"] = _compile_all(workers, tasks, extra_modules, progress)
        for row in report["rows"]:
            if row.get("error"):
                report["verdicts"].append(_verdict("FAIL", row["label"], f"compile error: {row['error']}",
                                                   row["spec"], row["arch"]))
                continue
            for reason in _checks(row, row["expect_hgmma"]):
                report["verdicts"].append(_verdict("FAIL", row["label"], reason, row["spec"], row["arch"]))
        return _finish(report, t0)
    finally:
        for w in workers:
            w.close()


def _select(modules: list[dict], only) -> dict:
    """module -> None (all its specs) or the set of spec names the --only names select (a name: a module, its file,
    an op or a spec). Raises LookupError for a name that matches nothing."""
    if not only:
        return {m["module"]: None for m in modules}
    out: dict[str, set | None] = {}
    for name in only:
        hit = False
        for m in modules:
            names = {m["label"], m["module"], m["module"].rsplit(".", 1)[-1]}
            if m.get("path"):
                names |= {Path(m["path"]).name, Path(m["path"]).stem}
            if name in names or name in m["ops"]:
                out[m["module"]] = None
                hit = True
            elif any(s["name"] == name for s in m["specs"]):
                if m["module"] not in out or out[m["module"]] is not None:
                    out.setdefault(m["module"], set()).add(name)
                hit = True
        if not hit:
            known = sorted({m["label"] for m in modules} | {op for m in modules for op in m["ops"]})
            raise LookupError(f"--only {name!r} names no kernel module, op or spec (modules and ops: "
                              f"{', '.join(known) or 'none'})")
    return out


def _compile_all(workers, tasks, extra_modules, progress) -> list[dict]:
    todo: queue.Queue = queue.Queue()
    for i, task in enumerate(tasks):
        todo.put((i, task))
    rows: list[dict | None] = [None] * len(tasks)
    lock = threading.Lock()
    done = [0]

    def run(slot):
        while True:
            try:
                i, task = todo.get_nowait()
            except queue.Empty:
                return
            base = dict(module=task["module"], label=task["label"], ops=task["ops"], spec=task["spec"]["name"],
                        shapes=task["spec"]["shapes"], arch=task["arch"], expect_hgmma=task["spec"]["expect_hgmma"]
                        and task["arch"] == "sm_90a", num_warps=task["spec"]["num_warps"],
                        num_stages=task["spec"]["num_stages"])
            req = {"cmd": "compile", "module": task["module"], "spec": task["spec"]["name"], "arch": task["arch"]}
            try:
                reply = workers[slot].request(req)
            except WorkerDied as exc:
                reply = {"error": str(exc)}
                workers[slot].close()
                workers[slot] = _Worker(extra_modules)  # the next task gets a fresh process
            row = {**base, **reply.get("row", {})}
            if "error" in reply:
                row["error"] = reply["error"]
                row["error_detail"] = reply.get("detail")
            rows[i] = row
            with lock:
                done[0] += 1
                if progress is not None:
                    progress(done[0], len(tasks), row)

    threads = [threading.Thread(target=run, args=(slot,), daemon=True) for slot in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in rows if r is not None]


def _finish(report: dict, t0: float) -> dict:
    report["passed"] = not any(v["status"] == "FAIL" for v in report["verdicts"])
    report["elapsed_s"] = round(time.perf_counter() - t0, 2)
    return report
