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

`vasa_engine.kernel_shapes` holds the real shapes the specs are made for.

`run_gate(...)` runs the whole gate: compiler processes (at most two) with TRITON_INTERPRET removed from their
environment, since the interpreter replaces the jitted functions; one of them discovers the kernel modules, their
registered operations and their specs (kernels/_aot_compile.py); then every spec is compiled for every architecture
and checked: no spills, HGMMA where the spec expects it, shared memory and registers within what a block may use.

The gate's modules import triton only inside functions, and `vasa-engine kernels` imports them from the kernel
folder without importing the kernel package (`vasa_engine.commands.kernels.load_gate`), so the gate still reports
when a kernel module fails to import.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ._aot_compile import compile_spec
from ._aot_tools import ARCHS, AOTError, count_sass, parse_ptxas_log, parse_resource_usage, parse_tool_version

__all__ = ["ARCHS", "AOTError", "MAX_SHARED", "REGISTERS_PER_SM", "compile_spec", "count_sass", "parse_ptxas_log",
           "parse_resource_usage", "parse_tool_version", "run_gate"]

# Shared memory one block may use (opt-in maximum) and registers per SM, per architecture.
MAX_SHARED = {"sm_90a": 232448, "sm_89": 101376}
REGISTERS_PER_SM = 65536


# ------------------------------------------------------------------------------------------------ the gate
# (runs in the calling process: never imports triton or the kernel package)

_BOOT = ("import sys\n"
         "from vasa_engine.commands.kernels import load_gate\n"
         "sys.exit(load_gate('_aot_compile').worker_main(sys.argv[1:]))\n")


def compiler_env() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return env


class WorkerDied(RuntimeError):
    pass


class _Worker:
    def __init__(self, extra_modules):
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT,
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
