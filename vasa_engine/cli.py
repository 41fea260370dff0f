"""The `vasa-engine` command. Bad input ends with one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

from . import __version__
from .errors import VasaError

EXIT_BAD_INPUT = 2
CPU_DEMO_FRAMES = 12
GPU_DEMO_FRAMES = 100


def sample_portrait() -> Path:
    return Path(str(resources.files("vasa_engine") / "assets" / "astronaut.png"))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="engine weights (.safetensors with its .json); default: seeded random weights")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto",
                   help="auto (float16 on CUDA, float32 on CPU), float32, float16 or bfloat16 (default: auto)")
    p.add_argument("--batch-size", type=_positive_int, help="frames rendered per batch (default: 8 on CUDA, 1 on CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights when --weights is not given")


def _render_scripted(args, image) -> int:
    from .engine import Engine
    from .io.image import load_image
    from .io.video import VideoWriter
    from .motion_script import scripted_motion

    out = Path(args.output)
    writer = VideoWriter(out, fps=args.fps)  # checks the output path before any work
    pixels = load_image(image)
    with writer:
        engine = Engine(args.weights, device=args.device, dtype=args.dtype, seed=args.seed,
                        batch_size=args.batch_size)
        frames = args.frames or (GPU_DEMO_FRAMES if engine.device.type == "cuda" else CPU_DEMO_FRAMES)
        if args.frames is None and engine.device.type == "cpu":
            print(f"on the CPU this renders {CPU_DEMO_FRAMES} frames (about 10 s each at full size); "
                  "--frames sets the count", file=sys.stderr)
        t0 = time.perf_counter()
        avatar = engine.prepare(pixels)
        t_prepare = time.perf_counter() - t0
        motion = scripted_motion(avatar, frames, fps=args.fps)
        t0 = time.perf_counter()
        done = 0
        with _progress(frames) as bar:
            for batch in engine.render_batches(avatar, motion):
                writer.write(batch)
                done += len(batch)
                bar.update(len(batch))
        t_render = time.perf_counter() - t0
    print(f"rendered {done} frames ({done / args.fps:.2f} s of video at {args.fps:g} fps) to {out}")
    print(f"device: {engine.device_name}, dtype: {str(engine.dtype).replace('torch.', '')}, "
          f"batch: {engine.batch_size}, weights: {args.weights or 'seeded random'}")
    print(f"prepare: {t_prepare * 1000:.0f} ms; render: {t_render / done * 1000:.1f} ms per frame "
          f"({done / t_render:.2f} fps, encoding included)")
    return 0


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", disable=total < 8 or not sys.stderr.isatty(), leave=False)


def cmd_demo(args) -> int:
    return _render_scripted(args, sample_portrait())


def cmd_render(args) -> int:
    return _render_scripted(args, args.image)


def cmd_convert(args) -> int:
    from .convert import convert_liveportrait

    t0 = time.perf_counter()
    path = convert_liveportrait(args.source, args.output)
    print(f"wrote {path} and {path.with_suffix('.json')} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_info(args) -> int:
    import torch

    from . import native
    from .runtime import device_name, resolve_device, resolve_dtype, stage_backends

    print(f"vasa-engine {__version__}")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed (Triton kernels unavailable; the PyTorch reference runs instead)")
    ext = native.extension_info()
    if ext.get("built"):
        archs = ext.get("cuda_archs") or []
        cuda = f"CUDA kernels built for {', '.join(archs)}" if ext.get("cuda_built") else "no CUDA kernels"
        print(f"native extension: built ({cuda})")
    else:
        print(f"native extension: not built ({ext.get('reason', 'unknown reason')})")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i}: {device_name(torch.device('cuda', i))}, CUDA {torch.version.cuda}")
    else:
        print("CUDA: no device available")
    device = resolve_device("auto")
    print(f"default device: {device_name(device)}, dtype {str(resolve_dtype('auto', device)).replace('torch.', '')}")
    for stage, backend in stage_backends(device).items():
        print(f"  {stage}: {backend}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vasa-engine", description="Talking-face inference engine (LivePortrait-compatible "
                                                     "renderer).")
    parser.add_argument("--version", action="version", version=f"vasa-engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("info", help="what this install has: extension, CUDA device, Triton, backends")
    p.set_defaults(func=cmd_info)

    for name, func, help_text in (
        ("demo", cmd_demo, "render the bundled sample portrait through a scripted motion to an MP4"),
        ("render", cmd_render, "render a portrait through a scripted motion (head turn, blink, mouth) to an MP4"),
    ):
        p = sub.add_parser(name, help=help_text)
        if name == "render":
            p.add_argument("--image", required=True, help="portrait: PNG, JPEG or WebP, at least 64x64")
        p.add_argument("-o", "--output", default="demo.mp4" if name == "demo" else None, required=name != "demo",
                       help="output MP4 path" + (" (default: demo.mp4)" if name == "demo" else ""))
        p.add_argument("--frames", type=_positive_int,
                       help=f"frames to render (default: {GPU_DEMO_FRAMES} on CUDA, {CPU_DEMO_FRAMES} on the CPU)")
        p.add_argument("--fps", type=float, default=25.0, help="video frame rate (default: 25)")
        _add_engine_options(p)
        p.set_defaults(func=func)

    p = sub.add_parser("convert", help="convert LivePortrait's public checkpoints to the engine format")
    p.add_argument("source", help="folder with base_models/ and retargeting_models/ (or its parent)")
    p.add_argument("-o", "--output", required=True, help="output .safetensors path (a .json is written beside it)")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VasaError as exc:
        print(f"vasa-engine: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("vasa-engine: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
