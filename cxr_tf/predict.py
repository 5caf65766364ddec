"""Prediction from image files: top-k findings with probabilities, optionally Grad-CAM overlays.

    python -m cxr_tf.predict --model runs/demo/saved_model xray1.png scans/ [--top-k 5] [--json]
        [--gradcam out/]

`--model` is an exported SavedModel folder (cxr_tf.export), a `.keras` file, or a run folder.
Images are JPEG or PNG files, or DICOM (`.dcm`, or any name with DICOM's "DICM" header, as PACS
exports often have; see `cxr_tf.dicom`; needs `pip install 'cxr_tf[dicom]'`); folders are
searched recursively. A file that cannot be read
gets its own error line (an `error` field with `--json`), the others are still predicted, and
the exit status is 1 when any file failed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_tf import dicom, storage
from cxr_tf.cli import add_verbose, fail, quiet_tensorflow

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".dcm"}
_PREDICT_HINT = (
    "give the run folder or its SavedModel as --model, or copy the run's thresholds.json beside "
    "the .keras file"
)


@dataclass
class Result:
    """One file's prediction, or its error."""

    file: str
    findings: list[dict] = field(default_factory=list)  # name, probability, threshold, positive
    error: str | None = None
    gradcam: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {"file": self.file, "findings": self.findings}
        if self.error:
            out["error"] = self.error
        if self.gradcam:
            out["gradcam"] = self.gradcam
        return out


def list_images(inputs) -> list[Path]:
    """Files given, plus image files found recursively in folders given: JPEG, PNG and `.dcm` by
    name, and DICOM images under any other name by their header (`dicom.is_dicom_image`, which
    opens each such file: slow only on a network share full of other files). Hidden files and
    folders and `__MACOSX` inside a folder given are skipped; the folder's own path may be
    anything (`../scans`, `~/.cache/x`). Files and folders may be URLs (`gs://...`); there DICOM
    is found by its `.dcm` name only (the header test would download every file)."""
    files = []
    for item in map(storage.path, inputs):
        if item.is_dir():
            remote = storage.is_url(item)
            files += sorted(
                p
                for p in item.rglob("*")
                if not any(part.startswith(".") or part == "__MACOSX" for part in _below(p, item))
                and p.is_file()
                and (p.suffix.lower() in IMAGE_SUFFIXES or (not remote and dicom.is_dicom_image(p)))
            )
        else:
            files.append(item)
    return files


def _below(p, folder) -> list[str]:
    """The parts of `p` below `folder` (a Path or a URL)."""
    if storage.is_url(folder):
        return str(p)[len(str(folder)) :].strip("/").split("/")
    return list(p.relative_to(folder).parts)


def read_image_bytes(path: Path) -> bytes:
    """Encoded image bytes of a file; DICOM is converted to PNG. Raises ValueError with reason."""
    if not path.is_file():
        raise ValueError("no such file")
    try:
        data = path.read_bytes()
        if path.suffix.lower() == ".dcm" or dicom.has_magic(data):
            return dicom.to_png(io.BytesIO(data) if storage.is_url(path) else path)
    except OSError as err:  # permissions, a file removed meanwhile, an I/O error
        raise ValueError(f"cannot read the file: {err.strerror or err}") from err
    if not data:
        raise ValueError("empty file (0 bytes)")
    return data


class Predictor:
    """Loads a SavedModel, `.keras` file or run folder and predicts encoded images."""

    def __init__(self, model_path):
        from cxr_tf.export import (
            LABELS_ASSET,
            MODEL_ASSET,
            calibration_for,
            find_thresholds,
            label_info,
            missing_metadata,
            stand_ins_for,
        )

        path = storage.path(model_path)
        if (
            path.is_dir()
            and (path / "best.keras").is_file()
            and not (path / "saved_model.pb").is_file()
        ):
            path = path / "best.keras"  # a run folder
        self.serving = None
        self.keras_path = None
        self._keras = None
        self._forward = None
        self.calibration = None  # a SavedModel applies its own
        if path.is_dir() and (path / "saved_model.pb").is_file():
            import tensorflow as tf

            self.serving = tf.saved_model.load(str(path)).signatures["serving_default"]
            meta = json.loads((path / "assets" / LABELS_ASSET).read_text())
            self.label_names, self.thresholds = meta["label_names"], meta["thresholds"]
            self.stand_ins = meta.get("stand_ins") or [None] * len(self.thresholds)
            keras_asset = path / "assets" / MODEL_ASSET
            self.keras_path = keras_asset if keras_asset.is_file() else None
        elif path.is_file() and path.suffix == ".keras":
            self.keras_path = path
            model = self.keras_model()
            thresholds_file = find_thresholds(path)
            if warning := missing_metadata(path, thresholds_file, _PREDICT_HINT):
                print(warning, file=sys.stderr, flush=True)
            self.label_names, self.thresholds, _ = label_info(
                model.output_shape[-1], thresholds_file
            )
            self.calibration = calibration_for(model.output_shape[-1], thresholds_file)
            self.stand_ins = stand_ins_for(model.output_shape[-1], thresholds_file)
        else:
            raise FileNotFoundError(
                f"--model {str(model_path)!r} is not a SavedModel folder, a .keras file or a run "
                "folder with best.keras"
            )

    def keras_model(self):
        if self._keras is None:
            if self.keras_path is None:
                raise ValueError(
                    "this SavedModel carries no assets/model.keras (needed for Grad-CAM)"
                )
            from cxr_tf.models import load_model

            self._keras = load_model(self.keras_path)
        return self._keras

    def forward(self):
        """The Keras model's compiled forward pass (`inference.ForwardPass`), one image a call."""
        if self._forward is None:
            from cxr_tf.inference import ForwardPass

            self._forward = ForwardPass(self.keras_model(), batch_size=1)
        return self._forward

    def preprocess(self, data: bytes) -> np.ndarray:
        """The evaluation transform of the model's contract, as a (1, S, S, C) batch."""
        from cxr_tf.input_pipeline import decode, eval_input
        from cxr_tf.models import input_contract

        c = input_contract(self.keras_model())
        image = eval_input(decode(data), c.image_size, c.crop_fraction, c.channels, c.input_dtype)
        return image.numpy()[None]

    def probabilities(self, data: bytes) -> np.ndarray:
        """(C,) probabilities for one encoded image; raises ValueError for non-image bytes."""
        import tensorflow as tf

        try:
            if self.serving is not None:
                return self.serving(images=tf.constant([data]))["probabilities"].numpy()[0]
            return self.calibration.apply(self.forward()(self.preprocess(data)))[0]
        except tf.errors.InvalidArgumentError as err:
            raise ValueError(f"not a readable image: {_why_unreadable(data, err)}") from err


def _why_unreadable(data: bytes, err) -> str:
    """The reason in words (Pillow's diagnosis), not TensorFlow's 'Graph execution error'."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except UnidentifiedImageError:
        return f"unknown image format (starts with {data[:8]!r}); give a JPEG, PNG or DICOM file"
    except (OSError, SyntaxError, ValueError) as pil_err:  # truncated or corrupt data
        kind = {b"\xff\xd8": "JPEG", b"\x89P": "PNG"}.get(data[:2], "image")
        return f"a truncated or corrupt {kind} file ({pil_err})"
    lines = [line for line in str(getattr(err, "message", err)).splitlines() if line.strip()]
    detail = next((line for line in reversed(lines) if "Graph execution" not in line), "")
    return detail.strip()[:200] or "TensorFlow cannot decode it"


def predict_files(
    predictor: Predictor, inputs, *, top_k: int = 5, gradcam_dir=None
) -> list[Result]:
    """Predict every image in `inputs` (files and folders); failures become error results."""
    results = []
    for path in list_images(inputs):
        result = Result(str(path))
        try:
            data = read_image_bytes(path)
            probs = predictor.probabilities(data)
        except ValueError as err:
            result.error = str(err)
            results.append(result)
            continue
        order = np.argsort(-probs)[:top_k]
        result.findings = [
            {
                "name": predictor.label_names[i],
                "probability": float(probs[i]),
                "threshold": float(predictor.thresholds[i]),
                "positive": bool(probs[i] >= predictor.thresholds[i]),
                "stand_in": predictor.stand_ins[i],  # why the threshold was not chosen, or None
            }
            for i in order
        ]
        if gradcam_dir is not None:
            out = storage.path(gradcam_dir)
            result.gradcam = _write_gradcams(predictor, data, path, order, probs, out)
        results.append(result)
    return results


def _write_gradcams(predictor, data, path, classes, probs, out_dir: Path) -> list[str]:
    """One figure per class: the whole image as given, its Grad-CAM over the part the model
    saw, and the finding's probability and threshold in the title."""
    from PIL import Image

    from cxr_tf import gradcam
    from cxr_tf.models import input_contract

    out_dir.mkdir(parents=True, exist_ok=True)
    model = predictor.keras_model()
    contract = input_contract(model)
    batch = predictor.preprocess(data)
    original = np.asarray(Image.open(io.BytesIO(data)).convert("L"), np.float32) / 255.0
    box = gradcam.eval_crop_box(*original.shape, contract.image_size, contract.crop_fraction)
    written = []
    for c in classes:
        cam = gradcam.heatmaps(model, batch, int(c))[0]
        name = predictor.label_names[c]
        p, t = float(probs[c]), float(predictor.thresholds[c])
        verdict = "POSITIVE" if p >= t else "negative"
        title = f"{name}: probability {p:.2f} (threshold {t:.2f}, {verdict})"
        target = out_dir / f"{path.stem}_{name}.png"
        gradcam.figure(original, cam, box, title, target, finding=name)
        written.append(str(target))
    return written


def format_result(r: Result) -> str:
    """Human-readable lines for one file."""
    if r.error:
        return f"{r.file}: ERROR {r.error}"
    lines = [f"{r.file}:"]
    for f in r.findings:
        mark = "POSITIVE" if f["positive"] else "negative"
        if f.get("stand_in"):  # e.g. "no positives": the threshold is 0.5, not a chosen one
            mark += f"; stand-in threshold: {f['stand_in']} in validation"
        lines.append(
            f"  {f['name']:<20} {f['probability']:6.3f}  (threshold {f['threshold']:.3f}, {mark})"
        )
    lines += [f"  grad-cam: {g}" for g in r.gradcam]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cxr_tf.predict", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="SavedModel folder, .keras file or run folder")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--gradcam", default=None, metavar="DIR", help="write Grad-CAM overlays here")
    add_verbose(p)
    args = p.parse_args(argv)
    quiet_tensorflow(args.verbose)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if args.top_k < 1:
        p.error(f"--top-k {args.top_k} must be at least 1")
    try:
        predictor = Predictor(args.model)
        results = predict_files(predictor, args.images, top_k=args.top_k, gradcam_dir=args.gradcam)
    except (FileNotFoundError, ValueError, storage.StorageError) as err:
        return fail(err)
    if not results:
        return fail(f"no image files in {args.images}")
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print("\n".join(format_result(r) for r in results))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
