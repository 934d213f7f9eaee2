"""Each pipeline stage as a cached Prefect task (thin: the work is ``tasks.stages``).

One task per stage (``stage-dataset``, ``stage-lut``, ...), all running
:func:`run_stage`, which calls the stage function with the step's options. The cache key
(:class:`StageRunCache`) is the step's run key (``tasks.step_stamps.run_key``): its run
identity — the stage's code (from its import graph), the params sections it reads and its
options, the *content* of the artifacts it reads, and for stages that measure latency the
runtime of every device they measure on (computed where the task runs) — plus where it
writes. The same key is what ``scan-edge reproduce`` checks before starting Prefect at all.

A declared output that has gone missing makes the task run again. Results (the paths
written) persist under ``.prefect/results``, so a later run, another process or a Dask
worker on this machine hits the cache. Paths travel between tasks, never tensors.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from prefect import Task, task
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.context import TaskRunContext

from tasks import stages
from tasks._cache import _discard_cached_record, cached_task_options
from tasks.step_stamps import measured_devices, run_key, step_runtimes


def run_stage(stage: str, params: dict, options: dict, inputs: list[Path], outputs: list[Path],
              root: str) -> dict[str, str]:
    """Run ``STAGES[stage]`` (``inputs`` / ``outputs`` are there for the cache key)."""
    paths = stages.STAGES[stage].function(params, **options, root=root)
    return {name: str(path) for name, path in paths.items()}


@dataclass
class StageRunCache(CachePolicy):
    """Cache key = the step's run key (``tasks.step_stamps.run_key``), from the task's arguments."""

    stage: str = ""
    # The runtimes of the devices the step measures on, computed when the key is (on the worker).
    runtimes: Callable[[], Mapping[str, Any]] = field(default=dict, compare=False)

    def compute_key(self, task_ctx: Optional[TaskRunContext], inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> Optional[str]:
        key = run_key(self.stage, inputs["params"], inputs["options"], inputs["inputs"], inputs["outputs"],
                      inputs["root"], self.runtimes())
        # A cached result would point at files that are gone: drop it, so the task runs once
        # and re-creates them (a new key instead would cost two runs to settle).
        if task_ctx is not None and not all(Path(p).exists() for p in inputs["outputs"]):
            _discard_cached_record(task_ctx.task, self, key)
        return key


def stage_task(stage: str, step_options: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
               storage: str | Path | None = None, root: str | Path = stages.DATA_ROOT) -> Task:
    """The cached Prefect task of ``stage``; with the step's options and (all the) params, its
    key also covers the runtimes of the devices the step measures on. The ``runtime`` stage,
    the check whether a runtime changed, is never cached."""
    if stage == "runtime":
        return task(run_stage, name="stage-runtime", cache_policy=NO_CACHE)

    def runtimes() -> Mapping[str, Any]:
        return step_runtimes(stage, params, step_options or {}, root) if params is not None else {}

    policy = StageRunCache(stage=stage, runtimes=runtimes)
    return task(run_stage, name=f"stage-{stage}", **cached_task_options(policy, storage))


def step_task(step: stages.Step, params: Mapping[str, Any], storage: str | Path | None = None,
              root: str | Path = stages.DATA_ROOT) -> Task:
    """``stage_task`` for one planned step, its runs named after the step (``lut@ort_cpu_fp32``)."""
    return stage_task(step.stage, step.kwargs(), params, storage, root).with_options(task_run_name=step.id)


def step_arguments(step: stages.Step, params: Mapping[str, Any], root: str | Path) -> dict[str, Any]:
    """The task's call arguments for a step: only the stage's params sections enter the key."""
    return {"stage": step.stage, "params": stages.params_for(step.stage, params, step.kwargs()), "options": step.kwargs(),
            "inputs": [Path(p) for p in step.inputs], "outputs": [Path(p) for p in step.outputs], "root": str(root)}


__all__ = ["StageRunCache", "run_stage", "stage_task", "step_task", "step_arguments", "measured_devices"]
