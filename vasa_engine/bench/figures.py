"""A figure of the report is either measured (a dict with `"measured": True`) or `{"measured": false, "reason":
"..."}`; these helpers build and read both, and turn an exception into a one-line reason."""

from __future__ import annotations

from typing import Any

import torch


def not_measured(reason: str) -> dict:
    return {"measured": False, "reason": reason}


def is_measured(figure: Any) -> bool:
    return isinstance(figure, dict) and figure.get("measured") is True


def error_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:300]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
