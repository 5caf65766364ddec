"""What the benchmark scripts share: the cores they may use, and the machine's busy CPU time
(to tell how much other processes took during a measurement). Standard library only, so that
the conversion benchmark's spawned workers stay light."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def usable_cores() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_busy() -> float | None:
    """Busy CPU seconds of the whole machine since boot (steal included), or None off Linux."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def load_lines(others: float | None, cores: int, consequence: str, detail: str = "") -> list[str]:
    """The report's last word on the machine: the cores other processes took during the timed
    runs (`machine_busy` minus our CPU), and a warning naming `consequence` when that is over a
    tenth of the cores. Nothing off Linux (`others` None)."""
    if others is None:
        return []
    lines = [f"other processes used {others:.2f} cores on average during the timed runs{detail}"]
    if others > 0.1 * cores:
        lines.append(f"  WARNING: busy machine; {consequence}")
    return lines


def set_up_jax(devices: int, script: str) -> None:
    """Before JAX is imported: Keras' JAX backend and `devices` JAX host devices (unless
    XLA_FLAGS already names a count); refuses a Keras already imported with another backend."""
    os.environ["KERAS_BACKEND"] = "jax"
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        count = f"--xla_force_host_platform_device_count={devices}"
        os.environ["XLA_FLAGS"] = f"{flags} {count}".strip()
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != "jax":
            raise SystemExit(
                "error: Keras is already imported with another backend; run the benchmark "
                f"as a script (python benchmarks/{script})"
            )
