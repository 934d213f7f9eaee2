"""The search stage: one search run (devices x target [x params bound]) and its summary."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from nas_core.io import read_json, write_json
from nas_core.layout import DATA_ROOT, Layout
from nas_core.search_algorithm import run_name
from nas_core.search_report import first_round_fidelity, measured_latency
from nas_core.search_run import REFERENCE_MODEL, load_setup, reference_latency_ms, run_search
from tasks import stage_lock
from tasks.stages.common import Paths, SearchRun, _require, _say, parse_target
from tasks.stages.latency import _measurable, device_access, device_profile
from tasks.stages.space import search_space


def target_latencies(run: SearchRun, layout: Layout) -> dict[str, float]:
    """Each device's latency target in ms (``<k>x``: k times MobileNetV2 measured there)."""
    unit, value = parse_target(run.target)
    if unit == "ms":
        return {device: value for device in run.devices}
    return {device: round(value * reference_latency_ms(layout.baselines(device), device, REFERENCE_MODEL), 3)
            for device in run.devices}


def search_setup(params: Mapping[str, Any], devices: Sequence[str], *, predictor: str | os.PathLike,
                 lut_dir: str | os.PathLike, out_dir: str | os.PathLike, fits: Mapping[str, Path] | None = None):
    """``nas_core.search_run.load_setup`` for ``devices`` profiled as every stage profiles them
    (:func:`device_profile`), in the space of ``search_space:``, each device's LUT with its
    current fit (``calibration.current_fit``: the second round's) unless ``fits`` names one.
    Shared by the search stage, the controls, the recalibration and ``scan-edge search``."""
    return load_setup(params, {device: device_profile(params, device) for device in devices},
                      predictor=predictor, lut_dir=lut_dir, out_dir=out_dir, space=search_space(params), fits=fits)


def stage_search(params: Mapping[str, Any], devices: str | Sequence[str], target: str | float,
                 params_m: float | None = None, root: str | os.PathLike = DATA_ROOT, measure: bool = True) -> Paths:
    """Evolutionary search (``search:``) for one run; then meet the target on the device.

    ``target``: ``"<k>x"`` or ``"<ms>ms"`` (a bare number means ms). With ``measure`` (and
    every device usable here) the best candidates are measured on the device and the most
    accurate within [-3 %, 0] of the target is returned (``search.refine``). Each search
    round holds the CPU lock shared, each measurement exclusively
    (``nas_core.search_run.run_search``). Writes ``search/<run>/`` and its summary
    ``search/<run>.json``; a target that is not met is reported there (``within: false``),
    not raised.
    """
    devices = [devices] if isinstance(devices, str) else list(devices)
    target = f"{target}ms" if isinstance(target, (int, float)) else str(target)
    run = SearchRun(tuple(devices), target, params_m)
    layout = Layout(root)
    for device in devices:
        _require(layout.lut_paths(device).fit, f"the calibrated LUT of {device} (scan-edge stage calibration "
                                                f"--device {device})")
    fits = {device: layout.lut_paths(device).search_fit for device in devices}
    for device, fit in fits.items():
        _require(fit, f"the second calibration round of {device} (scan-edge stage recalibration --device {device})")
    _require(layout.predictor, "the accuracy predictor (scan-edge stage predictor)")
    out_dir = layout.search_dir(run.key)
    targets = target_latencies(run, layout)
    setup = search_setup(params, devices, predictor=layout.predictor, lut_dir=layout.lut_dir, out_dir=out_dir,
                         fits=fits)
    measure = measure and all(_measurable(params, d) is not None for d in devices)
    max_params = None if params_m is None else float(params_m) * 1e6
    accesses = {d: device_access(params, d, root) for d in devices} if measure else None
    record, within = run_search(setup, targets, max_params, measure=measure, say=_say, lock=stage_lock,
                                accesses=accesses)
    name = run_name(targets, max_params)
    _remove_other_runs(out_dir, name)
    summary = {"run": run.key, "target": run.target, "targets_ms": targets, "params_m": params_m,
               "arch_json": str(out_dir / f"{name}.arch.json"), "within": bool(within), "measured": measure,
               **{k: record.get(k) for k in ("name", "arch_id", "compact", "predicted_accuracy", "latency_ms",
                                             "params", "macs")},
               "measured_ms": measured_latency(out_dir, name, record["arch_id"]),
               **first_round_fidelity(record)}
    write_json(layout.search_summary(run.key), summary)
    return {"search": out_dir, "arch": out_dir / f"{name}.arch.json", "summary": layout.search_summary(run.key)}


def _remove_other_runs(out_dir: Path, keep: str) -> None:
    """A run folder holds one search: files of an earlier target (other ms) are removed."""
    for path in out_dir.iterdir():
        if path.is_file() and not path.name.startswith(f"{keep}."):
            path.unlink()


def searched_arch(layout: Layout, run_key: str) -> Path:
    """The ``.arch.json`` a search run chose (from its summary)."""
    summary = layout.search_summary(run_key)
    _require(summary, f"the search {run_key} (scan-edge stage search)")
    return layout.search_dir(run_key) / Path(read_json(summary)["arch_json"]).name  # wherever the root moved
