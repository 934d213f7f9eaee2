"""Downstream classification transfer (§6.4, Table 5).

The paper starts from each model's ImageNet weights, replaces the classifier and trains
*all* layers for 50 epochs on CIFAR-10/100, Food-101 and Pets, "with a base learning rate
scaled by the batch size". :func:`transfer` does the same for any model
``nas_core.classifiers.load_classifier`` can load (a fine-tuned searched model, a trained
baseline, a preset inheriting from the supernet) on any image-folder dataset, with the
classifier trainer of ``nas_core.classification`` (AdamW, cosine, label smoothing,
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
``nas_core.trainer``).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import torch

from .classification import classification_data, train_classifier
from .classifiers import load_classifier, subnet_at_resolution, with_drop_path
from .complexity import count_params
from .config import ClassificationRecipe
from .distributed import init_distributed, seed_everything
from .evaluate import evaluate
from .io import code_version, machine_fingerprint, utc_now, write_json
from .layout import DATA
from .subnet import SubnetModel

DEFAULT_OUT = DATA.transfer_runs  # where the transfer stage keeps its runs


@dataclasses.dataclass(frozen=True)
class TransferConfig(ClassificationRecipe):
    """params.yaml ``transfer:``: a classification recipe (``nas_core.config``) whose peak
    learning rate is scaled with the batch size, plus the dataset split. Defaults are the
    paper's (§6.4): 50 epochs, all layers trained, peak learning rate
    ``base_lr * batch_size / lr_base_batch`` (the text lost the numbers; these are timm's
    fine-tuning defaults for AdamW), cosine decay. ``val_fraction`` / ``test_fraction`` /
    ``split_seed`` split datasets that have no val / test split."""

    section: ClassVar[str] = "transfer"

    epochs: int = 50
    batch_size: int = 128
    lr: float = dataclasses.field(default=0.0, init=False)  # set from base_lr (__post_init__)
    min_lr: float = 1e-6
    warmup_epochs: float = 2.0
    weight_decay: float = 0.05
    cache_images: bool = True
    bn_calib_batches: int = 1           # unused by transfer itself (the data helper loads them)
    bn_calib_batch_size: int = 8
    resolution: int = 224
    base_lr: float = 5e-4
    lr_base_batch: int = 512
    drop_path: float = 0.0
    eval_split: str = "test"
    val_fraction: float = 0.15          # for datasets without a val / test split
    test_fraction: float = 0.15
    split_seed: int = 0
    seeds: tuple[int, ...] = ()         # the pipeline's seeds (tasks.stages: one transfer per seed, as ``seed``)

    def __post_init__(self):
        # Peak learning rate, scaled linearly with the batch size.
        object.__setattr__(self, "lr", self.base_lr * self.batch_size / self.lr_base_batch)
        super().__post_init__()


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
    """Fine-tune ``model_ref`` (see ``classifiers.load_classifier``) on the dataset at
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
