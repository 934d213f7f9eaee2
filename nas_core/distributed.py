"""Distributed training helpers (``torchrun``: NCCL on GPUs, gloo on CPUs) and RNG state.

No DistributedDataParallel wrapper: each process computes the gradients of its shard of the
batch, then :func:`all_reduce_gradients` averages them in flat buckets, over only the
parameters that received one. That suits the supernet, where a step trains a few subnets
and ~3/4 of the weights get no gradient (DDP would need ``find_unused_parameters=True`` and
would reduce every weight), and costs nothing for a plain model, where every weight gets
one. BatchNorm statistics stay per rank during an epoch (no SyncBN) and are averaged at
its end (:func:`average_bn_statistics`). The RNG helpers let a checkpoint hold every rank's
Python, NumPy, torch and CUDA generator states, so a resumed run draws what the
uninterrupted one did.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group ``torchrun`` describes (env ``WORLD_SIZE`` > 1) or use one
    already initialised; otherwise a single process. NCCL with one GPU per process
    (``LOCAL_RANK``) when CUDA is available, gloo on CPUs."""
    cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if not dist.is_initialized():
        return DistContext(0, 1, torch.device(device or ("cuda" if cuda else "cpu")))
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda and dist.get_backend() == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        torch.cuda.set_device(local)
        return DistContext(rank, world, torch.device("cuda", local))
    return DistContext(rank, world, torch.device(device or "cpu"))


def _buckets(tensors: Sequence[torch.Tensor], max_bytes: int) -> Iterable[list[torch.Tensor]]:
    bucket, size = [], 0
    for t in tensors:
        if bucket and (size + t.numel() * t.element_size() > max_bytes or t.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel() * t.element_size()
    if bucket:
        yield bucket


@torch.no_grad()
def all_reduce_gradients(params: Sequence[nn.Parameter], world_size: int, bucket_mb: float = 25.0) -> None:
    """Average the gradients of ``params`` over all processes, in flat buckets.

    Only parameters with a gradient take part. All ranks sampled the same subnets, so the
    set is the same everywhere; a cheap count check turns a violation into an error
    instead of a hang or silent mixing of unrelated tensors.
    """
    if world_size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    count = torch.tensor([len(grads), -len(grads)], dtype=torch.float64, device=_tensor_device(params))
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    if count[0] != len(grads) or -count[1] != len(grads):
        raise RuntimeError(f"ranks disagree on the trained parameters ({len(grads)} here, between "
                           f"{-int(count[1])} and {int(count[0])} elsewhere): every rank must sample the "
                           "same subnets (same seed and step)")
    for bucket in _buckets(grads, int(bucket_mb * 2**20)):
        flat = torch._utils._flatten_dense_tensors(bucket)
        dist.all_reduce(flat)
        flat.div_(world_size)
        for grad, synced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            grad.copy_(synced)


def _tensor_device(params: Sequence[torch.Tensor]) -> torch.device:
    return params[0].device if params else torch.device("cpu")


@torch.no_grad()
def broadcast_state(module: nn.Module) -> None:
    """Rank 0's parameters and buffers everywhere (as DDP does when it wraps a model)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def average_bn_statistics(module: nn.Module, world_size: int) -> None:
    """Average BatchNorm running means and variances over processes (each saw its own data)."""
    if world_size == 1:
        return
    for bn in module.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None:
            for stat in (bn.running_mean, bn.running_var):
                dist.all_reduce(stat)
                stat.div_(world_size)


def bn_buffers(module: nn.Module) -> list[torch.Tensor]:
    """Every BatchNorm running statistic of ``module`` (to save and restore around a recalibration)."""
    return [b for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]


# --------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def gather_rng_states(ctx: DistContext) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (every rank must call it: it is a collective)."""
    if not ctx.distributed:
        return [rng_state()]
    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, rng_state())
    return states

