"""The training loop: epochs, checkpoints and exact resume, for any model and any step.

Every training run of the pipeline goes through :class:`Trainer`: the supernet (its step
is the sandwich rule, ``nas_core.train``), fine-tuning and transfer (a classification
step, ``nas_core.classification``) and SSDLite detection (a detection step,
``nas_core.detection``). What differs between them is the *step*: an object whose
``backward(model, batch, context)`` forwards one batch and back-propagates its loss(es),
accumulating gradients, and returns the losses to log; ``summarize(means)`` turns the
epoch's mean losses into log columns. A :class:`LossStep` is a step with one loss,
computed by its ``__call__(model, batch, device) -> (loss, parts)``; a plain function of
that signature is wrapped into one.

The loop owns everything else, the same way for every run:

* **optimisation** - a timm optimizer and cosine schedule with linear warm-up, updated
  every optimizer step (:func:`build_optimizer_and_scheduler`), optional gradient clipping,
  mixed precision on GPUs (float16 autocast + GradScaler; off on CPUs);
* **distribution** (``torchrun``) - gradients averaged over ranks after the step's
  backward passes, BatchNorm statistics averaged after each epoch (``nas_core.distributed``);
* **data order** - a ``DistributedSampler`` (also with one process) whose order is a
  function of ``(seed, epoch)``; the loader's generator is re-seeded from
  ``(seed, epoch, rank)`` every epoch, so DataLoader workers get the same seeds too;
* **checkpoints** - ``checkpoint.pt``, written atomically after every epoch, holds the
  model, optimizer, scheduler, grad scaler, every rank's RNG states and the log. A run
  resumed from it ends bit-identical to an uninterrupted one (tested on CPU; on GPUs as far
  as the kernels are deterministic). An interrupted epoch is redone from its start. That
  needs ``num_workers >= 1`` wherever other threads run, as in a Prefect flow: timm's
  augmentations draw from Python's global ``random``, and in the main process another
  thread may draw from it too (the websockets keepalive ping of Prefect's events client
  does, every 20 s), shifting the augmentation stream by a timing-dependent amount. Worker
  processes have their own ``random``, seeded from the loader's generator
  (:func:`~nas_core.data.folders.seed_worker`). A checkpoint whose recipe or identity
  differs from the run's is refused with the differences named.

``train_log.parquet`` has one row per epoch:

    ================  =======  ===================================================
    column            type     meaning
    ================  =======  ===================================================
    epoch             int64    epochs completed (1-based)
    step              int64    optimizer steps completed
    lr                float64  learning rate after the epoch's last step
    <loss columns>    float64  the step's ``summarize`` of the epoch's mean losses;
                               a loss step: ``loss`` and each extra term it reports
                               (detection: ``bbox_loss``, ``cls_loss``)
    images_per_s      float64  training images (all ranks) per second
    epoch_seconds     float64  wall time of the epoch's steps
    <metrics>         float64  what the evaluation callback returned (NaN when not
                               evaluated this epoch); classification: ``val_top1``,
                               ``val_top5``, ``val_loss``
    world_size        int64    processes
    finished_at       str      UTC ISO 8601
    ================  =======  ===================================================
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from .config import TrainRecipe
from .data.folders import seed_worker
from .distributed import (DistContext, all_reduce_gradients, average_bn_statistics, broadcast_state,
                          gather_rng_states, seed_everything, set_rng_state)
from .io import code_version, machine_fingerprint, torch_load, torch_save, utc_now, write_parquet
from .recipe import clip_gradients

CHECKPOINT_FORMAT = "scan-edge/trainer-checkpoint/v1"
CHECKPOINT_NAME, LOG_NAME = "checkpoint.pt", "train_log.parquet"
StepFn = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, dict[str, float]]]


# --------------------------------------------------------------------------- optimisation
def apply_gradients(params: Sequence[nn.Parameter], optimizer, scheduler, scaler, world_size: int,
                    clip_grad: float | None, step: int, clip_mode: str = "norm") -> int:
    """One optimizer update from the accumulated gradients: average them over ranks, clip
    (optionally; timm's ``norm``, ``value`` or ``agc``), step through the AMP scaler, zero
    them, advance the per-step schedule; returns the new step count."""
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


def build_optimizer_and_scheduler(model: nn.Module, recipe: TrainRecipe, steps_per_epoch: int):
    """``(optimizer, scheduler)``: a timm optimizer and a cosine schedule with linear warm-up
    over ``recipe.epochs * steps_per_epoch`` optimizer steps (``nas_core.config.TrainRecipe``).
    ``recipe.momentum`` goes to the SGD family only; every other optimizer keeps timm's own
    defaults. The schedule counts steps, not epochs: call
    ``scheduler.step_update(num_updates=step)`` after every optimizer step.
    """
    extra = {"momentum": recipe.momentum} if recipe.opt.lower() in SGD_FAMILY else {}
    optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay, **extra)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=recipe.epochs * steps_per_epoch, lr_min=recipe.min_lr, warmup_lr_init=recipe.warmup_lr,
        warmup_t=int(round(recipe.warmup_epochs * steps_per_epoch)), t_in_epochs=False)
    return optimizer, scheduler


def restore_training_state(state: Mapping[str, Any], model: nn.Module, optimizer, scheduler, scaler,
                           ctx: DistContext, seed: int) -> tuple[int, int, list]:
    """Load a checkpoint's weights, optimizer, scheduler, scaler and this rank's RNG state;
    returns ``(epoch, step, log)``."""
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


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any], defaults: Mapping[str, Any] | None = None,
                     free: frozenset[str] = frozenset()) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, current value)}`` for the settings that differ, ``free`` keys
    aside. A key the checkpoint predates counts as its default (``defaults``), so adding a
    setting to a config does not orphan the checkpoints written before it."""
    defaults = defaults or {}
    changed = {}
    for key, value in current.items():
        before = saved.get(key, defaults.get(key))
        if key not in free and before != value:
            changed[key] = (before, value)
    return changed


def describe_changes(changed: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))


def field_defaults(config: Any) -> dict[str, Any]:
    """The declared defaults of a config dataclass's fields."""
    return {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}


# --------------------------------------------------------------------------- steps
@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a step needs from the loop besides the model and the batch: the device, the
    optimizer steps completed before this one, the AMP grad scaler (scale every loss before
    ``backward``) and the autocast context (a no-op without AMP)."""

    device: torch.device
    step: int
    scaler: torch.amp.GradScaler
    autocast: Callable[[], ContextManager]


class LossStep:
    """A step with one loss per batch: ``__call__(model, batch, device) -> (loss, parts)``
    computes it (``parts``: extra floats to log); :meth:`backward` runs that under autocast
    and back-propagates the loss."""

    def __call__(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def backward(self, model: nn.Module, batch, context: StepContext) -> dict[str, Any]:
        with context.autocast():
            loss, parts = self(model, batch, context.device)
        context.scaler.scale(loss).backward()
        return {"loss": loss.detach(), **parts}

    def summarize(self, means: Mapping[str, float]) -> dict[str, float]:
        """The log columns of an epoch's mean losses (here: the means themselves)."""
        return dict(means)


class FunctionStep(LossStep):
    """A loss function ``fn(model, batch, device) -> (loss, parts)`` as a step."""

    def __init__(self, fn: StepFn):
        self.fn = fn

    def __call__(self, model, batch, device):
        return self.fn(model, batch, device)


# --------------------------------------------------------------------------- the loop
class Trainer:
    """Trains ``model`` on ``train_dataset`` with ``step`` for ``recipe.epochs`` epochs.

    ``step``: a step object (``backward`` / ``summarize``, see the module docstring) or a
    loss function ``fn(model, batch, device) -> (loss, parts)``. ``evaluate_fn(model) ->
    dict`` runs on rank 0 every ``eval_every`` epochs and after the last one; its values go
    into the log. ``identity`` (what the run is: model, data, ...) is stored in the
    checkpoint, and a checkpoint of another identity is not resumed. Subclasses change the
    checkpoint's header and the log's schema (``nas_core.train.SupernetTrainer``).
    """

    checkpoint_format = CHECKPOINT_FORMAT
    checkpoint_kind = "trainer"
    not_evaluated: Mapping[str, Any] = {}  # log values of the evaluation columns in epochs without one
    resume_free_keys = frozenset({"num_workers"})  # recipe keys that may change between a run and its resumption

    def __init__(self, model: nn.Module, train_dataset: Dataset, step, recipe: TrainRecipe,
                 out_dir: str | os.PathLike, *, collate_fn: Callable | None = None,
                 evaluate_fn: Callable[[nn.Module], Mapping[str, float]] | None = None, eval_every: int = 1,
                 ctx: DistContext | None = None, identity: Mapping[str, Any] | None = None,
                 progress: bool = True, desc: str = "train"):
        self.recipe, self.evaluate_fn = recipe, evaluate_fn
        self.step_fn = step if hasattr(step, "backward") else FunctionStep(step)
        self.eval_every, self.desc, self.progress = max(1, eval_every), desc, progress
        self.out_dir = Path(out_dir)
        self.ctx = ctx or DistContext()
        self.identity = dict(identity or {})
        if recipe.batch_size % self.ctx.world_size:
            raise ValueError(f"batch_size {recipe.batch_size} is not divisible by the {self.ctx.world_size} processes")
        self.local_batch = recipe.batch_size // self.ctx.world_size
        self.model = model.to(self.ctx.device)
        if self.ctx.distributed:
            broadcast_state(self.model)  # rank 0's initial weights everywhere, as DDP does
        self.sampler, self.loader_generator, self.loader = self._build_loader(train_dataset, collate_fn)
        self.steps_per_epoch = min(len(self.loader), recipe.steps_per_epoch or len(self.loader))
        self.optimizer, self.scheduler = build_optimizer_and_scheduler(self.model, recipe, self.steps_per_epoch)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.use_amp = recipe.amp and self.ctx.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.epoch = 0  # epochs completed
        self.step = 0   # optimizer steps completed
        self.log: list[dict[str, Any]] = []

    def _build_loader(self, dataset: Dataset, collate_fn: Callable | None):
        """This rank's shard, in an order that is a function of (seed, epoch) only."""
        r = self.recipe
        sampler = DistributedSampler(dataset, num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                     shuffle=True, seed=r.seed, drop_last=True)
        generator = torch.Generator()
        loader = DataLoader(
            dataset, batch_size=self.local_batch, sampler=sampler, drop_last=True, collate_fn=collate_fn,
            num_workers=r.num_workers, generator=generator, pin_memory=self.ctx.device.type == "cuda",
            # Fresh workers each epoch, seeded from the generator: resumable augmentation.
            persistent_workers=False, worker_init_fn=seed_worker if r.num_workers > 0 else None)
        if len(loader) == 0:
            raise ValueError(f"{len(dataset)} training images are fewer than one batch of {self.local_batch} "
                             "per process; lower batch_size")
        return sampler, generator, loader

    # ---- one step
    def autocast(self) -> ContextManager:
        if not self.use_amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.float16)

    def step_context(self, step: int | None = None) -> StepContext:
        return StepContext(self.ctx.device, self.step if step is None else step, self.scaler, self.autocast)

    def train_step(self, *batch) -> dict[str, Any]:
        """One optimizer step on one batch (the loader's items): the step's backward passes,
        then the update; returns the step's losses."""
        losses = self.step_fn.backward(self.model, batch, self.step_context())
        self.optimizer_step()
        return losses

    def optimizer_step(self) -> None:
        """Average gradients over ranks, (clip,) step, and advance the schedule."""
        self.step = apply_gradients(self.trainable, self.optimizer, self.scheduler, self.scaler, self.ctx.world_size,
                                    self.recipe.clip_grad, self.step, self.recipe.clip_mode)

    # ---- one epoch
    def start_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        # Worker seeds are drawn from this generator: a function of (seed, epoch, rank).
        self.loader_generator.manual_seed(int(np.random.SeedSequence(
            [self.recipe.seed, epoch, self.ctx.rank]).generate_state(1)[0]))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.start_epoch(epoch)
        self.model.train()
        bar = tqdm(total=self.steps_per_epoch, desc=f"{self.desc} epoch {epoch + 1}/{self.recipe.epochs}",
                   disable=not (self.progress and self.ctx.is_main), dynamic_ncols=True, leave=False)
        totals: dict[str, float] = {}
        done, start = 0, time.perf_counter()
        for batch in self.loader:
            items = batch if isinstance(batch, (tuple, list)) else (batch,)
            for key, value in self.train_step(*items).items():
                totals[key] = totals.get(key, 0.0) + float(value)  # one sync per step
            done += 1
            headline = next(iter(self.step_fn.summarize({k: v / done for k, v in totals.items()}).values()))
            bar.set_postfix(loss=f"{headline:.3f}",
                            img_s=f"{done * self.recipe.batch_size / (time.perf_counter() - start):.1f}")
            bar.update()
            if done == self.steps_per_epoch:
                break
        bar.close()
        seconds = time.perf_counter() - start
        return {**self.step_fn.summarize({k: v / done for k, v in totals.items()}),
                "images_per_s": done * self.recipe.batch_size / seconds, "epoch_seconds": seconds}

    # ---- the loop
    def fit(self, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train to ``recipe.epochs`` (or for at most ``stop_after`` more epochs, for
        time-boxed jobs), checkpointing after every epoch; returns the log rows."""
        epochs = self.recipe.epochs
        last = epochs if stop_after is None else min(epochs, self.epoch + stop_after)
        for epoch in range(self.epoch, last):
            stats = self.train_epoch(epoch)
            average_bn_statistics(self.model, self.ctx.world_size)
            metrics: Mapping[str, float] = {}
            evaluated = (epoch + 1) % self.eval_every == 0 or epoch + 1 == epochs
            if self.evaluate_fn is not None and self.ctx.is_main and evaluated:
                metrics = self.evaluate_fn(self.model)
                self.model.train()
            self.epoch = epoch + 1
            row = {"epoch": self.epoch, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"], **stats,
                   **self.not_evaluated, **metrics, "world_size": self.ctx.world_size, "finished_at": utc_now()}
            self.log.append(row)
            self.save_checkpoint()
            if self.ctx.is_main and self.progress:
                print(self.format_row(row), flush=True)
        return self.log

    def format_row(self, row: Mapping[str, Any]) -> str:
        return f"{self.desc} " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()
                                           if k not in ("world_size", "finished_at", "step"))

    # ---- checkpoints
    def checkpoint_header(self) -> dict[str, Any]:
        """What the checkpoint says the run is (compared on resume by :meth:`check_resumable`)."""
        return {"identity": self.identity, "recipe": self.recipe.to_dict()}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs. ``rng`` is one entry per rank."""
        return {"format": self.checkpoint_format, **self.checkpoint_header(),
                "epoch": self.epoch, "step": self.step, "world_size": self.ctx.world_size,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": gather_rng_states(self.ctx), "loader_generator": self.loader_generator.get_state(),
                "log": self.log, "code_version": code_version(), "created": utc_now()}

    def check_resumable(self, state: Mapping[str, Any]) -> None:
        """Refuse a checkpoint of another run: a changed recipe or identity."""
        changed = changed_settings(state["recipe"], self.recipe.to_dict(), field_defaults(TrainRecipe),
                                   self.resume_free_keys)
        changed.update(changed_settings(state["identity"], self.identity))
        if changed:
            raise ValueError(f"cannot resume: the run changed since the checkpoint ({describe_changes(changed)}); "
                             "restore the settings, or start over (overwrite)")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != self.checkpoint_format:
            raise ValueError(f"not a {self.checkpoint_kind} checkpoint (format {state.get('format')!r})")
        self.check_resumable(state)
        self.epoch, self.step, self.log = restore_training_state(
            state, self.model, self.optimizer, self.scheduler, self.scaler, self.ctx, self.recipe.seed)
        if "loader_generator" in state:  # re-seeded every epoch; restored for completeness
            self.loader_generator.set_state(state["loader_generator"])

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
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
        self.load_state_dict(torch_load(path, map_location="cpu"))
        return True

    # ---- the log
    def log_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.log)
        for column in frame.columns:
            if column in ("epoch", "step", "world_size"):
                frame[column] = frame[column].astype("int64")
            elif column != "finished_at":
                frame[column] = frame[column].astype("float64")
        return frame

    def provenance(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "identity": self.identity, "code_version": code_version(),
                "machine": machine_fingerprint(), "world_size": self.ctx.world_size, "device": str(self.ctx.device)}

    def write_log(self) -> None:
        write_parquet(self.out_dir / LOG_NAME, self.log_frame(), provenance=self.provenance())


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def train_epochs(model: nn.Module, train_dataset: Dataset, step, recipe: TrainRecipe,
                 out_dir: str | os.PathLike, *, resume: bool = True, overwrite: bool = False,
                 **trainer_kwargs) -> pd.DataFrame:
    """Run a :class:`Trainer` to completion and return its log as a DataFrame.

    An existing ``out_dir/checkpoint.pt`` is continued when ``resume`` (the default: long
    jobs pick up where they stopped; an incompatible checkpoint is an error naming what
    changed) and discarded when ``overwrite``.
    """
    out_dir = Path(out_dir)
    checkpoint = out_dir / CHECKPOINT_NAME
    if checkpoint.exists() and not (resume or overwrite):
        raise FileExistsError(f"{checkpoint} exists: resume to continue that run or overwrite to start over")
    trainer = Trainer(model, train_dataset, step, recipe, out_dir, **trainer_kwargs)
    if overwrite and trainer.ctx.is_main:
        checkpoint.unlink(missing_ok=True)
    trainer.ctx.barrier()
    if resume and not overwrite and trainer.resume() and trainer.ctx.is_main and trainer.progress:
        print(f"resumed {checkpoint} at epoch {trainer.epoch}/{recipe.epochs}", flush=True)
    trainer.fit()
    return trainer.log_frame()
