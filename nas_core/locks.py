"""The lock hook of nas_core's long jobs: share the machine, measure latency alone.

nas_core never imports the machine's CPU lock (``tasks.cpu_lock``, a reader-writer lock
that every process of the pipeline respects). The jobs that both compute and measure
latency (the search with ``measure``, fine-tuning, detection) take a ``lock`` argument
instead, a callable that returns a context manager:

    with lock("shared"):      # CPU-heavy work (training, evaluation, export, search):
        ...                   # other shared holders may run beside it
    with lock("exclusive"):   # one latency measurement: nothing else runs
        ...

A job takes the two one after the other, never one inside the other: a holder of the
shared lock cannot take it exclusively (with ``flock`` it would wait for itself). The
default, :func:`no_lock`, holds nothing (a notebook, a test, a machine of one's own).
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Literal

LockMode = Literal["shared", "exclusive"]
Lock = Callable[[LockMode], ContextManager[object]]


def no_lock(mode: LockMode) -> ContextManager[None]:
    """The lock hook that holds nothing."""
    return contextlib.nullcontext()


__all__ = ["Lock", "LockMode", "no_lock"]
