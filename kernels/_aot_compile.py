"""What a compiler process of the compile gate runs: one spec compiled and measured, the catalog of the kernel
modules with their operations and specs, and the loop answering the gate's requests.

`compile_spec(spec, arch)` compiles one spec with `triton.compile` for a `GPUTarget` (no driver is touched), then
reads what the hardware will see: registers, spill stores and loads, stack frame and static shared memory from
`ptxas -v` (the log of Triton's own ptxas run; for a build Triton takes from its cache, its ptxas is run again on the
PTX with Triton's flags and the cubin compared byte for byte with Triton's), the dynamic shared memory Triton
allocates (`metadata.shared`), and the SASS, where HGMMA and HMMA instructions are counted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

from ._aot_tools import (ARCHS, AOTError, count_sass, disassemble, parse_ptxas_log, resource_usage, run_ptxas,
                         tool_versions)

_SPEC_KEYS = ("name", "kernel", "signature", "constexprs", "num_warps", "num_stages", "shapes")
_ATTENTION_OP = "attention"


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
    return compiled, (text if parse_ptxas_log(text)["entry"] else None)


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
            log, identical = run_ptxas(ptx, cubin, arch, md, work)
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
