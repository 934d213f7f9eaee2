"""Evaluating subnets: BatchNorm recalibration and top-1/top-5 accuracy.

A subnet that inherits its weights from the supernet also inherits BatchNorm running
statistics that were accumulated over *all* the subnets trained so far (a mixture of
widths, depths and activations), which are wrong for any single one of them. Every
weight-sharing NAS therefore re-estimates them for the subnet at hand before evaluating
it (OFA, BigNAS, AutoFormer): forward a few training batches in train mode, without
gradients, with a cumulative average (``momentum=None``).

Recalibration runs thousands of times when the accuracy predictor's training pairs are
collected (§5.2), so it takes a fixed, pre-loaded list of batches (``calibration_batches``
loads them once): no decoding, no augmentation, and every subnet is calibrated on the same
images, which keeps their accuracies comparable.

    >>> batches = calibration_batches(train_dataset, num_batches=8, batch_size=64)
    >>> recalibrate_bn(supernet, arch, batches, num_batches=8)
    >>> evaluate(supernet, val_loader, arch)
    {'top1': 0.71, 'top5': 0.93, 'loss': 1.02, 'images': 1600}
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .search_space import ArchConfig
from .supernet import Supernet

Batch = torch.Tensor | Sequence  # an image tensor, or an (images, labels, ...) tuple


def calibration_batches(dataset, num_batches: int, batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    """``num_batches`` image tensors ``[batch_size, 3, R, R]`` from a fixed random subset of
    ``dataset`` (items ``(image, label)``), loaded once.

    The subset is drawn with its own seeded generator, so it is the same in every process
    and does not disturb the global RNG. Give ``dataset`` the *eval* transform: the
    statistics are then those the evaluated images will have (and nothing random remains).
    """
    if num_batches < 1 or batch_size < 1:
        raise ValueError(f"num_batches and batch_size must be >= 1, got {num_batches} and {batch_size}")
    wanted = num_batches * batch_size
    if wanted > len(dataset):
        raise ValueError(f"{num_batches} batches of {batch_size} need {wanted} images; the dataset has "
                         f"{len(dataset)} (lower calibration batches or batch size)")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)[:wanted].tolist()
    images = [dataset[i][0] for i in order]
    return [torch.stack(images[i:i + batch_size]) for i in range(0, wanted, batch_size)]


def _images(batch: Batch) -> torch.Tensor:
    return batch if isinstance(batch, torch.Tensor) else batch[0]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, arch: ArchConfig | None, batches: Iterable[Batch], num_batches: int) -> int:
    """Re-estimate the BatchNorm running statistics of ``arch`` (or of a plain model when
    ``arch`` is None) from the first ``num_batches`` of ``batches``; returns the number used.

    ``model`` is a :class:`~nas_core.supernet.Supernet` (its statistics are sliced, so only
    ``arch``'s channels get meaningful values; every other slice is reset too) or any
    module, e.g. an extracted :class:`~nas_core.subnet.SubnetModel`. ``batches`` is a list
    of image tensors (see :func:`calibration_batches`) or a DataLoader of
    ``(images, labels)``. The statistics are a plain average over the batches
    (``momentum=None``). Only the BatchNorm layers run in train mode, so drop path stays
    off; the model is left in eval mode with its BN momentum restored.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    if arch is not None and not isinstance(model, Supernet):
        raise TypeError(f"arch given, but {type(model).__name__} is not a Supernet; pass arch=None "
                        "for an extracted subnet")
    norms = _batch_norms(model)
    momenta = [bn.momentum for bn in norms]
    device = _device(model)
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    used = 0
    try:
        for batch in batches:
            if used == num_batches:
                break
            x = _images(batch).to(device, non_blocking=True)
            model(x, arch) if arch is not None else model(x)
            used += 1
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        model.eval()
    if used < num_batches:
        raise ValueError(f"recalibration asked for {num_batches} batches, only {used} were given")
    return used


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, arch: ArchConfig | None = None,
             max_batches: int | None = None) -> dict[str, float | int]:
    """Top-1, top-5 (top-k with k = min(5, classes)), mean cross-entropy and image count of
    ``model`` (a Supernet with ``arch``, or any classifier with ``arch=None``) over
    ``loader``'s ``(images, labels)`` batches, in eval mode. A distilled model's output is
    the average of its two heads (timm's inference convention)."""
    if arch is not None and not isinstance(model, Supernet):
        raise TypeError(f"arch given, but {type(model).__name__} is not a Supernet")
    device = _device(model)
    model.eval()
    correct1 = correct5 = images = 0
    loss_sum = 0.0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i == max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = (model(x, arch) if arch is not None else model(x)).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == y[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        images += len(y)
    if images == 0:
        raise ValueError("evaluate: the loader yielded no images")
    return {"top1": correct1 / images, "top5": correct5 / images, "loss": loss_sum / images, "images": images}
