"""Portrait loading and the small array helpers that turn a photo into network input.

Conventions: images are numpy ``uint8`` arrays of shape (H, W, 3) in RGB order; network input is a
``float32`` tensor of shape (1, 3, H, W) with values in [0, 1].
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import InputError, one_line

__all__ = [
    "MIN_IMAGE_SIDE",
    "SUPPORTED_FORMATS",
    "load_image",
    "decode_image",
    "center_square",
    "resize",
    "to_tensor",
    "load_portrait",
]

#: Smallest accepted width and height of a portrait, in pixels.
MIN_IMAGE_SIDE = 64

#: Pillow format names accepted from files. "MPO" is the multi-picture JPEG many phone cameras write;
#: its first picture is an ordinary JPEG.
SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP"})

_FORMAT_LABELS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP"}

ImageSource = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]


def load_image(source: ImageSource) -> np.ndarray:
    """Load a portrait as a ``uint8`` array of shape (H, W, 3), RGB.

    ``source`` is one of:

    * a path (``str`` or ``os.PathLike``) to a PNG, JPEG or WebP file;
    * a ``PIL.Image.Image``;
    * a numpy array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), either ``uint8`` or floating
      point with values in [0, 1]. Three channels are taken as RGB and four as RGBA.

    Colour handling: grayscale (L, LA, 1-bit) is replicated to three channels; palette images are
    expanded; 16-bit images are scaled to 8 bits; CMYK and YCbCr are converted to RGB. Transparency
    (RGBA, LA, palette with a transparent colour, or a 4-channel array) is composited over a **white**
    background. The EXIF orientation tag is applied, so a phone photo comes out upright.

    Raises :class:`~vasa_engine.errors.InputError` with a one-line message naming the problem (and the
    file, for a path) when the file is missing, is a directory, is not an image, is truncated or corrupt,
    is in a format other than PNG/JPEG/WebP, is smaller than 64 px on a side, or when an array has the
    wrong shape, dtype or values (NaN, Inf, outside [0, 1]).
    """
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        return _from_pil(source, "<PIL image>")
    if isinstance(source, (str, os.PathLike)):
        return _from_path(source)
    raise InputError(
        f"unsupported image source type {type(source).__name__}: a path, a PIL image or a numpy array is needed"
    )


def load_portrait(source: ImageSource, size: int = 256) -> np.ndarray:
    """Load an image, take its largest centred square and resize that to ``size`` x ``size`` (uint8 RGB)."""
    return resize(center_square(load_image(source)), size)


def center_square(image: np.ndarray) -> np.ndarray:
    """Return the largest centred square crop of an (H, W, ...) array, as a new contiguous array.

    When the margin is odd the extra pixel is dropped from the bottom/right side.
    """
    if not isinstance(image, np.ndarray) or image.ndim < 2:
        raise ValueError(f"center_square expects an array of shape (H, W, ...), got {_describe(image)}")
    h, w = image.shape[:2]
    side = min(h, w)
    top = (h - side) // 2
    left = (w - side) // 2
    return np.ascontiguousarray(image[top : top + side, left : left + side]).copy()


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``uint8`` (H, W, 3) RGB image to ``size`` x ``size``.

    Shrinking uses area averaging (Pillow's BOX filter: every source pixel contributes in proportion to
    the area it covers), which does not alias. Enlarging uses bicubic interpolation. When one axis
    shrinks and the other grows, each axis is resampled with its own filter. Returns a new ``uint8`` array.
    """
    _check_rgb_uint8(image, "resize")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"resize size must be a positive integer, got {size!r}")
    size = int(size)
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image.copy()

    box, bicubic = Image.Resampling.BOX, Image.Resampling.BICUBIC
    pil = Image.fromarray(np.ascontiguousarray(image))
    shrink_w, shrink_h = w > size, h > size
    grow_w, grow_h = w < size, h < size
    if (shrink_w and grow_h) or (grow_w and shrink_h):
        pil = pil.resize((size, h), resample=box if shrink_w else bicubic)
        pil = pil.resize((size, size), resample=box if shrink_h else bicubic)
    else:
        pil = pil.resize((size, size), resample=box if (shrink_w or shrink_h) else bicubic)
    return np.array(pil, dtype=np.uint8)


def to_tensor(image: np.ndarray):
    """Convert a ``uint8`` (H, W, 3) RGB image to a ``float32`` torch tensor of shape (1, 3, H, W) in [0, 1]."""
    import torch

    _check_rgb_uint8(image, "to_tensor")
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
    return t.to(torch.float32).div_(255.0).contiguous()


# ----------------------------------------------------------------------------------------------------
# internals


def _describe(obj) -> str:
    if isinstance(obj, np.ndarray):
        return f"array of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    return type(obj).__name__


def _check_rgb_uint8(image, what: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} expects a uint8 array of shape (H, W, 3), got {_describe(image)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what} expects a non-empty image, got {_describe(image)}")


def _check_size(w: int, h: int, name: str) -> None:
    if w < MIN_IMAGE_SIDE or h < MIN_IMAGE_SIDE:
        raise InputError(
            f"image too small: {w}x{h}, at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} needed: {name}"
        )


def _from_path(path) -> np.ndarray:
    name = os.fspath(path)
    if isinstance(name, bytes):  # os.PathLike may yield bytes
        name = os.fsdecode(name)
    p = Path(name)
    if not p.exists():
        raise InputError(f"image not found: {name}")
    if p.is_dir():
        raise InputError(f"is a directory, not an image: {name}")

    return _decode(p, name)


def decode_image(data: bytes, name: str = "<upload>") -> np.ndarray:
    """An encoded PNG, JPEG or WebP file held in memory (an upload) -> ``uint8`` (H, W, 3) RGB, with the checks and
    the one-line messages of :func:`load_image` (``name`` stands for the file in them)."""
    if not data:
        raise InputError(f"empty image: {name}")
    return _decode(io.BytesIO(data), name)


def _decode(fp, name: str) -> np.ndarray:
    # Truncated files must fail loudly. LOAD_TRUNCATED_IMAGES is a Pillow-wide switch that other code may
    # have turned on; it is forced off for the duration of this decode.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        try:
            im = Image.open(fp)
        except UnidentifiedImageError:
            raise InputError(f"not an image (or an unsupported format): {name}") from None
        except Image.DecompressionBombError as e:
            raise InputError(f"image too large to decode safely ({one_line(e)}): {name}") from None
        except PermissionError:
            raise InputError(f"image not readable (permission denied): {name}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise InputError(f"truncated or corrupt image ({one_line(e)}): {name}") from None
        with im:
            fmt = (im.format or "").upper()
            if fmt not in SUPPORTED_FORMATS:
                found = im.format or "unknown"
                raise InputError(f"unsupported image format {found} (PNG, JPEG or WebP needed): {name}")
            return _from_pil(im, name)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _from_pil(im: Image.Image, name: str) -> np.ndarray:
    try:
        im.load()  # full decode: a truncated or corrupt file fails here, not later
    except Image.DecompressionBombError as e:
        raise InputError(f"image too large to decode safely ({one_line(e)}): {name}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise InputError(f"truncated or corrupt image ({one_line(e)}): {name}") from None

    try:
        upright = ImageOps.exif_transpose(im)
    except Exception:  # a malformed EXIF block should not make an otherwise good photo unusable
        upright = im
    if upright is None:
        upright = im

    w, h = upright.size
    _check_size(w, h, name)
    try:
        return _pil_to_rgb(upright)
    except InputError:
        raise
    except (OSError, ValueError) as e:
        raise InputError(f"cannot convert image of mode {upright.mode} to RGB ({one_line(e)}): {name}") from None


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (Pillow opens 16-bit gray PNGs in one of these modes).
        a = np.asarray(im)
        a = np.clip(a.astype(np.float64), 0, 65535) / 257.0
        gray = np.rint(a).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():
            raise ValueError("float image contains NaN or Inf")
        hi = float(a.max())
        if hi > 1.0:
            a = a / (65535.0 if hi > 255.0 else 255.0)
        gray = np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("L", "1"):
        gray = np.array(im.convert("L"), dtype=np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)

    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        return _composite_over_white(np.array(im.convert("RGBA"), dtype=np.uint8))
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """Blend straight-alpha RGBA ``uint8`` over a white background; returns ``uint8`` RGB."""
    rgb = rgba[:, :, :3].astype(np.float32)
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    out = rgb * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _from_array(a: np.ndarray) -> np.ndarray:
    name = "<array>"
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise InputError(
            f"image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {tuple(a.shape)}"
        )
    if a.dtype == np.uint8:
        u8 = a
    elif np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float64, copy=False)
        if not np.isfinite(f).all():
            raise InputError(f"image array contains NaN or Inf values (shape {tuple(a.shape)}, dtype {a.dtype})")
        if f.size and (f.min() < 0.0 or f.max() > 1.0):
            raise InputError(
                f"float image array must have values in [0, 1], got [{f.min():.4g}, {f.max():.4g}]"
            )
        u8 = np.rint(f * 255.0).astype(np.uint8)
    else:
        raise InputError(f"image array must be uint8 or float in [0, 1], got dtype {a.dtype}")

    h, w = u8.shape[:2]
    _check_size(w, h, name)
    c = u8.shape[2]
    if c == 1:
        return np.ascontiguousarray(np.repeat(u8, 3, axis=2))
    if c == 4:
        return _composite_over_white(u8)
    return np.array(u8, dtype=np.uint8, order="C", copy=True)
