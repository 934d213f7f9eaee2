"""The recalibration stage: a device's LUT calibrated a second time, where the searches land.

The calibration stage runs beside the supernet's training, before any accuracy predictor, so
the search-like subnets it measures come from searches on a stand-in for accuracy
(``nas_core.latency.subnet_sampling.Frontier``). Once the predictor exists, this stage runs
the search stage's own evolution (``search:``'s settings, on the first round's fit) at targets
spread over ``recalibration.band`` x the device's MobileNetV2, times the subnets it returns
as the calibration timed its own, and refits (``nas_core.latency.calibration.recalibrate``).
The searches then read the second round's fit (``calibration.current_fit``).
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import Any, Mapping

from nas_core.io import read_parquet
from nas_core.latency.calibration import RecalibrationSettings, recalibrate
from nas_core.latency.subnet_sampling import ROLES, SubnetChoice
from nas_core.layout import DATA_ROOT, Layout
from nas_core.search_constraints import InfeasibleConstraintError
from nas_core.search_run import REFERENCE_MODEL, reference_latency_ms, run_search
from tasks.stages.common import Paths, _require, _say, input_digest, resume_or_restart, section
from tasks.stages.latency import _locked, _measurable, device_access
from tasks.stages.runtimes import device_profile, runtime_identity
from tasks.stages.search import search_setup
from tasks.stages.space import search_space


def stage_recalibration(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Refit ``device``'s calibrated LUT with the subnets the accuracy predictor's searches pick
    (``recalibration:``; ``subnets: 0`` or a device that cannot be measured: the first round's
    fit carried over as the second round's, so searches always read one file)."""
    layout = Layout(root)
    paths = layout.lut_paths(device)
    _require(paths.fit, f"the calibrated LUT of {device} (scan-edge stage calibration --device {device})")
    second = paths.second_round()
    outputs = {"calibration": second.calibration, "fit": second.fit, "figure": second.figure}
    settings = RecalibrationSettings.from_dict(section(params, "recalibration"))
    profile = _measurable(params, device)
    space = search_space(params)
    if profile is None or not settings.subnets:
        why = "recalibration.subnets is 0" if profile is not None else "not measurable here"
        recalibrate(device_profile(params, device), paths, [], space=space, progress=False)
        _say(f"recalibration {device}: {why}; the first round's fit carried over -> {second.fit}")
        return outputs
    _require(layout.predictor, "the accuracy predictor (scan-edge stage predictor)")
    reference_ms = reference_latency_ms(layout.baselines(device), device, REFERENCE_MODEL)
    searching = {key: section(params, "search").get(key) for key in ("evolution", "num_classes")}
    identity = {"recalibration": section(params, "recalibration"), "search": searching,
                "inputs": input_digest([paths.lut, paths.fit, paths.calibration, layout.predictor]),
                "reference_ms": reference_ms, "runtime": runtime_identity(params, device, root)}
    resume = resume_or_restart(layout, f"recalibration@{device}", identity)
    subnets, targets = searched_subnets(params, device, layout, settings, reference_ms)
    access = device_access(params, device, root)
    with _locked(profile):
        report = recalibrate(profile, paths, subnets, space=space, access=access, resume=resume,
                             progress=sys.stderr.isatty(),
                             searched={"band": list(settings.band), "reference_ms": reference_ms,
                                       "targets_ms": targets})
    _say(report.summary())
    return outputs


def searched_subnets(params: Mapping[str, Any], device: str, layout: Layout, settings: RecalibrationSettings,
                     reference_ms: float) -> tuple[list[SubnetChoice], list[float]]:
    """The subnets the search stage's evolution returns at ``settings.targets_ms`` on the first
    round's fit (no measuring), distinct and new to the first round's table, alternately
    calibration and validation; and the targets that gave one. A target below the fastest
    subnet is skipped, with a message."""
    paths = layout.lut_paths(device)
    shutil.rmtree(paths.searches, ignore_errors=True)  # its searches' files: this run's only
    setup = search_setup(params, [device], predictor=layout.predictor, lut_dir=layout.lut_dir,
                         out_dir=paths.searches, fits={device: paths.fit})
    taken = set(read_parquet(paths.calibration)["arch_id"])
    archs, targets = [], []
    for target in settings.targets_ms(reference_ms):
        try:
            record, _ = run_search(setup, {device: round(target, 3)}, measure=False, force=True,
                                   say=lambda _: None)
        except InfeasibleConstraintError as error:
            _say(f"recalibration {device}: skipping {target:.3f} ms ({error})")
            continue
        arch = setup.space.from_dict(record["arch"])
        if arch.arch_id not in taken:
            taken.add(arch.arch_id)
            archs.append(arch)
            targets.append(round(target, 3))
    _say(f"recalibration {device}: {len(archs)} searched subnets at {', '.join(f'{t:.2f}' for t in targets)} ms")
    return [SubnetChoice(arch, ROLES[index % 2], "searched") for index, arch in enumerate(archs)], targets
