"""Measurement core of `vasa-engine bench` and the GPU suite: the same modules and weights, four implementations
(eager fp32, eager bf16, torch.compile, the engine), every stage.

Stages and their units: the audio encoder per second of audio; the motion generator per window at 1, 5 and 10
steps (DPM-Solver++(2M), every guidance branch in one batched forward); the renderer per frame (driving keypoints
with eye/lip retargeting and stitching, warp, decode, uint8 frames on the device) at each batch size of a scan;
dubbing's source encoding per frame (each video frame's face crop cut and resized, the appearance and motion
extractors on a batch of crops); end to end (audio samples -> uint8 frames on the host, `Engine.generate`) in
frames per second; the engine's streaming latency, alone and with concurrent sessions.

Every figure in the report is either measured (times in ms: min, p20, median, p80 of the repeats, and the same
of the machine probe timed beside them) or `{"measured": false, "reason": "..."}`. Work per unit is counted on the
meta device (`work`). The report also records the engine's outputs against eager float32 per stage
(`correctness`) and which implementation of the native operations each implementation's calls ran.

Modules: `sizes` (what each mode measures), `timing`, `figures`, `peaks` and `work` (counted FLOPs and bytes,
percent of peak), `implementations` (the four, as `Engine.variant`s), `stages` (the callables timed, shared with
`benches/test_bench_stages.py`), `correctness`, `streams`, `runner` and `run` (the run), `report`, `markdown`,
`plot`, `files` and `provenance` (the output), `compare` (two reports as a regression gate).
"""

from ..io.audio import SAMPLE_RATE
from .figures import error_reason, is_measured, not_measured
from .files import default_results_dir, default_stem, to_json, write_atomic
from .implementations import (ENGINE_ON_CPU, IMPL_KEYS, IMPLEMENTATIONS, Implementation, build_engines,
                              build_implementations)
from .markdown import to_markdown
from .peaks import DEVICE_PEAKS, device_peak
from .plot import write_plot
from .provenance import device_slug, git_commit
from .report import SCHEMA, figure_paths, validate_report
from .run import Options, run_bench
from .sizes import (FPS, MODES, QUICK_GPU, SIZE_WORDS, STEPS, Sizes, audio_config, motion_config, renderer_config,
                    sizes_for)
from .stages import (audio_encoder_stage, end_to_end_stage, motion_generator_stage, renderer_stage,
                     source_encoding_stage, speech_clip)
from .streams import stream_concurrently, stream_once
from .timing import Budget, StageFn, summarize, time_call
from .work import count_work, work_per_unit

__all__ = [
    "SAMPLE_RATE", "FPS", "STEPS", "MODES", "QUICK_GPU", "SIZE_WORDS", "Sizes", "sizes_for", "renderer_config",
    "audio_config", "motion_config", "SCHEMA", "IMPLEMENTATIONS", "IMPL_KEYS", "ENGINE_ON_CPU", "Implementation",
    "build_engines", "build_implementations", "StageFn", "audio_encoder_stage", "motion_generator_stage",
    "renderer_stage", "source_encoding_stage", "end_to_end_stage", "speech_clip", "time_call", "summarize", "Budget",
    "count_work", "work_per_unit", "DEVICE_PEAKS", "device_peak", "stream_once", "stream_concurrently", "Options",
    "run_bench", "not_measured", "is_measured", "error_reason", "validate_report", "figure_paths", "to_json",
    "to_markdown", "write_plot", "write_atomic", "default_results_dir", "default_stem", "device_slug", "git_commit",
]
