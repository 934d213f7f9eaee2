"""Prefect tasks: thin adapters between flows and ``nas_core``.

Shared plumbing for task modules:

* ``tasks._cache`` — content-addressed cache policies and the result store
  (``artifact_cache``, ``cached_task_options``, ``runtime_fingerprint``);
* ``tasks.run_identity`` — "is this the same run?": the run identity (code, params,
  inputs' content, runtimes), stat-cached file digests, stamps; ``tasks.code_identity``
  — a stage's code from the import graph of its entry point; ``tasks.step_stamps`` —
  the run key each pipeline step last completed with (the fast no-op of ``reproduce``);
* ``tasks._runners`` — Prefect task runners from params (threads or Dask);
* ``tasks._server`` — a real Prefect API for the runs that need one (Dask workers,
  schedules) and ``require_flow_result``;
* ``cpu_lock`` (here, because it must not import Prefect: it is cheap to take from any
  process) — a machine-wide reader-writer lock so that latency measurement never runs
  beside other CPU-heavy work; ``stage_lock`` is the same lock saying when it waits, the
  ``lock`` hook the stages hand to ``nas_core`` (``nas_core.locks``).

Usage in a task::

    with cpu_lock("shared"):       # training, evaluation, export: many at once
        ...
    with cpu_lock("exclusive"):    # latency measurement: alone on the machine
        ...
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Literal

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# One lock per machine is what matters. The default lives in the project; point
# SCAN_EDGE_CPU_LOCK at one path (e.g. /tmp/scan-edge-cpu.lock) to make several
# checkouts on one machine respect each other.
DEFAULT_CPU_LOCK = PROJECT_ROOT / ".prefect" / "locks" / "cpu.lock"

LockMode = Literal["shared", "exclusive"]
_POLL_S = 0.02
_held = threading.local()  # this thread's held modes, by lock path: makes nesting safe


def cpu_lock_path() -> Path:
    """The lock file every process on this machine must agree on."""
    return Path(os.environ.get("SCAN_EDGE_CPU_LOCK", DEFAULT_CPU_LOCK))


def _held_modes() -> dict[str, str]:
    if not hasattr(_held, "modes"):
        _held.modes = {}
    return _held.modes


def _flock(fd: int, operation: int, deadline: float | None, what: str) -> None:
    """``flock`` with an optional deadline (polling, since flock has no timeout)."""
    if deadline is None:
        fcntl.flock(fd, operation)
        return
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"cpu_lock: could not take {what} before the timeout") from None
            time.sleep(_POLL_S)


@contextlib.contextmanager
def _open_fd(path: Path) -> Iterator[int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        yield fd
    finally:
        os.close(fd)  # closing also releases any flock held through this descriptor


@contextlib.contextmanager
def cpu_lock(mode: LockMode = "shared", *, timeout: float | None = None, path: str | os.PathLike | None = None) -> Iterator[None]:
    """Hold the machine's CPU lock: many ``"shared"`` holders, or one ``"exclusive"``.

    A reader-writer lock over ``flock`` on a lock file, so it works across threads
    (each acquisition opens its own descriptor), processes and Dask workers on one
    machine, and the kernel drops it if a holder dies. Writers are preferred: a waiting
    exclusive acquirer holds a second "gate" lock that new shared acquirers must pass,
    so a stream of short CPU-heavy tasks cannot starve a latency measurement.

    Nesting in one thread is allowed (an inner acquisition already covered by the outer
    one is a no-op), except shared -> exclusive, which raises: upgrading would deadlock.

    Args:
        mode: ``"shared"`` for CPU-heavy work, ``"exclusive"`` for latency measurement.
        timeout: seconds to wait before ``TimeoutError``; ``None`` waits forever.
        path: the lock file; default ``cpu_lock_path()``.
    """
    if mode not in ("shared", "exclusive"):
        raise ValueError(f"cpu_lock mode must be 'shared' or 'exclusive', not {mode!r}")
    lock_path = Path(path) if path is not None else cpu_lock_path()
    key = str(lock_path.resolve())
    held = _held_modes().get(key)
    if held == "exclusive" or held == mode:
        yield
        return
    if held == "shared":
        raise RuntimeError("cpu_lock: cannot take 'exclusive' while this thread holds 'shared' (it would deadlock)")

    deadline = None if timeout is None else time.monotonic() + timeout
    operation = fcntl.LOCK_EX if mode == "exclusive" else fcntl.LOCK_SH
    gate_path = lock_path.with_name(lock_path.name + ".gate")
    with _open_fd(lock_path) as lock_fd:
        with _open_fd(gate_path) as gate_fd:
            # Shared acquirers pass the gate briefly; an exclusive one keeps it while it
            # waits for the current shared holders to finish.
            _flock(gate_fd, fcntl.LOCK_EX, deadline, f"{mode} ({gate_path})")
            _flock(lock_fd, operation, deadline, f"{mode} ({lock_path})")
        _held_modes()[key] = mode
        try:
            yield
        finally:
            del _held_modes()[key]
            fcntl.flock(lock_fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def stage_lock(mode: LockMode) -> Iterator[None]:
    """``cpu_lock(mode)``, saying on stderr when it has to wait (the lock hook of the stages,
    the commands and the ``nas_core`` jobs they run: ``lock=stage_lock``)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(cpu_lock(mode, timeout=0.5))
        except TimeoutError:
            busy = "another job is using the CPU" if mode == "exclusive" else "a latency measurement is running"
            print(f"waiting for the CPU lock ({mode}): {busy} ...", file=sys.stderr, flush=True)
            stack.enter_context(cpu_lock(mode))
        yield


__all__ = ["cpu_lock", "cpu_lock_path", "stage_lock", "DEFAULT_CPU_LOCK"]
