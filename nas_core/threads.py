"""Torch's intra-op thread count, set for one block of code.

Shared by the accuracy predictor (scoring and fitting) and the pairs collection (evaluating
subnets), which both run many small forward passes where the thread count decides the speed.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` torch intra-op threads (process-wide; restored after)."""
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def default_threads() -> int:
    """Torch's own thread count (``OMP_NUM_THREADS`` when set, as torchrun does for several
    ranks), but never more than the CPUs this process may run on: a process pinned beside the
    latency lane (``tasks.lanes``) must not start two threads on its one CPU."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), allowed))
