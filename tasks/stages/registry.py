"""The stages by name: function, params sections, code dependencies, whether it measures."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from tasks.stages.common import Paths
from tasks.stages.data import stage_dataset
from tasks.stages.downstream import stage_detection, stage_finetune, stage_transfer
from tasks.stages.latency import stage_baselines, stage_calibration, stage_lut, stage_runtime
from tasks.stages.report import stage_report
from tasks.stages.search import stage_search
from tasks.stages.training import stage_pairs, stage_predictor, stage_supernet


@dataclasses.dataclass(frozen=True)
class StageInfo:
    """A stage: its function, the params sections it reads, the code modules its result
    depends on (Prefect cache keys; DVC deps), and whether it measures latency."""

    function: Callable[..., Paths]
    sections: tuple[str, ...]
    code: tuple[str, ...]
    measures_latency: bool = False


_LATENCY_CODE = ("nas_core.latency.devices", "nas_core.latency.timing", "nas_core.latency.measure",
                 "nas_core.latency.export", "nas_core.latency.location", "nas_core.latency.bundle",
                 "tasks.board_worker")
_LATENCY_MODEL_CODE = ("nas_core.latency.calibration", "nas_core.latency.latency_model",
                       "nas_core.latency.subnet_sampling")
_BLOCK_CODE = ("nas_core.search_space", "nas_core.subnet", "nas_core.blocks", "nas_core.block_catalog")
_TRAIN_CODE = ("nas_core.search_space", "nas_core.supernet", "nas_core.subnet", "nas_core.train", "nas_core.recipe",
               "nas_core.evaluate", "nas_core.data")

# What `ours` and baseline names in transfer / detection resolve to (resolve_model).
_MODEL_CHOICE = ("pipeline.finetune_baselines", "search.devices", "search.targets_vs_mobilenetv2")

# Code lists are what the stage's result depends on, deliberately no more: a LUT is only
# re-timed when the code that builds, exports or times its blocks changes. The glue in this
# package only routes params and paths, and nas_core.io only writes files: neither is listed.
STAGES: dict[str, StageInfo] = {
    "dataset": StageInfo(stage_dataset, ("dataset",), ("nas_core.data",)),
    "supernet": StageInfo(stage_supernet, ("supernet", "pipeline.torchrun"), _TRAIN_CODE),
    "pairs": StageInfo(stage_pairs, ("pairs", "runners"), ("nas_core.pairs", "tasks.pairs", *_TRAIN_CODE)),
    "predictor": StageInfo(stage_predictor, ("predictor",),
                           ("nas_core.accuracy_predictor", "nas_core.encoding", "nas_core.pairs",
                            "nas_core.search_space", "nas_core.block_catalog")),
    "runtime": StageInfo(stage_runtime, ("devices", "search_space"),
                         ("nas_core.latency.devices", "nas_core.latency.location", "tasks.board_worker"), True),
    "lut": StageInfo(stage_lut, ("devices", "search_space", "lut"),
                     ("nas_core.latency.lut", *_BLOCK_CODE, *_LATENCY_CODE), True),
    "calibration": StageInfo(stage_calibration, ("devices", "search_space", "calibration"),
                             (*_LATENCY_MODEL_CODE, "nas_core.latency.lut", *_BLOCK_CODE, *_LATENCY_CODE), True),
    "baselines": StageInfo(stage_baselines, ("devices", "search_space", "baselines"),
                           ("nas_core.latency.baselines", *_LATENCY_CODE), True),
    "search": StageInfo(stage_search, ("devices", "search_space", "search.evolution", "search.refine",
                                       "search.num_classes"),
                        ("nas_core.search_run", "nas_core.search_algorithm", "nas_core.search_report",
                         "nas_core.efficiency_predictor", "nas_core.accuracy_predictor", "nas_core.encoding",
                         *_LATENCY_MODEL_CODE, "nas_core.latency.lut", *_BLOCK_CODE, *_LATENCY_CODE), True),
    "finetune": StageInfo(stage_finetune, ("devices", "finetune", "pipeline.finetune_baselines"),
                          ("nas_core.finetune", "nas_core.complexity", *_TRAIN_CODE, "nas_core.blocks",
                           *_LATENCY_CODE), True),
    "transfer": StageInfo(stage_transfer, ("transfer", "pipeline.transfer_models", "pipeline.transfer_data",
                                           "pipeline.transfer_synthetic", *_MODEL_CHOICE),
                          ("nas_core.transfer", "nas_core.finetune", "nas_core.complexity", *_TRAIN_CODE)),
    "detection": StageInfo(stage_detection, ("detection", "devices", "pipeline.detection_models",
                                             "pipeline.detection_data", *_MODEL_CHOICE),
                           ("nas_core.detection", "nas_core.finetune", "nas_core.complexity", *_TRAIN_CODE,
                            *_LATENCY_CODE), True),
    "report": StageInfo(stage_report, ("search.devices", "search.targets_vs_mobilenetv2",
                                       "pipeline.params_constrained", "pipeline.finetune_baselines"),
                        ("nas_core.report", "nas_core.search_report", *_LATENCY_MODEL_CODE)),
}


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
