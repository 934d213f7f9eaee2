"""Where a device runs, and the one door every device-side measurement goes through.

A device profile says where its runtime is (``DeviceProfile.location``):

* ``local``: on this machine. Models are timed in this process
  (``timing.profile_models``), as they always were.
* ``worker``: on a board that runs a Prefect worker serving a work pool. A measurement is
  a profiling bundle (ONNX models + manifest + the torch-free runner, ``bundle.make_bundle``)
  written to a folder the board can read; the host starts the board's ``run-bundle``
  deployment on it and waits for the table (``tasks.board_worker.WorkerDevice``: Prefect
  lives in ``tasks``, never in ``nas_core``).
* ``bundle``: offline. A measurement is a bundle folder under
  ``location_options.bundles_dir/<device>/<job>/``; the call stops with
  :class:`MeasurementsPending`, which names the folder and the command to run on the board.
  Once the board's ``results.parquet`` is copied back into that folder, the same call (the
  same stage, re-run) reads it.

Every measurement of the pipeline is a :class:`TimingJob` handed to :meth:`DeviceAccess.time`:
the LUT's blocks, the calibration subnets, MobileNetV2 and the other baselines, the search's
candidates, the fine-tuned and detection models. The runtime version that ``reprofile``
compares is :meth:`DeviceAccess.runtime_version`: for a board, the version the board
reports, never this machine's. A ``worker`` or ``bundle`` device is never timed here:
:class:`LocalDevice` refuses any profile whose location is not ``local``.

Results of remote jobs are checked before use (:func:`check_remote_results`): measured
with the profile's settings, every model of the job present, and the runtime version the
board reports now (a bundle timed before a runtime upgrade is refused, naming both versions).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from nas_core.io import code_version, read_json, write_json
from nas_core.latency import timing
from nas_core.latency.bundle import RUNNER_NAME, make_bundle
from nas_core.latency.devices import LOCATIONS, DeviceProfile, check_usable
from nas_core.latency.timing import ModelEntry, TimingConfig

RESULTS_NAME = "results.parquet"      # what the board's runner writes in a job folder
RUNTIME_REPORT = "device_runtime.json"  # what the board says it runs (runner --runtime-report)
JOB_SIDECAR = "job.json"


class MeasurementsPending(RuntimeError):
    """A bundle device's measurements are not back yet: the message says what to run where."""

    def __init__(self, device: str, job_dir: Path, message: str):
        super().__init__(message)
        self.device, self.job_dir = device, Path(job_dir)


@dataclasses.dataclass(frozen=True)
class TimingJob:
    """Models to time on one device, as one unit of work (one bundle for a board).

    ``name`` is unique per device and purpose (``lut``, ``calibration``, ``baselines``,
    ``search-<run>-r<round>``, ``finetune-<model>``): a board's job folder is named after it.
    ``entries`` are ONNX files (``ModelEntry``); ``reference_id`` the drift yardstick (an
    entry id, or None: the first id); the other fields as ``timing.profile_models``.
    """

    name: str
    entries: tuple[ModelEntry, ...]
    reference_id: str | None = None
    config: TimingConfig | None = None
    seed: int = 0
    check_every: int = 10
    drift_tolerance: float = 0.10
    max_retries: int = 2
    drift_pause_s: float = 2.0
    extra_provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # The runtime version the results must have been measured with (e.g. the LUT's, for the
    # calibration and the search): a board upgraded since the LUT gives numbers that do not belong.
    expected_runtime_version: str | None = None
    # Paired timing (TimingConfig.paired_reference): the scale every job of the device shares,
    # the LUT reference's (``lut.yardstick``); None: this job's reference sets its own.
    yardstick_ms: float | None = None
    # Whole networks (calibration subnets, search candidates, fine-tuned and detection models):
    # a paired access times them against the device's network yardstick when it has one.
    whole_networks: bool = False

    def ids(self) -> list[str]:
        return [e.id for e in self.entries]


class DeviceAccess(Protocol):
    """How the pipeline reaches a device: its runtime version, and timing jobs."""

    profile: DeviceProfile

    @property
    def location(self) -> str: ...

    def runtime_version(self) -> str | None: ...

    def time(self, job: TimingJob, out_path: str | os.PathLike, *, resume: bool = True, progress: bool = True,
             open_fn: Callable | None = None, on_measured: Callable | None = None) -> list[dict]: ...


def host_lock_mode(profile: DeviceProfile) -> str | None:
    """The machine's CPU lock around a measurement on ``profile``: ``exclusive`` when the
    timing runs on this machine's cores (a local device, or a board simulated here:
    ``location_options.shares_host_cpu``), None for a real board, which nothing here disturbs."""
    if profile.is_local or profile.location_options.get("shares_host_cpu"):
        return "exclusive"
    return None


def executor_identity() -> dict:
    """Which process timed a table: recorded so nobody has to trust where a number came from."""
    return {"host": socket.gethostname(), "python": sys.executable, "pid": os.getpid()}


# --------------------------------------------------------------------------- local
@dataclasses.dataclass
class LocalDevice:
    """The profile's runtime on this machine (``location: local``)."""

    profile: DeviceProfile
    location = "local"

    def __post_init__(self):
        if self.profile.location != "local":
            raise ValueError(f"device {self.profile.name!r} runs at location {self.profile.location!r}; "
                             "it is never timed on this machine")

    def runtime_version(self) -> str | None:
        return check_usable(self.profile).runtime_version

    def time(self, job: TimingJob, out_path, *, resume: bool = True, progress: bool = True,
             open_fn: Callable | None = None, on_measured: Callable | None = None) -> list[dict]:
        usability = check_usable(self.profile)
        if not usability.usable:
            raise RuntimeError(f"device {self.profile.name!r} is not usable here: {usability.reason}")
        clock = timing.settings_clock(self.profile.to_settings())
        return timing.profile_models(
            job.entries, self.profile.to_settings(), out_path, reference_id=job.reference_id, seed=job.seed,
            resume=resume, drift_tolerance=job.drift_tolerance, config=job.config, check_every=job.check_every,
            max_retries=job.max_retries, drift_pause_s=job.drift_pause_s, open_fn=open_fn, runtime=(usability.runtime_name, usability.runtime_version),
            code_version=code_version(), progress=progress, on_measured=on_measured, clock=timing.CLOCKS[clock],
            yardstick_ms=job.yardstick_ms,
            extra_provenance={**job.extra_provenance, "clock": clock, "location": "local",
                              "executor": executor_identity()})


# --------------------------------------------------------------------------- remote: shared pieces
def job_folder(root: str | os.PathLike, device: str, job: str) -> Path:
    """``<root>/<device>/<job>``, the job name made safe for a folder."""
    safe = "".join(ch if ch.isalnum() or ch in "-_.@" else "_" for ch in job)
    return Path(root) / device / safe


def write_job_bundle(job: TimingJob, profile: DeviceProfile, folder: Path) -> Path:
    """The job as a bundle in ``folder`` (rewritten when the job's models changed)."""
    sidecar = {"job": job.name, "device": profile.name, "ids": job.ids(), "space": job.extra_provenance.get("space"),
               "code_version": code_version()}
    existing = folder / JOB_SIDECAR
    if existing.exists() and read_json(existing).get("ids") == sidecar["ids"] and (folder / RUNNER_NAME).exists():
        return folder
    if folder.exists():  # another job's models under this name: never mix their results
        shutil.rmtree(folder)
    make_bundle(job.entries, profile, folder, reference_id=job.reference_id, seed=job.seed, config=job.config,
                drift_tolerance=job.drift_tolerance, check_every=job.check_every, yardstick_ms=job.yardstick_ms)
    write_json(existing, sidecar)
    return folder


def check_job_folder(folder: Path, job: TimingJob) -> None:
    """Refuse a job folder made for other models or another search space than ``job``."""
    sidecar = read_json(folder / JOB_SIDECAR) if (folder / JOB_SIDECAR).exists() else {}
    if sidecar.get("space") != job.extra_provenance.get("space"):
        raise ValueError(f"{folder} was made for search space {sidecar.get('space')!r}, this job is for "
                         f"{job.extra_provenance.get('space')!r}: its results are not used (delete the folder "
                         "to measure again)")
    if sidecar.get("ids") != job.ids():
        raise ValueError(f"{folder} holds another job's models ({len(sidecar.get('ids') or [])} models, not this "
                         f"job's {len(job.entries)}): delete it to measure this job")


def check_remote_results(path: Path, rows: Sequence[Mapping], provenance: Mapping, job: TimingJob,
                         profile: DeviceProfile, runtime_version: str | None) -> None:
    """Refuse results of other settings, an unfinished run, or another runtime version (the
    job's expected one, else ``runtime_version``: what the board reports now)."""
    runtime_version = job.expected_runtime_version or runtime_version
    identity = provenance.get("identity") or {}
    keys = ("backend", "provider", "precision", "threads", "batch_size", "resolution")
    differences = [f"{k}: {identity.get(k)!r} on the device, {getattr(profile, k)!r} in the profile"
                   for k in keys if str(identity.get(k)) != str(getattr(profile, k))]
    if differences:
        raise ValueError(f"{path} was measured with other settings than device {profile.name!r} "
                         f"({'; '.join(differences)}); run the bundle again without overriding them")
    if runtime_version is not None and str(identity.get("runtime_version")) != str(runtime_version):
        raise ValueError(f"{path} was measured with {identity.get('runtime')} {identity.get('runtime_version')}, "
                         f"but device {profile.name!r} is profiled with {runtime_version}: the device's runtime "
                         f"changed (re-profile it: scan-edge reprofile), and these results are not used")
    measured = {row["id"] for row in rows}
    missing = [i for i in job.ids() if i not in measured]
    if missing:
        raise ValueError(f"{path} has no timing for {len(missing)} of {len(job.entries)} models (e.g. "
                         f"{', '.join(missing[:3])}): the run did not finish; run the bundle again, it resumes")


def read_results(path: Path) -> tuple[list[dict], dict]:
    """A results table, or a clear error for a truncated / damaged copy."""
    try:
        return timing.read_rows(path)
    except ValueError as err:
        raise ValueError(f"{err}. Copy the file from the device again (a transfer may have been cut short)") from None


def copy_rows(rows: Sequence[Mapping], provenance: Mapping, out_path: str | os.PathLike) -> list[dict]:
    """Keep a remote job's table where a local one would be (the stage's work folder)."""
    timing.write_rows(out_path, rows, provenance)
    return list(rows)


# --------------------------------------------------------------------------- bundle (offline)
@dataclasses.dataclass
class BundleDevice:
    """A board reached by hand: bundles out, ``results.parquet`` back (``location: bundle``)."""

    profile: DeviceProfile
    bundles_dir: Path
    location = "bundle"

    def __post_init__(self):
        self.bundles_dir = Path(self.bundles_dir)

    @property
    def jobs_folder(self) -> Path:
        """The folder of this device's jobs (one sub-folder per job)."""
        return self.bundles_dir / self.profile.name

    def runtime_version(self) -> str | None:
        """The version in the newest runtime report the board sent back (None: none yet)."""
        reports = sorted(self.jobs_folder.glob(f"*/{RUNTIME_REPORT}"),
                         key=lambda p: p.stat().st_mtime)
        if not reports:
            return self.profile.options.get("runtime_version")
        return read_json(reports[-1]).get("runtime_version")

    def time(self, job: TimingJob, out_path, *, resume: bool = True, progress: bool = True,
             open_fn: Callable | None = None, on_measured: Callable | None = None) -> list[dict]:
        folder = job_folder(self.bundles_dir, self.profile.name, job.name)
        results = folder / RESULTS_NAME
        if results.exists():
            check_job_folder(folder, job)
            rows, provenance = read_results(results)
            check_remote_results(results, rows, provenance, job, self.profile, _reported_version(folder))
            return copy_rows(rows, {**provenance, "location": "bundle", "job": job.name}, out_path)
        write_job_bundle(job, self.profile, folder)
        raise MeasurementsPending(self.profile.name, folder, pending_message(self.profile.name, job, folder))


def _reported_version(folder: Path) -> str | None:
    report = folder / RUNTIME_REPORT
    return read_json(report).get("runtime_version") if report.exists() else None


def pending_message(device: str, job: TimingJob, folder: Path) -> str:
    return (f"device {device!r} is reached through bundles: {len(job.entries)} models of job {job.name!r} wait in "
            f"{folder}. On the board: `python {RUNNER_NAME} . --out {RESULTS_NAME} --runtime-report "
            f"{RUNTIME_REPORT}` inside that folder (it resumes if interrupted); copy {RESULTS_NAME} and "
            f"{RUNTIME_REPORT} back into {folder}, then run the same command here again")


def import_results(results: str | os.PathLike, bundles_dir: str | os.PathLike, device: str,
                   job_prefix: str = "") -> Path:
    """Put a board's ``results.parquet`` (copied back by hand) into the pending job folder it
    answers: the one of ``device`` (name starting with ``job_prefix``) whose models the file
    times. Returns that folder; the next run of the same stage or search reads it."""
    results = Path(results)
    rows, _ = read_results(results)
    measured = {row["id"] for row in rows}
    pending = [f for f in sorted((Path(bundles_dir) / device).glob(f"{job_prefix}*"))
               if (f / JOB_SIDECAR).exists() and not (f / RESULTS_NAME).exists()]
    matching = [f for f in pending if set(read_json(f / JOB_SIDECAR)["ids"]) <= measured]
    if not matching:
        listed = ", ".join(f.name for f in pending) or "none"
        raise ValueError(f"{results} times {len(measured)} models, but no pending job of device {device!r} "
                         f"(under {Path(bundles_dir) / device}; pending: {listed}) is made of them: is it the "
                         "results of another bundle, or of an unfinished run (run it again on the board: it resumes)?")
    for folder in matching:
        shutil.copyfile(results, folder / RESULTS_NAME)
    return matching[0]


# --------------------------------------------------------------------------- paired timing
@dataclasses.dataclass(frozen=True)
class Yardstick:
    """The scale of a device's paired timings (``timing.time_paired``): the model every call
    is paired with and the milliseconds it stands for.

    A device has two, on one scale. The **block yardstick** is the LUT's reference block at
    its baseline when the LUT was timed (``lut.yardstick``): blocks and the baselines are
    timed against it. The **network yardstick** is the device's MobileNetV2 at the latency
    the baselines measured for it on that scale (``baselines.network_yardstick``): whole
    networks are timed against it. Why two: the host's speed moves by ±30 % within seconds,
    and a pair cancels what slows both of its calls alike. A block of a few hundred
    microseconds lives in the core's caches; a 5 ms network streams its weights from memory,
    so memory contention slows a network and not the block. Measured on the smoke run's 60
    ORT calibration subnets re-timed in three passes: a subnet moved 4.2 % between passes
    paired with the block, 1.6 % paired with MobileNetV2, and the held-out error of the
    calibrated LUT fell from 3.6 % to 1.9-2.2 % MAPE (benchmarks/README.md). It also makes
    the search's check exact in the unit it is asked in: ``k x MobileNetV2``."""

    entry: ModelEntry
    ms: float


def with_yardstick(job: TimingJob, yardstick: Yardstick | None) -> tuple[TimingJob, str | None]:
    """``job`` timed against ``yardstick`` (its entry becomes the job's reference), and the id
    of the entry added for it (None: already there, or the job left as it is: no yardstick,
    or the job brings its own scale)."""
    if yardstick is None or job.yardstick_ms is not None:
        return job, None
    ids = job.ids()
    added = None if yardstick.entry.id in ids else yardstick.entry.id
    entries = job.entries if added is None else (yardstick.entry, *job.entries)
    return dataclasses.replace(job, entries=entries, reference_id=yardstick.entry.id, yardstick_ms=yardstick.ms), added


Scale = Yardstick | Callable[[], Yardstick | None] | None


class PairedAccess:
    """A device access whose jobs are all timed against the device's yardsticks: whole
    networks against the network yardstick when there is one, everything else (and networks
    before the baselines exist) against the block yardstick, whose scale overrides the one a
    job brings. The yardstick's own row is dropped from jobs that did not ask for it. A
    yardstick may be a function giving it (or None: not measured yet), called at the first
    job that needs it, so that making an access reads no file and exports nothing."""

    def __init__(self, inner: DeviceAccess, yardstick: Scale, network_yardstick: Scale = None):
        self.inner = inner
        self._scales = {"blocks": yardstick, "networks": network_yardstick}
        self.profile = inner.profile

    def _scale(self, kind: str) -> Yardstick | None:
        if callable(self._scales[kind]):
            self._scales[kind] = self._scales[kind]()
        return self._scales[kind]

    @property
    def yardstick(self) -> Yardstick | None:
        return self._scale("blocks")

    @property
    def network_yardstick(self) -> Yardstick | None:
        return self._scale("networks")

    @property
    def location(self) -> str:
        return self.inner.location

    def runtime_version(self) -> str | None:
        return self.inner.runtime_version()

    def time(self, job: TimingJob, out_path, **kwargs) -> list[dict]:
        network = self.network_yardstick if job.whole_networks else None
        if network is not None:
            paired, added = with_yardstick(dataclasses.replace(job, yardstick_ms=None), network)
        else:
            paired, added = with_yardstick(job, self.yardstick)
        rows = self.inner.time(paired, out_path, **kwargs)
        return [row for row in rows if row["id"] != added]


def device_access(profile: DeviceProfile, *, bundles_dir: str | os.PathLike | None = None,
                  worker_factory: Callable[[DeviceProfile], DeviceAccess] | None = None,
                  yardstick: Scale = None, network_yardstick: Scale = None) -> DeviceAccess:
    """The access of ``profile``'s location. ``worker`` needs ``worker_factory`` (the caller's
    Prefect side, ``tasks.board_worker``); ``bundle`` uses ``location_options.bundles_dir``
    or ``bundles_dir``. With a ``yardstick`` and the device option ``paired_reference``,
    every job is timed against it, whole networks against ``network_yardstick`` when given
    (``PairedAccess``)."""
    access = _access_at_location(profile, bundles_dir, worker_factory)
    if yardstick is not None and timing.paired_timing(profile.to_settings()):
        return PairedAccess(access, yardstick, network_yardstick)
    return access


def _access_at_location(profile: DeviceProfile, bundles_dir, worker_factory) -> DeviceAccess:
    if profile.location == "local":
        return LocalDevice(profile)
    if profile.location == "bundle":
        folder = profile.location_options.get("bundles_dir") or bundles_dir
        if not folder:
            raise ValueError(f"device {profile.name!r}: a bundle device needs location_options.bundles_dir")
        return BundleDevice(profile, Path(folder))
    if profile.location == "worker":
        if worker_factory is None:
            raise ValueError(f"device {profile.name!r} runs on a Prefect worker; measure it through the pipeline's "
                             "stages (tasks.board_worker), which reach the work pool")
        return worker_factory(profile)
    raise ValueError(f"device {profile.name!r}: unknown location {profile.location!r}; known: {', '.join(LOCATIONS)}")
