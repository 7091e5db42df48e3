"""Tests for bottleneck/images.py: real files written with Pillow, checked by their decoded pixels."""
from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageFile

from bottleneck.errors import ImageDecodeError
from bottleneck.images.decode import IMAGE_EXTENSIONS, decode_image, load_image, sniff_format


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    img.save(path, format=fmt, **kw)
    return path


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_rgb16(arr: np.ndarray) -> bytes:
    """A 48-bit RGB PNG written by hand: Pillow cannot save 16-bit-per-channel RGB."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
            + _png_chunk(b"IEND", b""))


def _close(pixel, expected, tol=12) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(expected, int)) <= tol))


def test_rgb_jpeg(tmp_path):
    path = _save(Image.new("RGB", (40, 30), (200, 30, 60)), tmp_path / "a.jpg", "JPEG", quality=95)
    pixels, (w, h) = load_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (30, 40, 3)
    assert (w, h) == (40, 30)
    assert _close(pixels[15, 20], (200, 30, 60))


def test_png_named_jpg_is_decoded_by_content(tmp_path):
    path = _save(Image.new("RGB", (10, 12), (1, 2, 3)), tmp_path / "actually_png.jpg", "PNG")
    pixels, size = load_image(path)
    assert size == (10, 12)
    assert (pixels == (1, 2, 3)).all()  # lossless, so exact


def test_grayscale_png_8bit(tmp_path):
    arr = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))  # (4, 16)
    path = _save(Image.fromarray(arr, "L"), tmp_path / "g.png", "PNG")
    pixels, size = load_image(path)
    assert size == (16, 4) and pixels.shape == (4, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(pixels[..., c], arr)


def test_grayscale_png_16bit_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I")
    path = _save(img, tmp_path / "g16.png", "PNG")
    with Image.open(path) as check:
        assert check.mode in ("I;16", "I;16B", "I;16L", "I")  # really written as 16 bit
    pixels, _ = load_image(path)
    np.testing.assert_array_equal(pixels[0, :, 0], [0, 1, 128, 255])
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_rgb_png_16bit_comes_through_as_8bit(tmp_path):
    arr = np.zeros((3, 5, 3), np.uint16)
    arr[..., 0], arr[..., 1], arr[..., 2] = 65535, 32768, 0
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png_rgb16(arr))
    pixels, size = load_image(path)
    assert size == (5, 3) and pixels.dtype == np.uint8
    assert (pixels == (255, 128, 0)).all()


def test_rgba_png_drops_alpha_and_keeps_colour(tmp_path):
    path = _save(Image.new("RGBA", (8, 6), (10, 220, 30, 40)), tmp_path / "a.png", "PNG")
    pixels, _ = load_image(path)
    assert pixels.shape == (6, 8, 3)
    assert (pixels == (10, 220, 30)).all()


def test_la_png_becomes_rgb(tmp_path):
    path = _save(Image.new("LA", (4, 4), (90, 0)), tmp_path / "la.png", "PNG")
    pixels, _ = load_image(path)
    assert (pixels == 90).all() and pixels.shape == (4, 4, 3)


@pytest.mark.parametrize("transparency", [None, 0])
def test_palette_png(tmp_path, transparency):
    img = Image.new("P", (6, 4), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (3, 0, 6, 4))  # right half uses palette entry 1 (blue)
    kw = {} if transparency is None else {"transparency": transparency}
    path = _save(img, tmp_path / "p.png", "PNG", **kw)
    pixels, _ = load_image(path)
    assert (pixels[:, :3] == (255, 0, 0)).all()  # a transparent entry keeps its colour
    assert (pixels[:, 3:] == (0, 0, 255)).all()


def test_bmp(tmp_path):
    path = _save(Image.new("RGB", (7, 5), (12, 34, 56)), tmp_path / "b.bmp", "BMP")
    pixels, size = load_image(path)
    assert size == (7, 5) and (pixels == (12, 34, 56)).all()


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "c.jpg", "JPEG", quality=95)
    pixels, _ = load_image(path)
    assert pixels.shape == (16, 16, 3)
    assert _close(pixels[8, 8], (255, 0, 0), tol=20)  # no cyan, full magenta and yellow: red


def test_grayscale_jpeg(tmp_path):
    path = _save(Image.new("L", (16, 8), 77), tmp_path / "g.jpg", "JPEG", quality=95)
    pixels, size = load_image(path, 4)
    assert pixels.shape == (4, 4, 3) and size == (16, 8)
    assert _close(pixels, 77, tol=3)


def test_first_frame_of_multiframe_gif(tmp_path):
    frames = [Image.new("RGB", (6, 6), c) for c in [(255, 0, 0), (0, 255, 0)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    pixels, _ = load_image(path)
    assert (pixels == (255, 0, 0)).all()


def _red_corner_jpeg(path: Path, orientation: int) -> None:
    """80x40 (landscape) white image, red block in its top-left corner, EXIF Orientation set."""
    img = Image.new("RGB", (80, 40), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    img.save(path, "JPEG", exif=exif, quality=95)


@pytest.mark.parametrize("size", [None, 64])
@pytest.mark.parametrize("orientation, red_at", [
    (6, "top-right"),   # stored image is displayed rotated 90 degrees clockwise
    (8, "bottom-left"),  # rotated 90 degrees counter-clockwise
])
def test_exif_orientation(tmp_path, orientation, red_at, size):
    path = tmp_path / "o.jpg"
    _red_corner_jpeg(path, orientation)
    pixels, (w, h) = load_image(path, size)
    assert (w, h) == (40, 80)  # width and height swapped, whatever size was asked for
    rows, cols = pixels.shape[:2]
    if size is None:
        assert (rows, cols) == (80, 40)
    corners = {"top-left": pixels[2, 2], "top-right": pixels[2, cols - 3],
               "bottom-left": pixels[rows - 3, 2], "bottom-right": pixels[rows - 3, cols - 3]}
    for name, px in corners.items():
        assert _close(px, (255, 0, 0) if name == red_at else (255, 255, 255), tol=40), (name, px)


def test_truncated_jpeg_raises_and_setting_left_alone(tmp_path):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path = _save(img, tmp_path / "full.jpg", "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for size in (None, 32):
        with pytest.raises(ImageDecodeError, match="truncated or corrupt image"):
            load_image(cut, size)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_raises(tmp_path):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 50, 3), dtype=np.uint8))
    path = _save(img, tmp_path / "full.png", "PNG")
    with pytest.raises(ImageDecodeError, match="truncated or corrupt image"):
        decode_image(path.read_bytes()[: path.stat().st_size // 2])


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="^empty file$"):
        load_image(path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("lesion notes, not a picture\n")
    with pytest.raises(ImageDecodeError, match=r"^not an image \(unrecognised format\)$"):
        load_image(path, 32)


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nowhere.jpg"
    with pytest.raises(ImageDecodeError, match="nowhere.jpg"):
        load_image(path)


def test_size_none_full_and_size_square(tmp_path):
    path = _save(Image.new("RGB", (120, 50), (0, 128, 255)), tmp_path / "r.png", "PNG")
    full, size = load_image(path)
    assert full.shape == (50, 120, 3) and size == (120, 50)
    small, size = load_image(path, 32)
    assert small.shape == (32, 32, 3) and small.dtype == np.uint8 and size == (120, 50)
    assert (small == (0, 128, 255)).all()


def test_large_jpeg_draft_keeps_full_size_and_colour(tmp_path):
    path = _save(Image.new("RGB", (1600, 1200), (30, 160, 90)), tmp_path / "big.jpg", "JPEG", quality=95)
    pixels, size = load_image(path, 32)
    assert pixels.shape == (32, 32, 3) and size == (1600, 1200)
    assert _close(pixels[16, 16], (30, 160, 90), tol=6)


def test_draft_with_exif_rotation_reports_full_rotated_size(tmp_path):
    img = Image.new("RGB", (1600, 800), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 400, 400))  # top-left of the stored image
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    path = tmp_path / "big_rotated.jpg"
    img.save(path, "JPEG", exif=exif, quality=95)
    pixels, size = load_image(path, 32)
    assert size == (800, 1600)  # the full size, not the reduced draft size
    assert _close(pixels[2, 29], (255, 0, 0), tol=40)  # landed top-right
    assert _close(pixels[29, 2], (255, 255, 255), tol=40)


def test_resize_is_consistent_between_bytes_and_path(tmp_path):
    rng = np.random.default_rng(2)
    path = _save(Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)), tmp_path / "n.jpg", "JPEG")
    a, _ = load_image(path, 48)
    b, _ = decode_image(path.read_bytes(), 48)
    np.testing.assert_array_equal(a, b)


def test_decompression_bomb_is_refused(monkeypatch):
    # A PNG header claiming 20000x20000 pixels: Pillow refuses it before decoding any data.
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")
    with pytest.raises(ImageDecodeError, match="^image too large"):
        decode_image(data)
    # Between 1x and 2x the limit Pillow only warns; we refuse there too.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    buf = BytesIO()
    Image.new("RGB", (12, 12)).save(buf, "PNG")  # 144 pixels: over 100, under 200
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageDecodeError, match="^image too large"):
        decode_image(buf.getvalue())


def _encoded(fmt: str, **kw) -> bytes:
    buf = BytesIO()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, name", [
    ("JPEG", "jpeg"), ("PNG", "png"), ("BMP", "bmp"), ("GIF", "gif"), ("TIFF", "tiff"), ("WEBP", "webp"),
])
def test_sniff_format_and_decode_each_format(fmt, name):
    data = _encoded(fmt)
    assert sniff_format(data[:16]) == name
    pixels, size = decode_image(data, 8)
    assert pixels.shape == (8, 8, 3) and size == (4, 4)


def test_sniff_format_rejects_other_content():
    assert sniff_format(b"") is None
    assert sniff_format(b"hello, world") is None
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None  # RIFF, but audio
    assert sniff_format(b"MM\x00+\x00\x08\x00\x00") == "tiff"  # BigTIFF


def test_image_extensions():
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)
