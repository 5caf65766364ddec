"""Train a DenseNet on converted chest X-rays, on a TPU, GPUs or a CPU; re-run to resume.

    python -m cxr_tf.train --config training/X.yaml [--data DIR] [--workdir DIR]
        [--strategy {auto,tpu,mirrored,multiworker,cpu}] [--backend {auto,tensorflow,jax}]
        [--set key=value ...]   (e.g. --set stages.0.epochs=2; every key: --list-config)

A thin layer over `run`, which picks the Keras backend *before* anything imports TensorFlow or
Keras, sets up the distribution, and hands over to `cxr_tf.trainer.train`. Importing this module
and parsing its arguments import neither.
"""

from __future__ import annotations

import argparse
import sys

from cxr_tf import config as config_lib
from cxr_tf.cli import add_verbose, fail, quiet_tensorflow, user_errors
from cxr_tf.runtime import BACKENDS, STRATEGIES, choose_backend

INTERRUPTED = 130  # exit status after Ctrl-C, as a shell reports SIGINT


def run(
    config_path,
    *,
    data="tfrecords",
    workdir="runs/latest",
    strategy="auto",
    backend="auto",
    overrides=None,
    tpu=None,
    coordinator=None,
    num_processes=None,
    process_id=None,
    verbose="auto",
    extra_callbacks=(),
) -> dict:
    """Choose backend and strategy, load the config, train; returns the run summary.

    The backend is fixed first, before anything imports TensorFlow or Keras. `coordinator`,
    `num_processes`, `process_id`: JAX on several hosts without a cluster manager.
    """
    choose_backend(strategy, backend)
    cfg = config_lib.load(config_path, overrides)
    from cxr_tf import trainer  # imports Keras: only now that the backend is fixed
    from cxr_tf.runtime import make_runtime

    runtime = make_runtime(
        strategy,
        cfg.batch_size,
        tpu=tpu,
        coordinator=coordinator,
        num_processes=num_processes,
        process_id=process_id,
    )
    return trainer.train(
        cfg, data, workdir, runtime, verbose=verbose, extra_callbacks=extra_callbacks
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cxr_tf.train",
        description=__doc__.split("\n")[0],
        epilog="Several hosts: TensorFlow reads TF_CONFIG (--strategy multiworker); JAX finds a "
        "TPU slice, SLURM or Open MPI itself, elsewhere give --coordinator, --num-processes "
        "and --process-id (see docs/multihost.md).",
    )
    p.add_argument("--config", help="a YAML file from training/ (required to train)")
    p.add_argument(
        "--list-config",
        action="store_true",
        help="print every config key with its type, default and meaning (docs/config.md), and exit",
    )
    p.add_argument("--data", default="tfrecords", help="the converter's --out folder")
    p.add_argument("--workdir", default="runs/latest", help="run folder (resumes if it exists)")
    p.add_argument("--strategy", default="auto", choices=STRATEGIES)
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--tpu", default=None, help="TPU name or address (TensorFlow backend)")
    p.add_argument("--coordinator", help="JAX on several hosts: HOST:PORT of process 0")
    p.add_argument("--num-processes", type=int, help="JAX on several hosts: how many")
    p.add_argument("--process-id", type=int, help="JAX on several hosts: this one's index")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set batch_size=16 (repeatable)",
    )
    add_verbose(p)
    args = p.parse_args(argv)
    quiet_tensorflow(args.verbose)
    if args.list_config:
        print(config_lib.reference(), end="")
        return 0
    if args.config is None:
        p.error("the following arguments are required: --config (or --list-config)")
    try:
        summary = run(
            args.config,
            data=args.data,
            workdir=args.workdir,
            strategy=args.strategy,
            backend=args.backend,
            overrides=args.overrides,
            tpu=args.tpu,
            coordinator=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    except user_errors() as err:
        return fail(err)
    except KeyboardInterrupt as err:  # resume.Interrupted says where; elsewhere it is plain
        print(str(err) or "interrupted; run the same command to resume", file=sys.stderr)
        return INTERRUPTED
    print(
        f"Done: best {summary['monitor']} {_g(summary['best'])}, validation mean AUROC "
        f"{_g(summary['val_auroc_mean'])}; run folder {summary['workdir']}"
    )
    return 0


def _g(x) -> str:
    """A metric at 4 significant digits (0.7667, not 0.7666666507720947); n/a for None."""
    return "n/a" if x is None else f"{x:.4g}"


if __name__ == "__main__":
    raise SystemExit(main())
