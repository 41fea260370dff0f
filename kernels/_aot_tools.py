"""The tools behind the compile gate: Triton's ptxas and nvdisasm (or cuobjdump), and parsers of their output.

`parse_ptxas_log` reads registers, spills, stack frame and static shared memory from `ptxas -v`; `count_sass` counts
the SASS instructions, HGMMA (Hopper warpgroup MMA) and HMMA (Ampere/Ada tensor core MMA) among them. Triton is
imported only inside functions.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

ARCHS = {"sm_90a": 90, "sm_89": 89}


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


def run_ptxas(ptx: str, cubin: bytes, arch: str, metadata, workdir: Path) -> tuple[str, bool]:
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
