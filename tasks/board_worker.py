"""A board reached through a Prefect work pool (``location: worker``): the Prefect side of
``nas_core.latency.location``.

The board runs ``prefect worker start --pool POOL`` in an environment with Prefect, numpy,
pyarrow and its runtime (no torch, no scan-edge), and serves the ``run-bundle`` flow of
``flows/device_profiling.py`` as a deployment (``scan-edge board deploy``). A measurement
is a job folder (bundle) under ``location_options.shared_dir`` (a folder both machines
see: an NFS or SSHFS mount; ``board_dir`` is the same folder as the board names it, when
it differs). :meth:`WorkerDevice.time` writes the bundle, starts the deployment on it,
waits, and reads ``results.parquet`` back; the runner on the board resumes a partial table,
so a worker that disappears mid-job loses only the model in flight: the next call (the
stage, re-run) starts the deployment again and the board continues where it stopped.

The host never times anything here. Every table it reads records the board's runtime
version and the board's Python (``executor``), which the simulated-board benchmark checks.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from prefect.deployments import run_deployment

from nas_core.io import read_json
from nas_core.latency.bundle import write_runner
from nas_core.latency.devices import DeviceProfile
from nas_core.latency.location import (RESULTS_NAME, RUNTIME_REPORT, TimingJob, check_remote_results, copy_rows,
                                       job_folder, read_results, write_job_bundle)

DEFAULT_TIMEOUT_S = 6 * 3600
FLOW_NAME = "run-bundle"  # flows/device_profiling.run_bundle_flow's name


class BoardJobError(RuntimeError):
    """A job on the board's worker did not finish (the message says what is kept and how to go on)."""


def deployment_name(profile: DeviceProfile) -> str:
    """``run-bundle/<deployment>`` (``location_options.deployment``, default the device's name)."""
    return f"{FLOW_NAME}/{profile.location_options.get('deployment') or profile.name}"


@dataclasses.dataclass
class WorkerDevice:
    """A board with a Prefect worker (``location: worker``)."""

    profile: DeviceProfile
    run_deployment: Callable[..., Any] | None = None  # tests may pass a stand-in; default prefect's
    location = "worker"

    def __post_init__(self):
        options = self.profile.location_options
        if not options.get("shared_dir"):
            raise ValueError(f"device {self.profile.name!r} (location worker) needs location_options.shared_dir: a "
                             "folder the host writes job bundles to and the board's worker reads")
        self.shared_dir = Path(options["shared_dir"])
        self.board_dir = Path(options.get("board_dir") or options["shared_dir"])
        self.timeout_s = float(options.get("timeout_s") or DEFAULT_TIMEOUT_S)

    # ---- the one operation the board runs: the run-bundle flow with some parameters
    def _on_board(self, what: str, **parameters) -> None:
        run = self.run_deployment or _prefect_run_deployment
        name = deployment_name(self.profile)
        try:
            flow_run = run(name=name, parameters=parameters, timeout=self.timeout_s)
        except Exception as err:  # noqa: BLE001 - an unreachable server or a missing deployment: say which
            raise BoardJobError(f"device {self.profile.name!r}: could not run {what} on the board through "
                                f"deployment {name!r} ({type(err).__name__}: {err}). Is PREFECT_API_URL the server "
                                f"the board's worker polls, and is the flow deployed (scan-edge board deploy "
                                f"--device {self.profile.name})?") from err
        state = getattr(flow_run, "state", None)
        if state is None or not state.is_completed():
            detail = getattr(state, "message", None) or getattr(state, "name", "no state")
            raise BoardJobError(f"device {self.profile.name!r}: {what} did not finish on the board ({detail}). "
                                "Measurements already made are kept; run the same command again to continue "
                                "where the board stopped")

    def _board_path(self, local: Path) -> str:
        return str(self.board_dir / local.relative_to(self.shared_dir))

    # ---- DeviceAccess
    def runtime_version(self) -> str | None:
        folder = self.shared_dir / self.profile.name / "_runtime"
        folder.mkdir(parents=True, exist_ok=True)
        runner = write_runner(folder)
        report = folder / RUNTIME_REPORT
        if report.exists():
            report.unlink()  # a report left from an earlier check must not answer for this one
        self._on_board("the runtime check", runtime_report=self._board_path(report), runner=self._board_path(runner),
                       backend=self.profile.backend)
        return read_json(report).get("runtime_version")

    def time(self, job: TimingJob, out_path, *, resume: bool = True, progress: bool = True,
             open_fn: Callable | None = None, on_measured: Callable | None = None) -> list[dict]:
        folder = job_folder(self.shared_dir, self.profile.name, job.name)
        results, report = folder / RESULTS_NAME, folder / RUNTIME_REPORT
        write_job_bundle(job, self.profile, folder)
        if not resume and results.exists():
            results.unlink()
        if not _finished(results, job):
            self._on_board(f"job {job.name!r} ({len(job.entries)} models)", bundle_dir=self._board_path(folder),
                           out=self._board_path(results), runtime_report=self._board_path(report),
                           device_name=self.profile.name)
        rows, provenance = read_results(results)
        version = read_json(report).get("runtime_version") if report.exists() else None
        check_remote_results(results, rows, provenance, job, self.profile, version)
        return copy_rows(rows, {**provenance, "location": "worker", "job": job.name}, out_path)


def _finished(results: Path, job: TimingJob) -> bool:
    if not results.exists():
        return False
    try:
        rows, _ = read_results(results)
    except ValueError:
        results.unlink()  # damaged (cut-off copy): the board measures it again
        return False
    return set(job.ids()) <= {row["id"] for row in rows}


def _prefect_run_deployment(name: str, parameters: dict, timeout: float):
    return run_deployment(name=name, parameters=parameters, timeout=timeout)


def worker_factory(profile: DeviceProfile) -> WorkerDevice:
    return WorkerDevice(profile)


__all__ = ["WorkerDevice", "BoardJobError", "deployment_name", "worker_factory", "DEFAULT_TIMEOUT_S"]
