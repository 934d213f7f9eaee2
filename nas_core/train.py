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

**Distributed** (``torchrun``; NCCL on GPUs, gloo on CPUs). No DistributedDataParallel
wrapper: each process runs the sandwich step on its shard of the batch, then the
gradients are averaged with explicit bucketed all-reduces (:func:`all_reduce_gradients`).
Because all ranks train the same subnets, the set of parameters that received a gradient
is the same on every rank and only those are reduced: nothing is spent on the ~3/4 of the
supernet a step does not touch, there is no unused-parameter search as with
``find_unused_parameters=True``, and parameters no subnet used keep ``grad=None`` (AdamW
then leaves them, and their moments, alone, exactly as in a single process). BatchNorm
statistics are per rank during the epoch (no SyncBN) and averaged over ranks at its end.

**Checkpoints and resume.** After every epoch ``checkpoint.pt`` is written atomically
with the model, optimizer, scheduler, grad scaler, every rank's RNG states (Python,
NumPy, torch, CUDA) and the data position (the sampler is a ``DistributedSampler`` whose
order is a function of ``(seed, epoch)``; the loader's generator is re-seeded from
``(seed, epoch, rank)`` each epoch, so DataLoader workers get the same seeds too). An
interrupted run resumed from it ends with bit-identical weights to an uninterrupted one
(tested on CPU; on GPUs as far as the kernels are deterministic, see
``torch.use_deterministic_algorithms``). An interrupted epoch is redone from its start.
That needs ``num_workers >= 1`` wherever other threads run, as in a Prefect flow: timm's
augmentations draw from Python's global ``random``, and in the main process another thread
may draw from it too (the websockets keepalive ping of Prefect's events client does, every
20 s), shifting the augmentation stream by a timing-dependent amount. Worker processes have
their own ``random``, seeded from the loader's generator (:func:`~nas_core.data.folders.seed_worker`).
At the end ``supernet.pt`` holds the weights and what is needed to rebuild the
supernet (:func:`load_supernet`). Resuming a finished run trains nothing and leaves every
artifact byte-identical (pipelines hash them to decide what to re-run).

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

import contextlib
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .data.folders import seed_worker
from .evaluate import calibration_batches, evaluate, recalibrate_bn
from .io import code_version, machine_fingerprint, read_parquet, torch_load, torch_save, utc_now, write_parquet
from .recipe import build_mixup, build_teacher, check_mixup, classification_criterion, clip_gradients
from .search_space import SPACE_VERSION, ArchConfig, SearchSpace, SpaceSpec, StageSpec
from .supernet import Supernet

CHECKPOINT_FORMAT = "scan-edge/supernet-checkpoint/v1"
SUPERNET_FORMAT = "scan-edge/supernet/v1"
CHECKPOINT_NAME, SUPERNET_NAME, LOG_NAME = "checkpoint.pt", "supernet.pt", "train_log.parquet"


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SupernetTrainConfig:
    """The ``supernet:`` section of params.yaml. Defaults are the paper's ImageNet setup
    (§6.1, following EfficientFormerV2 [22]: the extracted text lost the numbers, so batch,
    lr, weight decay and warm-up are EfficientFormerV2's)."""

    resolution: int = 224
    epochs: int = 300
    batch_size: int = 1024               # total over all processes (each gets batch_size / world_size)
    steps_per_epoch: int | None = None   # cap on steps per epoch (None: one pass over the data)
    lr: float = 1e-3                     # peak learning rate, for this total batch size
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 5.0
    weight_decay: float = 0.025
    opt: str = "adamw"                   # any timm.optim.create_optimizer_v2 name
    clip_grad: float | None = None       # clipping threshold (None: no clipping)
    clip_mode: str = "norm"              # timm dispatch_clip_grad mode: norm | value | agc
    smoothing: float = 0.1               # label smoothing
    ffn_drop_path: float = 0.0           # drop probability of a stage's last FFN (scaled by depth)
    mhsa_drop_path: float = 0.0          # constant drop probability of every MHSA
    layer_scale_init: float | None = None  # initial layer-scale gammas (None: the model's 1e-5)
    num_random_subnets: int = 2          # n of the sandwich rule
    inplace_distillation: bool = False   # others learn the largest's soft outputs (extension)
    distillation_head: bool = True       # EfficientFormerV2's head_dist (timm layout)
    teacher: str | None = None           # timm model name for hard distillation, e.g. regnety_160
    teacher_checkpoint: str | None = None  # its weights (None: timm's pretrained download)
    teacher_stand_in: str | None = None  # dry runs: a timm model (random weights) when the teacher cannot load
    mixup: dict | None = None            # timm.data.Mixup arguments (mixup_alpha, cutmix_alpha, ...); None: off
    amp: bool = True                     # float16 autocast + GradScaler on CUDA; ignored on CPU
    seed: int = 0
    threads: int | None = None           # torch CPU threads per process (None: torch's default)
    num_workers: int = 0                 # DataLoader workers per process
    cache_images: bool = False           # keep decoded images in memory (small datasets)
    skip_bad_images: bool = False        # leave unreadable images out (else: one error listing them)
    augment: dict | None = None          # overrides of nas_core.data.folders.DEFAULT_TRAIN_AUGMENT
    eval_transform: dict | None = None   # overrides of nas_core.data.folders.DEFAULT_EVAL_TRANSFORM (crop_pct)
    eval_every: int = 1                  # validate the extremes every k epochs (and after the last)
    eval_batch_size: int = 256
    bn_calib_batches: int = 10           # batches for BN recalibration before validation
    bn_calib_batch_size: int = 64

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> "SupernetTrainConfig":
        """Build from params.yaml's ``supernet:`` section; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"params supernet: unknown keys {unknown}; known keys: {sorted(known)}")
        config = cls(**dict(section))
        config.check()
        return config

    def check(self) -> None:
        if self.resolution % 32:
            raise ValueError(f"supernet.resolution must be a multiple of 32, got {self.resolution}")
        for name in ("epochs", "batch_size", "eval_batch_size", "bn_calib_batches", "bn_calib_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"supernet.{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"supernet.steps_per_epoch must be >= 1 or null, got {self.steps_per_epoch}")
        if self.num_random_subnets < 0:
            raise ValueError(f"supernet.num_random_subnets must be >= 0, got {self.num_random_subnets}")
        for name in ("ffn_drop_path", "mhsa_drop_path", "smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"supernet.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.teacher and not self.distillation_head:
            raise ValueError("supernet.teacher needs distillation_head: true (the head that learns the teacher)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


# --------------------------------------------------------------------------- distributed helpers
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


def _bn_buffers(module: nn.Module) -> list[torch.Tensor]:
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


def gather_rng_states(ctx: "DistContext") -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (every rank must call it: it is a collective)."""
    if not ctx.distributed:
        return [rng_state()]
    states: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(states, rng_state())
    return states


def restore_training_state(state: Mapping[str, Any], model: nn.Module, optimizer, scheduler, scaler,
                           ctx: "DistContext", seed: int) -> tuple[int, int, list]:
    """Load a checkpoint's weights, optimizer, scheduler, scaler and this rank's RNG state
    (the supernet trainer's and the fine-tuner's checkpoints share these keys); returns
    ``(epoch, step, log)``."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    epoch, step, log = state["epoch"], state["step"], list(state["log"])
    rngs = state["rng"]
    if len(rngs) == ctx.world_size:
        set_rng_state(rngs[ctx.rank])
    else:  # another process count: the data order is kept, the random draws cannot be
        seed_everything(seed + 1_000_003 * ctx.rank + epoch)
    return epoch, step, log


# --------------------------------------------------------------------------- optimisation
def apply_gradients(params: Sequence[nn.Parameter], optimizer, scheduler, scaler, world_size: int,
                    clip_grad: float | None, step: int, clip_mode: str = "norm") -> int:
    """One optimizer update from the accumulated gradients: average them over ranks, clip
    (optionally; timm's ``norm``, ``value`` or ``agc``), step through the AMP scaler, zero
    them, advance the per-step schedule;
    returns the new step count. Shared by the supernet trainer and the fine-tuner."""
    all_reduce_gradients(params, world_size)
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        clip_gradients(params, clip_grad, clip_mode)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step_update(num_updates=step + 1)
    return step + 1


SGD_FAMILY = ("sgd", "momentum", "nesterov")  # the timm optimizer names that take a momentum


def build_optimizer_and_scheduler(model: nn.Module, recipe: Any, steps_per_epoch: int):
    """``(optimizer, scheduler)``: a timm optimizer and a cosine schedule with linear warm-up
    over ``recipe.epochs * steps_per_epoch`` optimizer steps. Both trainers use it (this
    module's supernet trainer and ``nas_core.finetune.ModelTrainer``).

    ``recipe`` is any config with ``opt`` (a ``timm.optim.create_optimizer_v2`` name),
    ``lr``, ``weight_decay``, ``min_lr``, ``warmup_lr``, ``warmup_epochs`` and ``epochs``
    (:class:`SupernetTrainConfig`, ``nas_core.finetune.TrainRecipe``). A ``momentum``
    field, where the config has one, goes to the SGD family only; every other optimizer
    keeps timm's own defaults. The schedule counts steps, not epochs: call
    ``scheduler.step_update(num_updates=step)`` after every optimizer step.
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    momentum = getattr(recipe, "momentum", None)
    extra = {"momentum": momentum} if momentum is not None and recipe.opt.lower() in SGD_FAMILY else {}
    optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay, **extra)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=recipe.epochs * steps_per_epoch, lr_min=recipe.min_lr, warmup_lr_init=recipe.warmup_lr,
        warmup_t=int(round(recipe.warmup_epochs * steps_per_epoch)), t_in_epochs=False)
    return optimizer, scheduler


# --------------------------------------------------------------------------- the trainer
class SupernetTrainer:
    """Trains a :class:`Supernet` with the sandwich rule; see the module docstring.

    ``train_dataset`` yields ``(image tensor, label)`` (already augmented, e.g. a
    ``ManifestDataset`` with the train transform); ``val_loader`` and ``calib_batches``
    (a list of image tensors, :func:`~nas_core.evaluate.calibration_batches`) are needed
    only for the per-epoch validation of the extremes (rank 0 validates). ``space`` lets
    tests use a smaller search space; ``params`` (the whole params dict) is stored in the
    artifacts as provenance.
    """

    def __init__(self, config: SupernetTrainConfig, train_dataset: Dataset, num_classes: int,
                 out_dir: str | os.PathLike, val_loader: Iterable | None = None,
                 calib_batches: Sequence[torch.Tensor] | None = None, space: SearchSpace | None = None,
                 ctx: DistContext | None = None, params: Mapping[str, Any] | None = None,
                 progress: bool = True):
        config.check()
        self.config, self.num_classes = config, num_classes
        self.out_dir = Path(out_dir)
        self.ctx = ctx or DistContext()
        self.space = space or SearchSpace()
        self.params = dict(params or {})
        self.progress = progress
        self.val_loader, self.calib_batches = val_loader, calib_batches
        if config.batch_size % self.ctx.world_size:
            raise ValueError(f"supernet.batch_size {config.batch_size} is not divisible by the "
                             f"{self.ctx.world_size} processes")
        self.local_batch = config.batch_size // self.ctx.world_size

        self.supernet, self.teacher = self._build_models()
        # Different augmentation / drop-path draws per rank (fresh runs; resume restores them).
        seed_everything(config.seed + 1_000_003 * self.ctx.rank)
        self.sampler, self.loader_generator, self.train_loader = self._build_loader(train_dataset)
        self.steps_per_epoch = min(len(self.train_loader), config.steps_per_epoch or len(self.train_loader))
        self.optimizer, self.scheduler = build_optimizer_and_scheduler(self.supernet, config, self.steps_per_epoch)
        self.use_amp = config.amp and self.ctx.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        from timm.loss import SoftTargetCrossEntropy

        check_mixup(config.mixup, self.local_batch, "supernet")
        self.mixup = build_mixup(config.mixup, config.smoothing, num_classes)  # one mix per step, all subnets
        self.criterion = classification_criterion(config.smoothing, self.mixup)
        self.soft_criterion = SoftTargetCrossEntropy()
        self.epoch = 0  # epochs completed
        self.step = 0   # optimizer steps completed
        self.log: list[dict[str, Any]] = []

    def _build_models(self) -> tuple[Supernet, nn.Module | None]:
        c = self.config
        seed_everything(c.seed)  # same initial weights on every rank (then broadcast anyway)
        supernet = Supernet(self.space, self.num_classes, c.resolution, c.distillation_head,
                            c.ffn_drop_path, c.mhsa_drop_path).to(self.ctx.device)
        if c.layer_scale_init is not None:
            set_layer_scale(supernet, c.layer_scale_init)
        if self.ctx.distributed:
            broadcast_state(supernet)
        teacher = None
        if c.teacher:
            teacher = build_teacher(c.teacher, c.teacher_checkpoint, self.num_classes, self.ctx.device,
                                    c.teacher_stand_in)
            supernet.distilled_training = True  # train mode returns (cls, dist) logits
        return supernet, teacher

    def _build_loader(self, dataset: Dataset) -> tuple[DistributedSampler, torch.Generator, DataLoader]:
        """This rank's shard, in an order that is a function of (seed, epoch) only."""
        c = self.config
        sampler = DistributedSampler(dataset, num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                     shuffle=True, seed=c.seed, drop_last=True)
        generator = torch.Generator()
        loader = DataLoader(
            dataset, batch_size=self.local_batch, sampler=sampler, drop_last=True, num_workers=c.num_workers,
            generator=generator, pin_memory=self.ctx.device.type == "cuda",
            # Fresh workers each epoch, seeded from the generator: resumable augmentation.
            persistent_workers=False, worker_init_fn=seed_worker if c.num_workers > 0 else None)
        if len(loader) == 0:
            raise ValueError(f"{len(dataset)} training images are fewer than one batch of {self.local_batch} "
                             f"per process")
        return sampler, generator, loader

    # ---- one step
    def _autocast(self):
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.float16)

    def sandwich_backward(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """Forward and backward the step's subnets on one batch, accumulating gradients
        (no optimizer step, no all-reduce); returns each subnet's loss (detached)."""
        teacher_labels = None
        if self.teacher is not None:
            with torch.no_grad(), self._autocast():
                teacher_labels = self.teacher(images).argmax(dim=1)
        soft_targets, losses = None, {}
        for role, arch in sandwich_archs(self.space, self.config.seed, step, self.config.num_random_subnets):
            with self._autocast():
                out = self.supernet(images, arch)
                cls, dist_logits = out if isinstance(out, tuple) else (out, None)
                if soft_targets is not None:
                    loss = self.soft_criterion(cls, soft_targets)
                else:
                    loss = self.criterion(cls, labels)
                if dist_logits is not None and teacher_labels is not None:
                    loss = (loss + F.cross_entropy(dist_logits, teacher_labels)) / 2
            self.scaler.scale(loss).backward()
            if role == "largest" and self.config.inplace_distillation:
                soft_targets = cls.detach().float().softmax(dim=1)
            losses[role] = loss.detach()
        return losses

    def optimizer_step(self) -> None:
        """Average gradients over ranks, (clip,) step, and advance the schedule."""
        self.step = apply_gradients(list(self.supernet.parameters()), self.optimizer, self.scheduler, self.scaler,
                                    self.ctx.world_size, self.config.clip_grad, self.step, self.config.clip_mode)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        images = images.to(self.ctx.device, non_blocking=True)
        labels = labels.to(self.ctx.device, non_blocking=True)
        if self.mixup is not None:  # mixed images, soft targets: the teacher sees the mixed images too (DeiT)
            images, labels = self.mixup(images, labels)
        losses = self.sandwich_backward(images, labels, self.step)
        self.optimizer_step()
        return losses

    # ---- one epoch
    def _start_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        # Worker seeds are drawn from this generator: a function of (seed, epoch, rank).
        self.loader_generator.manual_seed(int(np.random.SeedSequence(
            [self.config.seed, epoch, self.ctx.rank]).generate_state(1)[0]))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm.auto import tqdm

        self._start_epoch(epoch)
        self.supernet.train()
        totals: dict[str, float] = {}
        bar = tqdm(total=self.steps_per_epoch, desc=f"supernet epoch {epoch + 1}/{self.config.epochs}",
                   disable=not (self.progress and self.ctx.is_main), dynamic_ncols=True, leave=False)
        start = time.perf_counter()
        done = 0
        for images, labels in self.train_loader:
            losses = self.train_step(images, labels)
            values = {role: float(v) for role, v in losses.items()}  # one sync per step
            for role, value in values.items():
                totals[role] = totals.get(role, 0.0) + value
            done += 1
            rate = done * self.config.batch_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{sum(values.values()) / len(values):.3f}", img_s=f"{rate:.1f}")
            bar.update()
            if done == self.steps_per_epoch:
                break
        bar.close()
        seconds = time.perf_counter() - start
        means = {role: total / done for role, total in totals.items()}
        return {"train_loss": sum(means.values()) / len(means), "loss_largest": means["largest"],
                "loss_smallest": means["smallest"], "images_per_s": done * self.config.batch_size / seconds,
                "epoch_seconds": seconds}

    @torch.no_grad()
    def evaluate_extremes(self) -> dict[str, float]:
        """Val top-1/top-5 of the default smallest and largest subnets, each after BN
        recalibration; the supernet's own BN statistics are restored afterwards."""
        if self.val_loader is None or not self.calib_batches:
            return dict(NOT_EVALUATED)
        saved = [b.clone() for b in _bn_buffers(self.supernet)]
        out: dict[str, float] = {}
        try:
            for role, arch in (("smallest", self.space.smallest()), ("largest", self.space.largest())):
                recalibrate_bn(self.supernet, arch, self.calib_batches, len(self.calib_batches))
                metrics = evaluate(self.supernet, self.val_loader, arch)
                out.update({f"top1_{role}": metrics["top1"], f"top5_{role}": metrics["top5"]})
                out["val_images"] = metrics["images"]
        finally:
            for buffer, value in zip(_bn_buffers(self.supernet), saved):
                buffer.copy_(value)
            self.supernet.train()
        return out

    # ---- the loop
    def fit(self, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train until ``config.epochs`` (or for at most ``stop_after`` more epochs, for
        time-boxed jobs), checkpointing after every epoch; returns the log rows."""
        c = self.config
        first = self.epoch
        last = c.epochs if stop_after is None else min(c.epochs, self.epoch + stop_after)
        for epoch in range(first, last):
            stats = self.train_epoch(epoch)
            average_bn_statistics(self.supernet, self.ctx.world_size)
            evaluated = (epoch + 1) % c.eval_every == 0 or epoch + 1 == c.epochs
            metrics = self.evaluate_extremes() if (evaluated and self.ctx.is_main) else {}
            self.epoch = epoch + 1
            row = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"], **stats,
                   **NOT_EVALUATED, **metrics, "world_size": self.ctx.world_size, "finished_at": utc_now()}
            self.log.append(row)
            self.save_checkpoint()
            if self.ctx.is_main and self.progress:
                print(_format_row(row), flush=True)
        if self.epoch == c.epochs:
            # A finished run resumed trains nothing: its supernet.pt stays byte-identical.
            self.save_supernet(keep_existing=last == first)
        return self.log

    # ---- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs. ``rng`` is one entry per rank; ``data`` is the
        position of the data stream (the next epoch; its order follows from the seed)."""
        return {
            "format": CHECKPOINT_FORMAT, **self._identity(),
            "config": self.config.to_dict(), "params": self.params,
            "epoch": self.epoch, "step": self.step, "world_size": self.ctx.world_size,
            "model": self.supernet.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": gather_rng_states(self.ctx), "loader_generator": self.loader_generator.get_state(),
            "data": {"sampler_seed": self.config.seed, "next_epoch": self.epoch,
                     "steps_per_epoch": self.steps_per_epoch, "local_batch": self.local_batch},
            "log": self.log, "code_version": code_version(), "created": utc_now(),
        }

    def _identity(self) -> dict[str, Any]:
        return {"space_version": SPACE_VERSION, "space_spec": dataclasses.asdict(self.space.spec),
                "num_classes": self.num_classes, "resolution": self.config.resolution,
                "distillation": self.config.distillation_head}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_compatible(state)
        self.epoch, self.step, self.log = restore_training_state(
            state, self.supernet, self.optimizer, self.scheduler, self.scaler, self.ctx, self.config.seed)
        self.loader_generator.set_state(state["loader_generator"])

    def _check_compatible(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a supernet training checkpoint (format {state.get('format')!r})")
        mine = self._identity()
        for key, value in mine.items():
            if state.get(key) != value:
                raise ValueError(f"checkpoint {key} is {state.get(key)!r}, this run has {value!r}; "
                                 "resume with the params that made it, or start a new run")
        theirs, ours = state["config"], self.config.to_dict()
        changed = sorted(k for k in ours if k not in RESUME_FREE_KEYS and theirs.get(k) != ours[k])
        if changed:
            diff = ", ".join(f"{k}: {theirs.get(k)!r} -> {ours[k]!r}" for k in changed)
            raise ValueError(f"cannot resume: supernet params changed since the checkpoint ({diff}); "
                             "restore them or start a new run")

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # every rank takes part (RNG gathering)
        if self.ctx.is_main:
            torch_save(self.out_dir / CHECKPOINT_NAME, state)
            self.write_log()
        self.ctx.barrier()

    def write_log(self) -> None:
        import pandas as pd

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

    def resume(self) -> bool:
        """Load ``out_dir/checkpoint.pt`` if there is one; True if it did."""
        path = self.out_dir / CHECKPOINT_NAME
        if not path.exists():
            return False
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
        self.load_state_dict(torch_load(path, map_location="cpu"))
        return True


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


# --------------------------------------------------------------------------- data and entry point
def build_data(manifest, root: str | os.PathLike, config: SupernetTrainConfig):
    """``(train_dataset, val_loader, calib_batches)`` for a dataset manifest
    (``nas_core.data.folders``): augmented train split, val split for validation, and a
    fixed set of train images with the eval transform for BN recalibration."""
    from .data.folders import build_loader

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
                   progress: bool = True, device: str | None = None) -> Path:
    """Train a supernet on the dataset at ``data_root`` (a folder with ``manifest.parquet``,
    or any layout ``nas_core.data.folders.load_manifest`` understands); returns the path
    of ``supernet.pt``. Runs distributed when started by ``torchrun``.

    An existing checkpoint in ``out_dir`` is continued with ``resume``, replaced with
    ``overwrite``, and otherwise an error (so a finished run is never lost by accident).
    """
    from .data.folders import class_names, load_checked_manifest

    out_dir = Path(out_dir)
    checkpoint = out_dir / CHECKPOINT_NAME
    if checkpoint.exists() and not (resume or overwrite):
        raise FileExistsError(f"{checkpoint} exists: pass resume to continue that run or overwrite to start "
                              "a new one")
    if config.threads:
        torch.set_num_threads(config.threads)
    ctx = init_distributed(device)
    if overwrite and not resume and ctx.is_main:
        for name in (CHECKPOINT_NAME, SUPERNET_NAME, LOG_NAME):  # no stale artifact beside the new run
            (out_dir / name).unlink(missing_ok=True)
    ctx.barrier()
    manifest = load_checked_manifest(data_root, config.skip_bad_images)  # every image decoded once, up front
    num_classes = len(class_names(manifest))
    train, val_loader, calib = build_data(manifest, data_root, config)
    trainer = SupernetTrainer(config, train, num_classes, out_dir, val_loader, calib, ctx=ctx,
                              params=params, progress=progress)
    if resume and trainer.resume() and ctx.is_main:
        print(f"resumed from {checkpoint} at epoch {trainer.epoch}/{config.epochs}", flush=True)
    trainer.fit()
    return out_dir / SUPERNET_NAME


# --------------------------------------------------------------------------- loading
def space_from_spec(spec: Mapping[str, Any] | None) -> SearchSpace:
    """Rebuild the search space stored in a checkpoint (default space when absent)."""
    if not spec:
        return SearchSpace()
    spec = dict(spec)
    stages = tuple(StageSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()})
                   for s in spec.pop("stages"))
    return SearchSpace(SpaceSpec(stages=stages, **{k: tuple(v) if isinstance(v, list) else v
                                                   for k, v in spec.items()}))


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
