"""SavedModel export whose serving signature takes image files' bytes.

    python -m cxr_tf.export --model runs/demo/best.keras --out exported/ [--thresholds FILE]

`serving_default` takes a batch of encoded images (`tf.string`: JPEG or PNG of any size,
grayscale or colour) and returns `probabilities` (float32 `[N, C]`), plus `label_names` and
`thresholds` (`[C]`), so a consumer needs nothing else. Inside, each image goes through the
evaluation transform read from the model's input contract: the same function the input
pipeline applies, so serving and evaluation agree. The `.keras` model travels as an asset too
(`assets/model.keras`, without optimizer state), for Grad-CAM from an exported folder. Both
compute in float32, whatever precision trained the model (`models.as_float32`).

Export always runs under the TensorFlow backend; a model trained under JAX is exported by
loading its `.keras` file (the weights are backend-independent) in a TensorFlow process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cxr_tf import storage
from cxr_tf.cli import add_verbose, fail, quiet_tensorflow

MODEL_ASSET = "model.keras"
LABELS_ASSET = "labels.json"


def find_thresholds(model_path) -> Path | None:
    """thresholds.json of the run folder that holds `model_path`, if there is one."""
    candidate = storage.path(model_path).parent / "thresholds.json"
    return candidate if candidate.is_file() else None


EXPORT_HINT = "give the run's file with --thresholds RUN_FOLDER/thresholds.json"


def missing_metadata(model_path, thresholds_file=None, hint=EXPORT_HINT) -> str | None:
    """One line saying what an export (or prediction) of `model_path` goes without, and how to
    give it, or None when nothing is missing. A thresholds.json (beside the model in its run
    folder, or `--thresholds`) carries the label names, the decision thresholds and the
    calibration; a `.keras` file carries none of them."""
    from cxr_tf.metrics import load_thresholds

    if not thresholds_file:
        return (
            f"warning: no thresholds.json beside {model_path}, so no label names (class_0, "
            "class_1, ... instead), no decision thresholds (0.5 for every class) and no "
            f"calibration (raw probabilities); {hint}"
        )
    if load_thresholds(thresholds_file).get("calibration") is None:
        return (
            f"warning: {thresholds_file} has no calibration (written before cxr_tf calibrated "
            "probabilities): raw probabilities; the run's own thresholds.json has it"
        )
    return None


def label_info(num_outputs: int, thresholds_file=None) -> tuple[list[str], list[float], str]:
    """(label names, thresholds, source) from a thresholds.json, else generic names and 0.5."""
    from cxr_tf.metrics import load_thresholds

    if thresholds_file:
        data = load_thresholds(thresholds_file)
        if len(data["thresholds"]) != num_outputs:
            raise ValueError(
                f"{thresholds_file} has {len(data['thresholds'])} thresholds, but the model has "
                f"{num_outputs} outputs; give the thresholds.json of the same run"
            )
        return data["label_names"], data["thresholds"], str(thresholds_file)
    return [f"class_{i}" for i in range(num_outputs)], [0.5] * num_outputs, "default 0.5"


def stand_ins_for(num_outputs: int, thresholds_file=None) -> list[str | None]:
    """Per class, why its threshold is a stand-in ("no positives"/"no negatives" in the split
    that chose them), else None; all None without a thresholds.json."""
    from cxr_tf.metrics import load_thresholds, stand_in_notes

    if not thresholds_file:
        return [None] * num_outputs
    return stand_in_notes(load_thresholds(thresholds_file))


def calibration_for(num_outputs: int, thresholds_file=None):
    """The `cxr_tf.calibration.Calibration` a thresholds.json carries (identity without one)."""
    from cxr_tf.calibration import Calibration
    from cxr_tf.metrics import load_thresholds

    data = load_thresholds(thresholds_file) if thresholds_file else {}
    return Calibration.from_dict(data.get("calibration"), num_outputs)


def export_model(model_path, out_dir, *, thresholds_file=None) -> Path:
    """Write the SavedModel for the `.keras` file `model_path` into `out_dir`; returns it.

    Runs in this process under the TensorFlow backend, else in a TensorFlow subprocess.
    """
    import keras

    model_path, out_dir = storage.path(model_path), storage.path(out_dir)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file {str(model_path)!r} does not exist")
    thresholds_file = thresholds_file or find_thresholds(model_path)
    if warning := missing_metadata(model_path, thresholds_file):
        print(warning, file=sys.stderr, flush=True)
    if keras.backend.backend() != "tensorflow":
        cmd = [
            sys.executable,
            "-m",
            "cxr_tf.export",
            "--model",
            str(model_path),
            "--out",
            str(out_dir),
        ]
        if thresholds_file:
            cmd += ["--thresholds", str(thresholds_file)]
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(
                f"export in a TensorFlow process failed ({last}); rerun "
                f"`python {' '.join(cmd[1:])} --verbose` to see all of it"
            )
        return out_dir
    from cxr_tf.models import load_model

    return _export_tf(load_model(model_path), model_path, out_dir, thresholds_file)


def _export_tf(model, model_path, out_dir, thresholds_file):
    import keras
    import tensorflow as tf

    from cxr_tf.input_pipeline import decode, eval_input
    from cxr_tf.models import as_float32, input_contract

    model = as_float32(model)
    contract = input_contract(model)
    names, thresholds, source = label_info(model.output_shape[-1], thresholds_file)
    calibrator = calibration_for(model.output_shape[-1], thresholds_file)
    label_names = tf.constant(names)
    threshold_values = tf.constant(thresholds, tf.float32)
    offset = tf.constant(calibrator.offset, tf.float32)
    temperature = tf.constant(calibrator.temperature, tf.float32)

    def preprocess(encoded):  # as evaluation feeds the model
        c = contract
        return eval_input(decode(encoded), c.image_size, c.crop_fraction, c.channels, c.input_dtype)

    def serve(images):
        batch = tf.map_fn(
            preprocess,
            images,
            fn_output_signature=tf.TensorSpec(
                [contract.image_size, contract.image_size, contract.channels],
                contract.input_dtype,
            ),
        )
        probs = tf.cast(model(batch, training=False), tf.float32)
        # the calibration of cxr_tf.calibration, as there: clipped logit, shift, temperature
        p = tf.clip_by_value(probs, 1e-6, 1 - 1e-6)
        probs = tf.sigmoid((tf.math.log(p) - tf.math.log1p(-p) + offset) / temperature)
        return {
            "probabilities": probs,
            "label_names": label_names,
            "thresholds": threshold_values,
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec([None], tf.string, name="images")],
    )
    # Written beside out_dir and renamed into place, so a half-written export never replaces a
    # good one; at a URL, written locally and uploaded with saved_model.pb last.
    remote = storage.is_url(out_dir)
    staging = tempfile.mkdtemp(prefix="cxr_tf-export-") if remote else None
    tmp = Path(staging, "saved_model") if remote else out_dir.with_name(out_dir.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        archive.write_out(str(tmp), verbose=False)
        assets = tmp / "assets"
        assets.mkdir(exist_ok=True)
        model.save(assets / MODEL_ASSET)  # the float32 model, no optimizer state
        (assets / LABELS_ASSET).write_text(
            json.dumps(
                {
                    "label_names": names,
                    "thresholds": thresholds,
                    "source": source,
                    "stand_ins": stand_ins_for(len(names), thresholds_file),
                    "calibration": calibrator.to_dict(),
                },
                indent=2,
            )
        )
        if remote:
            storage.upload_tree(tmp, out_dir, last="saved_model.pb")
        else:
            shutil.rmtree(out_dir, ignore_errors=True)
            os.replace(tmp, out_dir)
    finally:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cxr_tf.export", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a .keras file (e.g. runs/X/best.keras)")
    p.add_argument("--out", required=True, help="SavedModel folder to write")
    p.add_argument("--thresholds", default=None, help="default: thresholds.json beside --model")
    add_verbose(p)
    args = p.parse_args(argv)
    quiet_tensorflow(args.verbose)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        out = export_model(args.model, args.out, thresholds_file=args.thresholds)
    except (FileNotFoundError, ValueError, RuntimeError, storage.StorageError) as err:
        return fail(err)
    print(f"Exported {args.model} -> {out} (serving_default: encoded image bytes -> probabilities)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
