"""The suite's step runner: each step within its own time limit inside the suite's budget, its result written to its
own file the moment it ends, and the running summary (`suite.json`, `suite.md`) rewritten before and after every
step, each write atomic. A run stopped at any point (a step's limit, Ctrl-C, SIGTERM, or SIGKILL from outside)
leaves the files of every finished step, and a summary that names the step that was running.

Step statuses: "passed"; "failed" (the step raised StepFailed, or anything else: a broken step is a finding);
"timed out" (StepTimedOut: its own limit was reached); "interrupted" (Ctrl-C or SIGTERM: the suite stops there);
"not run" (the suite's budget was spent before it). The suite passes only when every step passed.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

MIN_STEP_S = 10.0  # no step is started with less of the suite's budget left than this


class StepFailed(Exception):
    """A step's finding: the message is one line; `details` go into the step's file."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


class StepTimedOut(StepFailed):
    """The step reached its own time limit and was stopped."""


@dataclass
class StepContext:
    out: Path  # the suite's output folder
    log: Path  # this step's log file
    limit_s: float  # this step's time limit, already cut to what is left of the budget
    name: str


@dataclass
class Step:
    name: str
    limit_s: float
    run: Callable[[StepContext], dict]  # returns the step's details (a "note" key goes into the summary table)
    describe: Callable[[dict], str] | None = None  # the details as markdown, for suite.md


@dataclass
class Suite:
    """One run: where it writes, its header (device, versions, date, commit, mode), its budget and its steps."""

    out: Path
    header: dict
    budget_s: float
    steps: list[Step]
    clock: Callable[[], float] = time.monotonic
    results: list[dict] = field(default_factory=list)
    status: str = "running"

    def __post_init__(self):
        self.start = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def step_file(self, index: int, name: str, suffix: str) -> Path:
        return self.out / f"{index:02d}-{name}{suffix}"

    def run(self) -> bool:
        """Every step in order; returns whether all passed. KeyboardInterrupt (and SIGTERM, turned into one while
        the suite runs in the main thread) stops the suite after recording the running step as interrupted."""
        previous = _catch_sigterm()
        try:
            for index, step in enumerate(self.steps, start=1):
                result = self._run_step(index, step)
                if result["status"] == "interrupted":
                    self.status = "interrupted"
                    self._write()
                    raise KeyboardInterrupt
            self.status = "passed" if all(r["status"] == "passed" for r in self.results) else "failed"
            self._write()
            return self.status == "passed"
        finally:
            _restore_sigterm(previous)

    def _run_step(self, index: int, step: Step) -> dict:
        log = self.step_file(index, step.name, ".log")
        left = self.budget_s - self.elapsed()
        limit = min(step.limit_s, left)
        result = {"step": step.name, "index": index, "status": "running", "limit_s": round(limit, 1),
                  "started_s": round(self.elapsed(), 1), "log": log.name}
        self.results.append(result)
        if left < MIN_STEP_S:
            result.update(status="not run", seconds=0.0, log=None,
                          message=f"the suite's budget of {self.budget_s:.0f} s was spent")
            self._finish(index, step, result)
            return result
        self._write()  # the summary names the running step, should the run be killed now
        print(f"== {step.name} (limit {limit:.0f} s)", flush=True)
        t0 = self.clock()
        try:
            details = step.run(StepContext(self.out, log, limit, step.name)) or {}
            result.update(status="passed", message=str(details.pop("note", "")), details=details)
        except StepTimedOut as exc:
            result.update(status="timed out", message=str(exc), details=exc.details)
        except StepFailed as exc:
            result.update(status="failed", message=str(exc), details=exc.details)
        except KeyboardInterrupt:
            result.update(status="interrupted", message="interrupted (Ctrl-C or SIGTERM)")
        except Exception as exc:  # noqa: BLE001 - a step that breaks is a finding: record it, go on
            text = str(exc).strip().splitlines()
            result.update(status="failed", message=f"{type(exc).__name__}: {text[0] if text else ''}"[:300])
        result["seconds"] = round(self.clock() - t0, 1)
        if result["status"] != "passed" and log.is_file():
            result["log_tail"] = log_tail(log)
        if not log.is_file():
            result["log"] = None
        self._finish(index, step, result)
        print(f"== {step.name}: {result['status']} in {result['seconds']} s"
              + (f": {result['message']}" if result.get("message") else ""), flush=True)
        return result

    def _finish(self, index: int, step: Step, result: dict) -> None:
        from ..bench import to_json, write_atomic

        write_atomic(self.step_file(index, step.name, ".json"), to_json({"suite": self.header, **result}))
        self._write()

    def _write(self) -> None:
        from ..bench import to_json, write_atomic

        from .summary import suite_markdown

        state = {"suite": self.header, "status": self.status, "seconds": round(self.elapsed(), 1),
                 "budget_s": self.budget_s, "steps": self.results}
        write_atomic(self.out / "suite.json", to_json(state))
        describe = {s.name: s.describe for s in self.steps if s.describe}
        write_atomic(self.out / "suite.md", suite_markdown(state, describe))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _catch_sigterm():
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def header(mode: str, budget_s: float, commit: str, device: dict) -> dict:
    """The suite's header: mode, budget, date, commit and the device facts given (name, capability, versions)."""
    return {"mode": mode, "budget_s": budget_s, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": commit or "unknown", **device}


def log_tail(log: Path, lines: int = 60) -> list[str]:
    """The last `lines` lines of a log (empty when there is none)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def read_suite(out: Path) -> dict:
    return json.loads((out / "suite.json").read_text())
