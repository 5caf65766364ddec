"""Every file cxr_tf reads or writes, on the local disk or at a URL (gs://, or any other scheme
TensorFlow's file systems know: ram://, hdfs://, s3:// with tensorflow-io).

`path(p)` gives a `pathlib.Path` for a local path and a `RemotePath` (the same methods, through
`tf.io.gfile`) for a URL, so the code above never tests strings. A run's files are written so
that an interruption at any instant leaves the old file or the new one, never part of one:
locally each is written under a temporary name in the same folder, flushed to disk and renamed
(a rename within a file system is atomic; the flush keeps the order of writes across a power
loss, as on a preempted VM). An object store has no rename, but an object appears only when its
upload has finished, so there the final object is written once; a folder (SavedModel, converted
dataset) is uploaded with the file that marks it complete last (a SavedModel beside its place
first, then moved in: `upload_tree`). Imports neither TensorFlow nor Keras for local paths.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shutil
from pathlib import Path

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Schemes whose name then a colon without "//" is a URL typo ("gs:/bucket/x", "gs:bucket",
# "gs:"), not a local folder "gs:"; anything else with a colon (c:/data, run:2) is a local path.
_SCHEMES = ("gs", "gcs", "s3", "ram", "hdfs", "az", "abfs", "http", "https", "file")
_TYPO = re.compile(rf"^({'|'.join(_SCHEMES)}):(?!//)(.*)$", re.IGNORECASE | re.DOTALL)


class StorageError(OSError):
    """A URL that cannot be reached: its message is one line naming it and what to check."""


def is_url(p) -> bool:
    """`p` names a location at a URL (a `file://` URL is a local path)."""
    if isinstance(p, RemotePath):
        return True
    match = _URL.match(str(p))
    return bool(match) and match.group(1).lower() != "file"


def path(p) -> Path | RemotePath:
    """`p` (a str, Path or RemotePath) as a Path, or a RemotePath for a URL; a `file://` URL is
    the local Path it names (written as any local file is).

    Raises ValueError for a URL typo such as 'gs:/bucket/x' or 'gs:bucket' (which pathlib
    would take for a local folder named 'gs:'), a bare 'gs:' or 'gs://', and a file:// URL
    naming another host."""
    if isinstance(p, RemotePath):
        return p
    text = os.fspath(p) if isinstance(p, os.PathLike) else str(p)
    url = _URL.match(text)
    if url:
        scheme, rest = url.group(1), text[url.end() :]
        if not rest.strip("/"):
            raise ValueError(f"{text!r} names no location: give one, e.g. {scheme}://BUCKET/run")
        if scheme.lower() == "file":
            return _file_url(text, rest)
        return RemotePath(text)
    typo = _TYPO.match(text)
    if typo:
        scheme, rest = typo.group(1), typo.group(2).lstrip("/")
        if not rest:
            raise ValueError(f"{text!r} names no location: give one, e.g. {scheme}://BUCKET/run")
        fixed = f"{scheme}:///{rest}" if scheme.lower() == "file" else f"{scheme}://{rest}"
        raise ValueError(
            f"{text!r} is not a URL (a {scheme}:// path needs two slashes; a local folder of "
            f"that name is ./{text}): {fixed}"
        )
    return Path(text).expanduser()


def _file_url(text: str, rest: str) -> Path:
    """The local Path of `file:///abs/path` (or `file://localhost/abs/path`)."""
    host, slash, local = rest.partition("/")
    if host not in ("", "localhost") or not slash:
        raise ValueError(
            f"{text!r} names host {host!r}, but a file:// URL is a path on this machine: "
            f"file:///{rest.lstrip('/')}"
        )
    return Path("/" + local)


def _gfile():
    from cxr_tf.deps import require_tensorflow

    return require_tensorflow().io.gfile


def _call(url: str, fn, *args):
    """`fn(*args)`, TensorFlow's file-system errors made one-line StorageError/FileNotFoundError."""
    import tensorflow as tf

    try:
        return fn(*args)
    except tf.errors.NotFoundError as err:
        detail = _first_line(err)  # often empty (ram://)
        raise FileNotFoundError(
            f"{url} does not exist" + (f" ({detail})" if detail else "")
        ) from None
    except tf.errors.OpError as err:
        hint = (
            "check the bucket name, that this machine's credentials may use it (`gcloud auth "
            "application-default login`, or the VM's service account) and the network"
            if url.startswith(("gs://", "gcs://"))
            else "check the URL and that TensorFlow has a file system for its scheme"
        )
        raise StorageError(
            f"cannot use {url}: {type(err).__name__}: {_first_line(err)}; {hint}"
        ) from None


def _first_line(err) -> str:
    message = getattr(err, "message", None) or str(err)
    return " ".join(message.split())[:300]


class _Stat:
    def __init__(self, size: int):
        self.st_size = size


class RemotePath:
    """A pathlib-like path at a URL, through `tf.io.gfile`: the methods cxr_tf uses of Path."""

    def __init__(self, url: str):
        scheme, rest = str(url).split("://", 1)
        self._scheme = scheme
        # a path part from the root keeps it (hdfs:///user/x: /user/x on the default name node)
        self._base = f"{scheme}://" + ("/" if rest.startswith("/") else "")
        self._rest = "/".join(part for part in rest.split("/") if part)

    # ---- the name
    def __str__(self) -> str:
        return self._base + self._rest

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other) -> bool:
        return str(self) < str(other)

    def __truediv__(self, other) -> RemotePath:
        return RemotePath(f"{self}/{other}")

    @property
    def name(self) -> str:
        return self._rest.rsplit("/", 1)[-1] if "/" in self._rest else ""

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def parent(self) -> RemotePath:
        if "/" not in self._rest:
            return self
        return RemotePath(self._base + self._rest.rsplit("/", 1)[0])

    @property
    def parents(self) -> list[RemotePath]:
        out, p = [], self
        while p.parent != p:
            p = p.parent
            out.append(p)
        return out

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> RemotePath:
        return self.parent / (self.stem + suffix)

    def expanduser(self) -> RemotePath:
        return self

    def resolve(self) -> RemotePath:
        return self

    absolute = resolve

    # ---- the file system
    def exists(self) -> bool:
        return _call(str(self), _gfile().exists, str(self))

    def is_dir(self) -> bool:
        return _call(str(self), _gfile().isdir, str(self))

    def is_file(self) -> bool:
        return self.exists() and not self.is_dir()

    def mkdir(self, mode=0o777, parents: bool = False, exist_ok: bool = False) -> None:
        _call(str(self), _gfile().makedirs, str(self))

    def open(self, mode: str = "r", **_):
        if "w" in mode or "x" in mode:
            self._prepare_write()
        elif "a" in mode:
            self._prepare_write(truncate=False)
        return _call(str(self), _gfile().GFile, str(self), mode)

    def _prepare_write(self, truncate: bool = True) -> None:
        """Two quirks of TensorFlow's ram:// file system, which the tests run on (gs:// has
        neither): a write to a file that exists appends to it instead of replacing it, so the
        old file is removed first; and a folder lists only the files of folders that were made
        (one written under a folder never made is missing from its parents' listings, and
        rmtree then fails half-way or misses it), so the folder is made first, as an object
        store's prefixes need not be."""
        if self._scheme.lower() != "ram":
            return
        if self.parent != self:
            _call(str(self.parent), _gfile().makedirs, str(self.parent))
        if truncate and _gfile().exists(str(self)) and not _gfile().isdir(str(self)):
            _call(str(self), _gfile().remove, str(self))

    def read_bytes(self) -> bytes:
        with self.open("rb") as f:
            return _call(str(self), f.read)

    def read_text(self, encoding=None) -> str:
        return self.read_bytes().decode(encoding or "utf-8")

    def write_bytes(self, data: bytes) -> None:
        self._prepare_write()

        def write():
            with _gfile().GFile(str(self), "wb") as f:
                f.write(data)

        _call(str(self), write)

    def write_text(self, text: str, encoding=None) -> None:
        self.write_bytes(text.encode(encoding or "utf-8"))

    def iterdir(self):
        for name in sorted(_call(str(self), _gfile().listdir, str(self))):
            yield self / name.rstrip("/")

    def glob(self, pattern: str) -> list[RemotePath]:
        return sorted(RemotePath(p) for p in _call(str(self), _gfile().glob, f"{self}/{pattern}"))

    def rglob(self, pattern: str) -> list[RemotePath]:
        out = []
        for folder, dirs, files in _call(str(self), lambda: list(_gfile().walk(str(self)))):
            for name in (*dirs, *files):
                if fnmatch.fnmatch(name.rstrip("/"), pattern):
                    out.append(RemotePath(f"{folder}/{name.rstrip('/')}"))
        return sorted(out)

    def unlink(self, missing_ok: bool = False) -> None:
        if missing_ok and not self.exists():
            return
        _call(str(self), _gfile().remove, str(self))

    def stat(self) -> _Stat:
        return _Stat(_call(str(self), _gfile().stat, str(self)).length)


def write_text(p, text: str) -> None:
    """Write `text` to `p` so that it appears whole or not at all."""
    write_bytes(p, text.encode())


def write_bytes(p, data: bytes) -> None:
    """Write `data` to `p` so that it appears whole or not at all (a temporary file and a
    rename locally; one upload of the final object at a URL)."""
    p = path(p)
    if isinstance(p, RemotePath):
        p.write_bytes(data)
        return
    tmp = p.with_name(f".{p.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    replace(tmp, p)


def save_model(model, p) -> None:
    """`model.save(p)` (a `.keras` file), whole or not at all (Keras uploads a URL's file in one
    write)."""
    p = path(p)
    if isinstance(p, RemotePath):
        prepare_write(p)
        model.save(str(p))
        return
    tmp = p.with_name(f".{p.stem}.tmp.keras")
    model.save(tmp)
    sync(tmp)
    replace(tmp, p)


def prepare_write(p) -> None:
    """Ready the URL `p` for a library that writes it through tf.io.gfile itself (Keras'
    `save`, `save_weights`): on ram:// a file written again would be appended to
    (`RemotePath._prepare_write`). Nothing to do for a local path."""
    p = path(p)
    if isinstance(p, RemotePath):
        p._prepare_write()


def sync(p) -> None:
    """Flush a local file written by another library (h5py, Keras) to disk; a URL's objects are
    durable once written."""
    p = path(p)
    if isinstance(p, RemotePath):
        return
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(src, dst) -> None:
    """Rename `src` to `dst`: atomically with the folder flushed locally; at a URL, a copy of the
    finished object (itself atomic) and the source's removal."""
    src, dst = path(src), path(dst)
    if isinstance(dst, RemotePath) or isinstance(src, RemotePath):
        _call(str(dst), _gfile().rename, str(src), str(dst), True)
        return
    os.replace(src, dst)
    fd = os.open(Path(dst).parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rmtree(p) -> None:
    """Remove the folder `p` and everything in it, if it is there."""
    p = path(p)
    if isinstance(p, RemotePath):
        if p.exists():
            try:
                _call(str(p), _gfile().rmtree, str(p))
            except FileNotFoundError:  # a folder with no folder object of its own: its files
                if p.exists():  # are gone, then removing the folder itself is NotFound
                    raise
        return
    shutil.rmtree(p, ignore_errors=True)


def upload_tree(local: Path, dst, last: str) -> None:
    """Copy the local folder `local` to the URL `dst`, replacing what is there, the file `last`
    (the one that marks it complete) after every other.

    The upload goes to the sibling `.NAME.tmp` while `dst` stays as it was, so an interrupted
    upload leaves the old folder whole. Then `dst` is emptied and each file moved into place,
    `last` last: a copy within the store, no upload again (neither an object store nor ram://
    renames a folder). Only while those moves run (seconds) is `dst` without a whole folder,
    and without `last`; an interruption then needs the upload run again."""
    local, dst = Path(local), path(dst)
    staging = dst.with_name(f".{dst.name}.tmp")
    files = sorted(q.relative_to(local).as_posix() for q in local.rglob("*") if q.is_file())
    files.sort(key=lambda name: name == last)
    rmtree(staging)
    for name in files:
        (staging / name).write_bytes((local / name).read_bytes())
    rmtree(dst)
    for name in files:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        replace(staging / name, dst / name)
    rmtree(staging)
