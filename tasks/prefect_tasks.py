"""Each pipeline stage as a cached Prefect task (thin: the work is ``tasks.stages``).

One task per stage (``stage-dataset``, ``stage-lut``, ...), all running
:func:`run_stage`, which calls the stage function with the step's options. The cache key
(``tasks._cache.ArtifactCache``) is made of

* the params sections the stage reads (``stages.params_for``) and the step's options,
* the *content* of the artifacts it reads (``inputs``, e.g. ``supernet.pt``),
* the source of the ``nas_core`` modules its result depends on (``STAGES[stage].code``)
  and of this task,
* for stages that measure latency, the runtime name + version, settings and machine of
  every device they measure on (``runtime_identity``, computed where the task runs).

A declared output that has gone missing makes the task run again. Results (the paths
written) persist under ``.prefect/results``, so a later run, another process or a Dask
worker on this machine hits the cache. Paths travel between tasks, never tensors.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Mapping

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from nas_core.detection import DetectionConfig
from nas_core.finetune import FinetuneConfig
from tasks import stages
from tasks._cache import artifact_cache, cached_task_options


def run_stage(stage: str, params: dict, options: dict, inputs: list[Path], outputs: list[Path],
              root: str) -> dict[str, str]:
    """Run ``STAGES[stage]`` (``inputs`` / ``outputs`` are there for the cache key)."""
    paths = stages.STAGES[stage].function(params, **options, root=root)
    return {name: str(path) for name, path in paths.items()}


@functools.lru_cache(maxsize=None)
def _runtime_identity(params_json: str, device: str) -> str:
    """``stages.runtime_identity`` memoised per process (the runtime import costs up to seconds)."""
    return json.dumps(stages.runtime_identity(json.loads(params_json), device), sort_keys=True)


def measured_devices(stage: str, params: Mapping[str, Any], options: Mapping[str, Any]) -> list[str]:
    """The devices a step measures latency on (their runtimes join its cache key)."""
    if not stages.STAGES[stage].measures_latency:
        return []
    if "device" in options:
        return [options["device"]]
    if "devices" in options:
        return list(options["devices"])
    config = {"finetune": FinetuneConfig, "detection": DetectionConfig}[stage].from_params(params.get(stage))
    searched = stages.search_devices(params) if stage == "finetune" else []
    return list(dict.fromkeys([*searched, *config.devices]))


def stage_task(stage: str, step_options: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
               storage: str | Path | None = None) -> Task:
    """The cached Prefect task of ``stage``; with the step's options and params, its cache
    policy also covers the runtimes of the devices the step measures on."""
    devices = measured_devices(stage, params or {}, step_options or {}) if params is not None else []
    params_json = json.dumps({k: params.get(k) for k in ("devices", "search_space")} if params else {}, default=str)

    def runtimes() -> dict[str, Any]:
        return {device: json.loads(_runtime_identity(params_json, device)) for device in devices}

    if stage == "runtime":  # it *is* the check whether a runtime changed: never cached
        return task(run_stage, name="stage-runtime", cache_policy=NO_CACHE)
    policy = artifact_cache(output_params=("outputs",), code_modules=stages.STAGES[stage].code, extra=runtimes)
    return task(run_stage, name=f"stage-{stage}", **cached_task_options(policy, storage))


def step_task(step: stages.Step, params: Mapping[str, Any], storage: str | Path | None = None) -> Task:
    """``stage_task`` for one planned step, its runs named after the step (``lut@ort_cpu_fp32``)."""
    return stage_task(step.stage, step.kwargs(), params, storage).with_options(task_run_name=step.id)


def step_arguments(step: stages.Step, params: Mapping[str, Any], root: str | Path) -> dict[str, Any]:
    """The task's call arguments for a step: only the stage's params sections enter the key."""
    return {"stage": step.stage, "params": stages.params_for(step.stage, params, step.kwargs()), "options": step.kwargs(),
            "inputs": [Path(p) for p in step.inputs], "outputs": [Path(p) for p in step.outputs], "root": str(root)}


__all__ = ["run_stage", "stage_task", "step_task", "step_arguments", "measured_devices"]
