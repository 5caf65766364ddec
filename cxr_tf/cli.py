"""What the command lines share: how one ends on bad input (a clear message, exit status 2)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

BAD_INPUT = 2  # exit status of every cxr_tf command for bad input; 1 is "ran, some items failed"


def user_errors() -> tuple[type[Exception], ...]:
    """What a training command reports as one line: bad values and files, a missing
    dependency, a distribution that cannot be set up here."""
    from cxr_tf.runtime import RuntimeErrorWithHint
    from cxr_tf.storage import StorageError

    return (ValueError, FileNotFoundError, ImportError, RuntimeErrorWithHint, StorageError)


def fail(message) -> int:
    """Print `error: <message>` to stderr and return BAD_INPUT, for `return fail(err)`."""
    print(f"error: {message}", file=sys.stderr)
    return BAD_INPUT


QUIET_ENV = "CXR_TF_QUIET"  # "1": set by quiet_tensorflow, for the processes it starts
VERBOSE_HELP = (
    "show TensorFlow's own log lines (its start-up lines, libjpeg's 'Premature end of JPEG data' "
    "and other C++ messages), hidden by default"
)


def add_verbose(parser) -> None:
    """The `--verbose` flag every command line takes (see `quiet_tensorflow`)."""
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def quiet_tensorflow(verbose: bool = False) -> None:
    """Hide TensorFlow's log chatter in this process, unless `verbose`; call before TensorFlow
    is imported (a command line calls it right after parsing its arguments).

    Three sources: (1) the C++ lines printed while `import tensorflow` runs, twice (two
    libraries each start absl logging): "WARNING: All log messages before absl::InitializeLog()
    ...", "oneDNN custom operations are on ..." and the CPU-feature notice; TF_CPP_MIN_LOG_LEVEL
    does not reach the oneDNN line, and TF_ENABLE_ONEDNN_OPTS=0 would change the numerics, so
    the import runs with file descriptor 2 sent through a filter that drops those known lines
    and passes every other one on at once (a fatal error or a crash still shows). (2) C++
    messages at run time, such as libjpeg's `E0000 ... Premature end of JPEG data` before
    predict's own line about the file: TF_CPP_MIN_LOG_LEVEL=3. (3) Python-side
    `tensorflow` and `absl` loggers: errors only. An explicit TF_CPP_MIN_LOG_LEVEL is replaced;
    `--verbose` leaves everything as TensorFlow has it.

    Processes this one starts inherit it (QUIET_ENV, read when they import this module): the
    converter's spawned workers, export's TensorFlow subprocess.
    """
    if verbose:
        os.environ.pop(QUIET_ENV, None)
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietImport)]
        return
    import logging

    os.environ[QUIET_ENV] = "1"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, _QuietImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietImport())


class _QuietImport:
    """A one-shot import hook: `import tensorflow` (wherever it happens, e.g. inside `import
    keras`) runs with the C-level stderr captured."""

    searching = False

    def find_spec(self, fullname, path=None, target=None):
        # Not removed here: `importlib.util.find_spec("tensorflow")` (runtime.choose_backend
        # asks whether TensorFlow is installed) finds without importing; the loader removes it.
        if fullname != "tensorflow" or self.searching:
            return None
        import importlib.machinery

        self.searching = True
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        finally:
            self.searching = False
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, self)
        return spec


class _QuietLoader:
    def __init__(self, inner, finder):
        self.inner, self.finder = inner, finder

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        if self.finder in sys.meta_path:  # one shot: tensorflow is being imported now
            sys.meta_path.remove(self.finder)
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            # fd 2 into a filter process that passes every line on at once but the known
            # start-up ones; a process, not a thread, so that what TensorFlow prints before a
            # crash (an abort, a segfault) still reaches the terminal
            drop = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _FILTER, *map(repr, _STARTUP_LINES)],
                stdin=subprocess.PIPE,
                stdout=saved,
            )
        except (OSError, AttributeError, ValueError):  # no usable fd 2: import as it is
            self.inner.exec_module(module)
        else:
            os.dup2(drop.stdin.fileno(), 2)
            try:
                self.inner.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                drop.stdin.close()  # the filter reads to the end, then exits
                # (a child the import started may hold the pipe open: do not wait for it)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    drop.wait(timeout=10)
                os.close(saved)
        module.__loader__ = self.inner
        if module.__spec__ is not None:
            module.__spec__.loader = self.inner
        logging_ = sys.modules.get("absl.logging")
        if logging_ is not None:
            logging_.set_verbosity(logging_.ERROR)

    def __getattr__(self, name):
        return getattr(self.inner, name)


# What `import tensorflow` prints on every start, with nothing for a user to do about it.
_STARTUP_LINES = (
    b"All log messages before absl::InitializeLog() is called",
    b"oneDNN custom operations are on",
    b"cpu_feature_guard.cc",
    b"To enable the following instructions:",
    b"Unable to register cuDNN factory",
    b"Unable to register cuFFT factory",
    b"Unable to register cuBLAS factory",
    b"computation placer already registered",
    b"TF-TRT Warning: Could not find TensorRT",
)


_FILTER = """import ast, sys
known = [ast.literal_eval(a) for a in sys.argv[1:]]
for line in sys.stdin.buffer:
    if not any(k in line for k in known):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


if os.environ.get(QUIET_ENV) == "1":  # a process started by a quiet cxr_tf command
    quiet_tensorflow()
