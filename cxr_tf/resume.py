"""What a run writes so that it resumes after any interruption: SIGKILL, Ctrl-C, a preempted VM.

Every file is either written to a temporary name and renamed into place (`cxr_tf.storage`), or
named for its epoch and made current only by the rename of one small state file
(`EpochCommit`). A run stopped at any instant so leaves the previous complete state or the new
one, never half of one; the rerun of the same command repeats at most the epoch it was stopped
in, and that epoch's work (a new best model, a history row) is written again, not twice. Keras'
BackupAndRestore, ModelCheckpoint and CSVLogger write in place, which a kill mid-write leaves
unreadable, so the trainer uses these instead.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from cxr_tf import storage
from cxr_tf.storage import replace, sync, write_text

STATE = "state.json"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, with where it stopped; `train.main` prints it as one line."""


def read_state(folder) -> dict | None:
    """The last committed state in a stage's backup folder, or None."""
    path = storage.path(folder) / STATE
    return json.loads(path.read_text()) if path.is_file() else None


def write_history(path, rows: list[dict]) -> None:
    """history.csv from the committed rows (one per epoch), as Keras' CSVLogger lays it out."""
    if not rows:
        return
    keys = ["epoch", *sorted({k for r in rows for k in r} - {"epoch"})]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, out.getvalue())


def save(model, path, writes: bool = True, weights: bool = False) -> None:
    """`model.save(path)` (or `save_weights`) where this host `writes`; elsewhere into a scratch
    file, dropped at once. Under JAX on several hosts, saving gathers the variables, a
    collective every host must join in the same order, so every host saves."""
    target = storage.path(path) if writes else _scratch() / storage.path(path).name
    storage.prepare_write(target)  # a rerun writes an epoch's files again: ram:// would append
    (model.save_weights if weights else model.save)(str(target))
    if writes:
        sync(target)
    else:
        target.unlink()


def _scratch() -> Path:
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = Path(tempfile.mkdtemp(prefix="cxr_tf-scratch-"))
        atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
    return _SCRATCH


_SCRATCH = None


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the model at `path` as the best by `monitor` so far (above `best`, if given).

    An improving epoch's model goes to `pending_dir` first and replaces `path` only once the
    epoch is committed (`EpochCommit` calls `promote`), so `best.keras` never runs ahead of the
    state a rerun resumes from. With several hosts only process 0 `writes`; the others keep
    the best value alone."""

    def __init__(self, path, monitor, mode, best: float | None, pending_dir, writes: bool = True):
        super().__init__()
        self.path, self.monitor, self.mode, self.best = storage.path(path), monitor, mode, best
        self.pending_dir, self.pending = storage.path(pending_dir), None
        self.writes = writes

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = float(value)
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best = value
            pending = self.pending_dir / f"best-{epoch + 1}.keras"
            if self.writes:
                self.pending_dir.mkdir(parents=True, exist_ok=True)
                self.pending = pending
            save(self.model, pending, self.writes)

    def promote(self) -> None:
        """Put the committed best model in place."""
        if self.writes and self.pending is not None and self.pending.is_file():
            replace(self.pending, self.path)
        self.pending = None


class EpochCommit(keras.callbacks.Callback):
    """Backs up a stage at each epoch's end and restores it at the start of a rerun.

    One commit per epoch: the weights (with the optimizer's state) go to `epoch-N.weights.h5`,
    early stopping's best weights (when they changed) to `es_best-N.npz`, and then `state.json`,
    renamed into place, names them and holds the counters of early stopping, LR reduction and
    the checkpoint, whether training was told to stop, and the history rows so far. history.csv
    is rewritten from those rows. Files no longer named are deleted after the commit.

    It must come after every callback whose state it keeps. `fit` must be given
    `initial_epoch=resume_epoch`; a stage whose committed state says it is over is resumed with
    `initial_epoch == epochs`, so that `fit` only runs its end (early stopping's restore of the
    best weights, the averaged weights' final swap) as the uninterrupted run did.

    With several hosts the folder is shared: only process 0 `writes`, and every host restores
    from that one commit, so all resume at the same epoch and batch (the trainer checks that
    they found the same one, `trainer._agree_on_resume`).
    """

    def __init__(
        self, folder, history_path, history, early_stopping, reduce_lr, checkpoint, writes=True
    ):
        super().__init__()
        self.writes = writes
        self.folder, self.history_path = storage.path(folder), storage.path(history_path)
        self.es, self.rlr, self.ckpt = early_stopping, reduce_lr, checkpoint
        self.state = read_state(self.folder)
        self.history = list(self.state["history"] if self.state else history)
        self.epoch = None  # the epoch running now, for the Ctrl-C message

    @property
    def resumes(self) -> bool:
        return self.state is not None

    def resume_epoch(self, start: int, end: int) -> int:
        """The epoch `fit` starts at: `end` if the committed state says the stage is over."""
        if self.state is None:
            return start
        return end if self.state["stop"] else max(start, self.state["epoch"])

    def on_train_begin(self, logs=None):
        if self.writes:
            write_history(self.history_path, self.history)  # drops rows of an uncommitted epoch
        state = self.state
        if state is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(self.folder / state["weights"]))
        es = state["early_stopping"]
        self.es.wait, self.es.best, self.es.best_epoch = es["wait"], es["best"], es["best_epoch"]
        self.es.stopped_epoch = es["stopped_epoch"]
        if es["best_weights"]:
            with np.load(io.BytesIO((self.folder / es["best_weights"]).read_bytes())) as f:
                self.es.best_weights = [f[f"w{i}"] for i in range(len(f.files))]
        if self.rlr is not None:
            rlr = state["reduce_lr"]
            self.rlr.wait, self.rlr.best = rlr["wait"], rlr["best"]
            self.rlr.cooldown_counter = rlr["cooldown"]
        self.ckpt.best = state["checkpoint_best"]
        if state["best_pending"]:  # committed, but stopped before it was put in place
            self.ckpt.pending = self.folder / state["best_pending"]
            self.ckpt.promote()  # only where it writes

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        weights = f"epoch-{done}.weights.h5"
        self.history.append({"epoch": epoch, **{k: _num(v) for k, v in (logs or {}).items()}})
        if self.writes:
            self.folder.mkdir(parents=True, exist_ok=True)
        save(self.model, self.folder / weights, self.writes, weights=True)
        if not self.writes:
            return
        es_best = self.state["early_stopping"]["best_weights"] if self.state else None
        if self.es.best_weights is not None and self.es.best_epoch == epoch:
            es_best = f"es_best-{done}.npz"
            buffer = io.BytesIO()  # np.savez(path) would add ".npz"
            np.savez(buffer, **{f"w{i}": w for i, w in enumerate(self.es.best_weights)})
            with (self.folder / es_best).open("wb") as f:
                f.write(buffer.getvalue())
            sync(self.folder / es_best)
        state = {
            "epoch": done,
            "weights": weights,
            "stop": bool(self.model.stop_training),
            "early_stopping": {
                "wait": self.es.wait,
                "best": _num(self.es.best),
                "best_epoch": self.es.best_epoch,
                "stopped_epoch": self.es.stopped_epoch,
                "best_weights": es_best,
            },
            "reduce_lr": None
            if self.rlr is None
            else {
                "wait": self.rlr.wait,
                "best": _num(self.rlr.best),
                "cooldown": self.rlr.cooldown_counter,
            },
            "checkpoint_best": _num(self.ckpt.best),
            "best_pending": self.ckpt.pending.name if self.ckpt.pending else None,
            "history": self.history,
        }
        write_text(self.folder / STATE, json.dumps(state))  # the commit
        self.state = state
        self.ckpt.promote()
        keep = {STATE, weights, es_best}
        for path in self.folder.iterdir():
            if path.name not in keep:
                path.unlink()
        write_history(self.history_path, self.history)


def _num(x):
    return None if x is None else float(x)
