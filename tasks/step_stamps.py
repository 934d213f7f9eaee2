"""Which steps of the pipeline are done: each step's run key, and the key its last completed run recorded.

A step's **run key** (:func:`step_key`) is its stage's run identity
(``tasks.stages.stage_identity``: code, params, options, the content of what it reads,
the runtimes it measures with) plus where it writes. It is the Prefect cache key of the
step's task (``tasks.prefect_tasks``), and every door that completes a step records it in
``<root>/.resume/steps/<step id>.json`` (:func:`record_done`). So deciding that nothing
changed (:func:`first_stale_step`) needs neither a Prefect server nor hashing unchanged
artifacts again (file digests come from the stat cache of ``tasks.run_identity``):
``scan-edge reproduce`` with nothing changed stops there.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks import stages
from tasks.run_identity import default_cache_file, digest_of, read_stamp, write_stamp


def stamps_folder(root: str | os.PathLike) -> Path:
    return stages.Layout(root).resume_stamps / "steps"


@functools.lru_cache(maxsize=None)
def _runtime_identity(params_json: str, device: str, root: str) -> str:
    """``stages.runtime_identity`` memoised per process (the runtime import costs up to seconds)."""
    return json.dumps(stages.runtime_identity(json.loads(params_json), device, root), sort_keys=True)


def measured_devices(stage: str, params: Mapping[str, Any], options: Mapping[str, Any]) -> list[str]:
    """The devices a step measures latency on (their runtimes join its run identity)."""
    if not stages.STAGES[stage].measures_latency:
        return []
    if "device" in options:
        return [options["device"]]
    if "devices" in options:
        return list(options["devices"])
    if stage == "controls":  # the devices of the searches it controls (params only, no import)
        return list(dict.fromkeys(d for run in stages.controlled_runs(params) for d in run.devices))
    # Fine-tune and detection: from their config, whose module imports torch (seconds). The
    # answer is memoised on disk by all it depends on: the stage's code and these params.
    memo = default_cache_file().parent / "measured-devices.json"
    key = digest_of({"stage": stage, "code": stages.STAGES[stage].code_digest(), "section": params.get(stage),
                     "searched": (params.get("search") or {}).get("devices")})
    known = read_stamp(memo.parent, memo.stem) or {}
    if key not in known:
        known[key] = _configured_devices(stage, params)
        write_stamp(memo.parent, memo.stem, known)
    return list(known[key])


def _configured_devices(stage: str, params: Mapping[str, Any]) -> list[str]:
    from nas_core.detection import DetectionConfig  # torch-heavy: only when not memoised
    from nas_core.finetune import FinetuneConfig

    config = {"finetune": FinetuneConfig, "detection": DetectionConfig}[stage].from_params(params.get(stage))
    searched = stages.search_devices(params) if stage == "finetune" else []
    return list(dict.fromkeys([*searched, *config.devices]))


def step_runtimes(stage: str, params: Mapping[str, Any], options: Mapping[str, Any],
                  root: str | os.PathLike = stages.DATA_ROOT) -> dict[str, Any]:
    """``{device: runtime identity}`` of the devices the step measures on (computed here, so on
    the machine that runs the step)."""
    devices = measured_devices(stage, params, options)
    params_json = json.dumps({k: params.get(k) for k in ("devices", "search_space")}, sort_keys=True, default=str)
    return {device: json.loads(_runtime_identity(params_json, device, str(root))) for device in devices}


def run_key(stage: str, params: Mapping[str, Any], options: Mapping[str, Any], inputs: Iterable[str | os.PathLike],
            outputs: Iterable[str | os.PathLike], root: str | os.PathLike,
            runtimes: Mapping[str, Any] | None = None) -> str:
    """A stage run's key: its run identity plus where it writes (``root``, the outputs)."""
    if runtimes is None:
        runtimes = step_runtimes(stage, params, options, root)
    identity = stages.stage_identity(stage, params, options, list(inputs), runtimes)
    return digest_of({"identity": identity, "root": str(root), "outputs": [str(p) for p in outputs]})


def step_key(step: stages.Step, params: Mapping[str, Any], root: str | os.PathLike) -> str:
    return run_key(step.stage, params, step.kwargs(), step.inputs, step.outputs, root)


def record_done(step: stages.Step, key: str, root: str | os.PathLike) -> Path:
    """Record that ``step`` completed with run key ``key`` (whichever door ran it)."""
    return write_stamp(stamps_folder(root), step.id, {"key": key, "stage": step.stage})


def completed_with(step: stages.Step, key: str, root: str | os.PathLike) -> bool:
    """The step's outputs exist and its last completed run recorded run key ``key`` (cheap: for a
    caller that computed the key once and polls)."""
    if not all(Path(p).exists() for p in step.outputs):
        return False
    return (read_stamp(stamps_folder(root), step.id) or {}).get("key") == key


def is_done(step: stages.Step, params: Mapping[str, Any], root: str | os.PathLike) -> bool:
    """The step's outputs exist and its last completed run had the run key it has now."""
    return all(Path(p).exists() for p in step.outputs) and completed_with(step, step_key(step, params, root), root)


def first_stale_step(params: Mapping[str, Any], root: str | os.PathLike = stages.DATA_ROOT,
                     steps: Sequence[stages.Step] | None = None) -> stages.Step | None:
    """The first step (in pipeline order) that is not done, or None when every step is: one is
    enough to know the pipeline must run, and its dependents are stale through it anyway."""
    for step in stages.pipeline_steps(params, root) if steps is None else steps:
        if not is_done(step, params, root):
            return step
    return None


__all__ = ["completed_with", "measured_devices", "record_done", "run_key", "first_stale_step", "step_key",
           "step_runtimes", "is_done"]
