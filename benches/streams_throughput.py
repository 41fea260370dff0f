"""Aggregate throughput of N concurrent streams on one engine, both ways in one run: per-session threads launching
their own work, and the device scheduler batching every session's work (`batched=True`).

Each of the N sessions pushes its own speech as fast as the session takes it (no real-time pacing: this measures
how many frames per second the engine turns out under the load, not whether each stream keeps real time, which is
the bench's concurrent-streams figure), then flushes. The two ways alternate, `--rounds` times each, after one
warm-up round each. Printed: a markdown table with the aggregate frames per second, the worst session's p95
latency, the ratio of the two ways, and the device, dtype, sizes, steps and commit.

    python benches/streams_throughput.py --streams 8 [--seconds 2] [--rounds 2] [--size tiny|full] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

SR = 16000


def build(size: str, device: str):
    from vasa_engine import Engine
    from vasa_engine.bench.sizes import audio_config, motion_config, renderer_config

    engine = Engine(None, device=device, config=renderer_config(size), motion_config=motion_config(size),
                    audio_config=audio_config(size), seed=5)
    engine.motion_stack
    engine.scheduler.admission = False  # measured under the whole load, beyond what admission would let in
    return engine, engine.prepare(Path(__file__).resolve().parents[1] / "vasa_engine" / "assets" / "astronaut.png")


def one_round(engine, avatar, speech: list[np.ndarray], batched: bool, steps: int) -> dict:
    from vasa_engine.generation import Controls

    from vasa_engine.bench.streams import run_concurrently

    results: dict[int, tuple[int, float]] = {}

    def session(i: int) -> None:
        with engine.stream(avatar, Controls(steps=steps, seed=i), batched=batched) as s:
            frames = []
            for a in range(0, len(speech[i]), 3200):
                frames += s.push(speech[i][a : a + 3200], SR)
            frames += s.flush()
            results[i] = (len(frames), s.report().total["p95"])

    seconds = run_concurrently(len(speech), session)
    frames = sum(n for n, _ in results.values())
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds,
            "worst_p95_ms": max(p for _, p in results.values()) * 1000}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--seconds", type=float, default=2.0, help="speech per stream")
    p.add_argument("--rounds", type=int, default=2, help="measured rounds of each way")
    p.add_argument("--steps", type=int, default=5, help="sampler steps (the streaming default)")
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)

    from vasa_engine.bench.provenance import git_commit

    engine, avatar = build(args.size, args.device)
    rng = np.random.default_rng(0)
    speech = [rng.normal(0, 0.1, int(SR * args.seconds)).astype(np.float32) for _ in range(args.streams)]
    ways = {"per-session threads": False, "device scheduler": True}
    for batched in ways.values():
        one_round(engine, avatar, speech[:2], batched, args.steps)  # warm-up
    runs: dict[str, list[dict]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, batched in ways.items():
            runs[name].append(one_round(engine, avatar, speech, batched, args.steps))
    fps = {name: statistics.median(r["fps"] for r in rs) for name, rs in runs.items()}
    report = {"date": dt.date.today().isoformat(), "commit": git_commit().get("commit", "unknown"),
              "device": engine.device_name, "dtype": str(engine.dtype).replace("torch.", ""), "size": args.size,
              "streams": args.streams, "seconds_each": args.seconds, "steps": args.steps, "runs": runs,
              "median_fps": fps, "ratio": fps["device scheduler"] / fps["per-session threads"]}
    print(f"{args.streams} streams of {args.seconds:g} s, {args.size} sizes, {args.steps} steps, {report['device']}, "
          f"{report['dtype']}, commit {report['commit']}, {report['date']}\n")
    print("| way | aggregate fps (median of rounds) | worst session's p95 latency, ms (each round) |")
    print("| --- | --- | --- |")
    for name, rs in runs.items():
        p95 = ", ".join(f"{r['worst_p95_ms']:.0f}" for r in rs)
        print(f"| {name} | {fps[name]:.1f} | {p95} |")
    print(f"\ndevice scheduler / per-session threads: {report['ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
