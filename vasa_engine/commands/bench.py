"""`vasa-engine bench`: the eager reference (fp32, bf16), torch.compile and the engine, stage by stage, side by side.

Writes a JSON report and a markdown table (and a PNG of frames per second against batch size when matplotlib is
installed), then prints the table. The JSON is also written after each stage, marked `"partial": true`, so a run
that is stopped (a time limit, Ctrl-C) leaves what it measured. The measurement core is `vasa_engine.bench`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..errors import InputError

MODES = ("auto", "gpu", "cpu", "smoke")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"values must be at least 1, got {text!r}")
    return tuple(sorted(set(values)))


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def add_parser(sub) -> None:
    from ..bench import IMPL_KEYS

    p = sub.add_parser("bench", help="eager PyTorch (fp32, bf16), torch.compile and the engine, stage by stage: "
                                     "JSON + markdown table",
                       description="Measure the audio encoder (per second of audio), the motion generator (per "
                                   "window at 1, 5 and 10 steps), the renderer (per frame, batch scan), dubbing's source encoding (per frame) and end to "
                                   "end (fps) for the eager PyTorch reference in float32 and bfloat16, torch.compile "
                                   "and the engine, on the same weights, with counted FLOPs and bytes and the "
                                   "percent of the device's peak. See benches/README.md.")
    p.add_argument("--mode", choices=MODES, default="auto",
                   help="gpu: full sizes, torch.compile max-autotune; cpu: reduced sizes that finish in minutes on "
                        "2 cores, torch.compile default mode; smoke: the smallest sizes, a few repeats, compile traced "
                        "only (CI); auto (default): gpu on CUDA, cpu otherwise")
    p.add_argument("--quick", action="store_true",
                   help="a short run: fewer batch sizes and repeats, the engine's figures first")
    p.add_argument("--time-budget", type=_seconds, metavar="SECONDS",
                   help="stop starting measurements after this many seconds; the rest are reported as not measured")
    p.add_argument("--full-size", action="store_true",
                   help="full-size modules whatever the mode (slow on a CPU: about 10 s per rendered frame)")
    p.add_argument("--batches", type=_int_list, metavar="B,B,...",
                   help="renderer batch sizes to scan (default: 1,2,4,8,16,32 on gpu, 1,2,4,8 on cpu, 1,2 smoke)")
    p.add_argument("--steps", type=_int_list, metavar="S,S,...",
                   help="motion generator steps to measure, among 1,5,10 (default: all three)")
    p.add_argument("--skip", action="append", choices=sorted(IMPL_KEYS), default=[],
                   help="leave an implementation out (repeatable); its figures say so")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto",
                   help="dtype of the torch.compile and engine implementations: auto (the engine's default: "
                        "float16 on CUDA, float32 on a CPU), float32, float16 or bfloat16; the eager reference runs "
                        "float32 and bfloat16")
    p.add_argument("--weights", action="append",
                   help="engine weights (repeatable); default: seeded random weights at the mode's sizes")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    p.add_argument("--warm-compile-cache", action="store_true",
                   help="use torch inductor's persistent cache (default: a fresh temporary one, so compile times "
                        "are cold)")
    p.add_argument("--json", metavar="PATH", help="JSON report (default: benches/results/<device>-<date>.json)")
    p.add_argument("--markdown", metavar="PATH", help="markdown table (default: beside the JSON, .md)")
    p.add_argument("--plot", metavar="PATH",
                   help="PNG of renderer fps against batch size (default: fps-vs-batch-<device>.png beside the JSON; "
                        "skipped without matplotlib)")
    p.add_argument("--no-plot", action="store_true", help="do not write the plot")
    p.set_defaults(func=cmd_bench)


def _check_output(path: Path) -> Path:
    if path.is_dir():
        raise InputError(f"output path is a folder: {path}")
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    return path


def cmd_bench(args) -> int:
    from .. import bench
    from ..runtime import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    if args.dtype != "auto":
        resolve_dtype(args.dtype, device)  # a bad dtype is an error before any work
    if args.mode == "gpu" and device.type != "cuda":
        raise InputError("--mode gpu needs a CUDA device (use --mode cpu, or --full-size for full sizes on a CPU)")
    if args.steps and not set(args.steps) <= set(bench.STEPS):
        raise InputError(f"--steps must be among {', '.join(map(str, bench.STEPS))}, got "
                         f"{','.join(map(str, args.steps))}")
    mode = args.mode if args.mode != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    stem = bench.default_stem(device, mode)
    results = bench.default_results_dir()
    json_path = _check_output(Path(args.json) if args.json else results / f"{stem}.json")
    md_path = _check_output(Path(args.markdown) if args.markdown else json_path.with_suffix(".md"))
    plot_path = None
    if not args.no_plot:
        plot_name = f"fps-vs-batch-{bench.device_slug(device)}{'-smoke' if mode == 'smoke' else ''}.png"
        plot_path = _check_output(Path(args.plot) if args.plot else json_path.parent / plot_name)

    options = bench.Options(mode=mode, device=args.device, dtype=args.dtype, quick=args.quick,
                            full_size=args.full_size, batches=args.batches, steps=args.steps,
                            skip=tuple(args.skip), weights=args.weights, seed=args.seed,
                            time_budget=args.time_budget, fresh_compile_cache=not args.warm_compile_cache,
                            command=command_line(args),
                            checkpoint=lambda partial: bench.write_atomic(json_path, bench.to_json(partial)))
    report = bench.run_bench(options)
    if plot_path is not None:
        why = bench.write_plot(report, plot_path)
        report["plot"] = str(plot_path) if why is None else bench.not_measured(why)
        if why:
            print(f"plot: {why}", file=sys.stderr)
    else:
        report["plot"] = bench.not_measured("--no-plot")
    problems = bench.validate_report(report)
    if problems:  # a figure without a value or a reason is a defect of the bench itself
        print("bench report incomplete: " + "; ".join(problems[:5]), file=sys.stderr)
    bench.write_atomic(json_path, bench.to_json(report))
    markdown = bench.to_markdown(report)
    bench.write_atomic(md_path, markdown)
    print(f"wrote {json_path} and {md_path}" + (f" and {plot_path}" if isinstance(report["plot"], str) else ""),
          file=sys.stderr)
    print(markdown, end="")
    return 1 if problems else 0


def command_line(args) -> str:
    """The command that reproduces this run (the options given, in a fixed order)."""
    words = ["vasa-engine", "bench"]
    if args.mode != "auto":
        words += ["--mode", args.mode]
    for flag in ("quick", "full_size", "warm_compile_cache", "no_plot"):
        if getattr(args, flag):
            words.append("--" + flag.replace("_", "-"))
    if args.time_budget:
        words += ["--time-budget", f"{args.time_budget:g}"]
    for name in ("batches", "steps"):
        if getattr(args, name):
            words += [f"--{name}", ",".join(map(str, getattr(args, name)))]
    for impl in args.skip:
        words += ["--skip", impl]
    for name in ("device", "dtype"):
        if getattr(args, name) != "auto":
            words += [f"--{name}", getattr(args, name)]
    for w in args.weights or []:
        words += ["--weights", w]
    if args.seed:
        words += ["--seed", str(args.seed)]
    for name in ("json", "markdown", "plot"):
        if getattr(args, name):
            words += [f"--{name}", getattr(args, name)]
    return " ".join(shlex.quote(w) for w in words)
