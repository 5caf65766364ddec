"""Training on several hosts, through the engines built for it: two processes on localhost train
the demo under TensorFlow's MultiWorkerMirroredStrategy (TF_CONFIG) and under JAX
(jax.distributed with a local coordinator), each reading its own shards, and end where a
one-process run with the same global batch ends, within a stated tolerance. Every process is
started as a user starts it: the train CLI, no KERAS_BACKEND."""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from cxr_tf import input_pipeline
from cxr_tf.augment import Augment

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "training" / "demo.yaml"
# 5 epochs of 5 steps at a fixed learning rate, for one process and for two: the plateau
# callback would act on noise and part the runs
EPOCHS = [
    "--set",
    "stages=[{epochs: 5, learning_rate: 0.003}]",
    "--set",
    "steps_per_epoch=5",
    "--set",
    "reduce_lr_patience=100",
    "--set",
    "early_stopping_patience=100",
]
# The one-process reference for TensorFlow: MirroredStrategy over two logical CPUs, so that its
# replicas hold 16 images each and normalise their batches as the two hosts' replicas do.
MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cxr_tf.train import main
raise SystemExit(main(sys.argv[1:]))
"""


# The train CLI, killed at a moment an environment variable names: KILL_AFTER_COMMIT=N right
# after the commit of epoch N (the moment just after an epoch's end), KILL_AT_BATCH=E:B at the end
# of batch B of epoch index E (mid-epoch). The hook goes in once the CLI has chosen the backend.
KILLABLE = """
import os, signal, sys
import cxr_tf.runtime as rt
make_runtime = rt.make_runtime
def patched(*args, **kwargs):
    from cxr_tf import resume
    after, at = int(os.environ.get("KILL_AFTER_COMMIT", 0)), os.environ.get("KILL_AT_BATCH")
    end = resume.EpochCommit.on_epoch_end
    def on_epoch_end(self, epoch, logs=None):
        end(self, epoch, logs)
        if epoch + 1 == after:
            os.kill(os.getpid(), signal.SIGKILL)
    def on_train_batch_end(self, batch, logs=None):
        if at and [self.epoch, batch] == [int(x) for x in at.split(":")]:
            os.kill(os.getpid(), signal.SIGKILL)
    resume.EpochCommit.on_epoch_end = on_epoch_end
    resume.EpochCommit.on_train_batch_end = on_train_batch_end
    return make_runtime(*args, **kwargs)
rt.make_runtime = patched
from cxr_tf.train import main
raise SystemExit(main(sys.argv[1:]))
"""


# The train CLI with a host's second look for a file process 0 wrote (trainer._SHARED_WAIT_S,
# a minute for a shared file system's cache) cut to 2 s: these run folders are local.
QUICK_LOOK = """
import sys
import cxr_tf.runtime as rt
make_runtime = rt.make_runtime
def patched(*args, **kwargs):
    from cxr_tf import trainer
    trainer._SHARED_WAIT_S = 2
    return make_runtime(*args, **kwargs)
rt.make_runtime = patched
from cxr_tf.train import main
raise SystemExit(main(sys.argv[1:]))
"""


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TF_CONFIG")}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _train(data, workdir, *args):
    return [
        sys.executable,
        "-m",
        "cxr_tf.train",
        "--config",
        str(DEMO),
        "--data",
        str(data),
        "--workdir",
        str(workdir),
        *EPOCHS,
        *args,
    ]


def _run_together(commands, envs, timeout=900, expect=0):
    procs = [
        subprocess.Popen(
            c, env=e, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for c, e in zip(commands, envs, strict=True)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            p.kill()
    for k, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == expect, f"process {k}:\n{out[-1500:]}\n{err[-3000:]}"
    return [out for out, _ in outs] if expect == 0 else [err for _, err in outs]


def _run_until_killed(commands, envs, grace=10):
    """Start the processes; once the first has died, give the others `grace` seconds (a host
    whose peer died waits in its next collective, or fails), then SIGKILL them."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", KILLABLE, *c[3:]],  # c: python -m cxr_tf.train <args>
            env=e,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for c, e in zip(commands, envs, strict=True)
    ]
    try:
        deadline = time.monotonic() + 900
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.5)
        first = next(k for k, p in enumerate(procs) if p.poll() is not None)
        assert procs[first].returncode == -signal.SIGKILL, procs[first].communicate()[0][-3000:]
        time.sleep(grace)
    finally:
        for p in procs:
            p.kill()
    return first, [p.communicate()[0] for p in procs]


def _committed(workdir) -> int:
    return json.loads((workdir / "backup" / "stage1" / "state.json").read_text())["epoch"]


def _resumed_at(out: str) -> int:
    (epoch,) = re.findall(r"resuming at epoch (\d+) of 5", out)
    return int(epoch)


def _check_kill_and_resume(outs, resumed, workdir, uninterrupted, epoch):
    """Both hosts resumed from the one backup at `epoch`; the run ends as the uninterrupted
    two-host run does, within the tolerance of _check_two_hosts (the hosts read their batches in
    another order once resumed: a resumed epoch skips, a fresh one shuffles anew)."""
    assert [_resumed_at(out) for out in resumed] == [epoch, epoch], resumed
    _check_written_once(workdir, runs=2)
    two, again = _history(uninterrupted), _history(workdir)
    last = [np.mean([r["loss"] for r in h[-2:]]) for h in (two, again)]
    assert abs(last[0] - last[1]) < 0.15, (two, again)
    assert max(r["val_auc"] for r in again) >= 0.85


def _history(workdir):
    rows = (Path(workdir) / "history.csv").read_text().splitlines()
    keys = rows[0].split(",")
    return [dict(zip(keys, map(float, r.split(",")), strict=True)) for r in rows[1:]]


def _check_written_once(workdir, runs=1):
    """One host wrote the shared run folder: no per-host copies, one TensorBoard event file per
    log folder and run of the command (each writer makes its own), one history row per epoch."""
    assert not list(workdir.glob("process-*"))
    for logs in ("train", "validation"):
        events = list((workdir / "tensorboard" / logs).glob("events.out.tfevents.*"))
        assert len(events) == runs, events
    assert [r["epoch"] for r in _history(workdir)] == [0, 1, 2, 3, 4]
    assert not (workdir / "backup").exists()


def _check_two_hosts(outs, workdir, one_process):
    for k, out in enumerate(outs):
        assert f"process {k} of 2" in out
    rt = json.loads((workdir / "runtime.json").read_text())
    assert rt["num_processes"] == 2 and rt["process_index"] == 0 and rt["global_batch"] == 32
    assert (workdir / "saved_model" / "saved_model.pb").is_file()
    _check_written_once(workdir)
    two, one = _history(workdir), _history(one_process)
    rt_one = json.loads((one_process / "runtime.json").read_text())
    assert rt_one["global_batch"] == 32 and rt_one["learning_rates"] == rt["learning_rates"]
    # Tolerance: the hosts read other batches in another order than one process does (each its
    # own shards), so the runs are not equal step for step; they learn alike. Over the last two
    # epochs the mean training loss differs by < 0.15 (it falls from ~0.69 in both), and both
    # rank the validation split well.
    last = [np.mean([r["loss"] for r in h[-2:]]) for h in (two, one)]
    assert abs(last[0] - last[1]) < 0.15, (two, one)
    assert max(r["val_auc"] for r in two) >= 0.85 and max(r["val_auc"] for r in one) >= 0.85


def _tf_envs(*extra):
    """Each worker's environment: a TF_CONFIG on fresh ports, plus `extra[k]`."""
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
    return [
        _env(
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": k}}),
            **extra[k],
        )
        for k in range(2)
    ]


@pytest.mark.slow
def test_two_hosts_under_multi_worker_mirrored_strategy(pneumonia_data, tmp_path):
    """Two workers, against one process; then killed at different moments and rerun: process
    0 right after its commit of epoch 2, process 1 wherever that left it (its next step waits on
    the dead host). Both resume from the one backup at epoch 3. A host that sees another run
    folder than its peer stops with one line, as every host does: on a rerun (its folder is
    empty) and on a fresh run (each host its own folder, as a local --workdir on each)."""
    cmd = _train(pneumonia_data, tmp_path / "two", "--strategy", "multiworker")
    outs = _run_together([cmd, cmd], _tf_envs({}, {}))
    assert all("strategy multiworker, 2 x CPU" in out for out in outs)
    one = tmp_path / "one"
    reference = _train(pneumonia_data, one, "--strategy", "mirrored")
    reference[1:3] = ["-c", MIRRORED]  # python -c MIRRORED <the train CLI's arguments>
    _run_together([reference], [_env()])
    _check_two_hosts(outs, tmp_path / "two", one)

    killed = tmp_path / "killed"
    cmd = _train(pneumonia_data, killed, "--strategy", "multiworker")
    first, _ = _run_until_killed([cmd, cmd], _tf_envs({"KILL_AFTER_COMMIT": "2"}, {}))
    assert (
        first == 0 and json.loads((killed / "backup/stage1/state.json").read_text())["epoch"] == 2
    )
    lone = _train(pneumonia_data, tmp_path / "lone", "--strategy", "multiworker")
    errs = _run_together([cmd, lone], _tf_envs({}, {}), timeout=300, expect=2)
    for err in errs:
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "the hosts see" in lines[0] and "Traceback" not in err, err
        assert "process 0: 2 epochs done, process 1: no backup" in lines[0]
    assert not (tmp_path / "lone").exists()  # process 1 writes nothing
    own = [
        [sys.executable, "-c", QUICK_LOOK, *_train(pneumonia_data, tmp_path / f"own{k}")[3:]]
        + ["--strategy", "multiworker"]
        for k in (0, 1)
    ]
    errs = _run_together(own, _tf_envs({}, {}), timeout=300, expect=2)
    for err in errs:
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "process 0: has runtime.json, process 1: no runtime.json" in lines[0], lines
        assert "--workdir must be one folder every host shares" in lines[0], lines
    assert not (tmp_path / "own1").exists()
    resumed = _run_together([cmd, cmd], _tf_envs({}, {}))
    _check_kill_and_resume(outs, resumed, killed, tmp_path / "two", epoch=3)


@pytest.mark.slow
def test_two_hosts_under_jax_distributed(pneumonia_data, tmp_path):
    (port,) = _free_ports(1)
    jax_args = [
        "--backend",
        "jax",
        "--strategy",
        "multiworker",
        "--coordinator",
        f"localhost:{port}",
        "--num-processes",
        "2",
    ]
    commands = [
        _train(pneumonia_data, tmp_path / "two", *jax_args, "--process-id", str(k))
        for k in range(2)
    ]
    outs = _run_together(commands, [_env(), _env()])
    assert all("backend jax, strategy multiworker, 2 x CPU" in out for out in outs)
    # killed at different moments: process 1 mid-epoch 2 (after its batch 3), then process 0,
    # which waits for it in the next step; both resume from the one backup at epoch 2
    killed = tmp_path / "killed"

    def commands_on(workdir):
        (port,) = _free_ports(1)
        args = [*jax_args[:-3], f"localhost:{port}", *jax_args[-2:]]
        return [_train(pneumonia_data, workdir, *args, "--process-id", str(k)) for k in range(2)]

    first, _ = _run_until_killed(commands_on(killed), [_env(), _env(KILL_AT_BATCH="1:2")])
    assert (
        first == 1 and json.loads((killed / "backup/stage1/state.json").read_text())["epoch"] == 1
    )
    resumed = _run_together(commands_on(killed), [_env(), _env()])
    one = tmp_path / "one"
    _run_together(
        [
            _train(
                pneumonia_data,
                one,
                "--backend",
                "jax",
                "--strategy",
                "cpu",
                "--set",
                "batch_size=32",
            )
        ],
        [_env()],
    )
    _check_two_hosts(outs, tmp_path / "two", one)
    _check_kill_and_resume(outs, resumed, killed, tmp_path / "two", epoch=2)


def _digest(image) -> str:
    return hashlib.sha1(np.asarray(image, np.uint8).tobytes()).hexdigest()


def test_each_training_example_is_read_once_per_epoch_across_two_hosts(nih14_data):
    """The two hosts' input pipelines, as the trainer makes them, over one epoch: no example
    twice, all from the training split, and every example by the end of the next epoch."""
    info = input_pipeline.read_info(nih14_data)
    ids = {}  # image digest -> image id, from the stored records themselves
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "image_id": tf.io.FixedLenFeature([], tf.string),
    }
    for record in tf.data.TFRecordDataset(info.files("train")):
        ex = tf.io.parse_single_example(record, spec)
        ids[_digest(tf.io.decode_image(ex["image"], channels=1))] = ex["image_id"].numpy()
    assert len(ids) == info.num_examples("train")
    global_batch = 8
    steps = input_pipeline.steps_per_epoch(info, "train", global_batch, num_pipelines=2)
    read = []
    for k in range(2):
        ds = input_pipeline.make_dataset(
            nih14_data,
            "train",
            global_batch_size=global_batch,
            image_size=64,
            training=True,
            channels=1,
            seed=0,
            augment=Augment.none(),
            augment_in_model=True,
            cache=False,
            input_context=tf.distribute.InputContext(2, k, 2),
        )
        # the square NIH images come out whole: their bytes name them
        batches = [images for images, _ in ds.take(2 * steps).as_numpy_iterator()]
        read.append([ids[_digest(np.round(im * 255))] for b in batches for im in b])
    half = steps * global_batch // 2
    first_epoch = read[0][:half] + read[1][:half]
    assert len(set(first_epoch)) == len(first_epoch) == steps * global_batch
    assert set(read[0][:half]).isdisjoint(read[1])  # each host reads its own shards
    assert set(read[0]) | set(read[1]) == set(ids.values())  # all, within two epochs
