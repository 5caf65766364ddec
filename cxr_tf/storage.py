"""Writing a run's files so that an interruption at any instant leaves the old file or the new
one, never part of one: each is written under a temporary name in the same folder and renamed
into place (a rename within a file system is atomic). Imports neither TensorFlow nor Keras."""

from __future__ import annotations

import os
from pathlib import Path


def write_text(path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_model(model, path) -> None:
    """`model.save(path)` (a `.keras` file) through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)
