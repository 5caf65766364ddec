"""The README's quickstart blocks, run as a user runs them: the commands are read from README.md
itself (the fenced block after the block's title, continuation lines joined, `#` comments
dropped), so that a changed README runs the changed commands.

**Kaggle notebook, TPU VM**, on the simulated TPU VM (tests/tpu_vm.py): from a fresh folder
standing for /kaggle/working, `REPO_URL` a clone of the work tree (tests/notebook_kernel.py),
`python` a fresh venv with this environment's packages but not cxr_tf (`pip` is its
`python -m pip`, offline: PIP_NO_INDEX, and PIP_NO_BUILD_ISOLATION=0, pip's spelling of
--no-build-isolation, since offline pip cannot fetch setuptools into an isolated build; Kaggle has
the internet on), `/kaggle/input` a folder holding a read-only synthetic "Chest X-Ray Images
(Pneumonia)" as Kaggle attaches it (`chest-xray-pneumonia/chest_xray/...`), no KERAS_BACKEND and
no CXR_TF_* variable but the simulation's hook. The one deviation from the README: the train
command gets tests/tpu_vm.py's TINY overrides (a tiny DenseNet at 64 px) appended as `--set`s.

**Local GPU(s)**, on this CPU, with two more deviations: `pip install ".[tf]"` is skipped (the
`tensorflow` distribution is not installed here, only tensorflow-cpu, and pip is offline; the
commands run in the clone, so `python -m cxr_tf...` imports the clone's cxr_tf from the working
directory, which the installed package would be shadowed by anyway), and so is `download` (it needs
the internet and Kaggle credentials): a synthetic NIH archive is written where it would have put
the files, `raw/nih14`. The train command gets TINY plus a short schedule (the config's 100 epochs
of early stopping), and predict's `some_xray.png` is a synthetic NIH PNG written into the clone.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests import notebook_kernel
from tests.tpu_vm import TINY, tpu_vm_env

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_VAR = re.compile(r"\$(?:(\w+)|\{(\w+)\})")


def readme_block(title: str) -> str:
    """The first ```bash block after the text `title` in README.md."""
    text = README.read_text()
    start = text.index(title)  # ValueError: the README has no such block any more
    match = _FENCE.search(text, start)
    assert match and match[1] in ("bash", "sh", "shell"), f"no shell block after {title!r}"
    return match[2]


def parse_block(block: str) -> list[list[list[str]]]:
    """The block's command lines, each a list of simple commands (token lists) that `&&` joins.
    Backslash continuations are joined and `#` comments dropped; quotes are removed as the shell
    removes them (variables are expanded later, at run time). Any other shell operator is refused,
    so that a README using one gets this runner taught it rather than misread."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands: list[list[str]] = [[]]
        for token in lexer:
            if token == "&&":
                commands.append([])
            elif token and set(token) <= set("();<>|&"):
                raise ValueError(f"README line {line.strip()!r}: {token!r} is not supported here")
            else:
                commands[-1].append(token)
        if commands := [c for c in commands if c]:
            lines.append(commands)
    return lines


def test_parse_block_joins_continuations_and_drops_comments():
    block = (
        'git clone "$REPO_URL" cxr_tf-src && cd cxr_tf-src\n'
        'pip install ".[tf]"   # a comment\n'
        "# a whole-line comment\n"
        "python -m cxr_tf.train --config c.yaml \\\n"
        "    --workdir runs/x      # another\n"
    )
    assert parse_block(block) == [
        [["git", "clone", "$REPO_URL", "cxr_tf-src"], ["cd", "cxr_tf-src"]],
        [["pip", "install", ".[tf]"]],
        [["python", "-m", "cxr_tf.train", "--config", "c.yaml", "--workdir", "runs/x"]],
    ]
    with pytest.raises(ValueError, match="'|'"):
        parse_block("cat x | grep y\n")


class User:
    """Runs parsed README commands as a shell would, from `cwd`: `cd` moves, `$VAR` expands from
    `env`, `python` is `python` and `pip` is `python -m pip`, paths under a key of `paths` are
    moved to its value, and a command starting with a key of `extra` gets its value appended."""

    def __init__(self, cwd: Path, env: dict, python: Path, paths=None, extra=None):
        self.cwd, self.env, self.python = cwd, env, python
        self.paths, self.extra = paths or {}, extra or {}
        self.log: list[tuple[list[str], int, float, str]] = []  # command, status, seconds, output

    def _token(self, token: str) -> str:
        token = _VAR.sub(lambda m: self.env.get(m[1] or m[2], ""), token)
        for old, new in self.paths.items():
            if token == old or token.startswith(old + "/"):
                token = str(new) + token[len(old) :]
        return token

    def run(self, cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess | None:
        argv = [self._token(t) for t in cmd]
        for prefix, more in self.extra.items():
            if tuple(cmd[: len(prefix)]) == prefix:
                argv += more
        if argv[0] == "cd":
            self.cwd = (self.cwd / argv[1]).resolve()
            self.log.append((cmd, 0, 0.0, ""))
            return None
        if argv[0] == "python":
            argv[0] = str(self.python)
        elif argv[0] == "pip":
            argv[:1] = [str(self.python), "-m", "pip"]
        start = time.perf_counter()
        proc = subprocess.run(
            argv,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        seconds = time.perf_counter() - start
        self.log.append((cmd, proc.returncode, seconds, proc.stdout))
        assert proc.returncode == 0, (
            f"README command `{shlex.join(cmd)}` (run as {shlex.join(argv)}) exited "
            f"{proc.returncode}:\n{proc.stdout[-4000:]}"
        )
        return proc

    def run_block(self, lines, skip=lambda cmd: False) -> list[list[str]]:
        """Run every command of `lines` (parse_block) but those `skip` picks; returns those."""
        skipped = []
        for line in lines:
            for cmd in line:
                if skip(cmd):
                    skipped.append(cmd)
                else:
                    self.run(cmd)
        return skipped

    def output(self, *command_start: str) -> str:
        """The output of the one command that ran starting with `command_start`."""
        (out,) = [o for c, _, _, o in self.log if tuple(c[: len(command_start)]) == command_start]
        return out

    def ran(self) -> list[list[str]]:
        return [c for c, *_ in self.log]

    def timings(self) -> str:
        return "\n".join(f"{s:6.1f} s  {shlex.join(c)[:90]}" for c, _, s, _ in self.log)


def _read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def _user_env(base: dict, repo: Path) -> dict:
    env = notebook_kernel.user_environ({k: v for k, v in base.items() if k != "KERAS_BACKEND"})
    env.update(REPO_URL=str(repo), PIP_NO_BUILD_ISOLATION="0")  # 0: --no-build-isolation
    return env


@pytest.mark.slow
def test_kaggle_tpu_vm_quickstart(tmp_path, capsys):
    from cxr_tf import synthetic

    lines = parse_block(readme_block("**Kaggle notebook, TPU VM**"))
    python = notebook_kernel.make_env(tmp_path / "kernel-env")
    repo = notebook_kernel.clone_work_tree(tmp_path / "origin")
    kaggle_input = tmp_path / "kaggle-input"
    synthetic.write_pneumonia(
        kaggle_input / "chest-xray-pneumonia", num_images=160, image_size=64, seed=5
    )
    _read_only(kaggle_input)
    working = tmp_path / "working"  # /kaggle/working
    working.mkdir()
    env = _user_env(tpu_vm_env(), repo)
    assert not {k for k in env if k.startswith("CXR_TF_")} - {"CXR_TF_SIMULATED_TPU"}
    assert "KERAS_BACKEND" not in env
    train = ("python", "-m", "cxr_tf.train")
    user = User(working, env, python, {"/kaggle/input": kaggle_input}, {train: TINY})
    try:
        user.run_block(lines)
    finally:
        _writable(kaggle_input)
        with capsys.disabled():
            print(f"\nKaggle TPU VM quickstart:\n{user.timings()}")

    ran = [c[:3] for c in user.ran()]
    assert ["git", "clone", "$REPO_URL"] in ran and ["pip", "install", "./cxr_tf-src"] in ran
    modules = {c[2] for c in ran if c[:2] == ["python", "-m"]}
    assert {"cxr_tf.convert", "cxr_tf.train", "cxr_tf.evaluate"} <= modules, modules
    installed = subprocess.run(
        [python, "-c", "import cxr_tf; print(cxr_tf.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(installed).is_relative_to(python.parents[1]), installed  # installed, not the clone

    out = user.output(*train)
    # "the first line it prints says which backend it chose and why" (README)
    first = next(line for line in out.splitlines() if line.startswith("cxr_tf"))
    assert first.startswith("cxr_tf: Keras backend jax (a TPU is attached"), out[-3000:]
    assert "cxr_tf.train: backend jax, strategy tpu, 8 x TPU" in out, out[-3000:]
    run = working / "runs" / "pneumonia"
    assert (run / "done.json").is_file()
    assert (run / "saved_model" / "saved_model.pb").is_file()
    assert (run / "eval_test" / "metrics.json").is_file()
    assert "mean AUROC" in user.output("python", "-m", "cxr_tf.evaluate")


def _is_skipped_locally(cmd: list[str]) -> bool:
    """pip (no `tensorflow` distribution offline) and download (internet, credentials)."""
    return cmd[0] == "pip" or cmd[:3] == ["python", "-m", "cxr_tf.download"]


@pytest.mark.slow
def test_local_gpu_quickstart_on_cpu(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from cxr_tf import synthetic

    lines = parse_block(readme_block("**Local GPU(s)**"))
    python = notebook_kernel.make_env(tmp_path / "env")
    repo = notebook_kernel.clone_work_tree(tmp_path / "origin")
    env = _user_env(os.environ, repo)
    env.pop("CXR_TF_SIMULATED_TPU", None)
    assert not {k for k in env if k.startswith("CXR_TF_")} and "KERAS_BACKEND" not in env
    here = tmp_path / "anywhere"
    here.mkdir()
    train = ("python", "-m", "cxr_tf.train")
    short = ["--set", "batch_size=8", "--set", "stages=[{epochs: 2, learning_rate: 0.001}]"]
    user = User(here, env, python, extra={train: TINY + short})

    # the clone line first, then the files download and the user would have put there
    (clone_line, *rest) = lines
    assert clone_line[0][:2] == ["git", "clone"], clone_line
    user.run_block([clone_line])
    clone = user.cwd
    assert clone == (here / "cxr_tf-src").resolve()
    synthetic.write_nih14(clone / "raw" / "nih14", num_images=160, image_size=64, seed=6)
    gray = synthetic.nih14_image(np.random.default_rng(7), 64, findings=[2])
    Image.fromarray(gray).save(clone / "some_xray.png")
    try:
        skipped = user.run_block(rest, skip=_is_skipped_locally)
    finally:
        with capsys.disabled():
            print(f"\nLocal GPU quickstart on CPU:\n{user.timings()}")

    assert [c[:2] for c in skipped] == [["pip", "install"], ["python", "-m"]], skipped
    ran = {c[2] for c in user.ran() if c[:2] == ["python", "-m"]}
    assert ran == {"cxr_tf.convert", "cxr_tf.train", "cxr_tf.evaluate", "cxr_tf.predict"}, ran
    run = clone / "runs" / "nih14"
    assert (run / "done.json").is_file()
    assert (run / "saved_model" / "saved_model.pb").is_file()
    assert (run / "eval_test" / "metrics.json").is_file()
    assert "some_xray.png" in user.output("python", "-m", "cxr_tf.predict")
    assert list((clone / "cams").iterdir()), "predict --gradcam wrote nothing into cams/"
