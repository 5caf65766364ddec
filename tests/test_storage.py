"""cxr_tf.storage: one path layer for local paths (pathlib, unchanged) and URLs (RemotePath
through tf.io.gfile); one-slash typos caught before they become a local folder 'gs:'; an
unreachable bucket as one line; and convert -> train (interrupted, resumed) -> evaluate ->
predict entirely at ram:// URLs, TensorFlow's in-memory file system.

ram:// is per process and shared by the whole pytest session: every test here uses its own
prefix (the `ram` fixture) and removes it afterwards."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cxr_tf import storage
from cxr_tf.storage import RemotePath

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "training" / "demo.yaml"
NO_BUCKET = "gs://cxr-tf-no-such-bucket-xyz"


@pytest.fixture
def ram(request):
    """A fresh ram:// prefix of this test's own, removed afterwards."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)
    root = storage.path(f"ram://test_storage/{name}-{uuid.uuid4().hex[:8]}")
    yield root
    storage.rmtree(root)


# ---- local paths: pathlib, as before


def test_local_paths_come_back_as_pathlib_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for text in (
        "runs/latest",
        "/abs/olute/x.keras",
        "c:/data",
        "./gs/x",
        "tfrecords",
        "./s3:backup",  # a local folder whose name starts as a URL's scheme does
        "backup:s3",
        "run:2/x",
        "gsx:/b",  # not a scheme cxr_tf knows
    ):
        p = storage.path(text)
        assert type(p) is type(Path(text)) and p == Path(text), text
        assert not storage.is_url(text)
    assert storage.path(Path("runs") / "a") == Path("runs/a")
    assert storage.path("~/runs/a") == tmp_path / "runs" / "a"
    assert storage.path(Path("~") / "x") == tmp_path / "x"
    url = storage.path("ram://x/y")
    assert storage.path(url) is url and storage.is_url(url) and storage.is_url("ram://x/y")


def test_a_file_url_is_the_local_path_it_names(tmp_path):
    for url in (f"file://{tmp_path}/run", f"file://localhost{tmp_path}/run"):
        p = storage.path(url)
        assert type(p) is type(tmp_path) and p == tmp_path / "run", url
        assert not storage.is_url(url)
    storage.write_text(f"file://{tmp_path}/run.json", "{}")  # an ordinary local write
    assert (tmp_path / "run.json").read_text() == "{}"
    with pytest.raises(ValueError, match=r"^'file://tmp/x' names host 'tmp'.*: file:///tmp/x$"):
        storage.path("file://tmp/x")


def test_local_writes_are_whole_and_leave_no_temporary_file(tmp_path):
    target = tmp_path / "state.json"
    storage.write_text(target, "one")
    storage.write_text(str(target), "two")  # replaces
    storage.write_bytes(tmp_path / "b.bin", b"\0\1\2")
    assert target.read_text() == "two" and (tmp_path / "b.bin").read_bytes() == b"\0\1\2"
    storage.replace(target, tmp_path / "moved.json")
    assert not target.exists() and (tmp_path / "moved.json").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "moved.json"]
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_text("x")
    storage.rmtree(tmp_path / "tree")
    storage.rmtree(tmp_path / "tree")  # not there: nothing to do
    assert not (tmp_path / "tree").exists()


# ---- RemotePath on ram://


def test_remote_path_names():
    p = storage.path("ram://bucket/runs//a/best.keras/")  # doubled and trailing slashes go
    assert isinstance(p, RemotePath)
    assert str(p) == "ram://bucket/runs/a/best.keras" and repr(p) == f"RemotePath('{p}')"
    assert (p.name, p.suffix, p.stem) == ("best.keras", ".keras", "best")
    assert p.parent == storage.path("ram://bucket/runs/a") and isinstance(p.parent, RemotePath)
    assert [str(q) for q in p.parents] == [
        "ram://bucket/runs/a",
        "ram://bucket/runs",
        "ram://bucket",
    ]
    assert storage.path("ram://bucket").parent == storage.path("ram://bucket")
    assert p.parent / "thresholds.json" == storage.path("ram://bucket/runs/a/thresholds.json")
    assert p.parent / "eval_test" / "roc.png" == storage.path(
        "ram://bucket/runs/a/eval_test/roc.png"
    )
    assert p.with_name("last.keras") == storage.path("ram://bucket/runs/a/last.keras")
    assert p.with_suffix(".h5") == storage.path("ram://bucket/runs/a/best.h5")
    assert p.expanduser() is p and p.resolve() is p
    assert len({p, storage.path(str(p))}) == 1 and p != str(p)
    assert sorted([p, p.parent]) == [p.parent, p]
    gs = storage.path("gs://b/x/y.tfrecord")
    assert (str(gs), gs.name, gs.parent.name) == ("gs://b/x/y.tfrecord", "y.tfrecord", "x")
    rooted = storage.path("hdfs:///user/run//x.json")  # the path part's root is kept
    assert str(rooted) == "hdfs:///user/run/x.json" and rooted.name == "x.json"
    assert [str(q) for q in rooted.parents] == ["hdfs:///user/run", "hdfs:///user"]
    assert rooted.parent / "y" == storage.path("hdfs:///user/run/y")


def test_remote_path_file_system(ram):
    folder = ram / "run" / "backup"
    assert not folder.exists() and not folder.is_dir() and not folder.is_file()
    folder.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)  # again: fine
    assert folder.exists() and folder.is_dir() and not folder.is_file()

    text = folder / "state.json"
    text.write_text('{"epoch": 1, "note": "é"}')
    assert text.exists() and text.is_file() and not text.is_dir()
    assert json.loads(text.read_text()) == {"epoch": 1, "note": "é"}
    assert text.stat().st_size == len('{"epoch": 1, "note": "é"}'.encode())
    data = bytes(range(256)) * 10
    (folder / "epoch-1.weights.h5").write_bytes(data)
    assert (folder / "epoch-1.weights.h5").read_bytes() == data
    assert (folder / "epoch-1.weights.h5").stat().st_size == 2560
    with (folder / "es_best-1.npz").open("wb") as f:
        f.write(b"npz")
    (folder / "deeper").mkdir()
    (folder / "deeper" / "x.json").write_text("{}")

    assert list(folder.iterdir()) == [
        folder / "deeper",
        folder / "epoch-1.weights.h5",
        folder / "es_best-1.npz",
        folder / "state.json",
    ]
    assert folder.glob("*.json") == [text]
    assert (ram / "run").glob("backup/epoch-*.weights.h5") == [folder / "epoch-1.weights.h5"]
    assert (ram / "run").rglob("*.json") == [folder / "deeper" / "x.json", text]
    assert (ram / "run").rglob("deeper") == [folder / "deeper"]

    (folder / "es_best-1.npz").unlink()
    assert not (folder / "es_best-1.npz").exists()
    (folder / "es_best-1.npz").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match=r"ram://.*/es_best-1\.npz does not exist"):
        (folder / "es_best-1.npz").unlink()


def test_a_missing_remote_file_is_one_line_naming_it(ram):
    missing = ram / "nope" / "dataset_info.json"
    for call in (
        missing.read_text,
        missing.read_bytes,
        missing.stat,
        lambda: list(missing.iterdir()),
    ):
        with pytest.raises(FileNotFoundError) as err:
            call()
        message = str(err.value)
        assert message.startswith(f"{missing} does not exist") and "\n" not in message, message


def test_remote_write_replace_and_rmtree(ram):
    storage.write_text(ram / "a" / "thresholds.json", "[0.5]")  # no mkdir, as at gs://
    storage.write_bytes(str(ram / "a" / "best.keras"), b"model")
    assert (ram / "a" / "thresholds.json").read_text() == "[0.5]"
    # a second write replaces the file (TensorFlow's ram:// alone would append to it)
    storage.write_text(ram / "a" / "thresholds.json", "[0.25]")
    assert (ram / "a" / "thresholds.json").read_text() == "[0.25]"
    (ram / "a" / "thresholds.json").write_bytes(b"[1]")
    assert (ram / "a" / "thresholds.json").read_bytes() == b"[1]"
    with (ram / "a" / "thresholds.json").open("w") as f:
        f.write("[0.5]")
    assert (ram / "a" / "thresholds.json").read_text() == "[0.5]"
    storage.replace(ram / "a" / "best.keras", ram / "a" / "moved.keras")
    assert not (ram / "a" / "best.keras").exists()
    assert (ram / "a" / "moved.keras").read_bytes() == b"model"
    storage.write_text(ram / "a" / "new.json", "new")
    storage.replace(ram / "a" / "new.json", ram / "a" / "thresholds.json")  # overwrites
    assert (ram / "a" / "thresholds.json").read_text() == "new"
    assert [p.name for p in (ram / "a").iterdir()] == ["moved.keras", "thresholds.json"]
    storage.sync(ram / "a" / "moved.keras")  # a URL's objects are durable: nothing to do

    storage.rmtree(ram / "a")
    assert not (ram / "a").exists() and not (ram / "a" / "moved.keras").exists()
    storage.rmtree(ram / "a")  # not there: nothing to do


def test_ram_folders_never_made_still_list_and_remove(ram):
    import tensorflow as tf

    # written through RemotePath without a mkdir (as at gs://, where no folder need be made)
    storage.write_text(ram / "run" / "eval_test" / "metrics.json", "{}")
    assert (ram / "run").rglob("*.json") == [ram / "run" / "eval_test" / "metrics.json"]
    assert list(ram.iterdir()) == [ram / "run"]
    # written by TensorFlow itself into a folder never made: the folder still goes
    with tf.io.gfile.GFile(str(ram / "other" / "f.txt"), "wb") as f:
        f.write(b"x")
    assert (ram / "other").is_dir()
    storage.rmtree(ram / "other")
    assert not (ram / "other").exists() and not (ram / "other" / "f.txt").exists()
    storage.rmtree(ram / "run")
    assert not (ram / "run" / "eval_test" / "metrics.json").exists()


def test_upload_tree_replaces_the_folder_and_puts_last_after_the_others(ram, tmp_path, monkeypatch):
    local = tmp_path / "saved_model"
    (local / "variables").mkdir(parents=True)
    (local / "assets").mkdir()
    files = {
        "saved_model.pb": b"graph",
        "variables/variables.index": b"index",
        "variables/variables.data-00000-of-00001": b"data",
        "assets/labels.json": b"[]",
        "zz_last_by_name.txt": b"z",
    }
    for name, data in files.items():
        (local / name).write_bytes(data)
    dst = ram / "run" / "saved_model"
    staging = ram / "run" / ".saved_model.tmp"
    old = {"saved_model.pb": b"old graph", "variables/variables.index": b"old", "stale.txt": b"x"}
    for name, data in old.items():
        storage.write_bytes(dst / name, data)

    def whole(folder):  # {name under folder: bytes}
        files = [p for p in folder.rglob("*") if p.is_file()]
        return {str(p)[len(str(folder)) + 1 :]: p.read_bytes() for p in files}

    order, moves = [], []
    write, rename = RemotePath.write_bytes, storage.replace

    def broken(self, data):  # the upload stopped before its last file
        if self.name == "saved_model.pb":
            raise KeyboardInterrupt
        write(self, data)

    monkeypatch.setattr(RemotePath, "write_bytes", broken)
    with pytest.raises(KeyboardInterrupt):
        storage.upload_tree(local, dst, last="saved_model.pb")
    assert whole(dst) == old  # the old folder is whole

    def record(self, data):
        order.append(str(self))
        write(self, data)

    def move(src, target):
        moves.append(str(target))
        rename(src, target)

    monkeypatch.setattr(RemotePath, "write_bytes", record)
    monkeypatch.setattr(storage, "replace", move)
    storage.upload_tree(local, dst, last="saved_model.pb")

    # uploaded beside its place, the marker last; then moved in, the marker last
    assert order[-1] == str(staging / "saved_model.pb") and len(order) == len(files)
    assert sorted(order) == sorted(str(staging / name) for name in files)
    assert moves == [o.replace(str(staging), str(dst)) for o in order]
    assert whole(dst) == files and not staging.exists()
    assert [p.name for p in (ram / "run").iterdir()] == ["saved_model"]


def test_a_model_saved_again_at_a_ram_url_is_replaced_not_appended(ram):
    import keras

    from cxr_tf import resume

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    target = ram / "backup" / "epoch-1.weights.h5"
    target.parent.mkdir()
    resume.save(model, target, weights=True)
    size = target.stat().st_size
    model.layers[0].kernel.assign(model.layers[0].kernel + 1.0)
    resume.save(model, target, weights=True)  # a rerun writes the epoch again
    assert target.stat().st_size == size
    again = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    again.load_weights(str(target))
    assert (again.layers[0].kernel.numpy() == model.layers[0].kernel.numpy()).all()


# ---- one-slash typos


@pytest.mark.parametrize(
    "typo, fixed",
    [
        ("gs:/b/x", "gs://b/x"),
        ("GS:/b/x", "GS://b/x"),
        ("gs:b/x", "gs://b/x"),
        ("ram:/x", "ram://x"),
        ("ram:x", "ram://x"),
        ("s3:/bucket/data", "s3://bucket/data"),
        ("s3:backup", "s3://backup"),  # a local folder so named is ./s3:backup
        ("file:/tmp/x", "file:///tmp/x"),
        (Path("gs://b/x"), "gs://b/x"),  # a URL that went through pathlib lost a slash
    ],
    ids=str,
)
def test_a_one_slash_typo_is_a_one_line_error_with_the_fixed_url(
    typo, fixed, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as err:
        storage.path(typo)
    message = str(err.value)
    assert "\n" not in message
    assert f"'{typo}'" in message and message.endswith(f": {fixed}"), message
    assert "needs two slashes" in message and f"./{typo}" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bare", ["gs:", "gs:/", "gs://", "GS:", "ram://", "s3:///"])
def test_a_bare_scheme_is_a_one_line_error(bare, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as err:
        storage.path(bare)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"'{bare}' names no location"), message
    assert "://BUCKET/run" in message
    assert list(tmp_path.iterdir()) == []


def _cli(module, *args, cwd, timeout=180):
    """`python -m MODULE ARGS` as a user runs it (no KERAS_BACKEND): (status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = (
        f"{ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(ROOT)
    )
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr


def _one_error_line(code, out, err) -> str:
    """The one `error: ...` line of a command line that stopped on bad input."""
    assert code == 2, (code, out[-2000:], err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    return errors[0]


def _no_url_named_files(*roots) -> list[str]:
    """Paths under `roots` with a component such as 'gs:' or 'ram:' (a URL taken for a local
    path), skipping the virtual environment and git's files."""
    found = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in (".venv", ".git", "node_modules")]
            for name in (*dirs, *files):
                if name.lower().startswith(("gs:", "ram:", "s3:", "gcs:")):
                    found.append(os.path.join(folder, name))
    return found


@pytest.mark.parametrize(
    "module, args, bad",
    [
        (
            "cxr_tf.train",
            ["--config", str(DEMO), "--data", "gs:/b/x", "--workdir", "run"],
            "gs:/b/x",
        ),
        ("cxr_tf.convert", ["pneumonia", "--source", "raw", "--out", "gs:/b/x"], "gs:/b/x"),
        ("cxr_tf.evaluate", ["--model", "gs:/b/run", "--data", "tfrecords"], "gs:/b/run"),
        ("cxr_tf.export", ["--model", "gs:/b/m.keras", "--out", "saved_model"], "gs:/b/m.keras"),
        ("cxr_tf.predict", ["--model", "gs:/b/run/saved_model", "x.png"], "gs:/b/run/saved_model"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("cxr_tf") else "",
)
def test_a_typo_on_the_command_line_is_one_error_line_and_no_local_folder(
    module, args, bad, tmp_path
):
    (tmp_path / "raw").mkdir()
    (tmp_path / "tfrecords").mkdir()
    line = _one_error_line(*_cli(module, *args, cwd=tmp_path))
    fixed = "gs://" + bad.removeprefix("gs:/")
    assert f"'{bad}'" in line and line.endswith(f": {fixed}"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "tfrecords"]
    assert _no_url_named_files(tmp_path) == []


# ---- a bucket that cannot be reached
#
# Offline (as here, and in CI without credentials), a bucket that does not exist and missing
# credentials look the same: TensorFlow cannot reach storage.googleapis.com (nor, for
# credentials, the GCE metadata server, which it retries for up to ~10 s on some machines; here
# the name lookup fails at once). So only what every case shares is asserted: one line naming
# the URL and saying what to check, not which of them is wrong.


def _assert_unreachable_line(message: str, url: str) -> None:
    assert "\n" not in message, message
    assert f"cannot use {url}" in message, message
    for hint in ("bucket name", "credentials", "network"):
        assert hint in message, message


def test_an_unreachable_bucket_is_a_one_line_storage_error():
    url = f"{NO_BUCKET}/run"
    with pytest.raises(storage.StorageError) as err:
        storage.path(url).exists()
    assert isinstance(err.value, OSError)
    _assert_unreachable_line(str(err.value), url)


@pytest.mark.slow  # a subprocess: ~10 s of TensorFlow import
def test_training_from_an_unreachable_bucket_is_one_error_line(tmp_path):
    data = f"{NO_BUCKET}/tfrecords"
    code, out, err = _cli(
        "cxr_tf.train", "--config", str(DEMO), "--data", data, "--workdir", "run", cwd=tmp_path
    )
    line = _one_error_line(code, out, err)
    assert line.startswith(f"error: cannot use {data}/"), line  # the file it tried to read
    _assert_unreachable_line(line, data)
    assert list(tmp_path.iterdir()) == []  # the run folder is not claimed


def _readable(image: Path) -> bool:
    """An image the synthetic archive holds as such (not its __MACOSX stand-ins, nor the
    broken files it has on purpose)."""
    from PIL import Image

    if any(part.startswith(("_", ".")) for part in image.relative_to(image.anchor).parts):
        return False
    try:
        with Image.open(image) as im:
            im.load()
    except OSError:
        return False
    return True


# ---- convert -> train (interrupted, resumed) -> evaluate -> export -> predict, all at ram://


@pytest.mark.slow  # ~1 minute on 2 cores
def test_the_whole_flow_at_ram_urls_writes_nothing_local(ram, tmp_path, monkeypatch, capsys):
    from cxr_tf.runtime import choose_backend

    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != "tensorflow":
            pytest.skip("ram:// needs the TensorFlow Keras backend in this process")
    choose_backend("cpu", verbose=False)

    import keras

    from cxr_tf import synthetic
    from cxr_tf.convert import convert
    from cxr_tf.evaluate import evaluate
    from cxr_tf.export import export_model
    from cxr_tf.predict import Predictor, list_images, predict_files
    from cxr_tf.resume import Interrupted
    from cxr_tf.train import run

    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw"
    synthetic.write_pneumonia(raw, num_images=120, image_size=80, seed=3)
    data, workdir = ram / "data", ram / "runs" / "a"

    result = convert(
        "pneumonia", raw, str(data), image_size=64, workers=1, shard_mb=0.05, progress=False
    )
    out = result.dataset_dir  # <data>/pneumonia/<version>
    assert isinstance(out, RemotePath) and data in out.parents
    assert sum(result.examples_per_split.values()) > 100
    assert (out / "dataset_info.json").is_file() and (out / "features.json").is_file()
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["examples"] == result.examples_per_split
    assert len(out.glob("*.tfrecord-*")) >= 3

    short = ["stages=[{epochs: 2, learning_rate: 0.003}]", "steps_per_epoch=3"]

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    args = dict(data=str(data), workdir=str(workdir), strategy="cpu", overrides=short, verbose=0)
    with pytest.raises(Interrupted, match="interrupted in epoch 1 of 2"):
        run(DEMO, **args, extra_callbacks=[Stop()])
    state = json.loads((workdir / "backup" / "stage1" / "state.json").read_text())
    assert state["epoch"] == 1 and (workdir / "backup" / "stage1" / state["weights"]).is_file()
    assert not (workdir / "done.json").exists()
    capsys.readouterr()

    summary = run(DEMO, **args)
    out = capsys.readouterr().out
    assert "cxr_tf.train: resuming at epoch 2 of 2" in out, out
    history = (workdir / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and [r.split(",")[0] for r in history[1:]] == ["0", "1"]
    assert (workdir / "done.json").is_file()
    assert not (workdir / "backup").exists() and workdir.glob("stage*_end.weights.h5") == []
    for name in (
        "best.keras",
        "thresholds.json",
        "config.yaml",
        "runtime.json",
        "val_metrics.json",
    ):
        assert (workdir / name).is_file(), name
    assert (workdir / "tensorboard").rglob("events.out.tfevents*")
    assert summary["saved_model"] == str(workdir / "saved_model")
    assert (workdir / "saved_model" / "saved_model.pb").is_file()
    assert json.loads((workdir / "done.json").read_text())["workdir"] == str(workdir)

    # a finished run at a URL is found again
    assert run(DEMO, **args)["workdir"] == str(workdir)
    assert "holds a finished run" in capsys.readouterr().out

    scores = evaluate(str(workdir), str(data), split="test", bootstrap=20)
    assert scores["split"] == "test" and scores["n"] == result.examples_per_split["test"]
    metrics = json.loads((workdir / "eval_test" / "metrics.json").read_text())
    assert metrics["n"] == scores["n"]
    assert (workdir / "eval_test").glob("*.png")

    with pytest.raises(ValueError, match="gs://b/exported"):
        export_model(str(workdir / "best.keras"), "gs:/b/exported")
    exported = export_model(str(workdir / "best.keras"), str(ram / "exported"))
    assert (storage.path(exported) / "saved_model.pb").is_file()

    image = next(p for p in sorted(raw.rglob("*.jpeg")) if _readable(p))
    predictor = Predictor(str(workdir / "saved_model"))
    [res] = predict_files(predictor, [str(image)], top_k=1)
    assert res.error is None and len(res.findings) == 1, res
    assert 0.0 <= res.findings[0]["probability"] <= 1.0
    # images at a URL: a folder's images are found (hidden ones skipped) and read from there
    images = ram / "images"
    storage.write_bytes(images / "a.jpeg", image.read_bytes())
    storage.write_bytes(images / ".hidden" / "b.jpeg", image.read_bytes())
    storage.write_bytes(images / "notes.txt", b"not an image")
    assert list_images([str(images)]) == [images / "a.jpeg"]
    [remote] = predict_files(predictor, list_images([str(images)]), top_k=1)
    assert remote.error is None and remote.findings == res.findings, remote

    assert _no_url_named_files(tmp_path, ROOT) == []
