"""Dubbing: an existing video of a person and new speech in, the same video out with the face following the speech.

Every frame of the video is a source. The face is detected on each frame (so a new shot after a scene cut gets its
own face), its crop smoothed along the face's track so the pasted face does not jitter (`tracking`), the crops
encoded by the appearance and motion extractors in batches, and the frames re-rendered in batches, each from its
own encoding: the head pose, scale and translation are the frame's own, the expression comes
from the motion generated for the new speech (`Engine.generate_motion` on the first face frame), either only the
lip keypoints ("lips") or the whole generated change of expression ("expression"), blended with the frame's own by
a strength. The animated face is pasted back into the frame at full resolution (vasa_engine.faces.paste_back), so
everything outside the face is the source's, pixel for pixel; frames with no face pass through unchanged.

Timing: the motion is generated at 25 fps and resampled to the video's frame rate by linear interpolation in time.
Speech longer than the video is refused, or (on_long="loop") the video plays back and forth for as long as the speech;
speech shorter than the video leaves the rest of the video as it was, reached by a cross-fade over a few frames.

Modules: `video_input` (decoding upright, the frame-rate checks), `sources` (scene cuts, per-frame alignment, batched
crop and encoding), `tracking` (face tracks and the smoothed crop), `schedule` (timing and the driving parameters,
pure functions), `run` (the whole dub).
"""

from .run import DubReport, DubResult, dub
from .schedule import MODES, ON_LONG, dub_expression, dub_motion, plan, resample
from .tracking import CropSmoothing
from .video_input import SourceVideo, read_source_video

__all__ = ["CropSmoothing", "DubReport", "DubResult", "MODES", "ON_LONG", "SourceVideo", "dub", "dub_expression",
           "dub_motion", "plan", "read_source_video", "resample"]
