"""Running one step's command: its own process group (so a time limit or an interrupt ends its children too, pytest
workers included), its output written straight into a log file (so a run killed at any point leaves the log of
what it did), and a hard time limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .runner import StepFailed, StepTimedOut, log_tail

REPO = Path(__file__).resolve().parents[2]


def gpu_env(**extra: str) -> dict[str, str]:
    """The environment of a step's command: Triton compiling for the GPU (never its interpreter), unbuffered output,
    the repository importable whether or not the package is installed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_logged(cmd: list[str], log: Path, limit_s: float, env: dict[str, str] | None = None) -> int:
    """Run `cmd` in the repository with its output in `log`, for at most `limit_s` seconds. Returns the exit code;
    raises StepTimedOut (the process group killed) when the limit is reached. An interrupt (Ctrl-C, SIGTERM turned
    into KeyboardInterrupt by the suite) kills the process group too before it propagates."""
    with open(log, "ab", buffering=0) as sink:
        sink.write(f"$ {' '.join(cmd)}\n".encode())
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env if env is not None else gpu_env(), start_new_session=True)
        try:
            return proc.wait(timeout=max(1.0, limit_s))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            sink.write(f"\n[killed: the step's limit of {limit_s:.0f} s was reached]\n".encode())
            raise StepTimedOut(f"still running after its limit of {limit_s:.0f} s: stopped") from None
        except BaseException:
            _kill_group(proc)
            raise


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def conclude(details: dict, problems: list[str], code: int, what: str, log: Path, note: str) -> dict:
    """A step's end: StepFailed with the first of `problems` (with the details), else when `code` is not 0; else the
    details, with `note` for the summary."""
    if problems:
        raise StepFailed(problems[0], details)
    check_exit(code, what, log)
    details["note"] = note
    return details


def check_exit(code: int, what: str, log: Path) -> None:
    """StepFailed naming the last line of the log when `code` is not 0."""
    if code != 0:
        last = next((line for line in reversed(log_tail(log, 30)) if line.strip()), "no output")
        raise StepFailed(f"{what} exited with code {code}: {last.strip()[:300]}")
