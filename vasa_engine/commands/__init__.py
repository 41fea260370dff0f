"""More `vasa-engine` subcommands, one module each.

Every module here defines `add_parser(subparsers)`, which adds its subcommand (with `set_defaults(func=...)`,
the function taking the parsed args and returning the exit code). The shared option helpers live in
`vasa_engine.cli` (`add_engine_options`, `engine_from_args`, `positive_int`, `float_in`).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def modules() -> list[ModuleType]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]
