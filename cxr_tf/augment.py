"""Training augmentation: its ranges (`Augment`) and the per-image maths, shared by the two places
that can run it.

- in the model (the trainer's default, config `augment_in_model: true`): the input pipeline
  (`make_dataset(..., augment_in_model=True)`) only squashes each stored image to a square, and
  `models.RandomAugment`, the model's first layer, does the rest on the accelerator, in training
  only. Its cost then leaves the host CPU, which on Colab's 2-core GPU machines and
  on TPU hosts is what decides whether the accelerator waits;
- in the pipeline (`make_dataset`'s default): `input_pipeline.train_transform` does it all in
  `tf.data`, for any model.

Either way an image gets one geometric resampling (random crop to a square, scaled to S,
rotated, zoomed, translated, optionally mirrored) and one multiply-add (brightness and
contrast), both drawn from the same uniforms (`_geometry`), so the two places cannot drift
apart: tf.data samples with a gather per pixel (`affine_transforms`, cheap on a host CPU), the
model without gathers (`warp`, matrix products and shears, what a TPU runs well). The maths takes
an `ops` namespace: `tf` or `keras.ops` for the geometry and `photometric`, `keras.ops` for
`warp`. Nothing here imports TensorFlow or Keras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

NUM_UNIFORMS = 11  # per image: 4 crop box, 4 affine, 1 flip, 2 photometric


def _help(default, text: str):
    """A field whose meaning `config.reference` (docs/config.md) shows."""
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class Augment:
    """Ranges of the training transform. Horizontal flip is off: anatomy is not symmetric."""

    crop_scale: tuple[float, float] = _help(
        (0.70, 1.0), "range of the random crop's area, as a fraction of the image's"
    )
    crop_ratio: tuple[float, float] = _help(
        (0.85, 1.18),
        "range of the crop's aspect ratio relative to the image's: at 1 the box has the image's "
        "shape, and the resize to S x S squashes it as evaluation squashes the whole image",
    )
    rotation_deg: float = _help(10.0, "rotation, uniform in +- this many degrees")
    translate: float = _help(0.05, "shift, uniform in +- this fraction of the image size")
    zoom: float = _help(0.10, "scale, uniform in 1 +- this")
    brightness: float = _help(0.10, "added brightness, uniform in +- this (images in [0, 1])")
    contrast: tuple[float, float] = _help(
        (0.90, 1.10), "range of the contrast factor, about the image mean (1: unchanged)"
    )
    hflip: bool = _help(False, "random left-right flip; off because anatomy is not symmetric")

    @classmethod
    def from_dict(cls, values: dict | None) -> Augment:
        """Build from a config mapping; unknown keys raise ValueError naming the allowed ones."""
        values = dict(values or {})
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"unknown augment keys {unknown}; allowed: {sorted(allowed)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @classmethod
    def none(cls) -> Augment:
        """Ranges that change nothing: the whole image, scaled to S, as it is."""
        return cls(
            crop_scale=(1.0, 1.0),
            crop_ratio=(1.0, 1.0),
            rotation_deg=0.0,
            translate=0.0,
            zoom=0.0,
            brightness=0.0,
            contrast=(1.0, 1.0),
        )

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def crop_boxes(sizes, u, aug: Augment, ops):
    """Random crop boxes (top, left, height, width), each (B,), inside each image's `sizes`.

    `sizes` is float (B, 2), the images' (height, width); `u` (B, 4) uniform in [0, 1): area
    fraction, log aspect ratio (relative to the image's, so that the unaugmented box is the whole
    image, as in evaluation) and position.
    """
    h_img, w_img = sizes[:, 0], sizes[:, 1]
    lo, hi = aug.crop_scale
    area = (lo + u[:, 0] * (hi - lo)) * h_img * w_img
    log_lo, log_hi = math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1])
    ratio = ops.exp(log_lo + u[:, 1] * (log_hi - log_lo)) * (w_img / h_img)  # width / height
    h = ops.minimum(ops.sqrt(area / ratio), h_img)
    w = ops.minimum(h * ratio, w_img)
    return u[:, 2] * (h_img - h), u[:, 3] * (w_img - w), h, w


def _geometry(sizes, u, image_size: int, aug: Augment, ops):
    """The draws as geometry: crop box (top, left, h, w), rotation angle, zoom, translation
    (tx, ty) in output pixels, and the flip (a boolean), each (B,)."""
    top, left, h, w = crop_boxes(sizes, u[:, :4], aug, ops)
    v = 2.0 * u[:, 4:8] - 1.0
    theta = v[:, 0] * (aug.rotation_deg * math.pi / 180.0)
    zoom = 1.0 + v[:, 1] * aug.zoom
    tx, ty = v[:, 2] * (aug.translate * image_size), v[:, 3] * (aug.translate * image_size)
    flip = u[:, 8] < 0.5 if aug.hflip else None
    return (top, left, h, w), theta, zoom, (tx, ty), flip


def affine_transforms(sizes, u, image_size: int, aug: Augment, ops):
    """Per-image (B, 8) projective transforms, output pixel -> source pixel, that do in ONE
    resampling what would otherwise take three: the random crop box scaled to S x S, then
    rotation, zoom and translation about the centre, then the optional horizontal flip.

    `sizes` float (B, 2) as in `crop_boxes`; `u` (B, NUM_UNIFORMS) uniform in [0, 1). The
    transforms are in the layout of `tf.raw_ops.ImageProjectiveTransformV3` (the tf.data path,
    on the host CPU, where a gather per pixel is cheap); `warp` does the same geometry without
    gathers, for accelerators.
    """
    (top, left, h, w), theta, zoom, (tx, ty), flip = _geometry(sizes, u, image_size, aug, ops)
    c = (image_size - 1) / 2.0
    # Output (x, y) -> crop coordinates A (x, y) + b: rotation and zoom about the centre.
    a00, a01 = ops.cos(theta) / zoom, -ops.sin(theta) / zoom
    a10, a11 = ops.sin(theta) / zoom, ops.cos(theta) / zoom
    a02 = c + tx - a00 * c - a01 * c
    a12 = c + ty - a10 * c - a11 * c
    if flip is not None:  # mirror the output, x -> S - 1 - x, for half of the images
        a02 = ops.where(flip, a02 + a00 * (image_size - 1), a02)
        a12 = ops.where(flip, a12 + a10 * (image_size - 1), a12)
        a00, a10 = ops.where(flip, -a00, a00), ops.where(flip, -a10, a10)
    # Crop coordinates -> source pixels, pixel centres aligned: src = left + (u + .5) sx - .5.
    sx, sy = w / image_size, h / image_size
    zero = ops.zeros_like(sx)
    rows = [a00 * sx, a01 * sx, left + (a02 + 0.5) * sx - 0.5]
    rows += [a10 * sy, a11 * sy, top + (a12 + 0.5) * sy - 0.5, zero, zero]
    return ops.stack(rows, axis=1)


# ------------------------------------------------------------------ gather-free resampling
#
# `warp` is the geometry of `affine_transforms` in the form accelerators want. A TPU runs a
# gather per pixel (what `ImageProjectiveTransformV3` and `keras.ops.image.affine_transform`
# compile to) slowly, and TensorFlow's XLA has no kernel for the former at all; it runs matrix
# products on its matrix units. So:
#   1. crop, scale, zoom and translation are separable: out = Wy @ img @ Wx^T, with Wy, Wx
#      bilinear (triangle) weight matrices, onto a canvas S + 2m wide (the margin m holds what
#      the rotation brings into view);
#   2. the rotation about the centre is three shears (Paeth 1986): each moves every row (or
#      column) by its own fraction of a pixel, done as a barrel shifter (log2 of the largest
#      shift static shifts, each kept or not per line) and one linear blend;
#   3. the flip is a reversal, kept or not per image.
# Every sampling coordinate is computed elementwise in float32, never by a matrix product: on a
# TPU a float32 product at default precision is one bfloat16 pass, which would move coordinates
# by up to 0.9 px at 224. The products only weigh pixel values (integers 0..255 for uint8
# images: exact in bfloat16), so a bfloat16 pass costs at most about a grey level.
# Without rotation it is exactly the bilinear resampling of `affine_transforms`; with it, the
# three shears add three 1-D linear interpolations (a slight blur; see tests/test_augment.py).


def _margin(image_size: int, aug: Augment) -> int:
    """Canvas margin (px) that holds every point the three shears read for the largest angle."""
    if not aug.rotation_deg:
        return 0
    theta = abs(aug.rotation_deg) * math.pi / 180.0
    t, s = math.tan(theta / 2), math.sin(theta)
    c = (image_size - 1) / 2.0
    ex = c * (1 + t)  # |x| the last shear reads
    ey = c + s * ex  # |y| the middle shear reads
    return math.ceil(max(ex + t * ey, ey) - c) + 3  # + the interpolation's neighbours


def _tent(coords, n: int, ops):
    """(B, K) sampling coordinates -> (B, K, n) bilinear weights over n source pixels; points
    outside [0, n - 1] blend towards 0 (zero fill), as `ImageProjectiveTransformV3` does."""
    grid = ops.arange(n, dtype="float32")
    return ops.relu(1.0 - ops.abs(coords[:, :, None] - grid[None, None, :]))


def _shift_lines(images, offsets, axis: int, max_shift: int, ops):
    """images (B, H, W, C); offsets (B, L) with L the length of the other spatial axis:
    out[line, i] = images[line, i + offset] along `axis` (1: columns move, 2: rows move),
    linearly interpolated, zero outside. No gather: integer parts by a barrel shifter of static
    shifts, fractions by one blend."""
    n = images.shape[axis]
    whole = ops.floor(offsets)
    frac = offsets - whole
    k = ops.clip(whole, -max_shift, max_shift) + max_shift  # in [0, 2 max_shift]
    # per-line values broadcast over the moving axis and the channels
    expand = (
        (slice(None), None, slice(None), None)
        if axis == 1
        else (slice(None), slice(None), None, None)
    )
    pad = [(0, 0)] * 4
    pad[axis] = (max_shift, max_shift + 2)
    x = ops.pad(images, pad)
    length = x.shape[axis]
    bit = 1
    while bit <= 2 * max_shift:
        moved = ops.concatenate(
            [_take(x, bit, length, axis), ops.zeros_like(_take(x, 0, bit, axis))], axis=axis
        )
        on = ops.mod(ops.floor(k / bit), 2.0)[expand] > 0.5
        x = ops.where(on, moved, x)
        bit *= 2
    f = frac[expand]
    return (1.0 - f) * _take(x, 0, n, axis) + f * _take(x, 1, n + 1, axis)


def _take(x, start: int, stop: int, axis: int):
    index = [slice(None)] * 4
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def warp(images, sizes, u, image_size: int, aug: Augment, ops):
    """The geometry of `affine_transforms` without gathers: (B, H, W, C) float images in any
    units (zero-padded where `sizes`, float (B, 2), is smaller) -> (B, S, S, C).

    Matrix products (crop, scale, zoom, translation), three shears (rotation) and a reversal
    (flip), as the block comment above says; compiles under XLA on both backends.
    """
    s = image_size
    (top, left, h, w), theta, zoom, (tx, ty), flip = _geometry(sizes, u, s, aug, ops)
    m = _margin(s, aug)
    c = (s - 1) / 2.0
    canvas = ops.arange(s + 2 * m, dtype="float32")[None, :] - m  # output coords, margin too

    def source(start, length, shift):  # canvas -> crop (zoom about the centre, shift) -> source
        crop = (canvas - c) / zoom[:, None] + c + shift[:, None]
        return start[:, None] + (crop + 0.5) * (length / s)[:, None] - 0.5

    wx = _tent(source(left, w, tx), images.shape[2], ops)  # (B, N, W)
    wy = _tent(source(top, h, ty), images.shape[1], ops)  # (B, N, H)
    out = ops.einsum("bhwc,bxw->bhxc", images, wx)
    out = ops.einsum("byh,bhxc->byxc", wy, out)
    if m:
        t = -ops.tan(theta / 2.0)[:, None]
        sn = ops.sin(theta)[:, None]
        centred = canvas - c  # from the canvas's centre, which is the output's
        row_shift = t * centred  # rows move by -tan(theta/2) (y - centre)
        angle = abs(aug.rotation_deg) * math.pi / 180.0
        max_row = math.ceil(math.tan(angle / 2) * (s / 2 + m)) + 1
        max_col = math.ceil(math.sin(angle) * (s / 2 + m)) + 1
        out = _shift_lines(out, row_shift, 2, max_row, ops)
        out = _shift_lines(out, sn * centred, 1, max_col, ops)
        out = _shift_lines(out, row_shift, 2, max_row, ops)
        out = out[:, m : m + s, m : m + s, :]
    if flip is not None:
        out = ops.where(flip[:, None, None, None], ops.flip(out, axis=2), out)
    return out


def photometric(images, u, aug: Augment, ops):
    """Brightness, then contrast about the image mean, as one multiply-add on [0, 1] images.

    f (x + d) + (1 - f) mean(x + d) = f x + d + (1 - f) mean(x); then clipped to [0, 1].
    `images` (B, H, W, C) float, `u` (B, 2) uniform in [0, 1).
    """
    delta = (2.0 * u[:, 0] - 1.0) * aug.brightness
    lo, hi = aug.contrast if aug.contrast else (1.0, 1.0)
    factor = lo + u[:, 1] * (hi - lo)
    mean = ops.mean(images, axis=(1, 2, 3))
    scale = ops.reshape(factor, (-1, 1, 1, 1))
    offset = ops.reshape(delta + (1.0 - factor) * mean, (-1, 1, 1, 1))
    return ops.clip(images * scale + offset, 0.0, 1.0)
