"""Raw archive -> sharded TFRecords that `tfds.builder_from_directory` loads.

    python -m cxr_tf.convert {pneumonia,nih14} --source DIR --out DIR [--image-size 256] ...

Output: `<out>/<dataset>/<VERSION>/` with `{dataset}-{split}.tfrecord-XXXXX-of-YYYYY` shards,
`features.json`, `metadata.json` (label names, per-split class counts), `dataset_info.json`
(written last: its presence marks a complete dataset) and `conversion_report.json` (skipped
files with reasons, notes, counts, timing).

Decoding, resizing and encoding run in worker processes; the main process serialises and writes
in a fixed order, so the shards are byte-identical for the same inputs and seed whatever the
number of workers. Shards are written under temporary names and renamed when complete, and each
finished shard leaves a marker, so re-running an interrupted command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cxr_tf import images as image_ops
from cxr_tf import storage
from cxr_tf.cli import add_verbose, fail, quiet_tensorflow
from cxr_tf.sources import SPLITS, SourceError, SourceImage

VERSION = "1.0.0"
# Dataset readers are imported when used: worker processes import this module to find `_work`,
# and should load no more than Pillow.
DATASETS = ("pneumonia", "nih14")
# Bytes per stored pixel, measured on converted chest X-rays; only used to pick shard counts.
_BYTES_PER_PIXEL = {"jpeg": 0.4, "png": 0.75}
_PROGRESS = ".progress"
REPORT_NAME = "conversion_report.json"
# {"complete": bool, "sizes": {split: {image_id: [height, width]}}}: each source image's size,
# which NIH's boxes are given in (complete: false where shards from before it were resumed)
SOURCE_SIZES_NAME = "source_sizes.json"


@dataclass
class Shard:
    """One output file: its split, index, and the images it holds in order."""

    split: str
    index: int
    count: int
    images: list[SourceImage]

    def file_name(self, dataset: str) -> str:
        return f"{dataset}-{self.split}.tfrecord-{self.index:05d}-of-{self.count:05d}"


@dataclass
class ConversionResult:
    """What a conversion produced; `summary()` is what the CLI prints."""

    dataset_dir: Path
    counts: dict[str, dict]
    skipped: list[dict]
    notes: list[str]
    seconds: float
    resumed_shards: int = 0
    examples_per_split: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"Wrote {self.dataset_dir}"]
        for split in SPLITS:
            classes = ", ".join(f"{k} {v}" for k, v in self.counts[split].items() if v)
            lines.append(f"  {split:<10} {self.examples_per_split[split]:>7} images  ({classes})")
        if self.resumed_shards:
            lines.append(f"  resumed: {self.resumed_shards} shards were already complete")
        lines.append(f"  skipped: {len(self.skipped)} files (see {REPORT_NAME})")
        for s in self.skipped[:5]:
            lines.append(f"    {s['file']}: {s['reason']}")
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  {self.seconds:.1f} s")
        return "\n".join(lines)


def dataset_module(name: str):
    """The reader module of dataset `name` (`cxr_tf.pneumonia` or `cxr_tf.nih14`)."""
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r} is not one of {sorted(DATASETS)}")
    return importlib.import_module(f"cxr_tf.{name}")


def is_complete(dataset_dir: Path) -> bool:
    """True when `dataset_dir` holds a finished conversion (metadata is written last)."""
    return (storage.path(dataset_dir) / "dataset_info.json").is_file()


def find_dataset_dir(data: Path, dataset: str | None = None) -> Path:
    """Resolve a converter output folder: `<out>`, `<out>/<dataset>` or the version folder.

    Raises FileNotFoundError naming what was looked for, and a distinct message when the folder
    holds an interrupted conversion.
    """
    data = storage.path(data)
    candidates = [data]
    names = [dataset] if dataset else list(DATASETS)
    for name in names:
        candidates += [data / VERSION, data / name / VERSION]
    for c in candidates:
        if is_complete(c):
            return c
    for c in candidates:
        if (c / _PROGRESS).is_dir():
            raise FileNotFoundError(
                f"{c} holds an interrupted conversion (no dataset_info.json yet). Re-run the same "
                "`python -m cxr_tf.convert ...` command to finish it."
            )
    raise FileNotFoundError(
        f"no converted dataset in {str(data)!r} (looked for dataset_info.json in "
        f"{', '.join(str(c) for c in candidates)}). Create one with `python -m cxr_tf.convert "
        f"{names[0]} --source RAW_DIR --out {data}`."
    )


def _shard_count(num_images: int, image_size: int, image_format: str, shard_mb: float) -> int:
    est_bytes = num_images * image_size * image_size * _BYTES_PER_PIXEL[image_format]
    return max(1, min(num_images, math.ceil(est_bytes / (shard_mb * 2**20))))


def plan_shards(
    splits: dict[str, list[SourceImage]],
    *,
    seed: int,
    image_size: int,
    image_format: str,
    shard_mb: float,
) -> list[Shard]:
    """Order each split by a seeded shuffle and cut it into shards of about `shard_mb` MB.

    Shuffling here mixes classes and patients across shards, so that any subset of shards (one
    TPU host's share) is a fair sample of the split.
    """
    import numpy as np

    shards = []
    for s_idx, split in enumerate(SPLITS):
        items = sorted(splits[split], key=lambda im: im.image_id)
        order = np.random.default_rng([seed, s_idx]).permutation(len(items))
        items = [items[i] for i in order]
        n = _shard_count(len(items), image_size, image_format, shard_mb) if items else 1
        bounds = np.linspace(0, len(items), n + 1).round().astype(int)
        shards += [Shard(split, i, n, items[bounds[i] : bounds[i + 1]]) for i in range(n)]
    return shards


def _plan_hash(dataset: str, shards: list[Shard], settings: dict) -> str:
    h = hashlib.sha256(json.dumps({"dataset": dataset, **settings}, sort_keys=True).encode())
    for shard in shards:
        h.update(shard.file_name(dataset).encode())
        for im in shard.images:
            h.update(f"\0{im.image_id}\0{im.path}".encode())
    return h.hexdigest()


def _work(task: tuple[str, int, str]) -> tuple[bytes | None, str | list[int] | None]:
    """Worker: (path, size, format) -> (encoded image, [source height, width]) or
    (None, reason)."""
    path, size, fmt = task
    try:
        image = image_ops.convert_file(path, size, fmt)
        return image.data, [image.source_height, image.source_width]
    except image_ops.ImageError as err:
        return None, str(err)
    except Exception as err:  # a worker must never take the whole conversion down
        return None, f"unexpected error: {type(err).__name__}: {err}"


def _warm() -> None:
    """A no-op task: submitting one per worker starts the workers early."""


def _work_many(tasks: list) -> list[tuple[bytes | None, str | list[int] | None]]:
    return [_work(t) for t in tasks]


def _chunks(tasks: list, workers: int, largest: int = 16) -> list[list]:
    """Tasks in chunks that shrink towards the end (guided scheduling): large chunks keep the
    IPC round trips few, small last ones keep a worker from idling while another finishes."""
    out, i = [], 0
    while i < len(tasks):
        size = max(1, min(largest, (len(tasks) - i) // (2 * workers)))
        out.append(tasks[i : i + size])
        i += size
    return out


class _Workers:
    """The conversion's worker processes, started on entering (none for 1: work runs inline).

    Starting them before the source is scanned overlaps their start-up (a Python process
    importing Pillow, about 0.25 s of CPU each) with the scan. A process pool executor, not
    multiprocessing.Pool: if a worker dies (out of memory, say), it raises BrokenProcessPool
    instead of waiting forever.
    """

    def __init__(self, count: int):
        self.count = count
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Workers:
        if self.count > 1:
            # spawn, not fork: the parent runs TensorFlow's threads, which fork does not survive.
            ctx = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(self.count, mp_context=ctx)
            for _ in range(self.count):
                self.pool.submit(_warm)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def results(self, tasks: list) -> Iterator[tuple[bytes | None, str | list[int] | None]]:
        """`_work` over `tasks`, results in task order."""
        if self.pool is None:
            yield from map(_work, tasks)
            return
        for chunk in self.pool.map(_work_many, _chunks(tasks, self.count)):
            yield from chunk


class _Serializer:
    """tf.train.Example bytes in TFDS's layout, serialised deterministically."""

    def __init__(self, features):
        from tensorflow_datasets.core import example_serializer

        self.features = features
        self.inner = example_serializer.ExampleSerializer(features.get_serialized_info())

    def __call__(self, example: dict) -> bytes:
        encoded = self.features.encode_example(example)
        return self.inner.get_tf_example(encoded).SerializeToString(deterministic=True)


def convert(
    dataset: str,
    source,
    out,
    *,
    image_size: int = 256,
    image_format: str = "jpeg",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    workers: int | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    shard_mb: float = 150.0,
    progress: bool = True,
) -> ConversionResult:
    """Convert a raw archive to `<out>/<dataset>/<VERSION>/`; see the module docstring.

    Raises ValueError for bad arguments, SourceError for a source that is not the archive, and
    FileExistsError for a complete output without `overwrite`.
    """
    start = time.perf_counter()
    module = _check_args(dataset, image_size, image_format, val_fraction, test_fraction, limit)
    workers = workers or os.cpu_count() or 1
    out = storage.path(out)
    blocking = next(
        (q for q in (out, *(() if storage.is_url(out) else out.parents)) if q.is_file()),
        None,
    )
    if blocking is not None:
        raise ValueError(
            f"--out {str(out)!r}: {str(blocking)!r} is a file, not a folder; give a "
            "folder to write the TFRecords into (it is created)"
        )
    out_dir = out / dataset / VERSION
    if is_complete(out_dir):
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} already holds a complete {dataset} conversion; pass --overwrite to "
                "replace it, or another --out."
            )
        storage.rmtree(out_dir)

    # The workers start now, while the source is scanned (see _Workers).
    with _Workers(workers) as pool:
        scan = module.scan(source)
        found = scan.images
        if limit is not None and limit < len(found):
            import numpy as np

            keep = np.sort(np.random.default_rng(seed).choice(len(found), limit, replace=False))
            found = [found[i] for i in keep]
            scan.notes.append(f"--limit {limit}: converted a seeded sample of {limit} images")
        splits, split_notes = module.assign_splits(
            found, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
        )
        notes = scan.notes + split_notes
        shards = plan_shards(
            splits, seed=seed, image_size=image_size, image_format=image_format, shard_mb=shard_mb
        )
        settings = {
            "image_size": image_size,
            "image_format": image_format,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
            "limit": limit,
        }
        progress_dir = _prepare_progress(out_dir, _plan_hash(dataset, shards, settings))

        features = module.features(image_format)
        done = {
            s.file_name(dataset)
            for s in shards
            if (progress_dir / f"{s.file_name(dataset)}.json").is_file()
        }
        pending = [s for s in shards if s.file_name(dataset) not in done]
        _write_shards(
            pending,
            dataset,
            out_dir,
            progress_dir,
            features,
            image_size,
            image_format,
            pool,
            progress,
        )

        markers = {
            s.file_name(dataset): json.loads(
                (progress_dir / f"{s.file_name(dataset)}.json").read_text()
            )
            for s in shards
        }
        skipped = scan.skipped + [x for m in markers.values() for x in m["skipped"]]
        counts = {split: {} for split in SPLITS}
        examples_per_split = {split: 0 for split in SPLITS}
        for shard in shards:
            m = markers[shard.file_name(dataset)]
            examples_per_split[shard.split] += m["num_examples"]
            for k, v in m["class_counts"].items():
                counts[shard.split][k] = counts[shard.split].get(k, 0) + v
        result = ConversionResult(
            dataset_dir=out_dir,
            counts=counts,
            skipped=skipped,
            notes=notes,
            seconds=time.perf_counter() - start,
            resumed_shards=len(done),
            examples_per_split=examples_per_split,
        )
        _write_metadata(module, out_dir, features, shards, markers, result, settings, str(source))
        storage.rmtree(progress_dir)
        return result


def _check_args(dataset, image_size, image_format, val_fraction, test_fraction, limit):
    module = dataset_module(dataset)
    if not 16 <= image_size <= 4096:
        raise ValueError(f"--image-size {image_size} is outside 16..4096 (the default is 256)")
    if image_format not in image_ops.FORMATS:
        raise ValueError(f"--format {image_format!r} is not one of {image_ops.FORMATS}")
    for name, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} {value} must be in [0, 1), e.g. 0.1")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit} must be a positive number of images")
    return module


def _prepare_progress(out_dir: Path, plan_hash: str) -> Path:
    """Create or reuse the progress folder; a different plan's leftovers are cleared."""
    progress_dir = out_dir / _PROGRESS
    plan_file = progress_dir / "plan"
    if progress_dir.is_dir() and (not plan_file.is_file() or plan_file.read_text() != plan_hash):
        print(
            f"{out_dir} holds an interrupted conversion with other inputs or settings; "
            "starting it over.",
            file=sys.stderr,
        )
        storage.rmtree(out_dir)
    progress_dir.mkdir(parents=True, exist_ok=True)
    storage.write_text(plan_file, plan_hash)
    return progress_dir


def _write_shards(
    shards, dataset, out_dir, progress_dir, features, image_size, image_format, workers, progress
):
    """Convert and write `shards` in order; each finished shard gets a marker file."""
    from tqdm.auto import tqdm

    from cxr_tf.deps import require_tensorflow

    tf = require_tensorflow()
    serialize = _Serializer(features)
    tasks = [(im.path, image_size, image_format) for s in shards for im in s.images]
    results = workers.results(tasks)
    bar = tqdm(total=len(tasks), unit="img", desc=f"convert {dataset}", disable=not progress)
    with bar:
        for shard in shards:
            name = shard.file_name(dataset)
            # at a URL the object appears when its upload ends: written to its name at once
            tmp = out_dir / (name if storage.is_url(out_dir) else f"{name}.tmp")
            examples, skipped, sizes = [], [], {}
            with tf.io.TFRecordWriter(str(tmp)) as writer:
                for im in shard.images:
                    data, size_or_reason = next(results)
                    bar.update()
                    if data is None:
                        skipped.append({"file": im.path, "reason": size_or_reason})
                        continue
                    sizes[im.image_id] = size_or_reason
                    example = {
                        "image": data,
                        "patient_id": im.patient_id,
                        "image_id": im.image_id,
                        **im.features,
                    }
                    writer.write(serialize(example))
                    examples.append(im.features)
            if tmp != out_dir / name:
                os.replace(tmp, out_dir / name)
            marker = {
                "num_examples": len(examples),
                "num_bytes": (out_dir / name).stat().st_size,
                "class_counts": dataset_module(dataset).class_counts(examples),
                "skipped": skipped,
                "source_sizes": sizes,
            }
            storage.write_text(progress_dir / f"{name}.json", json.dumps(marker))


def _write_metadata(module, out_dir, features, shards, markers, result, settings, source):
    """Report, then TFDS metadata; `dataset_info.json` comes last and marks completion."""
    from cxr_tf.deps import require_tfds

    tfds = require_tfds()
    report = {
        "dataset": module.NAME,
        "source": source,
        "settings": settings,
        "examples": result.examples_per_split,
        "class_counts": result.counts,
        "skipped": result.skipped,
        "notes": result.notes,
        "seconds": round(result.seconds, 2),
    }
    storage.write_text(out_dir / REPORT_NAME, json.dumps(report, indent=2))
    sizes = {split: {} for split in SPLITS}  # a marker from before sizes were kept has none
    for s in shards:
        sizes[s.split].update(markers[s.file_name(module.NAME)].get("source_sizes", {}))
    complete = all("source_sizes" in m for m in markers.values())
    storage.write_text(
        out_dir / SOURCE_SIZES_NAME,
        json.dumps({"complete": complete, "sizes": sizes}, separators=(",", ":")),
    )
    split_infos = []
    for split in SPLITS:
        mine = [markers[s.file_name(module.NAME)] for s in shards if s.split == split]
        split_infos.append(
            tfds.core.SplitInfo(
                name=split,
                shard_lengths=[m["num_examples"] for m in mine],
                num_bytes=sum(m["num_bytes"] for m in mine),
                filename_template=None,
            )
        )
    metadata = tfds.core.MetadataDict(
        dataset=module.NAME,
        task=module.TASK,
        label_key=module.LABEL_KEY,
        label_names=list(module.CLASS_NAMES),
        splits={
            split: {
                "num_examples": result.examples_per_split[split],
                "class_counts": result.counts[split],
            }
            for split in SPLITS
        },
        **settings,
    )
    with tempfile.TemporaryDirectory(prefix="cxr_tf-metadata-") as local:
        # TFDS writes local folders and gs:// (not every scheme): written here, beside empty
        # stand-ins for the shards (TFDS reads their names), then put in place with
        # dataset_info.json, which marks the conversion complete, last
        shard_names = {s.file_name(module.NAME) for s in shards}
        for name in shard_names:
            (Path(local) / name).touch()
        tfds.folder_dataset.write_metadata(
            data_dir=local,
            features=features,
            split_infos=split_infos,
            filename_template=None,
            check_data=False,
            description=f"cxr_tf conversion of {module.NAME} ({module.__doc__.splitlines()[0]})",
            metadata=metadata,
        )
        names = sorted(set(os.listdir(local)) - shard_names, key=lambda n: n == "dataset_info.json")
        for name in names:
            storage.write_bytes(out_dir / name, (Path(local) / name).read_bytes())


def main(argv=None) -> int:
    """CLI: parse arguments, convert, print the summary."""
    p = argparse.ArgumentParser(prog="python -m cxr_tf.convert", description=__doc__.split("\n")[0])
    p.add_argument("dataset", choices=sorted(DATASETS))
    p.add_argument("--source", required=True, help="folder the raw archive was unzipped into")
    p.add_argument("--out", default="tfrecords", help="output folder (default: tfrecords)")
    p.add_argument("--image-size", type=int, default=256, help="shorter side in pixels")
    p.add_argument("--format", dest="image_format", default="jpeg", choices=image_ops.FORMATS)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--limit", type=int, default=None, help="convert a seeded sample of N images")
    p.add_argument("--shard-mb", type=float, default=150.0, help="target shard size in MB")
    p.add_argument("--overwrite", action="store_true", help="replace a complete output")
    add_verbose(p)
    args = p.parse_args(argv)
    quiet_tensorflow(args.verbose)
    try:
        result = convert(
            args.dataset,
            args.source,
            args.out,
            image_size=args.image_size,
            image_format=args.image_format,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            workers=args.workers,
            limit=args.limit,
            overwrite=args.overwrite,
            shard_mb=args.shard_mb,
        )
    except (
        ValueError,
        SourceError,
        FileExistsError,
        FileNotFoundError,
        storage.StorageError,
    ) as err:
        return fail(err)
    print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
