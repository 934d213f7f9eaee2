"""The parts every stage config shares: reading a ``params.yaml`` section, and the training recipe.

* :class:`SectionConfig` - the base of every config dataclass read from one section of
  ``params.yaml``: :meth:`~SectionConfig.from_params` builds it from the section's mapping and
  rejects a key the dataclass does not have, naming the section, the key and the valid keys
  (a typo such as ``learning_rate`` would otherwise be ignored silently).
* :class:`TrainRecipe` - what the one training loop (:class:`nas_core.trainer.Trainer`) needs:
  optimiser, schedule, batch, data order, mixed precision.
* :class:`ClassificationRecipe` - a :class:`TrainRecipe` plus what every classifier run
  adds: label smoothing, mixup/cutmix, hard distillation, augmentation, validation and BN
  recalibration. The supernet, fine-tuning and transfer configs are classification recipes;
  the detection config is a plain train recipe. Each stage config only restates the defaults
  that differ for it (the paper's numbers for that stage) and adds its own fields.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping


class SectionConfig:
    """Base of the frozen config dataclasses that mirror one ``params.yaml`` section.

    ``section`` names the section in error messages. A subclass may define :meth:`check`
    for cross-field rules that :meth:`from_params` applies after construction.
    """

    section: ClassVar[str] = "?"

    @classmethod
    def valid_keys(cls) -> list[str]:
        """The keys a section may give: the dataclass's constructor fields."""
        return sorted(f.name for f in dataclasses.fields(cls) if f.init)

    @classmethod
    def from_params(cls, mapping: Mapping[str, Any] | None):
        """The config for a section's mapping (None or empty: the defaults).

        Unknown keys are one error listing them and the valid ones. YAML lists become the
        tuples the dataclasses use (they must stay hashable and comparable with defaults).
        ``from_dict`` is the same constructor, under the name the latency configs' callers use.
        """
        values = dict(mapping or {})
        valid = cls.valid_keys()
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"params {cls.section}: unknown keys {unknown}; known keys: {valid}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        config = cls(**values)
        config.check()
        return config

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any] | None):
        return cls.from_params(mapping)

    def check(self) -> None:
        """Cross-field rules (a subclass's); the constructor checks single fields."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TrainRecipe(SectionConfig):
    """Optimisation and data order: everything the training loop reads.

    ``opt`` is any ``timm.optim.create_optimizer_v2`` name; ``lr`` the peak rate for the
    total ``batch_size`` (over all processes); the schedule is timm's cosine with linear
    warm-up from ``warmup_lr`` over ``warmup_epochs``, stepped every optimizer step.
    ``momentum`` goes to the SGD family only. ``clip_grad`` (None: off) clips with timm's
    ``dispatch_clip_grad`` mode ``clip_mode`` (``norm``, ``value`` or ``agc``).
    ``steps_per_epoch`` caps an epoch (None: one pass over the data). ``amp``: float16
    autocast and a grad scaler, on CUDA only. ``num_workers``: DataLoader workers per process.
    """

    section: ClassVar[str] = "recipe"

    epochs: int = 1
    batch_size: int = 64
    opt: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 0.0
    weight_decay: float = 0.025
    momentum: float = 0.9
    clip_grad: float | None = None
    clip_mode: str = "norm"
    steps_per_epoch: int | None = None
    seed: int = 0
    num_workers: int = 0
    amp: bool = True

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or null, got {self.steps_per_epoch}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @classmethod
    def from_config(cls, config: "TrainRecipe") -> "TrainRecipe":
        """The plain recipe inside a stage config: what a training checkpoint records and
        compares on resume (a stage's other fields, e.g. its latency devices, may change)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class ClassificationRecipe(TrainRecipe):
    """A :class:`TrainRecipe` for image classifiers (the supernet, fine-tuning, transfer).

    ``smoothing``: label smoothing. ``mixup``: ``timm.data.Mixup`` arguments
    (``mixup_alpha``, ``cutmix_alpha``, ...; None: off). ``teacher``: a timm tag for DeiT-style
    hard distillation (the paper: ``regnety_160.deit_in1k``), its weights from
    ``teacher_checkpoint`` (None: timm's download); ``teacher_stand_in`` is a timm model with
    random weights that dry runs use when the teacher cannot be loaded. ``augment`` and
    ``eval_transform`` override ``nas_core.data.folders``' defaults. Validation runs every
    ``eval_every`` epochs (and after the last) with ``eval_batch_size``; BN statistics are
    recalibrated on ``bn_calib_batches`` batches of ``bn_calib_batch_size`` training images.
    ``cache_images`` keeps decoded images in memory; ``skip_bad_images`` leaves unreadable
    images out (else one error lists them).
    """

    smoothing: float = 0.1
    mixup: dict | None = None
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    teacher_stand_in: str | None = None
    cache_images: bool = False
    skip_bad_images: bool = False
    augment: dict | None = None
    eval_transform: dict | None = None
    eval_every: int = 1
    eval_batch_size: int = 256
    bn_calib_batches: int = 10
    bn_calib_batch_size: int = 64
