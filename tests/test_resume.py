"""A run stopped at any instant resumes with the same command and ends as an uninterrupted one:
SIGKILL at random times (inside epochs, during saves, after the last epoch), SIGKILL inside each
kind of write (cxr_tf.storage's renames, the backup's weights), and Ctrl-C, which prints one
line. The run has two stages, so a stage's end is among the moments hit."""

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cxr_tf import resume

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "training" / "demo.yaml"
SETTINGS = [
    "stages=[{epochs: 2, learning_rate: 0.003, train_backbone: false}, "
    "{epochs: 2, learning_rate: 0.001}]",
    "steps_per_epoch=4",
    "steps_per_execution=2",
    "early_stopping_patience=10",
]
pytestmark = pytest.mark.slow

# The CLI with its writes counted: at the Nth (an os.replace, which cxr_tf.storage and the
# exporter use to put a finished file in place, or a Keras save_weights, which the backup
# writes in place), the process kills itself, before the rename; "mid" first cuts the file
# being written to half; "sigint" is Ctrl-C instead, at that moment.
KILL_AT_WRITE = """
import os, signal, sys
n, mode = int(os.environ["KILL_AT_WRITE"]), os.environ["KILL_MODE"]
count = 0
def hit(path, cut=True):
    global count
    count += 1
    if count == n and mode == "sigint":
        os.kill(os.getpid(), signal.SIGINT)
    elif count == n:
        if mode == "mid" and cut and os.path.isfile(path):
            os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
from cxr_tf.runtime import choose_backend
choose_backend("auto", "auto")
import keras
replace, save_weights = os.replace, keras.Model.save_weights
def patched_replace(src, dst):
    # only a temporary file can be cut: one renamed from elsewhere (the best model, once its
    # epoch is committed) was complete and on disk before
    hit(src, cut=os.path.basename(src).startswith("."))
    replace(src, dst)
def patched_save_weights(self, filepath, *a, **kw):
    save_weights(self, filepath, *a, **kw)
    hit(str(filepath))
os.replace, keras.Model.save_weights = patched_replace, patched_save_weights
from cxr_tf.train import main
sys.exit(main(sys.argv[1:]))
"""


def _rng():
    """A seeded generator: RESUME_TEST_SEED=N repeats a failure's moments."""
    seed = int(os.environ.get("RESUME_TEST_SEED", random.randrange(10**6)))
    return seed, random.Random(seed)


def _cli(data, workdir):
    args = ["--config", str(DEMO), "--data", str(data), "--workdir", str(workdir)]
    for s in SETTINGS:
        args += ["--set", s]
    return args


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return {**env, **extra}


def _train(data, workdir, **extra_env):
    cmd = [sys.executable, "-m", "cxr_tf.train", *_cli(data, workdir)]
    return subprocess.run(cmd, env=_env(**extra_env), capture_output=True, text=True, timeout=600)


def _history(workdir):
    with open(Path(workdir) / "history.csv") as f:
        return list(csv.DictReader(f))


def _assert_same_run(run, reference):
    rows, ref = _history(run), _history(reference)
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"], "each epoch exactly once"
    assert rows[0].keys() == ref[0].keys()
    for a, b in zip(rows, ref, strict=True):
        np.testing.assert_allclose(
            [float(a[k]) for k in a], [float(b[k]) for k in a], rtol=1e-4, err_msg=str(a)
        )
    assert (run / "done.json").is_file() and (run / "saved_model" / "saved_model.pb").is_file()
    assert not (run / "backup").exists()
    t, t_ref = (json.loads((d / "thresholds.json").read_text()) for d in (run, reference))
    np.testing.assert_allclose(t["thresholds"], t_ref["thresholds"], rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def reference(pneumonia_data, tmp_path_factory):
    """The run uninterrupted, and how long it took."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    start = time.monotonic()
    proc = _train(pneumonia_data, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, time.monotonic() - start


def test_sigkill_at_random_moments_then_resume(pneumonia_data, reference, tmp_path):
    ref, seconds = reference
    workdir = tmp_path / "run"
    seed, rng = _rng()
    offsets = []
    for _ in range(6):
        offsets.append(round(rng.uniform(3.0, seconds + 2.0), 1))
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxr_tf.train", *_cli(pneumonia_data, workdir)],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            proc.wait(offsets[-1])
        except subprocess.TimeoutExpired:
            proc.kill()
        err = proc.communicate()[1]
        assert proc.returncode in (0, -signal.SIGKILL), (seed, offsets, err[-3000:])
    proc = _train(pneumonia_data, workdir)
    assert proc.returncode == 0, (seed, offsets, proc.stderr[-3000:])
    _assert_same_run(workdir, ref)


def test_sigkill_inside_writes_then_resume(pneumonia_data, reference, tmp_path):
    ref, _ = reference
    workdir = tmp_path / "run"
    seed, rng = _rng()
    kills = []
    for k in range(12):
        # first between the first epoch's commit and the rename of its best model (write 5:
        # config, runtime, weights, state, best), which the rerun must finish; then at random
        kills.append((5, "mid") if k == 0 else (rng.randint(1, 8), rng.choice(["mid", "rename"])))
        cmd = [sys.executable, "-c", KILL_AT_WRITE, *_cli(pneumonia_data, workdir)]
        env = _env(KILL_AT_WRITE=str(kills[-1][0]), KILL_MODE=kills[-1][1])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, (seed, kills, proc.stderr[-3000:])
    assert len(kills) >= 5, f"too few kills to mean anything: {kills}"
    proc = _train(pneumonia_data, workdir)
    assert proc.returncode == 0, (seed, kills, proc.stderr[-3000:])
    _assert_same_run(workdir, ref)


@pytest.mark.parametrize("at_write", [3, 9])
def test_ctrl_c_prints_one_line_and_the_rerun_resumes(
    pneumonia_data, reference, tmp_path, at_write
):
    """Ctrl-C inside a save, in the first epoch's commit (write 3) and a later one."""
    ref, _ = reference
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-c", KILL_AT_WRITE, *_cli(pneumonia_data, workdir)]
    env = _env(KILL_AT_WRITE=str(at_write), KILL_MODE="sigint")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"interrupted in epoch [1-4] of 4; run the same command to resume", last)
    proc = _train(pneumonia_data, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(workdir, ref)


def test_history_keeps_only_committed_epochs(tmp_path):
    """history.csv is rewritten from the committed rows: a row of an epoch that was not
    committed, or a half-written line, is gone after the rewrite."""
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,0.5\n1,0.4\n1,0.4\n2,0.")
    resume.write_history(path, [{"epoch": 0, "loss": 0.5}, {"epoch": 1, "loss": 0.4}])
    assert path.read_text() == "epoch,loss\n0,0.5\n1,0.4\n"
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_a_stage_stopped_early_is_not_trained_again(tmp_path):
    """Early stopping's stop is committed: the rerun runs only fit's end (the restore of the
    best weights), which leaves the weights of the uninterrupted run."""
    import keras

    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")

    def stage():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(3.0), loss="mse")
        es = keras.callbacks.EarlyStopping("loss", patience=1, restore_best_weights=True)
        ckpt = resume.BestCheckpoint(tmp_path / "best.keras", "loss", "min", None, tmp_path / "b")
        commit = resume.EpochCommit(tmp_path / "backup", tmp_path / "h.csv", [], es, None, ckpt)
        return model, [ckpt, es, commit], commit

    keras.utils.set_random_seed(0)
    model, callbacks, commit = stage()
    # a rate of 3 makes the loss grow: epoch 0 is the best, epoch 1 stops the stage
    model.fit(x, y, epochs=6, verbose=0, callbacks=callbacks, shuffle=False)
    assert [r["epoch"] for r in commit.history] == [0, 1]
    straight = [w.copy() for w in model.get_weights()]

    keras.utils.set_random_seed(1)
    model, callbacks, commit = stage()
    assert commit.resumes and commit.resume_epoch(0, 6) == 6
    model.fit(x, y, epochs=6, initial_epoch=6, verbose=0, callbacks=callbacks)
    for a, b in zip(model.get_weights(), straight, strict=True):
        np.testing.assert_array_equal(a, b)
    with open(tmp_path / "h.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]


def test_an_unfinished_run_resumes_only_on_its_own_plan(tmp_path):
    from cxr_tf.trainer import _check_same_plan

    plan = {"global_batch": 32, "steps_per_epoch": 10, "steps_per_execution": 5}
    (tmp_path / "runtime.json").write_text(json.dumps(plan))
    _check_same_plan(tmp_path, 256, 10, 5)  # no backup: a finished or new run, nothing to resume
    (tmp_path / "backup").mkdir()
    _check_same_plan(tmp_path, 32, 10, 5)
    with pytest.raises(ValueError, match=r"\(global_batch 32 then, 256 here\); resume it where it"):
        _check_same_plan(tmp_path, 256, 10, 5)
