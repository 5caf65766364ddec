"""Training throughput: images/s of training steps fed by the input pipeline and from memory.

    python benchmarks/train_throughput.py [--backend tensorflow|jax] [--model densenet121] \
        [--image-size 224] [--batch-size 16] [--steps 20] [--warmup 3] [--repeats 2] \
        [--num-images 200] [--stored-size 256] [--data DIR] [--dataset NAME] \
        [--cache auto|yes|no] [--precision auto|float32|mixed_bfloat16|mixed_float16] \
        [--peak-tflops X] [--seed 0] [--pipeline-seconds 3] [--augment-in model|pipeline]

Set-up (not timed): unless `--data` names a converted dataset, `--num-images` synthetic pneumonia
images (`synthetic.write_pneumonia`, the Kaggle archive layout) are written and converted by
`convert.convert` at `--stored-size` in a temporary folder. The model (`models.build_model`,
random weights) is compiled once with Adam and binary cross-entropy and its first steps, which
trace and compile the train step, run untimed. Then it measures, in one process, the images/s
of `model.fit` steps of `--batch-size` at `--image-size` on this machine's default device, fed

- (a) by the real training pipeline, as the trainer sets it up by default:
      `input_pipeline.make_dataset(..., training=True, channels=1, augment_in_model=True)`:
      read, decode (cached in memory when the split fits, as in training), shuffle, a random
      square of each stored image, batch, prefetch; the model starts with `RandomAugment`
      (crop/scale, rotation, zoom, translation, brightness, contrast; see `cxr_tf.augment`), so
      that work is part of every step. `--augment-in pipeline` moves it into tf.data instead
      (`augment_in_model=False`, the model without that layer);
- (b) by the same tensors from memory: `--steps` batches taken from that pipeline up front and
      served by `tf.data.Dataset.from_tensor_slices` (one element per batch, prefetched, with
      the pipeline's `tf.data.Options`);
- (c) after those, the pipeline alone, iterated without training, `--pipeline-seconds` per
      repeat.

Each measurement is one `fit` call on a fresh iterator: `--warmup` steps (iterator start,
prefetch buffers) and then `--steps` timed ones, timed between the ends of the last warm-up step
and the last step. (a) and (b) run interleaved, a b b a ..., `--repeats` times; the best rate of
each counts. The ratio (a)/(b) shows whether training is input-bound: the goal is >= 0.95 on
CPU, where the pipeline and the model share the cores. Next to it comes the ratio of the median
step times over all runs, which short disturbances by other processes move less. Next to each
rate it prints the CPU time per image of this process and, on Linux, the CPU that other
processes took meanwhile: on a shared machine the rates are only meaningful when that is near 0.
CPU time is steadier than wall time there, so it also prints a CPU-share estimate of (a)/(b),
(b)'s CPU ms/img over (b)'s plus (c)'s: what the ratio would be if the pipeline's work simply
added to a CPU-bound step. On an accelerator the pipeline must instead keep up on the host:
(c)/(b), its headroom, should be well above 1.

FLOPs per image are counted from the model's layers: Conv1D/2D/3D and DepthwiseConv2D
2 x output positions x kernel size (2*H_out*W_out*k*k*C_in*C_out for Conv2D), Dense 2*in*out;
BatchNorm, activations, pooling and concatenation are left out (memory-bound, ~1%). A training
step is taken as 3x the forward pass (backward: gradients of activations and of weights). The
model FLOP utilisation is MFU = training FLOPs/image x images/s / the device's peak, per device
(the benchmark uses one). The peak is `--peak-tflops`, or for known accelerators the dense
bf16/fp16 peak from `PEAK_TFLOPS`; on CPU MFU is not reported unless `--peak-tflops` is given.
`--precision auto` trains in mixed_bfloat16 on TPUs and GPUs with compute capability >= 8
(mixed_float16 on older GPUs) and float32 on CPU.

With `--backend jax` the same runs under Keras' JAX backend (tf.data still feeds it), on a GPU
or TPU where JAX sees one. It is a measurement, not a test: it exits 0 whether the goal is met
or not.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _common.py
from _common import load_lines, machine_busy, usable_cores  # noqa: E402

# Only the runtime module here: importing TensorFlow imports Keras, whose backend is chosen first.
from cxr_tf.runtime import choose_backend  # noqa: E402

GOAL = 0.95  # (a) / (b) on CPU
WARMUP_STEPS = 3
VARIANTS = ("pipeline", "memory")
LABELS = {"pipeline": "(a) input pipeline", "memory": "(b) same tensors from memory"}
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
CACHE = {"auto": None, "yes": True, "no": False}
SOURCE_OVER_STORED = 1.25  # synthetic source images are 0.8x-1.5x this times the stored size

# Dense bf16 (fp16 where the device has no bf16) peak TFLOP/s of ONE device as JAX/TF list it,
# from the vendors' data sheets (no sparsity), matched in order as substrings of the device kind.
# TPU v2/v3 chips have two cores, each a JAX device: per-device peak is half the chip's.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM, e.g. 'NVIDIA H100 80GB HBM3'
    ("H200", 989.0),
    ("A100", 312.0),
    ("L4", 121.0),
    ("V100", 125.0),  # fp16
    ("T4", 65.0),  # fp16, 'Tesla T4'
    ("TPU v2", 22.5),  # 45 per chip
    ("TPU v3", 61.5),  # 123 per chip
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5", 459.0),  # v5p
    ("TPU v6 lite", 918.0),  # v6e
)


def peak_tflops_for(device_kind: str) -> float | None:
    """The table's peak for a device kind (e.g. 'NVIDIA H100 80GB HBM3'), or None if unknown."""
    kind = device_kind.lower()
    for key, tflops in PEAK_TFLOPS:
        if key.lower() in kind:
            return tflops
    return None


def model_flops(model) -> int:
    """Forward FLOPs per example: convolutions and dense layers, 2 per multiply-add."""
    import keras

    convs = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += model_flops(layer)
        elif isinstance(layer, convs + (keras.layers.DepthwiseConv2D,)) and not isinstance(
            layer, keras.layers.Conv2DTranspose
        ):
            # kernel (k.., C_in / groups, C_out) [depthwise: (k.., C, multiplier)]
            positions = math.prod(layer.output.shape[1:-1])
            total += 2 * positions * math.prod(layer.kernel.shape)
        elif isinstance(layer, keras.layers.Dense):
            positions = math.prod(layer.output.shape[1:-1])
            total += 2 * positions * math.prod(layer.kernel.shape)
    return int(total)


# ------------------------------------------------------------------ machine


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "CPU"


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _device(backend: str) -> dict:
    """Platform ('cpu', 'gpu', 'tpu'), device kind and GPU compute capability of device 0."""
    if backend == "jax":
        import jax

        dev = jax.devices()[0]
        cc = getattr(dev, "compute_capability", None)
        kind = _cpu_name() if dev.platform == "cpu" else dev.device_kind
        return {"platform": dev.platform, "kind": kind, "count": jax.device_count(), "cc": cc}
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        cc = details.get("compute_capability")
        cc = ".".join(str(c) for c in cc) if cc else None
        kind = details.get("device_name", "GPU")
        return {"platform": "gpu", "kind": kind, "count": len(gpus), "cc": cc}
    return {"platform": "cpu", "kind": _cpu_name(), "count": 1, "cc": None}


def resolve_precision(precision: str, device: dict) -> str:
    """`auto`: mixed_bfloat16 on TPU and GPUs with compute capability >= 8, mixed_float16 on
    older GPUs, float32 on CPU."""
    if precision != "auto":
        return precision
    if device["platform"] == "tpu":
        return "mixed_bfloat16"
    if device["platform"] == "gpu":
        major = int(str(device["cc"]).split(".")[0]) if device["cc"] else 8
        return "mixed_bfloat16" if major >= 8 else "mixed_float16"
    return "float32"


# ------------------------------------------------------------------ measuring


def _step_timer(keras):
    """A callback recording (wall, process CPU, machine busy) at the end of every step.

    `async_safe`: where the backend allows it (JAX) Keras calls it from a worker thread once the
    step's logs are ready, so that timing does not stop asynchronous dispatch; elsewhere (TF)
    it runs inline after each step.
    """

    class StepTimer(keras.callbacks.Callback):
        async_safe = True

        def __init__(self):
            super().__init__()
            self.marks = {}

        def on_train_batch_end(self, batch, logs=None):
            self.marks[batch] = (time.perf_counter(), time.process_time(), machine_busy())

    return StepTimer()


def measure_pipeline(ds, *, seconds: float, warmup: int, batch_size: int) -> dict:
    """The pipeline alone, no training: a fresh iterator, `warmup` batches, then `seconds`."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    batches = 0
    cpu0, start = time.process_time(), time.perf_counter()
    while batches < 1 or time.perf_counter() - start < seconds:
        next(it)
        batches += 1
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    images = batches * batch_size
    return {
        "images": images,
        "seconds": elapsed,
        "images_per_s": images / elapsed,
        "cpu_ms_per_image": 1000 * cpu / images,
    }


def measure(model, ds, *, steps: int, warmup: int, batch_size: int, keras) -> dict:
    """One `fit` over a fresh iterator of `ds`: `warmup` untimed steps, then `steps` timed."""
    timer = _step_timer(keras)
    start = time.perf_counter()
    model.fit(
        ds, epochs=1, steps_per_epoch=warmup + steps, shuffle=False, verbose=0, callbacks=[timer]
    )
    wall = time.perf_counter() - start
    marks = timer.marks
    t0, cpu0, busy0 = marks[warmup - 1] if warmup else (start, None, None)
    last = max((marks[k] for k in range(warmup, warmup + steps)), key=lambda m: m[0])
    t1, cpu1, busy1 = last
    seconds = t1 - t0
    ends = [t0] + [marks[k][0] for k in range(warmup, warmup + steps)]
    images = steps * batch_size
    out = {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "seconds_per_step": seconds / steps,
        "step_seconds": [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)],
        "warmup_seconds": t0 - start,
        "fit_seconds": wall,
        "cpu_ms_per_image": None,
        "cpu_cores": None,
        "other_cores": None,
    }
    if cpu0 is not None:
        cpu = cpu1 - cpu0
        out["cpu_ms_per_image"] = 1000 * cpu / images
        out["cpu_cores"] = cpu / seconds
        if busy0 is not None and busy1 is not None:
            out["other_cores"] = max(0.0, busy1 - busy0 - cpu) / seconds
    return out


def _synthetic_data(base: Path, num_images: int, stored_size: int) -> Path:
    from cxr_tf import convert as convert_mod
    from cxr_tf import synthetic

    source_size = max(32, round(stored_size * SOURCE_OVER_STORED))
    synthetic.write_pneumonia(base / "raw", num_images=num_images, image_size=source_size, seed=0)
    out = base / "tfrecords"
    convert_mod.convert("pneumonia", base / "raw", out, image_size=stored_size, progress=False)
    return out


def run(
    *,
    backend: str = "tensorflow",
    model: str = "densenet121",
    image_size: int = 224,
    batch_size: int = 16,
    steps: int = 20,
    warmup: int = WARMUP_STEPS,
    repeats: int = 2,
    num_images: int = 200,
    stored_size: int = 256,
    data: str | os.PathLike | None = None,
    dataset: str | None = None,
    cache: bool | None = None,
    precision: str = "auto",
    peak_tflops: float | None = None,
    seed: int | None = 0,
    pipeline_seconds: float = 3.0,
    augment_in: str = "model",
    verbose: bool = False,
) -> dict:
    """Set up data and model, measure (a) and (b); return the figures as a dict.

    `backend` is "tensorflow", "jax" or "auto" (`runtime.choose_backend`); it must be chosen
    before Keras is first imported in this process. Rates are images/s; `ratio` is (a)/(b).
    `pipeline_seconds`: how long (c), the pipeline alone, is timed per repeat. `verbose` prints
    progress to stderr.
    """
    if steps < 1 or warmup < 1 or repeats < 1 or batch_size < 1:
        raise ValueError("steps, warmup, repeats and batch_size must be >= 1")
    if augment_in not in ("model", "pipeline"):
        raise ValueError(f"augment_in {augment_in!r} is not 'model' or 'pipeline'")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    backend = choose_backend("auto", backend)
    import keras
    import numpy as np

    from cxr_tf import input_pipeline as ip
    from cxr_tf import models

    tf = ip.tf
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        if verbose:
            print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    tf.get_logger().setLevel("ERROR")  # AutoGraph notes on the pipeline's map functions
    device = _device(backend)
    precision = resolve_precision(precision, device)

    made_tmp = data is None
    base = Path(tempfile.mkdtemp(prefix="cxr_train_bench_")) if made_tmp else None
    try:
        start = time.perf_counter()
        data_dir = _synthetic_data(base, num_images, stored_size) if made_tmp else Path(data)
        info = ip.read_info(data_dir, dataset)
        setup_s = time.perf_counter() - start
        say(f"data ready in {data_dir}")
        train_images = info.num_examples("train")
        if train_images < batch_size:
            raise ValueError(f"the train split has {train_images} images < batch {batch_size}")
        num_outputs = len(info.label_names) if info.task == "multilabel" else 1

        keras.mixed_precision.set_global_policy(precision)
        keras.utils.set_random_seed(0)
        in_model = augment_in == "model"
        build = dict(num_classes=num_outputs, image_size=image_size, channels=1)
        net = models.build_model(model, **build, augment={} if in_model else None, seed=0)
        net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        # Counted on the same network without the augmentation layer: its input size is fixed.
        forward = model_flops(models.build_model(model, **build) if in_model else net)

        def pipeline():
            return ip.make_dataset(
                data_dir,
                "train",
                global_batch_size=batch_size,
                image_size=image_size,
                training=True,
                seed=seed,
                channels=1,
                dataset=info.name,
                cache=cache,
                augment_in_model=in_model,
            )

        # (b): `steps` batches of the pipeline, held in memory, one element per batch.
        batches = list(pipeline().take(steps).as_numpy_iterator())
        x = np.stack([b[0] for b in batches])
        y = np.stack([b[1] for b in batches])
        del batches
        # The pipeline's own tf.data options, so that (a) and (b) differ only in the work done.
        memory = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
        memory = memory.with_options(pipeline().options()).prefetch(tf.data.AUTOTUNE)

        say(f"{steps} batches in memory; tracing/compiling the train step")
        start = time.perf_counter()  # trace / compile the train step
        net.fit(memory, epochs=1, steps_per_epoch=warmup, shuffle=False, verbose=0)
        compile_s = time.perf_counter() - start

        load_before = _load()
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for r in range(repeats):  # a b b a ...: drift hits both alike
            for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                ds = pipeline() if v == "pipeline" else memory
                kw = {"steps": steps, "warmup": warmup, "batch_size": batch_size}
                runs[v].append(measure(net, ds, keras=keras, **kw))
                say(
                    f"repeat {r + 1}/{repeats} {LABELS[v]}: {runs[v][-1]['images_per_s']:.2f} "
                    f"img/s (fit {runs[v][-1]['fit_seconds']:.1f} s)"
                )
        load_after = _load()
        alone = []  # (c): after the training runs, so that they see the machine as it was
        for _ in range(repeats):
            alone.append(
                measure_pipeline(
                    pipeline(), seconds=pipeline_seconds, warmup=warmup, batch_size=batch_size
                )
            )
        say(f"(c) pipeline alone: {max(m['images_per_s'] for m in alone):.1f} img/s")
    finally:
        if made_tmp:
            shutil.rmtree(base, ignore_errors=True)

    rate = {v: max(m["images_per_s"] for m in runs[v]) for v in VARIANTS}
    # Robust to short disturbances: the median step over all timed steps of all runs.
    median_step = {
        v: statistics.median(t for m in runs[v] for t in m["step_seconds"]) for v in VARIANTS
    }
    train_flops = 3 * forward
    peak, peak_source = peak_tflops, "--peak-tflops"
    if peak is None and device["platform"] != "cpu":
        peak, peak_source = peak_tflops_for(device["kind"]), "table"
    if peak is None:
        peak_source = None
    alone_rate = max(m["images_per_s"] for m in alone)
    alone_cpu = min(m["cpu_ms_per_image"] for m in alone)
    memory_cpu = min(m["cpu_ms_per_image"] for m in runs["memory"])
    others = [m["other_cores"] for rs in runs.values() for m in rs if m["other_cores"] is not None]
    ratio = rate["pipeline"] / rate["memory"]
    return {
        "backend": backend,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "platform": device["platform"],
        "device_kind": device["kind"],
        "device_count": device["count"],
        "cores": usable_cores(),
        "precision": precision,
        "model": model,
        "image_size": image_size,
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "seed": seed,
        "augment_in": augment_in,
        "cache": cache,
        "dataset": info.name,
        "data": None if made_tmp else str(data_dir),
        "num_images": num_images if made_tmp else None,
        "stored_size": info.stored_size,
        "train_images": train_images,
        "setup_seconds": setup_s,
        "compile_seconds": compile_s,
        "load_before": load_before,
        "load_after": load_after,
        "runs": runs,
        "images_per_s": rate,
        "ratio": ratio,
        "median_step_seconds": median_step,
        "ratio_by_median_step": median_step["memory"] / median_step["pipeline"],
        "goal": GOAL,
        "pass": ratio >= GOAL,
        "other_cores": sum(others) / len(others) if others else None,
        "pipeline_alone": alone,
        "pipeline_alone_images_per_s": alone_rate,
        "pipeline_alone_cpu_ms_per_image": alone_cpu,
        "pipeline_headroom": alone_rate / rate["memory"],
        # If the pipeline's CPU simply added to the step's (CPU-bound host): (b) / ((b) + (c)).
        "ratio_by_cpu_share": memory_cpu / (memory_cpu + alone_cpu),
        "forward_gflops_per_image": forward / 1e9,
        "train_gflops_per_image": train_flops / 1e9,
        "achieved_tflops": {v: train_flops * rate[v] / 1e12 for v in VARIANTS},
        "peak_tflops": peak,
        "peak_source": peak_source,
        "mfu": {v: train_flops * rate[v] / (peak * 1e12) for v in VARIANTS} if peak else None,
    }


def _fmt(value, spec: str) -> str:
    """`value` formatted by `spec`, or a dash as wide as the spec's width."""
    if value is None:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())
        return "-".rjust(int(width or 1))
    return format(value, spec)


def report(r: dict) -> str:
    """The figures of `run()` as a few lines and a small table."""
    device = f"{r['platform'].upper()}: {r['device_kind']}"
    if r["platform"] == "cpu":
        device += f", {r['cores']} cores"
    elif r["device_count"] > 1:
        device += f" (1 of {r['device_count']} used)"
    data = (
        f"{r['num_images']} synthetic pneumonia images converted at {r['stored_size']} (temp)"
        if r["data"] is None
        else f"{r['data']} ({r['dataset']}, stored at {r['stored_size']})"
    )
    cache = {None: "auto", True: "yes", False: "no"}[r["cache"]]
    lines = [
        f"train throughput: {r['model']} at {r['image_size']}x{r['image_size']}x1, batch "
        f"{r['batch_size']}, {r['precision']}, augmentation in the {r['augment_in']}; Keras "
        f"{r['keras']} on {r['backend']} (TensorFlow {r['tensorflow']} for tf.data)",
        f"device {device}; load average {_fmt(r['load_before'], '.2f')} before, "
        f"{_fmt(r['load_after'], '.2f')} after the timed runs",
        f"data: {data}; train split {r['train_images']} images; cache {cache}; seed {r['seed']}",
        f"set-up {r['setup_seconds']:.1f} s, first {r['warmup']} steps (trace/compile) "
        f"{r['compile_seconds']:.1f} s, not timed; each run {r['warmup']} warm-up + "
        f"{r['steps']} timed steps; best of {r['repeats']}, interleaved",
        "",
        f"  {'':<30} {'img/s':>7} {'s/step':>7} {'CPU ms/img':>10} {'CPU cores':>9} "
        f"{'TFLOP/s':>8} {'MFU':>6}",
    ]
    for v in VARIANTS:
        best = max(r["runs"][v], key=lambda m: m["images_per_s"])
        mfu = r["mfu"][v] if r["mfu"] else None
        lines.append(
            f"  {LABELS[v]:<30} {best['images_per_s']:7.2f} {best['seconds_per_step']:7.3f} "
            f"{_fmt(best['cpu_ms_per_image'], '10.1f')} {_fmt(best['cpu_cores'], '9.2f')} "
            f"{r['achieved_tflops'][v]:8.3f} {_fmt(mfu, '6.1%')}"
        )
    for v in VARIANTS:
        runs = r["runs"][v]
        lines.append(
            f"    {LABELS[v][:3]} runs in order: "
            + " ".join(f"{m['images_per_s']:.2f}" for m in runs)
            + " img/s; warm-up "
            + " ".join(f"{m['warmup_seconds']:.1f}" for m in runs)
            + " s; other processes "
            + " ".join(_fmt(m["other_cores"], ".2f") for m in runs)
            + " cores"
        )
    lines += [
        "",
        f"  (a) / (b)  {r['ratio']:.3f}   goal >= {r['goal']:.2f}   "
        f"{'PASS' if r['pass'] else 'MISS'}   (by median step time: "
        f"{r['ratio_by_median_step']:.3f}; {r['median_step_seconds']['pipeline']:.3f} s vs "
        f"{r['median_step_seconds']['memory']:.3f} s)",
        f"  (c) the pipeline alone, no training: {r['pipeline_alone_images_per_s']:.1f} img/s "
        f"({r['pipeline_headroom']:.1f}x (b)), {r['pipeline_alone_cpu_ms_per_image']:.2f} CPU "
        "ms/img",
        f"  CPU-share estimate of (a) / (b), (b) / ((b) + (c)) in CPU ms/img: "
        f"{r['ratio_by_cpu_share']:.3f}",
        "",
        f"model FLOPs/image: {r['forward_gflops_per_image']:.4g} GFLOPs forward (conv + dense), "
        f"{r['train_gflops_per_image']:.4g} GFLOPs per training step (3x)",
    ]
    if r["mfu"]:
        lines.append(
            f"MFU = train FLOPs/image x img/s / peak {r['peak_tflops']:g} TFLOP/s "
            f"({r['peak_source']}): (a) {r['mfu']['pipeline']:.1%}, (b) {r['mfu']['memory']:.1%}"
        )
    elif r["platform"] == "cpu":
        lines.append("MFU: not reported on CPU (no known peak); give --peak-tflops X to get it")
    else:
        lines.append(f"MFU: no peak known for {r['device_kind']!r}; give --peak-tflops X to get it")
    lines += load_lines(r["other_cores"], r["cores"], "the rates and their ratio are disturbed")
    return "\n".join(lines)


def main(argv=None) -> dict:
    """CLI: parse arguments, run, print the report; returns run()'s dict."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="tensorflow", choices=("auto", "tensorflow", "jax"))
    p.add_argument("--model", default="densenet121", help="a cxr_tf.models variant")
    p.add_argument("--image-size", type=int, default=224, help="default 224")
    p.add_argument("--batch-size", type=int, default=16, help="default 16")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run (default 20)")
    p.add_argument("--warmup", type=int, default=WARMUP_STEPS, help="untimed steps per run")
    p.add_argument("--repeats", type=int, default=2, help="runs of (a) and (b), best counts")
    p.add_argument("--num-images", type=int, default=200, help="synthetic images (default 200)")
    p.add_argument("--stored-size", type=int, default=256, help="synthetic: converted side")
    p.add_argument("--data", default=None, help="a converted dataset (default: synthetic, temp)")
    p.add_argument("--dataset", default=None, help="pneumonia or nih14, if --data holds both")
    p.add_argument("--cache", default="auto", choices=tuple(CACHE), help="pipeline cache")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak, for MFU")
    p.add_argument("--seed", type=int, default=0, help="pipeline seed (default 0, as training)")
    p.add_argument("--pipeline-seconds", type=float, default=3.0, help="(c) per repeat")
    p.add_argument(
        "--augment-in", default="model", choices=("model", "pipeline"), help="default model"
    )
    args = vars(p.parse_args(argv))
    args["cache"] = CACHE[args["cache"]]
    result = run(**args, verbose=True)
    print(report(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
