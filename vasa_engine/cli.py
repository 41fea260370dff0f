"""The `vasa-engine` command. Bad input ends with one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

from . import __version__
from .backend import BACKENDS
from .errors import VasaError

EXIT_BAD_INPUT = 2
CPU_SCRIPTED_FRAMES = 12
GPU_SCRIPTED_FRAMES = 100
CPU_DEMO_FRAMES = 20  # about the first second: the full-size renderer takes about 10 s a frame on a CPU


def _asset(name: str) -> Path:
    return Path(str(resources.files("vasa_engine") / "assets" / name))


def sample_portrait() -> Path:
    return _asset("astronaut.png")


def sample_speech() -> Path:
    return _asset("speech.wav")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", action="append",
                   help="engine weights (.safetensors with its .json); repeat to combine files (e.g. a renderer and "
                        "a motion generator); default: seeded random weights")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto",
                   help="auto (float16 on CUDA, float32 on CPU), float32, float16 or bfloat16 (default: auto)")
    p.add_argument("--batch-size", type=positive_int, help="frames rendered per batch (default: 8 on CUDA, 1 on CPU)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random weights (where no weights are given) and of the start noise")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (Triton kernels on CUDA), reference (PyTorch everywhere) or kernels; default auto")
    add_cache_option(p)


def add_cache_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR",
                   help="weights cache whose converted weights and face models are used when no --weights is given "
                        "(default: $VASA_ENGINE_CACHE, else ~/.cache/vasa-engine; `vasa-engine download` fills it)")


def add_face_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("portrait")
    g.add_argument("--no-align", action="store_true",
                   help="centre-crop the portrait instead of detecting and aligning the face")
    g.add_argument("--face-models", metavar="DIR",
                   help="folder of the face detector and landmark models (default: the download cache's)")
    g.add_argument("--paste-back", action="store_true",
                   help="write the video at the photo's size, the animated face blended back into it")


def engine_from_args(args):
    from .engine import Engine
    from .hub import faces_folder, weights_for_engine

    weights, note = weights_for_engine(args.weights, args.cache_dir)
    if note:
        print(note, file=sys.stderr)
    face_models = getattr(args, "face_models", None) or faces_folder(args.cache_dir)
    return Engine(weights, device=args.device, dtype=args.dtype, seed=args.seed, batch_size=args.batch_size,
                  backend=args.backend, face_models=face_models)


def portrait_line(avatar) -> str:
    a = avatar.alignment
    if a is None or a.method == "center":
        return "portrait: centre-cropped (no face models: `vasa-engine download` fetches them; --no-align skips)"
    return f"portrait: face {'from the given landmarks' if a.method == 'landmarks' else 'detected'} and aligned"


def _weights_label(engine) -> str:
    if not engine.random_components:
        return ", ".join(engine.weights_paths)
    given = ", ".join(engine.weights_paths)
    return f"{given + '; ' if given else ''}seeded random for {', '.join(engine.random_components)}"


def progress_bar(total: int, unit: str = "frame"):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=total < 8 or not sys.stderr.isatty(), leave=False)


def write_frames(writer, batches, total: int, watermark=None) -> int:
    done = 0
    with progress_bar(total) as bar:
        for batch in batches:
            writer.write(watermark.apply(batch) if watermark is not None else batch)
            done += len(batch)
            bar.update(len(batch))
    return done


def device_line(engine) -> str:
    return (f"device: {engine.device_name}, dtype: {str(engine.dtype).replace('torch.', '')}, "
            f"batch: {engine.batch_size}, weights: {_weights_label(engine)}")


def _render_scripted(args, image) -> int:
    from .io.image import load_image
    from .io.video import VideoWriter
    from .motion_script import scripted_motion

    out = Path(args.output)
    writer = VideoWriter(out, fps=args.fps)  # checks the output path before any work
    pixels = load_image(image)
    with writer:
        engine = engine_from_args(args)
        frames = args.frames or (GPU_SCRIPTED_FRAMES if engine.device.type == "cuda" else CPU_SCRIPTED_FRAMES)
        if args.frames is None and engine.device.type == "cpu":
            print(f"on the CPU this renders {CPU_SCRIPTED_FRAMES} frames (about 10 s each at full size); "
                  "--frames sets the count", file=sys.stderr)
        t0 = time.perf_counter()
        avatar = engine.prepare(pixels, align=not args.no_align)
        t_prepare = time.perf_counter() - t0
        motion = scripted_motion(avatar, frames, fps=args.fps)
        t0 = time.perf_counter()
        done = write_frames(writer, engine.render_batches(avatar, motion, paste_back=args.paste_back), frames)
        t_render = time.perf_counter() - t0
    print(f"rendered {done} frames ({done / args.fps:.2f} s of video at {args.fps:g} fps) to {out}")
    print(portrait_line(avatar))
    print(device_line(engine))
    print(f"prepare: {t_prepare * 1000:.0f} ms; render: {t_render / done * 1000:.1f} ms per frame "
          f"({done / t_render:.2f} fps, encoding included)")
    return 0


def cmd_render(args) -> int:
    return _render_scripted(args, args.image)


def _controls(args):
    from .controls import Controls

    return Controls(seed=args.seed, **{name: getattr(args, name) for name in CONTROL_HELP})


def _generate(args, image, audio, cpu_frames: int | None = None) -> int:
    from .io.audio import SAMPLE_RATE, load_audio
    from .io.image import load_image
    from .io.video import VideoWriter, check_output_path
    from .io.watermark import Watermark

    out = Path(args.output)
    controls = _controls(args)
    t_start = time.perf_counter()
    check_output_path(out)  # before any work
    pixels = load_image(image)
    samples = load_audio(audio, max_seconds=args.max_audio_seconds)
    engine = engine_from_args(args)
    engine.check_controls(controls)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    avatar = engine.prepare(pixels, align=not args.no_align)
    timings["prepare portrait"] = time.perf_counter() - t0
    motion = engine.generate_motion(avatar, samples, controls, sample_rate=SAMPLE_RATE, max_seconds=None,
                                    timings=timings)
    frames = len(motion)
    limit = args.frames
    if limit is None and cpu_frames is not None and engine.device.type == "cpu":
        limit = cpu_frames
        if frames > cpu_frames:
            print(f"on the CPU the demo renders the first {cpu_frames} of {frames} frames (about 10 s each at full "
                  "size); --frames sets the count", file=sys.stderr)
    if limit is not None:
        motion = motion[:limit]
    n = len(motion)
    clip = samples[: n * 640] if n < frames else samples
    watermark = Watermark() if args.watermark else None
    t0 = time.perf_counter()
    with VideoWriter(out, audio=(clip, SAMPLE_RATE)) as writer:
        done = write_frames(writer, engine.generate_batches(avatar, motion, controls, paste_back=args.paste_back), n,
                            watermark)
    timings["renderer + encoding"] = time.perf_counter() - t0
    total = time.perf_counter() - t_start
    print(f"generated {done} frames ({done / 25:.2f} s of video at 25 fps, from {len(samples) / SAMPLE_RATE:.2f} s of "
          f"audio) to {out}")
    print(portrait_line(avatar))
    print(device_line(engine) + f", sampler: {controls.sampler}, steps: "
          f"{engine.motion_stack.generator.cfg.n_diff_steps if controls.sampler == 'ddpm' else controls.steps}")
    stages = "; ".join(f"{name}: {sec * 1000:.0f} ms" for name, sec in timings.items())
    print(f"{stages}; renderer {timings['renderer + encoding'] / done * 1000:.1f} ms per frame")
    print(f"total: {total:.1f} s, {done / total:.2f} fps end to end")
    return 0


def cmd_generate(args) -> int:
    return _generate(args, args.image, args.audio)


def cmd_demo(args) -> int:
    return _generate(args, sample_portrait(), sample_speech(), cpu_frames=CPU_DEMO_FRAMES)


def cmd_convert(args) -> int:
    from .convert import convert_joyvasa, convert_liveportrait

    t0 = time.perf_counter()
    if args.model == "liveportrait":
        path = convert_liveportrait(args.source, args.output)
    else:
        path = convert_joyvasa(args.checkpoint, args.template, args.output)
    print(f"wrote {path} and {path.with_suffix('.json')} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_info(args) -> int:
    import torch

    from . import native
    from .runtime import cuda_settings, device_name, resolve_device, resolve_dtype, stage_backends

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
    print(f"engine settings: {'; '.join(cuda_settings(device))}")
    from .faces import FaceAligner
    from .hub import cache_report_lines, faces_folder

    for line in cache_report_lines(args.cache_dir):
        print(line)
    aligner = FaceAligner.from_folder(faces_folder(args.cache_dir))
    print(f"face alignment: {aligner.fallback_reason or 'models ' + ', '.join(map(str, aligner.model_paths.values()))}")
    return 0


def float_in(low: float, high: float, low_open: bool = False, high_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above or value != value:
            raise argparse.ArgumentTypeError(f"{value:g} is outside {'(' if low_open else '['}{low:g}, {high:g}"
                                             f"{')' if high_open else ']'}")
        return value

    return parse


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


# Every Controls field the command line sets (the seed is an engine option), with its help; ranges and defaults
# come from vasa_engine.controls, so the command line and the library refuse the same values.
CONTROL_HELP = {
    "steps": "sampler steps, 1 to the model's diffusion steps (50 for JoyVASA)",
    "sampler": "dpmpp_2m (DPM-Solver++(2M)) or ddim, both few-step; ddpm: the reference's ancestral sampler, every "
               "diffusion step (ignores --steps)",
    "audio_scale": "guidance weight of the audio (1 = no guidance, JoyVASA uses 2.0 to 2.8)",
    "gaze_scale": "guidance weight of the gaze condition",
    "distance_scale": "guidance weight of the distance condition",
    "emotion_scale": "guidance weight of the emotion condition",
    "gaze": "main gaze direction (models with a gaze condition)",
    "distance": "head-to-camera distance relative to the portrait (a model condition where the model has one; "
                "otherwise applied as the head's scale)",
    "emotion": "emotion offset, comma-separated (as many values as the model's emotion size; models with an "
               "emotion condition)",
    "head_pitch": "added to the generated head pitch",
    "head_yaw": "added to the generated head yaw",
    "head_roll": "added to the generated head roll",
    "eye_openness": "fixed eye openness ratio, 0 (closed) .. 0.4 (wide open); overrides blinks",
    "lip_openness": "fixed mouth openness ratio, 0 (closed) .. about 0.8; overrides the lips",
    "smoothing": "moving-average weight of the previous frame's pose, scale and translation (0 = none; the "
                 "reference's 0.99)",
    "driving_multiplier": "scales the motion around the portrait's keypoints (the reference's 1.1)",
    "stitching": "apply the stitching MLP (off in the reference's command line)",
    "relative_motion": "the reference UI's expression-friendly relative motion: keypoints move relative to the first "
                       "frame's, scaled by the portrait's keypoint hull",
}
GENERATION_GROUP = ("steps", "sampler", "audio_scale", "gaze_scale", "distance_scale", "emotion_scale", "gaze",
                    "distance", "emotion")


def _add_control(group, name: str) -> None:
    from .controls import MAX_STEPS, RANGES, SAMPLERS, Controls

    default = Controls.field_default(name)
    flag = "--" + name.replace("_", "-")
    text = CONTROL_HELP[name]
    if isinstance(default, bool):
        group.add_argument(flag, action="store_true", help=text)
        return
    kw = {"default": default}
    if name in RANGES:
        rng = RANGES[name]
        kw["type"] = float_in(rng.low, rng.high, high_open=rng.high_open)
        text += f"; each in {rng.words()}" if name == "gaze" else f"; {rng.words()}"
        if name == "gaze":
            kw.update(nargs=2, metavar=("THETA", "PHI"))
    elif name == "steps":
        kw["type"] = positive_int
        text += f"; at most {MAX_STEPS}"
    elif name == "sampler":
        kw["choices"] = SAMPLERS
    elif name == "emotion":
        kw["type"] = _float_list
    if default is not None:
        text += f"; default {default:g}" if isinstance(default, float) else f"; default {default}"
    group.add_argument(flag, help=text, **kw)


def add_generation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("motion generation")
    for name in GENERATION_GROUP:
        _add_control(g, name)
    r = p.add_argument_group("renderer controls")
    for name in CONTROL_HELP:
        if name not in GENERATION_GROUP:
            _add_control(r, name)
    o = p.add_argument_group("output")
    o.add_argument("--frames", type=positive_int, help="render only the first N frames")
    o.add_argument("--watermark", action="store_true", help="draw a visible 'AI-generated' label on every frame")
    o.add_argument("--max-audio-seconds", type=float_in(0, 86400, low_open=True), default=600,
                   help="refuse longer audio; default 600 (10 minutes)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vasa-engine", description="Talking-face inference engine: one portrait and speech in, "
                                                     "a 512x512 video out.")
    parser.add_argument("--version", action="version", version=f"vasa-engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("info", help="what this install has: extension, CUDA device, Triton, backends, weights")
    add_cache_option(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="speech + portrait -> talking-face MP4 (audio muxed in)")
    p.add_argument("--image", required=True, help="portrait: PNG, JPEG or WebP, at least 64x64")
    p.add_argument("--audio", required=True, help="speech: WAV, FLAC, MP3, M4A/AAC or OGG, any rate and channels")
    p.add_argument("-o", "--output", required=True, help="output MP4 path")
    add_generation_options(p)
    add_face_options(p)
    add_engine_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="generate on the bundled portrait and speech (the first second on a CPU)")
    p.add_argument("-o", "--output", default="demo.mp4", help="output MP4 path (default: demo.mp4)")
    add_generation_options(p)
    add_face_options(p)
    add_engine_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("render", help="render a portrait through a scripted motion (head turn, blink, mouth)")
    p.add_argument("--image", required=True, help="portrait: PNG, JPEG or WebP, at least 64x64")
    p.add_argument("-o", "--output", required=True, help="output MP4 path")
    p.add_argument("--frames", type=positive_int,
                   help=f"frames (default: {GPU_SCRIPTED_FRAMES} on CUDA, {CPU_SCRIPTED_FRAMES} on the CPU)")
    p.add_argument("--fps", type=float_in(1, 120), default=25.0, help="video frame rate (default: 25)")
    add_face_options(p)
    add_engine_options(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("convert", help="convert public checkpoints to the engine format")
    conv = p.add_subparsers(dest="model", required=True, parser_class=_Parser)
    c = conv.add_parser("liveportrait", help="LivePortrait's human renderer checkpoints")
    c.add_argument("source", help="folder with base_models/ and retargeting_models/ (or its parent)")
    c.add_argument("-o", "--output", required=True, help="output .safetensors path (a .json is written beside it)")
    c.set_defaults(func=cmd_convert)
    c = conv.add_parser("joyvasa", help="JoyVASA's motion generator (with its audio encoder) and motion template")
    c.add_argument("--checkpoint", required=True, help="motion_generator/motion_generator_hubert_chinese.pt")
    c.add_argument("--template", required=True, help="motion_template/motion_template.pkl")
    c.add_argument("-o", "--output", required=True, help="output .safetensors path (a .json is written beside it)")
    c.set_defaults(func=cmd_convert)

    from . import commands

    for module in commands.modules():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .runtime import configure_cuda

    configure_cuda()
    try:
        return args.func(args)
    except VasaError as exc:
        print(f"vasa-engine: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("vasa-engine: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (e.g. `| head`): nothing left to say
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
