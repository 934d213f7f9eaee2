"""Fine-tuning searched subnets (§6.2, Suppl. S6), training the baselines the same way, and deployment.

The paper inherits a searched subnet's weights from the supernet and fine-tunes it for
150 more epochs (AdamW, cosine decay, hard distillation from RegNetY-16GF), then compiles
it for the device it was searched for and measures its latency. This module does that in
three layers, each usable alone:

* :class:`ModelTrainer` / :func:`train_epochs` - a generic epoch loop for *any* model and
  loss (classification here, SSDLite in ``nas_core.detection``): timm optimizer and
  cosine schedule with warm-up (updated per step), mixed precision on GPUs, a checkpoint
  after every epoch and exact resume, ``torchrun`` support. The optimizer / schedule, RNG,
  distributed and teacher helpers are the supernet trainer's (``nas_core.train``), so both
  trainers optimise, resume and distribute the same way: no DistributedDataParallel
  wrapper, gradients are averaged with ``train.all_reduce_gradients`` (every parameter of
  a plain model gets one), BatchNorm statistics are averaged over ranks after each epoch.
* :func:`train_classifier` - that loop with a classification step (label smoothing,
  optional DeiT-style hard distillation: ``head_dist`` learns the teacher's argmax) and
  per-epoch validation. The same function fine-tunes ours, trains the baselines from
  scratch and does downstream transfer (``nas_core.transfer``).
* :func:`finetune` - the stage: build the model (a searched/preset subnet with weights
  inherited from the supernet, a subnet from scratch, or timm's ``mobilenetv2_100``),
  measure the inherited accuracy after BN recalibration, train, evaluate, export (ONNX,
  OpenVINO IR, a TensorRT engine where possible) and time on each device.

Baselines, trained with the same recipe, data and budget as ours (no pretrained weights
are available offline): ``mobilenetv2_100`` (timm, random init); ``efficientformerv2_s0``
from scratch (``init="scratch"``) or inherited from our supernet (``init="supernet"``,
the default for every member of the space, S0 included). ``metrics.json`` says which
(``init``); :func:`comparison_table` shows both when both were run. Without a configured
``resolution`` every model trains at the supernet's resolution, baselines included.
Latencies written by separate runs on a shared machine do not compare; ``scan-edge
finetune-table --remeasure`` (:func:`remeasure_latency`) times all models side by side.

Outputs of :func:`finetune` under ``data/finetune/<name>/``:

``metrics.json``::

    {"name", "kind": "subnet" | "timm", "init": "supernet" | "scratch",
     "arch_id"?, "arch"? (dict), "compact"?, "timm_name"?,
     "predicted_accuracy": float | null   (the search's, from the .arch.json),
     "inherited": {"top1", "top5", "loss", "images", "split"} | null
                  (supernet weights, BN recalibrated, before fine-tuning),
     "finetuned": {"top1", "top5", "loss", "images", "split"},
     "params", "macs" (at deploy_resolution, num_classes of the dataset),
     "train_resolution", "deploy_resolution", "num_classes",
     "latency_ms": {device: {"median_ms", "p10_ms", "p90_ms", "repeats", "stable",
                             "threads", "precision", "precision_actual", "runtime",
                             "runtime_version", "input_shape"} | {"skipped": reason}},
     "searched_for": [device, ...]  (the .arch.json's devices; timed first),
     "estimated_latency_ms": {device: ms} | null  (the search's LUT estimate),
     "exports": {"onnx", "input_shape", "openvino" | {"skipped"}, "tensorrt" | {"skipped"},
                 "tensorrt_check"?: {"max_abs_diff", "outputs"} (the engine's outputs against torch)},
     "train": {"epochs", "seconds", "final_loss", "distillation"},
     "supernet": {"path", "sha256"} | null, "dataset", "config", "provenance"}

``model.pt`` (:func:`save_classifier`; read back with :func:`load_classifier`),
``model.onnx`` (+ ``model.xml``/``.bin``, ``model.engine``) at ``deploy_resolution``,
``checkpoint.pt`` (resume state) and ``train_log.parquet``:

    ================  =======  ===================================================
    column            type     meaning
    ================  =======  ===================================================
    epoch             int64    epochs completed (1-based)
    step              int64    optimizer steps completed
    lr                float64  learning rate after the epoch's last step
    loss              float64  mean training loss over the epoch's steps
    <part>            float64  mean of each extra loss term the step reports
                               (detection: bbox_loss, cls_loss)
    images_per_s      float64  training images (all ranks) per second
    epoch_seconds     float64  wall time of the epoch's steps
    val_top1, ...     float64  what the evaluation callback returned (NaN when not
                               evaluated this epoch); classification: val_top1,
                               val_top5, val_loss
    world_size        int64    processes
    finished_at       str      UTC ISO 8601
    ================  =======  ===================================================
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .data.folders import seed_worker
from .io import (code_version, file_sha256, machine_fingerprint, read_json, torch_load,
                 torch_save, utc_now, write_json, write_parquet)
from .locks import Lock, no_lock
from .recipe import build_mixup, build_teacher, check_mixup, classification_criterion
from .train import (DistContext, apply_gradients, average_bn_statistics, broadcast_state,
                    build_optimizer_and_scheduler, gather_rng_states, init_distributed,
                    restore_training_state, seed_everything)

CHECKPOINT_FORMAT = "scan-edge/trainer-checkpoint/v1"
CLASSIFIER_FORMAT = "scan-edge/classifier/v1"
CHECKPOINT_NAME, LOG_NAME, MODEL_NAME, METRICS_NAME = "checkpoint.pt", "train_log.parquet", "model.pt", "metrics.json"
TIMM_BASELINES = ("mobilenetv2_100",)  # classifiers built with timm rather than from the search space
DEFAULT_OUT = Path("data/finetune")
DEFAULT_DATA = Path("data/dataset")
DEFAULT_SUPERNET = Path("data/supernet/supernet.pt")


# --------------------------------------------------------------------------- configuration
def config_from_section(cls, section: Mapping | None, name: str):
    """``cls(**section)`` for a params.yaml section; unknown keys name the known ones."""
    section = dict(section or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"params {name}: unknown keys {unknown}; known keys: {sorted(known)}")
    for key, value in section.items():  # YAML lists -> the tuples the dataclasses use
        if isinstance(value, list):
            section[key] = tuple(value)
    return cls(**section)


@dataclasses.dataclass(frozen=True)
class TrainRecipe:
    """What the generic epoch loop needs: optimisation and data order (no task specifics).

    ``opt`` is any ``timm.optim.create_optimizer_v2`` name; ``lr`` the peak rate for the
    total ``batch_size`` (over all processes); the schedule is timm's cosine with linear
    warm-up from ``warmup_lr``, stepped every optimizer step. ``steps_per_epoch`` caps an
    epoch (None: one pass over the data). ``amp``: float16 autocast on CUDA only.
    """

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
    clip_mode: str = "norm"              # timm dispatch_clip_grad: norm | value | agc
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config) -> "TrainRecipe":
        """The recipe fields of a stage config (FinetuneConfig, TransferConfig, DetectionConfig)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if hasattr(config, f.name)})


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """params.yaml ``finetune:`` (and ``transfer:``, with :class:`nas_core.transfer.TransferConfig`).

    Defaults are the paper's ImageNet fine-tuning (§6.1): 150 epochs, AdamW, cosine,
    hard distillation from RegNetY-16GF (``teacher: regnety_160`` in the imagenet
    profile). The extracted paper text lost the batch size and learning rate; these are
    EfficientFormerV2's recipe [22] (batch 1024, lr 1e-3, weight decay 0.025, 5 warm-up
    epochs, label smoothing 0.1), which the paper follows.
    """

    resolution: int | None = None        # train/eval resolution (None: the supernet's)
    deploy_resolution: int = 224         # export + latency resolution (the device profiles')
    epochs: int = 150
    batch_size: int = 1024
    steps_per_epoch: int | None = None
    opt: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 5.0
    weight_decay: float = 0.025
    momentum: float = 0.9
    clip_grad: float | None = None
    clip_mode: str = "norm"              # timm dispatch_clip_grad: norm | value | agc
    smoothing: float = 0.1
    drop_path: float = 0.0
    mixup: dict | None = None            # timm.data.Mixup arguments (mixup_alpha, cutmix_alpha, ...); None: off
    teacher: str | None = None           # timm tag for hard distillation (paper: regnety_160.deit_in1k)
    teacher_checkpoint: str | None = None
    teacher_stand_in: str | None = None  # dry runs: a timm model (random weights) when the teacher cannot load
    amp: bool = True
    seed: int = 0
    num_workers: int = 0
    cache_images: bool = False
    skip_bad_images: bool = False        # leave unreadable images out (listed in metrics.json)
    augment: dict | None = None          # overrides of nas_core.data.folders.DEFAULT_TRAIN_AUGMENT
    eval_transform: dict | None = None   # overrides of nas_core.data.folders.DEFAULT_EVAL_TRANSFORM (crop_pct)
    eval_every: int = 1
    eval_batch_size: int = 256
    eval_split: str = "test"             # split of the reported (inherited / fine-tuned) accuracy
    bn_calib_batches: int = 10
    bn_calib_batch_size: int = 64
    devices: tuple[str, ...] = ("ort_cpu_fp32", "openvino_cpu_fp32", "openvino_cpu_lowp", "tensorrt_fp32")
    timing: dict | None = None           # nas_core.latency.timing.TimingConfig overrides
    export_openvino: bool = True
    export_tensorrt: bool = True         # only where TensorRT and a GPU are present

    @classmethod
    def from_params(cls, section: Mapping | None) -> "FinetuneConfig":
        return config_from_section(cls, section, "finetune")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- the generic trainer
StepFn = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, dict[str, float]]]


class ModelTrainer:
    """Trains ``model`` on ``train_dataset`` with ``step_fn`` for ``recipe.epochs`` epochs.

    ``step_fn(model, batch, device) -> (loss, parts)`` computes the loss of one batch
    (``parts``: extra floats to log). ``evaluate_fn(model) -> dict`` runs on rank 0 every
    ``eval_every`` epochs and after the last one; its values go into the log. The data
    order is a function of ``(seed, epoch)`` (a ``DistributedSampler``, also with one
    process) and the loader's generator is re-seeded from ``(seed, epoch, rank)`` every
    epoch, so a run resumed from ``checkpoint.pt`` ends bit-identical to an uninterrupted one
    (with ``num_workers >= 1`` when other threads may draw from Python's ``random``, as in a
    Prefect flow: see :mod:`nas_core.train`).
    """

    def __init__(self, model: nn.Module, train_dataset: Dataset, step_fn: StepFn, recipe: TrainRecipe,
                 out_dir: str | os.PathLike, *, collate_fn: Callable | None = None,
                 evaluate_fn: Callable[[nn.Module], Mapping[str, float]] | None = None, eval_every: int = 1,
                 ctx: DistContext | None = None, identity: Mapping[str, Any] | None = None,
                 progress: bool = True, desc: str = "train"):
        self.recipe, self.step_fn, self.evaluate_fn = recipe, step_fn, evaluate_fn
        self.eval_every, self.desc, self.progress = max(1, eval_every), desc, progress
        self.out_dir = Path(out_dir)
        self.ctx = ctx or DistContext()
        self.identity = dict(identity or {})
        if recipe.batch_size % self.ctx.world_size:
            raise ValueError(f"batch_size {recipe.batch_size} is not divisible by the {self.ctx.world_size} processes")
        self.local_batch = recipe.batch_size // self.ctx.world_size
        self.model = model.to(self.ctx.device)
        if self.ctx.distributed:
            broadcast_state(self.model)
        self.sampler = DistributedSampler(train_dataset, num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                          shuffle=True, seed=recipe.seed, drop_last=True)
        self.loader_generator = torch.Generator()
        self.loader = DataLoader(train_dataset, batch_size=self.local_batch, sampler=self.sampler, drop_last=True,
                                 collate_fn=collate_fn, num_workers=recipe.num_workers,
                                 generator=self.loader_generator, persistent_workers=False,
                                 worker_init_fn=seed_worker if recipe.num_workers > 0 else None,
                                 pin_memory=self.ctx.device.type == "cuda")
        if len(self.loader) == 0:
            raise ValueError(f"{len(train_dataset)} training images are fewer than one batch of "
                             f"{self.local_batch} per process; lower batch_size")
        self.steps_per_epoch = min(len(self.loader), recipe.steps_per_epoch or len(self.loader))
        self.optimizer, self.scheduler = build_optimizer_and_scheduler(self.model, recipe, self.steps_per_epoch)
        self.use_amp = recipe.amp and self.ctx.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.epoch, self.step = 0, 0
        self.log: list[dict[str, Any]] = []

    # ---- training
    def _autocast(self):
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.float16)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm.auto import tqdm

        self.sampler.set_epoch(epoch)
        self.loader_generator.manual_seed(int(np.random.SeedSequence(
            [self.recipe.seed, epoch, self.ctx.rank]).generate_state(1)[0]))
        self.model.train()
        bar = tqdm(total=self.steps_per_epoch, desc=f"{self.desc} epoch {epoch + 1}/{self.recipe.epochs}",
                   disable=not (self.progress and self.ctx.is_main), dynamic_ncols=True, leave=False)
        totals: dict[str, float] = {}
        done, start = 0, time.perf_counter()
        params = [p for p in self.model.parameters() if p.requires_grad]
        for batch in self.loader:
            with self._autocast():
                loss, parts = self.step_fn(self.model, batch, self.ctx.device)
            self.scaler.scale(loss).backward()
            self.step = apply_gradients(params, self.optimizer, self.scheduler, self.scaler, self.ctx.world_size,
                                        self.recipe.clip_grad, self.step, self.recipe.clip_mode)
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                totals[key] = totals.get(key, 0.0) + value
            done += 1
            bar.set_postfix(loss=f"{totals['loss'] / done:.3f}",
                            img_s=f"{done * self.recipe.batch_size / (time.perf_counter() - start):.1f}")
            bar.update()
            if done == self.steps_per_epoch:
                break
        bar.close()
        seconds = time.perf_counter() - start
        return {**{k: v / done for k, v in totals.items()},
                "images_per_s": done * self.recipe.batch_size / seconds, "epoch_seconds": seconds}

    def fit(self, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train to ``recipe.epochs`` (or at most ``stop_after`` more epochs); checkpoint
        after every epoch; returns the log rows."""
        last = self.recipe.epochs if stop_after is None else min(self.recipe.epochs, self.epoch + stop_after)
        for epoch in range(self.epoch, last):
            stats = self.train_epoch(epoch)
            average_bn_statistics(self.model, self.ctx.world_size)
            metrics: Mapping[str, float] = {}
            if self.evaluate_fn is not None and self.ctx.is_main and (
                    (epoch + 1) % self.eval_every == 0 or epoch + 1 == self.recipe.epochs):
                metrics = self.evaluate_fn(self.model)
                self.model.train()
            self.epoch = epoch + 1
            row = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
                   **stats, **metrics, "world_size": self.ctx.world_size, "finished_at": utc_now()}
            self.log.append(row)
            self.save_checkpoint()
            if self.ctx.is_main and self.progress:
                print(f"{self.desc} " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()
                                                  if k not in ("world_size", "finished_at", "step")), flush=True)
        return self.log

    # ---- state
    def state_dict(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "identity": self.identity, "recipe": self.recipe.to_dict(),
                "epoch": self.epoch, "step": self.step, "world_size": self.ctx.world_size,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": gather_rng_states(self.ctx), "log": self.log, "code_version": code_version(), "created": utc_now()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a trainer checkpoint (format {state.get('format')!r})")
        changed = {k: (state["recipe"].get(k), v) for k, v in self.recipe.to_dict().items()
                   if k != "num_workers" and state["recipe"].get(k) != v}
        changed.update({k: (state["identity"].get(k), v) for k, v in self.identity.items()
                        if state["identity"].get(k) != v})
        if changed:
            diff = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
            raise ValueError(f"cannot resume: the run changed since the checkpoint ({diff}); restore the "
                             "settings, or start over (overwrite)")
        self.epoch, self.step, self.log = restore_training_state(
            state, self.model, self.optimizer, self.scheduler, self.scaler, self.ctx, self.recipe.seed)

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # every rank takes part (RNG gathering)
        if self.ctx.is_main:
            torch_save(self.out_dir / CHECKPOINT_NAME, state)
            self.write_log()
        self.ctx.barrier()

    def resume(self) -> bool:
        """Continue from ``out_dir/checkpoint.pt`` if there is one; True if it did."""
        path = self.out_dir / CHECKPOINT_NAME
        if not path.exists():
            return False
        self.load_state_dict(torch_load(path, map_location="cpu"))
        return True

    def log_frame(self):
        import pandas as pd

        frame = pd.DataFrame(self.log)
        for column in frame.columns:
            if column in ("epoch", "step", "world_size"):
                frame[column] = frame[column].astype("int64")
            elif column != "finished_at":
                frame[column] = frame[column].astype("float64")
        return frame

    def write_log(self) -> None:
        write_parquet(self.out_dir / LOG_NAME, self.log_frame(),
                      provenance={"recipe": self.recipe.to_dict(), "identity": self.identity,
                                  "code_version": code_version(), "machine": machine_fingerprint(),
                                  "world_size": self.ctx.world_size, "device": str(self.ctx.device)})


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def train_epochs(model: nn.Module, train_dataset: Dataset, step_fn: StepFn, recipe: TrainRecipe,
                 out_dir: str | os.PathLike, *, resume: bool = True, overwrite: bool = False, **trainer_kwargs):
    """Run a :class:`ModelTrainer` to completion and return its log as a DataFrame.

    An existing ``out_dir/checkpoint.pt`` is continued when ``resume`` (the default: long
    jobs pick up where they stopped; an incompatible checkpoint is an error naming what
    changed) and discarded when ``overwrite``.
    """
    out_dir = Path(out_dir)
    checkpoint = out_dir / CHECKPOINT_NAME
    if checkpoint.exists() and not (resume or overwrite):
        raise FileExistsError(f"{checkpoint} exists: resume to continue that run or overwrite to start over")
    trainer = ModelTrainer(model, train_dataset, step_fn, recipe, out_dir, **trainer_kwargs)
    if overwrite and trainer.ctx.is_main:
        checkpoint.unlink(missing_ok=True)
    trainer.ctx.barrier()
    if resume and not overwrite and trainer.resume() and trainer.ctx.is_main and trainer.progress:
        print(f"resumed {checkpoint} at epoch {trainer.epoch}/{recipe.epochs}", flush=True)
    trainer.fit()
    return trainer.log_frame()


# --------------------------------------------------------------------------- classification
class ClassificationStep:
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


def train_classifier(model: nn.Module, train_dataset: Dataset, config, out_dir: str | os.PathLike, *,
                     val_loader: Iterable | None = None, num_classes: int | None = None, resume: bool = True,
                     overwrite: bool = False, progress: bool = True, identity: Mapping | None = None,
                     desc: str = "finetune"):
    """Train a classifier with ``config`` (FinetuneConfig / TransferConfig fields), validating
    on ``val_loader`` (``val_top1/top5/loss`` in the log). Hard distillation from
    ``config.teacher`` when :func:`distillation_enabled`. Runs distributed under ``torchrun``."""
    from .evaluate import evaluate

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
                       TrainRecipe.from_config(config),
                       out_dir, resume=resume, overwrite=overwrite, evaluate_fn=validate if val_loader else None,
                       eval_every=config.eval_every, ctx=ctx, identity=identity, progress=progress, desc=desc)
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
    from .data.folders import ManifestDataset, build_loader, build_transform, class_names, load_checked_manifest
    from .evaluate import calibration_batches

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


# --------------------------------------------------------------------------- models and their files
def subnet_at_resolution(model, resolution: int):
    """The same :class:`~nas_core.subnet.SubnetModel` built for another input size.

    Everything but the attention-bias tables is resolution-free; those are resized
    bicubically (as ``Supernet.extract`` does). Returns ``model`` itself when the size matches.
    """
    from .subnet import SubnetModel
    from .supernet import resize_attention_bias_table

    if model.resolution == resolution:
        return model
    rebuilt = SubnetModel(model.arch, model.num_classes, resolution, distillation=model.head_dist is not None)
    own = rebuilt.state_dict()
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("attention_biases") and value.shape != own[key].shape:
            value = resize_attention_bias_table(value, int(round(math.sqrt(own[key].shape[1]))))
        state[key] = value
    rebuilt.load_state_dict(state)
    return rebuilt.train(model.training).to(next(model.parameters()).device)


def with_drop_path(model, drop_path: float):
    """A SubnetModel rebuilt with stochastic depth ``drop_path`` (same weights); other models as they are."""
    from .subnet import SubnetModel

    if drop_path <= 0 or not isinstance(model, SubnetModel):
        return model
    rebuilt = SubnetModel(model.arch, model.num_classes, model.resolution, model.head_dist is not None, drop_path)
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt


def build_timm_classifier(name: str, num_classes: int, drop_path: float = 0.0) -> nn.Module:
    import timm

    if name not in TIMM_BASELINES:
        raise ValueError(f"unknown baseline {name!r}; timm baselines: {', '.join(TIMM_BASELINES)}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_path_rate=drop_path)


def save_classifier(path: str | os.PathLike, model: nn.Module, info: Mapping[str, Any], space=None) -> Path:
    """``model.pt``: ``{"format", "kind": "subnet"|"timm", "arch"?, "space_spec"?,
    "timm_name"?, "num_classes", "resolution", "distillation", "info", "state_dict"}``.
    ``space`` (the supernet's search space) is stored so that an architecture of a
    non-default space validates when loaded."""
    from .subnet import SubnetModel

    record: dict[str, Any] = {"format": CLASSIFIER_FORMAT, "info": dict(info), "state_dict": model.state_dict()}
    if isinstance(model, SubnetModel):
        record.update(kind="subnet", arch=model.arch.to_dict(), num_classes=model.num_classes,
                      resolution=model.resolution, distillation=model.head_dist is not None,
                      space_spec=dataclasses.asdict(space.spec) if space is not None else None)
    else:
        record.update(kind="timm", timm_name=info["timm_name"], num_classes=model.num_classes,
                      resolution=info.get("resolution"))
    return torch_save(path, record)


def load_classifier_file(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the classifier stored by :func:`save_classifier`; returns ``(model, info)``."""
    from .subnet import SubnetModel
    from .train import space_from_spec

    record = torch_load(path)
    if not isinstance(record, dict) or record.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path}: not a classifier saved by scan-edge finetune "
                         f"(format {record.get('format') if isinstance(record, dict) else type(record).__name__!r})")
    if record["kind"] == "subnet":
        space = space_from_spec(record.get("space_spec"))
        arch = space.from_dict(record["arch"])
        model = SubnetModel(arch, record["num_classes"], record["resolution"], record["distillation"],
                            spec=space.spec)
    else:
        model = build_timm_classifier(record["timm_name"], record["num_classes"])
    model.load_state_dict(record["state_dict"])
    return model.eval(), dict(record["info"])


def resolve_arch(ref: str, space=None) -> tuple[Any, dict[str, Any]]:
    """``(ArchConfig, record)`` for a preset name or an architecture JSON (a search's
    ``.arch.json``, whose record carries ``name``, ``predicted_accuracy``, ``latency_ms``),
    validated against ``space`` (default: the paper's)."""
    from .search_space import SearchSpace

    space = space or SearchSpace()
    path = Path(ref)
    if path.suffix == ".json" or path.is_file():
        data = read_json(path)
        record = data if "arch" in data else {"arch": data}
        record.setdefault("name", path.name.removesuffix(".json").removesuffix(".arch"))
        return space.from_dict(record["arch"]), record
    try:
        return space.preset(ref), {"name": ref}
    except KeyError as err:
        raise KeyError(f"{err.args[0]}; or give an architecture .json, a fine-tune output folder or "
                       f"{', '.join(TIMM_BASELINES)}") from None


def load_classifier(ref: str, supernet: str | os.PathLike | None = None, num_classes: int = 1000,
                    finetune_root: str | os.PathLike = DEFAULT_OUT) -> tuple[nn.Module, dict[str, Any]]:
    """A classifier named by ``ref``, for transfer and detection; returns ``(model, source)``.

    ``ref`` is, in this order: a fine-tune output folder (or its ``model.pt``), a name
    under ``finetune_root``, a timm baseline (``mobilenetv2_100``, random init), or a
    preset / architecture JSON (weights inherited from ``supernet`` if given, else random).
    ``source`` says what was loaded: ``name``, ``kind``, ``init``, ``path``, ``arch_id``.
    """
    path = Path(ref)
    candidates = [path / MODEL_NAME, path, Path(finetune_root) / ref / MODEL_NAME]
    for candidate in candidates:
        if candidate.is_file() and candidate.suffix == ".pt":
            model, info = load_classifier_file(candidate)
            source = {"name": info.get("name", candidate.parent.name), "kind": info.get("kind"),
                      "init": "pretrained", "path": str(candidate), "pretrain_init": info.get("init")}
            if "arch_id" in info:
                source["arch_id"] = info["arch_id"]
            return model, source
    if ref in TIMM_BASELINES:
        return build_timm_classifier(ref, num_classes), {"name": ref, "kind": "timm", "init": "random"}
    if supernet is not None:
        from .train import load_supernet

        net, _ = load_supernet(supernet)
        arch, record = resolve_arch(ref, net.space)
        model = net.extract(arch)
        init = f"inherited from {supernet} (BN not recalibrated)"
    else:
        from .subnet import SubnetModel

        arch, record = resolve_arch(ref)
        model, init = SubnetModel(arch, num_classes, resolution=224), "random"
    return model, {"name": record["name"], "kind": "subnet", "init": init, "arch_id": arch.arch_id}


# --------------------------------------------------------------------------- export and latency
def measure_latency(module: nn.Module, input_shape: Sequence[int], device_names: Sequence[str],
                    devices_section: Mapping | None = None, timing: Mapping | None = None,
                    onnx_path: str | os.PathLike | None = None,
                    workdir: str | os.PathLike | None = None, access_of: Callable | None = None,
                    job_name: str = "model") -> dict[str, dict]:
    """Latency of ``module`` on each named device profile usable here; the others get
    ``{"skipped": reason}`` (e.g. TensorRT without a GPU), as does a runtime that fails on
    the model. ONNX backends time ``onnx_path`` when given (the very file shipped) and
    otherwise export to ``workdir``; the torch backend times the eager module.

    ``access_of(profile)`` (``nas_core.latency.location``) is where an ONNX model is timed:
    the pipeline passes it, so a board's model is timed on the board (job ``job_name``),
    never here. Without it, only profiles this machine runs are timed."""
    from .latency.devices import check_usable, get_profile, load_profiles
    from .latency.measure import measure_module, measure_onnx
    from .latency.timing import TimingConfig

    profiles = load_profiles(devices_section)
    config = TimingConfig.from_dict(dict(timing or {}))
    results: dict[str, dict] = {}
    for name in dict.fromkeys(device_names):
        profile = get_profile(name, profiles)
        if access_of is not None and profile.backend != "torch":
            results[name] = _time_through_access(access_of(profile), module, input_shape, config, onnx_path, workdir,
                                                 job_name)
            continue
        usability = check_usable(profile)
        if not usability.usable:
            results[name] = {"skipped": usability.reason}
            continue
        try:
            if onnx_path is not None and profile.backend != "torch":
                result = measure_onnx(onnx_path, input_shape, profile, config)
            else:
                result = measure_module(module, input_shape, profile, workdir=workdir, config=config)
        except Exception as err:  # a runtime that cannot compile this model: record why, go on
            results[name] = {"skipped": f"failed on {name}: {type(err).__name__}: {err}"}
            continue
        results[name] = {
            "median_ms": result.median_ms, "p10_ms": result.p10_ms, "p90_ms": result.p90_ms,
            "repeats": result.repeats, "stable": result.stable, "threads": profile.threads,
            "precision": profile.precision, "precision_actual": result.info.get("precision_actual"),
            "runtime": result.info.get("runtime"), "runtime_version": result.info.get("runtime_version"),
            "input_shape": list(input_shape),
        }
    return results


def _time_through_access(access, module: nn.Module, input_shape: Sequence[int], config, onnx_path, workdir,
                         job_name: str) -> dict:
    """One model timed on a device through its access; ``{"skipped": reason}`` when it cannot be."""
    import tempfile

    from .latency.export import export_onnx
    from .latency.location import MeasurementsPending, TimingJob
    from .latency.timing import ModelEntry

    profile = access.profile
    with tempfile.TemporaryDirectory(prefix="scan-edge-model-") as tmp:
        folder = Path(workdir or tmp)
        path = Path(onnx_path) if onnx_path is not None else export_onnx(module, input_shape, folder / "model.onnx")
        job = TimingJob(job_name, (ModelEntry(job_name, path, tuple(input_shape)),), job_name, config)
        try:
            row = access.time(job, folder / f"{profile.name}.timing.parquet", resume=False, progress=False)[0]
        except MeasurementsPending:
            raise
        except Exception as err:  # a runtime that cannot compile this model: record why, go on
            return {"skipped": f"failed on {profile.name}: {type(err).__name__}: {err}"}
    return {"median_ms": row["median_ms"], "p10_ms": row["p10_ms"], "p90_ms": row["p90_ms"],
            "repeats": row["repeats"], "stable": row["stable"], "threads": profile.threads,
            "precision": profile.precision, "precision_actual": row.get("precision_actual"),
            "runtime": row.get("runtime"), "runtime_version": row.get("runtime_version"),
            "input_shape": list(input_shape), "location": access.location}


def tensorrt_unavailable_reason() -> str | None:
    """Why a TensorRT engine cannot be built here (None when it can)."""
    from .latency.devices import check_usable, get_profile

    usability = check_usable(get_profile("tensorrt_fp32"))
    return None if usability.usable else usability.reason


def export_tensorrt(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, fp16: bool = False,
                    workspace_mb: int = 1024) -> Path:
    """Build a serialized TensorRT engine from ONNX (needs ``tensorrt`` and a CUDA GPU)."""
    import tensorrt as trt

    from .io import atomic_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: "
                           + "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path}")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return Path(engine_path)


def export_all(model: nn.Module, input_shape: Sequence[int], out_dir: Path, openvino: bool = True,
               tensorrt: bool = True) -> dict[str, Any]:
    """``model.onnx`` always; OpenVINO IR and a TensorRT engine when asked and possible
    (else ``{"skipped": reason}``). Returns the paths written."""
    from .latency.export import export_onnx, export_openvino

    onnx_path = export_onnx(model, input_shape, out_dir / "model.onnx")
    exports: dict[str, Any] = {"onnx": str(onnx_path), "input_shape": list(input_shape)}
    if openvino:
        try:
            exports["openvino"] = str(export_openvino(onnx_path, out_dir / "model.xml"))
        except Exception as err:
            exports["openvino"] = {"skipped": f"{type(err).__name__}: {err}"}
    if tensorrt:
        reason = tensorrt_unavailable_reason()
        if reason:
            exports["tensorrt"] = {"skipped": reason}
        else:
            try:
                exports["tensorrt"] = str(export_tensorrt(onnx_path, out_dir / "model.engine"))
                exports["tensorrt_check"] = tensorrt_matches_torch(model, onnx_path, input_shape)
            except Exception as err:
                exports["tensorrt"] = {"skipped": f"{type(err).__name__}: {err}"}
    return exports


def tensorrt_matches_torch(model: nn.Module, onnx_path: str | os.PathLike, input_shape: Sequence[int],
                           atol: float = 1e-3, rtol: float = 1e-3) -> dict[str, float]:
    """Run the TensorRT engine built from ``onnx_path`` and ``model`` (torch, CPU) on the same
    input; raise if any output differs beyond ``atol + rtol * |torch|``. Returns the largest
    absolute difference, for the record (a wrong engine must not be timed or shipped)."""
    from .latency.timing import TensorRtSession, make_input

    session = TensorRtSession(onnx_path, input_shape, {"precision": "fp32", "options": {}})
    try:
        session.run()
        engine_outputs = session.outputs()
    finally:
        session.close()
    with torch.no_grad():
        torch_out = model.eval().cpu()(torch.from_numpy(make_input(input_shape)))
    torch_outputs = [t.numpy() for t in (torch_out if isinstance(torch_out, (tuple, list)) else [torch_out])]
    worst = 0.0
    for got, want in zip(engine_outputs, torch_outputs):
        diff = np.abs(got.reshape(want.shape) - want)
        worst = max(worst, float(diff.max()))
        if not np.all(diff <= atol + rtol * np.abs(want)):
            raise RuntimeError(f"TensorRT engine of {onnx_path} differs from torch by up to {float(diff.max()):.3g}")
    return {"max_abs_diff": worst, "outputs": len(torch_outputs)}


# --------------------------------------------------------------------------- the stage
def _check_ref(ref: str) -> None:
    """Fail early, before loading anything heavy, on a model reference that names nothing."""
    from .search_space import SearchSpace

    if ref in TIMM_BASELINES:
        return
    path = Path(ref)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such architecture file")
        return
    names = SearchSpace().preset_names()
    if ref not in names:
        raise KeyError(f"unknown architecture {ref!r}: not a preset ({', '.join(names)}), an architecture "
                       f".json or a baseline ({', '.join(TIMM_BASELINES)})")


def _supernet_for(ref: str, init: str, supernet_path: Path | None):
    """The trained supernet to inherit from (None when training from scratch)."""
    _check_ref(ref)
    if init not in ("supernet", "scratch"):
        raise ValueError(f"init must be 'supernet' or 'scratch', got {init!r}")
    if ref in TIMM_BASELINES and init != "scratch":
        raise ValueError(f"{ref} is not in the search space and has no pretrained weights offline: "
                         "it can only be trained from scratch (init 'scratch')")
    if init == "scratch":
        return None
    if supernet_path is None or not supernet_path.exists():
        raise FileNotFoundError(f"{supernet_path}: no supernet to inherit from. Train it with "
                                "`scan-edge train-supernet`, give --supernet PATH, or use --init scratch")
    from .train import load_supernet

    return load_supernet(supernet_path)[0]


def _supernet_resolution(supernet, supernet_path: Path | None) -> int:
    """The resolution the supernet was trained at: baselines trained from scratch use it
    too when none is configured (same data, same budget); 224 without a supernet."""
    if supernet is not None:
        return supernet.resolution
    if supernet_path is not None and supernet_path.exists():
        meta = torch.load(supernet_path, map_location="cpu", mmap=True, weights_only=False)  # no weight copy
        return int(meta["resolution"])
    return 224


def _initial_model(ref: str, supernet, num_classes: int, resolution: int,
                   drop_path: float = 0.0) -> tuple[nn.Module, dict, dict]:
    """``(model, description, search record)``: timm baseline, subnet from scratch, or the
    subnet extracted from ``supernet`` at ``resolution``."""
    if ref in TIMM_BASELINES:
        model = build_timm_classifier(ref, num_classes, drop_path)
        return model, {"name": ref, "kind": "timm", "timm_name": ref}, {}
    arch, record = resolve_arch(ref, supernet.space if supernet is not None else None)
    description = {"name": record["name"], "kind": "subnet", "arch_id": arch.arch_id, "arch": arch.to_dict(),
                   "compact": arch.compact()}
    if supernet is None:
        from .subnet import SubnetModel

        return SubnetModel(arch, num_classes, resolution), description, record
    if supernet.num_classes != num_classes:
        raise ValueError(f"the supernet has {supernet.num_classes} classes, the dataset {num_classes}: fine-tune "
                         "on the supernet's dataset (`scan-edge transfer` moves a model to another one)")
    return supernet.extract(arch, resolution=resolution).eval(), description, record


def finetune(ref: str, *, data_root: str | os.PathLike = DEFAULT_DATA,
             supernet: str | os.PathLike | None = DEFAULT_SUPERNET, name: str | None = None,
             out_root: str | os.PathLike = DEFAULT_OUT, config: FinetuneConfig | None = None,
             init: str | None = None, predicted_accuracy: float | None = None,
             devices_section: Mapping | None = None, resume: bool = True, overwrite: bool = False,
             progress: bool = True, lock: Lock = no_lock, access_of: Callable | None = None) -> dict[str, Any]:
    """Fine-tune (or train a baseline) and write ``out_root/<name>/`` (module docstring).

    ``access_of(profile)``: where each device's latency is measured (``measure_latency``).

    ``ref``: a search's ``.arch.json``, a preset name, or ``mobilenetv2_100``. ``init``:
    ``supernet`` (inherit; the default for members of the space) or ``scratch`` (the
    default for timm baselines). The inherited accuracy is measured after BN
    recalibration on training images, on ``config.eval_split``. ``lock`` (``nas_core.locks``)
    is held shared while training, evaluating and exporting, then exclusively while
    measuring latency. Returns the metrics (an empty dict on ranks other than 0 of a
    distributed run).
    """
    from .complexity import count_macs, count_params
    from .evaluate import evaluate, recalibrate_bn

    config = config or FinetuneConfig()
    init = init or ("scratch" if ref in TIMM_BASELINES else "supernet")
    supernet_path = Path(supernet) if supernet is not None else None
    with lock("shared"):  # training, evaluation and export: other shared work may run beside them
        net = _supernet_for(ref, init, supernet_path)
        resolution = config.resolution or _supernet_resolution(net, supernet_path)
        data = classification_data(data_root, resolution, config)
        model, described, record = _initial_model(ref, net, data.num_classes, resolution, config.drop_path)
        space = net.space if net is not None else None
        name = name or (described["name"] + ("_scratch" if init == "scratch" and described["kind"] == "subnet" else ""))
        out = Path(out_root) / name

        inherited = None
        if net is not None:
            recalibrate_bn(model, None, data.calib_batches, len(data.calib_batches))
            inherited = {**evaluate(model, data.eval_loader), "split": data.eval_split}
            if progress:
                print(f"{name}: inherited top-1 {inherited['top1']:.4f} on {data.eval_split} (BN recalibrated)",
                      flush=True)
            del net
        model = with_drop_path(model, config.drop_path)

        identity = {"name": name, "ref": ref, "init": init, "resolution": resolution, "classes": data.num_classes}
        started = time.perf_counter()
        log = train_classifier(model, data.train, config, out, val_loader=data.val_loader, num_classes=data.num_classes,
                               resume=resume, overwrite=overwrite, progress=progress, identity=identity)
        seconds = time.perf_counter() - started
        if not init_distributed().is_main:
            return {}
        finetuned = {**evaluate(model, data.eval_loader), "split": data.eval_split}

        save_classifier(out / MODEL_NAME, model, {"name": name, "init": init, "resolution": resolution,
                                                  **{k: v for k, v in described.items() if k != "arch"}}, space)
        deployed = subnet_at_resolution(model, config.deploy_resolution) if described["kind"] == "subnet" else model
        deployed = deployed.eval().cpu()
        shape = (1, 3, config.deploy_resolution, config.deploy_resolution)
        exports = export_all(deployed, shape, out, config.export_openvino, config.export_tensorrt)
    searched_for = list((record.get("latency_ms") or {}).keys())
    with lock("exclusive"):  # taken after the shared one is released: a holder cannot upgrade
        latency = measure_latency(deployed, shape, [*searched_for, *config.devices], devices_section, config.timing,
                                  onnx_path=exports["onnx"], access_of=access_of, job_name=f"finetune-{name}")
    if predicted_accuracy is None:
        predicted_accuracy = record.get("predicted_accuracy")
    metrics = {
        **described, "init": init, "predicted_accuracy": predicted_accuracy,
        "inherited": inherited, "finetuned": finetuned,
        "params": count_params(deployed), "macs": count_macs(deployed, shape),
        "train_resolution": resolution, "deploy_resolution": config.deploy_resolution,
        "num_classes": data.num_classes, "latency_ms": latency, "searched_for": searched_for,
        "estimated_latency_ms": record.get("latency_ms"), "exports": exports,
        "train": {"epochs": config.epochs, "seconds": round(seconds, 1),
                  "final_loss": float(log["loss"].iloc[-1]) if len(log) else math.nan,
                  "distillation": distillation_enabled(config, model)},
        "supernet": {"path": str(supernet_path), "sha256": file_sha256(supernet_path)} if inherited else None,
        "dataset": data.describe(), "config": config.to_dict(),
        "provenance": {"code_version": code_version(), "machine": machine_fingerprint(), "created": utc_now(),
                       "torch": torch.__version__},
    }
    write_json(out / METRICS_NAME, metrics)
    return metrics


# --------------------------------------------------------------------------- the comparison table
def load_metrics(out_root: str | os.PathLike = DEFAULT_OUT) -> list[dict[str, Any]]:
    """Every ``<out_root>/*/metrics.json``, sorted by name."""
    return [read_json(p) for p in sorted(Path(out_root).glob(f"*/{METRICS_NAME}"))]


def remeasure_latency(metrics: Sequence[Mapping[str, Any]], device_names: Sequence[str], rounds: int = 3,
                      devices_section: Mapping | None = None, timing: Mapping | None = None) -> dict[str, dict]:
    """Time every model's ``model.onnx`` again, interleaved: ``rounds`` passes over all the
    models per device, median per model. Latencies written when each model was trained
    were taken at different times; on a shared machine only figures taken side by side
    compare. Returns ``{name: {device: median_ms}}`` (unusable devices are left out)."""
    import statistics

    from .latency.devices import check_usable, get_profile, load_profiles
    from .latency.measure import measure_onnx
    from .latency.timing import TimingConfig

    profiles = load_profiles(devices_section)
    config = TimingConfig.from_dict(dict(timing or {}))
    samples: dict[tuple[str, str], list[float]] = {}
    for device in device_names:
        profile = get_profile(device, profiles)
        if not check_usable(profile).usable:
            continue
        for _ in range(rounds):
            for m in metrics:
                shape = m["exports"]["input_shape"]
                ms = measure_onnx(m["exports"]["onnx"], shape, profile, config).median_ms
                samples.setdefault((m["name"], device), []).append(ms)
    out: dict[str, dict] = {}
    for (name, device), values in samples.items():
        out.setdefault(name, {})[device] = statistics.median(values)
    return out


def comparison_table(metrics: Sequence[Mapping[str, Any]], device: str | None = None,
                     latency: Mapping[str, Mapping[str, float]] | None = None):
    """Table 3 measured: one row per model with init, predicted / inherited / fine-tuned
    top-1, params, MACs and latency per device (``device`` only, if given), plus
    ``<device>_vs_mobilenetv2`` when ``mobilenetv2_100`` is among them. Latency comes from
    ``latency`` (e.g. :func:`remeasure_latency`) when given, else from each metrics.json.
    A DataFrame."""
    import pandas as pd

    rows = []
    for m in metrics:
        row = {"name": m["name"], "init": m["init"], "predicted": m.get("predicted_accuracy"),
               "inherited": (m.get("inherited") or {}).get("top1"), "finetuned": m["finetuned"]["top1"],
               "params_M": m["params"] / 1e6, "macs_M": m["macs"] / 1e6}
        measured = latency[m["name"]] if latency is not None else {
            dev: lat["median_ms"] for dev, lat in m["latency_ms"].items() if "median_ms" in lat}
        for dev, ms in measured.items():
            if device is None or dev == device:
                row[f"{dev}_ms"] = ms
        rows.append(row)
    frame = pd.DataFrame(rows)
    reference = frame[frame["name"] == TIMM_BASELINES[0]]
    if not reference.empty:
        for column in [c for c in frame.columns if c.endswith("_ms")]:
            frame[column.replace("_ms", "_vs_mobilenetv2")] = frame[column] / float(reference[column].iloc[0])
    return frame
