"""`vasa-engine dub`: re-sync the face of an existing video to new speech (vasa_engine.dubbing) and write it with
the speech muxed in, at the video's own size and frame rate."""

from __future__ import annotations

import time
from pathlib import Path

from ..cli import add_engine_options, add_generation_options, engine_from_args, float_in


def add_parser(sub) -> None:
    from ..cli import positive_int
    from ..dubbing import MODES, ON_LONG

    p = sub.add_parser("dub", help="lip-sync an existing video of a person to new speech (the video's own head "
                                   "motion, lighting and background kept)")
    p.add_argument("--video", required=True, help="source video (MP4, MOV, MKV, WebM...; constant frame rate)")
    p.add_argument("--audio", required=True, help="speech: WAV, FLAC, MP3, M4A/AAC or OGG, any rate and channels")
    p.add_argument("-o", "--output", required=True, help="output MP4 path")
    d = p.add_argument_group("dubbing")
    d.add_argument("--mode", choices=MODES, default="lips",
                   help="lips: only the lip keypoints follow the speech; expression: the whole generated change of "
                        "expression (default lips)")
    d.add_argument("--strength", type=float_in(0, 1), default=1.0,
                   help="blend from the frame's own expression (0) to the dubbed one (1); default 1")
    d.add_argument("--on-long", choices=ON_LONG, default="error",
                   help="speech longer than the video: error (refuse, the default) or loop (play the video back and "
                        "forth)")
    d.add_argument("--fade-frames", type=int, default=6,
                   help="frames of cross-fade back to the original face after the speech ends (default 6)")
    d.add_argument("--no-crop-smoothing", action="store_true",
                   help="cut each frame's face crop where it is detected on that frame, instead of smoothing it "
                        "along the face's track (the pasted face may then jitter)")
    d.add_argument("--encode-batch", type=positive_int,
                   help="face crops through the extractors at once (default: as --batch-size, the frames rendered "
                        "at once: 8 on CUDA, 1 on CPU)")
    g = p.add_argument_group("faces")
    g.add_argument("--face-models", metavar="DIR",
                   help="folder of the face detector and landmark models (default: the download cache's)")
    add_generation_options(p)
    add_engine_options(p)
    p.set_defaults(func=cmd_dub)


def cmd_dub(args) -> int:
    from ..cli import _controls, device_line, write_frames
    from ..dubbing import CropSmoothing, read_source_video
    from ..io.audio import SAMPLE_RATE
    from ..io.video import VideoWriter, check_output_path
    from ..io.watermark import Watermark

    out = Path(args.output)
    controls = _controls(args)
    check_output_path(out)  # before any work
    t0 = time.perf_counter()
    source = read_source_video(args.video)
    engine = engine_from_args(args)
    if engine.face_aligner.fallback:
        print(f"warning: {engine.face_aligner.fallback_reason}")
    result = engine.dub(source, args.audio, controls, mode=args.mode, on_long=args.on_long, strength=args.strength,
                        fade_frames=args.fade_frames, max_frames=args.frames, max_seconds=args.max_audio_seconds,
                        encode_batch=args.encode_batch, smoothing=None if args.no_crop_smoothing else CropSmoothing())
    frames = result.frames[:, : result.frames.shape[1] // 2 * 2, : result.frames.shape[2] // 2 * 2]
    watermark = Watermark() if args.watermark else None
    with VideoWriter(out, fps=result.fps, audio=(result.audio, SAMPLE_RATE)) as writer:
        write_frames(writer, (frames[i : i + 16] for i in range(0, len(frames), 16)), len(frames), watermark)
    total = time.perf_counter() - t0
    print(f"dubbed {args.video} with {args.audio} to {out}: {result.report.line()}")
    print(device_line(engine))
    print(f"total: {total:.1f} s, {len(frames) / total:.2f} fps end to end")
    return 0
