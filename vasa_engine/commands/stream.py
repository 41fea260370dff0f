"""`vasa-engine stream`: feed an audio file to a streaming session in real time (or as fast as the engine takes it),
write the frames to an MP4 with the audio, and print the latency distribution and the sustained frame rate."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from ..cli import add_engine_options, add_generation_options, engine_from_args, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("stream", help="stream speech through the engine chunk by chunk (real-time latency figures, "
                                      "optional live preview in a browser)")
    p.add_argument("--image", required=True, help="portrait: PNG, JPEG or WebP, at least 64x64")
    p.add_argument("--audio", required=True, help="speech: WAV, FLAC, MP3, M4A/AAC or OGG, any rate and channels")
    p.add_argument("-o", "--output", default="stream.mp4", help="output MP4 path (default: stream.mp4)")
    s = p.add_argument_group("streaming")
    s.add_argument("--chunk-ms", type=positive_int, default=200,
                   help="audio per generator window, a multiple of 40 (default 200)")
    s.add_argument("--lookahead-ms", type=int, default=80,
                   help="future audio each frame waits for, a multiple of 40 in [0, 1000] (default 80)")
    s.add_argument("--past-ms", type=int, default=1000,
                   help="audio before the new frames the audio encoder sees, 0..10000 (default 1000)")
    pace = s.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="fast", action="store_false",
                      help="feed the file at the speed it plays (the default)")
    pace.add_argument("--fast", dest="fast", action="store_true",
                      help="feed the file as fast as the engine takes it (back-pressure paces it)")
    s.add_argument("--batched", action="store_true",
                   help="hand the session's work to the engine's device scheduler (batched with other sessions')")
    s.add_argument("--preview", action="store_true",
                   help="serve a live preview page on 127.0.0.1 and stream the frames and audio to it")
    s.add_argument("--port", type=int, default=0, help="preview port (default: a free one)")
    s.add_argument("--preview-wait", type=float, default=60.0,
                   help="seconds to wait for a browser to open the preview before streaming (default 60)")
    add_generation_options(p)
    add_engine_options(p)
    p.set_defaults(func=cmd_stream, steps=5, fast=False)


def cmd_stream(args) -> int:
    from ..cli import _controls, device_line
    from ..errors import InputError
    from ..io.audio import SAMPLE_RATE, load_audio
    from ..io.image import load_image
    from ..io.video import VideoWriter, check_output_path
    from ..io.watermark import Watermark

    from ..streaming import StreamSettings

    out = Path(args.output)
    controls = _controls(args)
    # the settings' own checks first (the chunk's bound by the model's window is checked again once it is loaded)
    StreamSettings(chunk_ms=args.chunk_ms, lookahead_ms=args.lookahead_ms, past_ms=args.past_ms,
                   max_pending_ms=max(2000, args.chunk_ms + args.lookahead_ms + 40)).check(args.chunk_ms // 40)
    check_output_path(out)
    pixels = load_image(args.image)
    samples = load_audio(args.audio, max_seconds=args.max_audio_seconds)
    if args.frames is not None:
        samples = samples[: args.frames * 640]
    expected = max(1, round(len(samples) / 640))
    engine = engine_from_args(args)
    avatar = engine.prepare(pixels)
    session = engine.stream(avatar, controls, chunk_ms=args.chunk_ms, lookahead_ms=args.lookahead_ms,
                            past_ms=args.past_ms, max_pending_ms=max(2000, args.chunk_ms + args.lookahead_ms + 40),
                            batched=args.batched)
    preview = None
    watermark = Watermark() if args.watermark else None
    producer_error: list[BaseException] = []
    try:
        if args.preview:
            from ..preview import PreviewServer

            preview = PreviewServer(port=args.port).start()
            print(f"preview: open {preview.url} in a browser", flush=True)
            if not preview.wait_for(lambda s: s.clients > 0, args.preview_wait):
                print(f"no browser connected within {args.preview_wait:g} s; streaming anyway", file=sys.stderr)

        chunk = args.chunk_ms * SAMPLE_RATE // 1000

        def produce():
            try:
                start = time.perf_counter()
                for a in range(0, len(samples), chunk):
                    if not args.fast:  # the chunk's last sample "arrives" when it would have been spoken
                        delay = start + (a + chunk) / SAMPLE_RATE - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                    session.push(samples[a : a + chunk], SAMPLE_RATE, collect=False)
                session.flush(collect=False)
            except BaseException as exc:  # surfaced by the main thread
                producer_error.append(exc)

        producer = threading.Thread(target=produce, name="vasa-stream-feed", daemon=True)
        t_start = time.perf_counter()
        clip = samples[: expected * 640]
        with VideoWriter(out, audio=(clip, SAMPLE_RATE)) as writer:
            producer.start()
            done = 0
            while True:
                frame = session.get(timeout=0.2)
                if frame is None:
                    if producer_error:
                        raise producer_error[0]
                    if producer.is_alive():
                        continue
                    frame = session.get(timeout=0)  # the flush has returned: every frame is queued
                    if frame is None:
                        break
                image = frame.image[None]
                writer.write(watermark.apply(image) if watermark is not None else image)
                if preview is not None:
                    preview.send(frame)
                done += 1
            producer.join()
            if producer_error:
                raise producer_error[0]
            if done != expected:
                raise InputError(f"the stream produced {done} frames for {expected} frames of audio")
        total = time.perf_counter() - t_start
        report = session.report()
        if preview is not None:
            if preview.clients:  # let the page draw what it was sent
                preview.wait_for(lambda p: len(p.acks) >= p.frames_sent, 10)
            print(f"preview: {preview.frames_sent} frames sent, {len(preview.acks)} drawn by the page")
    finally:
        session.close()
        if preview is not None:
            preview.close()
    mode = "faster than real time (--fast)" if args.fast else "in real time"
    print(f"streamed {done} frames ({done / 25:.2f} s of video, audio fed {mode}) to {out}")
    print(device_line(engine) + f", sampler: {controls.sampler}, steps: {controls.steps}")
    print(report.summary())
    print(f"total: {total:.1f} s, {done / total:.2f} fps end to end")
    return 0
