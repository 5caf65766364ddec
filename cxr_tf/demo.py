"""The README's first command: the whole flow on a bundled synthetic dataset, on a CPU.

    python -m cxr_tf.demo [--workdir demo_out] [--dataset {pneumonia,nih14}] [--num-images 400]

synthetic raw archive (real Kaggle layout) -> convert -> train (training/demo.yaml) ->
evaluate (metrics + plots) -> export (SavedModel taking image bytes) -> predict with Grad-CAM,
then prints where each artefact is and the headline metric. Each stage reuses what a previous
run finished, so a second run (or one after an interruption) picks up where it stopped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cxr_tf import synthetic
from cxr_tf.cli import add_verbose, fail, quiet_tensorflow, user_errors

_WRITERS = {"pneumonia": synthetic.write_pneumonia, "nih14": synthetic.write_nih14}
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "training" / "demo.yaml"


def _sample_test_images(raw: Path, dataset: str) -> list[Path]:
    """Two raw test-split images of the synthetic archive (a positive first)."""
    if dataset == "pneumonia":
        root = raw / "chest_xray" / "test"
        return [sorted((root / c).glob("*.jpeg"))[0] for c in ("PNEUMONIA", "NORMAL")]
    names = (raw / "test_list.txt").read_text().split()[:2]
    return [next(raw.glob(f"images_*/images/{n}")) for n in names]


def _stage(name: str):
    print(f"\n=== {name} " + "=" * max(0, 60 - len(name)), flush=True)


def run_demo(
    workdir="demo_out",
    *,
    dataset: str = "pneumonia",
    num_images: int = 400,
    seed: int = 0,
    config=DEMO_CONFIG,
    strategy: str = "auto",
) -> dict:
    """Run the demo flow in `workdir`; returns the paths of what it made and the metrics."""
    from cxr_tf.runtime import choose_backend

    choose_backend(strategy)  # before anything imports Keras
    from cxr_tf import convert, evaluate, predict, train

    start = time.perf_counter()
    workdir = Path(workdir)
    raw = workdir / "raw" / dataset
    _stage("1/5 synthetic raw archive")
    if not raw.is_dir():
        _WRITERS[dataset](raw, num_images=num_images, image_size=160, seed=seed)
    print(f"{raw}")
    _stage("2/5 convert to TFRecords")
    data = workdir / "tfrecords"
    try:
        dataset_dir = convert.find_dataset_dir(data, dataset)
        print(f"Reusing the conversion in {dataset_dir}")
    except FileNotFoundError:
        result = convert.convert(dataset, raw, data, image_size=128, seed=seed)
        print(result.summary())
        dataset_dir = result.dataset_dir
    _stage("3/5 train (training/demo.yaml) and export")
    run_dir = workdir / "runs" / dataset  # one per dataset: --dataset nih14 after pneumonia
    train.run(
        config,
        data=data,
        workdir=run_dir,
        strategy=strategy,
        overrides=[f"dataset={dataset}"] + (["balance=none"] if dataset == "nih14" else []),
        verbose=2,
    )
    _stage("4/5 evaluate on the test split")
    # NIH: Grad-CAM against the archive's box list, AUROC on Google's adjudicated labels
    reference = {}
    if dataset == "nih14":
        boxes = raw / "BBox_List_2017.csv"  # an archive written before boxes were has none
        reference = {"boxes": boxes if boxes.is_file() else None, "labels": "google2019"}
    metrics = evaluate.evaluate(run_dir, data, split="test", dataset=dataset, **reference)
    print(evaluate.format_summary(metrics))
    _stage("5/5 predict with Grad-CAM")
    test_images = _sample_test_images(raw, dataset)
    predictor = predict.Predictor(run_dir / "saved_model")
    results = predict.predict_files(
        predictor, test_images, top_k=3, gradcam_dir=run_dir / "gradcam"
    )
    for r in results:
        print(predict.format_result(r))
    paths = {
        "raw archive": raw,
        "tfrecords": dataset_dir,
        "run folder": run_dir,
        "best model": run_dir / "best.keras",
        "SavedModel": run_dir / "saved_model",
        "metrics": Path(metrics["out_dir"]) / "metrics.json",
        "plots": Path(metrics["out_dir"]),
        "grad-cam": run_dir / "gradcam",
    }
    print(
        f"\nDemo done in {time.perf_counter() - start:.0f} s. Test mean AUROC "
        f"{metrics['macro']['auroc']:.3f}, accuracy {metrics['accuracy']:.3f} "
        "(synthetic data: the signal is easy by design; this shows the flow works)."
    )
    for name, path in paths.items():
        print(f"  {name:<12} {path}")
    return {"paths": paths, "metrics": metrics}


def main(argv=None) -> int:
    from cxr_tf.runtime import STRATEGIES

    p = argparse.ArgumentParser(
        prog="python -m cxr_tf.demo",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--workdir", default="demo_out", help="folder for everything the demo makes")
    p.add_argument("--dataset", default="pneumonia", choices=sorted(_WRITERS), help="which archive")
    p.add_argument("--num-images", type=int, default=400, help="size of the synthetic archive")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic archive")
    p.add_argument("--strategy", default="auto", choices=STRATEGIES, help="see cxr_tf.train")
    add_verbose(p)
    args = p.parse_args(argv)
    quiet_tensorflow(args.verbose)
    workdir = Path(args.workdir)
    if workdir.exists() and not workdir.is_dir():
        return fail(f"--workdir {str(workdir)!r} is a file; give a folder (it is created)")
    if args.num_images < 20:
        return fail(f"--num-images {args.num_images} is too few to split; use 20 or more")
    try:
        run_demo(
            workdir,
            dataset=args.dataset,
            num_images=args.num_images,
            seed=args.seed,
            strategy=args.strategy,
        )
    except user_errors() as err:
        return fail(err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
