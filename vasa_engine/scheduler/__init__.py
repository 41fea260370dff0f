"""Many streams on one device: one scheduler per engine batches the work of every live session.

Sessions created with `Engine.stream(avatar, batched=True)` keep their own worker thread for what is pure and
cheap (audio buffering, chunk planning, the audio encoder's span, driving, idle frames and cross-fades) and hand
their motion windows and frames to the engine's `DeviceScheduler` (`engine.scheduler`, created on first use)
instead of launching them. Its one thread gathers what every session has queued and runs it as batched steps:
the windows through `MotionSampler.windows` (one denoiser forward per step for every guidance branch of every
row), then the frames through `FrameRenderer.launch_rows` (one renderer batch, each row on its own avatar),
earliest deadline first (a frame is due its audio's arrival plus the session's latency budget). A window that
would miss its deadline runs with fewer sampler steps (its frames record the steps), rather than delaying the
other streams. A new batched session is refused (`StreamBusy`) when the frame rate the scheduler has sustained
cannot take one more 25 fps stream; closing a session cancels its queued work and leaves the others' alone.
"""

from .device import DeviceScheduler, EngineStages
from .jobs import FramesResult, Job, RateMeter, Slot

__all__ = ["DeviceScheduler", "EngineStages", "FramesResult", "Job", "RateMeter", "Slot"]
