"""Writing a run's files so that an interruption at any instant leaves the old file or the new
one, never part of one: each is written under a temporary name in the same folder, flushed to
disk, and renamed into place (a rename within a file system is atomic; the flush keeps the order
of writes across a power loss, as on a preempted VM). Imports neither TensorFlow nor Keras."""

from __future__ import annotations

import os
from pathlib import Path


def write_text(path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    replace(tmp, path)


def save_model(model, path) -> None:
    """`model.save(path)` (a `.keras` file) through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    sync(tmp)
    replace(tmp, path)


def sync(path) -> None:
    """Flush a file written by another library (h5py, Keras) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(src, dst) -> None:
    """Rename `src` to `dst` atomically, and flush the folder so that the rename lasts."""
    os.replace(src, dst)
    fd = os.open(Path(dst).parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
