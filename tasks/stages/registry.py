"""The stages by name: function, params sections, code dependencies, whether it measures."""
from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from tasks import code_identity
from tasks.run_identity import run_identity
from tasks.stages.common import SPACE_KEY, Paths


@dataclasses.dataclass(frozen=True)
class StageEntry:
    """A stage function named by its module and name, imported when it is first called: reading
    the registry (a step's run key, ``scan-edge status``, a no-op ``reproduce``) loads no stage
    module, hence no torch or timm. Its code identity is read from the file (``code_identity``
    parses, never imports); a monkeypatched module attribute is what runs."""

    module: str
    name: str

    def __call__(self, *args: Any, **kwargs: Any) -> Paths:
        return getattr(importlib.import_module(self.module), self.name)(*args, **kwargs)

    @property
    def entry_point(self) -> code_identity.EntryPoint:
        return code_identity.EntryPoint(code_identity.module_file(self.module), self.module, self.name)


def _entry(module: str, name: str) -> StageEntry:
    return StageEntry(f"tasks.stages.{module}", name)


stage_dataset = _entry("data", "stage_dataset")
stage_supernet, stage_pairs, stage_predictor = (_entry("training", n) for n in
                                                ("stage_supernet", "stage_pairs", "stage_predictor"))
stage_runtime = _entry("runtime_record", "stage_runtime")  # light: DVC's probe imports no torch
stage_lut, stage_calibration, stage_baselines = (
    _entry("latency", n) for n in ("stage_lut", "stage_calibration", "stage_baselines"))
stage_recalibration = _entry("recalibration", "stage_recalibration")
stage_search = _entry("search", "stage_search")
stage_finetune, stage_transfer, stage_detection = (_entry("downstream", n) for n in
                                                   ("stage_finetune", "stage_transfer", "stage_detection"))
stage_controls = _entry("controls", "stage_controls")
stage_report = _entry("report", "stage_report")


@dataclasses.dataclass(frozen=True)
class StageInfo:
    """A stage: its function, the params sections it reads, extra code modules, and whether
    it measures latency.

    The code its result depends on is computed from the import graph of its function
    (``tasks.code_identity``: Prefect cache key, DVC deps, resume stamps); ``code`` names
    only what that graph cannot see (a module run by name, imported with ``importlib``).
    """

    function: Callable[..., Paths]  # a StageEntry (tests put plain functions here)
    sections: tuple[str, ...]
    code: tuple[str, ...] = ()
    measures_latency: bool = False

    def code_files(self) -> list[Path]:
        return code_identity.code_files(self.function, self.code)

    def code_digest(self) -> str:
        return code_identity.code_digest(self.function, self.code, self.sections)


# What `ours` and baseline names in transfer / detection resolve to (resolve_model).
_MODEL_CHOICE = ("pipeline.finetune_baselines", "pipeline.equal_budget", "search.devices",
                 "search.targets_vs_mobilenetv2")

STAGES: dict[str, StageInfo] = {
    "dataset": StageInfo(stage_dataset, ("dataset",)),
    "supernet": StageInfo(stage_supernet, ("supernet", "pipeline.torchrun", SPACE_KEY)),
    "pairs": StageInfo(stage_pairs, ("pairs", "runners", SPACE_KEY)),
    "predictor": StageInfo(stage_predictor, ("predictor", SPACE_KEY)),
    "runtime": StageInfo(stage_runtime, ("devices", "search_space"), measures_latency=True),
    "lut": StageInfo(stage_lut, ("devices", "search_space", "lut"), measures_latency=True),
    "calibration": StageInfo(stage_calibration, ("devices", "search_space", "calibration"), measures_latency=True),
    "baselines": StageInfo(stage_baselines, ("devices", "search_space", "baselines"), measures_latency=True),
    "recalibration": StageInfo(stage_recalibration, ("devices", "search_space", "recalibration", "search.evolution",
                                                     "search.num_classes"), measures_latency=True),
    "search": StageInfo(stage_search, ("devices", "search_space", "search.evolution", "search.refine",
                                       "search.num_classes"), measures_latency=True),
    "finetune": StageInfo(stage_finetune, ("devices", "finetune", "pipeline.finetune_baselines", "pipeline.equal_budget",
                                           SPACE_KEY), measures_latency=True),
    "controls": StageInfo(stage_controls, ("controls", "finetune", "pairs", "devices", "search_space", "search.refine",
                                           "search.num_classes", "search.devices", "search.targets_vs_mobilenetv2",
                                           "pipeline.params_constrained", "pipeline.torchrun"), measures_latency=True),
    "transfer": StageInfo(stage_transfer, ("transfer", "pipeline.transfer_models", "pipeline.transfer_data",
                                           "pipeline.transfer_synthetic", *_MODEL_CHOICE)),
    "detection": StageInfo(stage_detection, ("detection", "devices", "pipeline.detection_models",
                                             "pipeline.detection_data", *_MODEL_CHOICE), measures_latency=True),
    "report": StageInfo(stage_report, ("search.devices", "search.targets_vs_mobilenetv2",
                                       "pipeline.params_constrained", "pipeline.finetune_baselines",
                                       "pipeline.equal_budget", SPACE_KEY)),
}

code_identity.register_stages(STAGES)


def stage_identity(stage: str, params: Mapping[str, Any], options: Mapping[str, Any] | None = None,
                   inputs: Iterable[str | os.PathLike] = (), runtimes: Mapping[str, Any] | None = None) -> str:
    """The run identity (``tasks.run_identity``) of ``stage`` with these params, options,
    inputs and runtimes: what its Prefect cache key and its completion stamp are made of."""
    return run_identity(STAGES[stage].code_digest(), params_for(stage, params, options), options, inputs, runtimes)


def params_for(stage: str, params: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The part of ``params`` a stage reads, its cache key: its sections (a dotted name is one
    key of a section) and the profile name; ``devices`` narrowed to the step's own device(s)."""
    chosen: dict[str, Any] = {"profile": params.get("profile")}
    for name in STAGES[stage].sections:
        head, _, key = name.partition(".")
        if key:
            chosen.setdefault(head, {})[key] = (params.get(head) or {}).get(key)
        else:
            chosen[head] = params.get(head)
    devices = _step_devices(options or {})
    if devices and "devices" in chosen:
        chosen["devices"] = {d: v for d, v in (chosen["devices"] or {}).items() if d in devices}
    return chosen


def _step_devices(options: Mapping[str, Any]) -> list[str]:
    if "device" in options:
        return [options["device"]]
    return list(options.get("devices") or [])
