"""The README's first command: the whole flow on a bundled synthetic dataset, on a CPU.

    python -m cxr_tf.demo [--workdir demo_out] [--dataset pneumonia] [--num-images 400]

Writes synthetic raw archives in the real Kaggle layout, converts them to TFRecords and prints
where everything is. Later stages (train, evaluate, export, predict) join as they land.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cxr_tf import convert, synthetic

_WRITERS = {"pneumonia": synthetic.write_pneumonia, "nih14": synthetic.write_nih14}


def run_demo(
    workdir="demo_out", *, dataset: str = "pneumonia", num_images: int = 400, seed: int = 0
) -> dict:
    """Run the demo flow in `workdir`; returns the paths of what it made.

    Re-running reuses the synthetic archive and a complete conversion, so a second run is fast.
    """
    start = time.perf_counter()
    workdir = Path(workdir)
    raw = workdir / "raw" / dataset
    if not raw.is_dir():
        _WRITERS[dataset](raw, num_images=num_images, image_size=160, seed=seed)
    data = workdir / "tfrecords"
    try:
        dataset_dir = convert.find_dataset_dir(data, dataset)
        print(f"Reusing the conversion in {dataset_dir}")
    except FileNotFoundError:
        result = convert.convert(dataset, raw, data, image_size=128, seed=seed)
        print(result.summary())
        dataset_dir = result.dataset_dir
    paths = {"raw": raw, "tfrecords": dataset_dir}
    print(f"\nDemo done in {time.perf_counter() - start:.0f} s:")
    for name, path in paths.items():
        print(f"  {name:<10} {path}")
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cxr_tf.demo", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="demo_out")
    p.add_argument("--dataset", default="pneumonia", choices=sorted(_WRITERS))
    p.add_argument("--num-images", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run_demo(args.workdir, dataset=args.dataset, num_images=args.num_images, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
