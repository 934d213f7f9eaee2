"""The pipeline's stages as plain functions: the one entry point every door calls.

DESIGN.md's DAG, one function per stage. ``scan-edge stage NAME`` (what ``dvc.yaml``
runs), the Prefect tasks of ``tasks/prefect_tasks.py`` (what ``scan-edge reproduce`` and
the ``reprofile`` flow run) and tests all call these, so a stage does the same thing
whichever door it came through. No Prefect here (it is imported by the tasks that wrap
these functions), only ``nas_core`` and the machine's CPU lock.

By concern, each module readable on its own:

* ``common``: params sections, the pipeline's search runs, resume stamps, messages;
* ``data``: the dataset; ``training``: supernet, pairs, predictor and the torchrun launcher;
* ``latency``: runtime record, LUT, calibration, baselines, and how a device is reached;
* ``search``; ``downstream``: fine-tune, transfer, detection; ``report``;
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

Everything is re-exported here (``from tasks import stages; stages.stage_search(...)``).
A test that replaces a helper must patch the module that looks it up (e.g.
``tasks.stages.training._torchrun``), not this package.
"""
from __future__ import annotations

from tasks.stages.common import (DATA_ROOT, OURS, Layout, Paths, SearchRun, _require, _say, finetune_baselines,
                                 input_digest, parse_target, pipeline_section, resolve_model, resume_or_restart,
                                 search_devices, search_runs, section)
from tasks.stages.data import DATASET_PATH_KEYS, stage_dataset
from tasks.stages.downstream import (detection_dataset, run_detection, run_finetune, run_transfer, stage_detection,
                                     stage_finetune, stage_transfer)
from tasks.stages.latency import (_BOARD_VERSIONS, BOARD_VERSION_TTL_S, _access_of, _measurable, device_access,
                                  device_profile, device_runtime_version, run_calibration, run_lut, runtime_identity,
                                  stage_baselines, stage_calibration, stage_lut, stage_runtime)
from tasks.stages.planner import Step, find_step, pipeline_steps
from tasks.stages.registry import STAGES, StageInfo, _step_devices, params_for
from tasks.stages.report import stage_report
from tasks.stages.search import search_setup, searched_arch, stage_search, target_latencies
from tasks.stages.training import (_launch_ranks, _torchrun, run_predictor, run_supernet, stage_pairs,
                                   stage_predictor, stage_supernet, torchrun_command)

__all__ = [
    "BOARD_VERSION_TTL_S", "DATASET_PATH_KEYS", "DATA_ROOT", "OURS", "STAGES", "Layout", "Paths", "SearchRun",
    "StageInfo", "Step", "_BOARD_VERSIONS", "_access_of", "_launch_ranks", "_measurable", "_require", "_say",
    "_step_devices", "_torchrun", "detection_dataset", "device_access", "device_profile", "device_runtime_version",
    "find_step", "finetune_baselines", "input_digest", "params_for", "parse_target", "pipeline_section",
    "pipeline_steps", "resolve_model", "resume_or_restart", "run_calibration", "run_detection", "run_finetune",
    "run_lut", "run_predictor", "run_supernet", "run_transfer", "runtime_identity", "search_devices", "search_runs",
    "search_setup", "searched_arch", "section", "stage_baselines", "stage_calibration", "stage_dataset",
    "stage_detection", "stage_finetune", "stage_lut", "stage_pairs", "stage_predictor", "stage_report",
    "stage_runtime", "stage_search", "stage_supernet", "stage_transfer", "target_latencies", "torchrun_command",
]
