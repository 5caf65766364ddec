"""A notebook user's fresh kernel: a Python with this environment's packages (TensorFlow, Keras,
JAX, Jupyter) but not cxr_tf, and a clone of the work tree to point REPO_URL at.

The kernel's environment is a venv of the same base interpreter whose site-packages holds a
symlink to each entry of this environment's site-packages, less cxr_tf's own (its dist-info and
the editable install's finder and .pth). Built in a test's tmp_path in about two seconds and
never reused: the notebook installs cxr_tf into it, so a cached one would not be fresh again.
Nothing is copied, and no package can be replaced through the links: the kernel runs pip with
PIP_NO_INDEX=1, so pip can install nothing but the clone.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=cxr_tf tests", "-c", "user.email=tests@localhost"]


def _is_cxr_tf(name: str) -> bool:
    """cxr_tf's entries of a site-packages: its package or dist-info, an editable install's
    finder, .pth or egg-link."""
    n = name.lower().replace("-", "_")
    return n.startswith("cxr_tf") or n.startswith("__editable__") and "cxr_tf" in n


def make_env(root: Path, without: tuple[str, ...] = ()) -> Path:
    """The venv `root` (see the module's docstring), less the distributions `without` too (as
    site-packages spells them: `tensorflow`, `tensorflow_cpu`); returns its python."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip())
    ours = {Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    for src in sorted(ours):
        for entry in src.iterdir():
            skip = entry.name.split("-")[0].lower() in without or entry.name == "__pycache__"
            if not skip and not _is_cxr_tf(entry.name):
                target = site / entry.name
                if not target.exists():
                    target.symlink_to(entry)
    return python


def register_kernel(python: Path, jupyter_dir: Path, name: str = "cxr-tf-user") -> str:
    """A kernelspec `name` running `python`, under `jupyter_dir` (put it first on
    JUPYTER_PATH); returns the name."""
    spec = jupyter_dir / "kernels" / name
    spec.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "cxr_tf user", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return name


def clone_work_tree(dest: Path) -> Path:
    """A git repository at `dest` whose one commit is the work tree as it is now (tracked and
    untracked files that git does not ignore, uncommitted changes included): what a user's
    clone of the repository would hold."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file() or src.is_symlink():  # a deleted tracked file is left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name, follow_symlinks=False)
    quiet = {"cwd": dest, "check": True, "capture_output": True}
    subprocess.run([*GIT, "init", "-q"], **quiet)
    subprocess.run([*GIT, "add", "-A"], **quiet)
    subprocess.run([*GIT, "commit", "-q", "-m", "work tree"], **quiet)
    return dest


def user_environ(base: dict) -> dict:
    """`base` as a user's kernel sees it: no CXR_TF_* variable except the simulation's one test
    hook (CXR_TF_SIMULATED_TPU, tests/tpu_vm.py), no work tree on PYTHONPATH, and pip offline
    (PIP_NO_INDEX) so that the notebook's install can only use what the kernel has."""
    env = {
        k: v for k, v in base.items() if not k.startswith("CXR_TF_") or k == "CXR_TF_SIMULATED_TPU"
    }
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.pop("PYTHONPATH", None)
    if path := [p for p in path if Path(p).resolve() != ROOT]:
        env["PYTHONPATH"] = os.pathsep.join(path)
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env
