"""Training a classifier: the classification step, the data, and :func:`train_classifier`.

Fine-tuning (``nas_core.finetune``), training the baselines from scratch and downstream
transfer (``nas_core.transfer``) all train through :func:`train_classifier`: the one
training loop (``nas_core.trainer``) with a :class:`ClassificationStep` - label smoothing,
mixup/cutmix, and DeiT-style hard distillation where a teacher is configured and the model
has a distillation head - validating every ``eval_every`` epochs. :func:`classification_data`
loads a dataset as these runs need it.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .config import ClassificationRecipe, TrainRecipe
from .data.folders import ManifestDataset, build_loader, build_transform, class_names, load_checked_manifest
from .distributed import init_distributed, seed_everything
from .evaluate import calibration_batches, evaluate
from .recipe import build_mixup, build_teacher, check_mixup, classification_criterion
from .trainer import LossStep, train_epochs


# --------------------------------------------------------------------------- the step
class ClassificationStep(LossStep):
    """Cross-entropy (label smoothing) on the labels; with ``mixup`` (a ``timm.data.Mixup``)
    the batch is mixed first and the loss is soft-target cross-entropy on the mixed,
    smoothed targets; with a teacher, DeiT's hard distillation:
    ``(CE(cls, y) + CE(dist, argmax teacher(x))) / 2`` (the teacher sees the mixed images)
    on a model whose ``distilled_training`` makes it return ``(cls, dist)`` in train mode."""

    def __init__(self, smoothing: float = 0.0, teacher: nn.Module | None = None, mixup=None):
        self.mixup = mixup
        self.criterion = classification_criterion(smoothing, mixup)
        self.teacher = teacher

    def __call__(self, model: nn.Module, batch, device: torch.device):
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if self.mixup is not None:
            images, labels = self.mixup(images, labels)
        out = model(images)
        cls, dist_logits = out if isinstance(out, tuple) else (out, None)
        loss = self.criterion(cls, labels)
        if dist_logits is not None and self.teacher is not None:
            with torch.no_grad():
                teacher_labels = self.teacher(images).argmax(dim=1)
            loss = (loss + F.cross_entropy(dist_logits, teacher_labels)) / 2
        return loss, {}


def supports_distillation(model: nn.Module) -> bool:
    """Whether ``model`` has a distillation head (our subnets, timm EfficientFormerV2)."""
    return getattr(model, "head_dist", None) is not None and hasattr(model, "distilled_training")


def distillation_enabled(config, model: nn.Module) -> bool:
    """Hard distillation runs when a teacher is configured and the model can take it;
    models without a distillation head (MobileNetV2) train on the labels only."""
    return bool(config.teacher) and supports_distillation(model)


def train_classifier(model: nn.Module, train_dataset: Dataset, config: ClassificationRecipe,
                     out_dir: str | os.PathLike, *, val_loader: Iterable | None = None,
                     num_classes: int | None = None, resume: bool = True, overwrite: bool = False,
                     progress: bool = True, identity: Mapping | None = None, desc: str = "finetune"):
    """Train a classifier with ``config`` (a FinetuneConfig or TransferConfig), validating
    on ``val_loader`` (``val_top1/top5/loss`` in the log). Hard distillation from
    ``config.teacher`` when :func:`distillation_enabled`. Runs distributed under ``torchrun``."""
    ctx = init_distributed()
    teacher = None
    if distillation_enabled(config, model):
        teacher = build_teacher(config.teacher, config.teacher_checkpoint, num_classes, ctx.device,
                                config.teacher_stand_in)
        model.distilled_training = True
    check_mixup(config.mixup, config.batch_size // ctx.world_size, desc)
    mixup = build_mixup(config.mixup, config.smoothing, num_classes)

    def validate(m: nn.Module) -> dict[str, float]:
        result = evaluate(m, val_loader)
        return {"val_top1": result["top1"], "val_top5": result["top5"], "val_loss": result["loss"]}

    seed_everything(config.seed + 1_000_003 * ctx.rank)  # augmentation / drop path draws per rank
    log = train_epochs(model, train_dataset, ClassificationStep(config.smoothing, teacher, mixup),
                       TrainRecipe.from_config(config), out_dir, resume=resume, overwrite=overwrite,
                       evaluate_fn=validate if val_loader else None, eval_every=config.eval_every, ctx=ctx,
                       identity=identity, progress=progress, desc=desc)
    if teacher is not None:
        model.distilled_training = False
    return log


# --------------------------------------------------------------------------- data
@dataclasses.dataclass
class ClassificationData:
    """A classification dataset ready for training: augmented train split, loaders for
    validation and for the reported split, and fixed BN-recalibration batches."""

    root: Path
    train: Dataset
    val_loader: DataLoader
    eval_loader: DataLoader
    calib_batches: list[torch.Tensor]
    class_names: list[str]
    eval_split: str
    skipped_images: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root), "classes": self.num_classes, "train_images": len(self.train),
                "val_images": len(self.val_loader.dataset), "eval_split": self.eval_split,
                "eval_images": len(self.eval_loader.dataset), "skipped_images": self.skipped_images}


def classification_data(root: str | os.PathLike, resolution: int, config, manifest_kwargs: Mapping | None = None
                        ) -> ClassificationData:
    """:class:`ClassificationData` for the dataset at ``root`` (``manifest.parquet``, an
    ImageNet layout or one folder per class: ``nas_core.data.folders.load_manifest``)."""
    # Every image decoded once before anything trains: one error listing the unreadable ones.
    manifest = load_checked_manifest(root, config.skip_bad_images, **dict(manifest_kwargs or {}))
    splits = set(manifest["split"])
    eval_split = config.eval_split if config.eval_split in splits else "val"
    train = ManifestDataset(manifest, root, "train", build_transform(resolution, True, config.augment),
                            cache=config.cache_images, decode_side=2 * resolution)
    val_loader = build_loader(manifest, root, "val", resolution, config.eval_batch_size, train=False,
                              num_workers=config.num_workers, cache=config.cache_images,
                              eval_transform=config.eval_transform)
    eval_loader = val_loader if eval_split == "val" else build_loader(
        manifest, root, eval_split, resolution, config.eval_batch_size, train=False,
        num_workers=config.num_workers, cache=config.cache_images, eval_transform=config.eval_transform)
    calib_source = ManifestDataset(manifest, root, "train", build_transform(resolution, False, config.eval_transform),
                                   decode_side=2 * resolution)
    batches = min(config.bn_calib_batches, max(1, len(calib_source) // config.bn_calib_batch_size))
    calib = calibration_batches(calib_source, batches, min(config.bn_calib_batch_size, len(calib_source)), config.seed)
    return ClassificationData(Path(root), train, val_loader, eval_loader, calib, class_names(manifest), eval_split,
                              dict(manifest.attrs.get("skipped_images") or {}))
