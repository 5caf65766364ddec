"""cxr_tf.cli.quiet_tensorflow: TensorFlow's start-up lines are dropped while it is imported,
and every other line still shows, a fatal one before a crash included."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_TF = """import os, sys
os.write(2, b"I0000 00:00 1 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\\n")
os.write(2, b"I0000 00:00 1 port.cc:153] oneDNN custom operations are on.\\n")
print("a warning of its own", file=sys.stderr)
if os.environ.get("FAKE_TF_CRASH"):
    os.write(2, b"F0000 fatal: the libtpu does not match\\n")
    os.abort()
"""


def _import_fake_tf(tmp_path, **env):
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TF)
    code = "from cxr_tf.cli import quiet_tensorflow; quiet_tensorflow(); import tensorflow"
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_start_up_lines_go_and_the_rest_stays(tmp_path):
    proc = _import_fake_tf(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "a warning of its own\n"


def test_a_crash_during_the_import_still_shows_its_message(tmp_path):
    proc = _import_fake_tf(tmp_path, FAKE_TF_CRASH="1")
    assert proc.returncode != 0
    assert "F0000 fatal: the libtpu does not match" in proc.stderr
    assert "cpu_feature_guard" not in proc.stderr
