"""cxr_tf.images: every image mode ends as correct 8-bit grayscale; broken files fail clearly."""

import io

import numpy as np
import pytest
from PIL import Image

from cxr_tf import images


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


GRAY = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # 16x16 ramp


@pytest.mark.parametrize(
    "make, fmt",
    [
        (lambda: Image.fromarray(GRAY), "PNG"),
        (lambda: Image.fromarray(np.stack([GRAY] * 3, -1)), "PNG"),
        (lambda: Image.fromarray(np.dstack([GRAY] * 3 + [np.full_like(GRAY, 7)])), "PNG"),
        (lambda: Image.fromarray(np.dstack([GRAY, np.full_like(GRAY, 200)]), "LA"), "PNG"),
        (lambda: Image.fromarray(np.stack([GRAY] * 3, -1)).quantize(16), "PNG"),
        (lambda: Image.fromarray(GRAY.astype(np.uint16) * 257), "PNG"),
        (lambda: Image.fromarray(np.stack([GRAY] * 3, -1)).convert("CMYK"), "JPEG"),
    ],
    ids=["L", "RGB", "RGBA", "LA", "P", "I16", "CMYK"],
)
def test_modes_convert_to_the_same_gray(make, fmt):
    img = make()
    gray = np.asarray(images.decode_bytes(_encode(img, fmt)))
    assert gray.dtype == np.uint8 and gray.shape == (16, 16)
    tol = 6 if fmt == "JPEG" else 1
    assert np.abs(gray.astype(int) - GRAY.astype(int)).max() <= tol, img.mode


def test_sixteen_bit_scales_by_bit_depth_not_min_max():
    arr = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    gray = np.asarray(images.decode_bytes(_encode(Image.fromarray(arr), "PNG")))
    assert set(np.unique(gray)) == {127}


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty file"),
        (b"this is a text file, not an image", "not an image"),
        (_encode(Image.fromarray(GRAY), "JPEG")[:200], "unreadable image"),
    ],
    ids=["zero-byte", "text", "truncated"],
)
def test_broken_bytes_raise_image_error_with_reason(raw, reason):
    with pytest.raises(images.ImageError, match=reason):
        images.decode_bytes(raw)


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (50, 80)])
def test_resize_keeps_aspect_and_sets_the_shorter_side(shape):
    out = np.asarray(images.resize_short_side(Image.fromarray(np.zeros(shape, np.uint8)), 100))
    assert min(out.shape) == 100
    assert out.shape[0] / out.shape[1] == pytest.approx(shape[0] / shape[1], rel=0.02)


def test_convert_file_uses_jpeg_draft_and_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 255, (1200, 900), dtype=np.uint8))
    path = tmp_path / "x.jpeg"
    big.save(path, quality=90)
    a = images.convert_file(str(path), 128, "jpeg")
    b = images.convert_file(str(path), 128, "jpeg")
    assert a == b and (a.height, a.width) == (171, 128)
    png = images.convert_file(str(path), 128, "png")
    assert Image.open(io.BytesIO(png.data)).mode == "L"
    with pytest.raises(ValueError, match="'gif'"):
        images.encode(Image.new("L", (4, 4)), "gif")


@pytest.mark.parametrize("mode", ["I", "F"])
def test_wide_modes_scale_by_range(mode):
    arr = (GRAY.astype(np.float32) * (257 if mode == "I" else 1 / 255)).astype(
        np.int32 if mode == "I" else np.float32
    )
    gray = np.asarray(images.to_grayscale(Image.fromarray(arr, mode)))
    assert np.abs(gray.astype(int) - GRAY.astype(int)).max() <= 1


def test_worker_module_imports_no_numpy():
    """The converter's workers import cxr_tf.convert to find their function: keep it light."""
    import subprocess
    import sys

    code = "import sys, cxr_tf.convert; print('numpy' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
