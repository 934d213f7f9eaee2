"""Downstream classification transfer (§6.4, Table 5).

The paper starts from each model's ImageNet weights, replaces the classifier and trains
*all* layers for 50 epochs on CIFAR-10/100, Food-101 and Pets, "with a base learning rate
scaled by the batch size". :func:`transfer` does the same for any model
``nas_core.finetune.load_classifier`` can load (a fine-tuned searched model, a trained
baseline, a preset inheriting from the supernet) on any image-folder dataset, with the
generic classifier trainer of ``nas_core.finetune`` (AdamW, cosine, label smoothing,
checkpoint every epoch, resume, ``torchrun``). Ours and MobileNetV2 go through the same
function with the same :class:`TransferConfig`, so their numbers are comparable.

Datasets are read through ``nas_core.data.folders``: a ``manifest.parquet``, an ImageNet
layout, or one folder per class (e.g. ``../shared/datasets/sign-digits``), which is split
per class by a seeded permutation (``val_fraction`` / ``test_fraction`` / rest train).
Validation accuracy is logged every epoch; the reported accuracy is on ``eval_split``
(``test`` where there is one), never used for any choice.

Output ``data/transfer/<name>.json``::

    {"name", "model": {source of the weights: name, kind, init, path?, arch_id?},
     "dataset": {"root", "classes", "train_images", "val_images", "eval_split", "eval_images"},
     "resolution", "top1", "top5", "loss", "images"   (on eval_split, after the last epoch),
     "val_top1_per_epoch": [...], "epochs", "lr" (the scaled peak rate),
     "train_seconds", "params", "config", "provenance"}

and ``data/transfer/<name>/`` with ``checkpoint.pt`` and ``train_log.parquet`` (schema in
``nas_core.finetune``).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from .complexity import count_params
from .evaluate import evaluate
from .finetune import (classification_data, config_from_section, load_classifier, subnet_at_resolution,
                       train_classifier, with_drop_path)
from .io import code_version, machine_fingerprint, utc_now, write_json
from .subnet import SubnetModel
from .train import init_distributed, seed_everything

DEFAULT_OUT = Path("data/transfer")


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """params.yaml ``transfer:``. Defaults are the paper's (§6.4): 50 epochs, all layers
    trained, peak learning rate ``base_lr * batch_size / lr_base_batch`` (the text lost
    the numbers; these are timm's fine-tuning defaults for AdamW), cosine decay."""

    resolution: int = 224
    epochs: int = 50
    batch_size: int = 128
    steps_per_epoch: int | None = None
    opt: str = "adamw"
    base_lr: float = 5e-4
    lr_base_batch: int = 512
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6
    warmup_epochs: float = 2.0
    weight_decay: float = 0.05
    momentum: float = 0.9
    clip_grad: float | None = None
    clip_mode: str = "norm"
    smoothing: float = 0.1
    drop_path: float = 0.0
    mixup: dict | None = None           # timm.data.Mixup arguments; None: off
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    teacher_stand_in: str | None = None
    amp: bool = True
    seed: int = 0
    num_workers: int = 0
    cache_images: bool = True
    skip_bad_images: bool = False       # leave unreadable images out (listed in the record)
    augment: dict | None = None
    eval_transform: dict | None = None  # overrides of nas_core.data.folders.DEFAULT_EVAL_TRANSFORM (crop_pct)
    eval_every: int = 1
    eval_batch_size: int = 256
    eval_split: str = "test"
    bn_calib_batches: int = 1           # unused by transfer itself (the data helper loads them)
    bn_calib_batch_size: int = 8
    val_fraction: float = 0.15          # for datasets without a val / test split
    test_fraction: float = 0.15
    split_seed: int = 0

    @property
    def lr(self) -> float:
        """Peak learning rate, scaled linearly with the batch size."""
        return self.base_lr * self.batch_size / self.lr_base_batch

    @classmethod
    def from_params(cls, section: Mapping | None) -> "TransferConfig":
        return config_from_section(cls, section, "transfer")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "lr": self.lr}


def new_head(model: torch.nn.Module, num_classes: int, resolution: int, drop_path: float = 0.0) -> torch.nn.Module:
    """``model`` with a freshly initialised classifier for ``num_classes`` (all other
    weights kept), rebuilt for ``resolution`` (searched subnets) and drop path."""
    if isinstance(model, SubnetModel):
        model = with_drop_path(subnet_at_resolution(model, resolution), drop_path)
    model.reset_classifier(num_classes)
    return model


def transfer(model_ref: str, data_dir: str | os.PathLike, *, name: str | None = None,
             out_root: str | os.PathLike = DEFAULT_OUT, config: TransferConfig | None = None,
             supernet: str | os.PathLike | None = None, resume: bool = True, overwrite: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``model_ref`` (see ``finetune.load_classifier``) on the dataset at
    ``data_dir`` with a new head, all layers trained; write ``out_root/<name>.json``
    (module docstring) and return it (an empty dict on ranks > 0 of a ``torchrun`` job)."""
    config = config or TransferConfig()
    data = classification_data(data_dir, config.resolution, config, {
        "val_fraction": config.val_fraction, "test_fraction": config.test_fraction, "seed": config.split_seed})
    seed_everything(config.seed)  # the new head's initialisation
    model, source = load_classifier(model_ref, supernet=supernet)
    name = name or f"{source['name']}__{Path(data_dir).resolve().name}"
    model = new_head(model, data.num_classes, config.resolution, config.drop_path)

    identity = {"name": name, "model": model_ref, "data": str(data_dir), "classes": data.num_classes}
    started = time.perf_counter()
    log = train_classifier(model, data.train, config, Path(out_root) / name, val_loader=data.val_loader,
                           num_classes=data.num_classes, resume=resume, overwrite=overwrite, progress=progress,
                           identity=identity, desc="transfer")
    seconds = time.perf_counter() - started
    if not init_distributed().is_main:
        return {}
    result = evaluate(model, data.eval_loader)
    record = {
        "name": name, "model": source, "dataset": data.describe(), "resolution": config.resolution,
        **result, "val_top1_per_epoch": [float(v) for v in log.get("val_top1", [])],
        "epochs": config.epochs, "lr": config.lr, "train_seconds": round(seconds, 1),
        "params": count_params(model), "config": config.to_dict(),
        "provenance": {"code_version": code_version(), "machine": machine_fingerprint(), "created": utc_now(),
                       "torch": torch.__version__},
    }
    write_json(Path(out_root) / f"{name}.json", record)
    return record
