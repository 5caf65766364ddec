"""Image decoding for the converter: any source image -> 8-bit grayscale, resized, re-encoded.

Pure Pillow + numpy (no TensorFlow), so that the converter's worker processes start fast and
stay fork/spawn-safe.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

# Real archives are clean, but a truncated file must fail loudly (and be reported), never be
# silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

FORMATS = ("jpeg", "png")
JPEG_QUALITY = 95


class ImageError(ValueError):
    """A file that cannot be turned into an image; the message is the reason for the report."""


@dataclass(frozen=True)
class EncodedImage:
    """One converted image: encoded bytes and the size of the stored image."""

    data: bytes
    height: int
    width: int


def to_grayscale(img: Image.Image) -> np.ndarray:
    """Return `img` as a 2-D uint8 array, whatever its mode.

    16-bit and 32-bit integer images are scaled linearly from their bit depth to 8 bits (not
    min-max stretched, so intensities stay comparable between images); alpha is dropped, since
    radiographs are opaque and a transparent background would otherwise turn black or white.
    """
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16).astype(np.float32)
        return np.round(arr / 257.0).astype(np.uint8)
    if mode == "I":
        arr = np.asarray(img, dtype=np.int64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.round(np.clip(arr, 0, top) * (255.0 / top)).astype(np.uint8)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        top = 1.0 if arr.max(initial=0) <= 1.0 else (255.0 if arr.max() <= 255.0 else 65535.0)
        return np.round(np.clip(arr, 0, top) * (255.0 / top)).astype(np.uint8)
    if mode == "La":  # premultiplied alpha has no direct conversion to L
        img = img.convert("LA")
    if img.mode != "L":
        img = img.convert("L")  # drops alpha; palette, RGB and CMYK go through ITU-R 601 luma
    return np.asarray(img, dtype=np.uint8)


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the shorter side equal to `short_side` and the aspect ratio kept."""
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def decode_file(path: str, short_side: int | None = None) -> np.ndarray:
    """Decode an image file to a 2-D uint8 grayscale array.

    With `short_side`, JPEG decoding uses DCT scaling (`draft`) to skip detail the resize would
    throw away anyway; the result still has a shorter side of at least `short_side`.
    Raises ImageError with a short reason for empty, truncated or non-image files.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ImageError(f"cannot read file: {err.strerror or err}") from err
    return decode_bytes(raw, short_side)


def decode_bytes(raw: bytes, short_side: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to a 2-D uint8 grayscale array (see `decode_file`)."""
    if not raw:
        raise ImageError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(raw))
        if short_side and img.format == "JPEG":
            w, h = img.size
            scale = short_side / min(w, h)
            if scale < 1:
                img.draft(img.mode, (int(w * scale) + 1, int(h * scale) + 1))
        img.load()
    except Image.DecompressionBombError as err:
        raise ImageError(f"image too large to decode safely: {err}") from err
    except Exception as err:  # Pillow raises many types for broken data
        reason = "not an image" if "cannot identify" in str(err) else f"unreadable image: {err}"
        raise ImageError(reason) from err
    return to_grayscale(img)


def resize_short_side(gray: np.ndarray, short_side: int) -> np.ndarray:
    """Antialiased resize of a 2-D uint8 image so its shorter side is `short_side`."""
    h, w = gray.shape
    new_h, new_w = resized_size(h, w, short_side)
    if (new_h, new_w) == (h, w):
        return gray
    img = Image.fromarray(gray, mode="L")
    # reducing_gap makes large downscales a cheap box-reduce then a Lanczos pass: the same quality
    # for these ratios at a fraction of the cost.
    img = img.resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def encode(gray: np.ndarray, image_format: str) -> bytes:
    """Encode a 2-D uint8 image as JPEG (quality 95) or PNG, deterministically."""
    buf = io.BytesIO()
    img = Image.fromarray(gray, mode="L")
    if image_format == "jpeg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False)
    elif image_format == "png":
        img.save(buf, format="PNG", compress_level=6)
    else:
        raise ValueError(f"image format {image_format!r} is not one of {FORMATS}")
    return buf.getvalue()


def convert_file(path: str, short_side: int, image_format: str) -> EncodedImage:
    """The converter's per-image work: decode, grayscale, resize, encode."""
    gray = resize_short_side(decode_file(path, short_side), short_side)
    return EncodedImage(encode(gray, image_format), *gray.shape)
