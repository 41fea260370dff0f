"""`vasa-engine compare BASELINE.json CURRENT.json`: two bench reports side by side, as a regression gate.

Prints each figure's ratio (current / baseline) in a table; exits 1 when an engine figure is slower than its noise
allowance permits, or the current report records a correctness failure; 2 when a report cannot be read or the two
are not comparable. The rule is vasa_engine.bench.compare's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be a percentage between 0 and 1000, got {text!r}")
    return value


def add_parser(sub) -> None:
    from ..bench.compare import DEFAULT_THRESHOLD_PCT

    p = sub.add_parser("compare", help="compare two bench reports: ratios per figure; exit 1 on a regression",
                       description="Compare CURRENT with BASELINE (two `vasa-engine bench` JSON reports of the same "
                                   "device, mode and sizes). An engine figure regresses when its median and its "
                                   "fastest repeat are both slower than the baseline's by more than the threshold "
                                   "plus the 20%%-80%% spread of the two reports' repeats. Exit codes: 0 no "
                                   "regression, 1 a regression or a correctness failure in CURRENT, 2 unreadable or "
                                   "incompatible reports.")
    p.add_argument("baseline", help="baseline report (JSON), or a folder of baselines (e.g. benches/baselines): the "
                                    "one named <device>-<mode>[-quick].json for CURRENT's device and mode")
    p.add_argument("current", help="the report to check (JSON)")
    p.add_argument("--threshold", type=_percent, default=DEFAULT_THRESHOLD_PCT, metavar="PCT",
                   help=f"the slow-down always allowed, in percent, on top of the measured noise (default "
                        f"{DEFAULT_THRESHOLD_PCT:g})")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from ..bench.compare import ReportError, compare_reports, find_baseline, load_report, to_table

    try:
        current = load_report(args.current)
        baseline_path = find_baseline(args.baseline, current) if Path(args.baseline).is_dir() else args.baseline
        baseline = load_report(baseline_path)
        comparison = compare_reports(baseline, current, args.threshold)
    except ReportError as exc:
        raise InputError(str(exc)) from None
    print(f"baseline {baseline_path}, current {args.current}, threshold {args.threshold:g}% + measured spread")
    print(to_table(comparison, baseline, current), end="")
    return 0 if comparison.ok else 1
