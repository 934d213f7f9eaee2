"""The device stages: runtime record, LUT, calibration, baselines; and how a device is reached.

Every measurement goes through the device's access (``nas_core.latency.location``: this
machine, a board's Prefect worker, or bundles), holding the CPU lock as
``location.host_lock_mode`` says, so nothing meant for a board is timed on the host.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from nas_core.io import read_provenance
from nas_core.latency import baselines as baseline_timing
from nas_core.latency.calibration import CalibrationSettings, calibrate
from nas_core.latency.devices import check_usable
from nas_core.latency.location import device_access as access_of
from nas_core.latency.location import host_lock_mode
from nas_core.latency.lut import DEFAULT_REVISIT_SHARE, build_lut, yardstick
from nas_core.latency.timing import TimingConfig
from nas_core.layout import DATA_ROOT, Layout
from nas_core.search_run import REFERENCE_MODEL, reference_latency_ms
from nas_core.search_space import space_identity
from tasks import stage_lock
from tasks.board_worker import worker_factory
from tasks.stages.common import Paths, _require, _say, input_digest, resume_or_restart, section
from tasks.stages.runtimes import device_profile, runtime_identity
from tasks.stages.space import search_space


def device_access(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT,
                  paired: bool = True):
    """How the pipeline reaches ``device`` (``nas_core.latency.location``): this machine, a
    board's Prefect worker (``tasks.board_worker``), or bundles under ``<root>/bundles/``.
    With ``paired`` (and the device option ``paired_reference``) its jobs are timed against
    the yardstick of its LUT (``nas_core.latency.lut.yardstick``), whole networks against its
    MobileNetV2 once the baselines stage timed it (``baselines.network_yardstick``); the LUT
    stage itself sets the scale, so it asks for ``paired=False``."""
    layout = Layout(root)
    profile = device_profile(params, device)
    if not paired:
        return access_of(profile, bundles_dir=layout.bundles, worker_factory=worker_factory)
    # Read at the first job that needs them: making an access reads no file.
    blocks = lambda: yardstick(profile, layout.lut_paths(device))  # noqa: E731
    networks = lambda: baseline_timing.network_yardstick(profile, layout.baselines(device),  # noqa: E731
                                                         layout.baselines_work)
    return access_of(profile, bundles_dir=layout.bundles, worker_factory=worker_factory, yardstick=blocks,
                     network_yardstick=networks)


def _access_of(params: Mapping[str, Any], root: Path) -> Callable:
    """``profile -> DeviceAccess`` for library code that measures models (fine-tune, detection)."""
    return lambda profile: device_access(params, profile.name, root)


def _locked(profile):
    """The CPU lock around a measurement on ``profile`` (``location.host_lock_mode``)."""
    mode = host_lock_mode(profile)
    return stage_lock(mode) if mode else contextlib.nullcontext()


def _measurable(params: Mapping[str, Any], device: str):
    """The profile when the pipeline can measure it (here, or on its board); None (with the
    reason printed) when not."""
    profile = device_profile(params, device)
    if not profile.is_local:
        return profile
    usability = check_usable(profile)
    if not usability.usable:
        _say(f"{device}: not measurable here ({usability.reason})")
        return None
    return profile


def _imported_elsewhere(path: Path) -> bool:
    """A LUT measured on a remote device through a profiling bundle (``scan-edge profile import``)."""
    return path.exists() and read_provenance(path).get("source") == "bundle"


def _timing(values: Mapping[str, Any]):
    """A section's ``timing:`` as a ``TimingConfig`` (None: the default timing)."""
    return TimingConfig.from_dict(values["timing"]) if values.get("timing") else None


def stage_lut(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Time every block of the search space on ``device`` (``lut:``), where it runs: here
    (exclusive CPU lock), or on its board (``location``: a work pool's worker, or bundles).

    Continues an interrupted build of the same settings and runtime; otherwise re-times
    everything. A LUT imported by hand (``scan-edge profile import``) for a device the
    pipeline cannot reach is kept as it is.
    """
    layout = Layout(root)
    paths = layout.lut_paths(device)
    profile = _measurable(params, device)
    if profile is None:
        if _imported_elsewhere(paths.lut):
            _say(f"lut {device}: keeping the LUT imported from a profiling bundle ({paths.lut})")
            return {"lut": paths.lut}
        raise ValueError(f"device {device!r} cannot be measured on this machine and has no imported LUT: give it "
                         f"a location (devices.{device}.location: worker | bundle), or run `scan-edge profile bundle "
                         f"--device {device} --out DIR`, the bundle's runner on the device, then `scan-edge profile "
                         f"import --device {device} --bundle DIR`")
    identity = {"lut": section(params, "lut"), "runtime": runtime_identity(params, device, root),
                **space_identity(search_space(params).spec)}
    resume = resume_or_restart(layout, f"lut@{device}", identity)
    frame = run_lut(params, profile, paths, resume=resume, progress=sys.stderr.isatty(),
                    access=device_access(params, device, root, paired=False))
    _say(f"lut {device}: {len(frame)} blocks, {int(frame['drift_flag'].sum())} drift-flagged -> {paths.lut}")
    return {"lut": paths.lut}


def run_lut(params: Mapping[str, Any], profile, paths, *, resume: bool = False, progress: bool = True, access=None):
    """Time the blocks of the search space (``search_space:``; ``lut:``'s ``blocks`` / ``limit`` select a part) on
    ``profile`` (through ``access``; default this machine) into ``paths`` (``LutPaths``),
    holding the CPU lock as ``location.host_lock_mode`` says; returns the table
    (``nas_core.latency.lut.build_lut``). The work of the LUT stage and of ``scan-edge lut build``."""
    lut = section(params, "lut")
    with _locked(profile):
        return build_lut(profile, paths, space=search_space(params), block_filter=lut.get("blocks"),
                         limit=lut.get("limit"), resume=resume,
                         reference_id=lut.get("reference_block"), seed=lut.get("seed", 0), config=_timing(lut),
                         check_every=lut.get("check_every", 10), drift_tolerance=lut.get("drift_tolerance", 0.10),
                         progress=progress, access=access, passes=int(lut.get("passes", 1)),
                         revisit_share=float(lut.get("revisit_share", DEFAULT_REVISIT_SHARE)))


def stage_calibration(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Measure subnets end to end on ``device`` (in the band around its MobileNetV2 latency,
    by default) and fit the LUT's latency model (``calibration:``)."""
    layout = Layout(root)
    paths = layout.lut_paths(device)
    _require(paths.lut, f"the LUT of {device} (scan-edge stage lut --device {device})")
    outputs = {"calibration": paths.calibration, "fit": paths.fit, "figure": paths.figure}
    profile = _measurable(params, device)
    if profile is None:
        if _imported_elsewhere(paths.lut) and paths.fit.exists():
            return outputs
        raise ValueError(f"device {device!r} cannot be measured here; its calibration comes with "
                         f"`scan-edge profile import --device {device}`")
    reference_ms = _reference_ms_if_needed(params, layout, device)
    identity = {"calibration": section(params, "calibration"), "lut": input_digest([paths.lut]),
                "reference_ms": reference_ms, "runtime": runtime_identity(params, device, root)}
    resume = resume_or_restart(layout, f"calibration@{device}", identity)
    access = device_access(params, device, root)
    report = run_calibration(params, profile, paths, resume=resume, progress=sys.stderr.isatty(),
                             reference_ms=reference_ms, access=access,
                             runtime_version=None if profile.is_local else access.runtime_version())
    _say(report.summary())
    return outputs


def _reference_ms_if_needed(params: Mapping[str, Any], layout: Layout, device: str) -> float | None:
    """MobileNetV2's latency on ``device`` (from its baselines) when the calibration samples a band around it."""
    if CalibrationSettings.from_dict(section(params, "calibration")).sampling != "band":
        return None
    return reference_latency_ms(layout.baselines(device), device, REFERENCE_MODEL)


def run_calibration(params: Mapping[str, Any], profile, paths, *, resume: bool = False, progress: bool = True,
                    runtime_version: str | None = None, reference_ms: float | None = None, access=None):
    """Time the calibration subnets of ``calibration:`` on ``profile`` (through ``access``;
    default this machine) and fit the latency model of the LUT in ``paths``, holding the CPU
    lock as ``location.host_lock_mode`` says; returns the report
    (``nas_core.latency.calibration.calibrate``). ``reference_ms``: MobileNetV2's latency
    (the ``band`` sampling). Subnets are drawn from the space of ``search_space:``. The work of
    the calibration stage and of ``scan-edge lut calibrate``."""
    settings = CalibrationSettings.from_dict(section(params, "calibration"))
    with _locked(profile):
        return calibrate(profile, paths, space=search_space(params), settings=settings, resume=resume,
                         runtime_version=runtime_version,
                         progress=progress, reference_ms=reference_ms, access=access)


def stage_baselines(params: Mapping[str, Any], device: str, root: str | os.PathLike = DATA_ROOT) -> Paths:
    """Time the comparison models (``baselines.models``, MobileNetV2 always) on ``device`` (Table 3),
    where it runs (a board's runtime times them on the board).

    MobileNetV2's latency here is what the ``<k>x`` search targets multiply, and what the
    calibration's band is centred on.
    """
    layout = Layout(root)
    profile = _measurable(params, device)
    if profile is None:
        raise ValueError(f"device {device!r} cannot be measured here: give absolute search targets ('<ms>ms') "
                         "for it, or give it a location (devices.<name>.location: worker | bundle)")
    baselines = section(params, "baselines")
    names = list(dict.fromkeys([REFERENCE_MODEL, *(baselines.get("models") or [])]))
    models = {name: baseline_timing.BASELINE_MODELS.get(name, profile.resolution) for name in names}
    out, workdir = layout.baselines(device), layout.baselines_work
    workdir.mkdir(parents=True, exist_ok=True)
    with _locked(profile):
        if profile.backend == "torch":
            frame = baseline_timing.measure_baselines([profile], models, out_path=out, workdir=workdir,
                                                      config=_timing(baselines), progress=True)
        else:
            frame = baseline_timing.measure_device_baselines(device_access(params, device, root), models,
                                                             out_path=out, workdir=workdir,
                                                             config=_timing(baselines), progress=True)
    failed = frame[frame["error"] != ""]
    if REFERENCE_MODEL in set(failed["model"]):
        raise RuntimeError(f"{REFERENCE_MODEL} could not be timed on {device}: "
                           f"{failed[failed['model'] == REFERENCE_MODEL]['error'].iloc[0]}")
    return {"baselines": out}
