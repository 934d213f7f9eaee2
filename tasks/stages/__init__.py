"""The pipeline's stages as plain functions: the one entry point every door calls.

DESIGN.md's DAG, one function per stage. ``scan-edge stage NAME`` (what ``dvc.yaml``
runs), the Prefect tasks of ``tasks/prefect_tasks.py`` (what ``scan-edge reproduce`` and
the ``reprofile`` flow run) and tests all call these, so a stage does the same thing
whichever door it came through. No Prefect here (it is imported by the tasks that wrap
these functions), only ``nas_core`` and the machine's CPU lock.

By concern, each module readable on its own:

* ``common``: params sections, the pipeline's search runs, resume stamps, messages;
* ``space``: the search space params name (``search_space.attention``: Table 2 or with ESHA);
* ``data``: the dataset; ``training``: supernet, pairs, predictor and the torchrun launcher;
* ``latency``: runtime record, LUT, calibration, baselines, and how a device is reached;
* ``recalibration``: the second calibration round, on the predictor's searched subnets;
* ``search``; ``downstream``: fine-tune, transfer, detection; ``controls``: random
  architectures at the same latency, trained like ours; ``report``;
* ``registry``: :data:`STAGES` (function, params sections, code); ``planner``: the steps.

Each stage function

* reads only its own params sections (``STAGES[name].sections``: the Prefect cache key and
  the ``params:`` of its DVC stage are made of exactly these),
* reads its upstream artifacts at fixed places under ``root`` (``nas_core.layout.Layout``,
  the one place the artifact tree is spelled),
* holds the machine's CPU lock (:func:`tasks.stage_lock`): ``"shared"`` around CPU-heavy
  work, ``"exclusive"`` around latency measurement (so a measurement never runs beside
  other pipeline work, in any process). Stages that only compute or only measure hold it
  for their whole work; the others take it per unit of work: pairs per shard,
  distributed training per rank, and search, fine-tuning and detection shared while they
  compute and exclusively for each measurement (the ``lock`` hook of their ``nas_core``
  job, ``nas_core.locks``),
* continues an interrupted run of the *same* inputs and starts afresh otherwise
  (:func:`resume_or_restart`), and
* returns the paths it wrote (``{name: Path}``).

The work of a stage on explicit paths, with an explicit resume choice, is a ``run_<stage>``
function (:func:`run_supernet`, :func:`run_predictor`, :func:`run_lut`,
:func:`run_calibration`, :func:`run_finetune`, :func:`run_transfer`,
:func:`run_detection`; the pairs' is ``tasks.pairs.collect_pairs``, the search's
:func:`search_setup` + ``nas_core.search_run``). The stage functions and the
``scan-edge`` subcommands of each stage (``train-supernet``, ``fit-predictor``,
``lut build``, ...) call the same ones: params sections, configs and locks are handled
here once, and a command only turns its flags into params overrides and paths.

Everything is re-exported here (``from tasks import stages; stages.stage_search(...)``),
lazily (PEP 562, as ``nas_core`` does): ``scan-edge status`` and the CLI's argument parsing
import the planner without the stage modules' libraries (torch, timm, Prefect, Dask). A
test that replaces a helper must patch the module that looks it up (e.g.
``tasks.stages.training._torchrun``), not this package.
"""
from __future__ import annotations

import importlib

# name -> the module that defines it (a stage module of this package, or a full module name)
_EXPORTS = {
    "DATA_ROOT": "nas_core.layout", "Layout": "nas_core.layout",
    "OURS": "common", "Paths": "common", "SearchRun": "common",
    "_require": "common", "_say": "common", "controlled_runs": "common", "finetune_baselines": "common",
    "finetune_seeds": "common", "equal_budget_baselines": "common", "EQUAL_BUDGET": "common",
    "input_digest": "common",
    "parse_target": "common", "pipeline_section": "common", "resolve_model": "common",
    "resume_or_restart": "common", "search_devices": "common", "search_runs": "common", "section": "common",
    "DATASET_PATH_KEYS": "data", "stage_dataset": "data",
    "detection_dataset": "downstream", "run_detection": "downstream", "run_finetune": "downstream",
    "run_transfer": "downstream", "stage_detection": "downstream", "stage_finetune": "downstream",
    "stage_transfer": "downstream",
    "_BOARD_VERSIONS": "runtimes", "BOARD_VERSION_TTL_S": "runtimes", "_access_of": "latency",
    "_measurable": "latency", "device_access": "latency", "device_profile": "runtimes",
    "device_runtime_version": "runtimes", "run_calibration": "latency", "run_lut": "latency",
    "runtime_identity": "runtimes", "stage_baselines": "latency", "stage_calibration": "latency",
    "stage_lut": "latency", "stage_runtime": "runtime_record",
    "STAGE_NAMES": "planner", "Step": "planner", "find_step": "planner", "pipeline_steps": "planner",
    "STAGES": "registry", "StageInfo": "registry", "_step_devices": "registry", "params_for": "registry",
    "stage_identity": "registry",
    "stage_report": "report",
    "SPACE_KEY": "common", "search_space": "space", "space_spec": "space", "space_sections": "space",
    "control_run": "controls", "stage_controls": "controls",
    "stage_recalibration": "recalibration", "searched_subnets": "recalibration",
    "search_setup": "search", "searched_arch": "search", "stage_search": "search", "target_latencies": "search",
    "_launch_ranks": "training", "_torchrun": "training", "run_predictor": "training", "run_supernet": "training",
    "stage_pairs": "training", "stage_predictor": "training", "stage_supernet": "training",
    "torchrun_command": "training",
}
SUBMODULES = ("common", "space", "data", "training", "runtimes", "latency", "search", "recalibration", "downstream",
              "controls", "report", "registry", "planner")
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = _EXPORTS[name]
        return getattr(importlib.import_module(module if "." in module else f"tasks.stages.{module}"), name)
    if name in SUBMODULES:
        return importlib.import_module(f"tasks.stages.{name}")
    raise AttributeError(f"module 'tasks.stages' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *SUBMODULES})
