"""Torch's intra-op thread count, set for one block of code.

Shared by the accuracy predictor (scoring and fitting) and the pairs collection (evaluating
subnets), which both run many small forward passes where the thread count decides the speed.
"""
from __future__ import annotations

import contextlib
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
