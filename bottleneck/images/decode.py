"""Decode one image file, by content and never by extension, into uint8 RGB pixels.

Extraction and prediction both go through `decode_image`, so an image gives the same pixels
(and so the same bottleneck) whichever command read it.
"""
from __future__ import annotations

import io
import os
import struct

import numpy as np
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from ..errors import ImageDecodeError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})

# Our format name -> the Pillow plugin we let open it. Opening with only the sniffed plugin keeps
# Pillow's exotic decoders (and their attack surface) out of reach of whatever lies in a data folder.
_PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "gif": "GIF", "tiff": "TIFF", "webp": "WEBP"}

# Pillow's modes for 16-bit grayscale PNG/TIFF ("I" is what older Pillow versions returned).
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

# EXIF orientations 5-8 rotate by 90 degrees, so width and height trade places.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})

# Everything Pillow is known to raise on a corrupt or truncated file. A bare `except` would also
# swallow KeyboardInterrupt and our own bugs, and record them as "bad image".
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError,
                  ZeroDivisionError, struct.error)


def sniff_format(head: bytes) -> str | None:
    """The format named by the magic number in the first 16 bytes, or None if it is not one of ours.

    >>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n")
    'png'
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    # Classic TIFF, then BigTIFF, each little- and big-endian.
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    return None


def decode_image(data: bytes, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode image bytes to `(pixels, (width, height))`.

    `pixels` is uint8 RGB: `(size, size, 3)` when `size` is given (a plain bilinear resize to a
    square, no crop, aspect ratio not kept), else the full image `(H, W, 3)`. `(width, height)` is
    the image's full size after its EXIF orientation was applied, even when JPEG draft mode
    decoded it at a reduced scale.

    Conversions: EXIF orientation is applied; grayscale, palette, CMYK and bilevel become RGB;
    alpha (RGBA, LA, palette transparency) is dropped, keeping the colour under it, not
    compositing onto a background; 16-bit grayscale is scaled to 8 bit as `v * 255 / 65535`
    (values of mode "I" are first clipped to 0..65535); float images (mode "F") are clipped to
    0..255, on the assumption that they hold 8-bit values, not 0..1; multi-frame GIF/TIFF give
    their first frame.

    Raises ImageDecodeError with a short lowercase reason (the one recorded in the cache) for an
    empty file, unrecognised content, a truncated or corrupt file, or one too large to decode.
    """
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive number of pixels or None, got size={size!r}")
    if not data:
        raise ImageDecodeError("empty file")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise ImageDecodeError("not an image (unrecognised format)")
    try:
        # Pillow opens at frame 0 and we never seek, so multi-frame files give their first frame.
        img = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[fmt]])
        width, height = img.size
        if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
            # Pillow only warns between 1x and 2x its limit; we refuse at 1x so a bomb never decodes.
            raise Image.DecompressionBombError(
                f"{width}x{height} pixels is over PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}")
        if img.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
        if size is not None and isinstance(img, JpegImagePlugin.JpegImageFile):
            # DCT scaling decodes a 6000x4000 photo at 1/2..1/8 scale, still >= size on both
            # sides, several times faster than a full decode followed by the resize below.
            img.draft("RGB", (size, size))
        # load() inside the try: Pillow decodes lazily, and truncation only shows here. With
        # ImageFile.LOAD_TRUNCATED_IMAGES False (Pillow's default, never changed by us) a cut-off
        # file raises instead of coming back partly grey.
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        if size is not None:
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(img, dtype=np.uint8)  # (H, W, 3) uint8
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"not an image (unrecognised {fmt} header)") from exc
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"truncated or corrupt image: {exc}") from exc
    return pixels, (width, height)


def load_image(path: str | os.PathLike, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Read `path` and decode it with `decode_image`; see there for what comes back."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ImageDecodeError(f"cannot read {os.fspath(path)}: {reason.lower()}") from exc
    return decode_image(data, size)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; see `decode_image` for what happens to alpha, 16-bit and float."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES:
        # Pillow's own convert("L") clips 16-bit values at 255, turning most of the image white.
        v = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        gray = ((v * 255 + 32767) // 65535).astype(np.uint8)  # rounded, 65535 -> 255, 32768 -> 128
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        v = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.rint(np.clip(v, 0, 255)).astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "PA"):
        # Through RGBA so palette transparency is resolved, and Pillow does not warn about it.
        return img.convert("RGBA").convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"unsupported image mode {mode}") from exc

