"""The ImageNet training recipe's pieces, built from timm's own classes.

SCAN-Edge (§6.1) "follows the setup of Li et al. [22]" (EfficientFormerV2), whose training
script is DeiT's: RandAugment, random erasing, mixup/cutmix, label smoothing, AdamW with a
cosine schedule, and DeiT-style hard distillation from RegNetY-16GF. The values, each with
its source, are in ``params.yaml`` (``profiles.imagenet``); this module turns a config's
fields into timm objects, so both trainers (``nas_core.train``, ``nas_core.finetune``)
build them the same way:

* :func:`build_mixup` - ``timm.data.Mixup`` (mixup/cutmix on the batch, smoothed one-hot
  targets) from a config's ``mixup:`` dict;
* :func:`classification_criterion` - ``SoftTargetCrossEntropy`` when mixup makes soft
  targets, ``LabelSmoothingCrossEntropy`` otherwise (as EfficientFormer's ``main.py``);
* :func:`clip_gradients` - timm's ``dispatch_clip_grad`` (``norm``, ``value`` or ``agc``,
  the adaptive clipping EfficientFormerV2 trains with);
* :func:`build_teacher` - the frozen distillation teacher from a full timm tag
  (``regnety_160.deit_in1k``: the DeiT RegNetY-16GF, 82.9 % top-1, the paper's teacher;
  the bare name ``regnety_160`` resolves to another tag), with an optional stand-in for
  dry runs where the real weights cannot be downloaded.
"""
from __future__ import annotations

import sys
from typing import Any, Iterable, Mapping

import timm
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import dispatch_clip_grad
from torch import nn

MIXUP_KEYS = frozenset({"mixup_alpha", "cutmix_alpha", "cutmix_minmax", "prob", "switch_prob", "mode", "correct_lam"})


def check_mixup(mixup: Mapping[str, Any] | None, local_batch: int, where: str) -> None:
    """Unknown ``mixup`` keys, or an odd per-process batch with it (timm mixes pairs), are errors."""
    if not mixup:
        return
    unknown = sorted(set(mixup) - MIXUP_KEYS)
    if unknown:
        raise ValueError(f"{where}.mixup: unknown keys {unknown}; timm.data.Mixup takes {sorted(MIXUP_KEYS)}")
    if local_batch % 2:
        raise ValueError(f"{where}.mixup needs an even batch per process (timm mixes image pairs), got {local_batch}")


def build_mixup(mixup: Mapping[str, Any] | None, smoothing: float, num_classes: int):
    """``timm.data.Mixup`` for a config's ``mixup:`` section (None: no mixing). The label
    smoothing goes into the mixed targets, as in EfficientFormer's ``main.py``."""
    if not mixup:
        return None

    return Mixup(**dict(mixup), label_smoothing=smoothing, num_classes=num_classes)


def classification_criterion(smoothing: float, mixup) -> nn.Module:
    """The loss on the class head: soft-target CE after mixup, else label-smoothed CE."""
    if mixup is not None:
        return SoftTargetCrossEntropy()
    return LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else nn.CrossEntropyLoss()


def clip_gradients(params: Iterable[nn.Parameter], value: float, mode: str = "norm") -> None:
    """timm's gradient clipping: ``norm`` (global norm), ``value`` or ``agc`` (adaptive)."""
    dispatch_clip_grad([p for p in params if p.grad is not None], value, mode=mode)


def build_teacher(name: str, checkpoint: str | None, num_classes: int, device: torch.device,
                  stand_in: str | None = None) -> nn.Module:
    """A frozen timm classifier for hard distillation (eval mode, no gradients).

    ``name`` is a timm model name, best a full tag (``regnety_160.deit_in1k``); its weights
    come from ``checkpoint`` or else timm's pretrained download, and a pretrained teacher
    must predict the dataset's classes (a new random head would teach nothing). When the
    real teacher cannot be loaded and ``stand_in`` names a timm model, that model is built
    with random weights instead and a warning says so: for dry runs, which exercise the
    distillation wiring, never for a real training run.
    """
    try:
        if stand_in and (name, checkpoint) in _UNLOADABLE:  # a dry run asks for it at every stage: fail once
            raise ValueError(_UNLOADABLE[(name, checkpoint)])
        model = _load_teacher(name, checkpoint, num_classes)
    except ValueError as err:
        if not stand_in:
            raise
        _UNLOADABLE[(name, checkpoint)] = str(err)

        print(f"warning: {err}\nwarning: DRY RUN: distilling from a stand-in teacher, {stand_in!r} with random "
              "weights; the real teacher is needed for a real run", file=sys.stderr, flush=True)
        model = timm.create_model(stand_in, pretrained=False, num_classes=num_classes)
    model.requires_grad_(False)
    return model.eval().to(device)


_UNLOADABLE: dict[tuple[str, str | None], str] = {}  # teachers this process could not load, and why


def _load_teacher(name: str, checkpoint: str | None, num_classes: int) -> nn.Module:
    where = checkpoint or "timm's pretrained weights (download)"
    try:
        if checkpoint:
            return timm.create_model(name, pretrained=False, num_classes=num_classes, checkpoint_path=checkpoint)
        model = timm.create_model(name, pretrained=True)
    except Exception as err:  # unknown name, unreachable hub, mismatched checkpoint
        raise ValueError(f"teacher {name!r} from {where}: {type(err).__name__}: {err}") from err
    if model.num_classes != num_classes:
        raise ValueError(f"teacher {name!r} from {where} predicts {model.num_classes} classes, the dataset has "
                         f"{num_classes}: give a teacher_checkpoint trained on these classes")
    return model
