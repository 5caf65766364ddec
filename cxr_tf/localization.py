"""Grad-CAM maps scored against NIH's radiologist boxes, as Wang et al. (CVPR 2017) did.

`BBox_List_2017.csv` gives 984 boxes (x, y, w, h) for 8 findings on 880 images, in the pixels
of the PNGs NIH released. Each box whose image is in the evaluated split is mapped into the
model's input: relative to its source image (whose size the converter kept in
`source_sizes.json`), then through the evaluation transform (the image squashed to a square
of side ceil(S / crop_fraction), its centre S x S kept). The finding's Grad-CAM map on that
input, upsampled to S x S, is then scored two ways:

- **pointing game**: a hit when the map's maximum falls inside the box; beside it, the same
  for two maps that know nothing of the image: one pointing at the centre of the input, one at
  the centre of the mean box of that finding over the other images of the box file (leave one
  out: a model that only learnt where a finding usually is would score this);
- **IoBB** (Wang et al.): the predicted box is the bounding box of the connected region of
  the map at or above half its maximum that holds the maximum; IoBB is the area of its overlap
  with the radiologist's box over its own area, and the accuracy at T is the share of boxes
  with IoBB > T, for T = 0.1 ... 0.7.

A box that cannot be scored (image not in the split or not converted, finding the model does
not output, box outside the image or outside the centre crop) is counted with its reason.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from cxr_tf import storage
from cxr_tf.nih14 import BOX_FINDINGS, RELEASED_SIZE

IOBB_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
MAP_THRESHOLD = 0.5  # of the map's maximum: the region the predicted box bounds
_HEADER = ("Image Index", "Finding Label")


@dataclass(frozen=True)
class Box:
    """One radiologist box, in the pixels of its source PNG."""

    image_id: str
    finding: str  # as the labels spell it (Infiltration)
    x: float
    y: float
    w: float
    h: float
    line: int


def read_boxes(path) -> tuple[list[Box], list[dict]]:
    """`BBox_List_2017.csv` (gzip too, a local path or a URL) as boxes and rejected rows.

    The header as NIH ships it (`Bbox [x,y,w,h]` split into four columns, trailing empty ones)
    is checked by its first two names; the coordinates are read by position. Every data row is
    either a box or a rejected row with its reason."""
    path = storage.path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"--boxes {str(path)!r} does not exist; give NIH's "
            "BBox_List_2017.csv (it ships beside Data_Entry_2017.csv)"
        )
    rows = list(csv.reader(io.StringIO(read_text(path, "--boxes", "BBox_List_2017.csv"))))
    header = [h.strip() for h in rows[0]] if rows else []
    if tuple(header[:2]) != _HEADER:
        raise ValueError(
            f"--boxes {str(path)!r} is not NIH's box list: its header is {header[:3]}, expected "
            "'Image Index,Finding Label,Bbox [x,y,w,h]' (BBox_List_2017.csv)"
        )
    boxes, rejected = [], []
    for line, fields in enumerate(rows[1:], start=2):
        if not any(f.strip() for f in fields):
            continue
        where = f"{path.name}:{line}"
        if len(fields) < 6:
            rejected.append({"row": where, "reason": "row too short (needs x, y, w, h)"})
            continue
        written = fields[1].strip()
        if written not in BOX_FINDINGS:
            rejected.append({"row": where, "reason": f"finding {written!r} is not one NIH boxed"})
            continue
        try:
            x, y, w, h = (float(v) for v in fields[2:6])
        except ValueError:
            rejected.append({"row": where, "reason": f"coordinates are not numbers: {fields[2:6]}"})
            continue
        if not (w > 0 and h > 0) or not all(map(math.isfinite, (x, y, w, h))):
            rejected.append({"row": where, "reason": f"empty or invalid box {fields[2:6]}"})
            continue
        boxes.append(Box(fields[0].strip(), BOX_FINDINGS[written], x, y, w, h, line))
    return boxes, rejected


def read_text(path, flag: str, expected: str) -> str:
    """A CSV's text, gunzipped where it is gzip; one line naming the flag where it is not text."""
    raw = path.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{flag} {str(path)!r} is not a CSV file (plain or gzipped): {err}; give {expected}"
        ) from None


def input_box(box: Box, source_hw, image_size: int, crop_fraction: float):
    """(x0, y0, x1, y1) of `box` in the model's input pixels, clipped to it; None where nothing
    of it is inside the input (the centre crop cut it off)."""
    side = math.ceil(image_size / crop_fraction - 1e-9)
    top = (side - image_size) // 2
    sh, sw = source_hw
    x0, x1 = (box.x / sw * side - top, (box.x + box.w) / sw * side - top)
    y0, y1 = (box.y / sh * side - top, (box.y + box.h) / sh * side - top)
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, image_size), min(y1, image_size)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _input_point(u: float, v: float, image_size: int, crop_fraction: float):
    """A point given relative to the source image, in the model's input pixels."""
    side = math.ceil(image_size / crop_fraction - 1e-9)
    top = (side - image_size) // 2
    return u * side - top, v * side - top


def _inside(point, box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def predicted_box(cam: np.ndarray):
    """(x0, y0, x1, y1) of the connected region at >= MAP_THRESHOLD of the map's maximum that
    holds the maximum (8-connected), in the map's pixels; None for an empty map."""
    from scipy import ndimage

    peak = float(cam.max())
    if peak <= 0:
        return None
    regions, _ = ndimage.label(cam >= MAP_THRESHOLD * peak, structure=np.ones((3, 3)))
    py, px = np.unravel_index(int(np.argmax(cam)), cam.shape)
    rows, cols = np.nonzero(regions == regions[py, px])
    return float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)


def iobb(pred, truth) -> float:
    """Intersection over the predicted box's area (Wang et al.); 0 without a prediction."""
    if pred is None:
        return 0.0
    w = min(pred[2], truth[2]) - max(pred[0], truth[0])
    h = min(pred[3], truth[3]) - max(pred[1], truth[1])
    area = (pred[2] - pred[0]) * (pred[3] - pred[1])
    return float(max(w, 0.0) * max(h, 0.0) / area) if area > 0 else 0.0


def score_map(cam: np.ndarray, truth) -> dict:
    """The pointing game, IoBB and the share of the map inside the box, for one S x S map."""
    peak = float(cam.max())
    if peak > 0:
        py, px = np.unravel_index(int(np.argmax(cam)), cam.shape)
        hit = _inside((px + 0.5, py + 0.5), truth)
    else:
        hit = False
    pred = predicted_box(cam)
    ys, xs = np.mgrid[0 : cam.shape[0], 0 : cam.shape[1]] + 0.5
    inside = (xs >= truth[0]) & (xs <= truth[2]) & (ys >= truth[1]) & (ys <= truth[3])
    total = float(cam.sum())
    return {
        "hit": bool(hit),
        "iobb": iobb(pred, truth),
        "predicted_box": pred,
        "inside_share": float(cam[inside].sum() / total) if total > 0 else 0.0,
        "empty": peak <= 0,
    }


def _mean_centres(boxes: list[Box], sizes: dict) -> dict:
    """Per finding, per image: (sum of relative box centres, count) of that image's boxes,
    for the leave-one-out mean box."""
    out = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0]))
    for b in boxes:
        sh, sw = sizes.get(b.image_id, (RELEASED_SIZE, RELEASED_SIZE))
        acc = out[b.finding][b.image_id]
        acc[0] += (b.x + b.w / 2) / sw
        acc[1] += (b.y + b.h / 2) / sh
        acc[2] += 1
    return out


def localize(
    model,
    data_dir,
    split: str,
    info,
    boxes: list[Box],
    rejected: list[dict],
    *,
    class_names,
    batch_size: int = 32,
) -> tuple[dict, list[dict]]:
    """Score every box of the split (see the module docstring): the `localization` section of
    metrics.json, and the scored cases (input image, map, boxes) for `gallery`.

    Only the images the box list names are read and decoded (the real test split has 25,596
    images for 880 boxed ones); the split they are in is what its records say."""
    from cxr_tf import gradcam
    from cxr_tf.models import input_contract

    contract = input_contract(model)
    size, crop = contract.image_size, contract.crop_fraction
    all_sizes, complete = _source_sizes(info)
    where = {iid: s for s, ids in all_sizes.items() for iid in ids}
    flat_sizes = {iid: tuple(hw) for ids in all_sizes.values() for iid, hw in ids.items()}
    centres = _mean_centres(boxes, flat_sizes)
    skipped = defaultdict(Counter)  # finding -> reason -> count
    wanted = defaultdict(list)
    for b in boxes:
        if b.finding not in class_names:
            skipped[b.finding]["finding is not an output of the model"] += 1
        else:
            wanted[b.image_id].append(b)
    cases, seen, assumed = [], set(), 0
    for images, ids in _images_named(info, split, sorted(wanted), contract, batch_size):
        rows, jobs = [], []
        for i, iid in enumerate(ids):
            iid = iid.decode()
            if iid in seen:  # a duplicate record: each box once
                continue
            seen.add(iid)
            hw = flat_sizes.get(iid)
            if hw is None:
                hw, assumed = (RELEASED_SIZE, RELEASED_SIZE), assumed + 1
            for b in wanted[iid]:
                if b.x + b.w > hw[1] * 1.01 or b.y + b.h > hw[0] * 1.01:
                    skipped[b.finding][f"box outside its {hw[1]}x{hw[0]} source image"] += 1
                    continue
                truth = input_box(b, hw, size, crop)
                if truth is None:
                    skipped[b.finding]["box outside the part the model sees (centre crop)"] += 1
                    continue
                rows.append(i)
                jobs.append((b, truth))
        if not rows:
            continue
        maps = gradcam.heatmap_pairs(
            model,
            images[rows],
            [class_names.index(b.finding) for b, _ in jobs],
            batch_size=batch_size,
        )
        for row, (b, truth), cam in zip(rows, jobs, maps, strict=True):
            big = gradcam.upsample(cam, size)
            case = {"box": b, "truth": truth, "cam": cam, **score_map(big, truth)}
            image = np.asarray(images[row])[..., 0]  # uint8, or float32 in [0, 1]
            case["image"] = (
                image if image.dtype == np.uint8 else (image * 255 + 0.5).astype(np.uint8)
            )
            case["centre_hit"] = _inside((size / 2, size / 2), truth)
            case["mean_box_hit"] = _mean_box_hit(centres, b, truth, size, crop)
            cases.append(case)
    for iid, bs in wanted.items():
        if iid in seen:
            continue
        if iid in where and where[iid] != split:
            reason = f"image in the {where[iid]} split, not {split}"
        elif complete:
            reason = "image not in the conversion"
        else:  # sizes of part of the conversion unknown: it may be in another split
            reason = f"image not in the {split} split"
        for b in bs:
            skipped[b.finding][reason] += 1
    return _summary(boxes, rejected, cases, skipped, complete, assumed), cases


def _images_named(info, split: str, ids: list[str], contract, batch_size: int):
    """Batches of (model inputs, image ids) of the records of `split` whose id is in `ids`,
    filtered before decoding, in record order."""
    import tensorflow as tf

    from cxr_tf.input_pipeline import eval_input

    if not ids:
        return
    wanted = tf.constant(ids)
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "image_id": tf.io.FixedLenFeature([], tf.string),
    }

    def decode(ex):
        image = tf.io.decode_image(ex["image"], channels=1, expand_animations=False)
        image = eval_input(
            image, contract.image_size, contract.crop_fraction, contract.channels,
            contract.input_dtype,
        )  # fmt: skip
        return image, ex["image_id"]

    ds = tf.data.TFRecordDataset(info.files(split))
    ds = ds.map(lambda record: tf.io.parse_single_example(record, spec))
    ds = ds.filter(lambda ex: tf.reduce_any(tf.equal(ex["image_id"], wanted)))
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    yield from ds.batch(batch_size).prefetch(2).as_numpy_iterator()


def _mean_box_hit(centres, box: Box, truth, size, crop):
    """Whether the centre of the finding's mean box over the other images hits; None when no
    other image has a box of that finding."""
    per_image = centres[box.finding]
    su = sum(v[0] for k, v in per_image.items() if k != box.image_id)
    sv = sum(v[1] for k, v in per_image.items() if k != box.image_id)
    n = sum(v[2] for k, v in per_image.items() if k != box.image_id)
    if n == 0:
        return None
    return _inside(_input_point(su / n, sv / n, size, crop), truth)


def _source_sizes(info) -> tuple[dict, bool]:
    """{split: {image_id: (height, width)}} from the conversion's source_sizes.json, and whether
    it covers every image (a conversion made, or resumed, from shards written before cxr_tf
    kept sizes covers part or none: those images get NIH's released 1024 x 1024)."""
    import json

    from cxr_tf.convert import SOURCE_SIZES_NAME

    path = storage.path(info.dataset_dir) / SOURCE_SIZES_NAME
    if not path.is_file():
        return {}, False
    raw = json.loads(path.read_text())
    sizes = {s: {k: tuple(v) for k, v in ids.items()} for s, ids in raw["sizes"].items()}
    return sizes, bool(raw.get("complete"))


def _rates(cases: list[dict]) -> dict:
    def share(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    return {
        "pointing_game": share([c["hit"] for c in cases]),
        "pointing_game_centre": share([c["centre_hit"] for c in cases]),
        "pointing_game_mean_box": share([c["mean_box_hit"] for c in cases]),
        "iobb_accuracy": {f"{t:g}": share([c["iobb"] > t for c in cases]) for t in IOBB_THRESHOLDS},
        "mean_iobb": share([c["iobb"] for c in cases]),
        "empty_maps": sum(c["empty"] for c in cases),
    }


def _summary(boxes, rejected, cases, skipped, complete, assumed) -> dict:
    by_finding = defaultdict(list)
    for c in cases:
        by_finding[c["box"].finding].append(c)
    total = Counter(b.finding for b in boxes)
    out = {"findings": {}}
    for finding in sorted(total):
        reasons = dict(skipped[finding])
        out["findings"][finding] = {
            "boxes": total[finding],
            "scored": len(by_finding[finding]),
            "skipped": sum(reasons.values()),
            "skipped_reasons": reasons,
            **_rates(by_finding[finding]),
        }
    all_reasons = Counter()
    for reasons in skipped.values():
        all_reasons.update(reasons)
    out["overall"] = {
        "boxes": len(boxes),
        "scored": len(cases),
        "skipped": sum(all_reasons.values()),
        "skipped_reasons": dict(all_reasons),
        "rejected_rows": len(rejected),
        **_rates(cases),
    }
    out["rejected_rows"] = rejected[:20]
    out["map_threshold"] = MAP_THRESHOLD
    out["overall"]["assumed_size"] = assumed
    out["source_sizes"] = (
        "from the conversion"
        if not assumed
        else f"{assumed} images assumed {RELEASED_SIZE}x{RELEASED_SIZE} (NIH's release): "
        "converted before cxr_tf kept each file's size; convert again with --overwrite to use "
        "their own"
    )
    return out


def format_table(loc: dict) -> str:
    """Wang et al.'s layout: a row per IoBB threshold, a column per finding, then the
    pointing game with its two baselines, and the counts."""
    names = [n for n, f in loc["findings"].items() if f["scored"]]
    short = [n[:8] for n in names]
    lines = ["  localisation against the radiologists' boxes (Grad-CAM):"]
    lines.append(f"  {'':<18}" + "".join(f"{s:>9}" for s in short) + f"{'overall':>9}")

    def row(label, get):
        cells = [get(loc["findings"][n]) for n in names] + [get(loc["overall"])]
        lines.append(f"  {label:<18}" + "".join(f"{_pct(v):>9}" for v in cells))

    for t in IOBB_THRESHOLDS:
        row(f"acc IoBB>{t:g}", lambda f, t=t: f["iobb_accuracy"][f"{t:g}"])
    row("pointing game", lambda f: f["pointing_game"])
    row("  centre baseline", lambda f: f["pointing_game_centre"])
    row("  mean-box base.", lambda f: f["pointing_game_mean_box"])
    lines.append(
        f"  {'boxes scored':<18}"
        + "".join(f"{loc['findings'][n]['scored']:>9}" for n in names)
        + f"{loc['overall']['scored']:>9}"
    )
    o = loc["overall"]
    if o["skipped"] or o["rejected_rows"]:
        reasons = "; ".join(f"{v} {k}" for k, v in sorted(o["skipped_reasons"].items()))
        lines.append(
            f"  of {o['boxes']} boxes, {o['skipped']} not scored ({reasons})"
            + (f"; {o['rejected_rows']} rows of the file rejected" if o["rejected_rows"] else "")
        )
    return "\n".join(lines)


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def gallery(cases: list[dict], path, *, count: int = 4) -> None:
    """A PNG of the `count` best and worst cases (by the share of the map inside the box):
    the model's input, the map over it, the radiologist's box (green) and the predicted box
    (white, dashed), the maximum marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxr_tf import gradcam

    if not cases:
        return
    ranked = sorted(cases, key=lambda c: (c["inside_share"], c["iobb"]), reverse=True)
    k = min(count, max(1, len(ranked) // 2))
    picked = [("best", ranked[:k]), ("worst", ranked[::-1][:k])]
    fig, axes = plt.subplots(
        2, k, figsize=(2.8 * k + 0.4, 7.0), squeeze=False, layout="constrained"
    )
    heat = matplotlib.colormaps["jet"]
    for r, (label, chosen) in enumerate(picked):
        for j in range(k):
            ax = axes[r][j]
            ax.set(xticks=[], yticks=[])
            if j >= len(chosen):
                ax.axis("off")
                continue
            c = chosen[j]
            image = np.asarray(c["image"], np.float32) / 255.0
            size = image.shape[0]
            extent = (0, size, size, 0)
            ax.imshow(image, cmap="gray", vmin=0, vmax=1, extent=extent)
            cam = gradcam.upsample(c["cam"], size)
            rgba = heat(cam)
            rgba[..., 3] = 0.6 * np.clip(cam, 0, 1)  # cool parts of the map leave the image be
            ax.imshow(rgba, extent=extent)
            x0, y0, x1, y1 = c["truth"]
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.6))
            if c["predicted_box"] is not None:
                p0, q0, p1, q1 = c["predicted_box"]
                dashed = {"fill": False, "ec": "white", "lw": 1.2, "ls": "--"}
                ax.add_patch(plt.Rectangle((p0, q0), p1 - p0, q1 - q0, **dashed))
            ax.set_xlim(0, size)
            ax.set_ylim(size, 0)
            verdict = "hit" if c["hit"] else ("map empty" if c["empty"] else "miss")
            ax.set_title(f"{c['box'].finding}\n{c['box'].image_id}", fontsize=8)
            ax.set_xlabel(f"{verdict}, IoBB {c['iobb']:.2f}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{label} {k}", fontsize=10)
    fig.suptitle(
        "Grad-CAM against the radiologists' boxes (green), ranked by the share of the map "
        "inside the box\ndashed: the box of the map's region at half its peak (IoBB)",
        fontsize=9,
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format="png")
    plt.close(fig)
    storage.write_bytes(path, buffer.getvalue())
