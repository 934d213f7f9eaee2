"""Supernet training with the sandwich rule (§4 "Supernet training algorithm", Suppl. S3).

Each optimisation step trains four subnets on the same batch and takes *one* optimizer step
with their summed gradients (BigNAS's sandwich rule, with ``n = 2`` random subnets; each
subnet's loss is back-propagated in turn, so only one subnet's activations are alive):

1. the **largest** and the **smallest** subnet. One FFN structure (unified or fused) is
   drawn for the step and applied to every block of both (§4); one activation (GELU or
   ReLU) is drawn the same way and applied to every layer of both. The activation draw is
   our choice: the paper switches activations at random during training and describes
   the extremes by width, depth, kernel and MHSAs only, so drawing it like the FFN type
   trains the extremes' weights under both activations, which every subnet can pick;
2. ``num_random_subnets`` subnets drawn uniformly from the space, which randomises the FFN
   type (and every other knob) per block.

The largest goes first, so that with ``inplace_distillation`` the others can learn its
soft outputs (an option; the paper trains every subnet on the labels). With a
``teacher`` (the paper: RegNetY-16GF), DeiT-style hard distillation trains the
distillation head on the teacher's argmax: ``loss = (CE_smooth(cls, y) + CE(dist,
argmax teacher)) / 2``. Drop path is the supernet's (FFN probability growing with depth in
a stage, one constant for MHSAs). AdamW, cosine decay with linear warm-up (updated every
step), label smoothing, mixed precision on GPUs (autocast float16 + GradScaler; off on CPUs).
For runs of a few hundred steps, ``layer_scale_init`` (an extension; default: the model's
1e-5) starts the residual branches at a useful scale (:func:`set_layer_scale`).

**Which subnets a step samples** is a pure function of ``(seed, step)``
(:func:`sandwich_archs`), so every process of a distributed run samples the same four
subnets without communicating, and a resumed run samples what the uninterrupted one did.

**The loop** is :class:`nas_core.trainer.Trainer`'s, as for every training run of the
pipeline: :class:`SupernetTrainer` gives it a :class:`SandwichStep` and its own checkpoint
header and log schema, so the supernet is distributed, checkpointed and resumed exactly as
the fine-tuned models are. Under ``torchrun`` each process runs the sandwich step on its
shard of the batch and the gradients are averaged with explicit bucketed all-reduces
(``nas_core.distributed``). Because all ranks train the same subnets, the set of parameters
that received a gradient is the same on every rank and only those are reduced: nothing is
spent on the ~3/4 of the supernet a step does not touch, and parameters no subnet used keep
``grad=None`` (AdamW then leaves them, and their moments, alone, exactly as in a single
process). An interrupted run resumed from ``checkpoint.pt`` ends with bit-identical weights
to an uninterrupted one (``nas_core.trainer`` says what that needs). At the end
``supernet.pt`` holds the weights and what is needed to rebuild the supernet
(:func:`load_supernet`). Resuming a finished run trains nothing and leaves every artifact
byte-identical (pipelines hash them to decide what to re-run).

Artifacts written to ``out`` (rank 0 only):

``checkpoint.pt``  full training state, see :meth:`SupernetTrainer.state_dict`.
``supernet.pt``    ``{"format", "space_version", "space_spec", "num_classes", "resolution",
                   "distillation", "model" (state dict), "config", "params", "epochs",
                   "steps", "final_metrics", "code_version", "created"}``.
``train_log.parquet``  one row per epoch (provenance: config, params, code version, machine):

    ==================  =======  =====================================================
    column              type     meaning
    ==================  =======  =====================================================
    epoch               int64    epochs completed (1-based)
    step                int64    optimizer steps completed
    lr                  float64  learning rate after the epoch's last step
    train_loss          float64  mean over the epoch's steps of the mean subnet loss
                                 (on rank 0's share of the batches)
    loss_largest        float64  mean training loss of the largest subnet
    loss_smallest       float64  mean training loss of the smallest subnet
    images_per_s        float64  training images (total batch over all ranks) per second
                                 of training time; each image trains 2 + n subnets
    epoch_seconds       float64  wall time of the epoch's training steps
    top1_smallest       float64  val top-1 of ``space.smallest()`` after BN
                                 recalibration (NaN when not evaluated this epoch)
    top5_smallest       float64  val top-5, same subnet
    top1_largest        float64  val top-1 of ``space.largest()`` after BN recalibration
    top5_largest        float64  val top-5, same subnet
    val_images          int64    validation images evaluated (0 when not evaluated)
    world_size          int64    number of processes
    finished_at         str      UTC time the epoch ended (ISO 8601)
    ==================  =======  =====================================================
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import Dataset

from .config import ClassificationRecipe
from .data.folders import build_loader, class_names, load_checked_manifest
from .distributed import DistContext, bn_buffers, init_distributed, seed_everything
from .evaluate import calibration_batches, evaluate, recalibrate_bn
from .io import code_version, machine_fingerprint, read_parquet, torch_load, torch_save, utc_now, write_parquet
from .recipe import build_mixup, build_teacher, check_mixup, classification_criterion
from .search_space import SPACE_VERSION, ArchConfig, SearchSpace, SpaceSpec
from .supernet import Supernet
from .threads import default_threads, torch_threads
from .trainer import (CHECKPOINT_NAME, LOG_NAME, StepContext, Trainer, changed_settings, describe_changes,
                      field_defaults)

CHECKPOINT_FORMAT = "scan-edge/supernet-checkpoint/v1"
SUPERNET_FORMAT = "scan-edge/supernet/v1"
SUPERNET_NAME = "supernet.pt"


# --------------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class SupernetTrainConfig(ClassificationRecipe):
    """The ``supernet:`` section of params.yaml: a classification recipe
    (``nas_core.config``) plus the supernet's own knobs. Defaults are the paper's ImageNet
    setup (§6.1, following EfficientFormerV2 [22]: the extracted text lost the numbers, so
    batch, lr, weight decay and warm-up are EfficientFormerV2's). ``batch_size`` is the total
    over all processes (each gets ``batch_size / world_size``)."""

    section: ClassVar[str] = "supernet"

    epochs: int = 300
    batch_size: int = 1024
    warmup_epochs: float = 5.0
    resolution: int = 224
    ffn_drop_path: float = 0.0           # drop probability of a stage's last FFN (scaled by depth)
    mhsa_drop_path: float = 0.0          # constant drop probability of every MHSA
    layer_scale_init: float | None = None  # initial layer-scale gammas (None: the model's 1e-5)
    num_random_subnets: int = 2          # n of the sandwich rule
    inplace_distillation: bool = False   # others learn the largest's soft outputs (extension)
    distillation_head: bool = True       # EfficientFormerV2's head_dist (timm layout)
    threads: int | None = None           # torch CPU threads per process (None: torch's default, at most the
                                         # CPUs the process may use: nas_core.threads.default_threads)

    def check(self) -> None:
        if self.resolution % 32:
            raise ValueError(f"supernet.resolution must be a multiple of 32, got {self.resolution}")
        for name in ("eval_batch_size", "bn_calib_batches", "bn_calib_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"supernet.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_random_subnets < 0:
            raise ValueError(f"supernet.num_random_subnets must be >= 0, got {self.num_random_subnets}")
        for name in ("ffn_drop_path", "mhsa_drop_path", "smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"supernet.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.teacher and not self.distillation_head:
            raise ValueError("supernet.teacher needs distillation_head: true (the head that learns the teacher)")


# Keys that may change between a run and its resumption: they do not change the weights.
RESUME_FREE_KEYS = frozenset({"eval_every", "eval_batch_size", "threads"})


# --------------------------------------------------------------------------- the sandwich rule
def sandwich_archs(space: SearchSpace, seed: int, step: int, num_random: int = 2) -> list[tuple[str, ArchConfig]]:
    """The subnets of step ``step``: ``[("largest", a), ("smallest", a), ("random0", a), ...]``.

    One FFN type and one activation are drawn for both extremes; the random subnets are
    uniform over every knob. Deterministic in ``(seed, step)``, whatever the process.
    """
    rng = np.random.default_rng([seed, step])
    ffn_type = space.spec.ffn_types[rng.integers(len(space.spec.ffn_types))]
    act = space.spec.activations[rng.integers(len(space.spec.activations))]
    archs = [("largest", space.largest(ffn_type, act)), ("smallest", space.smallest(ffn_type, act))]
    archs += [(f"random{i}", space.sample(rng)) for i in range(num_random)]
    return archs


@torch.no_grad()
def set_layer_scale(supernet: Supernet, value: float) -> int:
    """Set every layer-scale gamma (MHSA and FFN residual branches) to ``value``; returns
    how many tensors. EfficientFormerV2 starts them at 1e-5, so its blocks are near
    identities until the gammas have grown: right for 300 epochs, too slow for a run of a
    few hundred steps, where every subnet would then compute nearly the same function."""
    gammas = [p for name, p in supernet.named_parameters() if name.endswith(".gamma")]
    for gamma in gammas:
        gamma.fill_(value)
    return len(gammas)


class SandwichStep:
    """The trainer's step for a supernet: the sandwich rule on one batch.

    With ``mixup`` the batch is mixed once for all subnets (the teacher sees the mixed
    images too, as in DeiT). The largest subnet goes first, so that with
    ``inplace_distillation`` the others learn its soft outputs; with a ``teacher`` every
    subnet's distillation head learns the teacher's argmax. Each subnet's loss is
    back-propagated in turn (only one subnet's activations are alive); the gradients add up
    for the trainer's single optimizer step.
    """

    def __init__(self, space: SearchSpace, config: SupernetTrainConfig, num_classes: int,
                 teacher: nn.Module | None = None):
        self.space, self.teacher = space, teacher
        self.seed, self.num_random = config.seed, config.num_random_subnets
        self.inplace_distillation = config.inplace_distillation
        self.mixup = build_mixup(config.mixup, config.smoothing, num_classes)  # one mix per step, all subnets
        self.criterion = classification_criterion(config.smoothing, self.mixup)
        self.soft_criterion = SoftTargetCrossEntropy()

    def backward(self, model: Supernet, batch, context: StepContext) -> dict[str, torch.Tensor]:
        images, labels = (t.to(context.device, non_blocking=True) for t in batch)
        if self.mixup is not None:  # mixed images, soft targets: the teacher sees the mixed images too (DeiT)
            images, labels = self.mixup(images, labels)
        return self.sandwich_backward(model, images, labels, context)

    def sandwich_backward(self, model: Supernet, images: torch.Tensor, labels: torch.Tensor,
                          context: StepContext) -> dict[str, torch.Tensor]:
        """Forward and backward the subnets of step ``context.step`` on one batch,
        accumulating gradients; returns each subnet's loss (detached), by role."""
        teacher_labels = None
        if self.teacher is not None:
            with torch.no_grad(), context.autocast():
                teacher_labels = self.teacher(images).argmax(dim=1)
        soft_targets, losses = None, {}
        for role, arch in sandwich_archs(self.space, self.seed, context.step, self.num_random):
            with context.autocast():
                out = model(images, arch)
                cls, dist_logits = out if isinstance(out, tuple) else (out, None)
                if soft_targets is not None:
                    loss = self.soft_criterion(cls, soft_targets)
                else:
                    loss = self.criterion(cls, labels)
                if dist_logits is not None and teacher_labels is not None:
                    loss = (loss + F.cross_entropy(dist_logits, teacher_labels)) / 2
            context.scaler.scale(loss).backward()
            if role == "largest" and self.inplace_distillation:
                soft_targets = cls.detach().float().softmax(dim=1)
            losses[role] = loss.detach()
        return losses

    def summarize(self, means: Mapping[str, float]) -> dict[str, float]:
        """The log's loss columns: the mean over subnets, and the two extremes."""
        return {"train_loss": sum(means.values()) / len(means), "loss_largest": means["largest"],
                "loss_smallest": means["smallest"]}


# --------------------------------------------------------------------------- the trainer
LOG_DTYPES = {"epoch": "int64", "step": "int64", "lr": "float64", "train_loss": "float64",
              "loss_largest": "float64", "loss_smallest": "float64", "images_per_s": "float64",
              "epoch_seconds": "float64", "top1_smallest": "float64", "top5_smallest": "float64",
              "top1_largest": "float64", "top5_largest": "float64", "val_images": "int64",
              "world_size": "int64", "finished_at": "str"}
LOG_COLUMNS = list(LOG_DTYPES)
NOT_EVALUATED = {**{f"top{k}_{role}": math.nan for k in (1, 5) for role in ("smallest", "largest")},
                 "val_images": 0}


def _format_row(row: Mapping[str, Any]) -> str:
    text = (f"epoch {row['epoch']}: loss {row['train_loss']:.3f} (largest {row['loss_largest']:.3f}, smallest "
            f"{row['loss_smallest']:.3f}), lr {row['lr']:.2e}, {row['images_per_s']:.1f} img/s")
    if row["val_images"]:
        text += f", val top-1 smallest {row['top1_smallest']:.3f} largest {row['top1_largest']:.3f}"
    return text


class SupernetTrainer(Trainer):
    """Trains a :class:`Supernet` with the sandwich rule; see the module docstring.

    ``train_dataset`` yields ``(image tensor, label)`` (already augmented, e.g. a
    ``ManifestDataset`` with the train transform); ``val_loader`` and ``calib_batches``
    (a list of image tensors, :func:`~nas_core.evaluate.calibration_batches`) are needed
    only for the per-epoch validation of the extremes (rank 0 validates). ``space`` lets
    tests use a smaller search space; ``params`` (the whole params dict) is stored in the
    artifacts as provenance.
    """

    checkpoint_format = CHECKPOINT_FORMAT
    checkpoint_kind = "supernet training"
    not_evaluated = NOT_EVALUATED

    def __init__(self, config: SupernetTrainConfig, train_dataset: Dataset, num_classes: int,
                 out_dir: str | os.PathLike, val_loader: Iterable | None = None,
                 calib_batches: Sequence[torch.Tensor] | None = None, space: SearchSpace | None = None,
                 ctx: DistContext | None = None, params: Mapping[str, Any] | None = None,
                 progress: bool = True):
        config.check()
        ctx = ctx or DistContext()
        self.config, self.num_classes = config, num_classes
        self.space = space or SearchSpace()
        self.params = dict(params or {})
        self.val_loader, self.calib_batches = val_loader, calib_batches
        supernet, self.teacher = self._build_models(ctx)
        # Different augmentation / drop-path draws per rank (fresh runs; resume restores them).
        seed_everything(config.seed + 1_000_003 * ctx.rank)
        step = SandwichStep(self.space, config, num_classes, self.teacher)
        super().__init__(supernet, train_dataset, step, config, out_dir, evaluate_fn=self._evaluate_extremes,
                         eval_every=config.eval_every, ctx=ctx, progress=progress, desc="supernet")
        check_mixup(config.mixup, self.local_batch, "supernet")
        self.criterion = step.criterion

    def _build_models(self, ctx: DistContext) -> tuple[Supernet, nn.Module | None]:
        c = self.config
        seed_everything(c.seed)  # same initial weights on every rank (then broadcast anyway)
        supernet = Supernet(self.space, self.num_classes, c.resolution, c.distillation_head,
                            c.ffn_drop_path, c.mhsa_drop_path).to(ctx.device)
        if c.layer_scale_init is not None:
            set_layer_scale(supernet, c.layer_scale_init)
        teacher = None
        if c.teacher:
            teacher = build_teacher(c.teacher, c.teacher_checkpoint, self.num_classes, ctx.device, c.teacher_stand_in)
            supernet.distilled_training = True  # train mode returns (cls, dist) logits
        return supernet, teacher

    @property
    def supernet(self) -> Supernet:
        return self.model

    # ---- one step (tests and benchmarks drive these directly)
    def sandwich_backward(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """Forward and backward the step's subnets on one batch, accumulating gradients
        (no optimizer step, no all-reduce); returns each subnet's loss (detached)."""
        return self.step_fn.sandwich_backward(self.model, images, labels, self.step_context(step))

    # ---- evaluation
    @torch.no_grad()
    def evaluate_extremes(self) -> dict[str, float]:
        """Val top-1/top-5 of the default smallest and largest subnets, each after BN
        recalibration; the supernet's own BN statistics are restored afterwards."""
        if self.val_loader is None or not self.calib_batches:
            return dict(NOT_EVALUATED)
        saved = [b.clone() for b in bn_buffers(self.supernet)]
        out: dict[str, float] = {}
        try:
            for role, arch in (("smallest", self.space.smallest()), ("largest", self.space.largest())):
                recalibrate_bn(self.supernet, arch, self.calib_batches, len(self.calib_batches))
                metrics = evaluate(self.supernet, self.val_loader, arch)
                out.update({f"top1_{role}": metrics["top1"], f"top5_{role}": metrics["top5"]})
                out["val_images"] = metrics["images"]
        finally:
            for buffer, value in zip(bn_buffers(self.supernet), saved):
                buffer.copy_(value)
            self.supernet.train()
        return out

    def _evaluate_extremes(self, model: nn.Module) -> dict[str, float]:
        return self.evaluate_extremes()

    # ---- the loop
    def fit(self, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` (or for at most ``stop_after`` more epochs),
        checkpointing after every epoch; at the end write ``supernet.pt``. Returns the log rows."""
        first = self.epoch
        super().fit(stop_after)
        if self.epoch == self.config.epochs:
            # A finished run resumed trains nothing: its supernet.pt stays byte-identical.
            self.save_supernet(keep_existing=self.epoch == first)
        return self.log

    def format_row(self, row: Mapping[str, Any]) -> str:
        return _format_row(row)

    # ---- state
    def _identity(self) -> dict[str, Any]:
        return {"space_version": SPACE_VERSION, "space_spec": dataclasses.asdict(self.space.spec),
                "num_classes": self.num_classes, "resolution": self.config.resolution,
                "distillation": self.config.distillation_head}

    def checkpoint_header(self) -> dict[str, Any]:
        """The supernet's identity, config and params, and the position of the data stream
        (the next epoch; its order follows from the seed)."""
        return {**self._identity(), "config": self.config.to_dict(), "params": self.params,
                "data": {"sampler_seed": self.config.seed, "next_epoch": self.epoch,
                         "steps_per_epoch": self.steps_per_epoch, "local_batch": self.local_batch}}

    def check_resumable(self, state: Mapping[str, Any]) -> None:
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise ValueError(f"checkpoint {key} is {state.get(key)!r}, this run has {value!r}; "
                                 "resume with the params that made it, or start a new run")
        changed = changed_settings(state["config"], self.config.to_dict(), field_defaults(self.config),
                                   RESUME_FREE_KEYS)
        if changed:
            raise ValueError(f"cannot resume: supernet params changed since the checkpoint "
                             f"({describe_changes(changed)}); restore them or start a new run")

    def write_log(self) -> None:
        frame = pd.DataFrame(self.log, columns=LOG_COLUMNS)
        write_parquet(self.out_dir / LOG_NAME, frame.astype(LOG_DTYPES), provenance=self.provenance())

    def provenance(self) -> dict[str, Any]:
        return {"stage": "supernet", "config": self.config.to_dict(), "params": self.params,
                "code_version": code_version(), "machine": machine_fingerprint(),
                "world_size": self.ctx.world_size, "device": str(self.ctx.device), **self._identity()}

    def save_supernet(self, keep_existing: bool = False) -> Path:
        """Write ``supernet.pt`` (rank 0; every rank must call it). ``keep_existing``
        leaves a file already there untouched: rewriting the same weights would still
        change its bytes (``created``), hence its content hash, and DVC / Prefect would
        re-run every stage downstream of the supernet."""
        path = self.out_dir / SUPERNET_NAME
        if self.ctx.is_main and not (keep_existing and path.exists()):
            final = {k: v for k, v in (self.log[-1] if self.log else {}).items()
                     if k.startswith(("top1", "top5")) or k in ("train_loss", "val_images")}
            torch_save(path, {"format": SUPERNET_FORMAT, **self._identity(), "model": self.supernet.state_dict(),
                              "config": self.config.to_dict(), "params": self.params, "epochs": self.epoch,
                              "steps": self.step, "final_metrics": final, "code_version": code_version(),
                              "created": utc_now()})
        self.ctx.barrier()
        return path


# --------------------------------------------------------------------------- data and entry point
def build_data(manifest, root: str | os.PathLike, config: SupernetTrainConfig):
    """``(train_dataset, val_loader, calib_batches)`` for a dataset manifest
    (``nas_core.data.folders``): augmented train split, val split for validation, and a
    fixed set of train images with the eval transform for BN recalibration."""
    r = config.resolution
    # The loaders' datasets: the data module owns decoding, caching and the timm transforms.
    train = build_loader(manifest, root, "train", r, config.batch_size, train=True, cache=config.cache_images,
                         augment=config.augment).dataset
    val_loader = build_loader(manifest, root, "val", r, config.eval_batch_size, train=False,
                              num_workers=config.num_workers, cache=config.cache_images,
                              eval_transform=config.eval_transform)
    calib_source = build_loader(manifest, root, "train", r, config.bn_calib_batch_size, train=False,
                                eval_transform=config.eval_transform).dataset
    calib = calibration_batches(calib_source, config.bn_calib_batches, config.bn_calib_batch_size, config.seed)
    return train, val_loader, calib


def train_supernet(config: SupernetTrainConfig, data_root: str | os.PathLike, out_dir: str | os.PathLike,
                   resume: bool = False, overwrite: bool = False, params: Mapping[str, Any] | None = None,
                   progress: bool = True, device: str | None = None, space: SearchSpace | None = None) -> Path:
    """Train a supernet on the dataset at ``data_root`` (a folder with ``manifest.parquet``,
    or any layout ``nas_core.data.folders.load_manifest`` understands); returns the path
    of ``supernet.pt``. Runs distributed when started by ``torchrun``. ``space``: the search
    space whose weights it holds (default Table 2; ``SpaceSpec.from_params``).

    An existing checkpoint in ``out_dir`` is continued with ``resume``, replaced with
    ``overwrite``, and otherwise an error (so a finished run is never lost by accident).
    """
    out_dir = Path(out_dir)
    checkpoint = out_dir / CHECKPOINT_NAME
    if checkpoint.exists() and not (resume or overwrite):
        raise FileExistsError(f"{checkpoint} exists: pass resume to continue that run or overwrite to start "
                              "a new one")
    with torch_threads(config.threads or default_threads()):
        return _train_supernet(config, data_root, out_dir, resume, overwrite, params, progress, device, space)


def _train_supernet(config: SupernetTrainConfig, data_root: str | os.PathLike, out_dir: Path, resume: bool,
                    overwrite: bool, params: Mapping[str, Any] | None, progress: bool, device: str | None,
                    space: SearchSpace | None = None) -> Path:
    checkpoint = out_dir / CHECKPOINT_NAME
    ctx = init_distributed(device)
    if overwrite and not resume and ctx.is_main:
        for name in (CHECKPOINT_NAME, SUPERNET_NAME, LOG_NAME):  # no stale artifact beside the new run
            (out_dir / name).unlink(missing_ok=True)
    ctx.barrier()
    manifest = load_checked_manifest(data_root, config.skip_bad_images)  # every image decoded once, up front
    num_classes = len(class_names(manifest))
    train, val_loader, calib = build_data(manifest, data_root, config)
    trainer = SupernetTrainer(config, train, num_classes, out_dir, val_loader, calib, space=space, ctx=ctx,
                              params=params, progress=progress)
    if resume and trainer.resume() and ctx.is_main:
        print(f"resumed from {checkpoint} at epoch {trainer.epoch}/{config.epochs}", flush=True)
    trainer.fit()
    return out_dir / SUPERNET_NAME


# --------------------------------------------------------------------------- loading
def space_from_spec(spec: Mapping[str, Any] | None) -> SearchSpace:
    """Rebuild the search space stored in a checkpoint (default space when absent)."""
    return SearchSpace(SpaceSpec.from_dict(spec))


def load_supernet(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Supernet, dict[str, Any]]:
    """A trained supernet (eval mode) from ``supernet.pt`` or ``checkpoint.pt``, and the
    file's metadata (everything but the weights and optimizer state)."""
    state = torch_load(path, map_location=device)
    if state.get("format") not in (SUPERNET_FORMAT, CHECKPOINT_FORMAT):
        raise ValueError(f"{path}: not a supernet file (format {state.get('format')!r})")
    if state["space_version"] != SPACE_VERSION:
        raise ValueError(f"{path}: trained on search space {state['space_version']!r}, this code has "
                         f"{SPACE_VERSION!r}")
    net = Supernet(space_from_spec(state.get("space_spec")), state["num_classes"], state["resolution"],
                   state["distillation"])
    net.load_state_dict(state["model"])
    meta = {k: v for k, v in state.items() if k not in ("model", "optimizer", "scheduler", "scaler", "rng",
                                                         "loader_generator")}
    return net.to(device).eval(), meta


def read_train_log(out_dir: str | os.PathLike):
    return read_parquet(Path(out_dir) / LOG_NAME)
