"""vasa-engine: one portrait and speech in, a lifelike talking-face video out.

    engine = vasa_engine.Engine(weights=None, device="auto", dtype="auto")
    avatar = engine.prepare("portrait.png")
    frames = engine.render(avatar, motion)  # uint8 (N, 512, 512, 3)
"""

__version__ = "0.1.0"

from .native import install_kernels_fallback as _install_kernels_fallback  # noqa: E402

_install_kernels_fallback()  # a source tree built in place: vasa_engine.kernels -> kernels/

from .engine import Avatar, Engine, Motion  # noqa: E402
from .errors import CheckpointError, InputError, VasaError  # noqa: E402

__all__ = ["Avatar", "CheckpointError", "Engine", "InputError", "Motion", "VasaError", "__version__"]
