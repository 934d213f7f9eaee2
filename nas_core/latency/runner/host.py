"""The machine a timing runs on: its fingerprint and load, CPU pinning, atomic file writes.

Mirrored from ``nas_core.io`` (the runner runs without nas_core installed);
tests/test_latency_runtime.py checks that they give the same answers.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Iterator


def machine_fingerprint() -> dict:
    """What a latency number depends on besides the runtime: CPU model, core count, OS."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    info["id"] = hashlib.sha1(json.dumps(info, sort_keys=True).encode()).hexdigest()[:12]
    return info


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def load_average() -> float | None:
    """1-minute load average (None where the OS has none): recorded so that timings taken
    while other processes competed for the CPU can be recognised later."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def pinned_cpus(threads: int, enabled: bool = True) -> Iterator[list[int] | None]:
    """Restrict this process to its first ``threads`` allowed CPUs while timing; restore after.

    Why: on a shared machine the scheduler otherwise migrates the timing thread between
    cores, which shows up as bimodal timings. ``os.sched_setaffinity(0, ...)`` (Linux only;
    a no-op elsewhere) applies to the calling thread and to the threads created after it,
    i.e. the runtime thread pools of the sessions opened inside this block. Yields the CPU
    list used, or None when pinning is off or unsupported.
    """
    if not enabled or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    chosen = sorted(before)[: max(1, int(threads))]
    os.sched_setaffinity(0, chosen)
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, before)
