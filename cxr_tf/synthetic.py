"""Synthetic chest X-ray downloads in the exact layout of the real ones, for demos and tests.

`write_pneumonia` mimics the Kaggle "Chest X-Ray Images (Pneumonia)" archive (Kermany 2018),
clutter included; `write_nih14` mimics the Kaggle mirror of NIH ChestX-ray14, with rows taken from
a sample of the real metadata. The converter thus reads synthetic data through the code path it
uses for real data.

Every label leaves a visual signal that a small CNN learns in a few epochs on a CPU, so end-to-end
tests can prove that labels stay attached to the right images. `pneumonia_signal` and
`nih14_signal` read that signal back from a converted image (grayscale, any size, JPEG or not).

    python -m cxr_tf.synthetic pneumonia --out /tmp/raw --num-images 240
    python -m cxr_tf.synthetic nih14 --out /tmp/nih --num-images 200 --image-size 256
"""

from __future__ import annotations

import argparse
import collections
import csv
import functools
import gzip
import io
import math
import pathlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxr_tf.nih14 import BOX_FINDINGS, LABELS

NIH14_SAMPLE = pathlib.Path(__file__).with_name("data") / "nih14_metadata_sample.csv.gz"
# Google's radiologist-adjudicated labels (Majkowska et al. 2020) of 4,376 NIH images: their
# patients are drawn first, so that `evaluate --labels google2019` has images to score
GOOGLE2019_LABELS = NIH14_SAMPLE.with_name("google2019_nih-chest-xray-labels.csv.gz")
# NIH's box list: its header as NIH ships it (the column names split at their commas)
NIH14_BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
SPOT_LAYOUTS = ("fixed", "shuffled")
NIH14_CSV_HEADERS = {
    # Kaggle's copy ends the header with a comma, i.e. an empty 12th column.
    "2017": "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],",
    "2020": "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]",
}

# Oracle thresholds, in units of the image's own contrast (see `_contrast`). Over thousands of
# images, resized (64-1024 px) or not, JPEG or not, scores without the finding stayed below 0.08
# (NIH) / 0.12 (pneumonia) and scores with it above 0.14 / 0.22.
PNEUMONIA_SIGNAL_THRESHOLD = 0.16
NIH14_SIGNAL_THRESHOLD = 0.12

MIN_IMAGES = 20
MIN_IMAGE_SIZE = 32
_PROGRESS_MIN_IMAGES = 50

# Synthetic anatomy on a 0..1 scale, before brightness/contrast. It is smooth, so it is drawn with
# _LOW_RES pixels on the short side and upsampled, which keeps 1024x1024 images fast.
_BACKGROUND, _BODY, _LUNG, _MEDIASTINUM, _HEART = 0.04, 0.34, -0.18, 0.16, 0.10
_TEXTURE_STD, _NOISE_STD = 0.015, 0.012
# Random shift and rescaling of the anatomy, relative to the image size; small, because the
# oracles measure at fixed positions and subtract what the unshifted anatomy alone would score.
_MAX_SHIFT = 0.01
_LOW_RES = 96
_ORACLE_RES = 128  # the oracles resize every image to this short side: same pixels at any size

# Pneumonia opacities sit in the lower half of a lung; the oracle compares that region with the
# upper half of the same lung. Relative (x, y) coordinates, so resizing keeps them.
_LUNG_X = (0.29, 0.71)
_OPACITY_Y, _UPPER_LUNG_Y = 0.60, 0.30

# NIH14: one spot per finding, in LABELS order, in rows of 3, 4, 4 and 3 inside the thorax;
# (x, y) relative to the image's width and height.
NIH14_SPOT_RADIUS = 0.065
NIH14_SPOT_CENTERS = (
    [(x, 0.22) for x in (0.315, 0.5, 0.685)]
    + [(x, 0.42) for x in (0.22, 0.41, 0.59, 0.78)]
    + [(x, 0.62) for x in (0.22, 0.41, 0.59, 0.78)]
    + [(x, 0.82) for x in (0.315, 0.5, 0.685)]
)
_SPOT_MEAN = 0.12  # mean brightening over a spot's disc, the same for every texture
_TEMPLATE_SIZE = 192


def _stripes(t: np.ndarray) -> np.ndarray:
    """Bars across `t`, one period per spot radius."""
    return (np.cos(2 * np.pi * t) > 0).astype(np.float32)


def _band(t: np.ndarray, low: float, high: float) -> np.ndarray:
    """1 where low <= t < high, else 0."""
    return ((t >= low) & (t < high)).astype(np.float32)


# Texture of each finding's spot, on u, v in [-1, 1] with r = hypot(u, v); the spot is r < 1.
# A CNN with global average pooling barely sees position, so each finding needs its own texture.
_SPOT_TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    # horizontal stripes
    "Atelectasis": lambda u, v, r: _stripes(v),
    # ring
    "Cardiomegaly": lambda u, v, r: _band(r, 0.55, 2),
    # lower half disc, like a fluid level
    "Effusion": lambda u, v, r: _band(v, 0, 2),
    # diagonal stripes
    "Infiltration": lambda u, v, r: _stripes((u + v) / np.sqrt(2)),
    # solid triangle, pointing up
    "Mass": lambda u, v, r: _band(v - 1.7 * abs(u), -0.9, 2) * _band(v, -2, 0.55),
    # four dots
    "Nodule": lambda u, v, r: _band(np.hypot(abs(u) - 0.45, abs(v) - 0.45), 0, 0.36),
    # checkerboard
    "Pneumonia": lambda u, v, r: (np.floor(1.5 * u) + np.floor(1.5 * v)) % 2,
    # plus sign
    "Pneumothorax": lambda u, v, r: np.maximum(_band(abs(u), 0, 0.3), _band(abs(v), 0, 0.3)),
    # vertical stripes
    "Consolidation": lambda u, v, r: _stripes(u),
    # X
    "Edema": lambda u, v, r: np.maximum(_band(abs(u - v), 0, 0.4), _band(abs(u + v), 0, 0.4)),
    # grid of small dots
    "Emphysema": lambda u, v, r: _band(np.hypot(1.5 * u % 1 - 0.5, 1.5 * v % 1 - 0.5), 0, 0.36),
    # anti-diagonal stripes
    "Fibrosis": lambda u, v, r: _stripes((u - v) / np.sqrt(2)),
    # square frame
    "Pleural_Thickening": lambda u, v, r: _band(np.maximum(abs(u), abs(v)), 0.45, 0.75),
    # target: central dot and ring
    "Hernia": lambda u, v, r: np.maximum(_band(r, 0, 0.35), _band(r, 0.7, 2)),
}

# A macOS AppleDouble file ("._name" under __MACOSX/): magic, version, filler, one entry
# descriptor (id 9 = Finder info, at offset 38, 32 bytes long), then that entry.
_APPLE_DOUBLE = (
    bytes.fromhex("00051607 00020000")
    + b"Mac OS X        "
    + bytes.fromhex("0001 00000009")
    + bytes.fromhex("00000026 00000020")
    + bytes(32)
)
_DS_STORE = b"\x00\x00\x00\x01Bud1" + bytes(6140)

# (width, height) and pixel spacing (mm) of the original NIH scans, for the CSV's last columns.
_NIH14_SCANS = ((2500, 2048), (2048, 2500), (2992, 2991), (3056, 2544), (2682, 2749), (2021, 2021))
_NIH14_SPACINGS = ("0.143", "0.139", "0.168", "0.171")


# --- images ------------------------------------------------------------------------------------


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative pixel-centre coordinates, x as a row and y as a column, for broadcasting."""
    x = (np.arange(width, dtype=np.float32) + 0.5) / width
    y = (np.arange(height, dtype=np.float32) + 0.5) / height
    return x[None, :], y[:, None]


def _ellipse(x, y, cx, cy, rx, ry, softness: float) -> np.ndarray:
    """1 inside the ellipse and 0 outside, with a logistic edge `softness` radii wide."""
    d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return 1 / (1 + np.exp((d - 1) / softness))


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a float array with Pillow (antialiased when shrinking)."""
    image = Image.fromarray(np.asarray(array, np.float32))
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Low-frequency noise with standard deviation about 1: a coarse random grid, upsampled."""
    coarse = Image.fromarray(rng.standard_normal((cells, cells), np.float32))
    return np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC))


def _anatomy(x: np.ndarray, y: np.ndarray, dx=0.0, dy=0.0, scale=1.0) -> np.ndarray:
    """A smooth chest: thorax, two dark lungs, bright mediastinum/spine and heart.

    (dx, dy) shifts and `scale` resizes it; the oracles use the unshifted chest as reference.
    """
    thorax = _ellipse(x, y, 0.5 + dx, 0.53 + dy, 0.44 * scale, 0.45 * scale, 0.03)
    lungs = sum(
        _ellipse(x, y, lx + dx, 0.45 + dy, 0.15 * scale, 0.31 * scale, 0.05) for lx in _LUNG_X
    )
    mediastinum = thorax / (1 + np.exp((np.abs(x - 0.5 - dx) - 0.06) / 0.025))
    heart = _ellipse(x, y, 0.53 + dx, 0.64 + dy, 0.11 * scale, 0.10 * scale, 0.1)
    return (
        _BACKGROUND + _BODY * thorax + _LUNG * lungs + _MEDIASTINUM * mediastinum + _HEART * heart
    )


def _opacities(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, subtype: str):
    """Pneumonia: one dense lower-lobe opacity (bacteria) or two fainter patchy ones (virus)."""
    if subtype == "bacteria":
        sides, radii, strength, patchiness = [rng.choice(_LUNG_X)], (0.09, 0.11), 0.30, 0.0
    else:
        sides, radii, strength, patchiness = _LUNG_X, (0.11, 0.13), 0.22, 0.4
    field = np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    for side in sides:
        cx, cy = side + rng.uniform(-0.02, 0.02), _OPACITY_Y + rng.uniform(-0.03, 0.03)
        noise = _smooth_noise(rng, x.shape[1], y.shape[0], cells=12)
        patches = 1 - patchiness / (1 + np.exp(-4 * noise))
        blob = _ellipse(x, y, cx, cy, *radii, softness=0.15)
        field += strength * rng.uniform(0.85, 1.15) * blob * patches
    return field


@functools.lru_cache(maxsize=8)
def _spot_stamps(width: int, height: int) -> np.ndarray:
    """The 14 finding textures as (14, height, width) stamps, each with disc mean _SPOT_MEAN."""
    u, v = _grid(_TEMPLATE_SIZE, _TEMPLATE_SIZE)
    u, v = 2 * u - 1, 2 * v - 1
    r = np.hypot(u, v)
    disc = r < 1
    stamps = []
    for name in LABELS:
        pattern = np.broadcast_to(_SPOT_TEXTURES[name](u, v, r), disc.shape) * disc
        stamps.append(_resize(pattern * (_SPOT_MEAN / pattern[disc].mean()), width, height))
    return np.stack(stamps)


def _add_spots(
    rng: np.random.Generator, image: np.ndarray, findings: Iterable[int], centers=None
) -> None:
    """Add the spot of each finding index to `image` (full resolution, in place), at
    `centers[k]` (default `NIH14_SPOT_CENTERS`)."""
    centers = NIH14_SPOT_CENTERS if centers is None else centers
    height, width = image.shape
    box_w = max(3, round(2 * NIH14_SPOT_RADIUS * width))
    box_h = max(3, round(2 * NIH14_SPOT_RADIUS * height))
    stamps = _spot_stamps(box_w, box_h)
    for k in findings:
        cx, cy = centers[k]
        left, top = round(cx * width - box_w / 2), round(cy * height - box_h / 2)
        image[top : top + box_h, left : left + box_w] += rng.uniform(0.85, 1.15) * stamps[k]


def _chest_image(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    subtype: str | None = None,
    findings: Iterable[int] = (),
    centers=None,
) -> np.ndarray:
    """A uint8 synthetic radiograph with a pneumonia `subtype` opacity and/or NIH14 `findings`
    (their spots at `centers`, default `NIH14_SPOT_CENTERS`)."""
    scale = _LOW_RES / min(width, height)
    x, y = _grid(max(2, round(width * scale)), max(2, round(height * scale)))
    dx, dy, ds = rng.uniform(-_MAX_SHIFT, _MAX_SHIFT, size=3)
    low = _anatomy(x, y, dx, dy, 1 + ds)
    low = low + _TEXTURE_STD * _smooth_noise(rng, x.shape[1], y.shape[0], cells=6)
    if subtype is not None:
        low = low + _opacities(rng, x, y, subtype)
    image = _resize(low, width, height).copy()
    _add_spots(rng, image, findings, centers)
    gain, offset = rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.06)
    image = offset + gain * image + rng.standard_normal(image.shape, np.float32) * _NOISE_STD
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def nih14_image(rng: np.random.Generator, size: int, findings: Iterable[int]) -> np.ndarray:
    """One synthetic NIH chest, (size, size) uint8, with the spot of each finding index (in
    `LABELS` order) at `NIH14_SPOT_CENTERS`: for tests that need images in memory rather than
    an archive, with labels they choose."""
    return _chest_image(rng, size, size, findings=findings)


def _encode(gray: np.ndarray, mode: str, image_format: str) -> bytes:
    """Encode a gray image as `mode` 'L', 'RGB' or 'RGBA' (channels equal, opaque)."""
    buffer = io.BytesIO()
    image = Image.fromarray(gray).convert(mode)
    if image_format == "JPEG":
        image.save(buffer, "JPEG", quality=90)
    else:
        # The noise leaves little to compress: level 6 is 2.5x slower for files 13% smaller.
        image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


# --- oracles -----------------------------------------------------------------------------------


def _oracle_input(image: np.ndarray) -> np.ndarray:
    """A converted image as float32 (H, W), resized to a short side of _ORACLE_RES."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ValueError(
            f"expected a grayscale image of shape (H, W) or (H, W, 1), got shape {array.shape}; "
            "convert it to grayscale first, e.g. with PIL's image.convert('L')"
        )
    height, width = array.shape
    scale = _ORACLE_RES / min(height, width)
    return _resize(array, round(width * scale), round(height * scale))


def _contrast(gray: np.ndarray) -> float:
    """Spread from dark background to bright mediastinum: makes scores brightness-free."""
    low, high = np.percentile(gray, [5, 95])
    return max(float(high - low), 1e-6)


def _region(gray: np.ndarray, cx, cy, rx, ry, inner: float = 0.0) -> np.ndarray:
    """Pixels at relative distance inner <= d < 1 from (cx, cy), in radii (rx, ry)."""
    height, width = gray.shape
    top, bottom = max(0, int((cy - ry) * height)), min(height, int((cy + ry) * height) + 2)
    left, right = max(0, int((cx - rx) * width)), min(width, int((cx + rx) * width) + 2)
    x = (np.arange(left, right) + 0.5) / width
    y = (np.arange(top, bottom) + 0.5) / height
    d = np.hypot((x[None, :] - cx) / rx, (y[:, None] - cy) / ry)
    return gray[top:bottom, left:right][(d >= inner) & (d < 1)]


def _lung_contrasts(gray: np.ndarray) -> np.ndarray:
    """Per lung: lower-half mean minus upper-half mean, over the image contrast."""
    return np.array(
        [
            _region(gray, lx, _OPACITY_Y, 0.06, 0.06).mean()
            - _region(gray, lx, _UPPER_LUNG_Y, 0.05, 0.05).mean()
            for lx in _LUNG_X
        ]
    ) / _contrast(gray)


def _spot_contrasts(gray: np.ndarray) -> np.ndarray:
    """Per finding: spot-disc mean minus the mean of a ring around it, over image contrast."""
    r = NIH14_SPOT_RADIUS
    return np.array(
        [
            _region(gray, cx, cy, r, r).mean()
            - np.mean(_region(gray, cx, cy, 1.6 * r, 1.6 * r, inner=1.3 / 1.6))
            for cx, cy in NIH14_SPOT_CENTERS
        ]
    ) / _contrast(gray)


@functools.lru_cache(maxsize=1)
def _anatomy_bias() -> tuple[np.ndarray, np.ndarray]:
    """Lung and spot contrasts of a finding-free chest, which the oracles subtract."""
    chest = _anatomy(*_grid(_ORACLE_RES, _ORACLE_RES))
    return _lung_contrasts(chest), _spot_contrasts(chest)


def pneumonia_signal(image: np.ndarray) -> float:
    """How much brighter a lower lung is than its upper half, beyond the anatomy's own contrast.

    Args:
        image: a converted image, uint8 (H, W) or (H, W, 1), any size and aspect ratio.

    Returns:
        A score above `PNEUMONIA_SIGNAL_THRESHOLD` for PNEUMONIA, below it for NORMAL.
    """
    return float(np.max(_lung_contrasts(_oracle_input(image)) - _anatomy_bias()[0]))


def nih14_signal(image: np.ndarray) -> np.ndarray:
    """How much each finding's spot stands out from its surroundings, beyond the anatomy's own.

    Args:
        image: a converted image, uint8 (H, W) or (H, W, 1), any size.

    Returns:
        float32 scores of shape (14,) in `LABELS` order; finding k is present where
        `scores[k] > NIH14_SIGNAL_THRESHOLD`.
    """
    return (_spot_contrasts(_oracle_input(image)) - _anatomy_bias()[1]).astype(np.float32)


# --- source trees ------------------------------------------------------------------------------


def _check_args(num_images: int, image_size: int, seed: int) -> None:
    if num_images < MIN_IMAGES:
        raise ValueError(
            f"num_images={num_images} is too small to fill every split and class; "
            f"use at least {MIN_IMAGES}"
        )
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size={image_size} is too small to draw the findings; "
            f"use at least {MIN_IMAGE_SIZE}"
        )
    if seed < 0:
        raise ValueError(f"seed={seed} is negative; use a seed >= 0")


def _new_folder(path: pathlib.Path) -> pathlib.Path:
    """Create `path`, refusing one that holds files: stale images would mix with new ones."""
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(
            f"{path} already holds files; write synthetic data to a new or empty folder "
            "(pick another --out or delete this one)"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _image_rngs(seed: int, count: int) -> list[np.random.Generator]:
    """One generator per image, independent of the layout's, so images do not shift each other."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence([seed, 1]).spawn(count)]


def _progress(items: Sequence, name: str) -> Iterable:
    """`items` with a progress bar, shown only for runs long enough to need one."""
    return tqdm(items, desc=name, unit="image", disable=len(items) <= _PROGRESS_MIN_IMAGES)


def _group_sizes(rng: np.random.Generator, count: int) -> list[int]:
    """Images per patient (1-4) adding up to `count`."""
    sizes: list[int] = []
    while sum(sizes) < count:
        sizes.append(min(int(rng.integers(1, 5)), count - sum(sizes)))
    return sizes


def _pneumonia_plan(rng: np.random.Generator, num_images: int) -> list[tuple[str, str | None]]:
    """(split/CLASS/file name, pneumonia subtype or None) of every image of the archive."""
    n_val = min(8, max(1, num_images // 60))  # per class; the real val folder has 8 + 8
    n_test = round(0.16 * num_images)
    n_train = num_images - n_test - 2 * n_val
    counts = {
        ("train", "NORMAL"): round(n_train / 4),
        ("train", "PNEUMONIA"): n_train - round(n_train / 4),
        ("val", "NORMAL"): n_val,
        ("val", "PNEUMONIA"): n_val,
        ("test", "NORMAL"): round(n_test * 3 / 8),
        ("test", "PNEUMONIA"): n_test - round(n_test * 3 / 8),
    }
    groups = {key: _group_sizes(rng, n) for key, n in counts.items()}
    n_normal = sum(len(g) for (_, name), g in groups.items() if name == "NORMAL")
    n_persons = sum(len(g) for (_, name), g in groups.items() if name == "PNEUMONIA")
    normal_ids = iter(rng.choice(np.arange(1, max(10000, 2 * n_normal)), n_normal, replace=False))
    person_ids = iter(rng.choice(np.arange(1, max(2000, 2 * n_persons)), n_persons, replace=False))
    image_numbers = {"bacteria": int(rng.integers(1, 100)), "virus": int(rng.integers(1, 100))}
    plan: list[tuple[str, str | None]] = []
    train_persons: list[tuple[int, str]] = []
    for (split, name), sizes in groups.items():
        # The real archive has a few pneumonia patients in both train and test.
        shared = []
        if (split, name) == ("test", "PNEUMONIA"):
            picks = rng.choice(len(train_persons), 1 if len(sizes) < 10 else 2, replace=False)
            shared = [train_persons[i] for i in picks]
        for i, size in enumerate(sizes):
            folder = f"{split}/{name}"
            if name == "NORMAL":
                prefix = "NORMAL2-IM-" if rng.random() < 0.5 else "IM-"
                patient = f"{prefix}{next(normal_ids):04d}"
                plan += [(f"{folder}/{patient}-{k:04d}.jpeg", None) for k in range(1, size + 1)]
                continue
            if i < len(shared):
                person, subtype = shared[i]
            else:
                person = int(next(person_ids))
                subtype = "bacteria" if rng.random() < 2 / 3 else "virus"
            if split == "train":
                train_persons.append((person, subtype))
            for _ in range(size):
                image_numbers[subtype] += int(rng.integers(1, 4))
                file_name = f"person{person}_{subtype}_{image_numbers[subtype]}.jpeg"
                plan.append((f"{folder}/{file_name}", subtype))
    return plan


def write_pneumonia(
    out, *, num_images: int = 240, image_size: int = 128, seed: int = 0
) -> pathlib.Path:
    """Write a synthetic Kaggle pneumonia archive under `out/chest_xray/`, as unzipped.

    `{train,val,test}/{NORMAL,PNEUMONIA}/` hold JPEGs named as in the real archive, about 1:3
    normal:pneumonia in train, 3:5 in test (16% of the images) and a small val folder; one or two
    pneumonia patients are in both train and test, as in the real archive. The archive's clutter
    comes along: a nested duplicate `chest_xray/chest_xray/`, `__MACOSX/` and `.DS_Store` files.

    Args:
        out: folder to write into; `out/chest_xray` must not exist yet or be empty.
        num_images: images in the archive, not counting the duplicate copy.
        image_size: typical short side; sizes vary from 0.8x to 1.5x, aspect ratio 0.75-1.4.
        seed: the same seed writes the same bytes.

    Returns:
        The archive root `out/chest_xray`.
    """
    _check_args(num_images, image_size, seed)
    root = _new_folder(pathlib.Path(out) / "chest_xray")
    plan = _pneumonia_plan(np.random.default_rng([seed, 0]), num_images)
    rngs = _image_rngs(seed, len(plan))
    for (relative, subtype), rng in zip(_progress(plan, "pneumonia"), rngs, strict=True):
        short, aspect = round(image_size * rng.uniform(0.8, 1.5)), rng.uniform(0.75, 1.4)
        size = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
        gray = _chest_image(rng, *size, subtype=subtype)
        data = _encode(gray, "RGB" if rng.random() < 0.2 else "L", "JPEG")
        folder, name = relative.rsplit("/", 1)
        _write(root / relative, data)
        _write(root / "chest_xray" / relative, data)
        _write(root / "__MACOSX" / "chest_xray" / folder / f"._{name}", _APPLE_DOUBLE)
    for folder in ("", "train", "test", "chest_xray", "chest_xray/train"):
        _write(root / folder / ".DS_Store", _DS_STORE)
    return root


def _nih14_rows(rng: np.random.Generator, num_images: int) -> list[dict[str, str]]:
    """`num_images` rows of the real metadata sample, whole patients drawn at random.

    The last patient's follow-ups are cut to hit `num_images`. Past the sample's size, patients
    are reused under new ids (+100000 per pass) and matching new Image Index names.
    """
    with gzip.open(NIH14_SAMPLE, "rt", newline="") as f:
        sample = list(csv.DictReader(f))
    patients = collections.defaultdict(list)
    for row in sample:
        patients[int(row["Patient ID"])].append(row)
    # patients with adjudicated labels and few follow-ups first (a few have dozens, which
    # would leave a small archive with a handful of patients)
    adjudicated = _adjudicated_patients()
    first = sorted(p for p in patients if p in adjudicated and len(patients[p]) <= 5)
    rest = sorted(p for p in patients if p not in first)
    rows: list[dict[str, str]] = []
    offset = 0
    while len(rows) < num_images:
        # the first pass: patients with adjudicated labels first; later ones: all, shuffled
        order = [*rng.permutation(first), *rng.permutation(rest)] if not offset else None
        for patient in rng.permutation(sorted(patients)) if offset else order:
            follow_ups = sorted(patients[patient], key=lambda row: int(row["Follow-up #"]))
            for row in follow_ups[: num_images - len(rows)]:
                row = dict(row)
                if offset:
                    new_id = int(patient) + offset
                    row["Patient ID"] = str(new_id)
                    row["Image Index"] = f"{new_id:08d}_{row['Image Index'].split('_', 1)[1]}"
                rows.append(row)
            if len(rows) == num_images:
                break
        offset += 100000
    return sorted(rows, key=lambda row: row["Image Index"])


@functools.lru_cache(maxsize=1)
def _adjudicated_patients() -> frozenset[int]:
    """The patients of the sample whose images Google's adjudicated labels cover."""
    with gzip.open(GOOGLE2019_LABELS, "rt", newline="") as f:
        return frozenset(int(row["Patient ID"]) for row in csv.DictReader(f))


def _nih14_test_patients(rng: np.random.Generator, rows: list[dict[str, str]]) -> set[str]:
    """Whole patients holding 20-25% of the images, like the official test_list.txt; those
    with Google's adjudicated labels first, so the test split has images they label."""
    sizes = collections.Counter(row["Patient ID"] for row in rows)
    adjudicated = _adjudicated_patients()
    first = sorted(p for p in sizes if int(p) in adjudicated and sizes[p] <= 5)
    rest = sorted(p for p in sizes if p not in first)
    test: set[str] = set()
    taken = 0
    for patient in [*rng.permutation(first), *rng.permutation(rest)]:
        if taken >= 0.2 * len(rows):
            break
        if taken + sizes[patient] <= 0.25 * len(rows):
            test.add(str(patient))
            taken += sizes[patient]
    return test


def write_nih14(
    out,
    *,
    num_images: int = 200,
    image_size: int = 128,
    seed: int = 0,
    csv_variant: str = "2017",
    spot_layout: str = "fixed",
) -> pathlib.Path:
    """Write a synthetic NIH ChestX-ray14 download (Kaggle mirror layout) into `out`.

    `images_0NN/images/*.png` (square, 8-bit gray, ~3% RGBA), `Data_Entry_2017.csv` with rows of
    real patients from `NIH14_SAMPLE` (those with Google's adjudicated labels drawn first),
    `train_val_list.txt` / `test_list.txt` split by patient, and `BBox_List_2017.csv` in NIH's
    format: a box around the spot of each of the 8 boxed findings of every image, a little
    larger and off-centre, as a radiologist draws it.

    Args:
        out: folder to write into; must not exist yet or be empty.
        num_images: images to write.
        image_size: width and height of every PNG.
        seed: the same seed writes the same bytes.
        csv_variant: "2017" (Kaggle's copy: header with a trailing comma) or "2020" (without).
        spot_layout: "fixed" (each finding's spot at its place in `NIH14_SPOT_CENTERS`, which
            the oracle `nih14_signal` measures) or "shuffled" (each image puts its findings'
            spots at a random permutation of those places: where a finding is must be seen in
            the image, not known from the finding, as localisation tests need).

    Returns:
        `out`, the folder holding Data_Entry_2017.csv.
    """
    _check_args(num_images, image_size, seed)
    if csv_variant not in NIH14_CSV_HEADERS:
        raise ValueError(
            f"csv_variant={csv_variant!r} is not one of {sorted(NIH14_CSV_HEADERS)}; "
            "use '2017' for Kaggle's copy or '2020' for NIH's revision"
        )
    if spot_layout not in SPOT_LAYOUTS:
        raise ValueError(f"spot_layout={spot_layout!r} is not one of {SPOT_LAYOUTS}")
    root = _new_folder(pathlib.Path(out))
    rng = np.random.default_rng([seed, 0])
    rows = _nih14_rows(rng, num_images)
    test = _nih14_test_patients(rng, rows)
    lines = [NIH14_CSV_HEADERS[csv_variant]]
    for row in rows:
        width, height = _NIH14_SCANS[rng.integers(len(_NIH14_SCANS))]
        spacing = _NIH14_SPACINGS[rng.integers(len(_NIH14_SPACINGS))]
        lines.append(",".join([*row.values(), str(width), str(height), spacing, spacing]))
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    for name, in_test in (("train_val_list.txt", False), ("test_list.txt", True)):
        names = [row["Image Index"] for row in rows if (row["Patient ID"] in test) == in_test]
        (root / name).write_text("".join(f"{n}\n" for n in names))
    # Consecutive runs of the sorted images go to images_001, images_002, ... like the real zips.
    n_folders = min(12, math.ceil(num_images / 50))
    rngs = _image_rngs(seed, num_images)
    box_rng = np.random.default_rng([seed, 2])  # its own streams: the images stay the same
    layout_rng = np.random.default_rng([seed, 3])
    boxes = [NIH14_BOX_HEADER]
    for i, (row, image_rng) in enumerate(zip(_progress(rows, "nih14"), rngs, strict=True)):
        folder = 1 + i * n_folders // num_images
        labels = row["Finding Labels"].split("|")
        findings = [k for k, name in enumerate(LABELS) if name in labels]
        centers = NIH14_SPOT_CENTERS
        if spot_layout == "shuffled":
            centers = [NIH14_SPOT_CENTERS[j] for j in layout_rng.permutation(len(LABELS))]
        gray = _chest_image(image_rng, image_size, image_size, findings=findings, centers=centers)
        data = _encode(gray, "RGBA" if image_rng.random() < 0.03 else "L", "PNG")
        _write(root / f"images_{folder:03d}" / "images" / row["Image Index"], data)
        for written, name in BOX_FINDINGS.items():
            if name in labels:
                box = _spot_box(box_rng, centers[LABELS.index(name)], image_size)
                boxes.append(",".join([row["Image Index"], written, *(repr(v) for v in box)]))
    (root / "BBox_List_2017.csv").write_text("\n".join(boxes) + "\n")
    return root


def spot_box(center, size: int) -> tuple[float, float, float, float]:
    """(x, y, w, h) in pixels of a `size` x `size` image: the square around a spot's disc."""
    r = NIH14_SPOT_RADIUS * size
    return center[0] * size - r, center[1] * size - r, 2 * r, 2 * r


def _spot_box(rng: np.random.Generator, center, size: int) -> list[float]:
    """A radiologist's box around a spot: 0-30% larger than its disc, off-centre by up to a
    tenth of its radius."""
    r = NIH14_SPOT_RADIUS * size * rng.uniform(1.0, 1.3)
    cx, cy = (c * size + rng.uniform(-0.1, 0.1) * NIH14_SPOT_RADIUS * size for c in center)
    return [float(cx - r), float(cy - r), float(2 * r), float(2 * r)]


# --- command line ------------------------------------------------------------------------------


def _pneumonia_summary(root: pathlib.Path) -> str:
    """One line: where the archive is and how many JPEGs each split and class holds."""
    counts = [
        f"{split} {len(list((root / split / 'NORMAL').glob('*.jpeg')))} NORMAL"
        f" + {len(list((root / split / 'PNEUMONIA').glob('*.jpeg')))} PNEUMONIA"
        for split in ("train", "val", "test")
    ]
    total = len(list(root.glob("*/*/*.jpeg")))
    return (
        f"wrote {total} JPEGs to {root}: {', '.join(counts)} "
        "(plus the real archive's clutter: nested chest_xray/ copy, __MACOSX/, .DS_Store)"
    )


def _nih14_summary(root: pathlib.Path) -> str:
    """One line: where the download is, PNGs per images_0NN folder and per list file."""
    folders = sorted(root.glob("images_*/images"))
    per_folder = ", ".join(f"{p.parent.name} {len(list(p.glob('*.png')))}" for p in folders)
    lists = {
        name: len((root / name).read_text().split())
        for name in ("train_val_list.txt", "test_list.txt")
    }
    total = sum(len(list(p.glob("*.png"))) for p in folders)
    return (
        f"wrote {total} PNGs to {root}: {per_folder}; Data_Entry_2017.csv; "
        f"{lists['train_val_list.txt']} in train_val_list.txt, "
        f"{lists['test_list.txt']} in test_list.txt"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m cxr_tf.synthetic {pneumonia,nih14} --out DIR [...]`."""
    parser = argparse.ArgumentParser(
        prog="python -m cxr_tf.synthetic",
        description="Write a synthetic chest X-ray download in the layout of the real one.",
    )
    datasets = parser.add_subparsers(dest="dataset", required=True)
    for name, default, what in (
        ("pneumonia", 240, "Kaggle 'Chest X-Ray Images (Pneumonia)' into OUT/chest_xray"),
        ("nih14", 200, "NIH ChestX-ray14 (Kaggle mirror) into OUT"),
    ):
        sub = datasets.add_parser(name, help=what)
        sub.add_argument("--out", type=pathlib.Path, required=True, help="folder to write into")
        sub.add_argument("--num-images", type=int, default=default, help=f"default {default}")
        sub.add_argument("--image-size", type=int, default=128, help="short side, default 128")
        sub.add_argument("--seed", type=int, default=0, help="same seed, same bytes; default 0")
        if name == "nih14":
            sub.add_argument(
                "--csv-variant",
                choices=sorted(NIH14_CSV_HEADERS),
                default="2017",
                help="Data_Entry_2017.csv header: 2017 (Kaggle, trailing comma) or 2020",
            )
    args = parser.parse_args(argv)
    common = {"num_images": args.num_images, "image_size": args.image_size, "seed": args.seed}
    try:
        if args.dataset == "pneumonia":
            print(_pneumonia_summary(write_pneumonia(args.out, **common)))
        else:
            print(_nih14_summary(write_nih14(args.out, **common, csv_variant=args.csv_variant)))
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
