"""Training CLI: `python -m cxr_tf.train --config training/X.yaml [--data DIR] [--workdir DIR]
[--strategy {auto,tpu,mirrored,multiworker,cpu}] [--backend {auto,tensorflow,jax}] [--set k=v]`.

A thin layer over `run`, which picks the Keras backend *before* Keras is imported, sets up the
distribution, and hands over to `cxr_tf.trainer.train`. Running the same command again after an
interruption resumes the run.
"""

from __future__ import annotations

import argparse

from cxr_tf import config as config_lib
from cxr_tf.cli import fail
from cxr_tf.runtime import BACKENDS, STRATEGIES, RuntimeErrorWithHint, choose_backend


def run(
    config_path,
    *,
    data="tfrecords",
    workdir="runs/latest",
    strategy="auto",
    backend="auto",
    overrides=None,
    tpu=None,
    verbose="auto",
    extra_callbacks=(),
) -> dict:
    """Load the config, choose backend and strategy, train; returns the run summary."""
    cfg = config_lib.load(config_path, overrides)
    choose_backend(strategy, backend)
    from cxr_tf import trainer  # imports Keras: only now that the backend is fixed
    from cxr_tf.runtime import make_runtime

    runtime = make_runtime(strategy, cfg.batch_size, tpu=tpu)
    return trainer.train(
        cfg, data, workdir, runtime, verbose=verbose, extra_callbacks=extra_callbacks
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cxr_tf.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="a YAML file from training/")
    p.add_argument("--data", default="tfrecords", help="the converter's --out folder")
    p.add_argument("--workdir", default="runs/latest", help="run folder (resumes if it exists)")
    p.add_argument("--strategy", default="auto", choices=STRATEGIES)
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--tpu", default=None, help="TPU name or address (TensorFlow backend)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set batch_size=16 (repeatable)",
    )
    args = p.parse_args(argv)
    try:
        summary = run(
            args.config,
            data=args.data,
            workdir=args.workdir,
            strategy=args.strategy,
            backend=args.backend,
            overrides=args.overrides,
            tpu=args.tpu,
        )
    except (ValueError, FileNotFoundError, RuntimeErrorWithHint) as err:
        return fail(err)
    print(
        f"Done: best {summary['monitor']} {summary['best']}, validation mean AUROC "
        f"{summary['val_auroc_mean']}; run folder {summary['workdir']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
