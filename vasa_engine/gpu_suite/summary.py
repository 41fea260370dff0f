"""The suite's running summary as markdown: the header, one row per step (result, seconds, limit, note), then each
finished step's details as its step describes them."""

from __future__ import annotations

from typing import Callable

STATUS_WORDS = {"passed": "ok", "failed": "FAILED", "timed out": "TIMED OUT", "interrupted": "INTERRUPTED",
                "not run": "NOT RUN", "running": "running"}


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def suite_markdown(state: dict, describe: dict[str, Callable[[dict], str]]) -> str:
    h = state["suite"]
    verdict = {"running": "RUNNING", "passed": "PASSED", "failed": "FAILED", "interrupted": "INTERRUPTED"}.get(
        state["status"], state["status"])
    lines = [f"# GPU suite ({h.get('mode')}): {h.get('device', '?')} ({h.get('capability', '?')}), "
             f"{str(h.get('date', '?'))[:10]}, commit {h.get('commit', 'unknown')}", "",
             f"torch {h.get('torch')}, CUDA {h.get('cuda')}, triton {h.get('triton')}, python {h.get('python')}; "
             f"TF32 {h.get('tf32', '?')}; budget {state['budget_s']:.0f} s; {state['seconds']:.0f} s so far; "
             f"**{verdict}**", "", "| step | result | seconds | limit | notes |", "| --- | --- | --- | --- | --- |"]
    for r in state["steps"]:
        seconds = "" if r["status"] == "running" else f"{r.get('seconds', 0):.0f}"
        lines.append(f"| {r['step']} | {STATUS_WORDS.get(r['status'], r['status'])} | {seconds} | "
                     f"{r.get('limit_s', 0):.0f} | {_cell(r.get('message', ''))[:400]} |")
    for r in state["steps"]:
        fn = describe.get(r["step"])
        details = r.get("details")
        if fn and details:
            try:
                text = fn(details)
            except Exception as exc:  # noqa: BLE001 - the summary must always be written
                text = f"(details could not be shown: {type(exc).__name__}: {exc})"
            if text.strip():
                lines += ["", f"## {r['step']}", "", text.rstrip()]
        if r.get("log_tail") and r["status"] != "passed":
            lines += ["", f"## {r['step']}: end of {r.get('log')}", "", "```", *r["log_tail"][-25:], "```"]
    return "\n".join(lines) + "\n"
